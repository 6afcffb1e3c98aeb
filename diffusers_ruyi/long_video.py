"""Long videos and video continuation with Ruyi, one segment at a time.

Ruyi keeps as many first frames as it is given (the original's `get_image_to_video_latent` with a list of start
images): a segment whose first frames are the last `context_frames` frames of the video so far continues it. A video
longer than `segment_frames` (at most the 120 frames Ruyi was trained on, by default) is made of such segments, and an
existing video is extended the same way. Only one segment is in memory at a time.

Only the standard library is imported at module level, so that `ruyi-i2v` can plan the segments (and check per-segment
options against them) before it imports torch.
"""

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ._validation import check_bool, check_int


if TYPE_CHECKING:  # the CLI plans segments before it imports torch
    import torch

    from .pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline, RuyiPipelineOutput


# The frames of context at each seam. Ruyi's authors state that up to 5 start frames are supported
# (IamCreateAI/Ruyi-Models issue 15); more context carries motion across the seam better (see docs/long_video.md).
DEFAULT_CONTEXT_FRAMES = 5
# The longest videos Ruyi-Mini-7B was trained on.
DEFAULT_SEGMENT_FRAMES = 120
# Frame counts of one pipeline call: 1 or a multiple of the VAE's encoder chunk.
FRAME_CHUNK = 8
# The most frames a long video may have: 11.6 hours at 24 fps, some 8,700 segments of 120 frames (each minutes of GPU
# time). A larger count is a typo; its plan alone would not fit in memory.
MAX_VIDEO_FRAMES = 1_000_000

# Arguments of the pipeline that the segment loop sets itself.
_RESERVED_KWARGS = (
    "image",
    "last_image",
    "num_frames",
    "latents",
    "num_videos_per_prompt",
    "output_type",
    "return_dict",
)


@dataclass(frozen=True)
class SegmentPlan:
    r"""
    One pipeline call of a long video or a continuation.

    Args:
        index (`int`): Position of the segment, from 0.
        num_frames (`int`): Frames the pipeline generates (1 or a multiple of 8).
        context_frames (`int`): Leading frames that are the last frames of the video so far (0 for the first segment
            of a new video, which starts from the start image instead).
        new_frames (`int`): Frames appended to the video: `frames[context_frames : context_frames + new_frames]`.
            Any frames after those (at most 7 per segment: in the last one, or with end frames in the one before it,
            which gives the last one the frames it needs to end on them) are generated only to reach a valid frame
            count and dropped.
        end_frames (`int`): End frames placed on the last frames of this segment (only in the last segment).
    """

    index: int
    num_frames: int
    context_frames: int
    new_frames: int
    end_frames: int = 0


def _ceil_to_chunk(frames: int) -> int:
    return 1 if frames == 1 else math.ceil(frames / FRAME_CHUNK) * FRAME_CHUNK


def plan_segments(
    num_frames: int,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
    continuation: bool = False,
    end_frames: int = 0,
    available_context: Optional[int] = None,
) -> List[SegmentPlan]:
    r"""
    Splits a video into pipeline calls of at most `segment_frames` frames.

    A new video (`continuation=False`) of at most `segment_frames` frames is one plain call (so `num_frames` is then 1
    or a multiple of 8). A longer one starts with a plain call of `segment_frames` frames, and every later segment
    begins with the last `context_frames` frames of the video so far and adds up to `segment_frames - context_frames`
    new frames. A continuation (`continuation=True`) has only such segments, and `num_frames` counts the frames it
    appends. A long video may have any number of frames: the last segment is rounded up to a multiple of 8 and its
    extra frames dropped. With end frames the last segment must end exactly on them, so it takes the few extra frames
    from the segment before it (which keeps fewer of its frames) or, for a one-segment continuation, is conditioned on
    the number of context frames nearest `context_frames` that makes its length a multiple of 8 (a tie keeps more).

    Args:
        num_frames (`int`): Frames of the new video, or frames to append with `continuation=True`.
        context_frames (`int`, defaults to 5): Frames each continuing segment is conditioned on.
        segment_frames (`int`, defaults to 120): The most frames of one pipeline call, a multiple of 8.
        continuation (`bool`, defaults to `False`): Whether the video continues frames that already exist.
        end_frames (`int`, defaults to 0): End frames the last segment must end with.
        available_context (`int`, *optional*): Frames that already exist (for a continuation): the context cannot be
            longer.

    Returns:
        `List[SegmentPlan]`: the segments, in order.
    """
    check_int("num_frames", num_frames, minimum=1, maximum=MAX_VIDEO_FRAMES)
    check_int("context_frames", context_frames, minimum=1)
    check_int("end_frames", end_frames, minimum=0)
    check_int("segment_frames", segment_frames, minimum=FRAME_CHUNK)
    if segment_frames % FRAME_CHUNK:
        raise ValueError(f"`segment_frames` must be a multiple of {FRAME_CHUNK}, got {segment_frames}.")
    if not continuation and num_frames <= segment_frames:
        # One plain call: no segment is conditioned on context frames, so their number does not matter.
        if num_frames != 1 and num_frames % FRAME_CHUNK:
            raise ValueError(
                f"`num_frames`={num_frames}: a video of at most `segment_frames`={segment_frames} frames is made in "
                f"one call, so it needs 1 or a multiple of {FRAME_CHUNK} frames (longer videos may have any length)."
            )
        if end_frames and num_frames < 1 + end_frames:
            raise ValueError(f"`num_frames`={num_frames} leaves no room for {end_frames} end frame(s).")
        return [SegmentPlan(0, num_frames, 0, num_frames, end_frames)]

    step = segment_frames - context_frames  # new frames of a full continuing segment
    if segment_frames < FRAME_CHUNK + 1:
        raise ValueError(
            f"`segment_frames`={segment_frames} cannot continue a video: a continuing segment holds at least 1 "
            f"context frame and {FRAME_CHUNK} new ones, so it needs `segment_frames` >= {2 * FRAME_CHUNK}."
        )
    if step < FRAME_CHUNK:
        raise ValueError(
            f"`context_frames`={context_frames} leaves fewer than {FRAME_CHUNK} new frames in a segment of "
            f"`segment_frames`={segment_frames}; use at most {segment_frames - FRAME_CHUNK} context frames."
        )
    if end_frames > step:
        raise ValueError(f"{end_frames} end frames do not fit in a segment of {step} new frames.")
    if continuation and available_context is not None and available_context < context_frames:
        raise ValueError(
            f"`context_frames`={context_frames}, but the video to continue has only {available_context} frame(s): "
            f"use `context_frames` of at most {available_context}."
        )

    news, contexts = [], []
    remaining = num_frames
    if not continuation:
        news.append(segment_frames)
        contexts.append(0)
        remaining -= segment_frames
    while remaining > 0:
        news.append(min(step, remaining))
        contexts.append(context_frames)
        remaining -= news[-1]

    if end_frames:
        if news[-1] < end_frames and len(news) == 1:
            raise ValueError(f"{num_frames} new frame(s) leave no room for {end_frames} end frame(s).")
        # The last segment ends on the end frames: its frame count must be exact.
        wanted = max(news[-1], end_frames)
        extra = _ceil_to_chunk(contexts[-1] + wanted) - contexts[-1] - news[-1]
        if extra and len(news) > 1:
            if news[-2] - extra < 1:
                raise ValueError(
                    f"{end_frames} end frame(s) do not fit: use fewer end frames or a larger `segment_frames`."
                )
            news[-2] -= extra
            news[-1] += extra
        elif extra:
            # One continuing segment: its context is the count nearest `context_frames` that makes it exact.
            grown, shrunk = contexts[-1] + extra, contexts[-1] + extra - FRAME_CHUNK
            fits = available_context is None or grown <= available_context
            if shrunk >= 1 and (FRAME_CHUNK - extra < extra or not fits):
                contexts[-1] = shrunk
            elif fits:
                contexts[-1] = grown
            else:
                raise ValueError(
                    f"Ending {num_frames} new frame(s) on an end frame needs {grown} frames of context (a segment is "
                    f"a multiple of {FRAME_CHUNK} frames), but the video has only {available_context}. Append "
                    f"{num_frames + extra} frames, or give a longer video."
                )

    plan = []
    for i, (context, new) in enumerate(zip(contexts, news)):
        last = i == len(news) - 1
        plan.append(SegmentPlan(i, _ceil_to_chunk(context + new), context, new, end_frames if last else 0))
    return plan


def per_segment(value: Any, num_segments: int, name: str) -> List[Any]:
    """A control given once (used for every segment) or as a list with one entry per segment."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return list(value) * num_segments
        if len(value) != num_segments:
            raise ValueError(
                f"`{name}` has {len(value)} entries, but the video has {num_segments} segment(s): give one value, or "
                "one per segment."
            )
        return list(value)
    return [value] * num_segments


# ----------------------------------------------------------------------------------------------------------------
# Generation (these import numpy, PIL and torch)
# ----------------------------------------------------------------------------------------------------------------


def _rgb(image, name: str):
    # A PIL frame read as the pipeline reads its images, so that a bad one is refused before any segment runs.
    from ._images import checked_image_to_rgb

    return checked_image_to_rgb(image, name)


def _one_frame(pipe, frame, name: str, kind: str, several: str):
    """One ``kind`` ("start", "end") frame, in any form the pipeline takes for one image (an array or tensor goes
    through its converter), as a PIL image. A list, or an array of several frames, would be a batch of which one
    video would be kept: refused, with ``several`` saying how to give more than one."""
    import numpy as np
    import PIL.Image
    import torch

    if isinstance(frame, PIL.Image.Image):
        return frame
    if isinstance(frame, (np.ndarray, torch.Tensor)):
        frames = pipe._to_pil(frame, name)
        if len(frames) == 1:
            return frames[0]
    raise TypeError(
        f"`{name}` must be one {kind} frame (a PIL.Image.Image, an (H, W, C) or (H, W) array, or a (C, H, W) or "
        f"(H, W) tensor), got {type(frame).__name__}"
        + (f" of shape {tuple(frame.shape)}" if isinstance(frame, (np.ndarray, torch.Tensor)) else "")
        + f"; {several}."
    )


def _one_start_frame(pipe, image):
    several = "to start from several frames, continue them (`extend_video`, or `context` in a continuation plan)"
    return _one_frame(pipe, image, "image", "start", several)


def _to_pil(frame):
    """An RGB frame array as a PIL image: uint8 as it is, float in [0, 1] rounded to uint8 (PIL frames given as
    arguments are read with `_rgb`)."""
    import numpy as np
    import PIL.Image

    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
    return PIL.Image.fromarray(frame)


def _as_float_frames(video) -> "Any":
    """The input video as a float32 array (frames, H, W, 3) in [0, 1]; float32 input is returned bit for bit."""
    import numpy as np
    import PIL.Image

    if isinstance(video, (list, tuple)) and video and all(isinstance(f, np.ndarray) for f in video):
        # A list of (H, W, 3) frames, as `list(imageio.imiter(path))` or `export_to_video` take them.
        shapes = {f.shape for f in video}
        dtypes = {f.dtype for f in video}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise ValueError(
                f"The frames of `video` must have one shape and dtype, got {sorted(map(str, shapes))} and "
                f"{sorted(map(str, dtypes))}."
            )
        video = np.stack(video)
    if isinstance(video, (list, tuple)):
        if not video or not all(isinstance(f, PIL.Image.Image) for f in video):
            raise TypeError(
                "`video` must be a non-empty list of PIL images or of (H, W, 3) arrays, or an array of frames "
                "(F, H, W, 3)."
            )
        sizes = {f.size for f in video}
        if len(sizes) != 1:
            raise ValueError(f"The frames of `video` must have one size, got {sorted(sizes)}.")
        return np.stack([np.asarray(_rgb(f, f"video[{k}]"), dtype=np.float32) / 255 for k, f in enumerate(video)])
    if not isinstance(video, np.ndarray):
        raise TypeError(
            f"`video` must be a list of PIL images or a numpy array (F, H, W, 3), got {type(video).__name__}."
        )
    if video.ndim == 5 and video.shape[0] == 1:  # `pipe(...).frames` with output_type="np"
        video = video[0]
    if video.ndim != 4 or video.shape[-1] != 3 or not video.size:
        raise ValueError(f"`video` must have the shape (frames, height, width, 3), no size 0, got {video.shape}.")
    if video.dtype == np.uint8:
        return video.astype(np.float32) / 255
    if not np.issubdtype(video.dtype, np.floating):
        raise TypeError(f"`video` must be uint8 or float in [0, 1], got {video.dtype}.")
    if not np.isfinite(video).all():
        raise ValueError("`video` holds NaN or infinite values.")
    if video.min() < 0 or video.max() > 1:
        raise ValueError("A float `video` must have values in [0, 1].")
    return video.astype(np.float32, copy=False)


def _end_frames(pipe, last_image) -> List[Any]:
    """The end frames of the video as RGB PIL images: one image or a non-empty list of them, each a PIL image or one
    frame as an array or tensor (taken as the pipeline takes one image)."""

    def one(frame, name: str):
        return _rgb(_one_frame(pipe, frame, name, "end", "several end frames go in a list"), name)

    if last_image is None:
        return []
    if isinstance(last_image, (list, tuple)):
        if not last_image:
            raise TypeError("`last_image` must be one end frame or a non-empty list of them, got an empty list.")
        return [one(frame, f"last_image[{k}]") for k, frame in enumerate(last_image)]
    return [one(last_image, "last_image")]


def _check_common(plan: List[SegmentPlan], motion, camera_direction, generator, kwargs: Dict[str, Any]):
    """Checks what every segment uses, before the first one runs; returns the per-segment controls."""
    import torch

    from .pipelines.controls import check_controls_left_at_default, control_name

    reserved = sorted(set(kwargs) & set(_RESERVED_KWARGS))
    if reserved:
        raise TypeError(f"{reserved} cannot be passed here: the segment loop sets them for each pipeline call.")
    motions = per_segment(motion, len(plan), "motion")
    cameras = per_segment(camera_direction, len(plan), "camera_direction")
    aspect_ratio = kwargs.get("aspect_ratio", "16:9")
    if kwargs.get("prompt_embeds") is None:
        for m, c in zip(motions, cameras):
            control_name(m, c, aspect_ratio)
    else:  # custom embeddings replace the controls in every segment: any segment's control would be ignored
        check_controls_left_at_default(motions, cameras, [aspect_ratio])
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"`generator` must be one torch.Generator (a long video is one video), got {type(generator).__name__}."
        )
    return motions, cameras


def iter_video_segments(
    pipe,
    plan: List[SegmentPlan],
    height: int,
    width: int,
    image=None,
    context: Optional[Sequence[Any]] = None,
    last_image=None,
    motion: Union[int, str, Sequence[Union[int, str]]] = "auto",
    camera_direction: Union[str, Sequence[str]] = "auto",
    generator=None,
    **kwargs,
) -> Iterator[Tuple[SegmentPlan, Any]]:
    r"""
    Runs the segments of `plan` one after the other and yields each one's new frames as soon as they exist.

    Only the last frames needed as context are kept between segments, so memory does not grow with the video's
    length: write the frames out as they come (as `ruyi-i2v` does) to make videos of any length.

    Args:
        pipe ([`RuyiImageToVideoPipeline`]): The pipeline.
        plan (`List[SegmentPlan]`): From [`plan_segments`].
        height (`int`), width (`int`): The size of every segment, multiples of 16.
        image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`, *optional*): The start frame, for a plan whose
            first segment has no context (one image, in any form the pipeline takes for one).
        context (`Sequence`, *optional*): The frames the video continues (PIL images, uint8 arrays, or float arrays
            in [0, 1]); only the last ones are used.
        last_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*): The end frame(s)
            of the last segment, each one image in any form the pipeline takes for one.
        motion, camera_direction: One value for every segment, or a list with one per segment.
        generator (`torch.Generator`, *optional*): One generator, used by every segment in turn.
        kwargs: Further arguments of the pipeline's `__call__` (steps, guidance scale, ...), the same for every
            segment.

    Yields:
        `Tuple[SegmentPlan, np.ndarray]`: the segment and its new frames, float32 `(new_frames, height, width, 3)`
        in [0, 1].
    """
    import numpy as np
    import PIL.Image

    if not isinstance(plan, (list, tuple)) or not plan or not all(isinstance(p, SegmentPlan) for p in plan):
        raise TypeError(f"`plan` must be a non-empty list of SegmentPlan (from `plan_segments`), got {plan!r:.80}.")
    ends = _end_frames(pipe, last_image)
    if len(ends) != plan[-1].end_frames:
        raise ValueError(
            f"`last_image` gives {len(ends)} end frame(s), but the plan's last segment keeps {plan[-1].end_frames}: "
            f"plan with `plan_segments(..., end_frames={len(ends)})`."
        )
    if plan[0].context_frames and image is not None:
        raise ValueError("The plan continues `context` frames, so `image` would be ignored: pass one or the other.")
    if image is not None:
        image = _rgb(_one_start_frame(pipe, image), "image")
    if not plan[0].context_frames and context is not None:
        raise ValueError(
            "The plan starts a new video from `image`, so `context` would be ignored: plan a continuation "
            "(`plan_segments(..., continuation=True)`) or drop `context`."
        )
    frames = [] if context is None else list(context)  # checked, PIL frames read as RGB once
    for k, frame in enumerate(frames):
        if isinstance(frame, PIL.Image.Image):
            frames[k] = _rgb(frame, f"context[{k}]")
            continue
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] != 3:
            raise TypeError(f"`context[{k}]` must be a PIL image or an (H, W, 3) array, got {frame!r:.60}.")
        if frame.dtype != np.uint8 and not (
            np.issubdtype(frame.dtype, np.floating)
            and np.isfinite(frame).all()
            and 0 <= frame.min() <= frame.max() <= 1
        ):
            raise ValueError(f"`context[{k}]` must be uint8, or float with values in [0, 1], got {frame.dtype}.")
    motions, cameras = _check_common(plan, motion, camera_direction, generator, kwargs)
    history = max(p.context_frames for p in plan)
    tail = [f if isinstance(f, PIL.Image.Image) else _to_pil(f) for f in frames[-history:]] if history else []
    if plan[0].context_frames > len(tail):
        raise ValueError(
            f"The first segment continues {plan[0].context_frames} frames, but `context` has {len(tail)}: pass the "
            "frames to continue (or plan a new video and pass `image`)."
        )
    for segment in plan:
        if segment.context_frames:
            start = [tail[-segment.context_frames :]]  # one video whose first frames are the context
        elif image is not None:
            start = image
        else:
            raise ValueError("The first segment has no context frames: pass `image`, the start frame.")
        frames = pipe(
            image=start,
            last_image=[ends] if segment.end_frames else None,
            num_frames=segment.num_frames,
            height=height,
            width=width,
            motion=motions[segment.index],
            camera_direction=cameras[segment.index],
            generator=generator,
            output_type="np",
            **kwargs,
        ).frames[0]
        new = np.array(frames[segment.context_frames : segment.context_frames + segment.new_frames])
        del frames
        if history:
            tail = (tail + [_to_pil(f) for f in new[-history:]])[-history:]
        yield segment, new


def _size(height, width, base_resolution, frame_height, frame_width) -> Tuple[int, int]:
    from ._validation import check_frame_size
    from .pipelines.controls import get_bucket_size

    if (height is None) != (width is None):
        raise ValueError("Pass both `height` and `width`, or neither (then `base_resolution` picks them).")
    if height is None:
        return get_bucket_size(frame_height, frame_width, base_resolution)
    # NumPy integers as Python ones, as the pipeline takes them (the check wants Python ints).
    height, width = (
        int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in (height, width)
    )
    check_frame_size("height", height)
    check_frame_size("width", width)
    return height, width


def _output(video, output_type: str, return_dict: bool):
    from .pipelines.pipeline_ruyi_i2v import RuyiPipelineOutput

    if output_type == "pil":
        video = [_to_pil(f) for f in video]
    frames = [video] if output_type == "pil" else video[None]
    return RuyiPipelineOutput(frames=frames) if bool(return_dict) else (frames,)


def _check_output_arguments(output_type: str, callback_on_segment_end, return_dict) -> None:
    check_bool("return_dict", return_dict)  # as the pipeline's call: a string such as "no" would be truthy
    if output_type not in ("np", "pil"):
        raise ValueError(f"`output_type` must be 'np' or 'pil' for a long video, got {output_type!r}.")
    if callback_on_segment_end is not None and not callable(callback_on_segment_end):
        raise TypeError(
            f"`callback_on_segment_end` must be callable or None, got {type(callback_on_segment_end).__name__}."
        )


def generate_long_video(
    pipe: "RuyiImageToVideoPipeline",
    image,
    num_frames: int,
    last_image=None,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
    height: Optional[int] = None,
    width: Optional[int] = None,
    base_resolution: int = 512,
    motion: Union[int, str, Sequence[Union[int, str]]] = "auto",
    camera_direction: Union[str, Sequence[str]] = "auto",
    generator: Optional["torch.Generator"] = None,
    output_type: str = "np",
    return_dict: bool = True,
    callback_on_segment_end: Optional[Callable[[Any, SegmentPlan, Any], None]] = None,
    **kwargs,
) -> Union["RuyiPipelineOutput", Tuple]:
    r"""
    Generates a video of any length from a start frame, in segments (see [`plan_segments`]).

    The first segment is the plain pipeline call of `segment_frames` frames (the same frames as `pipe(image=image,
    num_frames=segment_frames, generator=...)` with the same seed; with end frames, when the first segment is the one
    before the last, it may be shorter, by a multiple of 8, see [`plan_segments`]); each later one continues the last
    `context_frames` frames. The result is held in memory; use [`iter_video_segments`] to write frames out as they
    come.

    Args:
        pipe ([`RuyiImageToVideoPipeline`]): The pipeline.
        image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`): The start frame (an array or tensor as the
            pipeline's `image` takes one image).
        num_frames (`int`): Frames of the video: any number above `segment_frames`, else 1 or a multiple of 8.
        last_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*): The last
            frame(s) of the video, each one image in any form the pipeline takes for one.
        context_frames (`int`, defaults to 5): Frames each segment continues from.
        segment_frames (`int`, defaults to 120): The most frames of one segment, a multiple of 8.
        height (`int`, *optional*), width (`int`, *optional*): The size; by default the bucket closest to the
            image's aspect ratio at `base_resolution`.
        base_resolution (`int`, defaults to 512): See the pipeline.
        motion (`int`, `str` or a list of them, defaults to `"auto"`): One for every segment, or one per segment.
        camera_direction (`str` or `List[str]`, defaults to `"auto"`): One for every segment, or one per segment,
            e.g. `["left", "static", "right"]`.
        generator (`torch.Generator`, *optional*): One generator, used by every segment in turn.
        output_type (`str`, defaults to `"np"`): `"np"` (float32 frames in [0, 1]) or `"pil"`.
        return_dict (`bool`, defaults to `True`): Return a [`RuyiPipelineOutput`] instead of a tuple.
        callback_on_segment_end (`Callable`, *optional*): Called as `callback(pipe, segment, new_frames)` after each
            segment.
        kwargs: Further arguments of the pipeline's `__call__`, the same for every segment.

    Returns:
        [`RuyiPipelineOutput`] or `tuple`: `frames` holds one video, `(1, num_frames, H, W, 3)` for `"np"`.
    """
    import numpy as np

    image = _one_start_frame(pipe, image)
    _check_output_arguments(output_type, callback_on_segment_end, return_dict)
    ends = _end_frames(pipe, last_image)
    plan = plan_segments(num_frames, context_frames, segment_frames, end_frames=len(ends))
    height, width = _size(height, width, base_resolution, image.height, image.width)
    segments = iter_video_segments(
        pipe, plan, height, width, image=image, last_image=ends or None, motion=motion,
        camera_direction=camera_direction, generator=generator, **kwargs,
    )  # fmt: skip
    parts = _collect_segments(pipe, segments, callback_on_segment_end)
    return _output(np.concatenate(parts), output_type, return_dict)


def extend_video(
    pipe: "RuyiImageToVideoPipeline",
    video,
    num_frames: int,
    last_image=None,
    context_frames: int = DEFAULT_CONTEXT_FRAMES,
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
    height: Optional[int] = None,
    width: Optional[int] = None,
    base_resolution: int = 512,
    motion: Union[int, str, Sequence[Union[int, str]]] = "auto",
    camera_direction: Union[str, Sequence[str]] = "auto",
    generator: Optional["torch.Generator"] = None,
    output_type: str = "np",
    return_dict: bool = True,
    callback_on_segment_end: Optional[Callable[[Any, SegmentPlan, Any], None]] = None,
    **kwargs,
) -> Union["RuyiPipelineOutput", Tuple]:
    r"""
    Continues a video: appends `num_frames` new frames conditioned on its last `context_frames` frames.

    The result is the input video, unchanged (float32 input is returned bit for bit; uint8 and PIL frames as
    `value / 255`), followed by the new frames: no frame is repeated or dropped at the seam. More than
    `segment_frames - context_frames` new frames are made in several segments (see [`plan_segments`]).

    Args:
        pipe ([`RuyiImageToVideoPipeline`]): The pipeline.
        video (`List[PIL.Image.Image]`, `List[np.ndarray]` or `np.ndarray`): The video to continue: PIL frames, or
            an array `(frames, H, W, 3)` (or a list of `(H, W, 3)` frames) of uint8 or of floats in [0, 1] (such as
            `pipe(..., output_type="np").frames[0]`).
        num_frames (`int`): Frames to append (any number).
        last_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*): The last
            frame(s) of the result, each one image in any form the pipeline takes for one.
        context_frames (`int`, defaults to 5): Frames of the video each segment continues from.
        segment_frames (`int`, defaults to 120): The most frames of one segment, a multiple of 8.
        height (`int`, *optional*), width (`int`, *optional*): The size the new frames are generated at. By default
            the video's own size when both sides are multiples of 16, else the bucket closest to its aspect ratio at
            `base_resolution`. New frames of another size than the video's are resized to it.
        base_resolution (`int`, defaults to 512): See the pipeline.
        motion, camera_direction: One value for every segment, or one per segment.
        generator (`torch.Generator`, *optional*): One generator, used by every segment in turn.
        output_type (`str`, defaults to `"np"`): `"np"` (float32 frames in [0, 1]) or `"pil"`.
        return_dict (`bool`, defaults to `True`): Return a [`RuyiPipelineOutput`] instead of a tuple.
        callback_on_segment_end (`Callable`, *optional*): Called as `callback(pipe, segment, new_frames)` after each
            segment.
        kwargs: Further arguments of the pipeline's `__call__`, the same for every segment.

    Returns:
        [`RuyiPipelineOutput`] or `tuple`: `frames` holds one video of `len(video) + num_frames` frames.
    """
    import numpy as np

    _check_output_arguments(output_type, callback_on_segment_end, return_dict)
    frames = _as_float_frames(video)
    ends = _end_frames(pipe, last_image)
    plan = plan_segments(
        num_frames,
        context_frames,
        segment_frames,
        continuation=True,
        end_frames=len(ends),
        available_context=len(frames),
    )
    video_height, video_width = frames.shape[1:3]
    if height is None and width is None and video_height % 16 == 0 and video_width % 16 == 0:
        height, width = video_height, video_width
    height, width = _size(height, width, base_resolution, video_height, video_width)
    context = video if isinstance(video, (list, tuple)) else frames
    segments = iter_video_segments(
        pipe, plan, height, width, context=context[-max(p.context_frames for p in plan) :], last_image=ends or None,
        motion=motion, camera_direction=camera_direction, generator=generator, **kwargs,
    )  # fmt: skip
    size = None if (height, width) == (video_height, video_width) else (video_height, video_width)
    parts = _collect_segments(pipe, segments, callback_on_segment_end, size)
    return _output(np.concatenate([frames, *parts]), output_type, return_dict)


def _collect_segments(pipe, segments, callback_on_segment_end=None, size=None) -> list:
    """The new frames of each of `segments` (`(segment, new_frames)` pairs), resized to `size` (`(height, width)`)
    when given; calls `callback_on_segment_end(pipe, segment, new_frames)` after each."""
    parts = []
    for segment, new in segments:
        if size is not None:
            new = resize_frames(new, *size)
        parts.append(new)
        if callback_on_segment_end is not None:
            callback_on_segment_end(pipe, segment, new)
    return parts


def resize_frames(frames, height: int, width: int):
    """Resizes float frames `(F, H, W, 3)` in [0, 1] to `(F, height, width, 3)` (bicubic, in float, clipped)."""
    import numpy as np
    import PIL.Image

    resized = []
    for frame in frames:
        channels = [
            np.asarray(PIL.Image.fromarray(frame[..., c]).resize((width, height), PIL.Image.BICUBIC)) for c in range(3)
        ]
        resized.append(np.clip(np.stack(channels, axis=-1), 0.0, 1.0))
    return np.stack(resized).astype(np.float32)
