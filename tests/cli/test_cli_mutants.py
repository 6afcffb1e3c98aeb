"""CLI behaviours that survived mutation testing (scripts/mutation.py); each test names the mutant it kills."""

import pathlib

import pytest
import torch

from diffusers_ruyi import cli
from diffusers_ruyi.tiny import load_pipeline


def test_phase_lines_report_the_time_taken(monkeypatch, capsys):
    # Kills `time.perf_counter() - start` -> `/ start` in Progress.phase (cli.py): the per-phase line says how long
    # the phase took.
    now = {"t": 100.0}
    monkeypatch.setattr(cli.time, "perf_counter", lambda: now["t"])
    progress = cli.Progress(quiet=False)
    now["t"] = 1000.0
    with progress.phase("load"):
        now["t"] = 1002.5
    assert capsys.readouterr().err.splitlines() == ["ruyi-i2v: load ...", "ruyi-i2v: load: 2.5 s"]
    assert progress.elapsed() == 902.5
    with cli.Progress(quiet=True).phase("load"):
        pass
    assert capsys.readouterr().err == ""


def test_tiny_random_pipeline_takes_the_dtype():
    # Kills `if dtype != torch.float32` -> `if not ...` in load_pipeline (tiny.py): `--model tiny-random --dtype
    # bfloat16` ran in float32. The VAE stays float32, as for real checkpoints.
    pipe = load_pipeline("tiny-random", torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.image_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32
    assert load_pipeline("tiny-random").transformer.dtype == torch.float32


@pytest.mark.parametrize("vae_dtype", ["float32", "bfloat16"])
def test_cli_loads_the_tiny_random_vae_in_vae_dtype(vae_dtype):
    import argparse

    args = argparse.Namespace(model="tiny-random", vae_dtype=vae_dtype)
    pipe = cli._load(args, torch.bfloat16, cli.Progress(quiet=True))
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.vae.dtype == getattr(torch, vae_dtype)


def test_uncached_hub_id_fails_only_when_offline(monkeypatch, tmp_path):
    # Kills `(offline) and cached_snapshot(model) is None` -> `not (offline) and ...` in check_model (cli.py): the
    # clear "not in the cache" error is for offline runs; online, a hub id is left to the download.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(cli.CLIError, match="not in the Hugging Face cache") as error:
        cli.check_model("someone/not-cached")
    assert "hf download someone/not-cached" in str(error.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    cli.check_model("someone/not-cached")  # no error, no network: the download happens later
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    with pytest.raises(cli.CLIError, match="not in the Hugging Face cache"):
        cli.check_model("someone/not-cached")


def test_error_lines_are_joined_and_cut_at_the_limit():
    # Kills `text[: limit - 3] + "..."` -> `limit - 2` in _all_lines (cli.py): a long error is cut to exactly
    # `limit` characters, ellipsis included; a short one is kept whole, its lines joined.
    error = ValueError("LoRA problems:\n- a: not finite\n- b: wrong shape\n")
    assert cli._all_lines(error) == "LoRA problems: a: not finite; b: wrong shape"
    long = cli._all_lines(ValueError("x" * 500), limit=40)
    assert long == "x" * 37 + "..." and len(long) == 40
    assert cli._all_lines(ValueError("x" * 40), limit=40) == "x" * 40


def test_cpu_peak_memory_reads_linux_rss_in_kib(monkeypatch):
    # Kills `* 1024` -> `* 1025` in peak_memory (cli.py): Linux reports ru_maxrss in KiB, macOS in bytes.
    import resource
    import types

    monkeypatch.setattr(resource, "getrusage", lambda who: types.SimpleNamespace(ru_maxrss=1000))
    monkeypatch.setattr(cli.sys, "platform", "linux")
    assert cli.peak_memory(torch.device("cpu")) == "peak memory 1000 KB (RSS)"
    monkeypatch.setattr(cli.sys, "platform", "darwin")
    assert cli.peak_memory(torch.device("cpu")) == "peak memory 1000 B (RSS)"


@pytest.mark.parametrize(
    "model", ["./missing", "/no/such/folder", "~/missing", "owner/name/", "owner\\name", "a/b/c", "a--b/c", "a/..b"]
)
def test_missing_paths_are_not_taken_for_hub_ids(model, monkeypatch):
    # Online, a hub id is left to the download; anything that is not `owner/name` (a missing local path) is refused
    # at once, without a cache lookup or a download.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(cli, "cached_snapshot", lambda *a: pytest.fail("looked up the cache"))
    with pytest.raises(cli.CLIError, match="does not exist \\(it is neither a local folder nor a hub id"):
        cli.check_model(model)


def test_sigterm_handler_is_set_only_on_the_main_thread():
    # Kills `if current_thread() is not main_thread()` -> `if not ...` in _sigterm_raises (cli.py): `cli.main` called
    # from a worker thread (a notebook's executor, a test runner) must run; only the main thread may set handlers.
    import signal
    import threading

    before = signal.getsignal(signal.SIGTERM)
    with cli._sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is cli._raise_terminated
    assert signal.getsignal(signal.SIGTERM) is before
    errors = []

    def worker():
        try:
            with cli._sigterm_raises():
                pass
        except Exception as e:  # signal.signal raises ValueError off the main thread
            errors.append(e)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert errors == []


@pytest.mark.parametrize(
    "extra, needs_gpu",
    [
        (["--offload", "model"], True),
        (["--offload", "sequential"], True),
        (["--offload", "group"], True),
        (["--device", "cuda:0"], True),
        (["--offload", "none"], False),
        ([], False),
    ],
)
def test_gpu_check_with_torch_behind_device_nodes(extra, needs_gpu, monkeypatch):
    # Kills `args.offload != "none"` -> `< "none"` in check_args_with_torch (cli.py): where the GPU's device nodes
    # exist (so the cheap check passes) but torch sees no CUDA GPU, every offload mode is refused, not only the ones
    # that sort before "none".
    monkeypatch.setattr(cli, "_no_gpu_device_nodes", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = cli.build_parser().parse_args(["--image", "start.png", "--output", "out.mp4", *extra])
    if needs_gpu:
        with pytest.raises(cli.CLIError, match="CUDA GPU"):
            cli.check_args_with_torch(args)
    else:
        cli.check_args_with_torch(args)


@pytest.mark.parametrize("stage", ["write", "check"])
def test_value_errors_outside_generation_are_failures_not_bad_input(stage):
    # Kills `stage == "generate"` -> `stage >= "generate"` in explain (cli.py): a ValueError while generating comes
    # from the arguments (exit 2, its message alone); while writing (or in a stage without its own wording) it is a
    # failure that names the stage and points to --verbose.
    args = cli.build_parser().parse_args(["--image", "start.png", "--output", "out.mp4"])
    bad_input = cli.explain(ValueError("`num_frames`=9 is not supported"), "generate", args)
    assert (str(bad_input), bad_input.code) == ("`num_frames`=9 is not supported", cli.EXIT_BAD_INPUT)
    failure = cli.explain(ValueError("weights do not fit"), stage, args)
    assert failure.code == cli.EXIT_FAILURE
    assert str(failure).startswith(f"{stage} failed: ValueError: weights do not fit")


def test_load_reads_a_cached_hub_id_from_its_snapshot_and_a_folder_as_it_is(monkeypatch, tmp_path, tiny_checkpoint):
    # Kills `if not os.path.isdir(source)` -> `if os.path.isdir(...)` in _load (cli.py): a hub id in the cache loads
    # from its snapshot folder (sizes reported, no download announced); a local folder loads as it is, without a cache
    # lookup.
    import argparse

    from _helpers import hub_cache_snapshot

    from diffusers_ruyi.pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline

    snapshot = hub_cache_snapshot(tmp_path, "someone/ruyi", tiny_checkpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    loaded = []
    monkeypatch.setattr(RuyiImageToVideoPipeline, "from_pretrained", lambda source, **kw: loaded.append(source))
    said = []
    progress = cli.Progress(quiet=True)
    monkeypatch.setattr(progress, "say", said.append)
    cli._load(argparse.Namespace(model="someone/ruyi", vae_dtype="float32"), torch.float32, progress)
    assert loaded == [str(snapshot)] and said[0].startswith("loading someone/ruyi (")
    monkeypatch.setattr(cli, "cached_snapshot", lambda *a: pytest.fail("looked up the cache for a folder"))
    said.clear()
    cli._load(argparse.Namespace(model=str(tiny_checkpoint), vae_dtype="float32"), torch.float32, progress)
    assert loaded[-1] == str(tiny_checkpoint) and said[0].startswith(f"loading {tiny_checkpoint} (")


def test_sizes_switch_unit_at_1024():
    # Kills `num_bytes < 1024` -> `< 1025` in _format_size (cli.py).
    assert [cli._format_size(n) for n in (1023, 1024, 1024**2, 1024**3, 5 * 1024**4)] == [
        "1023 B",
        "1 KB",
        "1.0 MB",
        "1.0 GB",
        "5120.0 GB",
    ]


def test_steps_are_checked_against_ddim_for_the_original_layout(tiny_realfmt_checkpoint, tmp_path):
    # Kills `DDIMScheduler if is_original_pipeline_folder(...)` -> `if not ...` in _scheduler_before_loading (cli.py):
    # the published layout's DDPM-class config runs as DDIM (as the pipeline loads it); a diffusers folder's
    # scheduler is the class its file names.
    import diffusers

    assert type(cli._scheduler_before_loading(str(tiny_realfmt_checkpoint))) is diffusers.DDIMScheduler
    pipe = load_pipeline(str(tiny_realfmt_checkpoint))
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path)
    assert type(cli._scheduler_before_loading(str(tmp_path))) is diffusers.EulerDiscreteScheduler


def test_steps_check_builds_the_scheduler_loading_builds(tiny_realfmt_checkpoint, tmp_path, capsys):
    # The class comes from model_index.json, as diffusers loads it, not from the scheduler config's `_class_name`.
    # And (kills the AttributeError dropped from check_steps' except, cli.py) a class diffusers does not have is left
    # to loading, which reports it naming --model, rather than a traceback from the steps check.
    import argparse
    import json

    import diffusers

    pipe = load_pipeline(str(tiny_realfmt_checkpoint))
    pipe.save_pretrained(tmp_path)
    config_path = tmp_path / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "_class_name": "NoSuchScheduler"}))
    assert type(cli._scheduler_before_loading(str(tmp_path))) is diffusers.DDIMScheduler
    index_path = tmp_path / "model_index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**index, "scheduler": ["diffusers", "NoSuchScheduler"]}))
    with pytest.raises(AttributeError):
        cli._scheduler_before_loading(str(tmp_path))
    cli.check_steps(argparse.Namespace(model=str(tmp_path), scheduler="ddim", steps=25))  # no error here
    image = str(pathlib.Path(__file__).resolve().parents[2] / "examples" / "assets" / "start.png")
    argv = ["--model", str(tmp_path), "--image", image, "--output", str(tmp_path / "x.mp4"), "--steps", "1"]
    assert cli.main([*argv, "--num-frames", "8", "--height", "32", "--width", "32", "--quiet"]) == 1
    assert f"--model {str(tmp_path)!r} could not be loaded" in capsys.readouterr().err


def test_reported_methods_keep_their_name_and_signature():
    # Kills the dropped functools.wraps in Progress.wrap (cli.py): the pipeline's methods the CLI times stay
    # introspectable as themselves (diffusers inspects signatures, e.g. a scheduler step's `generator`).
    import inspect

    class Pipe:
        def decode_latents(self, latents, *, output_type="pil"):
            """Decodes."""
            return latents

    pipe = Pipe()
    expected = inspect.signature(pipe.decode_latents)
    cli.Progress(quiet=True).wrap(pipe, "decode_latents", "VAE decode")
    assert pipe.decode_latents.__name__ == "decode_latents" and pipe.decode_latents.__doc__ == "Decodes."
    assert inspect.signature(pipe.decode_latents) == expected
    assert pipe.decode_latents(3) == 3


def test_import_notices_are_hidden_only_while_importing_and_only_when_not_verbose():
    # Kills the loop over the loggers -> `[]` in _import_notices_hidden (cli.py).
    import logging

    loggers = [logging.getLogger(name) for name in cli._IMPORT_NOTICE_LOGGERS]
    saved = [logger.level for logger in loggers]
    # Levels of our own, so that a run earlier in the session that left them at ERROR cannot hide a missing restore.
    before = [logging.INFO + k for k in range(len(loggers))]
    try:
        for logger, level in zip(loggers, before):
            logger.setLevel(level)
        with cli._import_notices_hidden(verbose=False):
            assert all(logger.level == logging.ERROR for logger in loggers)
        assert [logger.level for logger in loggers] == before
        with cli._import_notices_hidden(verbose=True):
            assert [logger.level for logger in loggers] == before
    finally:
        for logger, level in zip(loggers, saved):
            logger.setLevel(level)


_START = str(pathlib.Path(__file__).resolve().parents[2] / "examples" / "assets" / "start.png")


@pytest.mark.parametrize("offload", ["model", "sequential", "group"])
def test_every_offload_mode_is_refused_before_torch_without_gpu_device_nodes(offload, monkeypatch, tmp_path):
    # Kills `args.offload != "none"` -> `> "none"` in check_args (cli.py): on a machine without GPU device nodes the
    # cheap check (no torch import) refuses every offload mode, not only the ones that sort after "none".
    monkeypatch.setattr(cli, "_no_gpu_device_nodes", lambda: True)
    common = ["--image", _START, "--output", str(tmp_path / "out.mp4"), "--model", "tiny-random"]
    with pytest.raises(cli.CLIError, match=f"--offload {offload} needs a CUDA GPU"):
        cli.check_args(cli.build_parser().parse_args([*common, "--offload", offload]))
    cli.check_args(cli.build_parser().parse_args([*common, "--offload", "none"]))


def test_lora_folder_with_one_safetensors_file_is_taken(tmp_path):
    # Kills `len(files) > 1` -> `<= 1` in check_lora_file (cli.py): a folder holding one .safetensors file is that
    # file; several are refused, unless one is diffusers' `pytorch_lora_weights.safetensors`.
    import shutil

    from _helpers import ORIGINAL_LORA

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(ORIGINAL_LORA, one / "my_lora.safetensors")
    cli.check_lora_file(str(one))
    several = tmp_path / "several"
    several.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        shutil.copy(ORIGINAL_LORA, several / name)
    with pytest.raises(cli.CLIError, match=r"holds several \.safetensors files \['a.safetensors', 'b.safetensors'\]"):
        cli.check_lora_file(str(several))
    shutil.copy(ORIGINAL_LORA, several / "pytorch_lora_weights.safetensors")
    cli.check_lora_file(str(several))


@pytest.mark.parametrize("device, resets", [("cpu", False), ("mps", False), ("xpu", False), ("cuda", True)])
def test_peak_memory_is_reset_on_cuda_only(device, resets, monkeypatch):
    # Kills `device.type == "cuda"` -> `>= "cuda"` in _run (cli.py): `torch.cuda.reset_peak_memory_stats` is for a
    # CUDA device; on mps or xpu (names after "cuda") it must not be called.
    class Loaded(Exception):
        pass

    def load(*args, **kwargs):
        raise Loaded

    reset = []
    monkeypatch.setattr(cli, "check_args_with_torch", lambda args: None)
    monkeypatch.setattr(cli, "check_steps", lambda args: None)
    monkeypatch.setattr(cli, "_load", load)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: reset.append(device))
    args = cli.build_parser().parse_args(["--image", "start.png", "--output", "out.mp4", "--device", device])
    with pytest.raises(Loaded):
        cli._run(args, cli.Progress(quiet=True), cli._Stage())
    assert reset == ([torch.device(device)] if resets else [])


def test_too_long_output_name_is_shown_cut_to_24_characters(tmp_path):
    # Kills `part[:24]` -> `part[:25]` in check_output_path (cli.py): the error names the start of the too-long file
    # name (24 characters), its length in bytes and the file system's limit.
    import os

    name = "abcdefghijklmnopqrstuvwxyz" * 12 + ".mp4"
    longest = os.pathconf(str(tmp_path), "PC_NAME_MAX")
    assert len(name) > longest
    with pytest.raises(cli.CLIError) as error:
        cli.check_output_path("--output", str(tmp_path / name), overwrite=False)
    assert str(error.value) == (
        f"--output: the name 'abcdefghijklmnopqrstuvwx'... is {len(name)} bytes long; this file system takes "
        f"at most {longest}"
    )


@pytest.mark.parametrize("device", ["mps", "xpu"])
def test_available_mps_or_xpu_device_is_accepted(device, monkeypatch):
    # Kills `module is None or not module.is_available()` -> `module is not None or ...` in check_args_with_torch
    # (cli.py): an mps or xpu device that torch reports available is taken; only a missing one is refused.
    module = torch.backends.mps if device == "mps" else torch.xpu
    monkeypatch.setattr(module, "is_available", lambda: True)
    args = cli.build_parser().parse_args(["--image", "start.png", "--output", "out.mp4", "--device", device])
    cli.check_args_with_torch(args)
    monkeypatch.setattr(module, "is_available", lambda: False)
    with pytest.raises(cli.CLIError, match=f"--device {device} is not available on this machine"):
        cli.check_args_with_torch(args)


def test_npu_device_without_torch_npu_is_refused_cleanly(monkeypatch):
    # Without torch_npu, torch has no `npu` module: `--device npu` is refused with the CLI's message, not an
    # AttributeError from `None.is_available()` (the other half of the mutant above).
    monkeypatch.delattr(torch, "npu", raising=False)
    args = cli.build_parser().parse_args(["--image", "start.png", "--output", "out.mp4", "--device", "npu"])
    with pytest.raises(cli.CLIError, match="--device npu is not available on this machine"):
        cli.check_args_with_torch(args)


def test_two_segment_progress_lines_name_each_segments_motion_and_camera(tmp_path, capsys):
    # Kills `len(args.motion) > 1` -> `> 2` in _run_segments (cli.py): with one value per segment (here two), each
    # segment's progress line names its own motion and camera, not the first segment's.
    out = tmp_path / "two.mp4"
    argv = ["--image", _START, "--output", str(out), "--num-frames", "24", "--segment-frames", "16"]
    fast = ["--model", "tiny-random", "--height", "32", "--width", "48", "--steps", "1"]
    assert cli.main([*argv, *fast, "--motion", "1,3", "--camera", "left,right"]) == 0
    err = capsys.readouterr().err
    assert "segment 1/2: 16 frames from --image, 16 new (camera left, motion 1)" in err
    assert "segment 2/2: 16 frames continuing 5 frames, 8 new (camera right, motion 3)" in err
