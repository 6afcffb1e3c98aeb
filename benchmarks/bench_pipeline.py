"""End-to-end time and peak memory of RuyiImageToVideoPipeline, against the original pipeline when given.

    python benchmarks/bench_pipeline.py                                   # this package only
    python benchmarks/bench_pipeline.py --reference ~/Ruyi-Models --reference-python ~/venv-ref/bin/python

Every measurement runs in a fresh subprocess (peak RSS is per process) on the same checkpoint, image, seed and
settings. "tiny" is the golden test checkpoint; "medium" is a random checkpoint in the original layout, written by
the original code when --reference is given (else by this package, in diffusers format). Prints a markdown table
with the ratio original / ours (> 1 means this package is faster or lighter) and the max abs difference of the
videos.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

from _bench_common import HERE, MEDIUM_TRANSFORMER_OVERRIDES, ROOT, TINY, add_worker_arguments, generate
from _worker_protocol import print_result, run_worker

from diffusers_ruyi.tiny import TINY_TRANSFORMER_CONFIG


MEDIUM_TRANSFORMER = {**TINY_TRANSFORMER_CONFIG, **MEDIUM_TRANSFORMER_OVERRIDES}
MEDIUM_VAE_OVERRIDES = {
    "ch": 32,
    "ch_mult": [1, 2, 4, 4],
    "block_out_channels": [32, 64, 128, 128],
    "norm_num_groups": 16,
}

# The published VAE config (slice compression, 3D mid-block attention, its own 384 px tiling) at medium widths.
PUBLISHED_VAE = os.path.join(ROOT, "tests", "fixtures", "real_checkpoint", "vae_config.json")
# The published folder layout (model_index.json, DDPM scheduler config, full-CLIP .bin, bf16 embeddings), tiny.
REALFMT = os.path.join(ROOT, "tests", "fixtures", "golden_realfmt", "Ruyi-tiny-realfmt")

CASES = {
    # name: (checkpoint kind, frames, height, width, steps)
    "tiny": ("tiny", 16, 64, 64, 3),
    "medium": ("medium", 16, 128, 128, 4),
    # The medium models in the published format: the slice VAE, whose decode also runs `smooth_output`.
    "medium-published": ("medium-published", 16, 128, 128, 4),
    # Longer: six slices per conditioning video, as in real use (Ruyi's default is 120 frames).
    "medium-published-48f": ("medium-published", 48, 128, 128, 4),
}


def worker(args) -> None:
    """Runs this package's pipeline once per repeat, in this process, and prints a RESULT line."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from diffusers_ruyi import RuyiImageToVideoPipeline

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    pipe = RuyiImageToVideoPipeline.from_pretrained(args.checkpoint, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(args.image).convert("RGB")
    timings = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        frames = generate(pipe, image, args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - t0)
    save_file({"video": frames.permute(0, 2, 1, 3, 4).float().contiguous().cpu()}, args.save)
    result = {
        "seconds": sorted(timings)[len(timings) // 2],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }
    print_result(result)


def make_medium_checkpoint(args, out: str, published: bool = False) -> str:
    template = REALFMT if published else TINY
    with open(PUBLISHED_VAE if published else os.path.join(TINY, "vae", "config.json")) as f:
        vae_config = json.load(f)
    vae_config.update(MEDIUM_VAE_OVERRIDES)
    if args.reference:
        tcfg, vcfg = os.path.join(out, "t.json"), os.path.join(out, "v.json")
        with open(tcfg, "w") as f:
            json.dump(MEDIUM_TRANSFORMER, f)
        with open(vcfg, "w") as f:
            json.dump(vae_config, f)
        ckpt = os.path.join(out, "medium-published-original" if published else "medium-original")
        run_worker([
            args.reference_python, os.path.join(HERE, "original_driver.py"), "--reference", args.reference,
            "make-checkpoint", "--out", ckpt, "--transformer-config", tcfg, "--vae-config", vcfg, "--template", template,
        ])  # fmt: skip
        return ckpt
    import torch

    from diffusers_ruyi import AutoencoderKLRuyiCausal3D, RuyiImageToVideoPipeline, RuyiTransformer3DModel
    from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config, convert_vae_config

    torch.manual_seed(0)
    vae = AutoencoderKLRuyiCausal3D.from_config(convert_vae_config(vae_config))
    with torch.no_grad():  # ~0 posterior variance, as in the original-layout path (see original_driver.py)
        half = vae.quant_conv.weight.shape[0] // 2
        vae.quant_conv.weight[half:] = 0
        vae.quant_conv.bias[half:] = -30
    pipe = RuyiImageToVideoPipeline.from_pretrained(
        template,
        transformer=RuyiTransformer3DModel.from_config(convert_transformer_config(MEDIUM_TRANSFORMER)),
        vae=vae,
    )
    ckpt = os.path.join(out, "medium-published-diffusers" if published else "medium-diffusers")
    pipe.save_pretrained(ckpt)
    return ckpt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="Path to an IamCreateAI/Ruyi-Models checkout (the original code).")
    parser.add_argument("--reference-python", default=sys.executable, help="Interpreter of the original's venv.")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=1)
    add_worker_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch
    from safetensors.torch import load_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = {"tiny": TINY}
        for case in args.cases:
            kind, frames, h, w, steps = CASES[case]
            if kind not in checkpoints:
                checkpoints[kind] = make_medium_checkpoint(args, tmp, published=kind == "medium-published")
            ckpt = checkpoints[kind]
            common = [
                "--image",
                args.image,
                "--frames",
                str(frames),
                "--h",
                str(h),
                "--w",
                str(w),
                "--steps",
                str(steps),
            ]
            common += ["--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats)]
            ours_out = os.path.join(tmp, f"{case}-ours.safetensors")
            ours = run_worker(
                [sys.executable, __file__, "--worker", "--checkpoint", ckpt, "--save", ours_out, *common]
            )
            rows.append((case, f"{frames}x{h}x{w}, {steps} steps", "diffusers-ruyi", ours, None))
            if args.reference:
                ref_out = os.path.join(tmp, f"{case}-original.safetensors")
                ref = run_worker([
                    args.reference_python, os.path.join(HERE, "original_driver.py"), "--reference", args.reference,
                    "run-pipeline", "--checkpoint", ckpt, "--motion", "2", "--cam", "left", "--save", ref_out, *common,
                    "--posterior-noise-as-package",  # else the original's bfloat16 videos vary from run to run
                ])  # fmt: skip
                diff = (load_file(ours_out)["video"] - load_file(ref_out)["video"]).abs().max().item()
                rows.append((case, f"{frames}x{h}x{w}, {steps} steps", "original", ref, diff))

    print(f"\ndevice={args.device} dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()}\n")
    print(
        "| case | video | implementation | seconds | peak RSS MB | peak CUDA MB | time ratio orig/ours | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ours_by_case = {}
    for case, video, impl, r, diff in rows:
        if impl == "diffusers-ruyi":
            ours_by_case[case] = r
            ratio = "1.00"
        else:
            ratio = f"{r['seconds'] / ours_by_case[case]['seconds']:.2f}"
        cuda = f"{r['peak_cuda_mb']:.0f}" if r.get("peak_cuda_mb") else "-"
        d = f"{diff:.2e}" if diff is not None else "-"
        print(f"| {case} | {video} | {impl} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {cuda} | {ratio} | {d} |")


if __name__ == "__main__":
    main()
