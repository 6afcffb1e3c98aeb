#!/usr/bin/env python
"""LoRA fine-tuning of the Ruyi-Mini-7B transformer (image-to-video) with accelerate + PEFT.

The objective is the one Ruyi's image-to-video model was trained with: the first frame of each clip is kept as known
content of a masked video (mask latents + masked-video latents go to the transformer as `inpaint_latents`, built by
the pipeline's own helpers), CLIP features of that frame go to the per-block image cross-attention, noise is added at
a uniformly sampled DDPM timestep and the transformer learns the v-prediction target (`scheduler.get_velocity`).

Single process:

    python examples/train_ruyi_lora.py --pretrained_model_name_or_path IamCreateAI/Ruyi-Mini-7B \
        --data_dir my_videos --output_dir ruyi-lora --num_frames 24 --height 512 --width 512 \
        --gradient_checkpointing --mixed_precision bf16

Several GPUs (DDP): `accelerate launch --num_processes 8 examples/train_ruyi_lora.py ...`. See docs/lora.md for the
dataset layout, FSDP/DeepSpeed configurations and memory tips.
"""

import argparse
import difflib
import functools
import json
import logging
import math
import os
import random
import re
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import SchedulerType, get_scheduler
from diffusers.training_utils import cast_training_params
from diffusers.utils import export_to_video
from peft import LoraConfig, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from tqdm.auto import tqdm

from diffusers_ruyi._images import open_image
from diffusers_ruyi.cli import MAX_FRAME_SIZE, CLIError, check_image, check_model, output_folder_problem
from diffusers_ruyi.pipelines.controls import CAMERA_DIRECTIONS, MOTION_VALUES
from diffusers_ruyi.pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline
from diffusers_ruyi.tiny import build_tiny_random_pipeline


logger = get_logger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_TARGET_MODULES = "to_q,to_k,to_v,to_out.0"
DEFAULT_MAX_TRAIN_STEPS = 1000
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
# `--save_original_format`'s file, beside LORA_WEIGHTS (which loading the folder keeps picking).
ORIGINAL_FORMAT_LORA = "ruyi_lora_original_format.safetensors"
# A `--target_modules` entry that names a block: `blocks.7.attn1.to_q`.
BLOCK_PREFIX = re.compile(r"^blocks\.(\d+)\.")
# Each checkpoint's copy of the run's arguments, read when a run resumes from it.
TRAINING_ARGS = "training_args.json"
# What a checkpoint fixes: its LoRA's shape and scale, its optimizer's hyperparameters (restored with the optimizer
# state, so new values would be ignored without a word) and the seed its data order and generators were drawn from.
RESUME_FIXED_FLAGS = (
    "rank", "lora_alpha", "target_modules", "learning_rate", "adam_beta1", "adam_beta2", "adam_weight_decay",
    "adam_epsilon", "seed",
)  # fmt: skip
# The keys of a `metadata.jsonl` entry.
METADATA_KEYS = ("file_name", "motion", "camera_direction")


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses the command line (or `argv`)."""
    parser = argparse.ArgumentParser(description="LoRA fine-tuning of Ruyi-Mini-7B (image-to-video).")
    # Model and data.
    parser.add_argument(
        "--pretrained_model_name_or_path",
        required=True,
        help="Hub id, folder (original or diffusers layout), or 'tiny-random' (a tiny random model built locally).",
    )
    parser.add_argument("--data_dir", required=True, help="Folder of videos; see docs/lora.md for the layout.")
    parser.add_argument(
        "--output_dir", default="ruyi-lora", help="Where checkpoints, validation videos and the LoRA go."
    )
    parser.add_argument("--num_frames", type=int, default=24, help="Frames per training clip (1 or a multiple of 8).")
    parser.add_argument("--height", type=int, default=512, help="Training height in pixels (multiple of 16).")
    parser.add_argument("--width", type=int, default=512, help="Training width in pixels (multiple of 16).")
    parser.add_argument("--frame_stride", type=int, default=1, help="Take every n-th frame of the source video.")
    parser.add_argument("--motion", default="auto", help="Default motion control (1-4 or auto) when a clip has none.")
    parser.add_argument("--camera_direction", default="auto", help="Default camera control when a clip has none.")
    parser.add_argument(
        "--uncond_prob",
        type=float,
        default=0.1,
        help="Probability of training a sample with the negative controls and no CLIP features (keeps CFG working).",
    )
    parser.add_argument(
        "--last_frame_prob", type=float, default=0.0, help="Probability of also keeping the last frame."
    )
    # LoRA.
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank.")
    parser.add_argument(
        "--lora_alpha", type=float, default=64, help="LoRA alpha (the update is scaled by alpha/rank)."
    )
    parser.add_argument(
        "--target_modules",
        default=DEFAULT_TARGET_MODULES,
        help="Comma-separated module names to adapt (suffixes such as to_q, ff.net.2, proj_out), or 'all-linear'.",
    )
    parser.add_argument(
        "--save_original_format",
        action="store_true",
        help=f"Also write the final LoRA in the original Ruyi format, as {ORIGINAL_FORMAT_LORA} in --output_dir, for "
        "the original predict_i2v.py (lora_path) and its ComfyUI nodes (Load LoRA).",
    )
    # Optimisation.
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help=f"Optimizer steps; overrides --num_train_epochs (default: {DEFAULT_MAX_TRAIN_STEPS} without either).",
    )
    parser.add_argument(
        "--num_train_epochs", type=int, default=None, help="Passes over the data, when --max_train_steps is not given."
    )
    parser.add_argument("--train_batch_size", type=int, default=1)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument(
        "--lr_scheduler", default="constant", help="constant, linear, cosine, constant_with_warmup, ..."
    )
    parser.add_argument(
        "--lr_warmup_steps", type=int, default=0, help="Warmup steps; not with 'constant' (use constant_with_warmup)."
    )
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute block activations (saves memory)."
    )
    parser.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="Defaults to the accelerate config. The frozen transformer and CLIP are stored in this dtype; the VAE stays fp32.",
    )
    parser.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--ddp_find_unused_parameters", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    # Checkpoints and validation.
    parser.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N steps."
    )
    parser.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints."
    )
    parser.add_argument(
        "--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest' (in --output_dir)."
    )
    parser.add_argument(
        "--validation_steps", type=int, default=None, help="Generate a validation video every N steps."
    )
    parser.add_argument(
        "--validation_image",
        default=None,
        help="Start frame for validation with --validation_steps (default: a training clip's).",
    )
    parser.add_argument("--validation_num_inference_steps", type=int, default=25)
    parser.add_argument("--validation_guidance_scale", type=float, default=7.0)
    parser.add_argument("--validation_fps", type=int, default=24)
    parser.add_argument("--report_to", default=None, help="An accelerate tracker (tensorboard, wandb, ...), or none.")
    args = parser.parse_args(argv)
    if args.report_to == "none":
        args.report_to = None

    if args.num_frames < 1 or (args.num_frames != 1 and args.num_frames % 8 != 0):
        parser.error(f"--num_frames must be 1 or a multiple of 8, got {args.num_frames}.")
    for name in ("height", "width"):
        if getattr(args, name) <= 0 or getattr(args, name) % 16 != 0 or getattr(args, name) > MAX_FRAME_SIZE:
            parser.error(f"--{name} must be a positive multiple of 16 of at most {MAX_FRAME_SIZE}.")
    if not args.output_dir:
        parser.error("--output_dir must name a folder, got ''.")
    if args.rank < 1:
        parser.error("--rank must be positive.")
    if not os.path.isdir(args.data_dir):
        parser.error(f"--data_dir {args.data_dir!r} is not a folder.")
    resume = args.resume_from_checkpoint
    if resume not in (None, "latest") and not os.path.isdir(resume):
        # As diffusers' training scripts: a checkpoint's name is looked up in --output_dir.
        in_output_dir = os.path.join(args.output_dir, resume)
        if os.path.isdir(in_output_dir):
            args.resume_from_checkpoint = in_output_dir
    problem = _argument_problem(args)
    if problem:
        parser.error(problem)
    return args


def _argument_problem(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the numbers, choices and paths, before any model is loaded (None when nothing is)."""
    counts = {  # flag: the smallest value it takes
        "frame_stride": 1, "max_train_steps": 1, "num_train_epochs": 1, "train_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "lr_warmup_steps": 0, "dataloader_num_workers": 0, "checkpointing_steps": 1, "checkpoints_total_limit": 1,
        "validation_steps": 1, "validation_num_inference_steps": 1, "validation_fps": 1,
    }  # fmt: skip
    for name, least in counts.items():
        value = getattr(args, name)
        if value is not None and value < least:
            return f"--{name} must be an integer >= {least}, got {value}."
    ranges = {  # flag: (low, high, whether low itself is allowed)
        "uncond_prob": (0, 1, True), "last_frame_prob": (0, 1, True), "lora_alpha": (0, math.inf, False),
        "learning_rate": (0, math.inf, False), "adam_beta1": (0, 1, True), "adam_beta2": (0, 1, True),
        "adam_weight_decay": (0, math.inf, True), "adam_epsilon": (0, math.inf, False),
        "max_grad_norm": (0, math.inf, False), "validation_guidance_scale": (0, math.inf, True),
    }  # fmt: skip
    for name, (low, high, low_ok) in ranges.items():
        value = getattr(args, name)
        if not (math.isfinite(value) and (low <= value if low_ok else low < value) and value <= high):
            bounds = f"in [{low}, {high}]" if math.isfinite(high) else f"{'>=' if low_ok else '>'} {low}"
            return f"--{name} must be a finite number {bounds}, got {value}."
    if args.adam_beta1 == 1 or args.adam_beta2 == 1:
        return "--adam_beta1 and --adam_beta2 must be below 1."
    if str(args.motion) not in MOTION_VALUES:
        return f"--motion must be one of {', '.join(MOTION_VALUES)}, got {args.motion!r}."
    if args.camera_direction not in CAMERA_DIRECTIONS:
        return f"--camera_direction must be one of {', '.join(CAMERA_DIRECTIONS)}, got {args.camera_direction!r}."
    # (piecewise_constant needs step rules, which no flag sets.)
    schedulers = [t.value for t in SchedulerType if t != SchedulerType.PIECEWISE_CONSTANT]
    if args.lr_scheduler not in schedulers:
        return f"--lr_scheduler must be one of {', '.join(schedulers)}, got {args.lr_scheduler!r}."
    if args.lr_warmup_steps and args.lr_scheduler == SchedulerType.CONSTANT.value:
        # diffusers' "constant" schedule takes no warmup: the steps would be ignored without a word.
        return (
            "--lr_warmup_steps needs a schedule with warmup: use --lr_scheduler constant_with_warmup (or linear, ...)."
        )
    try:  # the CLI's rule for --model: tiny-random, a local folder, or a hub id (cached when offline)
        check_model(args.pretrained_model_name_or_path)
    except CLIError as e:
        return str(e).replace("--model", "--pretrained_model_name_or_path")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        return f"--output_dir {args.output_dir!r} is a file, not a folder."
    problem = output_folder_problem(args.output_dir)
    if problem:
        return f"--output_dir {args.output_dir!r} {problem}."
    config = _checkpoint_config(args.pretrained_model_name_or_path, "transformer")
    width = config.get("num_attention_heads", 0) * config.get("attention_head_dim", 0)
    if width and args.rank > width:
        # A rank above the layers' width adds nothing but memory (10**9 ran out of it while adding the adapters).
        return f"--rank must be at most the transformer's width {width}, got {args.rank}."
    train_steps = _checkpoint_config(args.pretrained_model_name_or_path, "scheduler").get("num_train_timesteps", 1000)
    if args.validation_num_inference_steps > train_steps:
        return (
            f"--validation_num_inference_steps must be at most the scheduler's num_train_timesteps ({train_steps}), "
            f"got {args.validation_num_inference_steps}."
        )
    if args.validation_image is not None and not os.path.isfile(args.validation_image):
        return f"--validation_image {args.validation_image!r} does not exist."
    if args.seed is not None and not 0 <= args.seed < 2**32:
        return f"--seed must be in [0, 2**32 - 1], got {args.seed}."
    if args.validation_image is not None:
        try:  # the CLI's check: decoded whole, and of a mode the pipeline reads
            check_image("--validation_image", args.validation_image)
        except CLIError as e:
            return str(e)
    if args.validation_image is not None and args.validation_steps is None:
        return "--validation_image is used only with --validation_steps N (validation is off without it)."
    if args.report_to is not None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

        trackers = ["all", *LOGGER_TYPE_TO_CLASS]
        if args.report_to not in trackers:
            return f"--report_to must be one of {', '.join(trackers)} or none, got {args.report_to!r}."
        installed = [str(tracker) for tracker in get_available_trackers()]
        if args.report_to != "all" and args.report_to not in installed:
            # accelerate would only log a warning, and the run would record nothing.
            return (
                f"--report_to {args.report_to} needs its package installed (pip install {args.report_to}); "
                f"installed here: {', '.join(installed) or 'none'}."
            )
    resume = args.resume_from_checkpoint
    if resume not in (None, "latest") and not os.path.isdir(resume):
        return f"--resume_from_checkpoint {resume!r} is not a checkpoint folder (or 'latest')."
    checkpoint = _resume_checkpoint(args)  # `latest` resolved: its newest checkpoint is checked as a named one
    if checkpoint is not None:
        step = os.path.basename(os.path.normpath(checkpoint)).removeprefix("checkpoint-")
        if not step.isdigit() or not os.path.isfile(os.path.join(checkpoint, LORA_WEIGHTS)):
            return (
                f"--resume_from_checkpoint {checkpoint!r} is not a checkpoint of this script (a checkpoint-<step> "
                f"folder holding {LORA_WEIGHTS})."
            )
    found = _checkpoints(args.output_dir)
    own = checkpoint is not None and os.path.realpath(os.path.dirname(os.path.normpath(checkpoint))) == (
        os.path.realpath(args.output_dir)
    )
    if found and not own:
        # They would be overwritten step by step, and `latest` would then mix the two runs.
        return (
            f"--output_dir {args.output_dir!r} holds another run's checkpoints ({', '.join(found)}): go on from them "
            "with --resume_from_checkpoint latest, or choose another --output_dir."
        )
    if checkpoint is not None:
        problem = _resume_problem(args, checkpoint) or _resume_model_problem(args, checkpoint)
        if problem:
            return problem
    try:  # the module names do not depend on the model's sizes: the tiny architecture answers for the real one
        resolve_target_modules(_tiny_transformer_on_meta(), _any_block(args.target_modules))
    except ValueError as e:
        return str(e)
    num_layers = _checkpoint_num_layers(args.pretrained_model_name_or_path)
    beyond = [t for t in args.target_modules.split(",") if num_layers is not None and _block_index(t) >= num_layers]
    if beyond:
        return f"--target_modules {beyond} name blocks the transformer does not have (blocks 0-{num_layers - 1})."
    try:  # the clips, their metadata and paired images, checked (not decoded) now rather than after loading the model
        dataset = VideoFolderDataset(
            args.data_dir, args.num_frames, args.height, args.width, args.frame_stride, _validation_dir(args)
        )
    except ValueError as e:
        return f"--data_dir: {e}"
    if args.train_batch_size > len(dataset):
        # The loader would make smaller batches than asked for without a word.
        return f"--train_batch_size {args.train_batch_size} is more than the {len(dataset)} clip(s) in --data_dir."
    return None


def _resume_checkpoint(args: argparse.Namespace) -> Optional[str]:
    """The checkpoint folder the run resumes from: `--resume_from_checkpoint`, or for `latest` the newest
    `checkpoint-<step>` in `--output_dir` (None when there is none: the run starts anew)."""
    if args.resume_from_checkpoint != "latest":
        return args.resume_from_checkpoint
    found = _checkpoints(args.output_dir)
    return os.path.join(args.output_dir, found[-1]) if found else None


def _resume_problem(args: argparse.Namespace, checkpoint: str) -> Optional[str]:
    """The flags in `RESUME_FIXED_FLAGS` this run sets otherwise than the run that wrote `checkpoint` (None when
    they agree, or for a checkpoint without its run's arguments)."""
    path = os.path.join(checkpoint, TRAINING_ARGS)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        return f"--resume_from_checkpoint: {path} cannot be read ({e})."
    if not isinstance(saved, dict):
        return f"--resume_from_checkpoint: {path} is not a checkpoint's record of its arguments."

    def comparable(name, value):  # the same modules in another order (or spacing) are the same LoRA
        if name == "target_modules" and value is not None:
            return sorted({module.strip() for module in str(value).split(",") if module.strip()})
        return value

    def flags(values):
        return " ".join(f"--{n} {values[n]}" if values[n] is not None else f"no --{n}" for n in changed)

    changed = [n for n in RESUME_FIXED_FLAGS if n in saved and comparable(n, saved[n]) != comparable(n, vars(args)[n])]
    if not changed:
        return None
    then, now = flags(saved), flags(vars(args))
    return (
        f"--resume_from_checkpoint {checkpoint!r} was trained with {then}; this run has {now}. Resume with the "
        "checkpoint's values (its LoRA and optimizer state hold them), or start a new run in another --output_dir."
    )


def _resume_model_problem(args: argparse.Namespace, checkpoint: str) -> Optional[str]:
    """Whether the checkpoint's LoRA fits this run's transformer, from the LoRA file's header and the model's local
    config, before any model loads (accelerate would stop at the first tensor that does not fit, after loading the
    model). None when it fits, or when the config is not on this machine (a Hub id)."""
    from safetensors import safe_open

    from diffusers_ruyi import RuyiTransformer3DModel
    from diffusers_ruyi.loaders.original_checkpoint import original_model_config

    config = _checkpoint_config(args.pretrained_model_name_or_path, "transformer")
    if not config:
        return None
    try:
        with torch.device("meta"):
            model = RuyiTransformer3DModel.from_config(original_model_config("transformer", config) or config)
    except (TypeError, ValueError):  # a malformed config: loading the model says what is wrong with it
        return None
    shapes = {
        f"transformer.{n}": tuple(m.weight.shape) for n, m in model.named_modules() if type(m) is torch.nn.Linear
    }
    misfits = {}  # layer -> why
    with safe_open(os.path.join(checkpoint, LORA_WEIGHTS), "pt") as f:
        for key in sorted(f.keys()):
            module, _, kind = key.rpartition(".lora_")
            shape = f.get_slice(key).get_shape()
            axis = {"A.weight": 1, "B.weight": 0}.get(kind)  # lora_A is (rank, in), lora_B (out, rank)
            if module not in shapes:
                misfits.setdefault(module, "no such layer")
            elif axis is not None and shape[axis] != shapes[module][axis]:
                misfits.setdefault(module, f"lora_{kind[0]} {list(shape)} for a {list(shapes[module])} layer")
    if not misfits:
        return None
    shown = "; ".join(f"{module}: {why}" for module, why in list(misfits.items())[:3])
    return (
        f"--resume_from_checkpoint {checkpoint!r} holds a LoRA of another transformer than "
        f"--pretrained_model_name_or_path {args.pretrained_model_name_or_path!r}: {len(misfits)} of its layers do "
        f"not fit it ({shown}). Resume with the model it was trained on, or start a new run in another --output_dir."
    )


def _validation_dir(args: argparse.Namespace) -> str:
    """Where the validation videos go; left out of the training data when it lies inside `--data_dir` (an
    `--output_dir` inside it, or the same folder)."""
    return os.path.join(args.output_dir, "validation")


def _checkpoint_config(path: str, component: str) -> Dict[str, Any]:
    """A local checkpoint's `transformer` or `scheduler` config (either layout names the keys used here alike); empty
    when it is not on this machine (a Hub id: checked once the model has loaded) or not a JSON object."""
    if path == "tiny-random":
        from diffusers_ruyi.tiny import TINY_TRANSFORMER_CONFIG

        return dict(TINY_TRANSFORMER_CONFIG) if component == "transformer" else {}
    names = ["config.json"] if component == "transformer" else ["scheduler_config.json", "config.json"]
    for name in names:
        config_path = os.path.join(path, component, name)
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
            return config if isinstance(config, dict) else {}
    return {}


def _checkpoint_num_layers(path: str) -> Optional[int]:
    """The transformer's `num_layers` from a local checkpoint's config; None when it is not known here."""
    num_layers = _checkpoint_config(path, "transformer").get("num_layers")
    return num_layers if isinstance(num_layers, int) else None


def _block_index(target: str) -> int:
    """The block number a `--target_modules` entry names (`blocks.7.attn1.to_q` -> 7), or -1."""
    match = BLOCK_PREFIX.match(target.strip())
    return int(match.group(1)) if match else -1


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def _resize_and_center_crop(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.convert("RGB").resize(size, PIL.Image.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


# Cached: the argument check and the training run each make the dataset, and a folder may hold thousands of clips.
@functools.lru_cache(maxsize=None)
def count_video_frames(path: str) -> int:
    """The number of frames of a clip, without decoding it (ffmpeg counts the packets; GIFs are read by Pillow).
    Raises a `ValueError` naming the clip when it cannot be read or has no frame."""
    import imageio.v2 as imageio
    import imageio_ffmpeg

    try:
        if path.lower().endswith(".gif"):
            reader = imageio.get_reader(path)
            try:
                count = reader.get_length()
            finally:
                reader.close()
        else:
            count, _ = imageio_ffmpeg.count_frames_and_secs(path)
    except (OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path!r} is not a readable video: {str(e).strip().splitlines()[-1] if str(e) else e}")
    if not count or count < 1:
        raise ValueError(f"{path!r} has no frames.")
    return count


def read_video_frames(
    path: str, num_frames: int, stride: int, start: Optional[int] = None, total: Optional[int] = None
) -> List[np.ndarray]:
    """Reads `num_frames` frames (every `stride`-th) from a random (or given) start; pads short clips with the last.

    Only the frames up to the end of that window are decoded, and only those kept stay in memory: a long source clip
    costs what its window costs. ``total`` is the clip's frame count (`count_video_frames`; counted when omitted).
    """
    import imageio.v2 as imageio

    span = (num_frames - 1) * stride + 1
    if start is None:
        total = count_video_frames(path) if total is None else total
        start = random.randint(0, max(0, total - span))
    picked = []
    reader = imageio.get_reader(path)
    try:
        for index, frame in enumerate(reader):
            if index >= start + span:
                break
            if index >= start and (index - start) % stride == 0:
                picked.append(np.asarray(frame)[..., :3])
    finally:
        reader.close()
    if not picked:
        raise ValueError(f"{path!r} has no frame from index {start} on.")
    picked += [picked[-1]] * (num_frames - len(picked))
    return picked


class VideoFolderDataset(torch.utils.data.Dataset):
    """Training clips from a folder of videos (searched recursively).

    Every video (`.mp4`, `.webm`, `.mov`, `.mkv`, `.avi`, `.gif`) is one sample, a window of `num_frames` frames from
    a random start. An image with the same stem next to a video (`clip.mp4` + `clip.png`) is used as the kept start
    frame instead of the video's first frame (image/video pairs); such a clip's window starts at its first frame, the
    one the image stands for. An optional `metadata.jsonl` in `data_dir` gives per-clip controls, one JSON object per
    line: `{"file_name": "clip.mp4", "motion": 2, "camera_direction": "left"}`. Every clip's frames are counted (not
    decoded) and every paired image is checked when the dataset is made, so an unreadable one is reported before
    training starts. `exclude` is a folder left out of the search: the training's validation folder, whose videos
    must not become training clips. With a `seed`, a clip's window depends only on the seed, the epoch
    (`set_epoch`) and the clip, so that a resumed run reads the windows the uninterrupted one would have read.
    """

    def __init__(
        self,
        data_dir: str,
        num_frames: int,
        height: int,
        width: int,
        frame_stride: int = 1,
        exclude: Optional[str] = None,
        seed: Optional[int] = None,
    ):
        self.data_dir = data_dir
        self.seed, self.epoch = seed, 0
        self.num_frames, self.height, self.width, self.frame_stride = num_frames, height, width, frame_stride
        excluded = os.path.realpath(exclude) if exclude is not None else None
        self.videos = []
        for root, folders, names in os.walk(data_dir):
            folders[:] = [d for d in folders if os.path.realpath(os.path.join(root, d)) != excluded]
            self.videos += [os.path.join(root, name) for name in names if name.lower().endswith(VIDEO_EXTENSIONS)]
        self.videos.sort()
        if not self.videos:
            raise ValueError(f"No videos ({', '.join(VIDEO_EXTENSIONS)}) found under {data_dir!r}.")
        self.frame_counts = [count_video_frames(path) for path in self.videos]
        self.start_images = self._paired_images(self.videos)
        for path in filter(None, self.start_images):
            try:  # the CLI's check: decoded whole, and of a mode that reads as RGB
                check_image("paired start image", path)
            except CLIError as e:
                raise ValueError(str(e)) from None
        span = (num_frames - 1) * frame_stride + 1
        # Padded with their last frame to the window (a still image for a clip of one frame): `_train` says so.
        self.short_clips = [path for path, count in zip(self.videos, self.frame_counts) if count < span]
        self.controls: Dict[str, Dict[str, Any]] = {}
        self.ignored_keys: List[str] = []  # keys of other tools' metadata (a caption): `_train` says they are unread
        metadata_path = os.path.join(data_dir, "metadata.jsonl")
        if os.path.isfile(metadata_path):
            with open(metadata_path, encoding="utf-8") as f:
                for line_number, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            entry = json.loads(line)
                            name = os.path.normpath(entry.pop("file_name"))
                        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                            raise ValueError(f"{metadata_path}:{line_number} is not a valid entry: {e}") from e
                        for key in entry:
                            if key in METADATA_KEYS or key in self.ignored_keys:
                                continue
                            # A near spelling, or the start, of a key the entry lacks (`camera` for camera_direction).
                            candidates = [k for k in METADATA_KEYS if k not in entry and k != "file_name"]
                            near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
                            near = near or [k for k in candidates if len(key) >= 4 and k.startswith(key.lower())]
                            if near:  # a misspelt control would leave the clip on the default without a word
                                raise ValueError(
                                    f"{metadata_path}:{line_number} has the key {key!r}: did you mean {near[0]!r}? "
                                    f"The keys read are {', '.join(METADATA_KEYS)}."
                                )
                            self.ignored_keys.append(key)
                        if name in self.controls:  # which of the two was meant is anyone's guess
                            raise ValueError(f"{metadata_path}:{line_number} names {name!r} a second time.")
                        self.controls[name] = entry
                        motion, camera = entry.get("motion"), entry.get("camera_direction")  # None: the flags'
                        if (motion is not None and str(motion) not in MOTION_VALUES) or (
                            camera is not None and camera not in CAMERA_DIRECTIONS
                        ):
                            raise ValueError(
                                f"{metadata_path}:{line_number}: motion must be one of {MOTION_VALUES} and "
                                f"camera_direction one of {CAMERA_DIRECTIONS}, got {motion!r} and {camera!r}."
                            )
            # An entry for no clip (a misspelt name) would leave its clip on the default controls without a word.
            clips = {os.path.normpath(os.path.relpath(path, data_dir)) for path in self.videos}
            orphans = sorted(set(self.controls) - clips)
            if orphans:
                raise ValueError(f"{metadata_path} names clips that are not in the folder: {orphans}.")

    def __len__(self) -> int:
        return len(self.videos)

    @staticmethod
    def _paired_images(videos: List[str]) -> List[Optional[str]]:
        """Each video's start image: the file of the same stem with an image extension in any case, as videos are
        found (cameras write `.JPG`); the first of IMAGE_EXTENSIONS when there are several. Each folder is listed
        once (a folder of 50,000 clips and their images must not be listed per clip)."""
        found: Dict[Tuple[str, str], Tuple[int, str]] = {}
        for folder in sorted({os.path.dirname(path) for path in videos}):
            for name in sorted(os.listdir(folder or ".")):
                stem, ext = os.path.splitext(name)
                if ext.lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(folder, name)):
                    candidate = (IMAGE_EXTENSIONS.index(ext.lower()), name)
                    found[(folder, stem)] = min(found.get((folder, stem), candidate), candidate)
        pairs = []
        for path in videos:
            folder, stem = os.path.split(os.path.splitext(path)[0])
            match = found.get((folder, stem))
            pairs.append(os.path.join(folder, match[1]) if match else None)
        return pairs

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loader at the start of every pass."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path = self.videos[index]
        start_image = None
        if self.start_images[index] is not None:  # read as the pipeline reads images (16-bit, EXIF orientation)
            image = open_image(self.start_images[index], "paired start image")
            start_image = _resize_and_center_crop(image, self.width, self.height)
            start = 0  # the paired image is the clip's first frame
        else:
            span = (self.num_frames - 1) * self.frame_stride + 1
            rng = random if self.seed is None else random.Random(f"{self.seed}/{self.epoch}/{index}")
            start = rng.randint(0, max(0, self.frame_counts[index] - span))
        frames = read_video_frames(path, self.num_frames, self.frame_stride, start, self.frame_counts[index])
        frames = [_resize_and_center_crop(PIL.Image.fromarray(f), self.width, self.height) for f in frames]
        video = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(3, 0, 1, 2)  # (3, F, H, W)
        controls = self.controls.get(os.path.normpath(os.path.relpath(path, self.data_dir)), {})
        return {
            "video": video.float() / 127.5 - 1.0,
            "start_image": start_image or frames[0],
            "last_image": frames[-1],
            "motion": controls.get("motion"),
            "camera_direction": controls.get("camera_direction"),
        }


def collate(examples: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "video": torch.stack([e["video"] for e in examples]),
        "start_image": [e["start_image"] for e in examples],
        "last_image": [e["last_image"] for e in examples],
        "motion": [e["motion"] for e in examples],
        "camera_direction": [e["camera_direction"] for e in examples],
    }


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def _tiny_transformer_on_meta() -> torch.nn.Module:
    from diffusers_ruyi import RuyiTransformer3DModel
    from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config
    from diffusers_ruyi.tiny import TINY_TRANSFORMER_CONFIG

    with torch.device("meta"):
        return RuyiTransformer3DModel.from_config(convert_transformer_config(TINY_TRANSFORMER_CONFIG))


def _any_block(spec: str) -> str:
    """`--target_modules` with block numbers that the tiny architecture has (its blocks 0-3 have every module kind)."""
    return ",".join(BLOCK_PREFIX.sub("blocks.3.", t.strip()) for t in spec.split(","))


def resolve_target_modules(transformer: torch.nn.Module, spec: str) -> List[str]:
    """Turns `--target_modules` into PEFT target names, checking that each one matches a module."""
    linear_names = [name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)]
    if spec.strip() == "all-linear":
        return linear_names
    targets = [t.strip() for t in spec.split(",") if t.strip()]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear_names)]
    if unmatched or not targets:
        raise ValueError(f"--target_modules {unmatched or spec!r} match no nn.Linear of the transformer.")
    return targets


def control_embeddings(pipe, batch: Dict[str, Any], args, device, dtype, draws: torch.Generator) -> List[torch.Tensor]:
    """Per-sample positive (or, with probability `uncond_prob`, negative) control embeddings, batched."""
    per_sample, unconditional = [], []
    for motion, camera in zip(batch["motion"], batch["camera_direction"]):
        positive, negative = pipe.control_embeddings.get_controls(
            motion if motion is not None else args.motion,
            camera if camera is not None else args.camera_direction,
            "16:9",
        )
        drop = torch.rand((), generator=draws).item() < args.uncond_prob
        per_sample.append(negative if drop else positive)
        unconditional.append(drop)
    tensors = [torch.cat([sample[i] for sample in per_sample]).to(device) for i in range(4)]
    tensors[0], tensors[2] = tensors[0].to(dtype), tensors[2].to(dtype)
    return tensors + [torch.tensor(unconditional, device=device)]


def compute_loss(
    pipe, transformer, noise_scheduler, batch, args, generator, device, weight_dtype, draws: torch.Generator
) -> torch.Tensor:
    """One image-to-video training loss: v-prediction MSE with the pipeline's inpainting conditioning. `generator`
    (on the training device) draws the tensors, `draws` (on the CPU) the per-sample choices."""
    vae = pipe.vae
    videos = batch["video"].to(device=device, dtype=vae.dtype)
    batch_size = videos.shape[0]
    with torch.no_grad():
        latents = vae.encode(videos).latent_dist.sample(generator=generator) * vae.config.scaling_factor
        last_images = batch["last_image"] if torch.rand((), generator=draws).item() < args.last_frame_prob else None
        cond_video, mask, clip_images = pipe.prepare_conditioning_video(
            batch["start_image"], last_images, args.num_frames, args.height, args.width
        )
        mask_latents, masked_video_latents = pipe.prepare_mask_latents(cond_video, mask, generator, device)
        inpaint_latents = torch.cat([mask_latents, masked_video_latents], dim=1).to(weight_dtype)
        clip_embeds = pipe.encode_image(clip_images, device).to(weight_dtype)
        embeds, embeds_mask, embeds_2, embeds_mask_2, unconditional = control_embeddings(
            pipe, batch, args, device, weight_dtype, draws
        )
        # One entry per resampled CLIP query (n_query), not per CLIP token: the model masks after its resampler.
        clip_mask = torch.ones(batch_size, pipe.transformer.config.n_query, device=device, dtype=weight_dtype)
        keep = (~unconditional).to(weight_dtype)
        clip_embeds, clip_mask = clip_embeds * keep[:, None, None], clip_mask * keep[:, None]
        image_meta_size = torch.tensor(
            [[1024, 1024, args.height, args.width, 0, 0]], device=device, dtype=weight_dtype
        ).repeat(batch_size, 1)
        style = torch.zeros(batch_size, device=device, dtype=torch.long)

    latents = latents.float()
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (batch_size,), device=device, generator=generator
    )
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    target = noise_scheduler.get_velocity(latents, noise, timesteps)

    prediction = transformer(
        noisy_latents.to(weight_dtype),
        timesteps.to(weight_dtype),
        encoder_hidden_states=embeds,
        text_embedding_mask=embeds_mask,
        encoder_hidden_states_t5=embeds_2,
        text_embedding_mask_t5=embeds_mask_2,
        image_meta_size=image_meta_size,
        style=style,
        inpaint_latents=inpaint_latents,
        clip_encoder_hidden_states=clip_embeds,
        clip_attention_mask=clip_mask,
        return_dict=False,
    )[0]
    # The second half of the output channels is the learned variance, which the samplers do not use.
    prediction = prediction[:, : latents.shape[1]]
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


def lora_metadata(transformer) -> Dict[str, Any]:
    """The adapter's `LoraConfig` as a dict, stored in the file so that loading restores `lora_alpha`."""
    return transformer.peft_config["default"].to_dict()


def run_validation(pipe, args, accelerator, step: int, image: PIL.Image.Image) -> str:
    """Generates one video with the current LoRA and writes it to `output_dir/validation/step-<step>.mp4`."""
    transformer = pipe.transformer
    was_training = transformer.training
    transformer.eval()
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed or 0)
    # The VAE and the image encoder run in their own dtypes (the VAE in float32), as at inference; the transformer's
    # forward keeps accelerate's mixed-precision autocast, as in training, which gives the same video as the saved
    # LoRA loaded for inference (PEFT runs the float32 LoRA weights beside the frozen reduced-precision layers).
    frames = pipe(
        image=image,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.validation_num_inference_steps,
        guidance_scale=args.validation_guidance_scale,
        motion=args.motion,
        camera_direction=args.camera_direction,
        generator=generator,
        output_type="np",
    ).frames[0]
    transformer.train(was_training)
    path = os.path.join(_validation_dir(args), f"step-{step}.mp4")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    export_to_video(list(frames), path, fps=args.validation_fps)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_video("validation", torch.from_numpy(frames).permute(0, 3, 1, 2)[None], step)
    logger.info(f"Validation video written to {path}")
    return path


def _generator_states_file(folder: str, process_index: int) -> str:
    return os.path.join(folder, f"generator_states_{process_index}.safetensors")


def save_generator_states(generators: Dict[str, torch.Generator], folder: str, process_index: int) -> None:
    """This process's generators' states, in a file of its own (accelerate's custom-object checkpointing writes the
    main process's only)."""
    from safetensors.torch import save_file

    states = {name: generator.get_state() for name, generator in generators.items()}
    save_file(states, _generator_states_file(folder, process_index))


def load_generator_states(generators: Dict[str, torch.Generator], folder: str, process_index: int) -> None:
    from safetensors.torch import load_file

    path = _generator_states_file(folder, process_index)
    if not os.path.isfile(path):  # a checkpoint of a run with fewer processes
        logger.warning(
            f"{folder} holds no random generator states for process {process_index}: it goes on from its seeded "
            "start, so the resumed run will not repeat the uninterrupted run exactly.",
            main_process_only=False,
        )
        return
    states = load_file(path)
    for name, generator in generators.items():
        generator.set_state(states[name])


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: Optional[int]) -> None:
    """`checkpoint-<step>`, written under a temporary name and renamed once complete, so that a failed save (a full
    disk) leaves no partial checkpoint for `latest` to pick; older ones beyond `total_limit` are removed after."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    partial = final + ".partial"
    if accelerator.is_main_process and os.path.isdir(partial):
        shutil.rmtree(partial)  # left by a save that failed
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(final):  # a rerun past the same step
            shutil.rmtree(final)
        os.replace(partial, final)
        if total_limit is not None:
            # Kept: the one just written and the newest earlier ones. Later ones are another run's, abandoned when
            # this one resumed from an older checkpoint; `latest` would pick them, so they go first.
            steps = {name: int(name.removeprefix("checkpoint-")) for name in _checkpoints(output_dir)}
            earlier = [name for name, other in steps.items() if other < step]
            later = [name for name, other in steps.items() if other > step]
            for old in later + earlier[: max(0, len(earlier) - (total_limit - 1))]:
                shutil.rmtree(os.path.join(output_dir, old))
    accelerator.wait_for_everyone()


def _checkpoints(output_dir: str) -> List[str]:
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    names = [d for d in names if d.startswith("checkpoint-") and d.removeprefix("checkpoint-").isdigit()]
    return sorted(names, key=lambda d: int(d.split("-")[1]))


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Trains a LoRA; returns the folder holding the final `pytorch_lora_weights.safetensors`."""
    # The pipeline's helpers run every step here; their per-call notes ("Encoding ... with the VAE") are noise.
    ruyi_logger = logging.getLogger("diffusers_ruyi")
    level = ruyi_logger.level
    ruyi_logger.setLevel(logging.WARNING)
    try:
        return _train(argv)
    finally:
        ruyi_logger.setLevel(level)


def _train(argv: Optional[Sequence[str]]) -> str:
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.ddp_find_unused_parameters)],
        # With --seed, the order of the clips is a function of the seed and the epoch (the same on every process,
        # and again after resuming); without, a run of its own.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=args.seed is not None, data_seed=args.seed),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if args.seed is not None:
        set_seed(args.seed + accelerator.process_index)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    # Models: everything frozen; the VAE stays fp32 (it is small and sensitive), the rest in the training dtype.
    if args.pretrained_model_name_or_path == "tiny-random":  # a tiny random model built locally: a smoke run
        pipe = build_tiny_random_pipeline()
        pipe.transformer.to(weight_dtype)
        pipe.image_encoder.to(weight_dtype)
    else:
        pipe = RuyiImageToVideoPipeline.from_pretrained(
            args.pretrained_model_name_or_path,
            dtype={"transformer": weight_dtype, "image_encoder": weight_dtype, "default": torch.float32},
        )
    pipe.set_progress_bar_config(disable=True)
    if args.validation_steps:  # the sampler's limits are known now: fail before training, not at the first validation
        try:  # the check of the pipeline's call: a schedule it can make, and run to the end
            pipe.check_num_inference_steps(args.validation_num_inference_steps)
        except ValueError as e:
            raise ValueError(f"--validation_num_inference_steps {args.validation_num_inference_steps}: {e}") from None
    transformer = pipe.transformer
    for model in (pipe.vae, pipe.image_encoder, transformer):
        model.requires_grad_(False)
    pipe.vae.eval()
    pipe.image_encoder.eval()
    pipe.to(accelerator.device)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if noise_scheduler.config.prediction_type != "v_prediction":
        logger.warning(f"The scheduler predicts {noise_scheduler.config.prediction_type!r}; Ruyi uses v_prediction.")

    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    target_modules = resolve_target_modules(transformer, args.target_modules)
    transformer.add_adapter(
        LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, init_lora_weights=True, target_modules=target_modules)
    )
    if weight_dtype != torch.float32:
        # float32 LoRA weights: in fp16 they would not train, and in bf16 Adam's small updates round away (most of
        # lora_A would never change at the default learning rate).
        cast_training_params(transformer, dtype=torch.float32)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    logger.info(f"Training {sum(p.numel() for p in trainable):,} LoRA parameters in {len(target_modules)} target(s).")

    def unwrap(model):
        model = accelerator.unwrap_model(model)
        return model._orig_mod if hasattr(model, "_orig_mod") else model

    # The noise, timesteps and VAE posterior samples come from `generator`, the unconditional and last-frame choices
    # from `draws` (each process has its own), the clips' windows from the seed, epoch and clip
    # (`VideoFolderDataset.set_epoch`). Every process saves its generators' states in each checkpoint, so that a
    # resumed run draws what the uninterrupted one would have.
    generators = {"generator": torch.Generator(device=accelerator.device), "draws": torch.Generator()}
    for offset, generator in enumerate(generators.values()):
        if args.seed is not None:
            generator.manual_seed(args.seed * 1000 + accelerator.process_index + offset * 2**40)
        else:  # no --seed: a run of its own
            generator.seed()
    generator, draws = generators["generator"], generators["draws"]

    # Checkpoints hold the LoRA weights (not the frozen transformer) plus optimizer/scheduler/RNG state.
    def save_model_hook(models, weights, output_dir):
        # Called in every process.
        save_generator_states(generators, output_dir, accelerator.process_index)
        if accelerator.is_main_process:
            with open(os.path.join(output_dir, TRAINING_ARGS), "w", encoding="utf-8") as f:
                json.dump(vars(args), f, indent=2, sort_keys=True)
            for model in models:
                if isinstance(unwrap(model), type(unwrap(transformer))):
                    RuyiImageToVideoPipeline.save_lora_weights(
                        output_dir,
                        transformer_lora_layers=get_peft_model_state_dict(unwrap(model)),
                        transformer_lora_adapter_metadata=lora_metadata(unwrap(model)),
                    )
                else:
                    raise ValueError(f"Unexpected model to save: {model.__class__}")
                if weights:
                    weights.pop()

    def load_model_hook(models, input_dir):
        model = None
        while models:
            candidate = models.pop()
            if isinstance(unwrap(candidate), type(unwrap(transformer))):
                model = unwrap(candidate)
        if model is None:
            raise ValueError("The checkpoint has no transformer LoRA to restore.")
        load_generator_states(generators, input_dir, accelerator.process_index)
        state_dict, metadata = RuyiImageToVideoPipeline.lora_state_dict(input_dir, return_lora_metadata=True)
        config = model.peft_config["default"]
        saved_alpha = (metadata or {}).get("transformer.lora_alpha")
        if saved_alpha is not None and saved_alpha != config.lora_alpha:
            # The weights would load, and the LoRA would be rescaled by the new alpha / rank without a word.
            raise ValueError(
                f"The checkpoint was trained with --lora_alpha {saved_alpha:g}, this run has {config.lora_alpha:g}: "
                "resume with the same value."
            )
        state_dict = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
        incompatible = set_peft_model_state_dict(model, state_dict, adapter_name="default")
        unexpected = getattr(incompatible, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"The checkpoint's LoRA has keys this model does not: {unexpected}")
        if weight_dtype != torch.float32:
            cast_training_params(model, dtype=torch.float32)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    dataset = VideoFolderDataset(
        args.data_dir, args.num_frames, args.height, args.width, args.frame_stride, _validation_dir(args), args.seed
    )
    if dataset.short_clips:
        span = (args.num_frames - 1) * args.frame_stride + 1
        logger.warning(
            f"{len(dataset.short_clips)} clip(s) have fewer than the {span} frames a window spans and are padded with "
            f"their last frame: {', '.join(os.path.relpath(p, args.data_dir) for p in dataset.short_clips[:5])}"
            f"{', ...' if len(dataset.short_clips) > 5 else ''}."
        )
    if dataset.ignored_keys:
        logger.warning(
            f"metadata.jsonl keys this script does not read, ignored: {', '.join(dataset.ignored_keys)} "
            f"(it reads {', '.join(METADATA_KEYS)})."
        )
    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
        drop_last=True,  # (there are at least as many clips as a batch: checked with the arguments)
    )
    optimizer = torch.optim.AdamW(
        trainable,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    # Optimizer steps per pass over the data: each process gets an equal share of the batches, rounded down with
    # `drop_last` (the batches that do not go round are dropped), up otherwise; the last step of a pass may have
    # fewer than --gradient_accumulation_steps of them. Checked against the prepared loader below (the loader is
    # prepared with the rest in one call: DeepSpeed sizes its batches from it).
    share = len(dataloader) / accelerator.num_processes
    batches_per_process = math.floor(share) if dataloader.drop_last else math.ceil(share)
    if batches_per_process == 0:
        raise ValueError(
            f"--data_dir has {len(dataset)} clip(s): not one batch of {args.train_batch_size} for each of the "
            f"{accelerator.num_processes} processes."
        )
    steps_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        epochs = args.num_train_epochs
        args.max_train_steps = DEFAULT_MAX_TRAIN_STEPS if epochs is None else epochs * steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    transformer, optimizer, dataloader, lr_scheduler = accelerator.prepare(
        transformer, optimizer, dataloader, lr_scheduler
    )
    if len(dataloader) != batches_per_process:  # the count above is accelerate's sharding rule: keep them in step
        raise RuntimeError(f"Expected {batches_per_process} batches per process, the loader has {len(dataloader)}.")
    if accelerator.is_main_process:
        accelerator.init_trackers("ruyi-lora", config={k: v for k, v in vars(args).items() if v is not None})

    global_step = 0
    if args.resume_from_checkpoint:
        path = _resume_checkpoint(args)
        if path is None:  # as diffusers' training scripts do
            logger.info(
                f"--resume_from_checkpoint latest: no checkpoint-* folder in {args.output_dir!r}; starting anew."
            )
        else:
            accelerator.load_state(path)
            global_step = int(os.path.basename(os.path.normpath(path)).removeprefix("checkpoint-"))
            logger.info(f"Resumed from {path} at step {global_step}.")

    validation_image = None
    if args.validation_steps:
        if args.validation_image:  # read as the CLI reads images (16-bit, EXIF orientation)
            validation_image = open_image(args.validation_image, "--validation_image")
        else:
            validation_image = dataset[0]["start_image"]

    progress = tqdm(
        range(args.max_train_steps),
        initial=global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )
    transformer.train()
    # A resumed run goes on where the checkpoint was made: in the same pass over the data, after the batches it had
    # already trained on (the seeded order repeats them).
    epoch, steps_into_epoch = divmod(global_step, steps_per_epoch)
    while global_step < args.max_train_steps:
        dataloader.set_epoch(epoch)
        batches = dataloader
        if steps_into_epoch:
            batches = accelerator.skip_first_batches(dataloader, steps_into_epoch * args.gradient_accumulation_steps)
            steps_into_epoch = 0
        for batch in batches:
            with accelerator.accumulate(transformer):
                loss = compute_loss(
                    pipe, transformer, noise_scheduler, batch, args, generator, accelerator.device, weight_dtype, draws
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if accelerator.sync_gradients:
                global_step += 1
                progress.update(1)
                logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}
                progress.set_postfix(**logs)
                accelerator.log(logs, step=global_step)

                if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                    save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
                if args.validation_steps and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                    run_validation(pipe, args, accelerator, global_step, validation_image)
            if global_step >= args.max_train_steps:
                break
        epoch += 1

    progress.close()
    accelerator.wait_for_everyone()
    # Every process takes part: under FSDP/DeepSpeed this gathers the sharded parameters.
    full_state_dict = accelerator.get_state_dict(transformer)
    if accelerator.is_main_process:
        final = unwrap(transformer)
        layers = get_peft_model_state_dict(final, state_dict=full_state_dict)
        RuyiImageToVideoPipeline.save_lora_weights(
            args.output_dir, transformer_lora_layers=layers, transformer_lora_adapter_metadata=lora_metadata(final)
        )
        logger.info(f"LoRA saved to {os.path.join(args.output_dir, LORA_WEIGHTS)}")
        if args.save_original_format:
            RuyiImageToVideoPipeline.save_lora_weights(
                args.output_dir,
                transformer_lora_layers=layers,
                transformer_lora_adapter_metadata=lora_metadata(final),
                weight_name=ORIGINAL_FORMAT_LORA,
                original_format=True,
            )
            logger.info(f"The same LoRA in the original format: {os.path.join(args.output_dir, ORIGINAL_FORMAT_LORA)}")
    accelerator.end_training()
    return args.output_dir


if __name__ == "__main__":
    main()
