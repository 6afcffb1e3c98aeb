"""benchmarks/estimate_memory.py: the live-bytes tracker counts what a hand count gives, fake tensors count what real
ones do, and the tiny preset prints its tables."""

import pathlib
import sys

import pytest
import torch
from _helpers import tiny_transformer, transformer_inputs


ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import estimate_memory  # noqa: E402


def test_live_bytes_counts_allocations_not_views():
    def run():
        a = torch.ones(1000)  # 4,000 bytes
        view = a.view(10, 100).t()  # a view: nothing new
        b = torch.ones(1000)  # 8,000 live
        c = a + b  # 12,000 live: the peak
        del a, b, view
        return c * 2  # a and b are gone: c and the result, 8,000

    assert estimate_memory.phase_peak(run) == 12_000


def test_live_bytes_frees_what_dies():
    def run():
        for _ in range(5):
            torch.ones(1000)  # each dies before the next is made
        return torch.ones(250)

    assert estimate_memory.phase_peak(run) == 4_000


def test_existing_tensors_and_their_views_are_not_counted():
    weight = torch.ones(100, 100)

    def run():
        return weight.t()[:10]  # a view of a tensor made before the phase

    assert estimate_memory.phase_peak(run) == 0


def test_fake_tensors_count_what_real_ones_do():
    from torch._subclasses.fake_tensor import FakeTensorMode

    def peak(model, inputs):
        return estimate_memory.phase_peak(lambda: model(timestep=torch.full((2,), 500.0), **inputs))

    real = peak(tiny_transformer(), transformer_inputs())
    with FakeTensorMode() as mode:
        # Built under the mode, as the estimate builds the full-size models.
        fake = peak(tiny_transformer(), {k: mode.from_tensor(v) for k, v in transformer_inputs().items()})
    assert real > 0
    assert fake == real


def test_compose_keeps_the_weights_each_setting_holds():
    weights = {"transformer": 100, "transformer_outside_blocks": 10, "transformer_largest_block": 5, "vae": 20}
    weights.update(clip=7, transformer_fp8_strong=60, fp8_largest_layer_in_compute_dtype=4)
    peaks = {"clip": 1, "vae_encode": 2, "transformer": 30, "vae_decode_untiled": 90, "vae_decode_original": 8}
    peaks.update(vae_decode_tiled=40, transformer_skip_offload_5=20, transformer_skip_offload_1=15)
    peaks["transformer_skip_offload_1_ff_chunked"] = 45
    rows = [(row["peak"], row["phase"]) for row in estimate_memory.compose(weights, peaks)]
    assert rows == [
        (100 + 20 + 7 + 30, "transformer"),  # everything resident
        (100 + 30, "transformer"),  # model offload: one model at a time
        (100 + 20, "transformer_skip_offload_5"),
        (60 + 20 + 4, "transformer_skip_offload_5"),  # fp8 weights, one layer cast up at a time
        (10 + 2 * 5 + 20 + 7 + 30, "transformer"),  # group offload: outside blocks + 2 blocks, VAE and CLIP
        (20 + 7 + 40, "vae_decode_tiled"),  # + skip offload: no transformer weight outside its calls
        (10 + 2 * 5 + 20 + 7 + 45, "transformer_skip_offload_1_ff_chunked"),  # + feed-forward chunking
        (20 + 90, "vae_decode_untiled"),
    ]
    peaks["transformer_skip_offload_1"] = 60  # now the transformer call is the peak of the lowest setting
    assert estimate_memory.compose(weights, peaks)[5]["peak"] == 10 + 2 * 5 + 20 + 7 + 60


def test_tiny_preset_prints_the_tables(capsys):
    report = estimate_memory.main(["--preset", "tiny"])
    assert "| transformer group offload" in report
    assert "| vae_decode_original |" in report
    assert report in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--frames", "--tile"])
def test_bad_sizes_are_refused(flag):
    with pytest.raises(SystemExit):
        estimate_memory.parse_args([flag, "0"])


def test_full_size_phases_order_as_the_settings_promise():
    # Shapes only: the published 7.19B transformer and the VAE at 512x512x24 cost seconds under fake tensors.
    weights, peaks, info = estimate_memory.measure_phases(estimate_memory.parse_args([]))
    assert info["tokens"] == 6144
    assert weights["transformer"] == pytest.approx(2 * 7.187e9, rel=1e-3)  # bf16
    assert weights["transformer_fp8_strong"] < 0.6 * weights["transformer"]
    # Parked long skips leave the device (the meta device stands in for the CPU and is not counted).
    assert peaks["transformer_skip_offload_1"] < peaks["transformer_skip_offload_5"] < peaks["transformer"]
    assert peaks["transformer_skip_offload_1_ff_chunked"] <= peaks["transformer_skip_offload_1"]
    assert peaks["vae_decode_tiled"] < peaks["vae_decode_original"] < peaks["vae_decode_untiled"]


def test_live_bytes_counts_only_its_device():
    # How the original's driver counts it: fake CUDA tensors, the skips it parks with `.to("cpu")` leave the count.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        weight = torch.empty(100, device="cuda")

        def run():
            on_device = weight * 2  # 400 bytes on the device
            parked = on_device.to("cpu")  # not counted; the device copy dies next
            del on_device
            return parked + 1, weight + 1  # 400 more on the device at the end

        assert estimate_memory.phase_peak(run, device="cuda") == 400


def test_comparison_with_the_original_per_offload_setting():
    mib = 2**20
    weights = {"transformer": 1000 * mib}
    peaks = {
        "transformer": 300 * mib,
        "transformer_skip_offload_5": 200 * mib,
        "transformer_skip_offload_1": 100 * mib,
    }
    original = {"weights": 1010 * mib, "peaks": {"0": 390 * mib, "5": 250 * mib, "1": 110 * mib}}
    table = estimate_memory.format_comparison(weights, peaks, original)
    assert "| gpu_offload_steps=0 | 1,400 MiB | 1,300 MiB | -100 MiB (-7.1%) |" in table
    assert "| gpu_offload_steps=5 | 1,260 MiB | 1,200 MiB | -60 MiB (-4.8%) |" in table
    assert "| gpu_offload_steps=1 | 1,120 MiB | 1,100 MiB | -20 MiB (-1.8%) |" in table


def test_a_failing_original_estimate_stops_with_its_last_error_line(tmp_path):
    args = estimate_memory.parse_args(["--preset", "tiny", "--reference", str(tmp_path / "no-checkout")])
    with pytest.raises(
        SystemExit, match="the original's estimate failed: ModuleNotFoundError: No module named 'ruyi'"
    ):
        estimate_memory.original_transformer_call(args, {"latent": (2, 4, 4), "clip_tokens": 16})


def test_the_original_runs_without_this_package_s_pythonpath(monkeypatch):
    import subprocess

    seen = {}

    def fake_run(command, env=None, **kwargs):
        seen["env"] = env
        return subprocess.CompletedProcess(command, 0, stdout='RESULT {"weights": 1, "peaks": {}}\n', stderr="")

    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setattr(subprocess, "run", fake_run)
    args = estimate_memory.parse_args(["--preset", "tiny", "--reference", "/checkout"])
    assert estimate_memory.original_transformer_call(args, {"latent": (2, 4, 4), "clip_tokens": 16}) == {
        "weights": 1,
        "peaks": {},
    }
    assert seen["env"] is not None and "PYTHONPATH" not in seen["env"]


def test_vae_residual_block_adds_its_shortcut_without_another_buffer():
    # At inference the 1x1x1 shortcut is computed last and added into the second convolution's output: no
    # block-sized buffer is held through both convolutions, and the sum needs none. Same bits as the plain order.
    from diffusers_ruyi.models.autoencoder_kl_ruyi import RuyiResidualBlock3D

    torch.manual_seed(0)
    block = RuyiResidualBlock3D(4, 8, "silu", norm_num_groups=2, norm_eps=1e-6).eval()
    hidden_states = torch.randn(1, 4, 3, 16, 16)

    def plain_order():
        shortcut = block.shortcut(hidden_states)
        residual = block.nonlinearity(block.norm1(hidden_states))
        residual = block.conv2(block.nonlinearity(block.norm2(block.conv1(residual))))
        return residual + shortcut

    with torch.no_grad():
        assert torch.equal(block(hidden_states), plain_order())
        block_bytes = 8 * 3 * 16 * 16 * 4
        assert estimate_memory.phase_peak(lambda: block(hidden_states)) <= estimate_memory.phase_peak(plain_order) - (
            block_bytes
        )
    # Under autocast the Identity shortcut of a same-width block stays float32 while the convolutions give bfloat16:
    # the sum is promoted, as the plain `+` does, not rounded into the bfloat16 output.
    same_width = RuyiResidualBlock3D(4, 4, "silu", norm_num_groups=2, norm_eps=1e-6).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert same_width(hidden_states).dtype == torch.float32
