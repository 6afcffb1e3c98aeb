"""The shared argument checks of `diffusers_ruyi._validation`: which values pass, and what the errors say."""

import math

import numpy as np
import pytest
import torch

from diffusers_ruyi._validation import check_bool, check_frame_size, check_int, check_real, check_tensor


def test_check_int():
    for value in (0, 5, np.int64(3)):
        check_int("n", value, minimum=0)
    check_int("n", None, allow_none=True)
    check_int("n", -7)  # no minimum: any integer
    with pytest.raises(ValueError, match=r"^`n` must be >= 1, got 0\.$"):
        check_int("n", 0, minimum=1)
    with pytest.raises(TypeError, match=r"^`n` must be an integer, got bool True\.$"):
        check_int("n", True)
    with pytest.raises(TypeError, match=r"^`n` must be an integer or None, got float 1\.0\.$"):
        check_int("n", 1.0, allow_none=True)
    with pytest.raises(TypeError, match="`n` must be an integer, got NoneType"):
        check_int("n", None)


def test_check_frame_size():
    for value in (16, 32, 512, 1024, 4096):  # 4096 (`MAX_FRAME_SIZE`, the widest bucket) is allowed
        check_frame_size("height", value)
    for value in (4112, 4100):  # above it: refused whatever the multiple, before the multiple-of-16 check
        with pytest.raises(ValueError, match=rf"^`height` must be at most 4096 \(.*\), got {value}\.$"):
            check_frame_size("height", value)
    for value in (0, -16, 8, 520):
        with pytest.raises(ValueError, match=rf"^`height` must be a positive multiple of 16, got {value}\.$"):
            check_frame_size("height", value)
    for value, kind in (
        (512.0, "float"),
        ("512", "str"),
        (True, "bool"),
        (np.int64(512), "int64"),
        (None, "NoneType"),
    ):
        with pytest.raises(TypeError, match=rf"^`width` must be a positive multiple of 16, got {kind} "):
            check_frame_size("width", value)


def test_check_real_bounds_are_inclusive():
    for value in (0, 0.0, 0.5, 1, 1.0, np.float32(1.0)):
        check_real("eta", value, low=0.0, high=1.0)
    check_real("x", None, allow_none=True)
    check_real("x", -1e300)
    for value in (-1e-9, 1.0000001, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^`eta` must be a finite number in \[0, 1\] \(note\), got "):
            check_real("eta", value, low=0.0, high=1.0, meaning=" (note)")


def test_check_real_messages_name_the_bounds_that_apply():
    with pytest.raises(ValueError, match=r"^`w` must be a finite number >= 0, got -1\.$"):
        check_real("w", -1, low=0)
    with pytest.raises(ValueError, match=r"^`w` must be a finite number, got nan\.$"):
        check_real("w", math.nan)
    with pytest.raises(ValueError, match=r"^`w` must be a finite number <= 2, got 3\.$"):
        check_real("w", 3, high=2)
    with pytest.raises(TypeError, match=r"^`w` must be a number, got str '1'\.$"):
        check_real("w", "1")
    with pytest.raises(TypeError, match=r"^`w` must be a number or None, got bool False\.$"):
        check_real("w", False, allow_none=True)


def test_check_bool_and_tensor():
    check_bool("flag", False)
    with pytest.raises(TypeError, match=r"^`flag` must be True or False, got int 1\.$"):
        check_bool("flag", 1)
    check_tensor("x", torch.zeros(1))
    with pytest.raises(TypeError, match=r"^`x` must be a torch.Tensor, got ndarray\.$"):
        check_tensor("x", np.zeros(1))


def test_a_count_below_every_control_is_still_judged():
    # Kills `n != steps` -> `n < steps` in `schedule_problem`: a count that fails the dry run is compared with every
    # control count (25, 10, 4), not only the smaller ones, so a failure at 3 steps where 25 and 10 run is reported.
    from diffusers import DDIMScheduler

    from diffusers_ruyi._validation import schedule_problem

    class FailsUnderFourSteps(DDIMScheduler):
        def step(self, *args, **kwargs):
            if len(self.timesteps) < 4:
                raise IndexError("too few steps")
            return super().step(*args, **kwargs)

    assert schedule_problem(FailsUnderFourSteps(), 3) == "IndexError: too few steps"
    assert schedule_problem(FailsUnderFourSteps(), 25) is None


def test_ruyis_default_count_is_a_control():
    # Kills `(25, 10, 4)` -> `(26, 10, 4)` in `schedule_problem`: Ruyi's default, 25 steps, is one of the controls, so
    # a scheduler that runs only 11 to 25 steps has its failure at 30 reported as the count's fault.
    from diffusers import DDIMScheduler

    from diffusers_ruyi._validation import schedule_problem

    class RunsElevenToTwentyFiveSteps(DDIMScheduler):
        def step(self, *args, **kwargs):
            if not 11 <= len(self.timesteps) <= 25:
                raise IndexError("unsupported count")
            return super().step(*args, **kwargs)

    assert schedule_problem(RunsElevenToTwentyFiveSteps(), 30) == "IndexError: unsupported count"
    assert schedule_problem(RunsElevenToTwentyFiveSteps(), 25) is None


def test_the_half_precision_mix_check_is_for_cpu_autocast_only(monkeypatch):
    # Kills `tensor.device.type == "cpu"` -> `>= "cpu"` in check_input_dtype (_validation.py): under another device's
    # autocast ("cuda", "xpu", ...; here "meta", with autocast reported on) the CPU autocast dtype says nothing, so a
    # float16 model under it is not refused for the CPU's bfloat16.
    from diffusers_ruyi import _validation

    monkeypatch.setattr(_validation, "autocast_enabled", lambda tensor: True)
    assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    _validation.check_input_dtype("sample", torch.empty(1, device="meta", dtype=torch.float16), torch.float16, "VAE")
    with pytest.raises(TypeError, match="on the CPU the two half precisions do not mix"):
        _validation.check_input_dtype("sample", torch.empty(1, dtype=torch.float16), torch.float16, "VAE")
