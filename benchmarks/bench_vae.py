"""Benchmark `AutoencoderKLRuyiCausal3D.decode`: time and peak memory, tiled vs untiled, optionally vs the original.

Every measurement runs in a fresh subprocess and reports its peak resident memory (``ru_maxrss``) minus the resident
memory just before decoding, so numbers from different implementations/interpreters are comparable and independent of
allocator caches left by earlier runs. Weights are random (seeded) at the full Ruyi-Mini-7B VAE size, by default in
the cache variant (spatial mid-block attention, the last stage spatial only; `CACHE_VARIANT`), unless ``--config``
points at another diffusers-format config.json; ``--published`` builds the published checkpoint's VAE (slice variant,
3D mid-block attention) from ``tests/fixtures/real_checkpoint/vae_config.json``.

Modes: ``untiled``; ``tiled`` (this package's tiler, `enable_tiling`, against the original's own tiling);
``original-tiled`` (this package running the original's tiling, `enable_original_tiling`, against the original's).

Examples::

    python benchmarks/bench_vae.py --frames 24 --height 512 --width 512
    python benchmarks/bench_vae.py --frames 24 --height 512 --width 512 \
        --reference /path/to/Ruyi-Models --reference-python /path/to/venv-ref/bin/python
    python benchmarks/bench_vae.py --device cuda --frames 120 --height 720 --width 1280   # on a GPU

With ``--reference``, the same random weights are written in the ORIGINAL layout (``AutoencoderKLMagvit`` config +
original key names) to a temporary folder, and the original implementation decodes the same latents in a subprocess
run by ``--reference-python`` with ``PYTHONPATH`` set to the reference checkout. The original code is imported from
that path only; nothing of it lives in this project.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from _worker_protocol import print_result, run_worker


# ----------------------------------------------------------------------------------------------------------------
# Worker side (runs in a subprocess; must import only what its interpreter has)
# ----------------------------------------------------------------------------------------------------------------


def _rss_peak_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _load_ours(workdir: str, device: str):
    from diffusers_ruyi.models.autoencoder_kl_ruyi import AutoencoderKLRuyiCausal3D

    # Load from the ORIGINAL-layout folder: exercises the converter on the full-size checkpoint too.
    return AutoencoderKLRuyiCausal3D.from_pretrained(os.path.join(workdir, "original_vae")).to(device)


def _load_reference(workdir: str, device: str):
    import torch
    from ruyi.models.autoencoder_magvit import AutoencoderKLMagvit
    from safetensors.torch import load_file

    folder = os.path.join(workdir, "original_vae")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    model = AutoencoderKLMagvit.from_config(config)
    missing, unexpected = model.load_state_dict(
        load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors")), strict=False
    )
    if missing or unexpected:
        raise RuntimeError(f"reference load: missing={missing} unexpected={unexpected}")
    return model.to(device=device, dtype=torch.float32).eval()


def _worker(args) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads) if args.threads else None
    device = args.device
    model = _load_ours(args.workdir, device) if args.impl == "ours" else _load_reference(args.workdir, device)
    latents = load_file(os.path.join(args.workdir, "latents.safetensors"))["latents"].to(device)

    if args.tiling:
        if args.impl == "ours" and args.original_tiling:
            model.enable_original_tiling(args.tile, args.overlap)
        elif args.impl == "ours":
            model.enable_tiling(args.tile, args.tile, args.overlap)
        else:
            # The original reads these attributes; its tiling is switched on by `use_tiling`.
            model.use_tiling = True
            model.tile_sample_min_size = args.tile
            model.tile_latent_min_size = args.tile // 8
            model.tile_overlap_factor = args.overlap

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_now_mb()
    with torch.no_grad():
        start = time.perf_counter()
        video = model.decode(latents).sample
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "rss_before_mb": rss_before,
        "rss_peak_mb": _rss_peak_mb(),
        "shape": list(video.shape),
    }
    if device == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.save_output:
        save_file({"video": video.float().cpu().contiguous()}, args.save_output)
    print_result(result)


# ----------------------------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------------------------


def to_original_config(config: dict) -> dict:
    """Writes a diffusers-format `AutoencoderKLRuyiCausal3D` config as an original `AutoencoderKLMagvit` config."""
    channels = list(config["block_out_channels"])
    return {
        "_class_name": "AutoencoderKLMagvit",
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "ch": channels[0],
        "ch_mult": [c // channels[0] for c in channels],
        "block_out_channels": channels,
        "down_block_types": list(config["down_block_types"]),
        "up_block_types": list(config["up_block_types"]),
        "layers_per_block": config["layers_per_block"],
        "act_fn": config["act_fn"],
        "latent_channels": config["latent_channels"],
        "norm_num_groups": config["norm_num_groups"],
        "scaling_factor": config["scaling_factor"],
        "mid_block_type": "MidBlock3D",
        "mid_block_use_attention": config["mid_block_add_attention"],
        "mid_block_attention_type": config.get("mid_block_attention_type", "spatial"),
        "mid_block_num_attention_heads": config["mid_block_num_attention_heads"],
        "num_attention_heads": 1,
        "use_gc_blocks": None,
        "slice_mag_vae": False,
        "slice_compression_vae": config.get("compression_mode", "cache") == "slice",
        "cache_compression_vae": config.get("compression_mode", "cache") == "cache",
        "mini_batch_encoder": config["num_sample_frames_batch_size"],
        "mini_batch_decoder": config["num_latent_frames_batch_size"],
        "upcast_vae": config["force_upcast"],
        "spatial_group_norm": False,
        "use_tiling": False,
        "use_tiling_encoder": False,
        "use_tiling_decoder": False,
        "tile_sample_min_size": 384,
        "tile_overlap_factor": 0.25,
    }


def to_original_state_dict(state_dict: dict) -> dict:
    """Inverse of `convert_vae_state_dict`: diffusers' ``to_out.0`` back to the original bare ``to_out``."""
    return {k.replace(".to_out.0.", ".to_out."): v.contiguous() for k, v in state_dict.items()}


def write_original_checkpoint(model, folder: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(to_original_config(dict(model.config)), f, indent=2)
    save_file(to_original_state_dict(model.state_dict()), os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def _init_random_(model, seed: int) -> None:
    # Default inits give a decoder whose activations grow through the stack; small normal weights keep outputs finite.
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
            elif param.ndim == 1:  # norm scales
                param.copy_(1 + torch.randn(param.shape, generator=generator) * 0.05)
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)


# The default model: the full-size VAE in the cache variant (the class's own defaults are the published slice VAE).
CACHE_VARIANT = {
    "down_block_types": ("SpatialDownBlock3D",) + ("SpatialTemporalDownBlock3D",) * 2 + ("SpatialDownBlock3D",),
    "up_block_types": ("SpatialUpBlock3D",) + ("SpatialTemporalUpBlock3D",) * 2 + ("SpatialUpBlock3D",),
    "scaling_factor": 0.7125,
    "mid_block_attention_type": "spatial",
    "compression_mode": "cache",
    "use_tiling": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24, help="Video frames to decode (a multiple of 8).")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--tile", type=int, default=256, help="Tile size in pixels for the tiled runs.")
    parser.add_argument("--overlap", type=float, default=0.25, help="Tile overlap factor for the tiled runs.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch default).")
    parser.add_argument(
        "--config", default=None, help="A diffusers-format config.json (default: full VAE, cache variant)."
    )
    parser.add_argument("--published", action="store_true", help="The published VAE config (slice variant).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", default=None, help="Path of an original Ruyi-Models checkout.")
    parser.add_argument("--reference-python", default=None, help="Interpreter that can import the original.")
    parser.add_argument("--modes", default="untiled,tiled", help="Comma list of untiled/tiled/original-tiled.")
    parser.add_argument(
        "--reference-modes", default=None, help="Modes also run with the original (default: every one of --modes)."
    )
    parser.add_argument("--keep", default=None, help="Keep the temporary folder at this path.")
    # Internal: worker mode.
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--tiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--original-tiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save-output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker:
        return _worker(args)
    if (args.reference is None) != (args.reference_python is None):
        parser.error("--reference and --reference-python go together.")

    import torch
    from safetensors.torch import load_file, save_file

    from diffusers_ruyi.models.autoencoder_kl_ruyi import AutoencoderKLRuyiCausal3D

    workdir = args.keep or tempfile.mkdtemp(prefix="bench_vae_")
    os.makedirs(workdir, exist_ok=True)
    if args.config:
        with open(args.config) as f:
            model = AutoencoderKLRuyiCausal3D.from_config(json.load(f))
    elif args.published:
        from diffusers_ruyi.loaders.original_checkpoint import convert_vae_config

        published = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "real_checkpoint")
        with open(os.path.join(published, "vae_config.json")) as f:
            model = AutoencoderKLRuyiCausal3D.from_config(convert_vae_config(json.load(f)))
    else:
        model = AutoencoderKLRuyiCausal3D(**CACHE_VARIANT)
    _init_random_(model, args.seed)
    write_original_checkpoint(model, os.path.join(workdir, "original_vae"))
    latent_frames = model.num_latent_frames(args.frames)
    ratio = model.spatial_compression_ratio
    shape = (1, model.config.latent_channels, latent_frames, args.height // ratio, args.width // ratio)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 1))
    save_file({"latents": latents}, os.path.join(workdir, "latents.safetensors"))
    del model

    script = os.path.abspath(__file__)
    common = ["--_worker", "--workdir", workdir, "--device", args.device, "--threads", str(args.threads)]
    common += ["--tile", str(args.tile), "--overlap", str(args.overlap)]
    runs = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        tiling = {"tiled": ["--tiling"], "original-tiled": ["--tiling", "--original-tiling"]}.get(mode, [])
        impls = [("ours", sys.executable, dict(os.environ))]
        if args.reference and mode in (args.reference_modes or args.modes).split(","):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(args.reference))
            impls.append(("original", args.reference_python, env))
        for impl, python, env in impls:
            out_path = os.path.join(workdir, f"out_{impl}_{mode}.safetensors")
            cmd = [python, script, *common, *tiling, "--impl", impl, "--save-output", out_path]
            print(f"running {impl} {mode} ...", file=sys.stderr, flush=True)
            result = run_worker(cmd, env)
            result.update(impl=impl, mode=mode, out=out_path)
            runs.append(result)
            print(f"  {json.dumps(result)}", file=sys.stderr, flush=True)

    what = f"config {args.config}" if args.config else "full-size Ruyi-Mini-7B VAE"
    what += " (published config)" if args.published else ""
    print(f"\nDecode, {what} (random weights), device={args.device}, tile={args.tile}, overlap={args.overlap}\n")
    gpu = args.device == "cuda"
    header = "| impl | tiling | frames | HxW | seconds | peak MB (decode) | peak RSS MB (process) |"
    header += " CUDA peak MB |" if gpu else ""
    header += " time vs original | mem vs original | max abs diff vs original |"
    print(header)
    print("|" + "|".join(["---"] * (header.count("|") - 1)) + "|")
    baseline = {r["mode"]: r for r in runs if r["impl"] == "original"}
    untiled_ours = next((r for r in runs if r["impl"] == "ours" and r["mode"] == "untiled"), None)
    for r in runs:
        delta = r["rss_peak_mb"] - r["rss_before_mb"]
        ref = baseline.get(r["mode"])
        if ref is not None and r["impl"] == "ours":
            ref_delta = ref["rss_peak_mb"] - ref["rss_before_mb"]
            diff = (load_file(r["out"])["video"] - load_file(ref["out"])["video"]).abs().max().item()
            rel = f"{r['seconds'] / ref['seconds']:.2f}x | {delta / ref_delta:.2f}x | {diff:.2e}"
        else:
            rel = "- | - | -"
        row = f"| {r['impl']} | {r['mode']} | {args.frames} | {args.height}x{args.width} | {r['seconds']:.1f} | "
        row += f"{delta:.0f} | {r['rss_peak_mb']:.0f} |"
        row += f" {r['cuda_peak_mb']:.0f} |" if gpu else ""
        print(row + f" {rel} |")
    tiled_ours = next((r for r in runs if r["impl"] == "ours" and r["mode"] == "tiled"), None)
    if untiled_ours and tiled_ours:
        a = untiled_ours["rss_peak_mb"] - untiled_ours["rss_before_mb"]
        b = tiled_ours["rss_peak_mb"] - tiled_ours["rss_before_mb"]
        diff = (load_file(untiled_ours["out"])["video"] - load_file(tiled_ours["out"])["video"]).abs().max().item()
        print(f"\nours: untiled/tiled decode memory = {a / b:.2f}x; max |tiled - untiled| = {diff:.3e}")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
