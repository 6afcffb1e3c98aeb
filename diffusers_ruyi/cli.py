"""``ruyi-i2v``: image in, mp4 out, with every option of [`RuyiImageToVideoPipeline`].

    ruyi-i2v --model tiny-random --image start.png --output out.mp4          # offline smoke run, seconds
    ruyi-i2v --model IamCreateAI/Ruyi-Mini-7B --image start.png --output out.mp4 --dtype bfloat16 --offload model

Arguments are checked before any model is loaded; the video is written to a temporary file next to the output
and renamed when complete, so a failed or interrupted run never leaves a partial mp4.
"""

import argparse
import os
import sys
import tempfile
from typing import List, Optional

import torch


SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OFFLOAD_MODES = ("none", "model", "sequential")
CACHE_MODES = ("none", "teacache", "first-block")
FP8_MODES = ("none", "lite", "strong", "extreme")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}")
    if not number >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    from .pipelines.controls import CAMERA_DIRECTIONS, MOTION_VALUES

    parser = argparse.ArgumentParser(
        prog="ruyi-i2v", description="Ruyi-Mini-7B image-to-video: a start frame (and an end frame) to an mp4."
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--image", required=True, help="Start frame (any image PIL can read).")
    io.add_argument("--last-image", help="Optional end frame.")
    io.add_argument("--output", required=True, help="The .mp4 to write.")
    io.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    io.add_argument("--fps", type=_positive_int, default=24, help="Frames per second of the mp4 (default 24).")

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="IamCreateAI/Ruyi-Mini-7B",
        help="A hub id, a local folder (original or diffusers layout), or 'tiny-random' for a tiny random model "
        "built locally (no download; the video is noise).",
    )
    model.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="bfloat16 on GPU, float32 on CPU by default."
    )
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available).")
    model.add_argument(
        "--lora", action="append", default=[], help="LoRA file (diffusers or original Ruyi format); repeatable."
    )
    model.add_argument(
        "--lora-weight", action="append", type=float, default=[], help="Weight of each --lora, in order (default 1.0)."
    )

    video = parser.add_argument_group("video")
    video.add_argument("--num-frames", type=_positive_int, default=24, help="Frames: 1 or a multiple of 8, up to 120.")
    video.add_argument("--height", type=_positive_int, help="Height in pixels (multiple of 16); with --width.")
    video.add_argument("--width", type=_positive_int, help="Width in pixels (multiple of 16); with --height.")
    video.add_argument(
        "--base-resolution", type=_positive_int, default=512, help="Size when --height/--width are omitted."
    )
    video.add_argument("--motion", choices=list(MOTION_VALUES), default="auto", help="Motion amplitude.")
    video.add_argument("--camera", choices=list(CAMERA_DIRECTIONS), default="auto", help="Camera direction.")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=_positive_int, default=25, help="Denoising steps (default 25).")
    sampling.add_argument("--guidance-scale", type=_non_negative_float, default=7.0, help="CFG scale (default 7).")
    sampling.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim", help="Sampler (default ddim).")
    sampling.add_argument("--seed", type=int, default=42, help="Random seed (default 42).")

    memory = parser.add_argument_group("memory and speed")
    memory.add_argument("--offload", choices=OFFLOAD_MODES, default="none", help="CPU offload mode (needs a GPU).")
    memory.add_argument("--vae-tiling", action="store_true", help="Decode/encode the VAE in spatial tiles.")
    memory.add_argument("--cache", choices=CACHE_MODES, default="none", help="Step cache for the transformer.")
    memory.add_argument(
        "--cache-threshold", type=_non_negative_float, default=0.1, help="Threshold of --cache (default 0.1)."
    )
    memory.add_argument(
        "--fp8", choices=FP8_MODES, default="none", help="Store transformer weights in float8 (the original's modes)."
    )
    memory.add_argument(
        "--enhance-a-video", type=_non_negative_float, default=0.0, help="Enhance-A-Video weight (0 = off; ~1)."
    )
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Everything that can be checked without loading a model."""
    from PIL import Image, UnidentifiedImageError

    if not args.output.lower().endswith(".mp4"):
        parser.error(f"--output must end with .mp4, got {args.output!r}")
    if os.path.exists(args.output) and not args.overwrite:
        parser.error(f"--output {args.output!r} exists; pass --overwrite to replace it")
    if os.path.isdir(args.output):
        parser.error(f"--output {args.output!r} is a folder")
    for flag, path in (("--image", args.image), ("--last-image", args.last_image)):
        if path is None:
            continue
        if not os.path.isfile(path):
            parser.error(f"{flag} {path!r} does not exist")
        try:
            with Image.open(path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError) as e:
            parser.error(f"{flag} {path!r} is not a readable image: {e}")
    if (args.height is None) != (args.width is None):
        parser.error("pass both --height and --width, or neither")
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and value % 16:
            parser.error(f"{flag} must be a multiple of 16, got {value}")
    if args.num_frames != 1 and args.num_frames % 8:
        parser.error(f"--num-frames must be 1 or a multiple of 8, got {args.num_frames}")
    if len(args.lora_weight) > len(args.lora):
        parser.error("more --lora-weight values than --lora files")
    for path in args.lora:
        if not os.path.isfile(path):
            parser.error(f"--lora {path!r} does not exist")
    if args.offload != "none" and not torch.cuda.is_available():
        parser.error(f"--offload {args.offload} needs a CUDA GPU, and none is available")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            parser.error(f"--device {args.device!r} is not a device: {e}")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda was asked for, but no CUDA GPU is available")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)

    import diffusers
    from diffusers.utils import export_to_video, load_image

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)

    from .tiny import load_pipeline

    pipe = load_pipeline(args.model, dtype)
    if args.scheduler != "ddim":
        pipe.scheduler = getattr(diffusers, SCHEDULERS[args.scheduler]).from_config(pipe.scheduler.config)
    adapters = [f"lora_{i}" for i in range(len(args.lora))]
    for name, path in zip(adapters, args.lora):
        pipe.load_lora_weights(path, adapter_name=name)
    if adapters:
        weights = args.lora_weight + [1.0] * (len(adapters) - len(args.lora_weight))
        pipe.set_adapters(adapters, weights)
    if args.cache == "first-block":
        from diffusers import FirstBlockCacheConfig

        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=args.cache_threshold))
    elif args.cache == "teacache":
        from .hooks import RuyiTeaCacheConfig

        pipe.transformer.enable_cache(RuyiTeaCacheConfig(threshold=args.cache_threshold))
    if args.enhance_a_video > 0:
        pipe.transformer.enable_enhance_a_video(weight=args.enhance_a_video)
    if args.fp8 != "none":
        from .hooks import apply_fp8_mode

        apply_fp8_mode(pipe.transformer, args.fp8, compute_dtype=dtype)
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    if args.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif args.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)

    image = load_image(args.image)
    last_image = load_image(args.last_image) if args.last_image else None
    frames = pipe(
        image=image,
        last_image=last_image,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        base_resolution=args.base_resolution,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        motion=args.motion,
        camera_direction=args.camera,
        generator=torch.Generator("cpu").manual_seed(args.seed),
        output_type="np",
    ).frames[0]

    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".ruyi-", suffix=".mp4", dir=out_dir)
    os.close(fd)
    try:
        export_to_video(list(frames), tmp_path, fps=args.fps)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the video the usual permissions
        os.replace(tmp_path, args.output)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    print(f"Wrote {args.output} ({len(frames)} frames, {frames.shape[2]}x{frames.shape[1]}, {args.fps} fps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
