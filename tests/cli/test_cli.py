import gc
import json
import os
import pathlib
import shutil
import string
import sys

import imageio
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusers_ruyi import RuyiImageToVideoPipeline, cli
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
    # x264's own quality, as predict_i2v.py's imageio.mimsave writes (export_to_video's default is CRF 25); x264
    # records its options in the stream.
    assert b"crf=23.0" in out.read_bytes()


def test_cli_writes_a_fractional_frame_rate(tmp_path):
    # An integer was required, though --extend writes a 29.97 fps video's own rate.
    out = tmp_path / "ntsc.mp4"
    assert main(["--image", START, "--output", str(out), "--fps", "29.97", *FAST]) == 0
    assert _read_video(out)[1] == pytest.approx(29.97, abs=0.01)


def test_crf_sets_the_mp4_quality(tmp_path):
    # The original's ComfyUI workflows save at CRF 19.
    out = tmp_path / "video.mp4"
    assert main(["--image", START, "--output", str(out), "--crf", "19", *FAST]) == 0
    assert b"crf=19.0" in out.read_bytes()
    assert len(_read_video(out)[0]) == 8


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
        # diffusers' load_image takes URLs: said so, not "does not exist".
        (["--image", "HTTPS://example.com/a.png"], "is a URL; download the image and pass its file"),
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
        (["--lora-weight", "0.5"], "1 --lora-weight values for 0 --lora files: give one per file, or none"),
        # Too few was padded with 1.0: a user may have meant 0.5 for both.
        (
            ["--lora", "a.safetensors", "--lora", "b.safetensors", "--lora-weight", "0.5"],
            "1 --lora-weight values for 2",
        ),
        (["--device", "cuda"], "no CUDA GPU is available"),
        (["--offload", "model"], "needs a CUDA GPU"),
        (["--offload", "group"], "--offload group needs a CUDA GPU"),
        # The VAE's force_upcast would run a float16 VAE in float32.
        (["--vae-dtype", "float16"], "--vae-dtype: invalid choice: 'float16'"),
        (["--generator-device", "cuda"], "--generator-device: invalid choice: 'cuda'"),
        (["--offload", "sequential"], "needs a CUDA GPU"),
        (["--skip-offload", "-1"], "expected an integer >= 0, got '-1'"),
        (["--skip-offload", "two"], "expected an integer >= 0, got 'two'"),
        (["--lora-weight", "nan"], "--lora-weight: expected a finite number, got 'nan'"),
        (["--lora-weight=-inf"], "--lora-weight: expected a finite number, got '-inf'"),
        (["--base-resolution", "63"], "--base-resolution: expected an integer from 64 to 2048, got '63'"),
        (["--base-resolution", "2049"], "--base-resolution: expected an integer from 64 to 2048, got '2049'"),
        # Sizes the allocator would refuse after the models were built.
        (["--height", "4112"], "--height: expected a positive integer of at most 4096, got '4112'"),
        (["--width", "1600000"], "--width: expected a positive integer of at most 4096"),
        (["--fps", "241"], "--fps: expected a number from 1 to 240 (such as 24 or 29.97), got '241'"),
        (["--fps", "0.5"], "--fps: expected a number from 1 to 240"),
        (["--fps", "nan"], "--fps: expected a number from 1 to 240"),
        # A name too long for the file system failed at the final rename, after the whole run.
        (["--output", "x" * 300 + ".mp4"], "bytes long; this file system takes at most"),
        # Explicit step windows that leave nothing to do.
        (["--enhance-a-video", "1", "--enhance-skip-start", "1"], "leave none of the 1 --steps to enhance"),
        (["--cache", "teacache", "--cache-skip-end", "0"], "--cache-skip-start 3 (default) and --cache-skip-end 0 (0"),
        # At the edge: as many steps as the windows take (with 0 counted as 1).
        (
            ["--enhance-a-video", "1", "--enhance-skip-end", "1"],
            "--enhance-skip-start 0 and --enhance-skip-end 1 leave",
        ),
        (["--cache", "teacache", "--cache-skip-start", "0", "--cache-skip-end", "0", "--steps", "2"], "none of the 2"),
        (["--seed", str(2**64)], "--seed: expected an integer from -2**63 to 2**64 - 1"),
        (["--seed", str(-(2**63) - 1)], "--seed: expected an integer from -2**63 to 2**64 - 1"),
        (["--device", "meta"], "--device 'meta' is not a device"),
        (["--device", "mps"], "--device mps is not available on this machine"),
        (["--cache-threshold", "0.2"], "--cache-threshold needs --cache"),
        (["--output", "/proc/ruyi-test.mp4"], "--output '/proc/ruyi-test.mp4' cannot be written"),
        # Checked against the scheduler's config before the model is built (the tiny model's DDIM: 1000 steps).
        (["--steps", "1001"], "--steps 1001 is more than the schedule's 1000 training steps: use at most 1000"),
        # Every sampler: Euler's schedule of 10^9 steps filled the memory before anything refused it.
        (["--steps", "1000000000", "--scheduler", "euler"], "is more than the schedule's 1000 training steps"),
        (["--scheduler", "pndm", "--steps", "2"], "--steps 2 does not work with --scheduler pndm (use at least 4)"),
        # Allowed by the count, but the "leading" schedule passes the last training timestep: an IndexError mid-run
        # (DDIM, PNDM at 1000; DPM++ at 1000), or a NaN video (DPM++ at 999), after the model had loaded.
        (
            ["--steps", "1000"],
            "--steps 1000 does not work with --scheduler ddim (use at most 999): its schedule fails",
        ),
        (["--steps", "999", "--scheduler", "dpm++"], "(use at most 998): its schedule fails when run (its last steps"),
    ],
)
def test_bad_arguments_exit_2_without_output(tmp_path, capsys, monkeypatch, extra, message):
    if "cuda" in " ".join(extra) or "offload" in extra:
        if torch.cuda.is_available():
            pytest.skip("checks the no-GPU message")
    if "mps" in extra and torch.backends.mps.is_available():
        pytest.skip("checks the no-MPS message")
    out = tmp_path / "video.mp4"
    args = ["--image", START, "--output", str(out), *FAST]
    # Nothing may be built: the checks come first.
    monkeypatch.setattr("diffusers_ruyi.tiny.build_tiny_random_pipeline", _must_not_build)
    # later flags override earlier ones in argparse
    try:
        code = main(args + extra)  # the checks that need torch return the code
    except SystemExit as e:  # those made before torch is imported exit through argparse
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _must_not_build(*args, **kwargs):
    raise AssertionError("a model was built before the arguments were checked")


def _truncated_jpeg(folder):
    from PIL import Image

    path = folder / "truncated.jpg"
    Image.open(START).convert("RGB").save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header is intact: opening and `verify` pass
    return path


def _decompression_bomb(folder):
    import struct
    import zlib

    # A valid PNG header claiming 30000 x 30000 pixels (PIL refuses > 2 x its 89.5 M-pixel limit at open).
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = folder / "bomb.png"
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("flag", ["--image", "--last-image"])
@pytest.mark.parametrize("make", [_truncated_jpeg, _decompression_bomb])
def test_unreadable_images_are_refused_before_loading(tmp_path, capsys, monkeypatch, flag, make):
    bad = make(tmp_path)
    out = tmp_path / "video.mp4"
    monkeypatch.setattr("diffusers_ruyi.tiny.build_tiny_random_pipeline", _must_not_build)
    images = ["--image", str(bad)] if flag == "--image" else ["--image", START, "--last-image", str(bad)]
    with pytest.raises(SystemExit) as e:
        main([*images, "--output", str(out), *FAST])
    assert e.value.code == 2
    assert f"{flag} {str(bad)!r} is not a readable image" in capsys.readouterr().err
    assert not out.exists()


def test_32_bit_images_are_refused_before_loading(tmp_path, capsys, monkeypatch):
    import PIL.Image

    bad = tmp_path / "depth.tiff"
    PIL.Image.new("F", (48, 32), 0.5).save(bad)
    monkeypatch.setattr("diffusers_ruyi.tiny.build_tiny_random_pipeline", _must_not_build)
    with pytest.raises(SystemExit) as e:
        main(["--image", str(bad), "--output", str(tmp_path / "video.mp4"), *FAST])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--image {str(bad)!r} is a 32-bit float image (PIL mode 'F')" in err and len(err.strip().splitlines()) == 1


def test_a_16_bit_grayscale_png_is_read_as_its_picture(tmp_path, monkeypatch):
    # Read through `diffusers.utils.load_image`, it would be a white frame (Pillow clips 16-bit values at 255).
    import numpy as np
    import PIL.Image

    gray = np.asarray(PIL.Image.open(START).convert("L"))
    path = tmp_path / "start16.png"
    PIL.Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    seen = []
    monkeypatch.setattr(RuyiImageToVideoPipeline, "__call__", lambda self, image, **kw: seen.append(image) or 1 / 0)
    assert main(["--image", str(path), "--output", str(tmp_path / "video.mp4"), *FAST]) != 0  # stopped there
    assert np.array_equal(np.asarray(seen[0]), np.asarray(PIL.Image.fromarray(gray).convert("RGB")))


def _write_safetensors(path, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: _write_safetensors(d / "x.safetensors", {}), "holds no tensors"),
        (lambda d: _write_safetensors(d / "x.safetensors", {"foo.weight": torch.ones(2)}), "holds no LoRA tensors"),
        (lambda d: (d / "x.safetensors").write_bytes(b"\x00" * 64) and d / "x.safetensors", "not a readable"),
        (lambda d: (d / "x.pt").write_bytes(b"pickle") and d / "x.pt", "is not a .safetensors file"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "is a folder without a .safetensors file"),
    ],
)
def test_lora_files_are_checked_before_loading(tmp_path, capsys, monkeypatch, make, message):
    lora = make(tmp_path)
    out = tmp_path / "video.mp4"
    monkeypatch.setattr("diffusers_ruyi.tiny.build_tiny_random_pipeline", _must_not_build)
    with pytest.raises(SystemExit) as e:
        main(["--image", START, "--output", str(out), *FAST, "--lora", str(lora)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--lora {str(lora)!r}" in err and message in err
    assert not out.exists()


def test_truncated_lora_file_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    lora = ROOT / "tests" / "fixtures" / "lora" / "ruyi_lora_original.safetensors"
    data = lora.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 16])
    monkeypatch.setattr("diffusers_ruyi.tiny.build_tiny_random_pipeline", _must_not_build)
    with pytest.raises(SystemExit):
        main(["--image", START, "--output", str(tmp_path / "v.mp4"), *FAST, "--lora", str(cut)])
    assert "is not a readable safetensors file" in capsys.readouterr().err


def test_lora_that_does_not_fit_names_the_reason(tmp_path, capsys):
    # The keys are LoRA keys, so only the loaded transformer can tell they fit no module; the line must still say why.
    lora = _write_safetensors(
        tmp_path / "x.safetensors",
        {"transformer.no_such.lora_A.weight": torch.ones(2, 4), "transformer.no_such.lora_B.weight": torch.ones(4, 2)},
    )
    assert main(["--image", START, "--output", str(tmp_path / "v.mp4"), *FAST, "--lora", str(lora)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"ruyi-i2v: error: --lora {str(lora)!r} could not be loaded: Cannot load this LoRA")
    assert "match no Linear/Conv/Embedding module" in last and "no_such" in last
    assert not (tmp_path / "v.mp4").exists()


def test_non_finite_frames_are_not_written(tmp_path, capsys):
    # A LoRA merged at 1e30 gives NaN frames: an all-black video with exit 0 before.
    lora = ROOT / "tests" / "fixtures" / "lora" / "ruyi_lora_peft.safetensors"
    out = tmp_path / "v.mp4"
    code = main(["--image", START, "--output", str(out), *FAST, "--lora", str(lora), "--lora-weight", "1e30"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "the generated frames hold NaN or infinite values" in last and "nothing was written" in last
    assert list(tmp_path.iterdir()) == []
    # A segmented run checks each segment before it is appended.
    code = main(
        ["--image", START, "--output", str(out), *FAST, "--lora", str(lora), "--lora-weight", "1e30"]
        + ["--num-frames", "17", "--segment-frames", "16", "--context-frames", "1"]
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "the generated frames of segment 1 hold NaN" in last
    assert list(tmp_path.iterdir()) == []


def test_a_video_without_a_readable_frame_rate_needs_fps(tmp_path, capsys, monkeypatch):
    # It was taken as 24 fps without a word.
    import imageio_ffmpeg

    video = tmp_path / "in.mp4"
    video.write_bytes(b"")

    def read_frames(path):
        yield {"size": (48, 32), "fps": 0.0}

    monkeypatch.setattr(imageio_ffmpeg, "read_frames", read_frames)
    monkeypatch.setattr(imageio_ffmpeg, "count_frames_and_secs", lambda path: (8, 0.0))
    assert cli.check_video(str(video))["fps"] is None
    args = ["--extend", str(video), "--output", str(tmp_path / "out.mp4"), *FAST]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert f"--extend {str(video)!r}: its frame rate cannot be read; pass --fps" in capsys.readouterr().err
    # A video above --fps's limit: its rate would have been written as it is.
    monkeypatch.setattr(cli, "check_video", lambda path: {"frames": 8, "height": 32, "width": 48, "fps": 240.5})
    with pytest.raises(SystemExit):
        main(args)
    assert f"--extend {str(video)!r} is 240.5 fps, above 240; pass --fps" in capsys.readouterr().err
    cli.check_args(cli.build_parser().parse_args([*args, "--fps", "24"]))  # an explicit --fps replaces it
    monkeypatch.setattr(cli, "check_video", lambda path: {"frames": 8, "height": 32, "width": 48, "fps": 240.0})
    cli.check_args(cli.build_parser().parse_args(args))
    # A video above the largest frame size, generated at its own size, needs --height/--width.
    monkeypatch.setattr(cli, "check_video", lambda path: {"frames": 8, "height": 32, "width": 4112, "fps": 24.0})
    with pytest.raises(SystemExit):
        main([*args[:4], "--model", "tiny-random"])
    assert "is 4112x32: new frames would be made at that size, above 4096; pass --height and --width" in (
        capsys.readouterr().err
    )
    # With --fps it passes this check (and fails later on the empty file, which is not a video).
    monkeypatch.setattr(cli, "check_video", lambda path: {"frames": 8, "height": 32, "width": 48, "fps": None})
    parsed = cli.build_parser().parse_args([*args, "--fps", "12"])
    cli.check_args(parsed)


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

    class BrokenWriter:
        def __init__(self, path, **kwargs):
            self.path = path

        def append_data(self, frame):
            with open(self.path, "wb") as f:
                f.write(b"partial")
            raise OSError("disk full")

        def close(self):
            pass

    monkeypatch.setattr("imageio.get_writer", BrokenWriter)
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


class _HalfBuilt:
    """Like a tqdm bar that Ctrl-C cut off inside ``__init__``: its ``__del__`` fails."""

    def __del__(self):
        raise AttributeError("'tqdm_asyncio' object has no attribute 'pos'")


@pytest.mark.parametrize("signal_error", [KeyboardInterrupt, cli._Terminated])
@pytest.mark.parametrize("verbose", [False, True])
def test_interrupt_hides_failing_teardown(signal_error, verbose, tmp_path, monkeypatch, capsys):
    # CI once printed tqdm's "Exception ignored in __del__" traceback after the one line: a flaky Ctrl-C landed in
    # the bar's __init__. In-process, so that it does not depend on where the signal lands.
    def interrupted_run(args, progress, stage):
        bar, cyclic = _HalfBuilt(), _HalfBuilt()  # noqa: F841 (held by the frame, as the cut-off bar is)
        cyclic.me = cyclic  # freed only by the garbage collector
        del cyclic
        raise signal_error()

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr(cli, "_run", interrupted_run)
    argv = [*FAST, "--image", START, "--output", str(tmp_path / "v.mp4")]
    code = main([*argv, "--verbose"] if verbose else argv)
    gc.collect()  # what the CLI left to the collector fails now, after it put the hook back
    assert code == (130 if signal_error is KeyboardInterrupt else 143)
    assert len(unraisable) == (2 if verbose else 0)  # --verbose keeps them
    assert sys.unraisablehook == unraisable.append  # put back
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith("no output was written")


def test_docs_table_lists_every_flag_and_no_other():
    # docs/cli.md's options table is the reference users read: a flag added or renamed must show there.
    import re

    from diffusers_ruyi.cli import build_parser

    flags = {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    flags -= {"--help", "--quiet", "--verbose"}  # described in the text above the table
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| `--")]
    documented = {flag for line in table for flag in re.findall(r"`(--[a-z0-9-]+)", line.split(" | ")[0])}
    assert flags == documented, (sorted(flags - documented), sorted(documented - flags))


def test_quiet_hides_warnings_without_dropping_filters_added_meanwhile(tmp_path, monkeypatch):
    # --quiet ran under `warnings.catch_warnings`, which threw away the filters libraries add while they are imported
    # during the run (accelerate's, for one); now only the display is off, and put back after.
    import warnings

    shown, configure = warnings.showwarning, cli._configure

    def configure_and_import(*args, **kwargs):
        warnings.filterwarnings("ignore", message="a filter a library adds on import")
        warnings.warn("a warning under --quiet")
        return configure(*args, **kwargs)

    monkeypatch.setattr(cli, "_configure", configure_and_import)
    with warnings.catch_warnings(record=True) as seen:  # (the test's own filters put back after)
        warnings.simplefilter("always")
        shown = warnings.showwarning
        assert main(["--image", str(START), "--output", str(tmp_path / "q.mp4"), *FAST, "--quiet"]) == 0
        assert warnings.showwarning is shown and not seen
        assert any(f[1] is not None and f[1].pattern == "a filter a library adds on import" for f in warnings.filters)
