"""What the example scripts share: their common options and the early output-folder check.

Run the examples from the repository root (``python examples/image_to_video.py ...``): Python then finds this file
next to them. A copied example needs it too, or its two functions pasted in.
"""

import argparse
import os


def example_parser(
    doc: str, output: str, model: str = "IamCreateAI/Ruyi-Mini-7B", num_frames: int = 48, steps: int = 25
):
    """A parser with the options every example takes: --model, --image, --output, --num-frames and --steps; the
    first line of ``doc`` (the script's docstring) is its description."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default=model, help="Hub id or folder, or `tiny-random` for an offline smoke run.")
    parser.add_argument("--image", default="examples/assets/start.png", help="The start frame.")
    parser.add_argument("--output", default=output)
    parser.add_argument("--num-frames", type=int, default=num_frames)
    parser.add_argument("--steps", type=int, default=steps, help="Denoising steps.")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parses ``argv`` and creates the output folder now: a bad --output then fails before the model is loaded, not
    after generating."""
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    return args
