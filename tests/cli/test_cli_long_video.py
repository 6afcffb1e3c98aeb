"""`ruyi-i2v` long videos (`--num-frames` beyond `--segment-frames`) and continuation (`--extend`)."""

import os
import pathlib
import subprocess
import sys

import imageio
import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_ruyi import long_video
from diffusers_ruyi.cli import main
from diffusers_ruyi.tiny import build_tiny_random_pipeline


ROOT = pathlib.Path(__file__).resolve().parents[2]
START = str(ROOT / "examples" / "assets" / "start.png")
END = str(ROOT / "examples" / "assets" / "end.png")
FAST = ["--model", "tiny-random", "--height", "32", "--width", "48", "--steps", "1", "--quiet"]


def _read(path):
    reader = imageio.get_reader(str(path))
    try:
        return list(reader.iter_data()), reader.get_meta_data()["fps"]
    finally:
        reader.close()


def _write(path, frames, fps=12):
    with imageio.get_writer(str(path), fps=fps, macro_block_size=16) as writer:
        for frame in frames:
            writer.append_data(frame)


@pytest.fixture
def input_video(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "in.mp4"
    _write(path, [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(9)])
    return path


class _CaptureWriter:
    """Replaces imageio's mp4 writer: keeps the uint8 frames given to it."""

    def __init__(self, store):
        self.store = store

    def append_data(self, frame):
        self.store.append(np.array(frame))

    def close(self):
        pass


def _capture(monkeypatch):
    frames = []
    real = imageio.get_writer

    def get_writer(path, **kwargs):
        if str(path).endswith(".mp4") and os.path.basename(str(path)).startswith(".ruyi-"):
            return _CaptureWriter(frames)
        return real(path, **kwargs)

    monkeypatch.setattr(imageio, "get_writer", get_writer)
    return frames


def test_long_video_in_three_segments(tmp_path, capsys):
    out = tmp_path / "long.mp4"
    argv = ["--image", START, "--output", str(out), "--num-frames", "32", "--segment-frames", "16"]
    assert main([*argv, *FAST[:-1], "--camera", "left,static,right"]) == 0
    frames, fps = _read(out)
    assert len(frames) == 32 and frames[0].shape == (32, 48, 3) and fps == pytest.approx(24)
    err = capsys.readouterr().err
    for line in (
        "segment 1/3: 16 frames from --image, 16 new (camera left, motion auto)",
        "segment 2/3: 16 frames continuing 5 frames, 11 new (camera static, motion auto)",
        "segment 3/3: 16 frames continuing 5 frames, 5 new (camera right, motion auto)",
        "(16 of 32 frames written)",
        "(27 of 32 frames written)",
        "(32 of 32 frames written)",
        "wrote " + str(out) + " (32 frames, 48x32, 24 fps)",
    ):
        assert line in err
    assert [p.name for p in tmp_path.iterdir()] == ["long.mp4"]


@pytest.mark.parametrize("choice", ["cpu", "device"])
def test_both_paths_draw_with_the_generator_device_flag(tmp_path, monkeypatch, choice):
    # The single call and the segments both take their generator from `--generator-device` (its choice of device is
    # tested in test_cli_effects.py).
    from diffusers_ruyi import cli

    made = []
    real = cli._generator

    def recording(args, device):
        made.append(args.generator_device)
        return real(args, device)

    monkeypatch.setattr(cli, "_generator", recording)
    single = ["--image", START, "--output", str(tmp_path / "a.mp4"), "--num-frames", "8"]
    long = ["--image", START, "--output", str(tmp_path / "b.mp4"), "--num-frames", "24", "--segment-frames", "16"]
    for argv in (single, long):
        assert main([*argv, *FAST, "--generator-device", choice]) == 0
    assert made == [choice, choice]


def test_long_video_frames_are_those_of_the_python_api(tmp_path, monkeypatch):
    written = _capture(monkeypatch)
    argv = ["--image", START, "--output", str(tmp_path / "v.mp4"), "--num-frames", "24", "--segment-frames", "16"]
    assert main([*argv, *FAST, "--motion", "1,3", "--seed", "3", "--last-image", END]) == 0
    pipe = build_tiny_random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    expected = long_video.generate_long_video(
        pipe,
        PIL.Image.open(START).convert("RGB"),
        24,
        segment_frames=16,
        last_image=PIL.Image.open(END).convert("RGB"),
        motion=["1", "3"],
        height=32,
        width=48,
        num_inference_steps=1,
        generator=torch.Generator("cpu").manual_seed(3),
    ).frames[0]
    assert np.array_equal(np.stack(written), (expected * 255).astype(np.uint8))


def test_extend_appends_frames_after_the_input(tmp_path, input_video, monkeypatch, capsys):
    written = _capture(monkeypatch)
    out = tmp_path / "out.mp4"
    assert main(["--extend", str(input_video), "--output", str(out), "--num-frames", "11", *FAST[:-1]]) == 0
    assert "(20 of 20 frames written)" in capsys.readouterr().err  # the copied frames count too
    original, _ = _read(input_video)
    assert len(written) == 9 + 11
    assert all(np.array_equal(a, b) for a, b in zip(written[:9], original))  # decoded input frames, unchanged


def test_extend_writes_a_playable_mp4_with_the_input_fps(tmp_path, input_video):
    out = tmp_path / "out.mp4"
    assert main(["--extend", str(input_video), "--output", str(out), "--num-frames", "3", "--crf", "19", *FAST]) == 0
    frames, fps = _read(out)
    assert len(frames) == 12 and frames[0].shape == (32, 48, 3) and fps == pytest.approx(12)
    assert b"crf=19.0" in out.read_bytes()  # the segments' writer takes --crf too


@pytest.mark.parametrize("height, width", [(16, 32), (48, 64)])
def test_extend_at_another_size_resizes_the_new_frames_to_the_video(tmp_path, input_video, capsys, height, width):
    # Generated at --height x --width (smaller or larger than the 48x32 input), written at the video's size.
    out = tmp_path / "out.mp4"
    argv = ["--extend", str(input_video), "--output", str(out), "--num-frames", "3", *FAST[:-1]]
    assert main([*argv, "--height", str(height), "--width", str(width)]) == 0
    assert f"generating at {width}x{height}; new frames are resized to the video's 48x32" in capsys.readouterr().err
    frames, _ = _read(out)
    assert len(frames) == 12 and {frame.shape for frame in frames} == {(32, 48, 3)}
    assert main([*argv, "--overwrite"]) == 0  # at the video's own size: nothing to say
    assert "new frames are resized" not in capsys.readouterr().err


def test_extend_in_place_with_overwrite(tmp_path, input_video):
    with pytest.raises(SystemExit) as e:
        main(["--extend", str(input_video), "--output", str(input_video), "--num-frames", "3", *FAST])
    assert e.value.code == 2
    assert (
        main([*FAST, "--extend", str(input_video), "--output", str(input_video), "--num-frames", "3", "--overwrite"])
        == 0
    )
    frames, _ = _read(input_video)
    assert len(frames) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_failure_in_a_later_segment_leaves_no_file(tmp_path, monkeypatch, capsys):
    calls = []
    real_iter = long_video.iter_video_segments

    def failing(*args, **kwargs):
        for i, item in enumerate(real_iter(*args, **kwargs)):
            calls.append(i)
            if i == 1:
                raise RuntimeError("boom in segment 2")
            yield item

    monkeypatch.setattr(long_video, "iter_video_segments", failing)
    # Into folders that do not exist yet: the run creates them and, failing, removes them again.
    out = tmp_path / "new" / "deeper" / "long.mp4"
    argv = ["--image", START, "--output", str(out), "--num-frames", "24", "--segment-frames", "16", *FAST]
    assert main(argv) == 1
    assert "boom in segment 2" in capsys.readouterr().err
    assert calls == [0, 1] and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------
# Argument errors: exit code 2, one line on stderr, nothing written, torch never imported
# ------------------------------------------------------------------------------------------------------------


_PROBE = """
import sys
from diffusers_ruyi.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    print("exit", e.code, "torch" in sys.modules)
"""


def _cli(*argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-frames", "8"], "pass --image (a start frame) or --extend (a video to continue)"),
        (["--image", START, "--extend", "{video}"], "pass either --image or --extend, not both"),
        (["--extend", "missing.mp4"], "--extend 'missing.mp4' does not exist"),
        (["--extend", str(ROOT / "README.md")], "is not a readable video"),
        (
            ["--extend", "{video}", "--context-frames", "12"],
            "--context-frames=12, but the video to continue has only 9 frame(s): use --context-frames of at most 9",
        ),
        (["--image", START, "--num-frames", "50"], "--num-frames must be 1 or a multiple of 8, got 50"),
        (["--image", START, "--num-frames", "1000000000000"], "--num-frames must be <= 1,000,000"),
        (["--image", START, "--num-frames", "200", "--segment-frames", "100"], "--segment-frames must be a multiple"),
        (["--image", START, "--num-frames", "200", "--segment-frames", "128"], "up to 120"),
        (["--image", START, "--num-frames", "300", "--camera", "left,right"], "--camera has 2 values, but the video"),
        (["--image", START, "--num-frames", "8", "--motion", "1,2"], "video has 1 segment(s) of at most 120 frames"),
        (["--image", START, "--num-frames", "8", "--motion", "1,2"], "(2 segments make at most 235 frames)"),
        (["--extend", "{video}", "--num-frames", "8", "--motion", "1,2"], "(2 segments make at most 230 new frames)"),
        (["--extend", str(ROOT / "examples")], "--extend '" + str(ROOT / "examples") + "' is a folder"),
        (["--image", START, "--camera", "left,diagonal"], "invalid choice: 'diagonal'"),
        (["--image", START, "--num-frames", "200", "--context-frames", "113"], "use at most 112 context frames"),
    ],
)
def test_bad_long_video_arguments(tmp_path, input_video, argv, message):
    out = tmp_path / "out.mp4"
    argv = [a.replace("{video}", str(input_video)) for a in argv]
    result = _cli(*argv, "--output", str(out), "--model", "tiny-random")
    assert result.stdout.strip() == "exit 2 False"  # refused before torch was imported
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_extend_keeps_a_size_that_is_no_multiple_of_16(tmp_path, capsys):
    # 50x40 (like 1920x1080, not a multiple of 16): generated at a bucket size, the new frames resized to 50x40, and
    # the file written at 50x40, the copied frames untouched (imageio's default macro block of 16 would enlarge all).
    rng = np.random.default_rng(1)
    video = tmp_path / "odd.mp4"
    with imageio.get_writer(str(video), fps=12, macro_block_size=1) as writer:
        for _ in range(8):
            writer.append_data(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    out = tmp_path / "out.mp4"
    argv = ["--model", "tiny-random", "--steps", "1", "--base-resolution", "64", "--segment-frames", "16"]
    assert main([*argv, "--extend", str(video), "--output", str(out), "--num-frames", "3"]) == 0
    err = capsys.readouterr().err
    assert "new frames are resized to the video's 50x40" in err and "(11 frames, 50x40," in err
    frames, _ = _read(out)
    assert len(frames) == 11 and {frame.shape for frame in frames} == {(40, 50, 3)}


def test_extend_refuses_an_odd_size(tmp_path):
    video = tmp_path / "odd.mp4"
    with imageio.get_writer(str(video), fps=12, macro_block_size=1, pixelformat="yuv444p") as writer:
        for _ in range(3):
            writer.append_data(np.zeros((41, 50, 3), dtype=np.uint8))
    out = tmp_path / "out.mp4"
    result = _cli("--extend", str(video), "--output", str(out), "--model", "tiny-random")
    assert result.stdout.strip() == "exit 2 False"  # refused before torch was imported
    assert "is 50x41: the continuation is written at the video's size, and H.264 (yuv420p) needs an even" in (
        result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_extend_without_a_size_generates_at_the_videos_own(tmp_path, input_video, capsys):
    # Kills `info["width"] % 16 == 0` -> `== 1` in _run_segments (cli.py): a 48x32 video (both multiples of 16) is
    # continued at its own size, not at a training bucket.
    out = tmp_path / "out.mp4"
    argv = ["--model", "tiny-random", "--steps", "1", "--base-resolution", "64", "--extend", str(input_video)]
    assert main([*argv, "--output", str(out), "--num-frames", "3"]) == 0
    assert "new frames are resized" not in capsys.readouterr().err
    frames, _ = _read(out)
    assert {frame.shape for frame in frames} == {(32, 48, 3)}
