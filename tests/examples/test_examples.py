import importlib.util
import pathlib

import imageio
import pytest


EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
SMALL = ["--model", "tiny-random", "--num-frames", "8", "--steps", "1"]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _frames(path):
    reader = imageio.get_reader(str(path))
    try:
        return list(reader.iter_data())  # len(reader) is inf for ffmpeg streams
    finally:
        reader.close()


@pytest.mark.parametrize(
    "name, extra, size",
    [
        ("image_to_video", ["--base-resolution", "64"], (48, 64)),
        ("start_end_frames", ["--height", "32", "--width", "48"], (32, 48)),
        ("low_memory", ["--base-resolution", "64", "--offload", "none", "--tile", "32", "--fp8"], (48, 64)),
    ],
)
def test_example_writes_video(tmp_path, name, extra, size):
    out = tmp_path / f"{name}.mp4"
    _load(name).main([*SMALL, "--image", str(EXAMPLES / "assets" / "start.png"), "--output", str(out), *extra])
    frames = _frames(out)
    assert len(frames) == 8 and frames[0].shape[:2] == size


def test_camera_grid(tmp_path):
    out = tmp_path / "grid.mp4"
    args = [*SMALL, "--output", str(out), "--height", "32", "--width", "48", "--cameras", "left", "right"]
    _load("camera_control_grid").main(
        args + ["--motions", "1", "4", "--image", str(EXAMPLES / "assets" / "start.png")]
    )
    frames = _frames(out)
    assert len(frames) == 8 and frames[0].shape[:2] == (64, 96)  # 2 motions x 2 cameras


def test_long_video_strip(tmp_path):
    import PIL.Image

    out, video = tmp_path / "strip.png", tmp_path / "long.mp4"
    args = ["--num-frames", "27", "--steps", "1", "--cameras", "left,right"]
    args += ["--output", str(out), "--video", str(video)]
    assert _load("long_video_strip").main(["--model", "tiny-random", *args]) == str(out)
    strip = PIL.Image.open(out)
    assert strip.height == 2 * (32 + 4)  # one row per segment
    assert len(_frames(video)) == 27
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4", "strip.png"]
