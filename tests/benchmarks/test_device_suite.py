"""The GPU suite (benchmarks/device_suite.py) runs the same code on the CPU with `--preset tiny`, so it cannot rot
between the rare runs on a GPU machine."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from _helpers import tiny_transformer, transformer_inputs


ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import device_suite  # noqa: E402


def test_tiny_preset_prints_one_table(tmp_path):
    # The tiny preset runs in bf16 with the published VAE layout, like the full one, so what would fail on the GPU
    # (a dtype mismatch, the VAE's own tiling, a recompiling block) fails here first.
    variants = ["baseline", "profile", "rope", "teacache", "fbc", "group_offload", "vae_decode", "fp8_lite", "compile"]
    variants.append("teacache_compile")
    # 8 steps at threshold 0.3: TeaCache skips some (the first 3 and the last are always computed).
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device_suite.py"), "--preset", "tiny", "--steps", "8"]
    cmd += ["--teacache-threshold", "0.3", "--budget-s", "100000"]  # every row, however busy the machine
    cmd += ["--out", str(tmp_path), "--variants", *variants]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    by_name = {row["variant"]: row for row in rows}
    assert [r["variant"].split(" ")[0] for r in rows][:6] == [
        "baseline",
        "profile",
        "rope",
        "teacache",
        "fbc",
        "group_offload",
    ]
    for name in ("baseline", "teacache", "fbc", "group_offload", "fp8_lite", "compile", "teacache_compile"):
        assert by_name[name]["s/step"] > 0, by_name[name]
        assert not any(note.startswith("error") for note in by_name[name]["notes"])
    assert by_name["fbc"]["max abs diff"] >= 0
    assert "equal bit for bit" in by_name["rope (one query)"]["notes"][0]
    assert by_name["compile"]["max abs diff"] == 0  # the eager backend only traces: same kernels, same frames
    # TeaCache compiled gives TeaCache's frames and steps.
    assert by_name["teacache"]["computed steps"] != "8/8"
    assert by_name["teacache_compile"]["computed steps"] == by_name["teacache"]["computed steps"]
    assert by_name["teacache_compile"]["max abs diff"] == by_name["teacache"]["max abs diff"]
    vae_rows = [row for row in rows if row["variant"].startswith("vae_decode")]
    assert [row["variant"].split(" ")[2] for row in vae_rows] == ["untiled", "original", "tiled"]
    assert all("bfloat16" in row["notes"][0] for row in vae_rows), vae_rows
    assert (tmp_path / "profile.txt").read_text().strip()
    assert "| baseline |" in (tmp_path / "table.md").read_text()
    # The partial record carries the header (device, versions, FLOPs), which a killed run would otherwise lose.
    partial = json.loads((tmp_path / "partial.json").read_text())
    assert partial["header"].startswith("device suite, preset tiny (partial: the run has not finished): CPU, torch ")
    assert "TFLOP per transformer call" in partial["header"]
    assert [row["variant"] for row in partial["rows"]] == [row["variant"] for row in rows]


def test_flop_count_matches_a_hand_count():
    # One block of a 1-layer model, no skips: every term of the docstring, counted by hand.
    config = dict(
        patch_size=2, num_attention_heads=2, attention_head_dim=4, num_layers=1, mlp_ratio=2.0,
        cross_attention_dim=8, cross_attention_dim_t5=6, text_len=3, text_len_t5=2, n_query=4, projection_dim=8,
        in_channels=5, out_channels=7, pooled_projection_dim=3,
    )  # fmt: skip
    flops = device_suite.transformer_flops(config, 1, 4, 4, batch=1, clip_tokens=9)
    n, d, f, t, c, q = 4, 8, 16, 5, 8, 4
    assert flops["self_attention_projections"] == 8 * n * d * d
    assert flops["self_attention_scores_values"] == 4 * n * n * d
    assert flops["text_cross_attention"] == 4 * n * d * d + 4 * t * c * d + 4 * n * t * d
    assert flops["clip_cross_attention"] == 4 * n * d * d + 4 * q * c * d + 4 * n * q * d + 4 * n * d * d
    assert flops["feed_forward"] == 4 * n * d * f
    assert flops["long_skips"] == 0
    assert flops["patch_embed_and_proj_out"] == 2 * n * 5 * 4 * d + 2 * n * d * 4 * 7
    assert flops["total"] == pytest.approx(sum(v for k, v in flops.items() if k != "total"))
    # Doubling the batch doubles everything.
    assert device_suite.transformer_flops(config, 1, 4, 4, batch=2, clip_tokens=9)["total"] == 2 * flops["total"]


def test_published_config_flops_are_the_issue_figure():
    # 512x512x24: 6 latent frames of 64x64 -> 6,144 tokens; ~5.3e15 FLOP for 25 CFG steps (the issue's estimate).
    from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config

    config = convert_transformer_config(device_suite.read_config("transformer_config.json"))
    per_call = device_suite.transformer_flops(config, 6, 64, 64, batch=2)["total"]
    assert 4.5e15 < 25 * per_call < 6.5e15


def _compiled_frames(with_probe: bool, count_computed: bool = False) -> int:
    """How many frames dynamo compiles for the tiny transformer's repeated blocks over three steps."""
    import torch
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    model, inputs = tiny_transformer(), transformer_inputs()
    hidden_states = inputs.pop("hidden_states")
    counter = CompileCounter()
    torch._dynamo.reset()
    model.compile_repeated_blocks(fullgraph=True, backend=counter)
    probe = None
    if with_probe:
        probe = device_suite.Probe(model, device_suite.Timer(torch.device("cpu")), count_computed=count_computed)
    try:
        with torch.no_grad():
            for t in (900.0, 500.0, 100.0):
                model(hidden_states, torch.full((2,), t), **inputs)
    finally:
        if probe is not None:
            probe.remove()
        torch._dynamo.reset()
    return counter.frame_count


def test_the_probe_does_not_recompile_compiled_blocks():
    # One graph per block kind (with and without a long skip) on torch 2.13, reused by every block and every step;
    # older dynamo compiles more (4 on torch 2.6), so the probe is compared with no probe on the same build. The
    # computed-step counter inside a block would be traced and guarded on, recompiling at each call.
    plain = _compiled_frames(with_probe=False)
    assert _compiled_frames(with_probe=True, count_computed=False) == plain
    assert _compiled_frames(with_probe=True, count_computed=True) > plain


def test_model_offload_row_is_the_original_memory_setting(monkeypatch):
    # enable_model_cpu_offload needs an accelerator: stubbed here, so the row's own set-up and undo run on the CPU.
    import torch

    pipe, _ = device_suite.build_pipeline("tiny", torch.float32, torch.device("cpu"), torch.float32)
    calls = []
    monkeypatch.setattr(pipe, "enable_model_cpu_offload", lambda device=None: calls.append(("offload", device)))
    monkeypatch.setattr(pipe, "remove_all_hooks", lambda: calls.append(("remove", None)))
    args = device_suite.parse_args(["--preset", "tiny"])
    undo, notes = device_suite.apply_variant(
        "model_offload", pipe, args, torch.device("cpu"), torch.float32, pipe.transformer.inner_dim
    )
    assert calls == [("offload", torch.device("cpu"))]
    assert pipe.transformer._skip_offload_config.group_size == 5  # the original's gpu_offload_steps=5
    undo()
    assert calls[-1] == ("remove", None)
    assert pipe.transformer._skip_offload_config is None


@pytest.mark.parametrize("row", ["teacache", "teacache_compile"])
def test_teacache_rows_keep_the_cache_on_the_gpu(monkeypatch, row):
    # The original's default copies the cache to the CPU and back each cached step: same values, slower.
    import torch

    pipe, _ = device_suite.build_pipeline("tiny", torch.float32, torch.device("cpu"), torch.float32)
    monkeypatch.setattr(pipe.transformer, "compile_repeated_blocks", lambda **kwargs: None)
    args = device_suite.parse_args(["--preset", "tiny"])
    undo, _ = device_suite.apply_variant(
        row, pipe, args, torch.device("cpu"), torch.float32, pipe.transformer.inner_dim
    )
    config = pipe.transformer._cache_config
    assert (type(config).__name__, config.threshold, config.offload_to_cpu) == ("RuyiTeaCacheConfig", 0.10, False)
    undo()


def test_a_failing_measurement_row_is_reported_and_the_run_goes_on(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(device_suite, "measure_rope", broken)
    args = device_suite.parse_args(["--preset", "tiny", "--steps", "2", "--variants", "rope", "baseline"])
    _, rows = device_suite.run_suite(args)
    assert rows[0] == {"variant": "rope", "notes": ["error: RuntimeError: no kernel"]}
    assert rows[1]["variant"] == "baseline" and rows[1]["s/step"] > 0


def test_time_budget_expects_compilation_and_whole_warm_up_runs():
    # Nothing measured yet (or the baseline failed): a generation is assumed to take the original's A100 time, so the
    # budget still holds; on the CPU presets only measured generations count.
    assert device_suite.expected_seconds("fbc", []) == 2 * device_suite.UNKNOWN_GENERATION_S
    assert device_suite.expected_seconds("fbc", [], scale=0.0) == 0.0
    rows = [{"variant": "baseline", "end-to-end s": 10.0}]
    assert device_suite.expected_seconds("fbc", rows) == 20.0
    allowance = device_suite.COMPILE_ALLOWANCE_S
    assert device_suite.expected_seconds("compile", rows) == 20.0 + allowance
    assert device_suite.expected_seconds("teacache_compile", rows) == 30.0 + allowance
    rows.append({"variant": "compile", "warmup_s": 42.0})
    assert device_suite.expected_seconds("teacache_compile", rows) == 30.0 + 42.0
    # The rows that do more than generate: the original (its own build, about 2x slower), the offload rows (the
    # weights moved), the VAE decodes (a fixed allowance); on the CPU presets only the generations count.
    assert device_suite.expected_seconds("original", rows) == 40.0 + 60.0
    assert device_suite.expected_seconds("original", rows, scale=0.0) == 40.0
    assert device_suite.expected_seconds("group_offload", rows) == 25.0 + 20.0
    assert device_suite.expected_seconds("vae_decode", rows) == 60.0
    assert device_suite.expected_seconds("vae_decode", rows, scale=0.0) == 0.0


@pytest.mark.skipif(
    not os.environ.get("RUYI_REFERENCE"),
    reason="needs the original Ruyi-Models checkout: RUYI_REFERENCE=<checkout> RUYI_REFERENCE_PYTHON=<its python>",
)
def test_original_row_with_the_original_checkout(tmp_path):
    # The original runs with its model offload hooks (re-attached by diffusers after every call): the timing must
    # survive that, and its row must come out whole. Only with the checkout at hand (not in CI).
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device_suite.py"), "--preset", "tiny", "--steps", "3"]
    cmd += ["--variants", "baseline", "original", "--out", str(tmp_path), "--budget-s", "100000"]
    cmd += ["--reference", os.environ["RUYI_REFERENCE"]]
    cmd += ["--reference-python", os.environ.get("RUYI_REFERENCE_PYTHON", sys.executable)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    original = json.loads((tmp_path / "results.json").read_text())[1]
    assert original["variant"] == "original" and original["s/step"] > 0, original
    assert original["computed steps"] == "3/3"


def test_rows_over_the_time_budget_are_skipped_not_run():
    args = device_suite.parse_args(["--preset", "tiny", "--steps", "2", "--variants", "baseline", "original", "fbc"])
    args.budget_s = 0.0
    _, rows = device_suite.run_suite(args)
    assert [row["variant"] for row in rows] == ["baseline", "fbc"]  # no original row at all without --reference
    assert rows[0]["notes"][0].startswith("skipped: time budget")  # the build already spent the zero budget
    assert rows[1]["notes"][0].startswith("skipped: time budget")


def test_sdpa_context_puts_the_chosen_backend_first_and_keeps_the_others():
    # Only CUDA runs pick a backend, but the context is plain PyTorch (`sdpa_kernel` with priorities, torch >= 2.6)
    # and runs here; the priority order is read back through PyTorch's private getter.
    import torch
    from torch.nn.attention import SDPBackend

    q = torch.randn(1, 2, 8, 16)
    with device_suite.sdpa_context(SDPBackend.MATH):  # third by default
        assert torch._C._get_sdp_priority_order()[0] == int(SDPBackend.MATH)
        cuda = torch.backends.cuda
        assert cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled() and cuda.cudnn_sdp_enabled()
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with device_suite.sdpa_context(None):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)


def test_the_rows_the_targets_need_fit_the_device_runs_budget():
    # The device run's budget (390 s, docs/memory_and_speed.md) with a 20 s build and the issue's 15 s generation:
    # the original, its memory settings, TeaCache and compile all run (before, the original came tenth and its
    # comparison was always cut).
    budget, build, e2e = 390.0, 20.0, 15.0
    rows = [{"variant": "baseline", "end-to-end s": e2e}]
    used = build + 2 * e2e
    ran = ["baseline"]
    for name in device_suite.DEFAULT_ORDER[1:]:
        expected = device_suite.expected_seconds(name, rows)
        if used + expected > budget:
            break
        used += expected
        ran.append(name)
    assert ran[:5] == ["baseline", "original", "model_offload", "teacache", "compile"]
    assert device_suite.DEFAULT_ORDER[-1] == "profile"  # a profiler can leave CUPTI attached, slowing later rows


def test_the_sdpa_probe_runs_in_a_subprocess_on_cuda(monkeypatch, tmp_path):
    # A backend that breaks the CUDA context (or hangs) in the probe must cost the probe's process, not the run; when
    # that process fails, the run picks between flash and efficient attention itself.
    import torch
    from torch.nn.attention import SDPBackend

    args = device_suite.parse_args(["--preset", "full"])
    cuda, config = torch.device("cuda"), {"num_attention_heads": 2, "attention_head_dim": 8}
    commands, picked = [], []

    def worker(cmd, what, timeout):
        commands.append((cmd, what, timeout))
        described = json.loads(pathlib.Path(cmd[cmd.index("--configs") + 1]).read_text())
        assert described == {"config": config, "tokens": 96}
        return {"backend": "FLASH_ATTENTION", "note": "SDPA FLASH_ATTENTION (probed)"}

    monkeypatch.setattr(device_suite, "run_worker", worker)
    monkeypatch.setattr(device_suite, "pick_sdpa_backend", lambda *a, **k: picked.append(k) or (None, "in-process"))
    assert device_suite.probe_sdpa_backend(args, cuda, torch.bfloat16, config, 96) == (
        SDPBackend.FLASH_ATTENTION,
        "SDPA FLASH_ATTENTION (probed)",
    )
    ((cmd, what, timeout),) = commands
    assert "--sdpa-probe" in cmd and what == "SDPA backend probe" and timeout == device_suite.SDPA_PROBE_TIMEOUT_S
    assert picked == []

    def crashing(cmd, what, timeout):
        raise RuntimeError("The SDPA backend probe failed (exit code -6): ...\nCUDA error: an illegal memory access")

    monkeypatch.setattr(device_suite, "run_worker", crashing)
    backend, note = device_suite.probe_sdpa_backend(args, cuda, torch.bfloat16, config, 96)
    assert picked == [{"backends": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION")}]
    assert note.startswith("in-process; the probe of every backend in a subprocess failed: The SDPA backend probe")


def test_the_sdpa_probe_worker_prints_its_pick(tmp_path):
    path = tmp_path / "probe.json"
    path.write_text(json.dumps({"config": {"num_attention_heads": 2, "attention_head_dim": 8}, "tokens": 96}))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device_suite.py"), "--sdpa-probe", "--configs", str(path)]
    proc = subprocess.run(cmd + ["--device", "cpu", "--dtype", "float32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == 'RESULT {"backend": null, "note": "PyTorch default (CPU)"}'


@pytest.mark.parametrize(
    "argv, expected", [([], 490.0), (["--watchdog-s", "30"], 30.0), (["--watchdog-s", "0"], None)]
)
def test_a_watchdog_stops_a_hung_run(monkeypatch, argv, expected):
    # Only the original has its own time limit; the watchdog bounds the rest (default: the budget plus 100 s).
    import faulthandler

    armed = []
    monkeypatch.setattr(faulthandler, "dump_traceback_later", lambda timeout, exit: armed.append((timeout, exit)))
    monkeypatch.setattr(faulthandler, "cancel_dump_traceback_later", lambda: armed.append("cancelled"))
    monkeypatch.setattr(device_suite, "run_suite", lambda args: ("table", []))
    device_suite.main(["--preset", "tiny", "--budget-s", "390", *argv])
    assert armed == ([] if expected is None else [(expected, True), "cancelled"])


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("Tesla T4", None),
    ],
)
def test_spec_peak_by_gpu_name(name, peak):
    assert device_suite.spec_peak_tflops(name) == peak


def test_probe_summary_can_leave_out_the_first_call():
    # With model offload the first call moves the weights to the GPU inside the probe's interval.
    import torch

    probe = device_suite.Probe(tiny_transformer(), device_suite.Timer(torch.device("cpu")))
    probe.remove()
    probe.calls, probe.loop_end = [(0.0, 5.0), (6.0, 7.0), (8.0, 9.5)], 10.0
    full = probe.summary(3)
    assert (full["s_per_step"], full["transformer_s"], full["calls"]) == (10.0 / 3, 7.5, 3)
    assert "first_call_s" not in full
    later = probe.summary(3, skip_first=True)
    assert (later["s_per_step"], later["transformer_s"], later["calls"], later["first_call_s"]) == (2.0, 2.5, 2, 5.0)


def test_original_row_gets_ratios_against_its_settings_and_the_baseline():
    rows = [
        {"variant": "baseline", "s/step": 1.0, "end-to-end s": 20.0, "notes": []},
        {"variant": "original", "s/step": 4.0, "end-to-end s": 100.0, "notes": ["its own interpreter"]},
        {"variant": "model_offload", "s/step": 2.0, "end-to-end s": 50.0, "notes": []},
    ]
    device_suite.add_original_ratios(rows)
    assert rows[1]["notes"] == [
        "baseline (no offload) is 4.00x faster per step, 5.00x end to end",
        "model_offload (same memory settings) is 2.00x faster per step, 2.00x end to end",
        "its own interpreter",
    ]


def test_a_variant_failing_while_it_applies_leaves_no_hook_behind(monkeypatch):
    # A partial failure (say, pinning memory halfway through group offloading) must not leave later rows running
    # half-offloaded: the suite removes what the variant had attached.
    import torch
    from diffusers.hooks import HookRegistry

    pipe, _ = device_suite.build_pipeline("tiny", torch.float32, torch.device("cpu"), torch.float32)
    args = device_suite.parse_args(["--preset", "tiny", "--steps", "2"])
    apply_variant = device_suite.apply_variant

    def half_applied(name, pipe_, *rest):
        apply_variant("fbc", pipe_, *rest)  # attaches the cache's hooks
        # and a hook on the blocks alone, as group offloading stopped halfway would leave
        from diffusers.hooks import ModelHook

        for block in pipe_.transformer.blocks:
            HookRegistry.check_if_exists_or_initialize(block).register_hook(ModelHook(), "half_offloaded")
        raise RuntimeError("pinning failed")

    monkeypatch.setattr(device_suite, "apply_variant", half_applied)
    with pytest.raises(RuntimeError, match="pinning failed"):
        device_suite.measure_variant(
            "group_offload", pipe, None, args, torch.device("cpu"), torch.float32, 1.0, {}, None
        )
    registries = [m._diffusers_hook for m in pipe.transformer.modules() if hasattr(m, "_diffusers_hook")]
    assert all(not registry.hooks for registry in registries), [r.hooks for r in registries]
    assert isinstance(HookRegistry.check_if_exists_or_initialize(pipe.transformer), HookRegistry)


def test_baseline_falls_back_to_pytorchs_sdpa_choice_when_the_picked_backend_fails(monkeypatch):
    # A backend that passed the shape check but fails inside the model would fail every row: the baseline is run
    # again outside `sdpa_context`, and so is every row after it.
    from torch.nn.attention import SDPBackend

    contexts = []
    sdpa_context = device_suite.sdpa_context

    def recording(backend):
        contexts.append(backend)
        return sdpa_context(backend)

    measure_variant = device_suite.measure_variant
    attempts = []

    def failing_once(name, *rest):
        attempts.append((name, contexts[-1] if contexts else None))
        if len(attempts) == 1:
            raise RuntimeError("cuDNN Frontend error: No execution plans support the graph.")
        return measure_variant(name, *rest)

    monkeypatch.setattr(device_suite, "pick_sdpa_backend", lambda *a: (SDPBackend.MATH, "SDPA MATH (picked)"))
    monkeypatch.setattr(device_suite, "sdpa_context", recording)
    monkeypatch.setattr(device_suite, "measure_variant", failing_once)
    args = device_suite.parse_args(["--preset", "tiny", "--steps", "2", "--variants", "baseline", "fbc"])
    args.budget_s = 1e5
    _, rows = device_suite.run_suite(args)
    assert [row["variant"] for row in rows] == ["baseline", "fbc"]
    assert rows[0]["notes"][0].startswith("PyTorch default SDPA (the picked backend failed: RuntimeError: cuDNN")
    assert rows[0]["s/step"] > 0 and rows[1]["s/step"] > 0
    assert contexts == [SDPBackend.MATH, None]  # the retry ran outside any context; fbc under PyTorch's choice
    assert len(attempts) == 3
