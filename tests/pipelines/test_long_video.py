"""Long videos in segments and video continuation (`diffusers_ruyi.long_video`)."""

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusers_ruyi import long_video
from diffusers_ruyi.long_video import (
    DEFAULT_CONTEXT_FRAMES,
    SegmentPlan,
    extend_video,
    generate_long_video,
    iter_video_segments,
    plan_segments,
)


SIZE = dict(height=32, width=48)
FAST = dict(num_inference_steps=1, **SIZE)
_END = PIL.Image.new("RGB", (48, 32))


def _seed(seed=0):
    return torch.Generator("cpu").manual_seed(seed)


class _Recorder:
    """Stands in for the pipeline and records every call's arguments (then runs the real pipeline)."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)


# ------------------------------------------------------------------------------------------------------------
# Planning
# ------------------------------------------------------------------------------------------------------------


def test_plan_of_a_long_video():
    plan = plan_segments(360)
    assert [p.num_frames for p in plan] == [120, 120, 120, 16]
    assert [p.context_frames for p in plan] == [0, 5, 5, 5]
    assert [p.new_frames for p in plan] == [120, 115, 115, 10]  # the last one generates 16 and keeps 15
    assert sum(p.new_frames for p in plan) == 360


def test_short_videos_are_one_plain_call():
    assert plan_segments(48) == [SegmentPlan(0, 48, 0, 48, 0)]
    assert plan_segments(1) == [SegmentPlan(0, 1, 0, 1, 0)]
    with pytest.raises(ValueError, match="1 or a multiple of 8 frames \\(longer videos may have any length\\)"):
        plan_segments(50)


def test_end_frame_makes_the_last_segment_exact():
    plan = plan_segments(32, segment_frames=16, end_frames=1)
    assert plan[-1] == SegmentPlan(2, 16, 5, 11, 1)  # ends on the end frame
    assert plan[1].new_frames == 5  # the segment before hands over the extra frames
    assert sum(p.new_frames for p in plan) == 32


def test_one_segment_continuation_with_an_end_frame_picks_the_nearest_context():
    assert plan_segments(13, continuation=True, end_frames=1) == [SegmentPlan(0, 16, 3, 13, 1)]
    assert plan_segments(16, continuation=True, end_frames=1) == [SegmentPlan(0, 24, 8, 16, 1)]
    with pytest.raises(ValueError, match="needs 8 frames of context.*only 5. Append 19 frames"):
        plan_segments(16, continuation=True, end_frames=1, available_context=5)
    # A tie (4 frames fewer or 4 more) keeps more context; one context frame is still a valid shrink.
    assert plan_segments(7, continuation=True, end_frames=1) == [SegmentPlan(0, 16, 9, 7, 1)]
    assert plan_segments(7, context_frames=4, continuation=True, end_frames=1) == [SegmentPlan(0, 8, 1, 7, 1)]
    # A video exactly as long as the grown context is enough, and so is a longer one.
    assert plan_segments(16, continuation=True, end_frames=1, available_context=8) == [SegmentPlan(0, 24, 8, 16, 1)]
    assert plan_segments(16, continuation=True, end_frames=1, available_context=20) == [SegmentPlan(0, 24, 8, 16, 1)]
    # Where shrinking is impossible (5 + 2 frames round up to 8), the context grows to 6 of the 20 frames.
    assert plan_segments(2, continuation=True, end_frames=1, available_context=20) == [SegmentPlan(0, 8, 6, 2, 1)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_frames=0), "`num_frames` must be >= 1, got 0"),
        # The plan of 10**12 frames alone did not fit in memory (the CLI hung while it checked its arguments).
        (dict(num_frames=1_000_001), "`num_frames` must be <= 1,000,000, got 1000001"),
        (dict(num_frames=10**12, continuation=True), "`num_frames` must be <= 1,000,000"),
        (dict(num_frames=200, segment_frames=100), "`segment_frames` must be a multiple of 8"),
        (dict(num_frames=200, context_frames=0), "`context_frames` must be >= 1, got 0"),
        (dict(num_frames=200, end_frames=-1), "`end_frames` must be >= 0, got -1"),
        (dict(num_frames=200, segment_frames=0), "`segment_frames` must be >= 8, got 0"),
        (dict(num_frames=200, context_frames=115), "use at most 112 context frames"),
        (
            dict(num_frames=10, continuation=True, available_context=3),
            "but the video to continue has only 3 frame\\(s\\): use `context_frames` of at most 3",
        ),
        (dict(num_frames=2, continuation=True, end_frames=3), "leave no room for 3 end frame"),
        (dict(num_frames=1, end_frames=1), "`num_frames`=1 leaves no room for 1 end frame"),
        (dict(num_frames=8, end_frames=8), "`num_frames`=8 leaves no room for 8 end frame"),
        (dict(num_frames=200, segment_frames=16, context_frames=5, end_frames=12), "12 end frames do not fit in a"),
        # A segment of 8 frames has no room for context: it cannot continue anything (it advised "at most 0").
        (dict(num_frames=20, segment_frames=8, context_frames=1), "`segment_frames`=8 cannot continue a video"),
        (dict(num_frames=3, continuation=True, segment_frames=8), "needs `segment_frames` >= 16"),
    ],
)
def test_plan_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_segments(**kwargs)


def test_the_longest_video_is_planned():
    plan = plan_segments(1_000_000)
    assert sum(segment.new_frames for segment in plan) == 1_000_000


@pytest.mark.parametrize("name", ["num_frames", "context_frames", "segment_frames", "end_frames"])
@pytest.mark.parametrize("value", [16.0, "16", True, None])
def test_plan_refuses_counts_that_are_not_integers(name, value):
    kwargs = {"num_frames": 200, name: value}
    with pytest.raises(TypeError, match=f"`{name}` must be an integer, got {type(value).__name__}"):
        plan_segments(**kwargs)


def test_one_call_plans_ignore_the_context_settings():
    # No segment of a one-call video is conditioned on context: a context too long for a continuing segment, or a
    # segment too short for one, is no reason to refuse it.
    assert plan_segments(16, context_frames=12, segment_frames=16) == [SegmentPlan(0, 16, 0, 16, 0)]
    assert plan_segments(8, segment_frames=8) == [SegmentPlan(0, 8, 0, 8, 0)]
    assert plan_segments(16, context_frames=12, segment_frames=16, end_frames=1) == [SegmentPlan(0, 16, 0, 16, 1)]


@settings(max_examples=300, deadline=None)
@given(
    num_frames=st.integers(1, 400),
    context=st.integers(1, 12),
    segment=st.sampled_from([16, 24, 40, 120]),
    end_frames=st.integers(0, 3),
    continuation=st.booleans(),
)
def test_plans_always_add_up(num_frames, context, segment, end_frames, continuation):
    try:
        plan = plan_segments(num_frames, context, segment, continuation=continuation, end_frames=end_frames)
    except ValueError:
        return
    assert sum(p.new_frames for p in plan) == num_frames
    for p in plan:
        assert p.num_frames <= segment and (p.num_frames == 1 or p.num_frames % 8 == 0)
        assert p.new_frames >= 1 and p.context_frames + p.new_frames <= p.num_frames
        assert p.num_frames - p.context_frames - p.new_frames < 8  # at most 7 frames are generated for nothing
        assert (p.context_frames == 0) == (p.index == 0 and not continuation)
    assert plan[-1].end_frames == end_frames and all(p.end_frames == 0 for p in plan[:-1])
    if end_frames:
        assert plan[-1].context_frames + plan[-1].new_frames == plan[-1].num_frames  # ends on the end frames


# ------------------------------------------------------------------------------------------------------------
# Long videos
# ------------------------------------------------------------------------------------------------------------


def test_three_segments_give_the_frames_asked_and_start_as_a_plain_run(pipe, start_image):
    recorder = _Recorder(pipe)
    video = generate_long_video(recorder, start_image, 40, segment_frames=16, generator=_seed(7), **FAST).frames[0]
    assert video.shape == (40, 32, 48, 3) and video.dtype == np.float32
    assert [c["num_frames"] for c in recorder.calls] == [16, 16, 16, 8]
    plain = pipe(image=start_image, num_frames=16, generator=_seed(7), output_type="np", **FAST).frames[0]
    assert np.array_equal(video[:16], plain)  # the first segment is the plain single-segment run


def test_each_segment_continues_the_last_frames(pipe, start_image):
    recorder = _Recorder(pipe)
    segments = list(iter_video_segments(recorder, plan_segments(27, segment_frames=16), image=start_image, **FAST))
    first, second = segments[0][1], segments[1][1]
    context = recorder.calls[1]["image"][0]  # one video, given its first frames
    assert len(context) == DEFAULT_CONTEXT_FRAMES
    for frame, expected in zip(context, first[-DEFAULT_CONTEXT_FRAMES:]):
        assert np.array_equal(np.asarray(frame), (expected * 255).round().astype(np.uint8))
    assert second.shape == (11, 32, 48, 3)


def test_per_segment_camera_and_end_frame(pipe, start_image, golden_dir):
    end = PIL.Image.open(golden_dir / "start_end_end.png")
    recorder = _Recorder(pipe)
    cameras = ["left", "static", "right"]
    out = generate_long_video(
        recorder,
        start_image,
        32,
        segment_frames=16,
        last_image=end,
        camera_direction=cameras,
        motion=2,
        generator=_seed(1),
        **FAST,
    ).frames[0]
    assert out.shape[0] == 32
    assert [c["camera_direction"] for c in recorder.calls] == cameras
    assert [c["last_image"] is not None for c in recorder.calls] == [False, False, True]
    ((given,),) = recorder.calls[-1]["last_image"]  # one video, one end frame: `end`, as 8-bit RGB
    assert np.array_equal(np.asarray(given), np.asarray(end.convert("RGB")))
    same = generate_long_video(pipe, start_image, 32, segment_frames=16, last_image=end, motion=2,
                               camera_direction="left", generator=_seed(1), **FAST).frames[0]  # fmt: skip
    assert np.array_equal(out[:16], same[:16]) and np.abs(out[16:] - same[16:]).max() > 1e-3
    # The end frame as an array, a tensor or a list of one, as the pipeline takes it (only PIL was taken).
    rgb = np.array(end.convert("RGB"))  # writable, as torch.from_numpy wants
    for given in (rgb, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, [rgb]):
        again = generate_long_video(pipe, start_image, 32, segment_frames=16, last_image=given, motion=2,
                                    camera_direction=cameras, generator=_seed(1), **FAST).frames[0]  # fmt: skip
        assert np.array_equal(again, out)


def test_output_type_pil(pipe, start_image):
    frames = generate_long_video(pipe, start_image, 8, output_type="pil", **FAST).frames[0]
    assert len(frames) == 8 and frames[0].size == (48, 32)


# ------------------------------------------------------------------------------------------------------------
# Continuation
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(pipe, start_image):
    return pipe(image=start_image, num_frames=16, generator=_seed(2), output_type="np", **FAST).frames[0]


def test_extend_keeps_the_input_bit_exact(pipe, clip):
    recorder = _Recorder(pipe)
    out = extend_video(recorder, clip, 11, generator=_seed(5), **FAST).frames[0]
    assert out.shape == (27, 32, 48, 3)
    assert np.array_equal(out[:16], clip)  # unchanged, before any video encoding
    # The seam: the new frames are exactly the frames after the context, none repeated or dropped.
    call = recorder.calls[0]
    assert call["num_frames"] == 16 and len(call["image"][0]) == 5
    again = pipe(**{**call, "generator": _seed(5)}).frames[0]
    assert np.array_equal(out[16:], again[5:16])


def test_extend_accepts_uint8_and_pil_frames(pipe, clip):
    as_uint8 = (clip * 255).round().astype(np.uint8)
    from_uint8 = extend_video(pipe, as_uint8, 3, generator=_seed(5), **FAST).frames[0]
    from_pil = extend_video(pipe, [PIL.Image.fromarray(f) for f in as_uint8], 3, generator=_seed(5), **FAST)
    assert np.array_equal(from_uint8[:16], as_uint8 / np.float32(255))
    assert np.array_equal(from_uint8, from_pil.frames[0])
    # A list of array frames, as `list(imageio.imiter(path))` gives them (it was refused).
    from_list = extend_video(pipe, list(as_uint8), 3, generator=_seed(5), **FAST)
    assert np.array_equal(from_uint8, from_list.frames[0])


def test_extend_takes_the_frames_of_an_np_output_as_they_are(pipe, clip):
    # `pipe(...).frames` of output_type="np" is a batch of one video, (1, F, H, W, 3): that video, whatever its frame
    # count (the batch axis is dropped, not the frame axis).
    out = extend_video(pipe, clip[None], 3, generator=_seed(5), **FAST).frames[0]
    assert np.array_equal(out, extend_video(pipe, clip, 3, generator=_seed(5), **FAST).frames[0])


def test_extend_in_several_segments_with_per_segment_motion(pipe, clip):
    recorder = _Recorder(pipe)
    out = extend_video(recorder, clip, 30, segment_frames=16, context_frames=4, motion=[1, 2, 3], **FAST)
    assert out.frames[0].shape[0] == 46
    assert [(len(c["image"][0]), c["num_frames"], c["motion"]) for c in recorder.calls] == [
        (4, 16, 1),
        (4, 16, 2),
        (4, 16, 3),
    ]


def test_extend_reads_16_bit_frames_as_the_pipeline_does(pipe):
    # 16-bit grayscale is scaled to 8 bits, as `pipe(image=...)` reads it: mid grey stays mid grey (not clipped to
    # white), in the frames returned and in the context the new frames continue.
    grey = PIL.Image.fromarray(np.full((32, 48), 128 * 257, dtype=np.uint16))
    assert pipe._to_pil(grey, "image")[0].getpixel((0, 0)) == (128, 128, 128)
    recorder = _Recorder(pipe)
    video = extend_video(recorder, [grey] * 8, 3, **FAST).frames[0]
    assert np.array_equal(video[:8], np.full((8, 32, 48, 3), 128 / 255, dtype=np.float32))
    context = recorder.calls[0]["image"][0]
    assert [frame.getpixel((0, 0)) for frame in context] == [(128, 128, 128)] * len(context)


def test_extend_a_video_of_another_size(pipe):
    video = np.random.default_rng(0).random((9, 36, 40, 3), dtype=np.float32)  # not multiples of 16
    out = extend_video(pipe, video, 3, base_resolution=64, num_inference_steps=1).frames[0]
    assert out.shape == (12, 36, 40, 3)
    assert np.array_equal(out[:9], video) and 0 <= out.min() and out.max() <= 1


def test_new_frames_smaller_than_the_video_are_resized_to_it(pipe, monkeypatch):
    # Kills `(height, width) == (video_height, video_width)` -> `<=` in `extend_video`: frames generated at 32x48 for
    # a 48x64 video are resized up to it (the test above covers new frames larger than the video).
    seen = []

    def fake_segments(pipe, plan, height, width, **kwargs):
        seen.append((height, width))
        for segment in plan:  # no compute: grey frames of the generated size
            yield segment, np.full((segment.new_frames, height, width, 3), 0.5, dtype=np.float32)

    monkeypatch.setattr(long_video, "iter_video_segments", fake_segments)
    video = np.zeros((9, 48, 64, 3), dtype=np.float32)
    out = extend_video(pipe, video, 3, height=32, width=48, num_inference_steps=1).frames[0]
    assert seen == [(32, 48)]
    assert out.shape == (12, 48, 64, 3)
    np.testing.assert_allclose(out[9:], 0.5, atol=1e-6)


@pytest.mark.parametrize(
    "video_size, generated",
    [((32, 48), (32, 48)), ((40, 48), (48, 64)), ((32, 40), (48, 64)), ((48, 64), (48, 64))],
)
def test_extend_generates_at_the_videos_size_when_both_sides_fit_the_model(pipe, monkeypatch, video_size, generated):
    # A video whose sides are multiples of 16 is continued at its own size; otherwise at the bucket of its aspect
    # ratio (base_resolution=64 here), and the new frames are resized back to the video's size.
    seen = []

    def fake_segments(pipe, plan, height, width, **kwargs):
        seen.append((height, width))
        raise KeyboardInterrupt  # stop before any compute

    monkeypatch.setattr(long_video, "iter_video_segments", fake_segments)
    video = np.zeros((9, *video_size, 3), dtype=np.float32)
    with pytest.raises(KeyboardInterrupt):
        extend_video(pipe, video, 3, base_resolution=64, num_inference_steps=1)
    assert seen == [generated]


# ------------------------------------------------------------------------------------------------------------
# Errors before any compute
# ------------------------------------------------------------------------------------------------------------


_CUSTOM_EMBEDS = (
    "prompt_embeds", "prompt_attention_mask", "prompt_embeds_2", "prompt_attention_mask_2", "negative_prompt_embeds",
    "negative_prompt_attention_mask", "negative_prompt_embeds_2", "negative_prompt_attention_mask_2",
)  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(camera_direction=["left", "right"]), ValueError, "has 2 entries, but the video has 3 segment"),
        (dict(motion=[1, 2, 3, 4]), ValueError, "`motion` has 4 entries, but the video has 3 segment"),
        (dict(camera_direction=["left", "right", "diagonal"]), ValueError, "`camera_direction` must be one of"),
        (dict(motion=[1, 2, 9]), ValueError, "`motion` must be one of"),
        (dict(generator=[_seed(), _seed()]), TypeError, "`generator` must be one torch.Generator"),
        (dict(latents=torch.zeros(1)), TypeError, "\\['latents'\\] cannot be passed here"),
        (dict(output_type="pt"), ValueError, "`output_type` must be 'np' or 'pil'"),
        (dict(return_dict="no"), TypeError, "`return_dict` must be True or False, got str 'no'"),
        (dict(last_image="end.png"), TypeError, "`last_image` must be one end frame"),
        (
            dict(last_image=np.zeros((2, 32, 48, 3), np.uint8)),
            TypeError,
            "one end frame.* of shape \\(2, 32, 48, 3\\)",
        ),
        (dict(last_image=[]), TypeError, "`last_image` must be one end frame or a non-empty list"),
        # An end frame the pipeline refuses is refused before the first of the 3 segments runs, by its own name.
        (dict(last_image=PIL.Image.new("F", (48, 32))), ValueError, "`last_image` is a 32-bit float image"),
        (dict(last_image=[_END, PIL.Image.new("I", (48, 32))]), ValueError, "`last_image\\[1\\]` is a 32-bit"),
        (dict(height=32), ValueError, "Pass both `height` and `width`"),
        (dict(num_inference_steps=0), ValueError, "`num_inference_steps` must be a positive integer"),
        (dict(callback_on_segment_end=5), TypeError, "`callback_on_segment_end` must be callable"),
        # Custom embeddings replace every segment's controls: a later segment's motion would be ignored.
        (
            dict(motion=["auto", "2", "auto"], **{k: torch.zeros(1) for k in _CUSTOM_EMBEDS}),
            ValueError,
            "Custom embeddings replace the controls, so motion='2' would be ignored",
        ),
    ],
)
def test_long_video_bad_arguments(guarded_pipe, start_image, kwargs, error, match):
    args = dict(segment_frames=16, **SIZE)
    args.update(kwargs)
    if "height" in kwargs:
        args.pop("width")
    with pytest.raises(error, match=match):
        generate_long_video(guarded_pipe, start_image, 32, **args)


@pytest.mark.parametrize(
    "height, width, error, match",
    [
        (0, 48, ValueError, "`height` must be a positive multiple of 16, got 0"),
        (32, -16, ValueError, "`width` must be a positive multiple of 16, got -16"),
        (32, 40, ValueError, "`width` must be a positive multiple of 16, got 40"),
        ("32", 48, TypeError, "`height` must be a positive multiple of 16, got str"),
        (32, 48.0, TypeError, "`width` must be a positive multiple of 16, got float"),
        (True, 48, TypeError, "`height` must be a positive multiple of 16, got bool"),
    ],
)
def test_long_video_bad_sizes(guarded_pipe, start_image, height, width, error, match):
    # As the pipeline checks them: a non-integer is a TypeError, 0 or a size off the 16-pixel grid a ValueError.
    with pytest.raises(error, match=match):
        generate_long_video(guarded_pipe, start_image, 32, segment_frames=16, height=height, width=width)


def test_long_video_takes_numpy_integer_sizes(pipe, start_image):
    # As the pipeline does: NumPy integers are integers.
    options = {**FAST, "height": np.int64(32), "width": np.int32(48)}
    frames = generate_long_video(pipe, start_image, 8, output_type="pil", **options).frames[0]
    assert frames[0].size == (48, 32)


def test_long_video_needs_one_start_image(guarded_pipe, start_image):
    for image in ([start_image, start_image], np.zeros((2, 32, 48, 3), dtype=np.uint8)):
        with pytest.raises(TypeError, match="`image` must be one start frame .*extend_video"):
            generate_long_video(guarded_pipe, image, 200)


def test_long_video_takes_an_array_or_tensor_start_frame(pipe, start_image):
    # The same video as from the PIL image: the array and the tensor go through the pipeline's image converter.
    options = dict(
        context_frames=5, segment_frames=16, base_resolution=64, num_inference_steps=1
    )  # size from the frame
    expected = generate_long_video(pipe, start_image, 27, generator=torch.Generator().manual_seed(3), **options)
    array = np.asarray(start_image.convert("RGB"))
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    for image in (array, tensor):
        video = generate_long_video(pipe, image, 27, generator=torch.Generator().manual_seed(3), **options)
        assert np.array_equal(video.frames[0], expected.frames[0])


@pytest.mark.parametrize(
    "video, error, match",
    [
        (np.zeros((4, 32, 48), dtype=np.uint8), ValueError, "shape \\(frames, height, width, 3\\)"),
        (np.full((8, 32, 48, 3), 2.0, dtype=np.float32), ValueError, "values in \\[0, 1\\]"),
        (np.zeros((8, 32, 48, 3), dtype=np.int32), TypeError, "uint8 or float"),
        ("video.mp4", TypeError, "`video` must be a list of PIL images or a numpy array"),
        (np.full((8, 32, 48, 3), np.nan, dtype=np.float32), ValueError, "`video` holds NaN or infinite values"),
        (np.zeros((0, 32, 48, 3), dtype=np.uint8), ValueError, "no size 0"),
        ([], TypeError, "non-empty list of PIL images"),
        (np.zeros((3, 32, 48, 3), dtype=np.uint8), ValueError, "the video to continue has only 3 frame"),
        # A one-frame video is a video, not a batch of one to unwrap.
        (np.zeros((1, 32, 48, 3), dtype=np.uint8), ValueError, "the video to continue has only 1 frame"),
        # Only a batch of one 4-D video (`.frames` of output_type="np") is unwrapped; the error shows the shape given.
        (np.zeros((1, 1, 8, 32, 48, 3), dtype=np.uint8), ValueError, "got \\(1, 1, 8, 32, 48, 3\\)"),
        (np.zeros((2, 8, 32, 48, 3), dtype=np.uint8), ValueError, "got \\(2, 8, 32, 48, 3\\)"),
        ([PIL.Image.new("F", (48, 32))] * 8, ValueError, "`video\\[0\\]` is a 32-bit float image"),
        ([np.zeros((32, 48, 3), np.uint8), np.zeros((32, 40, 3), np.uint8)], ValueError, "one shape and dtype"),
    ],
)
def test_extend_bad_video(guarded_pipe, video, error, match):
    with pytest.raises(error, match=match):
        extend_video(guarded_pipe, video, 8, **SIZE)


def test_pipeline_methods_delegate(pipe, start_image, clip):
    long = pipe.generate_long_video(start_image, 8, generator=_seed(4), **FAST).frames[0]
    direct = generate_long_video(pipe, start_image, 8, generator=_seed(4), **FAST).frames[0]
    assert np.array_equal(long, direct)
    assert pipe.extend_video(clip, 3, **FAST).frames[0].shape == (19, 32, 48, 3)


def test_iter_needs_the_frames_it_continues(guarded_pipe):
    plan = plan_segments(8, continuation=True)
    with pytest.raises(ValueError, match="continues 5 frames, but `context` has 2"):
        next(iter_video_segments(guarded_pipe, plan, 32, 48, context=[PIL.Image.new("RGB", (48, 32))] * 2))
    with pytest.raises(ValueError, match="pass `image`, the start frame"):
        next(iter_video_segments(guarded_pipe, plan_segments(8), 32, 48))


_FRAME = PIL.Image.new("RGB", (48, 32))


@pytest.mark.parametrize(
    "plan, kwargs, error, match",
    [
        ([], {}, TypeError, "`plan` must be a non-empty list of SegmentPlan"),
        ([{"num_frames": 8}], {}, TypeError, "`plan` must be a non-empty list of SegmentPlan"),
        (plan_segments(8), dict(image=_FRAME, last_image=_FRAME), ValueError, "gives 1 end frame\\(s\\), but .* 0"),
        (plan_segments(8, end_frames=2), dict(image=_FRAME, last_image=_FRAME), ValueError, "gives 1 end frame"),
        (plan_segments(8, continuation=True), dict(image=_FRAME, context=[_FRAME] * 5), ValueError, "`image` would"),
        (plan_segments(8), dict(image=_FRAME, context=[_FRAME] * 5), ValueError, "`context` would be ignored"),
        (
            plan_segments(8, continuation=True),
            dict(context=[np.zeros((1, 32, 48, 3), np.uint8)] * 5),
            TypeError,
            "`context\\[0\\]` must be a PIL image or an \\(H, W, 3\\) array",
        ),
        (  # a 2-D frame whose rows happen to be 3 wide is not an image either
            plan_segments(8, continuation=True),
            dict(context=[np.zeros((32, 3), np.uint8)] * 5),
            TypeError,
            "`context\\[0\\]` must be a PIL image or an \\(H, W, 3\\) array",
        ),
        (
            plan_segments(8, continuation=True),
            dict(context=[np.full((32, 48, 3), 2.0, np.float32)] * 5),
            ValueError,
            "`context\\[0\\]` must be uint8, or float with values in \\[0, 1\\]",
        ),
        (  # frames in [-1, 1] (a model's output range) are not [0, 1] frames
            plan_segments(8, continuation=True),
            dict(context=[np.full((32, 48, 3), -0.5, np.float32)] * 5),
            ValueError,
            "`context\\[0\\]` must be uint8, or float with values in \\[0, 1\\]",
        ),
        (
            plan_segments(8, continuation=True),
            dict(context=[np.zeros((32, 48, 3), np.int32)] * 5),
            ValueError,
            "`context\\[0\\]` must be uint8",
        ),
        (
            plan_segments(8, continuation=True),
            dict(context=["frame"] * 5),
            TypeError,
            "`context\\[0\\]` must be a PIL",
        ),
        (
            plan_segments(8, continuation=True),
            dict(context=[PIL.Image.new("F", (48, 32))] * 5),
            ValueError,
            "`context\\[0\\]` is a 32-bit float image",
        ),
        # A list is a batch to the pipeline, of which only the first video would be kept.
        (plan_segments(8), dict(image=[_FRAME, _FRAME]), TypeError, "`image` must be one start frame"),
        (plan_segments(8), dict(image=np.zeros((2, 32, 48, 3), np.uint8)), TypeError, "`image` must be one start"),
        (plan_segments(8), dict(image=PIL.Image.new("I", (48, 32))), ValueError, "`image` is a 32-bit"),
        (plan_segments(8), dict(image=_FRAME, last_image=PIL.Image.new("RGB", (0, 0))), ValueError, "empty image"),
    ],
)
def test_iter_refuses_what_it_would_ignore_or_change(guarded_pipe, plan, kwargs, error, match):
    with pytest.raises(error, match=match):
        next(iter_video_segments(guarded_pipe, plan, 32, 48, **kwargs))


def test_iter_takes_one_start_frame_in_any_form_the_pipeline_takes(pipe):
    # It refused arrays and tensors, which `generate_long_video` and the pipeline take for one image.
    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)

    def frames(image):
        segments = iter_video_segments(
            pipe, plan_segments(8), 32, 48, image=image, generator=torch.Generator().manual_seed(0),
            num_inference_steps=1,
        )  # fmt: skip
        return next(segments)[1]

    expected = frames(PIL.Image.fromarray(rgb))
    for image in (rgb, rgb.astype(np.float32) / 255, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255):
        np.testing.assert_array_equal(frames(image), expected)
