"""What the benchmark scripts share: the fixture paths, the medium (CPU-scale) geometry, and the worker's options and
pipeline call (bench_pipeline.py and bench_speed.py time the same call)."""

import argparse
import os


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOLDEN = os.path.join(ROOT, "tests", "fixtures", "golden")
TINY = os.path.join(GOLDEN, "Ruyi-tiny-random")
IMAGE = os.path.join(GOLDEN, "start_only_start.png")

# The golden tiny transformer (`diffusers_ruyi.tiny.TINY_TRANSFORMER_CONFIG`) widened and deepened to a size where
# the transformer dominates (CPU scale).
MEDIUM_TRANSFORMER_OVERRIDES = {
    "num_attention_heads": 8,
    "attention_head_dim": 64,
    "hidden_size": 512,
    "num_layers": 8,
    "mlp_ratio": 4.0,
}


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden options the driver passes to a worker: `--worker`, the checkpoint, image, size and output file."""
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--image", default=IMAGE, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--h", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--w", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)


def generate(pipe, image, args):
    """The timed pipeline call of a worker: `args.frames` frames at `args.h` x `args.w`, `args.steps` steps, CFG 7,
    motion 2, camera left, seed 42; the frames as a tensor `(B, F, C, H, W)`."""
    import torch

    return pipe(
        image=image,
        num_frames=args.frames,
        height=args.h,
        width=args.w,
        num_inference_steps=args.steps,
        guidance_scale=7.0,
        motion="2",
        camera_direction="left",
        generator=torch.Generator("cpu").manual_seed(42),
        output_type="pt",
    ).frames
