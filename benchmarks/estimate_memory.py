"""Peak GPU memory of a full-size generation, estimated on the CPU from tensor sizes: no GPU, no weights, seconds.

    python benchmarks/estimate_memory.py                  # published configs, 512x512x24, bf16, CFG
    python benchmarks/estimate_memory.py --frames 120 --height 768 --width 768
    python benchmarks/estimate_memory.py --preset tiny    # the same code on the tiny configs (run by a test)
    python benchmarks/estimate_memory.py --reference /path/to/Ruyi-Models --reference-python <its venv>/bin/python

The models of `device_suite.py`'s preset are built under `FakeTensorMode`: tensors carry shapes and dtypes but no
storage, so the 7.19B-parameter transformer costs nothing to build and a forward takes seconds. A dispatch-mode
tracker (`LiveBytes`; torch's `MemTracker` refuses a module called twice in one window, as the VAE's frame chunks and
tiles are) records the live bytes of every phase of a generation: the CLIP encoder on the start frame, the VAE
encoding the conditioning video (with the published config's own tiling), one batched CFG transformer call (also with
the long skips offloaded), and the VAE decode (untiled, the original's tiling, the package's tiling). The table then
composes, per memory setting, the weights that setting keeps on the GPU with the largest phase.

This is an estimate from live tensor bytes: the CUDA caching allocator adds fragmentation and kernel workspaces, and
attention is counted as a fused kernel (the CPU flash kernel: output and log-sum-exp only, as flash/cuDNN/efficient
SDPA on a GPU). With `--reference`, the ORIGINAL transformer's call is counted by the same tracker in the original's
own venv (`original_driver.py estimate-transformer-memory`); counted so, the original gives its published A100
`max_memory_allocated` table within 0.3 % (see docs/memory_and_speed.md). `device_suite.py` measures the real
`max_memory_allocated` on a GPU.
"""

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Tuple


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import device_suite  # noqa: E402
from _live_bytes import LiveBytes, phase_peak  # noqa: E402, F401


GB = 1e9


def fmt_bytes(value: int) -> str:
    return f"{value / GB:.2f} GB" if value >= 0.1 * GB else f"{value / 1e6:.1f} MB"


def weight_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def build_fake_models(preset: str, dtype):
    """(transformer, vae, clip encoder, transformer config) of ``preset`` with fake weights in ``dtype`` (CPU)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from diffusers_ruyi import AutoencoderKLRuyiCausal3D, RuyiTransformer3DModel
    from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config, convert_vae_config

    transformer_config, vae_config, clip_config = device_suite.preset_original_configs(preset)
    config = convert_transformer_config(transformer_config)
    with device_suite.default_dtype_and_device(dtype, torch.device("cpu")):
        transformer = RuyiTransformer3DModel.from_config(config).eval()
        vae = AutoencoderKLRuyiCausal3D.from_config(convert_vae_config(vae_config)).eval()
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_config)).eval()
    return transformer, vae, clip, config


def measure_phases(args) -> Tuple[Dict[str, int], Dict[str, int], Dict[str, Any]]:
    """Weight bytes per model and activation peaks per phase, all under one `FakeTensorMode`."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from diffusers_ruyi.hooks import (
        RuyiSkipOffloadConfig,
        apply_ruyi_skip_offload,
        remove_ruyi_skip_offload,
        select_fp8_modules,
    )

    dtype = getattr(torch, args.dtype)
    with FakeTensorMode():
        transformer, vae, clip, config = build_fake_models(args.preset, dtype)
        ratio = vae.spatial_compression_ratio
        latent = (vae.num_latent_frames(args.frames), args.height // ratio, args.width // ratio)
        blocks = [weight_bytes(block) for block in transformer.blocks]
        weights = {
            "transformer": weight_bytes(transformer),
            "transformer_outside_blocks": weight_bytes(transformer) - sum(blocks),
            "transformer_largest_block": max(blocks),
            "vae": weight_bytes(vae),
            "clip": weight_bytes(clip),
        }
        size = clip.config.image_size
        peaks: Dict[str, int] = {"clip": phase_peak(lambda: clip(torch.randn(1, 3, size, size, dtype=dtype)))}
        video = torch.randn(1, 3, args.frames, args.height, args.width, dtype=dtype)
        # The pipeline encodes the mask video and the masked video, one after the other, with the config's tiling.
        peaks["vae_encode"] = phase_peak(lambda: vae.encode(video).latent_dist.sample())
        inputs = transformer_call_inputs(config, latent, dtype, clip_tokens=(size // clip.config.patch_size) ** 2)
        peaks["transformer"] = phase_peak(lambda: transformer(**inputs))
        # Long-skip offloading (the original's gpu_offload_steps): the parked activations go to the meta device,
        # which the tracker does not count, as it would not count the CPU's. The config refuses "meta" (real
        # activations could not come back from it); fake ones can, so it is set on the model's checked copy.
        for group in (5, 1):
            apply_ruyi_skip_offload(transformer, RuyiSkipOffloadConfig(group_size=group))
            transformer._skip_offload_config.offload_device = torch.device("meta")
            peaks[f"transformer_skip_offload_{group}"] = phase_peak(lambda: transformer(**inputs))
            if group == 1:
                # diffusers' feed-forward chunking on top: one sample of the CFG batch at a time.
                transformer.enable_forward_chunking()
                peaks["transformer_skip_offload_1_ff_chunked"] = phase_peak(lambda: transformer(**inputs))
                transformer.disable_forward_chunking()
            remove_ruyi_skip_offload(transformer)
        # The original's fp8 "strong" mode: the large Linear layers stored in float8 (1 byte per weight, biases
        # too), each cast to the compute dtype only while it runs: at most one such copy on top of the peak.
        modules = dict(transformer.named_modules())
        converted = [weight_bytes(modules[name]) for name in select_fp8_modules(transformer, "strong")]
        element = torch.finfo(dtype).bits // 8
        weights["transformer_fp8_strong"] = weights["transformer"] - sum(converted) + sum(converted) // element
        weights["fp8_largest_layer_in_compute_dtype"] = max(converted, default=0)
        latents = torch.randn(1, vae.config.latent_channels, *latent, dtype=dtype)
        saved = {k: getattr(vae, k) for k in ("use_tiling", "tiling_mode")}
        for mode in ("untiled", "original", "tiled"):
            if mode == "untiled":
                vae.disable_tiling()
            elif mode == "original":
                vae.enable_original_tiling()
            else:
                vae.enable_tiling(tile_sample_min_height=args.tile, tile_sample_min_width=args.tile)
            peaks[f"vae_decode_{mode}"] = phase_peak(lambda: vae.decode(latents).sample)
        for key, value in saved.items():
            setattr(vae, key, value)
    patch = config["patch_size"]
    info = {
        "latent": latent,
        "tokens": latent[0] * (latent[1] // patch) * (latent[2] // patch),
        "clip_tokens": (size // clip.config.patch_size) ** 2,
    }
    return weights, peaks, info


def transformer_call_inputs(config: Dict[str, Any], latent, dtype, clip_tokens: int) -> Dict[str, Any]:
    """One batched classifier-free-guidance call (batch 2), as the pipeline makes it."""
    import torch

    batch = 2
    return {
        "hidden_states": torch.randn(batch, config["out_channels"] // 2, *latent, dtype=dtype),
        "timestep": torch.full((batch,), 500.0, dtype=dtype),
        "encoder_hidden_states": torch.randn(batch, config["text_len"], config["cross_attention_dim"], dtype=dtype),
        "text_embedding_mask": torch.ones(batch, config["text_len"], dtype=torch.int64),
        "encoder_hidden_states_t5": torch.randn(
            batch, config["text_len_t5"], config["cross_attention_dim_t5"], dtype=dtype
        ),
        "text_embedding_mask_t5": torch.ones(batch, config["text_len_t5"], dtype=torch.int64),
        "image_meta_size": torch.ones(batch, 6, dtype=dtype),
        "style": torch.zeros(batch, dtype=torch.int64),
        "inpaint_latents": torch.randn(
            batch, config["in_channels"] - config["out_channels"] // 2, *latent, dtype=dtype
        ),
        "clip_encoder_hidden_states": torch.randn(batch, clip_tokens, config["projection_dim"], dtype=dtype),
        "clip_attention_mask": torch.ones(batch, config["n_query"], dtype=dtype),
        "return_dict": False,
    }


def compose(weights: Dict[str, int], peaks: Dict[str, int]) -> List[Dict[str, Any]]:
    """Peak bytes per memory setting: the weights it keeps on the GPU during each phase, plus that phase's peak."""
    w_t, w_v, w_c = weights["transformer"], weights["vae"], weights["clip"]
    # Block-level group offloading with CUDA streams: during a transformer call, the current group and the prefetched
    # next one plus the weights outside the blocks (one more group, on the GPU for the whole call); nothing between.
    w_t_group = weights["transformer_outside_blocks"] + 2 * weights["transformer_largest_block"]
    rows = []

    def row(name: str, phases: Dict[str, int], note: str) -> None:
        worst = max(phases, key=phases.get)
        rows.append({"setting": name, "peak": phases[worst], "phase": worst, "note": note})

    def model_offload(transformer_weights: int, transformer_phase: str, extra: int = 0) -> Dict[str, int]:
        # One model on the GPU at a time; the VAE decodes with the published config's own tiling.
        return {
            "clip": w_c + peaks["clip"],
            "vae_encode": w_v + peaks["vae_encode"],
            transformer_phase: transformer_weights + peaks[transformer_phase] + extra,
            "vae_decode_original": w_v + peaks["vae_decode_original"],
        }

    def group_offload(transformer_phase: str) -> Dict[str, int]:
        # VAE and CLIP resident; transformer weights only during its calls.
        return {
            "clip": w_v + w_c + peaks["clip"],
            "vae_encode": w_v + w_c + peaks["vae_encode"],
            transformer_phase: w_t_group + w_v + w_c + peaks[transformer_phase],
            "vae_decode_tiled": w_v + w_c + peaks["vae_decode_tiled"],
        }

    resident = w_t + w_v + w_c
    row(
        "all on the GPU (pipe.to('cuda'))",
        {phase: resident + peaks[phase] for phase in ("clip", "vae_encode", "transformer", "vae_decode_original")},
        "every weight resident, the published VAE tiling",
    )
    row(
        "enable_model_cpu_offload",
        model_offload(w_t, "transformer"),
        "the original's normal mode with gpu_offload_steps=0",
    )
    row(
        "enable_model_cpu_offload + skip offload (group_size=5)",
        model_offload(w_t, "transformer_skip_offload_5"),
        "the original predict_i2v.py default (gpu_offload_steps=5)",
    )
    row(
        "fp8 strong + enable_model_cpu_offload + skip offload (5)",
        model_offload(
            weights["transformer_fp8_strong"],
            "transformer_skip_offload_5",
            extra=weights["fp8_largest_layer_in_compute_dtype"],
        ),
        "large Linear weights in float8 (changes the numerics), no weight traffic per step",
    )
    row(
        "transformer group offload (block level, streams) + VAE tiling",
        group_offload("transformer"),
        "2 transformer blocks on the GPU during its calls, VAE and CLIP resident",
    )
    row(
        "transformer group offload (block level, streams) + skip offload (1) + VAE tiling",
        group_offload("transformer_skip_offload_1"),
        "the same with the long skips parked on the CPU one by one (ruyi-i2v --offload group --skip-offload 1): "
        "device_suite.py's group_offload row",
    )
    row(
        "the same + `transformer.enable_forward_chunking()`",
        group_offload("transformer_skip_offload_1_ff_chunked"),
        "diffusers' feed-forward chunking, one sample of the CFG batch at a time",
    )
    row(
        "VAE decode alone, untiled",
        {"vae_decode_untiled": w_v + peaks["vae_decode_untiled"]},
        "why the published config tiles",
    )
    return rows


def original_transformer_call(args, info) -> Dict[str, Any]:
    """The original transformer's weights and call peaks per `gpu_offload_steps` (0, 5, 1), counted in its own venv
    by `original_driver.py estimate-transformer-memory` with the same tracker."""
    import json
    import subprocess
    import tempfile

    transformer_config, _, _ = device_suite.preset_original_configs(args.preset)
    with tempfile.TemporaryDirectory() as folder:
        config_path = os.path.join(folder, "config.json")
        with open(config_path, "w") as f:
            json.dump(transformer_config, f)
        command = [args.reference_python, os.path.join(HERE, "original_driver.py"), "--reference", args.reference]
        command += ["estimate-transformer-memory", "--transformer-config", config_path, "--dtype", args.dtype]
        command += ["--latent", *map(str, info["latent"]), "--clip-tokens", str(info["clip_tokens"])]
        # The original runs in its own environment: a PYTHONPATH meant for this package must not shadow its packages.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"the original's estimate failed: {tail}")
    return json.loads(lines[-1][len("RESULT ") :])


def format_comparison(weights, peaks, original) -> str:
    """Transformer weights + one call (the model-offload peak), this package against the original, per
    `gpu_offload_steps`."""
    lines = [
        "| transformer weights + one call (model offload) | original | diffusers-ruyi | difference |",
        "|---|---|---|---|",
    ]
    phases = {"0": "transformer", "5": "transformer_skip_offload_5", "1": "transformer_skip_offload_1"}
    for steps, phase in phases.items():
        theirs = original["weights"] + original["peaks"][steps]
        ours = weights["transformer"] + peaks[phase]
        lines.append(
            f"| gpu_offload_steps={steps} | {theirs / 2**20:,.0f} MiB | {ours / 2**20:,.0f} MiB "
            f"| {(ours - theirs) / 2**20:+,.0f} MiB ({ours / theirs - 1:+.1%}) |"
        )
    lines += [
        "",
        f"(one call alone: original {', '.join(fmt_bytes(original['peaks'][s]) for s in phases)}; diffusers-ruyi "
        f"{', '.join(fmt_bytes(peaks[p]) for p in phases.values())}, for gpu_offload_steps 0, 5, 1; the original "
        "counted without the CUDA autocast of predict_i2v.py, which needs a GPU)",
    ]
    return "\n".join(lines)


def format_report(args, weights, peaks, info, rows) -> str:
    lines = [
        f"estimated peak GPU memory (live tensor bytes, fake tensors on the CPU), preset {args.preset}, {args.dtype}, "
        f"{args.frames}x{args.height}x{args.width}, latents {info['latent']}, {info['tokens']} video tokens, CFG batch 2",
        "",
        "| weights | bytes |",
        "|---|---|",
    ]
    lines += [f"| {name} | {fmt_bytes(value)} |" for name, value in weights.items()]
    lines += ["", "| phase | activation peak |", "|---|---|"]
    lines += [f"| {name} | {fmt_bytes(value)} |" for name, value in peaks.items()]
    lines += ["", "| setting | estimated peak | at | note |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {fmt_bytes(r['peak'])} | {r['phase']} | {r['note']} |" for r in rows]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=list(device_suite.PRESETS))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--frames", type=int, help="Default: the preset's (24 for full).")
    parser.add_argument("--height", type=int, help="Default: the preset's (512 for full).")
    parser.add_argument("--width", type=int, help="Default: the preset's (512 for full).")
    parser.add_argument("--tile", type=int, help="Tile size of the package's VAE tiling (default: the preset's).")
    parser.add_argument(
        "--reference",
        help="An IamCreateAI/Ruyi-Models checkout: also count the ORIGINAL transformer's call, by the same tracker.",
    )
    parser.add_argument(
        "--reference-python", default=sys.executable, help="The interpreter of the original's venv (diffusers 0.31)."
    )
    args = parser.parse_args(argv)
    preset = device_suite.PRESETS[args.preset]
    for key in ("frames", "height", "width", "tile"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    for key in ("frames", "height", "width", "tile"):
        if getattr(args, key) <= 0:
            parser.error(f"--{key} must be positive, got {getattr(args, key)}")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    started = time.perf_counter()
    weights, peaks, info = measure_phases(args)
    report = format_report(args, weights, peaks, info, compose(weights, peaks))
    if args.reference:
        report += "\n\n" + format_comparison(weights, peaks, original_transformer_call(args, info))
    print(report + f"\n\n(estimated in {time.perf_counter() - started:.0f} s)", flush=True)
    return report


if __name__ == "__main__":
    main()
