"""Hook behaviours the parity goldens do not pin: the original's defaults, the frame-count edge of Enhance-A-Video,
and the small helpers every hook relies on."""

import pytest
import torch

from diffusers_ruyi.hooks import RuyiEnhanceAVideoConfig, enhance_a_video_score
from diffusers_ruyi.hooks._common import move_to


def test_enhance_a_video_defaults_are_the_originals():
    # predict_i2v.py: enhance_a_video weight 1.0, no skipped steps.
    config = RuyiEnhanceAVideoConfig()
    assert (config.weight, config.skip_start_steps, config.skip_end_steps) == (1.0, 0, 0)
    assert config.num_inference_steps is None
    # Negative skip counts are refused (they were clamped to 0): see tests/hooks/test_hook_config_validation.py.


def test_skip_offload_defaults_keep_at_most_one_activation_on_the_device():
    # The documented defaults: groups of one (the original's lowest-memory `gpu_offload_steps`), parked on the CPU.
    from diffusers_ruyi.hooks import RuyiSkipOffloadConfig

    config = RuyiSkipOffloadConfig()
    assert (config.group_size, config.offload_device) == (1, torch.device("cpu"))


def test_enhance_a_video_two_frames_are_enhanced():
    """Two latent frames already have cross-frame attention: a score, which grows with the weight."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 2 * 3, 2, 8, generator=generator)
    key = torch.randn(1, 2 * 3, 2, 8, generator=generator)
    low, high = enhance_a_video_score(query, key, 2, 1.0), enhance_a_video_score(query, key, 2, 8.0)
    assert low is not None and high is not None and high > low >= 1


@pytest.mark.parametrize("device", [None, torch.device("cpu")])
def test_move_to_passes_none_through(device):
    assert move_to(None, device) is None
    tensor = torch.ones(2)
    assert torch.equal(move_to(tensor, device), tensor)
    assert move_to(tensor, None) is tensor
    assert move_to(tensor, torch.device("meta")).is_meta  # a device given: moved


class _CudaStandIn:
    """Records how it is moved: this machine has no CUDA tensor to move."""

    is_cuda = True

    def __init__(self):
        self.calls = []

    def to(self, device, **kwargs):
        self.calls.append((device, kwargs))
        return self


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_move_to_copies_between_cuda_and_cpu_without_blocking(device):
    # The hooks park activations on the CPU and read them back only on the device: a non-blocking copy (pinned host
    # memory, ordered on the stream) gives the same values without stalling the host.
    stand_in = _CudaStandIn()
    assert move_to(stand_in, device) is stand_in
    assert stand_in.calls == [(torch.device(device), {"non_blocking": True})]


def test_move_to_copies_to_cuda_without_blocking_and_elsewhere_blocking(monkeypatch):
    calls = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append((a, k)) or real_to(self, "cpu"))
    move_to(torch.ones(2), "cuda")
    move_to(torch.ones(2), "meta")
    assert calls == [
        ((torch.device("cuda"),), {"non_blocking": True}),
        ((torch.device("meta"),), {"non_blocking": False}),
    ]


def test_skip_offload_moves_through_move_to(monkeypatch):
    from diffusers_ruyi.hooks import RuyiSkipOffloadConfig, skip_offload

    moved = []
    monkeypatch.setattr(skip_offload, "move_to", lambda tensor, device: moved.append(device) or tensor)
    stack = skip_offload.LongSkipStack(RuyiSkipOffloadConfig(group_size=1))
    stack.push(torch.ones(1))
    stack.pop(torch.device("cuda"))
    assert moved == [torch.device("cpu"), torch.device("cuda")]


def test_fp8_default_size_rule_is_the_originals():
    """Ruyi's rule at the published size: more than (lite) / at least (strong) 2816 * 2816 weight elements."""
    from diffusers_ruyi.hooks import select_fp8_modules

    model = torch.nn.Module()
    model.square = torch.nn.Linear(2816, 2816, bias=False, device="meta")
    model.larger = torch.nn.Linear(2816, 2817, bias=False, device="meta")
    model.smaller = torch.nn.Linear(2815, 2816, bias=False, device="meta")
    assert select_fp8_modules(model, "lite") == ["larger"]
    assert select_fp8_modules(model, "strong") == ["square", "larger"]


def test_enhance_a_video_removal_leaves_no_state_on_the_attentions():
    # A call that raised inside the blocks leaves the run state active; after removal no block may still read it.
    from _helpers import tiny_transformer, transformer_inputs

    from diffusers_ruyi.hooks import apply_ruyi_enhance_a_video, remove_ruyi_enhance_a_video

    inputs = transformer_inputs()
    model = tiny_transformer()
    with torch.no_grad():
        plain = model(timestep=torch.full((2,), 500.0), **inputs).sample
    apply_ruyi_enhance_a_video(model, RuyiEnhanceAVideoConfig(weight=4.0))
    model.blocks[0].attn1._ruyi_enhance_a_video.active = True  # as an interrupted call leaves it
    remove_ruyi_enhance_a_video(model)
    assert not any(hasattr(block.attn1, "_ruyi_enhance_a_video") for block in model.blocks)
    with torch.no_grad():
        assert torch.equal(model(timestep=torch.full((2,), 500.0), **inputs).sample, plain)


def test_the_teacache_polynomial_changes_sign_where_the_docs_say():
    # docs/memory_and_speed.md: negative below ~0.010 and above ~0.18 (the original's coefficients).
    from diffusers_ruyi.hooks.teacache import RUYI_TEACACHE_COEFFICIENTS, _rescale

    values = {x: _rescale(RUYI_TEACACHE_COEFFICIENTS, x) for x in (0.0, 0.0100, 0.0102, 0.18, 0.181, 0.2, 0.3)}
    assert values[0.0] < 0 and values[0.0100] < 0 < values[0.0102]
    assert values[0.18] > 0 > values[0.181]
    assert round(values[0.2], 2) == -0.60 and round(values[0.3], 1) == -15.5
