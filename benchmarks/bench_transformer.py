"""Forward latency and peak memory of `RuyiTransformer3DModel` versus the original Ruyi implementation.

Both implementations load the SAME random weights: this script creates them with `RuyiTransformer3DModel`, writes them
in the ORIGINAL hub layout (`config.json` of `HunyuanTransformer3DModel` + safetensors with the original keys), and
each implementation loads that folder in a fresh subprocess (ours through the transparent original-layout loader, the
original through its own class, importing it from the checkout you pass with `--reference`; nothing of it is copied
here). Latency: median of `--repeats` forwards after `--warmup`, best of `--rounds` alternating fresh processes.

    python benchmarks/bench_transformer.py --reference /path/to/Ruyi-Models --reference-python /path/to/venv/bin/python

Without `--reference` only this implementation is measured. Memory is measured in one more fresh process per
implementation: after a warm-up forward, the growth of the peak resident set (VmHWM) over the resident size right
before one forward, with glibc told to mmap every allocation above 64 KiB and to return freed memory at once, so it
counts the activations and workspace of a forward rather than weights, libraries or the allocator's cache. It needs
Linux `/proc` (elsewhere only the process's total peak is shown). The last column compares the outputs.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import _worker_protocol


CONFIGS = {
    # The golden tiny checkpoint's geometry, with the golden forward's input shapes.
    "tiny": {
        "model": "tiny",  # diffusers_ruyi.tiny's transformer, read when the driver runs (see `_model_config`)
        "batch": 2,
        "latent": (4, 8, 12),
        "clip_tokens": 16,
    },
    # A few seconds per forward on 2 CPU cores: 2 x 1024 video tokens, width 512. The CLIP width differs from the
    # cross-attention width (kv projection) and 64 CLIP tokens make the resampler resize its positions, as in Ruyi.
    "medium": {
        "model": {
            "num_attention_heads": 8,
            "attention_head_dim": 64,
            "in_channels": 48,
            "out_channels": 32,
            "patch_size": 2,
            "n_query": 16,
            "projection_dim": 256,
            "activation_fn": "gelu-approximate",
            "sample_size": 32,
            "num_layers": 8,
            "mlp_ratio": 4.0,
            "cross_attention_dim": 512,
            "cross_attention_dim_t5": 512,
            "pooled_projection_dim": 256,
            "text_len": 32,
            "text_len_t5": 64,
        },
        "batch": 2,
        "latent": (4, 32, 32),
        "clip_tokens": 64,
    },
}

# Ruyi's `config/default.yaml` extras the original loader applies on top of config.json.
RUYI_EXTRAS = {"basic_block_type": "basic", "after_norm": False, "time_position_encoding": True}


# ----------------------------------------------------------------------------------------------------------------
# Memory probes (Linux /proc; resetting the peak needs kernel >= 4.0)
# ----------------------------------------------------------------------------------------------------------------


def _proc_status_mb(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------------------------------------------
# Worker (runs in a fresh interpreter per implementation and config)
# ----------------------------------------------------------------------------------------------------------------


def _import_original(reference: str):
    """Imports the original transformer class from the user's checkout, with shims for newer environments."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        # setuptools >= 80 dropped pkg_resources; the original only uses `parse_version` from it.
        import types

        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
    sys.path.insert(0, os.path.abspath(reference))
    from ruyi.models.transformer3d import HunyuanTransformer3DModel

    return HunyuanTransformer3DModel


def _original_rope(reference_model, height: int, width: int):
    """RoPE exactly as the original pipeline builds it (its own crop-region helper + diffusers' 2D RoPE)."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from ruyi.pipeline.pipeline_ruyi_inpaint import get_resize_crop_region_for_grid

    patch_size = reference_model.config.patch_size
    grid = (height // patch_size, width // patch_size)
    crops = get_resize_crop_region_for_grid(grid, 512 // 8 // patch_size)
    return get_2d_rotary_pos_embed(reference_model.inner_dim // reference_model.num_heads, crops, grid)


def run_worker(args) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.impl == "ours":
        from diffusers_ruyi.models.transformer_ruyi import RuyiTransformer3DModel

        model = RuyiTransformer3DModel.from_pretrained(args.folder)
    else:
        original_cls = _import_original(args.reference)
        with open(os.path.join(args.folder, "config.json")) as f:
            config = json.load(f)
        model = original_cls.from_config(config, **RUYI_EXTRAS)
        model.load_state_dict(load_file(os.path.join(args.folder, "diffusion_pytorch_model.safetensors")), strict=True)
    model.eval()

    inputs = load_file(args.inputs)
    kwargs = dict(inputs)  # `make_inputs` writes the forward's arguments and nothing else
    if args.impl == "original":
        # The original pipeline computes this once per video, outside the transformer.
        height, width = inputs["hidden_states"].shape[-2:]
        kwargs["image_rotary_emb"] = _original_rope(model, height, width)

    import gc

    result = {"torch": torch.__version__}
    with torch.inference_mode():
        if args.mode == "latency":
            times, cpu_times = [], []
            for step in range(args.warmup + args.repeats):
                start, cpu_start = time.perf_counter(), time.process_time()
                output = model(**kwargs, return_dict=False)[0]
                elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
                if step >= args.warmup:
                    times.append(elapsed)
                    cpu_times.append(cpu_elapsed)
            result.update(
                median_ms=1000 * statistics.median(times),
                min_ms=1000 * min(times),
                cpu_ms=1000 * statistics.median(cpu_times),
            )
        else:
            # Warm up first (lazy imports, kernel caches), then measure one forward. The driver runs this mode with
            # a fixed small mmap threshold, so freed tensors go back to the OS and RSS follows the live tensors.
            for _ in range(max(1, args.warmup)):
                model(**kwargs, return_dict=False)
            gc.collect()
            rss_before = _proc_status_mb("VmRSS")
            if rss_before is not None and _reset_peak_rss():
                output = model(**kwargs, return_dict=False)[0]
                peak_total = _proc_status_mb("VmHWM")
                result.update(peak_forward_mb=peak_total - rss_before, peak_total_mb=peak_total)
            else:
                output = model(**kwargs, return_dict=False)[0]
                result.update(peak_forward_mb=float("nan"), peak_total_mb=_max_rss_mb())
    save_file({"output": output.contiguous()}, args.output)
    _worker_protocol.print_result(result)


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def _temporal_table(dim: int, length: int = 512):
    """The fixed `t_embed.pe` buffer the original stores per block (same formula), so its strict load succeeds."""
    from diffusers_ruyi.models.transformer_ruyi import _temporal_sincos_embedding

    return _temporal_sincos_embedding(length, dim, "cpu").unsqueeze(0)


def _model_config(spec: dict) -> dict:
    """`spec["model"]`; "tiny" is the golden tiny checkpoint's transformer, as `diffusers_ruyi.tiny` defines it (read
    here, not at import: the original's worker imports this file in an environment without this package)."""
    if spec["model"] != "tiny":
        return spec["model"]
    from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config
    from diffusers_ruyi.tiny import TINY_TRANSFORMER_CONFIG

    return convert_transformer_config(TINY_TRANSFORMER_CONFIG)


def make_checkpoint(spec: dict, folder: str, seed: int) -> None:
    """Random weights written in the ORIGINAL layout: `HunyuanTransformer3DModel` config.json + original keys."""
    import torch
    from safetensors.torch import save_file

    from diffusers_ruyi.models.transformer_ruyi import RuyiTransformer3DModel

    torch.manual_seed(seed)
    model = RuyiTransformer3DModel(**spec["model"])
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    pe = _temporal_table(model.inner_dim)
    for index in range(spec["model"]["num_layers"]):
        state_dict[f"blocks.{index}.t_embed.pe"] = pe.clone()
    save_file(state_dict, os.path.join(folder, "diffusion_pytorch_model.safetensors"))

    config = dict(spec["model"])
    config.update(
        _class_name="HunyuanTransformer3DModel",
        hidden_size=model.inner_dim,
        learn_sigma=True,
        norm_type="layer_norm",
    )
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def make_inputs(spec: dict, path: str, seed: int) -> None:
    """Inputs shaped as the Ruyi pipeline builds them for one CFG batch (negative first)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    cfg = spec["model"]
    batch = spec["batch"]
    frames, height, width = spec["latent"]

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    text_mask = torch.ones(batch, cfg["text_len"], dtype=torch.int64)
    text_mask[:, cfg["text_len"] // 2 :] = 0
    text_mask_t5 = torch.ones(batch, cfg["text_len_t5"], dtype=torch.int64)
    text_mask_t5[:, (3 * cfg["text_len_t5"]) // 4 :] = 0
    clip_mask = torch.ones(batch, cfg["n_query"])
    clip_mask[0] = 0
    inputs = {
        "hidden_states": randn(batch, 16, frames, height, width),
        "timestep": torch.tensor([999.0, 500.0][:batch] + [250.0] * max(0, batch - 2)),
        "encoder_hidden_states": randn(batch, cfg["text_len"], cfg["cross_attention_dim"]),
        "text_embedding_mask": text_mask,
        "encoder_hidden_states_t5": randn(batch, cfg["text_len_t5"], cfg["cross_attention_dim_t5"]),
        "text_embedding_mask_t5": text_mask_t5,
        "image_meta_size": torch.tensor([[1024.0, 1024.0, height * 8.0, width * 8.0, 0.0, 0.0]] * batch),
        "style": torch.zeros(batch, dtype=torch.int64),
        "inpaint_latents": randn(batch, cfg["in_channels"] - 16, frames, height, width),
        "clip_encoder_hidden_states": randn(batch, spec["clip_tokens"], cfg["projection_dim"]),
        "clip_attention_mask": clip_mask,
    }
    save_file(inputs, path)


def _run_one(python: str, impl: str, mode: str, folder: str, inputs: str, output: str, args) -> dict:
    command = [python, os.path.abspath(__file__), "--worker", impl, "--mode", mode, "--folder", folder]
    command += ["--inputs", inputs, "--output", output, "--repeats", str(args.repeats)]
    command += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = dict(os.environ)
    if mode == "memory":
        # glibc: serve every allocation above 64 KiB with its own mmap and return freed memory at once, so the peak
        # resident size reflects the tensors a forward keeps alive rather than the allocator's cache.
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    if impl == "original":
        command += ["--reference", args.reference]
        # The original runs in its own environment; a PYTHONPATH meant for ours must not shadow its packages.
        env.pop("PYTHONPATH", None)
    else:
        # Our worker must import this checkout, whatever the current directory is.
        repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([repo_root] + [p for p in [env.get("PYTHONPATH")] if p])
    return _worker_protocol.run_worker(command, env=env, what=f"{impl} worker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="Path to an original Ruyi-Models checkout (compared when given).")
    parser.add_argument(
        "--reference-python",
        default=sys.executable,
        help="Interpreter of an environment that can run the original (default: this interpreter).",
    )
    parser.add_argument(
        "--ours-python",
        default=sys.executable,
        help="Interpreter for this implementation's worker (default: this interpreter); e.g. the reference one, to "
        "compare both on the same torch build. It gets this checkout and the current PYTHONPATH on its path.",
    )
    parser.add_argument("--configs", default="tiny,medium", help=f"Comma-separated subset of {sorted(CONFIGS)}.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed forwards per implementation (median shown).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed forwards before timing.")
    parser.add_argument(
        "--rounds", type=int, default=2, help="Fresh worker runs per implementation, alternating; best median kept."
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads in every worker.")
    parser.add_argument("--seed", type=int, default=0)
    # Internal: worker mode.
    parser.add_argument("--worker", choices=["ours", "original"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["latency", "memory"], default="latency", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        args.impl = args.worker
        run_worker(args)
        return

    from safetensors.torch import load_file

    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"Unknown configs {unknown}; choose from {sorted(CONFIGS)}.")

    rows = []
    for name in names:
        spec = {**CONFIGS[name], "model": _model_config(CONFIGS[name])}
        with tempfile.TemporaryDirectory(prefix=f"ruyi-bench-{name}-") as tmp:
            make_checkpoint(spec, tmp, args.seed)
            inputs = os.path.join(tmp, "inputs.safetensors")
            make_inputs(spec, inputs, args.seed + 1)
            impls = [("original", args.reference_python)] if args.reference else []
            impls.append(("ours", args.ours_python))
            results, outputs = {}, {}
            for round_index in range(args.rounds):
                # Alternate the order so a burst of background load does not always hit the same implementation.
                for impl, python in impls if round_index % 2 == 0 else impls[::-1]:
                    print(f"[{name}] round {round_index + 1}: timing {impl} ...", file=sys.stderr, flush=True)
                    output = os.path.join(tmp, f"output_{impl}.safetensors")
                    result = _run_one(python, impl, "latency", tmp, inputs, output, args)
                    previous = results.get(impl)
                    if previous is not None:
                        # Best over rounds: the least disturbed by other processes.
                        result["median_ms"] = min(result["median_ms"], previous["median_ms"])
                        result["min_ms"] = min(result["min_ms"], previous["min_ms"])
                        result["cpu_ms"] = min(result["cpu_ms"], previous["cpu_ms"])
                    results[impl] = result
            for impl, python in impls:
                print(f"[{name}] measuring memory of {impl} ...", file=sys.stderr, flush=True)
                output = os.path.join(tmp, f"output_{impl}.safetensors")
                results[impl].update(_run_one(python, impl, "memory", tmp, inputs, output, args))
                outputs[impl] = load_file(output)["output"]
            for impl, result in results.items():
                row = {"config": name, "impl": impl, **result}
                if "original" in results:
                    row["ratio"] = result["median_ms"] / results["original"]["median_ms"]
                    row["cpu_ratio"] = result["cpu_ms"] / results["original"]["cpu_ms"]
                    row["max_abs_diff"] = (outputs[impl] - outputs["original"]).abs().max().item()
                rows.append(row)

    print()
    print(
        f"torch threads: {args.threads}; latency = median of {args.repeats} forwards after {args.warmup} warmup, "
        f"best of {args.rounds} alternating rounds (fresh process each); CPU time = process time of a forward"
    )
    print()
    columns = [
        "config",
        "impl",
        "latency ms (median)",
        "CPU time ms (median)",
        "peak forward memory MB",
        "peak RSS MB",
        "ratio vs original (latency / CPU time)",
        "max abs diff vs original",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        ratio = f"{row['ratio']:.2f} / {row['cpu_ratio']:.2f}" if "ratio" in row else "-"
        diff = f"{row['max_abs_diff']:.2e}" if "max_abs_diff" in row else "-"
        print(
            f"| {row['config']} | {row['impl']} (torch {row['torch']}) | {row['median_ms']:.1f} | {row['cpu_ms']:.1f} | "
            f"{row['peak_forward_mb']:.1f} | {row['peak_total_mb']:.1f} | {ratio} | {diff} |"
        )


if __name__ == "__main__":
    main()
