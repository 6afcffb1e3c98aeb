import json
import os
import pathlib
import shutil
import string

import imageio
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusers_ruyi import RuyiImageToVideoPipeline
from diffusers_ruyi.cli import main


ROOT = pathlib.Path(__file__).resolve().parents[2]
START = str(ROOT / "examples" / "assets" / "start.png")
END = str(ROOT / "examples" / "assets" / "end.png")
FAST = ["--model", "tiny-random", "--num-frames", "8", "--height", "32", "--width", "48", "--steps", "1"]


def _read_video(path):
    reader = imageio.get_reader(str(path))
    try:
        frames = list(reader.iter_data())  # len(reader) is inf for ffmpeg streams
        fps = reader.get_meta_data()["fps"]
    finally:
        reader.close()
    return frames, fps


def test_cli_writes_a_playable_mp4(tmp_path):
    out = tmp_path / "video.mp4"
    assert main(["--image", START, "--last-image", END, "--output", str(out), "--fps", "12", *FAST]) == 0
    frames, fps = _read_video(out)
    assert len(frames) == 8
    assert frames[0].shape == (32, 48, 3)
    assert fps == pytest.approx(12)
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]  # no temporary file left behind


def test_cli_speed_and_memory_options(tmp_path):
    out = tmp_path / "fast.mp4"
    args = [
        "--image",
        START,
        "--output",
        str(out),
        *FAST,
        "--steps",
        "5",
        "--cache",
        "teacache",
        "--cache-threshold",
        "0.2",
    ]
    assert main(args + ["--fp8", "extreme", "--enhance-a-video", "1.0", "--vae-tiling", "--scheduler", "euler"]) == 0
    frames, _ = _read_video(out)
    assert len(frames) == 8 and frames[0].shape == (32, 48, 3)


def test_module_entry_point_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for flag in (
        "--last-image",
        "--motion",
        "--camera",
        "--scheduler",
        "--lora",
        "--offload",
        "--vae-tiling",
        "--cache",
    ):
        assert flag in help_text


def test_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "video.mp4"
    out.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as e:
        main(["--image", START, "--output", str(out), *FAST])
    assert e.value.code == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image", "missing.png"], "--image 'missing.png' does not exist"),
        (["--image", __file__], "is not a readable image"),
        (["--last-image", "missing.png"], "--last-image 'missing.png' does not exist"),
        (["--height", "40", "--width", "48"], "--height must be a multiple of 16"),
        (["--num-frames", "10"], "--num-frames must be 1 or a multiple of 8"),
        (["--num-frames", "0"], "expected a positive integer"),
        (["--steps", "two"], "expected a positive integer"),
        (["--guidance-scale", "-1"], "expected a number >= 0"),
        (["--motion", "9"], "invalid choice"),
        (["--camera", "diagonal"], "invalid choice"),
        (["--scheduler", "lms"], "invalid choice"),
        (["--dtype", "int8"], "invalid choice"),
        (["--lora", "missing.safetensors"], "--lora 'missing.safetensors' does not exist"),
        (["--lora-weight", "0.5"], "more --lora-weight values than --lora files"),
        (["--device", "cuda"], "no CUDA GPU is available"),
        (["--offload", "model"], "needs a CUDA GPU"),
        (["--offload", "group"], "--offload group needs a CUDA GPU"),
        (["--skip-offload", "-1"], "expected an integer >= 0, got '-1'"),
        (["--skip-offload", "two"], "expected an integer >= 0, got 'two'"),
    ],
)
def test_bad_arguments_exit_2_without_output(tmp_path, capsys, extra, message):
    if "cuda" in " ".join(extra) or "offload" in extra:
        if torch.cuda.is_available():
            pytest.skip("checks the no-GPU message")
    out = tmp_path / "video.mp4"
    args = ["--image", START, "--output", str(out), *FAST]
    # later flags override earlier ones in argparse
    with pytest.raises(SystemExit) as e:
        main(args + extra)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_height_needs_width(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--image", START, "--output", str(tmp_path / "v.mp4"), "--model", "tiny-random", "--height", "32"])
    assert "pass both --height and --width" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_output_must_be_mp4(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--image", START, "--output", str(tmp_path / "video.gif"), *FAST])
    assert "--output must end with .mp4" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_failed_run_leaves_no_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "video.mp4"

    def broken_export(frames, path, fps):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("diffusers.utils.export_to_video", broken_export)
    assert main(["--image", START, "--output", str(out), *FAST]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--output" in last and "could not be written: disk full" in last
    assert list(tmp_path.iterdir()) == []


_flags = st.sampled_from(
    ["--num-frames", "--height", "--width", "--steps", "--guidance-scale", "--motion", "--camera", "--scheduler",
     "--fps", "--base-resolution", "--dtype", "--offload", "--cache", "--fp8", "--enhance-a-video"]
)  # fmt: skip
_VALID_WORDS = {"auto", "static", "left", "right", "up", "down", "ddim", "euler", "euler-a", "dpm++", "pndm",
                "float32", "bfloat16", "float16", "none", "model", "sequential", "first-block", "teacache",
                "lite", "strong", "extreme"}  # fmt: skip
_junk = st.one_of(
    st.text(alphabet=string.ascii_letters + string.punctuation, min_size=1, max_size=6).filter(
        lambda s: not s.startswith("-") and s.lower() not in _VALID_WORDS
    ),
    st.integers(-1000, -1).map(str),
    st.sampled_from(["nan", "-inf", "1e9x", "7.5.1", ""]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=_flags, value=_junk)
def test_random_invalid_arguments_never_write(tmp_path, flag, value):
    out = tmp_path / "fuzz.mp4"
    with pytest.raises(SystemExit) as e:
        main(["--image", START, "--output", str(out), *FAST, flag, value])
    assert e.value.code == 2
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "remove"])
def test_corrupted_checkpoint_never_loads(tiny_checkpoint, tmp_path, damage):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    if damage == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(os.urandom(1024))
    else:
        weights.unlink()
    with pytest.raises((ValueError, OSError)) as e:
        RuyiImageToVideoPipeline.from_pretrained(folder)
    assert "diffusion_pytorch_model" in str(e.value)


@pytest.mark.parametrize("damage", ["truncated-vae", "no-embeddings", "wrong-layout"])
def test_cli_bad_checkpoint_fails_without_output(tiny_checkpoint, tmp_path, damage, capsys):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    if damage == "truncated-vae":
        weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "no-embeddings":
        (folder / "embeddings.safetensors").unlink()
    else:
        shutil.rmtree(folder / "scheduler")
    out = tmp_path / "video.mp4"
    assert main(["--model", str(folder), "--image", START, "--output", str(out), *FAST[2:]]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ruyi-i2v: error: --model") and "could not be loaded" in last
    assert "Traceback" not in last
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_cli_with_original_lora_on_converted_checkpoint(tiny_checkpoint, tmp_path):
    from diffusers_ruyi import RuyiImageToVideoPipeline

    converted = tmp_path / "converted"
    RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint).save_pretrained(converted)
    lora = ROOT / "tests" / "fixtures" / "lora" / "ruyi_lora_original.safetensors"
    base, with_lora = tmp_path / "base.mp4", tmp_path / "lora.mp4"
    common = ["--model", str(converted), "--image", START, "--num-frames", "8", "--height", "32", "--width", "48"]
    common += ["--steps", "2", "--seed", "3"]
    assert main([*common, "--output", str(base)]) == 0
    assert main([*common, "--output", str(with_lora), "--lora", str(lora), "--lora-weight", "0.5"]) == 0
    base_frames, _ = _read_video(base)
    lora_frames, _ = _read_video(with_lora)
    assert len(lora_frames) == 8
    diff = max(abs(a.astype(int) - b.astype(int)).max() for a, b in zip(base_frames, lora_frames))
    assert diff > 0  # the LoRA changed the video


def test_cli_names_its_own_flag_for_unaligned_original_tiling(tiny_realfmt_checkpoint, tmp_path, capsys):
    # A published-layout checkpoint whose config asks for the original's tiling at 48 px / 0.25: it would encode
    # 80x64 px to 11x8 latents, which the original fails on. The CLI refuses in one line that names its own fix.
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_realfmt_checkpoint, folder)
    config_path = folder / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(tile_sample_min_size=48, tile_overlap_factor=0.25)
    config_path.write_text(json.dumps(config))
    out = tmp_path / "video.mp4"
    args = ["--model", str(folder), "--image", START, "--output", str(out), "--num-frames", "8"]
    args += ["--height", "80", "--width", "64", "--steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ruyi-i2v: error:") and "`--vae-tiling`" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not out.exists()
    assert main([*args, "--vae-tiling"]) == 0
    frames, _ = _read_video(out)
    assert len(frames) == 8 and frames[0].shape == (80, 64, 3)
