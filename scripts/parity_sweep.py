"""Random end-to-end parity cases against the ORIGINAL Ruyi implementation: a maintainer's sweep, beyond the goldens.

Each seed draws one case:

- the checkpoint's format: mostly the published one (`tests/fixtures/golden_realfmt/Ruyi-tiny-realfmt`: slice VAE
  with `smooth_output`, DDPM-class scheduler config, full-CLIP `.bin`, bf16 embeddings), else the first goldens'
  (`tests/fixtures/golden/Ruyi-tiny-random`: the cache VAE, DDIM), whose tiny VAE, CLIP and embeddings it reuses;
- a random transformer: 1, 2, 4 or 6 blocks (the counts the original runs), 1-8 heads of 8-32 channels, its weights
  saved with or without the original's fixed `t_embed.pe` tables, in float32 (from seed 27000 on, sometimes
  bfloat16, as the published file);
- the VAE with or without the original's tiling, tile size and overlap drawn (unaligned ones included);
- 1, 8, ..., 32 frames, a size, one to three start frames and maybe an end frame, each image of its own size;
- the sampler (the five of `predict_i2v.py`), steps, guidance, motion, camera, the CLIP apply ratio;
- sometimes a random original-format LoRA (rank, alpha, weight), TeaCache (threshold, windows) and Enhance-A-Video.

The checkpoint is written once (by this package: random weights in the original keys, the published folder layout);
the original runs it through `benchmarks/original_driver.py run-pipeline` in its own interpreter, then this package
runs it as a user would (`from_pretrained`, the CLI's scheduler swap, its `load_lora_weights` + `fuse_lora`, the
hooks).
One line per case: `ok` (max abs difference <= 1e-4 in float32), `DIFF`, or where the original fails, whether this
package refuses the case early with a `ValueError` as it should (`refused`) or not; `nan-original` marks the one
documented difference the cases can draw (the original's Enhance-A-Video returns NaN on a single frame, this package
does not). An original that cannot even be imported (its environment, not the case) is an `ERROR`, never a failure on
the case; a LoRA case whose original fails before it writes the LoRA is `skipped` (there is no LoRA to load).

    python scripts/parity_sweep.py --reference /path/to/Ruyi-Models --python /path/to/ref-venv/bin/python --seeds 0:50

With `--vae`, each seed draws a VAE case instead: a random architecture of the original's `AutoencoderKLMagvit`
(the slice variant of the published VAE, or the cache variant: 3 or 4 stages, widths, layers per block, latent
channels, mid-block attention, slice and chunk sizes, the original's tiling with its tile size and overlap), random
weights, and one `encode` and one `decode` of random inputs of any batch, frame count and size. The original runs
them through `original_driver.py run-vae`; this package loads the same folder with `from_pretrained`.

With `--dtype bfloat16`, pipeline cases run in bfloat16 on both sides, as `predict_i2v.py` runs the published model
(the original under `torch.autocast`), and `ok` means bit for bit: give `--python` a venv of the original on this
package's torch build (see CONTRIBUTING.md), as another build's kernels round differently. LoRA cases included: the
LoRA is fused as the CLI fuses it, which merges it into the bfloat16 weights as the original does.
In both dtypes the driver gives the original's VAE posterior samples the noise this package draws: the original
takes it from the global RNG, which an import reseeds at random on every start, so in bfloat16 its own videos can
change from one run to the next.

Without `--reference`, only this package's side runs (every case without a LoRA, which only the original can write):
a check that the sweep itself works. Nothing of the original is copied here.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Optional, Tuple


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny checkpoints whose folder layout, VAE, CLIP, scheduler config and embeddings a case reuses: the published
# format (slice VAE, `smooth_output`, DDPM-class scheduler config), or the first goldens' (the cache VAE, DDIM).
TEMPLATES = {
    "published": os.path.join(ROOT, "tests", "fixtures", "golden_realfmt", "Ruyi-tiny-realfmt"),
    "cache": os.path.join(ROOT, "tests", "fixtures", "golden", "Ruyi-tiny-random"),
}
DRIVER = os.path.join(ROOT, "benchmarks", "original_driver.py")
TOLERANCE = 1e-4
# predict_i2v.py's sampler names -> this package's CLI names.
SAMPLERS = {"DDIM": "ddim", "DPM++": "dpm++", "Euler": "euler", "Euler A": "euler-a", "PNDM": "pndm"}


def draw_case(seed: int) -> Dict[str, Any]:
    """The case of `seed` (plain data: the same seed always draws the same case)."""
    r = random.Random(seed)
    heads, head_dim = r.choice([1, 2, 4, 8]), r.choice([8, 16, 24, 32])
    frames = r.choice([1, 8, 16, 16, 24, 32])
    height, width = r.choice([32, 48, 64, 80, 96]), r.choice([32, 48, 64, 80, 96, 112])
    starts = 1 if frames <= 8 else r.choice([1, 1, 1, 2, 3])
    ends = 0 if frames == 1 else r.choice([0, 0, 1])
    sampler = r.choice(sorted(SAMPLERS))
    return {
        "seed": seed,
        "transformer": {
            "num_layers": r.choice([1, 2, 4, 6]),
            "num_attention_heads": heads,
            "attention_head_dim": head_dim,
            "hidden_size": heads * head_dim,
        },
        "pe_in_weights": r.random() < 0.5,
        "vae": {
            "use_tiling": r.random() < 0.7,
            "tile_sample_min_size": r.choice([32, 48, 64, 64]),
            "tile_overlap_factor": r.choice([0.25, 0.25, 0.5, 1 / 3, 0.125]),
        },
        "frames": frames,
        "height": height,
        "width": width,
        # Image sizes: the video's, or others that get resized.
        "images": [(r.choice([width, 100, 77]), r.choice([height, 90, 61])) for _ in range(starts + ends)],
        "end_frames": ends,
        "sampler": sampler,
        "steps": r.choice([4, 5, 6]) if sampler == "PNDM" else r.choice([2, 3, 4, 5, 6]),
        "guidance_scale": r.choice([1.0, 3.0, 7.0]),
        "motion": r.choice(["auto", "1", "2", "3", "4"]),
        "camera": r.choice(["auto", "static", "left", "right", "up", "down"]),
        "clip_apply_ratio": r.choice([0.0, 0.2, 0.4, 0.7, 1.0]),
        "generator_seed": r.randrange(10000),
        "lora": (
            {"rank": r.choice([1, 2, 4]), "alpha": r.choice([1.0, 2.0, 4.0]), "weight": r.choice([1.0, 0.5, 0.8])}
            if r.random() < 0.35
            else None
        ),
        "teacache": (
            {
                "threshold": r.choice([0.05, 0.1, 0.2, 0.5]),
                "skip_start": r.choice([0, 1, 2, 3]),
                "skip_end": r.choice([0, 1, 2]),
            }
            if r.random() < 0.3
            else None
        ),
        "enhance": (
            {"weight": r.choice([0.5, 1.0, 3.0]), "skip_start": r.choice([0, 1, 2]), "skip_end": r.choice([0, 1, 2])}
            if r.random() < 0.3
            else None
        ),
        # Drawn last, so that the draws above stay those of the earlier sweeps.
        "template": "cache" if r.random() < 0.25 else "published",
        # The transformer file's storage dtype (the published one is bfloat16): with the tables stored too, a float32
        # run must add them rounded, as the original does. Drawn from seed 27000 on, so earlier seeds keep their cases.
        "weights_dtype": "bfloat16" if seed >= 27000 and r.random() < 0.3 else "float32",
        # The LoRA file's dtype (`LoRANetwork.save_weights` takes one; the original merges in float32). From 47000 on.
        "lora_dtype": r.choice(["float32", "float16", "bfloat16"]) if seed >= 47000 else "float32",
    }


def write_images(case: Dict[str, Any], folder: str) -> list:
    """Smooth random pictures with some noise, one per start/end frame, at the case's image sizes."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(case["seed"])
    paths = []
    for index, (width, height) in enumerate(case["images"]):
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack(
            [
                127 + 100 * np.sin(x / rng.uniform(3, 20) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(3, 20))
                for _ in range(3)
            ],
            axis=-1,
        )
        pixels += rng.normal(0, 10, pixels.shape)
        path = os.path.join(folder, f"image_{index}.png")
        PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def write_checkpoint(case: Dict[str, Any], folder: str) -> None:
    """The published folder layout with a random transformer of the case's size and the tiny VAE's weights."""
    import torch
    from safetensors.torch import save_file

    from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config
    from diffusers_ruyi.models.transformer_ruyi import RuyiTransformer3DModel, _temporal_sincos_embedding

    template = TEMPLATES[case["template"]]
    for entry in ("image_encoder", "scheduler", "embeddings.safetensors", "model_index.json"):
        source, target = os.path.join(template, entry), os.path.join(folder, entry)
        if os.path.isdir(source):
            shutil.copytree(source, target)
        elif os.path.exists(source):  # the first goldens' layout has no model_index.json
            shutil.copy(source, target)

    with open(os.path.join(template, "transformer", "config.json")) as f:
        config = {**json.load(f), **case["transformer"]}
    torch.manual_seed(case["seed"])
    model = RuyiTransformer3DModel(**convert_transformer_config(config))
    with torch.no_grad():
        for parameter in model.parameters():  # zero-initialised layers would hide whole branches
            if parameter.abs().sum() == 0:
                parameter.normal_(0, 0.02)
    # This package's keys are the original's; the original also saved a fixed table per block.
    weights = {key: value.contiguous() for key, value in model.state_dict().items()}
    if case["pe_in_weights"]:
        table = _temporal_sincos_embedding(512, model.inner_dim, torch.device("cpu"))[None]
        for index in range(config["num_layers"]):
            weights[f"blocks.{index}.t_embed.pe"] = table.clone()
    storage = getattr(torch, case.get("weights_dtype", "float32"))
    weights = {key: (value.to(storage) if value.is_floating_point() else value) for key, value in weights.items()}
    os.makedirs(os.path.join(folder, "transformer"))
    save_file(weights, os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(folder, "transformer", "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    os.makedirs(os.path.join(folder, "vae"))
    shutil.copy(os.path.join(template, "vae", "diffusion_pytorch_model.safetensors"), os.path.join(folder, "vae"))
    with open(os.path.join(template, "vae", "config.json")) as f:
        vae_config = {**json.load(f), **case["vae"]}
    with open(os.path.join(folder, "vae", "config.json"), "w") as f:
        json.dump(vae_config, f, indent=2)


def run_original(case: Dict[str, Any], folder: str, images: list, args) -> Tuple[Optional[str], bool]:
    """Runs the original on the case; returns None or its error's last line, and whether it failed to import the
    original at all (its environment, not the case: nothing to judge)."""
    starts, ends = images[: len(images) - case["end_frames"]], images[len(images) - case["end_frames"] :]
    command = [args.python, DRIVER, "--reference", args.reference, "run-pipeline", "--checkpoint", folder]
    for path in starts:
        command += ["--image", path]
    for path in ends:
        command += ["--end-image", path]
    command += ["--frames", str(case["frames"]), "--h", str(case["height"]), "--w", str(case["width"])]
    command += ["--steps", str(case["steps"]), "--cfg", str(case["guidance_scale"]), "--motion", case["motion"]]
    command += ["--cam", case["camera"], "--seed", str(case["generator_seed"]), "--scheduler", case["sampler"]]
    command += ["--clip-apply-ratio", str(case["clip_apply_ratio"]), "--save", os.path.join(folder, "original.st")]
    command += ["--dtype", args.dtype, "--posterior-noise-as-package"]
    if case["lora"]:
        lora = case["lora"]
        command += ["--lora-out", os.path.join(folder, "lora.safetensors"), "--lora-rank", str(lora["rank"])]
        command += ["--lora-alpha", str(lora["alpha"]), "--lora-weight", str(lora["weight"])]
        command += ["--lora-seed", str(case["seed"]), "--lora-dtype", case.get("lora_dtype", "float32")]
    if case["teacache"]:
        tea = case["teacache"]
        command += ["--teacache", "--teacache-threshold", str(tea["threshold"])]
        command += ["--teacache-skip-start", str(tea["skip_start"]), "--teacache-skip-end", str(tea["skip_end"])]
    if case["enhance"]:
        enhance = case["enhance"]
        command += ["--enhance-a-video", "--enhance-weight", str(enhance["weight"])]
        command += ["--enhance-skip-start", str(enhance["skip_start"]), "--enhance-skip-end", str(enhance["skip_end"])]
    done, error = _run_driver(command)
    return error, error is not None and " in _import_original\n" in done.stderr


def _run_driver(command: list) -> Tuple[subprocess.CompletedProcess, Optional[str]]:
    """Runs the original's driver in its own environment (not our PYTHONPATH); returns the finished process and, if
    it failed, the last line of its error output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if not done.returncode:
        return done, None
    return done, (done.stderr.strip().splitlines() or ["(no output)"])[-1][:160]


def run_ours(case: Dict[str, Any], folder: str, images: list, dtype: str = "float32"):
    """This package on the case, as a user runs it, in `dtype`; the video as (B, C, F, H, W) in [0, 1]."""
    import diffusers
    import PIL.Image
    import torch

    from diffusers_ruyi import RuyiImageToVideoPipeline
    from diffusers_ruyi.cli import SCHEDULERS, merge_loras
    from diffusers_ruyi.hooks import (
        RuyiEnhanceAVideoConfig,
        RuyiTeaCacheConfig,
        apply_ruyi_enhance_a_video,
        apply_ruyi_teacache,
    )

    pipe = RuyiImageToVideoPipeline.from_pretrained(folder, dtype=getattr(torch, dtype))
    pipe.set_progress_bar_config(disable=True)
    scheduler = SCHEDULERS[SAMPLERS[case["sampler"]]]
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    if case["lora"]:
        merge_loras(pipe, [os.path.join(folder, "lora.safetensors")], [case["lora"]["weight"]])
    if case["teacache"]:
        tea = case["teacache"]
        config = RuyiTeaCacheConfig(
            threshold=tea["threshold"], skip_start_steps=tea["skip_start"], skip_end_steps=tea["skip_end"]
        )
        apply_ruyi_teacache(pipe.transformer, config)
    if case["enhance"]:
        enhance = case["enhance"]
        config = RuyiEnhanceAVideoConfig(
            weight=enhance["weight"], skip_start_steps=enhance["skip_start"], skip_end_steps=enhance["skip_end"]
        )
        apply_ruyi_enhance_a_video(pipe.transformer, config)
    frames = [PIL.Image.open(path).convert("RGB") for path in images]
    starts, ends = frames[: len(frames) - case["end_frames"]], frames[len(frames) - case["end_frames"] :]
    video = pipe(
        image=[starts],  # one video with its start frame(s), as the original's list of start images
        last_image=[ends] if ends else None,
        num_frames=case["frames"],
        height=case["height"],
        width=case["width"],
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance_scale"],
        motion=case["motion"],
        camera_direction=case["camera"],
        clip_apply_ratio=case["clip_apply_ratio"],
        generator=torch.Generator("cpu").manual_seed(case["generator_seed"]),
        output_type="pt",
    ).frames
    return video.permute(0, 2, 1, 3, 4)


def draw_vae_case(seed: int) -> Dict[str, Any]:
    """The VAE case of `seed`: an original-format config and the shapes of the encode and decode inputs."""
    r = random.Random(seed)
    slice_variant = r.random() < 0.75
    stages = r.choice([3, 4]) if slice_variant else 4
    width = r.choice([4, 8])
    multipliers = [1, 2, 2, 2][:stages] if r.random() < 0.7 else [1, 2, 4, 4][:stages]
    if slice_variant:
        down = ["SpatialDownBlock3D"] + ["SpatialTemporalDownBlock3D"] * (stages - 1)
        up = ["SpatialUpBlock3D"] + ["SpatialTemporalUpBlock3D"] * (stages - 1)
    else:  # the cache variant's layout (the first goldens): temporal compression in the middle stages only
        down = ["SpatialDownBlock3D", "SpatialTemporalDownBlock3D", "SpatialTemporalDownBlock3D", "SpatialDownBlock3D"]
        up = ["SpatialUpBlock3D", "SpatialTemporalUpBlock3D", "SpatialTemporalUpBlock3D", "SpatialUpBlock3D"]
    config = {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "ch": width,
        "ch_mult": multipliers,
        "block_out_channels": [width * m for m in multipliers],
        "down_block_types": down,
        "up_block_types": up,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": r.choice([4, 16]),
        "norm_num_groups": 2,
        "scaling_factor": 0.18215,
        "force_upcast": True,
        "slice_compression_vae": slice_variant,
        "cache_compression_vae": not slice_variant,
        "mid_block_attention_type": r.choice(["3d", "spatial"]),
        "layers_per_block": r.choice([1, 2, 3]),
        "mini_batch_encoder": r.choice([4, 8, 8, 16]) if slice_variant else 8,
        "mini_batch_decoder": r.choice([1, 2, 2, 3, 4]) if slice_variant else 2,
        "use_tiling": r.random() < 0.6,
        "tile_sample_min_size": r.choice([16, 32, 48, 64, 96]),
        "tile_overlap_factor": r.choice([0.25, 0.5, 1 / 3, 0.125]),
    }
    spatial = 2 ** (stages - 1)
    # Any count, as the original takes in both variants.
    frames = r.choice([1, 2, 3, 4, 5, 8, 9, 12, 16, 17, 24, 25, 33])
    latent_frames = r.choice([1, 2, 3, 4, 5, 6, 7, 9])
    return {
        "seed": seed,
        "config": config,
        "encode_input": [r.choice([1, 1, 2]), 3, frames, spatial * r.randint(1, 12), spatial * r.randint(1, 12)],
        # Sometimes the frames from this one on are a constant, as the pipeline's masked conditioning videos are.
        "constant_from": r.randint(1, 3) if r.random() < 0.4 else None,
        "decode_input": [
            r.choice([1, 2]),
            config["latent_channels"],
            latent_frames,
            r.randint(1, 13),
            r.randint(1, 13),
        ],
    }


def write_vae(case: Dict[str, Any], folder: str) -> None:
    """The case's config and random weights (this package's model, saved under the original's keys) and inputs."""
    import torch
    from safetensors.torch import save_file

    from diffusers_ruyi.loaders.original_checkpoint import convert_vae_config, convert_vae_key
    from diffusers_ruyi.models.autoencoder_kl_ruyi import AutoencoderKLRuyiCausal3D

    torch.manual_seed(case["seed"])
    model = AutoencoderKLRuyiCausal3D(**convert_vae_config(case["config"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # not the default norms (ones and zeros)
            if "norm" in name:
                parameter.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    state = model.state_dict()
    renamed = {key: key for key in state}
    for key in list(renamed):  # the original's key of each of this package's keys
        for original in (key, key.replace(".to_out.0.", ".to_out.")):
            if convert_vae_key(original) == key:
                renamed[key] = original
    save_file(
        {renamed[key]: value.contiguous() for key, value in state.items()},
        os.path.join(folder, "diffusion_pytorch_model.safetensors"),
    )
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(case["config"], f, indent=1)
    generator = torch.Generator().manual_seed(case["seed"])
    inputs = {
        "encode_input": torch.rand(case["encode_input"], generator=generator) * 2 - 1,
        "decode_input": torch.randn(case["decode_input"], generator=generator),
    }
    if case["constant_from"] is not None:
        inputs["encode_input"][:, :, case["constant_from"] :] = -1.0
    save_file(inputs, os.path.join(folder, "inputs.safetensors"))


def describe_vae(case: Dict[str, Any]) -> str:
    c = case["config"]
    tiling = f"tiles {c['tile_sample_min_size']}/{c['tile_overlap_factor']:.3g}" if c["use_tiling"] else "untiled"
    variant = "slice" if c["slice_compression_vae"] else "cache"
    return (
        f"{variant} {c['block_out_channels']} x{c['layers_per_block']} latent {c['latent_channels']} "
        f"{c['mid_block_attention_type']} slices {c['mini_batch_encoder']}/{c['mini_batch_decoder']} {tiling} "
        f"encode {tuple(case['encode_input'])}{' masked' if case['constant_from'] else ''} "
        f"decode {tuple(case['decode_input'])}"
    )


def run_vae_case(seed: int, work: str, args) -> str:
    """One VAE case, one line: `<seed> <verdict> | encode: ... | decode: ... | <case>`, the verdict the worst of the
    two operations' (`ok`, `refused`, `DIFF`, `SHAPE`, `RAN`, `REFUSED`, as for pipeline cases)."""
    import torch
    from safetensors.torch import load_file

    from diffusers_ruyi import AutoencoderKLRuyiCausal3D

    case = draw_vae_case(seed)
    folder = os.path.join(work, f"vae_{seed}")
    os.makedirs(folder)
    write_vae(case, folder)
    expected, original_errors = {}, {}
    if args.reference is not None:
        saved = os.path.join(folder, "original.safetensors")
        command = [args.python, DRIVER, "--reference", args.reference, "run-vae", "--folder", folder]
        command += ["--inputs", os.path.join(folder, "inputs.safetensors"), "--save", saved, "--dtype", args.dtype]
        done, error = _run_driver(command)
        result = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
        if error is not None or result is None:
            return f"{seed} ERROR (the original's driver failed: {error or '(no result)'}) | {describe_vae(case)}"
        original_errors = json.loads(result[len("RESULT ") :])["errors"]
        expected = load_file(saved)
    dtype = getattr(torch, args.dtype)
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(folder, dtype=dtype).eval()
    inputs = {name: value.to(dtype) for name, value in load_file(os.path.join(folder, "inputs.safetensors")).items()}
    rank = ["ok", "ran", "refused", "DIFF", "SHAPE", "RAN", "REFUSED"]
    verdicts, details = [], []
    for name, run in (
        ("encode", lambda x: vae.encode(x).latent_dist.mean),
        ("decode", lambda z: vae.decode(z).sample),
    ):
        try:
            with torch.no_grad():
                output, error = run(inputs[f"{name}_input"]), None
        except ValueError as raised:
            output, error = None, str(raised)[:100]
        if args.reference is None:
            verdict = "ran" if error is None else "refused"
            detail = tuple(output.shape) if error is None else error
        elif name in original_errors:
            verdict = "refused" if error is not None else "RAN"
            detail = f"original: {original_errors[name]} / ours: {error}"
        elif error is not None:
            verdict, detail = "REFUSED", error
        elif output.shape != expected[f"{name}_output"].shape:
            verdict, detail = "SHAPE", f"{tuple(output.shape)} vs {tuple(expected[f'{name}_output'].shape)}"
        else:
            difference = (output.float() - expected[f"{name}_output"]).abs().max().item()
            verdict, detail = judge(difference, args.dtype), f"{difference:.1e}"
        verdicts.append(verdict)
        details.append(f"{name}: {verdict} {detail}")
    worst = max(verdicts, key=rank.index)
    return f"{seed} {worst} | {' | '.join(details)} | {describe_vae(case)}"


def describe(case: Dict[str, Any]) -> str:
    t = case["transformer"]
    vae = case["vae"]
    tiling = (
        f"tiles {vae['tile_sample_min_size']}/{vae['tile_overlap_factor']:.3g}" if vae["use_tiling"] else "untiled"
    )
    extras = [name for name in ("lora", "teacache", "enhance") if case[name]]
    if case["lora"] and case.get("lora_dtype", "float32") != "float32":
        extras[0] = f"lora({case['lora_dtype']})"
    return (
        f"{case['template']} {t['num_layers']}x{t['num_attention_heads']}x{t['attention_head_dim']} {case['frames']}f "
        f"{case['height']}x{case['width']} {len(case['images']) - case['end_frames']}+{case['end_frames']} frames "
        f"{case['sampler']} {case['steps']} steps cfg {case['guidance_scale']:g} {tiling} {'+'.join(extras) or '-'}"
    )


def run_case(seed: int, work: str, args) -> str:
    """One case, one line of report: `<seed> <verdict> <details> | <case>`."""
    import torch
    from safetensors.torch import load_file

    case = draw_case(seed)
    folder = os.path.join(work, f"case_{seed}")
    os.makedirs(folder)
    images = write_images(case, folder)
    write_checkpoint(case, folder)
    with open(os.path.join(folder, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    if args.reference is None:
        if case["lora"]:
            return f"{seed} skipped (a LoRA needs the original) | {describe(case)}"
        original_error = None
    else:
        start = time.perf_counter()
        original_error, import_failed = run_original(case, folder, images, args)
        original_seconds = time.perf_counter() - start
        if import_failed:
            return f"{seed} ERROR (the original could not be imported: {original_error}) | {describe(case)}"
        lora_written = os.path.exists(os.path.join(folder, "lora.safetensors"))
        if original_error is not None and case["lora"] and not lora_written:
            # The original writes the case's LoRA once its pipeline is built: without it there is nothing to load.
            return f"{seed} skipped (the original failed before writing the LoRA: {original_error}) | {describe(case)}"
    start = time.perf_counter()
    try:
        with torch.no_grad():
            video = run_ours(case, folder, images, args.dtype)
        ours_error = None
    except ValueError as error:
        ours_error = error
    ours_seconds = time.perf_counter() - start
    ours_error = None if ours_error is None else str(ours_error)[:120]
    if original_error is not None:
        verdict = "refused" if ours_error is not None else "RAN (the original fails)"
        return f"{seed} {verdict} | original: {original_error} | ours: {ours_error} | {describe(case)}"
    if ours_error is not None:
        # Without the original there is nothing to compare: a refusal is reported, not judged.
        verdict = "refused" if args.reference is None else "REFUSED (the original runs)"
        return f"{seed} {verdict} | ours: {ours_error} | {describe(case)}"
    if args.reference is None:
        return f"{seed} ran {tuple(video.shape)} in {ours_seconds:.1f} s | {describe(case)}"
    expected = load_file(os.path.join(folder, "original.st"))["video"]
    if expected.shape != video.shape:
        return f"{seed} SHAPE {tuple(video.shape)} vs {tuple(expected.shape)} | {describe(case)}"
    if case["enhance"] and case["frames"] == 1 and expected.isnan().all() and video.isfinite().all():
        # The original's Enhance-A-Video divides by zero on one frame; this package leaves one frame unchanged.
        return f"{seed} nan-original (its Enhance-A-Video on one frame; ours is finite) | {describe(case)}"
    difference = (video - expected).abs().max().item()
    timing = f"original {original_seconds:.1f} s, ours {ours_seconds:.1f} s"
    return f"{seed} {judge(difference, args.dtype)} {difference:.1e} ({timing}) | {describe(case)}"


def judge(difference: float, dtype: str) -> str:
    """The verdict on a case both sides ran: `ok` or `DIFF`. float32: within `TOLERANCE`; bfloat16: bit for bit."""
    if dtype == "float32":
        return "ok" if difference <= TOLERANCE else "DIFF"
    return "ok" if difference == 0 else "DIFF"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="An IamCreateAI/Ruyi-Models checkout (commit 6c7b597).")
    parser.add_argument("--python", help="The interpreter of the original's venv (diffusers 0.31).")
    parser.add_argument("--seeds", default="0:20", help="A range `start:stop` of case seeds (default 0:20).")
    parser.add_argument("--keep", help="Keep every case's folder under this directory (default: a temporary one).")
    parser.add_argument("--vae", action="store_true", help="VAE cases (random architectures) instead of pipelines.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="The cases' dtype.")
    args = parser.parse_args()
    if (args.reference is None) != (args.python is None):
        parser.error("give --reference and --python together (or neither, for this package's side only)")
    try:
        start, stop = (int(part) for part in args.seeds.split(":"))
    except ValueError:
        parser.error(f"--seeds must be `start:stop`, got {args.seeds!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Both sides (the original inherits the environment): torch's oneDNN bfloat16 3D convolution on AMX CPUs can
    # return wrong values or NaN, at random (docs/pipeline.md#known-issues); bit-for-bit cases need the AVX-512
    # kernels, which are deterministic. Read by oneDNN at its first convolution.
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    sys.path.insert(0, ROOT)
    work = args.keep or tempfile.mkdtemp(prefix="ruyi-sweep-")
    os.makedirs(work, exist_ok=True)
    counts: Dict[str, int] = {}
    try:
        for seed in range(start, stop):
            line = (run_vae_case if args.vae else run_case)(seed, work, args)
            counts[line.split()[1]] = counts.get(line.split()[1], 0) + 1
            print(line, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("summary: " + ", ".join(f"{count} {verdict}" for verdict, count in sorted(counts.items())))
    if any(verdict not in ("ok", "refused", "ran", "skipped", "nan-original") for verdict in counts):
        sys.exit(1)


if __name__ == "__main__":
    main()
