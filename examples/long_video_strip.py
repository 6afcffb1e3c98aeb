"""A long video in segments, drawn as a frames strip: one row per segment, the frames it continues from framed.

    python examples/long_video_strip.py                    # the docs picture: tiny random model, a few seconds
    python examples/long_video_strip.py --model IamCreateAI/Ruyi-Mini-7B --image start.jpg --num-frames 350 \\
        --segment-frames 120 --height 384 --width 672 --steps 25 --every 8 --video outputs/long.mp4

Each row shows the frames a segment adds; the framed frames at its start are the last `--context-frames` frames of
the row above, which the segment was conditioned on (they are not generated again). With the tiny random model the
frames are noise, but the structure (segments, seams, context) is the real one.
"""

import os
import tempfile

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from _example_common import example_parser, parse_args
from diffusers.utils import export_to_video, load_image

from diffusers_ruyi._validation import check_frame_size
from diffusers_ruyi.cli import CLIError, check_output_path, positive_int
from diffusers_ruyi.long_video import iter_video_segments, plan_segments
from diffusers_ruyi.pipelines.controls import CAMERA_DIRECTIONS
from diffusers_ruyi.tiny import load_pipeline


CONTEXT_COLOUR = (255, 196, 0)
LABEL_WIDTH = 132
GAP = 2


def draw_strip(rows, labels, contexts, frame_size, every):
    """One row per segment: its context frames (framed) then every `every`-th new frame."""
    height, width = frame_size
    columns = max(len(ctx) + len(new[::every]) for ctx, new in zip(contexts, rows))
    cell_w, cell_h = width + 2 * GAP, height + 2 * GAP
    strip = PIL.Image.new("RGB", (LABEL_WIDTH + columns * cell_w, len(rows) * cell_h), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(strip)
    for r, (new, label, ctx) in enumerate(zip(rows, labels, contexts)):
        y = r * cell_h
        draw.text((4, y + cell_h // 2 - 6), label, fill=(0, 0, 0))
        frames = [(f, True) for f in ctx] + [(f, False) for f in new[::every]]
        for c, (frame, is_context) in enumerate(frames):
            x = LABEL_WIDTH + c * cell_w
            if is_context:
                draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=CONTEXT_COLOUR)
            strip.paste(PIL.Image.fromarray((frame * 255).round().astype(np.uint8)), (x + GAP, y + GAP))
    return strip


def save_atomically(write, path: str) -> None:
    """Calls `write(temporary_path)` next to `path`, then renames: never a partial file at `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    parser = example_parser(
        __doc__, "docs/images/long_video_strip.png", model="tiny-random", num_frames=38, steps=2, long_video=True
    )
    parser.add_argument("--video", help="Also write the video (mp4).")
    parser.add_argument("--segment-frames", type=positive_int, default=16)
    parser.add_argument("--context-frames", type=positive_int, default=5)
    parser.add_argument("--cameras", default="left,static,right", help="One per segment, or one for all.")
    parser.add_argument("--height", type=positive_int, default=32)
    parser.add_argument("--width", type=positive_int, default=48)
    parser.add_argument("--every", type=positive_int, default=1, help="Show every n-th new frame.")
    parser.add_argument("--seed", type=int, default=42)
    args = parse_args(parser, argv)
    # The plan, the size, the cameras and --video are checked here too, before the model loads.
    cameras = args.cameras.split(",")
    try:
        plan = plan_segments(args.num_frames, args.context_frames, args.segment_frames)
        check_frame_size("height", args.height)
        check_frame_size("width", args.width)
        if args.video:
            check_output_path("--video", args.video, overwrite=True, suffix=".mp4")
    except (ValueError, CLIError) as error:
        parser.error(str(error))
    unknown = [camera for camera in cameras if camera not in CAMERA_DIRECTIONS]
    if unknown or len(cameras) not in (1, len(plan)):
        parser.error(
            f"--cameras: one of {', '.join(CAMERA_DIRECTIONS)} for all segments, or one per segment ({len(plan)}); "
            f"got {args.cameras!r}"
        )

    on_gpu = torch.cuda.is_available()
    pipe = load_pipeline(args.model, dtype=torch.bfloat16 if on_gpu else torch.float32)
    if on_gpu:
        pipe.enable_model_cpu_offload()
    pipe.set_progress_bar_config(disable=True)
    segments = iter_video_segments(
        pipe,
        plan,
        args.height,
        args.width,
        image=load_image(args.image),
        camera_direction=cameras,
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(args.seed),
    )
    rows, labels, contexts, video = [], [], [], []
    for segment, new in segments:
        contexts.append(video[len(video) - segment.context_frames :] if segment.context_frames else [])
        camera = cameras[segment.index] if len(cameras) > 1 else cameras[0]
        first = len(video) + 1
        labels.append(f"{segment.index + 1}: {camera}, {first}-{first + len(new) - 1}")
        rows.append(new)
        video.extend(new)
    strip = draw_strip(rows, labels, contexts, (args.height, args.width), args.every)
    # A 256-colour palette keeps the committed picture small.
    save_atomically(lambda tmp: strip.quantize(256).save(tmp, optimize=True), args.output)
    if args.video:
        save_atomically(lambda tmp: export_to_video(video, tmp, fps=24), args.video)
    return args.output


if __name__ == "__main__":
    print(main())
