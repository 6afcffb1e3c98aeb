"""``ruyi-i2v``: image in, mp4 out, with every option of [`RuyiImageToVideoPipeline`].

    ruyi-i2v --model tiny-random --image start.png --output out.mp4          # offline smoke run
    ruyi-i2v --model IamCreateAI/Ruyi-Mini-7B --image start.png --output out.mp4 --dtype bfloat16 --offload model
    ruyi-i2v --image start.png --num-frames 350 --camera left,static,right --output long.mp4   # 3 segments
    ruyi-i2v --extend in.mp4 --num-frames 96 --output longer.mp4           # in.mp4 plus 96 new frames

Every argument (paths, the output, numbers, choices) is checked before torch, diffusers or transformers is even
imported, so ``--help`` and argument errors answer at once. Failures print one line naming what to fix (exit code 2
for bad input, 1 for a broken checkpoint or an unexpected error, 130 for Ctrl-C, 143 for SIGTERM; ``--verbose`` adds
the traceback).
The video is written to a temporary file next to the output and renamed when complete, so a failed or interrupted
run never leaves a partial mp4.
"""

import argparse
import contextlib
import functools
import math
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Tuple, Union


PROG = "ruyi-i2v"
DEFAULT_MODEL = "IamCreateAI/Ruyi-Mini-7B"
TINY_RANDOM = "tiny-random"
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}
DTYPE_NAMES = ("bfloat16", "float16", "float32")
GENERATOR_DEVICES = ("cpu", "device")
# No float16: the VAE's `force_upcast` runs a float16 VAE in float32.
VAE_DTYPE_NAMES = ("float32", "bfloat16")
OFFLOAD_MODES = ("none", "model", "sequential", "group")
CACHE_MODES = ("none", "teacache", "first-block")
FP8_MODES = ("none", "lite", "strong", "extreme")
FP8_DTYPES = ("e4m3fn", "e5m2")
# x264's own default: what predict_i2v.py's `imageio.mimsave` writes.
DEFAULT_CRF = 23
# Copies of `pipelines.controls.MOTION_VALUES` / `CAMERA_DIRECTIONS` (importing that module imports torch);
# tests/cli/test_cli.py checks that they agree.
MOTION_VALUES = ("1", "2", "3", "4", "auto")
CAMERA_DIRECTIONS = ("static", "left", "right", "up", "down", "auto")
MAX_FRAMES = 120  # the longest videos Ruyi-Mini-7B was trained on: the most frames of one segment
MIN_BASE_RESOLUTION = 64  # a copy of `pipelines.controls.MIN_BASE_RESOLUTION`
MAX_BASE_RESOLUTION = 2048  # a copy of `pipelines.controls.MAX_BASE_RESOLUTION`
MAX_FRAME_SIZE = 4096  # a copy of `_validation.MAX_FRAME_SIZE`
MAX_FPS = 240  # beyond it x264 writes files that players read back as 0 fps
TEACACHE_SKIP_DEFAULTS = (3, 1)  # a copy of `RuyiTeaCacheConfig`'s skip_start_steps and skip_end_steps
# The seeds `torch.Generator.manual_seed` takes (a signed or an unsigned 64-bit integer).
SEED_RANGE = (-(2**63), 2**64 - 1)

DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process the signal ended

_DEVICE_PATTERN = re.compile(r"^(cpu|mps|(cuda|xpu|npu)(:\d+)?)$")
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CLIError(Exception):
    """A failure explained in one line, with the exit code to return."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's multi-line usage dump; `--help` still shows the usage.
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fps(value: str) -> Union[int, float]:
    """An argparse type for --fps: a finite number from 1 to MAX_FPS (29.97 as NTSC videos have; whole rates stay
    integers)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 1 <= number <= MAX_FPS):
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {MAX_FPS} (such as 24 or 29.97), got {value!r}")
    return int(number) if number.is_integer() else number


def _int_at_least(minimum: int, expected: str, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (and <= ``maximum``); the error says ``expected`` and the value
    given."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum or (maximum is not None and number > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return number

    return parse


# An argparse `type` for counts; the example scripts use it too.
positive_int = _int_at_least(1, "a positive integer")
_base_resolution = _int_at_least(
    MIN_BASE_RESOLUTION,
    f"an integer from {MIN_BASE_RESOLUTION} to {MAX_BASE_RESOLUTION}",
    maximum=MAX_BASE_RESOLUTION,
)
_frame_size = _int_at_least(1, f"a positive integer of at most {MAX_FRAME_SIZE}", maximum=MAX_FRAME_SIZE)
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _finite_float_at_least(minimum: float, expected: str) -> Callable[[str], float]:
    """An argparse type: a finite number >= ``minimum`` (nan and inf never pass); the error says ``expected``."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}")
        if not (math.isfinite(number) and number >= minimum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return number

    return parse


_non_negative_float = _finite_float_at_least(0.0, "a number >= 0")
_finite_float = _finite_float_at_least(-math.inf, "a finite number")


def _seed(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
    if not SEED_RANGE[0] <= number <= SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"expected an integer from -2**63 to 2**64 - 1, got {value!r}")
    return number


def _choice_list(choices: Tuple[str, ...]) -> Callable[[str], List[str]]:
    """A value of ``choices``, or a comma-separated list of them (one per segment of a long video)."""

    def parse(value: str) -> List[str]:
        items = [item.strip() for item in value.split(",")]
        for item in items:
            if item not in choices:
                raise argparse.ArgumentTypeError(
                    f"invalid choice: {item!r} (choose from {', '.join(choices)}; a comma-separated list gives one "
                    "per segment)"
                )
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog=PROG, description="Ruyi-Mini-7B image-to-video: a start frame (and an end frame) to an mp4."
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--image", help="Start frame (any image PIL can read). Give --image or --extend.")
    io.add_argument(
        "--extend",
        metavar="VIDEO",
        help="A video to continue instead of --image: the output is this video followed by --num-frames new frames, "
        "conditioned on its last --context-frames frames.",
    )
    io.add_argument("--last-image", help="Optional end frame (of the last segment).")
    io.add_argument(
        "--output",
        required=True,
        help="The .mp4 to write (missing parent folders are created, and removed on failure).",
    )
    io.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    io.add_argument(
        "--fps",
        type=_fps,
        default=None,
        help=f"Frames per second of the mp4, 1 to {MAX_FPS}, fractional rates such as 29.97 too (default 24; "
        "--extend: the video's).",
    )
    io.add_argument(
        "--crf",
        type=_int_at_least(0, "an integer from 0 to 51", maximum=51),
        default=DEFAULT_CRF,
        help=f"x264 quality of the mp4, 0 to 51: lower is better and larger (default {DEFAULT_CRF}, as "
        "predict_i2v.py writes; the original's ComfyUI workflows save at 19).",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="A hub id, a local folder (original or diffusers layout), or 'tiny-random' for a tiny random model "
        f"built locally (no download; the video is noise). Default {DEFAULT_MODEL}.",
    )
    model.add_argument(
        "--dtype", choices=DTYPE_NAMES, default=None, help="bfloat16 on GPU, float32 on CPU by default."
    )
    model.add_argument(
        "--vae-dtype",
        choices=VAE_DTYPE_NAMES,
        default="float32",
        help="The VAE's dtype (default float32; predict_i2v.py runs it in bfloat16 like the rest).",
    )
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available).")
    model.add_argument(
        "--lora",
        action="append",
        default=[],
        help="LoRA file (diffusers or original Ruyi format), merged into the weights as the original merges it; "
        "repeatable.",
    )
    model.add_argument(
        "--lora-weight",
        action="append",
        type=_finite_float,
        default=[],
        help="Weight of each --lora, in order: one per --lora, or none (each 1.0).",
    )

    video = parser.add_argument_group("video")
    video.add_argument(
        "--num-frames",
        type=positive_int,
        default=24,
        help="Frames: 1 or a multiple of 8 up to --segment-frames; any number beyond, made in segments. With --extend: "
        "the frames to append, any number (default 24; the pipeline's own default is 120).",
    )
    video.add_argument(
        "--height",
        type=_frame_size,
        help=f"Height in pixels (multiple of 16, at most {MAX_FRAME_SIZE}); with --width.",
    )
    video.add_argument(
        "--width", type=_frame_size, help=f"Width in pixels (multiple of 16, at most {MAX_FRAME_SIZE}); with --height."
    )
    video.add_argument(
        "--base-resolution",
        type=_base_resolution,
        default=512,
        help=f"Size when --height/--width are omitted: about its square in pixels ({MIN_BASE_RESOLUTION} to "
        f"{MAX_BASE_RESOLUTION}; 384 to 896 work well).",
    )
    video.add_argument(
        "--motion",
        type=_choice_list(MOTION_VALUES),
        default=["auto"],
        help=f"Motion amplitude: {', '.join(MOTION_VALUES)}; or one per segment, e.g. 1,3,2.",
    )
    video.add_argument(
        "--camera",
        type=_choice_list(CAMERA_DIRECTIONS),
        default=["auto"],
        help=f"Camera direction: {', '.join(CAMERA_DIRECTIONS)}; or one per segment, e.g. left,static,right.",
    )

    long = parser.add_argument_group("long videos and continuation")
    long.add_argument(
        "--segment-frames",
        type=positive_int,
        default=MAX_FRAMES,
        help=f"Most frames of one segment, a multiple of 8 up to {MAX_FRAMES} (default {MAX_FRAMES}). Longer videos "
        "are made of segments, each continuing the last --context-frames frames of the one before.",
    )
    long.add_argument(
        "--context-frames",
        type=positive_int,
        default=5,
        help="Frames each segment (or --extend) continues from (default 5, the most Ruyi's authors state it "
        "supports; more frames carry the motion across the seam better).",
    )

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=positive_int, default=25, help="Denoising steps (default 25).")
    sampling.add_argument(
        "--guidance-scale",
        type=_non_negative_float,
        default=7.0,
        help="CFG scale, >= 0 (default 7; 1 or below = off).",
    )
    sampling.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim", help="Sampler (default ddim).")
    sampling.add_argument("--seed", type=_seed, default=42, help="Random seed (default 42).")
    sampling.add_argument(
        "--generator-device",
        choices=GENERATOR_DEVICES,
        default="cpu",
        help="Where the seed's random numbers are drawn: cpu (default: a seed gives the same video on any machine) "
        "or device (on --device, as predict_i2v.py draws them: its video for the seed on a GPU).",
    )

    memory = parser.add_argument_group("memory and speed")
    memory.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="none",
        help="CPU offload mode (needs a GPU): `model` or `sequential` (the original's normal and low-memory modes), "
        "or `group`: the transformer's blocks one at a time, the next one prefetched on a CUDA stream, the other "
        "models on the GPU (with --skip-offload 1 and --vae-tiling about 3 GB at 512x512x24 and 9.6 GB at "
        "768x768x120, estimated).",
    )
    memory.add_argument(
        "--skip-offload",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="Park the transformer's long-skip activations on the CPU in groups of N (the original's "
        "gpu_offload_steps: 10, 7, 5 or 1; 0 = off, the default). Same video, less GPU memory.",
    )
    memory.add_argument(
        "--vae-tiling",
        action="store_true",
        help="Encode/decode with this package's VAE tiling (256 px tiles, blended), instead of the checkpoint's own "
        "(the published config turns on the original's 384 px tiling).",
    )
    memory.add_argument("--cache", choices=CACHE_MODES, default="none", help="Step cache for the transformer.")
    memory.add_argument(
        "--cache-threshold", type=_non_negative_float, default=None, help="Threshold of --cache (default 0.1)."
    )
    memory.add_argument(
        "--cache-skip-start",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="TeaCache: the first N steps are always computed (default 3, as the original's).",
    )
    memory.add_argument(
        "--cache-skip-end",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="TeaCache: the last N steps are always computed (default 1, as the original's).",
    )
    memory.add_argument(
        "--cache-on-device",
        action="store_true",
        help="TeaCache: keep its cached tensors on --device rather than the CPU (the original's offload_cpu "
        "False): a little faster, more GPU memory.",
    )
    memory.add_argument(
        "--fp8", choices=FP8_MODES, default="none", help="Store transformer weights in float8 (the original's modes)."
    )
    memory.add_argument(
        "--fp8-dtype",
        choices=FP8_DTYPES,
        default=None,
        help="The float8 format of --fp8: e4m3fn (default; the original's auto) or e5m2.",
    )
    memory.add_argument(
        "--enhance-a-video",
        type=_non_negative_float,
        default=None,
        metavar="WEIGHT",
        help="Turn on Enhance-A-Video with this weight, >= 0 (the original's default 1; off when not given; "
        "weight 0 still enhances, as in the original).",
    )
    memory.add_argument(
        "--enhance-skip-start",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="Enhance-A-Video: not in the first N steps (default 0).",
    )
    memory.add_argument(
        "--enhance-skip-end",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="Enhance-A-Video: not in the last N steps (default 0).",
    )

    messages = parser.add_argument_group("messages")
    shown = messages.add_mutually_exclusive_group()
    shown.add_argument(
        "--quiet", "-q", action="store_true", help="Print nothing but errors (no progress, no warnings)."
    )
    shown.add_argument("--verbose", "-v", action="store_true", help="Tracebacks on errors, and library logging.")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Checks that need no model (and no torch)
# ----------------------------------------------------------------------------------------------------------------


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def output_folder_problem(folder: str) -> Optional[str]:
    """Why ``folder`` cannot be created and written (None when it can), creating nothing: its nearest existing
    ancestor must be a folder with write permission where a folder can be made (permissions do not tell everything:
    root may write anywhere, but not into /proc; a read-only mount). Used for `--output` here and by the conversion
    and training scripts before they load a model."""
    ancestor = _nearest_existing(folder)
    if not os.path.isdir(ancestor):
        return f"cannot be created: {ancestor!r} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot be written: no write permission in {ancestor!r}"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ruyi-probe-", dir=ancestor))
    except OSError as e:
        return f"cannot be written: {e.strerror or e} in {ancestor!r}"
    return None


def check_output_path(flag: str, path: str, overwrite: bool, suffix: Optional[str] = None) -> None:
    """Raises `CLIError` unless `path` can be written: a new file (or an existing one with `overwrite`) whose parent
    is, or can be created as, a writable folder."""
    if suffix and not path.lower().endswith(suffix):
        raise CLIError(f"{flag} must end with {suffix}, got {path!r}")
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path!r} is a folder; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise CLIError(f"{flag} {path!r} exists; pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    problem = output_folder_problem(folder)
    if problem:
        raise CLIError(f"{flag} {path!r} {problem}")
    # A name the file system cannot hold would fail at the final rename, after the whole run.
    ancestor = _nearest_existing(folder)
    try:
        longest = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf on Windows
        longest = 255
    for part in os.path.relpath(os.path.abspath(path), ancestor).split(os.sep):
        if len(os.fsencode(part)) > longest:
            raise CLIError(
                f"{flag}: the name {part[:24]!r}... is {len(os.fsencode(part))} bytes long; this file system takes "
                f"at most {longest}"
            )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def cached_snapshot(repo_id: str) -> Optional[str]:
    """The newest locally cached snapshot folder of a hub model repository, or None (no import of the hub client)."""
    snapshots = os.path.join(_hub_cache_dir(), "models--" + repo_id.replace("/", "--"), "snapshots")
    try:
        found = [os.path.join(snapshots, d) for d in os.listdir(snapshots)]
    except OSError:
        return None
    found = [d for d in found if os.path.isdir(d) and os.listdir(d)]
    return max(found, key=os.path.getmtime) if found else None


def check_model(model: str) -> None:
    """`--model` is 'tiny-random', an existing folder, or a hub id (in the cache when offline)."""
    if model == TINY_RANDOM:
        return
    if os.path.isdir(model):
        return
    if os.path.exists(model):
        raise CLIError(f"--model {model!r} is a file; pass the checkpoint's folder (or a hub id like 'owner/name')")
    # A hub id is `owner/name`: a missing path (`./x`, `/x`, `~/x`, `x/`, `x\y`) cannot match the pattern.
    if not _HUB_ID_PATTERN.match(model) or "--" in model or ".." in model:
        raise CLIError(
            f"--model {model!r} does not exist (it is neither a local folder nor a hub id like 'owner/name')"
        )
    if (_env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")) and cached_snapshot(model) is None:
        raise CLIError(
            f"--model {model!r} is no local folder, and not in the Hugging Face cache ({_hub_cache_dir()}) while "
            f"HF_HUB_OFFLINE is set: run `hf download {model}` once online, pass a local folder, or use --model "
            f"{TINY_RANDOM}"
        )


def _no_gpu_device_nodes() -> bool:
    """True when this machine certainly has no CUDA/ROCm GPU (no device nodes), decided without importing torch."""
    if not sys.platform.startswith("linux"):
        return False
    return not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked without loading a model (or importing torch); raises `CLIError`."""
    if (args.image is None) == (args.extend is None):
        raise CLIError(
            "pass --image (a start frame) or --extend (a video to continue)"
            if args.image is None
            else "pass either --image or --extend, not both (--extend continues the video's last frames)"
        )
    check_output_path("--output", args.output, args.overwrite, suffix=".mp4")
    if args.extend is not None:
        args.extend_info = check_video(args.extend)
        if args.extend_info["fps"] is None and args.fps is None:
            raise CLIError(f"--extend {args.extend!r}: its frame rate cannot be read; pass --fps")
        if args.fps is None and args.extend_info["fps"] > MAX_FPS:
            # As for --fps: x264 writes files above it that players read back as 0 fps.
            raise CLIError(f"--extend {args.extend!r} is {args.extend_info['fps']:g} fps, above {MAX_FPS}; pass --fps")
        height, width = args.extend_info["height"], args.extend_info["width"]
        if args.height is None and height % 16 == 0 and width % 16 == 0 and max(height, width) > MAX_FRAME_SIZE:
            # New frames are made at the video's own size then (see _run_segments).
            raise CLIError(
                f"--extend {args.extend!r} is {width}x{height}: new frames would be made at that size, above "
                f"{MAX_FRAME_SIZE}; pass --height and --width"
            )
    for flag, path in (("--image", args.image), ("--last-image", args.last_image)):
        if path is not None:
            check_image(flag, path)
    if (args.height is None) != (args.width is None):
        raise CLIError("pass both --height and --width, or neither")
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and value % 16:
            raise CLIError(f"{flag} must be a multiple of 16, got {value}")
    args.plan = plan_video(args)
    if args.lora_weight and len(args.lora_weight) != len(args.lora):
        raise CLIError(
            f"{len(args.lora_weight)} --lora-weight values for {len(args.lora)} --lora files: give one per file, or "
            "none (each 1.0)"
        )
    for path in args.lora:
        check_lora_file(path)
    if args.cache == "none" and args.cache_threshold is not None:
        raise CLIError("--cache-threshold needs --cache (teacache or first-block)")
    if args.cache_threshold is None:
        args.cache_threshold = 0.1
    for flag, given in (
        ("--cache-skip-start", args.cache_skip_start is not None),
        ("--cache-skip-end", args.cache_skip_end is not None),
        ("--cache-on-device", args.cache_on_device),
    ):
        if given and args.cache != "teacache":
            raise CLIError(f"{flag} needs --cache teacache (first-block has no step windows)")
    if args.fp8 == "none" and args.fp8_dtype is not None:
        raise CLIError("--fp8-dtype needs --fp8 (lite, strong or extreme)")
    for flag, value in (
        ("--enhance-skip-start", args.enhance_skip_start),
        ("--enhance-skip-end", args.enhance_skip_end),
    ):
        if value is not None and args.enhance_a_video is None:
            raise CLIError(f"{flag} needs --enhance-a-video")
    # Windows given explicitly that leave no step would turn the feature off without a word.
    if args.enhance_skip_start is not None or args.enhance_skip_end is not None:
        start, end = args.enhance_skip_start or 0, args.enhance_skip_end or 0
        if start + end >= args.steps:
            raise CLIError(
                f"--enhance-skip-start {start} and --enhance-skip-end {end} leave none of the {args.steps} --steps to "
                "enhance"
            )
    if args.cache_skip_start is not None or args.cache_skip_end is not None:
        given = (args.cache_skip_start, args.cache_skip_end)
        start, end = (
            max(1, default if value is None else value) for value, default in zip(given, TEACACHE_SKIP_DEFAULTS)
        )
        if start + end >= args.steps:
            shown = [
                f"{default} (default)" if value is None else str(value)
                for value, default in zip(given, TEACACHE_SKIP_DEFAULTS)
            ]
            raise CLIError(
                f"--cache-skip-start {shown[0]} and --cache-skip-end {shown[1]} (0 counts as 1) leave none of the "
                f"{args.steps} --steps that TeaCache may skip"
            )
    check_model(args.model)
    if args.device is not None and not _DEVICE_PATTERN.match(args.device):
        raise CLIError(f"--device {args.device!r} is not a device; use cpu, cuda, cuda:N, mps or xpu")
    wants_gpu = args.offload != "none" or (args.device or "").startswith("cuda")
    if wants_gpu and _no_gpu_device_nodes():
        raise CLIError(_no_gpu_message(args))


def check_image(flag: str, path: str) -> None:
    """An existing image file PIL can decode whole: `verify` finds a broken PNG, only a full decode a truncated
    JPEG."""
    from PIL import Image, UnidentifiedImageError

    from ._images import image_mode_problem

    if not os.path.isfile(path):
        # diffusers' `load_image` takes URLs; this command reads files only.
        if re.match(r"^https?://", path, re.IGNORECASE):
            raise CLIError(f"{flag} {path!r} is a URL; download the image and pass its file")
        raise CLIError(
            f"{flag} {path!r} does not exist" if not os.path.exists(path) else f"{flag} {path!r} is a folder"
        )

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
            problem = image_mode_problem(im, flag)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CLIError(f"{flag} {path!r} is not a readable image: {_one_line(e)}")
    if problem:
        raise CLIError(f"{problem.replace(f'`{flag}`', f'{flag} {path!r}')}")


def check_lora_file(path: str) -> None:
    """`--lora`: a safetensors file (or a folder with one) whose header lists LoRA tensors. Whether they fit the
    transformer is only known once it is loaded."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise CLIError(f"--lora {path!r} is a folder without a .safetensors file")
        if len(files) > 1 and DIFFUSERS_LORA_FILE in files:
            files = [DIFFUSERS_LORA_FILE]  # what diffusers' loader picks among several
        if len(files) > 1:
            raise CLIError(f"--lora {path!r} holds several .safetensors files {files}; pass the file itself")
        path = os.path.join(path, files[0])
    elif not os.path.isfile(path):
        raise CLIError(f"--lora {path!r} does not exist")
    if not path.endswith(".safetensors"):
        raise CLIError(
            f"--lora {path!r} is not a .safetensors file (LoRA weights are read from safetensors only: pickle files "
            "can run code)"
        )
    from safetensors import SafetensorError, safe_open  # the header only, and no torch

    try:
        with safe_open(path, framework="numpy") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise CLIError(f"--lora {path!r} is not a readable safetensors file: {_one_line(e)}")
    if not keys:
        raise CLIError(f"--lora {path!r} holds no tensors")
    if not any("lora" in key.lower() for key in keys):
        raise CLIError(f"--lora {path!r} holds no LoRA tensors (no key names 'lora'), e.g. {keys[:3]}")


def check_video(path: str) -> Dict[str, Any]:
    """`--extend`: an existing, readable video; returns its frame count, size and frame rate (ffmpeg, no torch)."""
    if not os.path.isfile(path):
        raise CLIError(
            f"--extend {path!r} does not exist" if not os.path.exists(path) else f"--extend {path!r} is a folder"
        )
    import imageio_ffmpeg

    frames_reader = imageio_ffmpeg.read_frames(path)
    try:
        meta = next(frames_reader)
        num_frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
    except (OSError, RuntimeError, StopIteration) as e:
        raise CLIError(f"--extend {path!r} is not a readable video: {_one_line(e)}")
    finally:
        frames_reader.close()
    if num_frames < 1:
        raise CLIError(f"--extend {path!r} has no frames")
    width, height = meta["size"]
    if width % 2 or height % 2:
        raise CLIError(
            f"--extend {path!r} is {width}x{height}: the continuation is written at the video's size, and H.264 "
            "(yuv420p) needs an even width and height"
        )
    fps = meta.get("fps")
    # None when the video's rate cannot be read (then --fps must say it); not replaced by a guess.
    return {"frames": num_frames, "height": height, "width": width, "fps": fps if fps and fps > 0 else None}


def plan_video(args: argparse.Namespace) -> list:
    """The segments of the run (`long_video.plan_segments`); checks the frame counts and per-segment lists."""
    from .long_video import plan_segments

    if args.segment_frames % 8 or args.segment_frames > MAX_FRAMES:
        raise CLIError(
            f"--segment-frames must be a multiple of 8 up to {MAX_FRAMES} (the longest videos Ruyi was trained on), "
            f"got {args.segment_frames}"
        )
    if args.extend is None and args.num_frames <= args.segment_frames and args.num_frames != 1 and args.num_frames % 8:
        raise CLIError(
            f"--num-frames must be 1 or a multiple of 8, got {args.num_frames} (videos longer than --segment-frames "
            f"{args.segment_frames} may have any length)"
        )
    try:
        plan = plan_segments(
            args.num_frames,
            context_frames=args.context_frames,
            segment_frames=args.segment_frames,
            continuation=args.extend is not None,
            end_frames=1 if args.last_image else 0,
            available_context=args.extend_info["frames"] if args.extend is not None else None,
        )
    except ValueError as e:
        message = str(e)
        for name, flag in (
            ("`context_frames`", "--context-frames"),
            ("`segment_frames`", "--segment-frames"),
            ("`num_frames`", "--num-frames"),
        ):
            message = message.replace(name, flag)
        raise CLIError(message.rstrip("."))
    step = args.segment_frames - args.context_frames
    for flag, values in (("--motion", args.motion), ("--camera", args.camera)):
        if len(values) not in (1, len(plan)):
            most = len(values) * step if args.extend else args.segment_frames + (len(values) - 1) * step
            raise CLIError(
                f"{flag} has {len(values)} values, but the video has {len(plan)} segment(s) of at most "
                f"{args.segment_frames} frames: give one value, or one per segment ({len(values)} segments make "
                f"at most {most} {'new ' if args.extend else ''}frames)"
            )
    return plan


def _no_gpu_message(args: argparse.Namespace) -> str:
    if args.offload != "none":
        return f"--offload {args.offload} needs a CUDA GPU, and none is available (drop --offload on a CPU)"
    return "--device cuda was asked for, but no CUDA GPU is available (use --device cpu)"


def check_args_with_torch(args: argparse.Namespace) -> None:
    """The checks that need torch (a GPU is really there), done once the cheap ones passed."""
    import torch

    wants_gpu = args.offload != "none" or (args.device or "").startswith("cuda")
    if wants_gpu and not torch.cuda.is_available():
        raise CLIError(_no_gpu_message(args))
    kind, _, index = (args.device or "").partition(":")
    if kind in ("mps", "xpu", "npu"):
        module = torch.backends.mps if kind == "mps" else getattr(torch, kind, None)  # torch.npu needs torch_npu
        if module is None or not module.is_available():
            raise CLIError(f"--device {args.device} is not available on this machine (use --device cpu or cuda)")
    if index:
        count = getattr(torch, kind).device_count()
        if int(index) >= count:
            raise CLIError(f"--device {args.device} does not exist: {count} {kind.upper()} device(s) found")


def _scheduler_before_loading(model: str):
    """The scheduler `--model` will load, built from its config alone; None when the config is not on this machine
    (a download to come: the pipeline checks `--steps` itself before any step)."""
    import diffusers

    if model == TINY_RANDOM:
        from .tiny import build_tiny_scheduler

        return build_tiny_scheduler()
    from .loaders.original_checkpoint import is_original_pipeline_folder, read_json

    folder = model if os.path.isdir(model) else cached_snapshot(model)
    path = os.path.join(folder, "scheduler", "scheduler_config.json") if folder else None
    if path is None or not os.path.isfile(path):
        return None
    config = read_json(path)
    # The original layout builds DDIM whatever class its file names, as the original does; a diffusers folder builds
    # the class its model_index.json names (the config's own `_class_name` is not what diffusers loads).
    if is_original_pipeline_folder(folder):
        cls = diffusers.DDIMScheduler
    else:
        cls = getattr(diffusers, read_json(os.path.join(folder, "model_index.json"))["scheduler"][1])
    return cls.from_config(config)


def check_steps(args: argparse.Namespace) -> None:
    """`--steps` against `--scheduler` (at most the training steps, and what the sampler can schedule), before the
    model loads."""
    import diffusers

    from ._validation import schedule_problem

    try:
        scheduler = _scheduler_before_loading(args.model)
    except (OSError, ValueError, KeyError, AttributeError):
        return  # a broken scheduler config: loading the model reports it, naming --model
    if scheduler is None:
        return
    if args.scheduler != "ddim":
        scheduler = getattr(diffusers, SCHEDULERS[args.scheduler]).from_config(scheduler.config)

    def refused(steps: int) -> Optional[BaseException]:
        try:
            scheduler.set_timesteps(steps)
        except (ValueError, IndexError) as e:
            return e
        problem = schedule_problem(scheduler, steps)  # it would fail mid-run, after the model has loaded
        return None if problem is None else ValueError(f"its schedule fails when run ({problem})")

    most = scheduler.config.num_train_timesteps
    if args.steps > most:  # refused for every sampler: a schedule of 10^9 steps would fill the memory first
        raise CLIError(f"--steps {args.steps} is more than the schedule's {most} training steps: use at most {most}")
    error = refused(args.steps)
    if error is None:
        return
    fewest = next((n for n in range(args.steps + 1, most + 1) if refused(n) is None), None)
    most_ok = None if fewest else next((n for n in range(args.steps - 1, 0, -1) if refused(n) is None), None)
    hint = f"at least {fewest}" if fewest else f"at most {most_ok}" if most_ok else "other values"
    raise CLIError(
        f"--steps {args.steps} does not work with --scheduler {args.scheduler} (use {hint}): {_one_line(error)}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Progress display
# ----------------------------------------------------------------------------------------------------------------


def _format_size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit in ("B", "KB") else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"


def component_sizes(folder: str) -> List[Tuple[str, int]]:
    """(name, bytes) of each top-level component of a checkpoint folder (sub-folders and weight files)."""
    sizes = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith("."):
            continue
        if os.path.isdir(path):
            total = sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)
            sizes.append((name, total))
        elif name.endswith((".safetensors", ".bin", ".pt", ".pth")):
            sizes.append((name, os.path.getsize(path)))
    return sizes


class Progress:
    """One line per phase on stderr (start, then the time it took); silent with ``--quiet``."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.start_time = time.perf_counter()
        self._at_close: List[Callable[[], Any]] = []

    def at_close(self, undo: Callable[[], Any]) -> None:
        """Registers ``undo`` (a global setting changed for this run) to be called by `close`."""
        self._at_close.append(undo)

    def close(self) -> None:
        while self._at_close:
            self._at_close.pop()()

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"{PROG}: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.say(f"{name} ...")
        start = time.perf_counter()
        yield
        self.say(f"{name}: {time.perf_counter() - start:.1f} s")

    def wrap(self, obj: Any, method: str, name: str) -> None:
        """Reports every call of ``obj.method`` as the phase ``name`` (an instance attribute shadows the method)."""
        original = getattr(obj, method, None)
        if original is None:
            return

        @functools.wraps(original)
        def reported(*args, **kwargs):
            with self.phase(name):
                return original(*args, **kwargs)

        setattr(obj, method, reported)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start_time


def peak_memory(device) -> str:
    """Peak memory of this run: CUDA's max_memory_allocated on a GPU, the process's peak RSS on a CPU."""
    import torch

    if device.type == "cuda":
        return f"peak GPU memory {_format_size(torch.cuda.max_memory_allocated(device))} (max_memory_allocated)"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return f"peak memory {_format_size(rss)} (RSS)"


def _show_no_warning(*args: Any, **kwargs: Any) -> None:
    """`warnings.showwarning` under --quiet."""


def _configure_messages(args: argparse.Namespace, progress: Progress) -> None:
    """Library logging and progress bars for ``--quiet`` / ``--verbose``. The settings are global to the process, so
    each one is put back when the run ends (`Progress.close`): `main` may run more than once in a process."""
    import logging

    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        progress.at_close(functools.partial(library.set_verbosity, library.get_verbosity()))
        if library.is_progress_bar_enabled():
            progress.at_close(library.enable_progress_bar)
    if args.quiet:
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        try:
            from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

            if not are_progress_bars_disabled():
                progress.at_close(enable_progress_bars)
            disable_progress_bars()
        except ImportError:  # pragma: no cover - older huggingface_hub
            pass
    if args.quiet:  # (argparse keeps --quiet and --verbose apart)
        # Nothing but errors: the libraries' warnings (and this package's, which go to the root logger) too.
        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
        logger = logging.getLogger("diffusers_ruyi")
        progress.at_close(functools.partial(logger.setLevel, logger.level))
        logger.setLevel(logging.ERROR)
        # Shown nowhere, rather than filtered: the filters that libraries add while they are imported stay.
        progress.at_close(functools.partial(setattr, warnings, "showwarning", warnings.showwarning))
        warnings.showwarning = _show_no_warning
    elif args.verbose:
        diffusers_logging.set_verbosity_info()
        logger = logging.getLogger("diffusers_ruyi")
        progress.at_close(functools.partial(logger.setLevel, logger.level))
        logger.setLevel(logging.INFO)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        logger.addHandler(handler)
        progress.at_close(functools.partial(logger.removeHandler, handler))
    else:
        diffusers_logging.set_verbosity_warning()
        transformers_logging.set_verbosity_error()


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0].rstrip(":")
    if len(lines) > 1:
        text += f" (and {len(lines) - 1} more line(s); --verbose shows them)"
    return text


def _all_lines(error: BaseException, limit: int = 400) -> str:
    """Every line of the message on one line (a LoRA's problems are listed below its first line), cut at ``limit``."""
    text = "; ".join(line.strip().lstrip("- ") for line in str(error).strip().splitlines() if line.strip())
    text = text.replace(":;", ":")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_hub_error(error: BaseException) -> bool:
    module = type(error).__module__ or ""
    return module.startswith("huggingface_hub")


def explain(error: BaseException, stage: str, args: argparse.Namespace) -> CLIError:
    """Turns an exception of a stage ("load", "generate", "write") into one line and an exit code."""
    if isinstance(error, CLIError):
        return error
    name = type(error).__name__
    if stage == "load":
        if _is_hub_error(error):
            if name in ("RepositoryNotFoundError", "HFValidationError", "GatedRepoError", "LocalEntryNotFoundError"):
                return CLIError(f"--model {args.model!r}: {_one_line(error)}", EXIT_BAD_INPUT)
            return CLIError(f"--model {args.model!r} could not be downloaded: {_one_line(error)}", EXIT_FAILURE)
        if isinstance(error, ConnectionError):  # the Hub could not be reached: not the checkpoint's fault
            return CLIError(f"--model {args.model!r}: {_one_line(error)}", EXIT_FAILURE)
        if isinstance(error, FileNotFoundError) and not os.path.exists(args.model) and args.model != TINY_RANDOM:
            return CLIError(f"--model {args.model!r}: {_one_line(error)}", EXIT_BAD_INPUT)
        if isinstance(error, (ValueError, OSError, KeyError, RuntimeError, TypeError)):
            return CLIError(
                f"--model {args.model!r} could not be loaded (broken or incomplete checkpoint?): {_one_line(error)}",
                EXIT_FAILURE,
            )
    if stage == "lora" and isinstance(error, (ValueError, OSError, KeyError, RuntimeError)):
        return CLIError(f"--lora could not be loaded: {_all_lines(error)}", EXIT_BAD_INPUT)
    if isinstance(error, MemoryError) or "OutOfMemoryError" in name:
        return CLIError(
            f"out of memory while {_Stage.WORDS.get(stage, stage)} ({_one_line(error)}): try --offload model, --vae-tiling, --fp8 lite, "
            "fewer --num-frames or a smaller size",
            EXIT_FAILURE,
        )
    if stage == "generate" and isinstance(error, (ValueError, TypeError)):
        return CLIError(_one_line(error), EXIT_BAD_INPUT)
    if stage == "write" and isinstance(error, OSError):
        return CLIError(f"--output {args.output!r} could not be written: {_one_line(error)}", EXIT_FAILURE)
    return CLIError(f"{stage} failed: {name}: {_one_line(error)} (--verbose shows the traceback)", EXIT_FAILURE)


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


class _Stage:
    """What the run is doing, for error messages."""

    name = "load"
    WORDS = {
        "check": "checking the arguments",
        "load": "loading",
        "lora": "loading a LoRA",
        "read": "reading --extend",
        "generate": "generating",
        "write": "writing",
    }

    @property
    def doing(self) -> str:
        return self.WORDS.get(self.name, self.name)


def _load(args: argparse.Namespace, dtype, progress: Progress):
    import torch

    from .tiny import build_tiny_random_pipeline

    if args.model == TINY_RANDOM:
        with progress.phase("building the tiny random model"):
            pipe = build_tiny_random_pipeline()
            if dtype != pipe.transformer.dtype:  # a no-op cast would still make diffusers warn
                pipe.transformer.to(dtype)
                pipe.image_encoder.to(dtype)
            if args.vae_dtype != "float32":
                pipe.vae.to(getattr(torch, args.vae_dtype))
        return pipe

    from .pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline

    source = args.model
    if not os.path.isdir(source):
        source = cached_snapshot(args.model) or args.model  # a cached hub snapshot loads without the network
    if os.path.isdir(source):
        sizes = component_sizes(source)
        listed = ", ".join(f"{name} {_format_size(size)}" for name, size in sizes)
        progress.say(f"loading {args.model} ({_format_size(sum(s for _, s in sizes))}): {listed}")
    else:
        progress.say(f"downloading {args.model} from the Hugging Face Hub (once; then it is cached)")
    with progress.phase("loading"):
        return RuyiImageToVideoPipeline.from_pretrained(
            source, dtype={"default": dtype, "vae": getattr(torch, args.vae_dtype)}
        )


def merge_loras(pipe, paths: List[str], weights: List[float]) -> None:
    """Merges each LoRA file into ``pipe``'s weights in turn, as the original's ``merge_lora`` (``--lora``)."""
    for index, (path, weight) in enumerate(zip(paths, weights)):
        # In bfloat16 the same bits as the original. The adapter layers are dropped each time: the steps run on plain
        # weights, and the next LoRA does not load into merged layers (PEFT would unmerge them first, which does not
        # give the weights back exactly).
        try:
            pipe.load_lora_weights(path, adapter_name=f"lora_{index}")
        except (ValueError, OSError, KeyError, RuntimeError) as error:
            if "OutOfMemoryError" in type(error).__name__:  # not the file's fault: explain() says what to try
                raise
            raise CLIError(f"--lora {path!r} could not be loaded: {_all_lines(error)}", EXIT_BAD_INPUT) from error
        pipe.fuse_lora(lora_scale=weight)
        pipe.unload_lora_weights()


def _configure(pipe, args: argparse.Namespace, device, dtype, stage: _Stage) -> None:
    import diffusers

    if args.scheduler != "ddim":
        pipe.scheduler = getattr(diffusers, SCHEDULERS[args.scheduler]).from_config(pipe.scheduler.config)
    stage.name = "lora"
    merge_loras(pipe, args.lora, args.lora_weight or [1.0] * len(args.lora))
    stage.name = "load"
    if args.cache == "first-block":
        from diffusers import FirstBlockCacheConfig

        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=args.cache_threshold))
    elif args.cache == "teacache":
        from .hooks import RuyiTeaCacheConfig

        skip = {"skip_start_steps": args.cache_skip_start, "skip_end_steps": args.cache_skip_end}
        pipe.transformer.enable_cache(
            RuyiTeaCacheConfig(
                threshold=args.cache_threshold,
                offload_to_cpu=not args.cache_on_device,
                **{name: value for name, value in skip.items() if value is not None},
            )
        )
    if args.enhance_a_video is not None:
        from .hooks import RuyiEnhanceAVideoConfig, apply_ruyi_enhance_a_video

        apply_ruyi_enhance_a_video(
            pipe.transformer,
            RuyiEnhanceAVideoConfig(
                weight=args.enhance_a_video,
                skip_start_steps=args.enhance_skip_start or 0,
                skip_end_steps=args.enhance_skip_end or 0,
            ),
        )
    if args.fp8 != "none":
        import torch

        from .hooks import apply_fp8_mode

        fp8_dtype = torch.float8_e5m2 if args.fp8_dtype == "e5m2" else torch.float8_e4m3fn
        apply_fp8_mode(pipe.transformer, args.fp8, fp8_dtype=fp8_dtype, compute_dtype=dtype)
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    if args.skip_offload:
        from .hooks import RuyiSkipOffloadConfig, apply_ruyi_skip_offload

        apply_ruyi_skip_offload(pipe.transformer, RuyiSkipOffloadConfig(group_size=args.skip_offload))
    if args.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif args.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif args.offload == "group":
        import torch

        # Only the transformer (93 % of the weights) is offloaded; the VAE and the image encoder stay on the GPU.
        others = [
            name for name, c in pipe.components.items() if isinstance(c, torch.nn.Module) and name != "transformer"
        ]
        pipe.enable_group_offload(
            onload_device=device,
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
            exclude_modules=others,
        )
    else:
        pipe.to(device)


def _generator(args: argparse.Namespace, device):
    import torch

    return torch.Generator("cpu" if args.generator_device == "cpu" else device).manual_seed(args.seed)


def write_video_atomically(frames, path: str, fps: float, crf: int = DEFAULT_CRF) -> None:
    """Writes ``frames`` to a temporary file next to ``path`` and renames it; nothing is left on failure."""
    with open_video_atomically(path, fps, crf=crf) as append:
        append(frames)


# Optional back-ends that diffusers imports whenever they are installed (torchao) log at import what they cannot do on
# this machine (a kernel built for another GPU, a deprecated torch API): noise in a one-line-per-phase CLI, and not
# about this run. --verbose shows them.
_IMPORT_NOTICE_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


@contextlib.contextmanager
def _import_notices_hidden(verbose: bool) -> Iterator[None]:
    import logging

    loggers = [] if verbose else [logging.getLogger(name) for name in _IMPORT_NOTICE_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _run(args: argparse.Namespace, progress: Progress, stage: _Stage) -> None:
    stage.name = "load"
    with progress.phase("importing torch, diffusers and transformers"), _import_notices_hidden(args.verbose):
        check_args_with_torch(args)
        import torch

        from ._images import open_image

        _configure_messages(args, progress)
        import diffusers_ruyi.pipelines.pipeline_ruyi_i2v  # noqa: F401  (diffusers' models and back-ends: the slow part)

        check_steps(args)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    pipe = _load(args, dtype, progress)
    _configure(pipe, args, device, dtype, stage)
    if args.quiet:
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe.set_progress_bar_config(desc="denoising")
        # The pipeline's own steps between which no progress bar runs.
        progress.wrap(pipe, "encode_image", "CLIP image features")
        progress.wrap(pipe, "prepare_mask_latents", "VAE encode (conditioning frames)")
        progress.wrap(pipe, "decode_latents", "VAE decode")

    if args.extend is not None or len(args.plan) > 1:
        _run_segments(args, pipe, device, progress, stage)
        return

    stage.name = "generate"
    image = open_image(args.image, "--image")
    last_image = open_image(args.last_image, "--last-image") if args.last_image else None
    frames = pipe(
        image=image,
        last_image=last_image,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        base_resolution=args.base_resolution,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        motion=args.motion[0],
        camera_direction=args.camera[0],
        generator=_generator(args, device),
        output_type="np",
    ).frames[0]
    check_finite_frames(frames, "the generated frames")
    _say_teacache_skips(pipe, args, progress)
    fps = args.fps or 24

    stage.name = "write"
    with progress.phase(f"writing {args.output}"):
        check_output_path("--output", args.output, args.overwrite)  # nothing appeared there meanwhile
        write_video_atomically(frames, args.output, fps, crf=args.crf)
    progress.say(
        f"wrote {args.output} ({len(frames)} frames, {frames.shape[2]}x{frames.shape[1]}, {fps} fps) in "
        f"{progress.elapsed():.1f} s total, {peak_memory(device)}"
    )


def check_finite_frames(frames, what: str) -> None:
    """Refuses to write frames holding NaN or infinite values: they would become a black or noisy video, exit 0."""
    import numpy as np

    if not np.isfinite(frames).all():
        raise CLIError(
            f"{what} hold NaN or infinite values (a --lora-weight or --enhance-a-video weight too large?); nothing "
            "was written",
            EXIT_FAILURE,
        )


def _say_teacache_skips(pipe, args: argparse.Namespace, progress: Progress, prefix: str = "") -> None:
    """The original's "TeaCache cached steps" line: which steps of the last call reused the cache."""
    if args.cache != "teacache":
        return
    from .hooks import get_ruyi_teacache_skipped_steps
    from .hooks.teacache import ruyi_teacache_call_count

    skipped = get_ruyi_teacache_skipped_steps(pipe.transformer)
    calls = ruyi_teacache_call_count(pipe.transformer)
    # PNDM calls the transformer more often than once a step: the skips are calls then.
    total = f"{args.steps} steps" if calls == args.steps else f"{calls} transformer calls ({args.steps} steps)"
    progress.say(f"{prefix}TeaCache skipped {len(skipped)} of {total} {skipped}")


@contextlib.contextmanager
def open_video_atomically(
    path: str, fps: float, before_replace: Optional[Callable[[], None]] = None, crf: int = DEFAULT_CRF
):
    """Yields ``append(frames)`` writing frames (uint8, or float in [0, 1]) to a temporary mp4 (H.264 at x264's
    ``crf``) next to ``path`` as they come; renamed to ``path`` when the block ends without error, removed
    otherwise."""
    import imageio
    import numpy as np

    out_dir = os.path.dirname(os.path.abspath(path))
    # The folders this creates, innermost first: a failed run removes them again ("no output was written").
    created = []
    folder = out_dir
    while not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".ruyi-", suffix=".mp4", dir=out_dir)
    os.close(fd)
    done = False
    try:
        # `export_to_video`'s writer, except two settings. The quality: its `quality` can only express CRF 0-45 in
        # uneven steps (and its default 5 is CRF 25, below predict_i2v.py's x264 default 23), so the CRF is given to
        # ffmpeg directly. The macro block: imageio resizes frames to a multiple of it, and a continued video keeps
        # its own size (even, as H.264 needs); generated sizes are multiples of 16 anyway.
        writer = imageio.get_writer(
            tmp_path, fps=fps, quality=None, macro_block_size=2, output_params=["-crf", str(crf)]
        )
        try:

            def append(frames) -> None:
                for frame in frames:
                    writer.append_data(frame if frame.dtype == np.uint8 else (frame * 255).astype(np.uint8))

            yield append
        finally:
            writer.close()
        if before_replace is not None:
            before_replace()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
        done = True
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        if not done:
            for folder in created:
                with contextlib.suppress(OSError):  # not empty any more: someone else wrote there meanwhile
                    os.rmdir(folder)


def _run_segments(args: argparse.Namespace, pipe, device, progress: Progress, stage: _Stage) -> None:
    """A long video or a continuation: each segment's frames go to the mp4 as soon as they exist, so memory is
    that of one segment whatever the length."""
    import collections

    import imageio

    from ._images import open_image
    from .long_video import iter_video_segments, resize_frames
    from .pipelines.controls import get_bucket_size

    plan = args.plan
    image = context = None
    last_image = open_image(args.last_image, "--last-image") if args.last_image else None
    if args.extend is not None:
        info = args.extend_info
        out_size = (info["height"], info["width"])
        if args.height is not None:
            size = (args.height, args.width)
        elif info["height"] % 16 == 0 and info["width"] % 16 == 0:
            size = out_size
        else:
            size = get_bucket_size(info["height"], info["width"], args.base_resolution)
        fps = args.fps or info["fps"]  # check_args made sure one of them is known
        context = collections.deque(maxlen=max(p.context_frames for p in plan))
    else:
        image = open_image(args.image, "--image")
        size = (
            (args.height, args.width)
            if args.height
            else get_bucket_size(image.height, image.width, args.base_resolution)
        )
        out_size = size
        fps = args.fps or 24
    if size != out_size:
        progress.say(
            f"generating at {size[1]}x{size[0]}; new frames are resized to the video's {out_size[1]}x{out_size[0]}"
        )
    new_total = sum(p.new_frames for p in plan)
    written = 0

    def still_writable() -> None:
        check_output_path("--output", args.output, args.overwrite)  # nothing appeared there meanwhile

    stage.name = "write"
    with open_video_atomically(args.output, fps, before_replace=still_writable, crf=args.crf) as append:
        if args.extend is not None:
            stage.name = "read"
            with progress.phase(f"copying the {args.extend_info['frames']} frames of {args.extend}"):
                reader = imageio.get_reader(args.extend)
                try:
                    for frame in reader.iter_data():
                        append([frame])
                        context.append(frame)
                        written += 1
                finally:
                    reader.close()
        total = written + new_total  # the output's frames: those copied and the new ones
        segments = iter_video_segments(
            pipe,
            plan,
            size[0],
            size[1],
            image=image,
            context=context,
            last_image=last_image,
            motion=args.motion,
            camera_direction=args.camera,
            generator=_generator(args, device),
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
        )
        for segment in plan:
            motion = args.motion[segment.index if len(args.motion) > 1 else 0]
            camera = args.camera[segment.index if len(args.camera) > 1 else 0]
            source = f"continuing {segment.context_frames} frames" if segment.context_frames else "from --image"
            progress.say(
                f"segment {segment.index + 1}/{len(plan)}: {segment.num_frames} frames {source}, "
                f"{segment.new_frames} new (camera {camera}, motion {motion})"
            )
            stage.name = "generate"
            start = time.perf_counter()
            _, new = next(segments)
            check_finite_frames(new, f"the generated frames of segment {segment.index + 1}")
            _say_teacache_skips(pipe, args, progress, prefix=f"segment {segment.index + 1}/{len(plan)}: ")
            stage.name = "write"
            if size != out_size:
                new = resize_frames(new, *out_size)
            append(new)
            written += len(new)
            progress.say(
                f"segment {segment.index + 1}/{len(plan)} done in {time.perf_counter() - start:.1f} s "
                f"({written} of {total} frames written)"
            )
    progress.say(
        f"wrote {args.output} ({written} frames, {out_size[1]}x{out_size[0]}, {fps:g} fps) in "
        f"{progress.elapsed():.1f} s total, {peak_memory(device)}"
    )


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the temporary video is removed on the way out."""


def _raise_terminated(signum, frame) -> NoReturn:
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs ``ruyi-i2v``; returns the exit code (argument errors exit with 2 through ``SystemExit``)."""
    progress = Progress(quiet=True)
    parser = build_parser()
    args = parser.parse_args(argv)
    progress.quiet = args.quiet
    stage = _Stage()
    stage.name = "check"
    with _sigterm_raises():
        return _main(args, parser, progress, stage)


@contextlib.contextmanager
def _quiet_teardown(verbose: bool) -> Iterator[None]:
    """Silences errors in ``__del__`` of objects that a signal cut off half-built, while they are freed.

    Ctrl-C inside ``tqdm.__init__`` (diffusers' progress bar) leaves a bar without ``pos``; its ``__del__`` then fails
    when the interrupt's traceback is dropped, and Python prints that as a traceback after the one-line message.
    ``--verbose`` keeps them.
    """
    import gc

    previous = sys.unraisablehook
    if not verbose:
        sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()  # free the cut-off objects that sit in reference cycles too, while the hook is quiet
        sys.unraisablehook = previous


def _main(args: argparse.Namespace, parser: argparse.ArgumentParser, progress: Progress, stage: _Stage) -> int:
    # Left once the interrupt's traceback is dropped, so that what it frees is freed under `_quiet_teardown`.
    with contextlib.ExitStack() as teardown:
        try:
            try:
                check_args(args)
            except CLIError as e:
                parser.error(str(e))
            _run(args, progress, stage)
        except KeyboardInterrupt:
            teardown.enter_context(_quiet_teardown(args.verbose))
            if args.verbose:
                traceback.print_exc()
            print(f"{PROG}: interrupted while {stage.doing}; no output was written", file=sys.stderr)
            return EXIT_INTERRUPTED
        except _Terminated:
            teardown.enter_context(_quiet_teardown(args.verbose))
            print(f"{PROG}: terminated (SIGTERM) while {stage.doing}; no output was written", file=sys.stderr)
            return EXIT_TERMINATED
        except Exception as e:
            if args.verbose:
                traceback.print_exc()
            failure = explain(e, stage.name, args)
            print(f"{PROG}: error: {failure}", file=sys.stderr)
            return failure.code
        finally:
            progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
