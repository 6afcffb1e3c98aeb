"""What the example scripts share: their common options, checked before the model loads.

Run the examples from the repository root (``python examples/image_to_video.py ...``): Python then finds this file
next to them. A copied example needs it too, or its functions pasted in.
"""

import argparse
import os

from diffusers_ruyi.cli import positive_int


def _frame_count(value: str) -> int:
    """An argparse type: 1 or a positive multiple of 8, as the pipeline takes."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number != 1 and (number < 8 or number % 8):
        raise argparse.ArgumentTypeError(f"expected 1 or a positive multiple of 8, got {value!r}")
    return number


def example_parser(
    doc: str,
    output: str,
    model: str = "IamCreateAI/Ruyi-Mini-7B",
    num_frames: int = 48,
    steps: int = 25,
    long_video: bool = False,
):
    """A parser with the options every example takes: --model, --image, --output, --num-frames and --steps; the
    first line of ``doc`` (the script's docstring) is its description. A long video (made in segments) takes any
    positive frame count, one pipeline call 1 or a multiple of 8."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default=model, help="Hub id or folder, or `tiny-random` for an offline smoke run.")
    parser.add_argument("--image", default="examples/assets/start.png", help="The start frame.")
    parser.add_argument("--output", default=output, help=f"The file to write ({os.path.splitext(output)[1]}).")
    if long_video:
        parser.add_argument("--num-frames", type=positive_int, default=num_frames, help="Frames of the video.")
    else:
        parser.add_argument("--num-frames", type=_frame_count, default=num_frames, help="1 or a multiple of 8.")
    parser.add_argument("--steps", type=positive_int, default=steps, help="Denoising steps.")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parses ``argv`` and checks what the ruyi-i2v command checks before loading a model (the image, the output
    and the model's name), then creates the output folder: a bad argument fails now, not after generating."""
    from diffusers_ruyi.cli import CLIError, check_image, check_model, check_output_path

    args = parser.parse_args(argv)
    suffix = os.path.splitext(parser.get_default("output"))[1]
    try:
        check_output_path("--output", args.output, overwrite=True, suffix=suffix)
        for flag in ("--image", "--last-image"):
            path = getattr(args, flag[2:].replace("-", "_"), None)
            if path is not None:
                check_image(flag, path)
        check_model(args.model)
    except CLIError as error:
        parser.error(str(error))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    return args
