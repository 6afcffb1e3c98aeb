"""`ruyi-i2v` as a user meets it: a separate process, its stderr and its exit code.

Argument errors must answer without importing torch (checked with ``python -X importtime``), every failure must be
one line naming what to fix (exit code 2 for bad input, 1 for a broken checkpoint or a failed download, 130 for
Ctrl-C, 143 for SIGTERM) with no traceback unless ``--verbose``, and no run may leave an output file behind.
"""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from diffusers_ruyi import cli


ROOT = pathlib.Path(__file__).resolve().parents[2]
START = str(ROOT / "examples" / "assets" / "start.png")
SMALL = ["--num-frames", "8", "--height", "32", "--width", "48", "--steps", "1"]


def _env(**overrides):
    env = dict(os.environ)
    # This checkout first: the package may also be installed (editable) from another folder.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(overrides)
    return env


def run_cli(*args, cwd=None, python_flags=(), timeout=600, **env):
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "diffusers_ruyi", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(**env),
        timeout=timeout,
    )


def _imported_modules(importtime_stderr: str):
    # `python -X importtime` writes "import time: self | cumulative | [indent]module" for each import.
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def _assert_one_line_error(proc, code, *fragments):
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ruyi-i2v: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ----------------------------------------------------------------------------------------------------------------
# Fast: no torch import
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--image", "missing.png", "--output", "out.mp4"],
        # The LoRA file's header is read with safetensors' numpy side, the image decoded with PIL: no torch either.
        ["--image", START, "--output", "out.mp4", "--lora", "not-a-lora.safetensors"],
        ["--image", "truncated.jpg", "--output", "out.mp4"],
    ],
)
def test_help_and_argument_errors_import_no_torch(tmp_path, argv):
    (tmp_path / "not-a-lora.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b'{"a":1}\n')
    (tmp_path / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 16)
    proc = run_cli(*argv, cwd=tmp_path, python_flags=["-X", "importtime"])
    assert proc.returncode == (0 if argv == ["--help"] else 2)
    modules = _imported_modules(proc.stderr)
    assert "diffusers_ruyi.cli" in modules
    heavy = {m for m in modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "huggingface_hub")}
    assert not heavy, sorted(heavy)[:10]
    cumulative_us = max(
        int(line.split("|")[1]) for line in proc.stderr.splitlines() if line.rstrip().endswith("| diffusers_ruyi.cli")
    )
    assert cumulative_us < 1_000_000  # the whole CLI module, with everything it imports: well under a second


def test_help_is_quick(tmp_path):
    start = time.perf_counter()
    proc = run_cli("--help", cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and "--last-image" in proc.stdout
    # Interpreter start-up included; 5 s leaves room for a loaded CI machine (importing torch alone takes ~6 s there).
    assert elapsed < 5, elapsed


def _blocker(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    return str(tmp_path / "blocker" / "sub" / "video.mp4")


def _existing(tmp_path):
    (tmp_path / "video.mp4").write_bytes(b"keep me")
    return str(tmp_path / "video.mp4")


@pytest.mark.parametrize(
    "make_output, extra, fragments",
    [
        (_blocker, [], ["--output", "is a file, not a folder"]),
        (_existing, [], ["--output", "exists; pass --overwrite"]),
        (None, ["--model", "./no/such/checkpoint"], ["--model './no/such/checkpoint' does not exist"]),
        (None, ["--model", "models/Ruyi-typo"], ["--model 'models/Ruyi-typo'", "hf download models/Ruyi-typo"]),
        (None, ["--model", str(ROOT / "README.md")], ["is a file; pass the checkpoint's folder"]),
        (None, ["--num-frames", "13"], ["--num-frames must be 1 or a multiple of 8"]),
        (None, ["--guidance-scale", "-1"], ["--guidance-scale"]),
        (None, ["--image", "missing.png"], ["--image 'missing.png' does not exist"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, make_output, extra, fragments):
    output = make_output(tmp_path) if make_output else str(tmp_path / "video.mp4")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli("--model", "tiny-random", "--image", START, "--output", output, *SMALL, *extra, cwd=tmp_path)
    _assert_one_line_error(proc, 2, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_default_model_offline_and_not_cached(tmp_path):
    # No --model: the default hub id, with an empty cache and HF_HUB_OFFLINE=1.
    output = tmp_path / "video.mp4"
    proc = run_cli("--image", START, "--output", str(output), *SMALL, cwd=tmp_path, HF_HOME=str(tmp_path / "hf"))
    _assert_one_line_error(
        proc, 2, "--model 'IamCreateAI/Ruyi-Mini-7B'", "HF_HUB_OFFLINE", "hf download IamCreateAI/Ruyi-Mini-7B"
    )
    assert not output.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = run_cli("--image", START, "--output", str(locked / "v.mp4"), "--model", "tiny-random", cwd=tmp_path)
    finally:
        locked.chmod(0o700)
    _assert_one_line_error(proc, 2, "no write permission")


def test_cli_copies_of_pipeline_constants_agree():
    # cli.py keeps copies so that it need not import torch; they must not drift.
    from diffusers_ruyi.pipelines import controls
    from diffusers_ruyi.pipelines.pipeline_ruyi_i2v import MAX_TRAINED_FRAMES

    assert cli.MOTION_VALUES == controls.MOTION_VALUES
    assert cli.CAMERA_DIRECTIONS == controls.CAMERA_DIRECTIONS
    assert cli.MAX_FRAMES == MAX_TRAINED_FRAMES
    assert cli.MIN_BASE_RESOLUTION == controls.MIN_BASE_RESOLUTION
    assert cli.MAX_BASE_RESOLUTION == controls.MAX_BASE_RESOLUTION
    from diffusers_ruyi._validation import MAX_FRAME_SIZE
    from diffusers_ruyi.hooks import RuyiTeaCacheConfig

    assert cli.MAX_FRAME_SIZE == MAX_FRAME_SIZE
    defaults = RuyiTeaCacheConfig()
    assert cli.TEACACHE_SKIP_DEFAULTS == (defaults.skip_start_steps, defaults.skip_end_steps)


# ----------------------------------------------------------------------------------------------------------------
# Slower: these import torch and load or run a model
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    from diffusers_ruyi.tiny import build_tiny_random_pipeline

    folder = tmp_path_factory.mktemp("ckpt") / "ruyi-tiny-diffusers"
    build_tiny_random_pipeline().save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_truncated_diffusers_folder_exit_1_says_truncated(diffusers_folder, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(diffusers_folder, folder)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    output = tmp_path / "out" / "video.mp4"
    proc = run_cli("--model", str(folder), "--image", START, "--output", str(output), *SMALL, "--quiet")
    _assert_one_line_error(proc, 1, f"--model {str(folder)!r}", "vae", "is truncated", "Download it again")
    assert not output.parent.exists()


def _message_settings():
    import logging

    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    from huggingface_hub.utils import are_progress_bars_disabled

    logger = logging.getLogger("diffusers_ruyi")
    return (
        logger.level,
        list(logger.handlers),
        diffusers_logging.get_verbosity(),
        transformers_logging.get_verbosity(),
        diffusers_logging.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
        are_progress_bars_disabled(),
    )


def test_verbose_adds_the_traceback(diffusers_folder, tmp_path, capsys):
    # In-process, so that it also checks that --quiet / --verbose leave the process's logging as they found it.
    before = _message_settings()
    folder = tmp_path / "truncated"
    shutil.copytree(diffusers_folder, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    argv = ["--model", str(folder), "--image", START, "--output", str(tmp_path / "v.mp4"), *SMALL]
    assert cli.main([*argv, "--quiet"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert cli.main([*argv, "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("ruyi-i2v: error: --model")
    assert not (tmp_path / "v.mp4").exists()
    assert _message_settings() == before


@pytest.mark.slow
def test_unreachable_hub_exit_1(tmp_path):
    # Not offline, but the Hub is a closed local port: the download fails at once, without the network.
    output = tmp_path / "video.mp4"
    proc = run_cli(
        "--model", "owner/name", "--image", START, "--output", str(output), *SMALL, "--quiet",
        HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"),
        HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2",
    )  # fmt: skip
    _assert_one_line_error(proc, 1, "--model 'owner/name'", "could not be downloaded", "network")
    assert "broken or incomplete checkpoint" not in proc.stderr  # the checkpoint is not to blame
    assert not output.exists()


@pytest.mark.slow
def test_progress_for_every_phase_and_a_total_line(tmp_path):
    output = tmp_path / "new" / "folder" / "video.mp4"  # missing folders are created
    proc = run_cli("--model", "tiny-random", "--image", START, "--output", str(output), *SMALL, "--vae-tiling")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    for phase in (
        "importing torch, diffusers and transformers",
        "building the tiny random model",
        "CLIP image features",
        "VAE encode (conditioning frames)",
        "VAE decode",
        f"writing {output}",
    ):
        assert f"ruyi-i2v: {phase} ...\n" in err, phase
        assert re.search(rf"ruyi-i2v: {re.escape(phase)}: \d+\.\d s\n", err), phase
    assert re.search(r"VAE encode: 100%\|.*\| 2/2", err)  # the bars of diffusers' progress_bar, per chunk
    assert re.search(r"VAE decode: 100%\|.*\| 1/1", err)
    assert re.search(r"denoising: 100%\|.*\| 1/1", err)
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"ruyi-i2v: wrote {re.escape(str(output))} \(8 frames, 48x32, 24 fps\) in \d+\.\d s total, "
        r"peak memory \d+\.\d (MB|GB) \(RSS\)",
        last,
    ), last
    # Nothing but the CLI's own lines and progress bars (no library warnings on a plain run).
    for chunk in re.split(r"[\r\n]+", err):
        assert not chunk.strip() or chunk.startswith("ruyi-i2v: ") or "%|" in chunk, chunk
    assert output.is_file()


@pytest.mark.slow
def test_quiet_prints_nothing(tmp_path):
    output = tmp_path / "video.mp4"
    proc = run_cli("--model", "tiny-random", "--image", START, "--output", str(output), *SMALL, "--quiet")
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == ""
    assert output.is_file()
    # Not even the libraries' warnings: a bfloat16 VAE made diffusers warn about its float32 modules.
    proc = run_cli(*proc.args[3:], "--overwrite", "--vae-dtype", "bfloat16")
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == ""
    # And of an error, only its line: the pipeline's NaN warning came first.
    proc = run_cli(*proc.args[3:], "--enhance-a-video", "1e30")
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "hold NaN or infinite values" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def _signal_when(args, signum, when):
    """Runs the CLI with ``args``, sends ``signum`` once a stderr line satisfies ``when(line)`` (which may record what
    it needs first); returns the lines read before, the rest of stderr and the exit code."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffusers_ruyi", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        # As in a terminal's foreground: a test run started in the background (`pytest &`) ignores SIGINT, and the
        # child would inherit that.
        preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL),
    )
    seen = []
    try:
        for line in proc.stderr:  # phase lines end with a newline; tqdm's bars with carriage returns
            seen.append(line)
            if when(line):
                proc.send_signal(signum)
                break
        rest = proc.stderr.read()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return seen, rest, code


def test_ctrl_c_exit_130_one_line_and_no_file(tmp_path):
    args = ["--model", "tiny-random", "--image", START, "--output", str(tmp_path / "video.mp4"), "--num-frames", "16"]
    args += ["--height", "64", "--width", "64", "--steps", "50"]
    seen, rest, code = _signal_when(args, signal.SIGINT, lambda line: "VAE encode (conditioning frames) ..." in line)
    assert any("VAE encode" in line for line in seen), "".join(seen)
    assert code == 130, rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    assert rest.strip().splitlines()[-1] == "ruyi-i2v: interrupted while generating; no output was written"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_exit_143_one_line_and_no_file(tmp_path):
    # A long video writes its segments to a temporary mp4 as they come: SIGTERM (a scheduler's or `timeout`'s stop)
    # must remove it, as Ctrl-C does.
    args = ["--model", "tiny-random", "--image", START, "--output", str(tmp_path / "video.mp4"), "--num-frames", "400"]
    args += ["--segment-frames", "16", "--height", "32", "--width", "32"]
    temporary = []

    def after_first_segment(line):
        if "segment 1/" in line and "done in" in line:
            temporary.extend(p.name for p in tmp_path.iterdir())
            return True
        return False

    _, rest, code = _signal_when(args, signal.SIGTERM, after_first_segment)
    assert len(temporary) == 1 and temporary[0].startswith(".ruyi-"), temporary  # the partial video existed
    assert code == 143, rest
    assert "Traceback" not in rest
    # Between two segments the run may be appending frames: "while writing".
    last = rest.strip().splitlines()[-1]
    assert re.fullmatch(r"ruyi-i2v: terminated \(SIGTERM\) while (generating|writing); no output was written", last)
    assert list(tmp_path.iterdir()) == []
