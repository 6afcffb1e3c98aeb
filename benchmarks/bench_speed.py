"""Per-step latency and peak memory of the speed/memory features, against the original implementation.

One table, all rows measured in the same run on the same random weights, image, seed and settings, each row in a
fresh subprocess (peak RSS is per process):

* `baseline`: `RuyiImageToVideoPipeline` as is.
* `teacache`: `transformer.enable_cache(RuyiTeaCacheConfig(threshold=--teacache-threshold, offload_to_cpu=False))`.
* `fbc`: diffusers' `FirstBlockCacheConfig(threshold=--fbc-threshold)`.
* `fp8`: `apply_fp8_mode(transformer, --fp8-mode, torch.float8_e4m3fn)` (weights stored in fp8, computed in --dtype).
* `compile`: `transformer.compile_repeated_blocks(fullgraph=True, backend=--compile-backend)`, after one warm-up call.
* `skip_offload`: `apply_ruyi_skip_offload(transformer, RuyiSkipOffloadConfig(group_size=5))` (the original's
  `gpu_offload_steps=5`).
* `original`, `original_teacache`: the original pipeline through `benchmarks/original_driver.py` (needs
  `--reference PATH --reference-python PY`), without / with its TeaCache at the same threshold.

    python benchmarks/bench_speed.py --preset small                       # CPU, checks that everything runs
    python benchmarks/bench_speed.py --preset medium --reference ~/Ruyi-Models --reference-python ~/venv-ref/bin/python
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --preset full --reference ... --reference-python ...

"s/step" is the mean wall time of one transformer call (one denoising step, both guidance branches batched),
synchronised on CUDA; "pipeline s" includes image encoding, VAE encode/decode. Peak memory: process peak RSS, and
`torch.cuda.max_memory_allocated` on CUDA. "max abs diff" compares the decoded video with `baseline` (for `original`
and `original_teacache`: with `baseline` and `teacache`), so exact features show 0 and caches show their error.

Presets: `small` = the golden tiny checkpoint; `medium` = a random 512-wide, 8-layer transformer (CPU scale);
`full` = the full Ruyi-Mini-7B transformer geometry (the defaults of `RuyiTransformer3DModel`: 40 layers, 16 heads x 176)
with a full-width CLIP vision tower (2 layers) and a guessed full-size VAE, at 512x512x24 and 768x768x48, 25 steps.
A `full` checkpoint is ~28 GB in float32 on disk (written once into --workdir).
"""

import argparse
import inspect
import json
import os
import resource
import shutil
import sys
import tempfile
import time

from _bench_common import HERE, MEDIUM_TRANSFORMER_OVERRIDES, TINY, add_worker_arguments, generate
from _worker_protocol import print_result, run_worker

from diffusers_ruyi.tiny import TINY_TRANSFORMER_CONFIG


MEDIUM_TRANSFORMER = {**TINY_TRANSFORMER_CONFIG, **MEDIUM_TRANSFORMER_OVERRIDES}
# Full-size VAE: the tiny golden VAE's layout with EasyAnimate/Magvit widths (guessed; the hub config is not offline).
FULL_VAE_OVERRIDES = {
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
}

PRESETS = {
    # name: (checkpoint kind, [(frames, height, width, steps), ...])
    "small": ("tiny", [(16, 64, 64, 6)]),
    "medium": ("medium", [(16, 128, 128, 10)]),
    "full": ("full", [(24, 512, 512, 25), (48, 768, 768, 25)]),
}
OURS = ("baseline", "teacache", "fbc", "fp8", "compile", "skip_offload")
ORIGINAL = ("original", "original_teacache")


# ----------------------------------------------------------------------------------------------------------------
# Worker: one variant of this package, in its own process
# ----------------------------------------------------------------------------------------------------------------


def worker(args) -> None:
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from diffusers_ruyi import RuyiImageToVideoPipeline
    from diffusers_ruyi.hooks import RuyiTeaCacheConfig, apply_fp8_mode, get_ruyi_teacache_skipped_steps

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    # Every model in `dtype`, as the original's driver (and predict_i2v.py) runs them.
    pipe = RuyiImageToVideoPipeline.from_pretrained(args.checkpoint, dtype=dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    warmup = args.warmup
    if args.variant == "teacache":
        transformer.enable_cache(RuyiTeaCacheConfig(threshold=args.teacache_threshold, offload_to_cpu=False))
    elif args.variant == "fbc":
        from diffusers import FirstBlockCacheConfig

        transformer.enable_cache(FirstBlockCacheConfig(threshold=args.fbc_threshold))
    elif args.variant == "fp8":
        apply_fp8_mode(transformer, args.fp8_mode, torch.float8_e4m3fn, compute_dtype=dtype)
    elif args.variant == "compile":
        transformer.compile_repeated_blocks(fullgraph=True, backend=args.compile_backend)
        warmup = max(1, warmup)
    elif args.variant == "skip_offload":
        from diffusers_ruyi.hooks import RuyiSkipOffloadConfig, apply_ruyi_skip_offload

        apply_ruyi_skip_offload(transformer, RuyiSkipOffloadConfig(group_size=5))
    elif args.variant != "baseline":
        raise ValueError(f"Unknown variant {args.variant!r}.")

    step_times = []

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def before(module, args_, kwargs_):
        sync()
        step_times.append(-time.perf_counter())

    def after(module, args_, kwargs_, output):
        sync()
        step_times[-1] += time.perf_counter()

    transformer.register_forward_pre_hook(before, with_kwargs=True)
    transformer.register_forward_hook(after, with_kwargs=True)
    image = Image.open(args.image).convert("RGB")

    def call():
        return generate(pipe, image, args)

    for _ in range(warmup):
        call()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_times.clear()
    sync()
    start = time.perf_counter()
    frames = call()
    sync()
    seconds = time.perf_counter() - start
    save_file({"video": frames.permute(0, 2, 1, 3, 4).float().contiguous().cpu()}, args.save)
    result = {
        "seconds": seconds,
        "seconds_per_step": sum(step_times) / max(1, len(step_times)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }
    if args.variant == "teacache":
        result["skipped_steps"] = len(get_ruyi_teacache_skipped_steps(transformer))
    print_result(result)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def _full_transformer_config() -> dict:
    """The ORIGINAL-layout config of the full-size transformer (`RuyiTransformer3DModel`'s defaults)."""
    from diffusers_ruyi import RuyiTransformer3DModel

    parameters = inspect.signature(RuyiTransformer3DModel.__init__).parameters
    config = {name: p.default for name, p in parameters.items() if name != "self"}
    config.update(
        _class_name="HunyuanTransformer3DModel",
        hidden_size=config["num_attention_heads"] * config["attention_head_dim"],
        learn_sigma=True,
        norm_type="layer_norm",
    )
    return config


def _make_full_template(folder: str, transformer_config: dict) -> str:
    """image_encoder/ (a 2-layer CLIP vision tower of the width the transformer expects), scheduler/ and
    embeddings.safetensors at the full text sizes, in the original layout."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from diffusers_ruyi.loaders.original_checkpoint import clip_image_processor_class
    from diffusers_ruyi.pipelines.controls import CAMERA_DIRECTIONS

    torch.manual_seed(0)
    width = transformer_config["projection_dim"]
    clip = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=2,
            num_attention_heads=width // 64,
            image_size=224,
            patch_size=14,
            projection_dim=width,
        )
    )
    clip.save_pretrained(os.path.join(folder, "image_encoder"))
    clip_image_processor_class()().save_pretrained(os.path.join(folder, "image_encoder"))
    shutil.copytree(os.path.join(TINY, "scheduler"), os.path.join(folder, "scheduler"), dirs_exist_ok=True)
    flat = {}
    names = ["p.default", "n.default"] + [f"p.16x9movie{m}{c}" for m in range(5) for c in CAMERA_DIRECTIONS]
    for name in names:
        flat[f"{name}.emb1"] = torch.randn(
            1, transformer_config["text_len"], transformer_config["cross_attention_dim"]
        )
        flat[f"{name}.emb2"] = torch.randn(
            1, transformer_config["text_len_t5"], transformer_config["cross_attention_dim_t5"]
        )
        flat[f"{name}.mask1"] = torch.ones(1, transformer_config["text_len"], dtype=torch.long)
        flat[f"{name}.mask2"] = torch.ones(1, transformer_config["text_len_t5"], dtype=torch.long)
    save_file(flat, os.path.join(folder, "embeddings.safetensors"))
    return folder


def make_checkpoint(args, kind: str, workdir: str) -> str:
    """A random checkpoint in the ORIGINAL layout (written by the original code when --reference is given, so both
    implementations load the same weights), or in diffusers layout without --reference."""
    if kind == "tiny":
        return TINY
    folder = os.path.join(workdir, f"{kind}-{'original' if args.reference else 'diffusers'}")
    if os.path.isdir(folder):
        return folder
    with open(os.path.join(TINY, "vae", "config.json")) as f:
        vae_config = json.load(f)
    if kind == "medium":
        transformer_config, template = MEDIUM_TRANSFORMER, TINY
    else:
        transformer_config = _full_transformer_config()
        vae_config.update(FULL_VAE_OVERRIDES)
        template = _make_full_template(os.path.join(workdir, f"{kind}-template"), transformer_config)
    if args.reference:
        tcfg, vcfg = os.path.join(workdir, f"{kind}-t.json"), os.path.join(workdir, f"{kind}-v.json")
        with open(tcfg, "w") as f:
            json.dump(transformer_config, f)
        with open(vcfg, "w") as f:
            json.dump(vae_config, f)
        run_worker([
            args.reference_python, os.path.join(HERE, "original_driver.py"), "--reference", args.reference,
            "make-checkpoint", "--out", folder, "--transformer-config", tcfg, "--vae-config", vcfg,
            "--template", template,
        ])  # fmt: skip
        return folder
    import torch

    from diffusers_ruyi import AutoencoderKLRuyiCausal3D, RuyiImageToVideoPipeline, RuyiTransformer3DModel
    from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config, convert_vae_config

    torch.manual_seed(0)
    transformer = RuyiTransformer3DModel.from_config(convert_transformer_config(transformer_config))
    with torch.no_grad():
        for p in transformer.parameters():  # as the original driver: no all-zero layers
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    pipe = RuyiImageToVideoPipeline.from_pretrained(
        template, transformer=transformer, vae=AutoencoderKLRuyiCausal3D.from_config(convert_vae_config(vae_config))
    )
    pipe.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="medium", choices=list(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--variants", nargs="+", default=list(OURS + ORIGINAL), choices=list(OURS + ORIGINAL))
    parser.add_argument("--reference", help="Path to an IamCreateAI/Ruyi-Models checkout (the original code).")
    parser.add_argument("--reference-python", default=sys.executable, help="Interpreter of the original's venv.")
    parser.add_argument("--teacache-threshold", type=float, default=0.10)
    parser.add_argument("--fbc-threshold", type=float, default=0.05)
    parser.add_argument("--fp8-mode", default="strong", choices=["lite", "strong", "extreme"])
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--warmup", type=int, default=0, help="Untimed pipeline calls before the timed one.")
    parser.add_argument("--workdir", help="Keeps generated checkpoints here (default: a temporary folder).")
    add_worker_arguments(parser)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch
    from safetensors.torch import load_file

    variants = [v for v in args.variants if v in OURS or args.reference]
    kind, cases = PRESETS[args.preset]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        checkpoint = make_checkpoint(args, kind, workdir)
        for frames, h, w, steps in cases:
            common = ["--frames", str(frames), "--h", str(h), "--w", str(w), "--steps", str(steps)]
            common += ["--image", args.image, "--device", args.device, "--dtype", args.dtype]
            videos = {}
            for variant in variants:
                out = os.path.join(tmp, f"{variant}-{frames}x{h}x{w}.safetensors")
                if variant in OURS:
                    result = run_worker([
                        sys.executable, __file__, "--worker", "--variant", variant, "--checkpoint", checkpoint,
                        "--save", out, "--teacache-threshold", str(args.teacache_threshold),
                        "--fbc-threshold", str(args.fbc_threshold), "--fp8-mode", args.fp8_mode,
                        "--compile-backend", args.compile_backend, "--warmup", str(args.warmup), *common,
                    ])  # fmt: skip
                else:
                    extra = ["--teacache", "--teacache-threshold", str(args.teacache_threshold)]
                    result = run_worker([
                        args.reference_python, os.path.join(HERE, "original_driver.py"), "--reference",
                        args.reference, "run-pipeline", "--checkpoint", checkpoint, "--motion", "2", "--cam", "left",
                        "--time-denoiser", "--save", out, "--posterior-noise-as-package", "--warmup",
                        str(args.warmup), *common,
                        *(extra if variant == "original_teacache" else []),
                    ])  # fmt: skip
                    result["seconds_per_step"] = result.get("denoise_seconds_per_step")
                    result["skipped_steps"] = result.get("teacache_skip_count")
                videos[variant] = load_file(out)["video"]
                compare = {"original": "baseline", "original_teacache": "teacache"}.get(variant, "baseline")
                diff = None
                if compare in videos and variant != "baseline":
                    diff = (videos[variant] - videos[compare]).abs().max().item()
                rows.append((f"{frames}x{h}x{w}, {steps} steps", variant, result, diff, compare))

    print(
        f"\npreset={args.preset} device={args.device} dtype={args.dtype} torch={torch.__version__} "
        f"threads={torch.get_num_threads()}"
        + (f" gpu={torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "")
        + "\n"
    )
    print(
        "| video | variant | s/step | speed-up vs baseline | pipeline s | peak RSS MB | peak CUDA MB | skipped steps "
        "| max abs diff (vs) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base = {}
    for video, variant, r, diff, compare in rows:
        if variant == "baseline":
            base[video] = r["seconds_per_step"]
        step = r.get("seconds_per_step")
        speedup = f"{base[video] / step:.2f}x" if step and video in base else "-"
        cuda = f"{r['peak_cuda_mb']:.0f}" if r.get("peak_cuda_mb") else "-"
        skipped = r.get("skipped_steps")
        d = f"{diff:.2e} ({compare})" if diff is not None else "-"
        print(
            f"| {video} | {variant} | {step:.4f} | {speedup} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {cuda} "
            f"| {skipped if skipped is not None else '-'} | {d} |"
        )


if __name__ == "__main__":
    main()
