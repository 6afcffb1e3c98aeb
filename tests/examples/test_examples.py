import numpy as np
import pytest
from _helpers import EXAMPLES, ORIGINAL_LORA, load_example, read_frames


SMALL = ["--model", "tiny-random", "--num-frames", "8", "--steps", "1"]


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
    load_example(name).main([*SMALL, "--image", str(EXAMPLES / "assets" / "start.png"), "--output", str(out), *extra])
    frames = read_frames(out)
    assert len(frames) == 8 and frames[0].shape[:2] == size


def _refusal_before_loading(name, argv, monkeypatch, capsys) -> str:
    """What example ``name`` prints when it stops with exit 2 on ``argv`` (failing the test if it loads a model)."""
    example = load_example(name)
    monkeypatch.setattr(example, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        example.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-frames", "7"], "--num-frames: expected 1 or a positive multiple of 8, got '7'"),
        (["--steps", "0"], "--steps: expected a positive integer, got '0'"),
        (["--image", "missing.png"], "--image 'missing.png' does not exist"),
        (["--image", __file__], "is not a readable image"),
        (["--output", "{tmp}/video.gif"], "--output must end with .mp4"),
        (["--output", "{tmp}/folder.mp4"], "is a folder; give a file name"),
        (["--model", "no/such/folder/x"], "--model"),
    ],
)
def test_examples_check_their_arguments_before_loading(tmp_path, monkeypatch, capsys, extra, message):
    # They failed after the model had loaded (or after generating, for --output), with a traceback.
    extra = [value.replace("{tmp}", str(tmp_path)) for value in extra]
    (tmp_path / "folder.mp4").mkdir()
    argv = [*SMALL, "--output", str(tmp_path / "v.mp4"), *extra]
    assert message in _refusal_before_loading("image_to_video", argv, monkeypatch, capsys)


EXAMPLE_OUTPUTS = {
    "image_to_video": ".mp4", "start_end_frames": ".mp4", "low_memory": ".mp4", "camera_control_grid": ".mp4",
    "lora_inference": ".mp4", "long_video_strip": ".png",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXAMPLE_OUTPUTS))
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image", "missing.png"], "--image 'missing.png' does not exist"),
        (["--model", "no/such/folder/x"], "--model 'no/such/folder/x' does not exist"),
        (["--output", "{tmp}/folder{suffix}"], "is a folder; give a file name"),
        (["--output", "{tmp}/v.webp"], "--output must end with {suffix}"),
    ],
)
def test_every_example_checks_the_shared_arguments_before_loading(tmp_path, monkeypatch, capsys, name, extra, message):
    # long_video_strip.py did not: a missing image failed after loading the model, a bad --output after generating.
    suffix = EXAMPLE_OUTPUTS[name]
    extra = [value.format(tmp=tmp_path, suffix=suffix) for value in extra]
    (tmp_path / f"folder{suffix}").mkdir()
    required = ["--lora", str(ORIGINAL_LORA)] if name == "lora_inference" else []
    argv = ["--model", "tiny-random", "--output", str(tmp_path / f"v{suffix}"), *required, *extra]
    assert message.format(suffix=suffix) in _refusal_before_loading(name, argv, monkeypatch, capsys)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-frames", "20"], "a video of at most `segment_frames`=32 frames is made in one call"),
        (["--context-frames", "30"], "`context_frames`=30 leaves fewer than 8 new frames"),
        (["--height", "40"], "`height` must be a positive multiple of 16, got 40"),
        (["--cameras", "left,diagonal"], "--cameras: one of static, "),
        (["--cameras", "left,right,up,down"], "or one per segment (2); got 'left,right,up,down'"),
        (["--video", "{tmp}/v.gif"], "--video must end with .mp4"),
    ],
)
def test_long_video_strip_checks_its_own_arguments_before_loading(tmp_path, monkeypatch, capsys, extra, message):
    extra = [value.format(tmp=tmp_path) for value in extra]
    argv = ["--model", "tiny-random", "--output", str(tmp_path / "s.png"), "--num-frames", "40", "--segment-frames"]
    assert message in _refusal_before_loading("long_video_strip", [*argv, "32", *extra], monkeypatch, capsys)


def test_camera_grid(tmp_path):
    out = tmp_path / "grid.mp4"
    args = [*SMALL, "--output", str(out), "--height", "32", "--width", "48", "--cameras", "left", "right"]
    load_example("camera_control_grid").main(
        args + ["--motions", "1", "4", "--image", str(EXAMPLES / "assets" / "start.png")]
    )
    frames = read_frames(out)
    assert len(frames) == 8 and frames[0].shape[:2] == (64, 96)  # 2 motions x 2 cameras


def test_long_video_strip(tmp_path):
    import PIL.Image

    out, video = tmp_path / "strip.png", tmp_path / "long.mp4"
    args = ["--num-frames", "27", "--steps", "1", "--cameras", "left,right"]
    args += ["--output", str(out), "--video", str(video)]
    assert load_example("long_video_strip").main(["--model", "tiny-random", *args]) == str(out)
    strip = PIL.Image.open(out)
    assert strip.height == 2 * (32 + 4)  # one row per segment
    assert len(read_frames(video)) == 27
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4", "strip.png"]


def test_lora_inference_fuse_matches_the_adapter(tmp_path):
    """`--fuse` merges the LoRA (the video of the unfused adapter, not the base model's) and drops the adapter."""

    def frames(*extra):
        out = tmp_path / f"lora{len(list(tmp_path.iterdir()))}.mp4"
        args = [*SMALL, "--image", str(EXAMPLES / "assets" / "start.png"), "--output", str(out)]
        load_example("lora_inference").main([*args, "--base-resolution", "64", "--lora", str(ORIGINAL_LORA), *extra])
        return np.stack(read_frames(out)).astype(np.int16)

    fused, adapter = frames("--fuse", "--lora-weight", "3"), frames("--lora-weight", "3")
    base = frames("--fuse", "--lora-weight", "0")
    assert np.abs(fused - adapter).max() <= 2
    assert np.abs(fused - base).max() > 20


def test_low_memory_skip_offload_keeps_the_video_and_offload_needs_a_gpu(tmp_path, monkeypatch, capsys):
    import torch

    import diffusers_ruyi.hooks as hooks

    example = load_example("low_memory")
    common = [*SMALL, "--image", str(EXAMPLES / "assets" / "start.png"), "--base-resolution", "64", "--tile", "32"]
    applied = []
    real_apply = hooks.apply_ruyi_skip_offload
    monkeypatch.setattr(
        example, "apply_ruyi_skip_offload", lambda m, c: (applied.append(c.group_size), real_apply(m, c))
    )
    plain = example.main([*common, "--offload", "none", "--output", str(tmp_path / "plain.mp4")])
    parked = example.main([*common, "--offload", "none", "--skip-offload", "1", "--output", str(tmp_path / "s.mp4")])
    assert applied == [1]
    assert np.array_equal(np.stack(read_frames(parked)), np.stack(read_frames(plain)))

    if not torch.cuda.is_available():
        for offload in ("model", "group"):
            with pytest.raises(SystemExit):
                example.main([*common, "--offload", offload, "--output", str(tmp_path / "x.mp4")])
            assert f"--offload {offload} needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.main([*common, "--offload", "none", "--skip-offload", "-1", "--output", str(tmp_path / "x.mp4")])
    assert "--skip-offload must be >= 0" in capsys.readouterr().err
