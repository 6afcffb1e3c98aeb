"""Load time and peak memory of the transformer from the ORIGINAL (published) layout, against the weights' size.

Writes a random checkpoint laid out like the published `transformer/` folder (the published config at its real
width, 16 heads x 176 = 2816, with fewer layers: >= 1 GB in bfloat16), then loads it in fresh processes:

- ours, in the file's dtype (bfloat16) and in float32: `RuyiTransformer3DModel.from_pretrained(root,
  subfolder="transformer", dtype=...)`, and `from_single_file` of its weights file (`config=root`);
- with ``--reference``, the original loader in the same run (`HunyuanTransformer3DModel.from_pretrained_2d` then
  `.to(dtype)`, as `predict_i2v.py` does), through `benchmarks/original_driver.py` and the original's own venv.

Prints a table: load seconds (and with every weight read once: diffusers maps a file whose dtype is the one asked for,
so its tensors are read on first use), peak RSS above the process's RSS before loading, that peak as a multiple of
the loaded weights' size, and the peak of anonymous memory alone (RSS also counts the file's pages while they are
mapped: clean page cache, which the kernel can drop, not memory the process allocated).

    python benchmarks/bench_loading.py                        # ours only, 4 layers (1.4 GB in bfloat16)
    python benchmarks/bench_loading.py --reference /path/to/Ruyi-Models --reference-python /path/to/venv/bin/python
"""

import argparse
import json
import pathlib
import sys
import tempfile
import threading
import time


ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _worker_protocol import print_result, run_worker  # noqa: E402


PUBLISHED_CONFIG = ROOT / "tests" / "fixtures" / "real_checkpoint" / "transformer_config.json"


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def write_checkpoint(root: pathlib.Path, num_layers: int) -> float:
    """Writes ``root/transformer`` (original config + random bf16 weights); returns the file size in MB."""
    import torch
    from safetensors.torch import save_file

    from diffusers_ruyi import RuyiTransformer3DModel
    from diffusers_ruyi.loaders.original_checkpoint import convert_transformer_config

    config = json.loads(PUBLISHED_CONFIG.read_text())
    config["num_layers"] = num_layers
    with torch.device("meta"):
        model = RuyiTransformer3DModel.from_config(convert_transformer_config(config))
    generator = torch.Generator().manual_seed(0)
    state_dict = {
        k: (torch.randn(v.shape, generator=generator) * 0.02).to(torch.bfloat16) for k, v in model.state_dict().items()
    }
    folder = root / "transformer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state_dict, str(folder / "diffusion_pytorch_model.safetensors"))
    return (folder / "diffusion_pytorch_model.safetensors").stat().st_size / 2**20


def _sample_peak(field: str, stop: threading.Event, peak: list) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], _rss_mb(field))
        time.sleep(0.002)


def worker(root: str, dtype_name: str, loader: str) -> None:
    import torch

    from diffusers_ruyi import RuyiTransformer3DModel

    before, anon_before = _rss_mb("VmRSS"), _rss_mb("RssAnon")
    anon_peak, stop = [anon_before], threading.Event()
    sampler = threading.Thread(target=_sample_peak, args=("RssAnon", stop, anon_peak), daemon=True)
    sampler.start()
    start = time.perf_counter()
    dtype = getattr(torch, dtype_name)
    if loader == "from_single_file":
        weights_file = pathlib.Path(root) / "transformer" / "diffusion_pytorch_model.safetensors"
        model = RuyiTransformer3DModel.from_single_file(weights_file, config=root, dtype=dtype)
    else:
        model = RuyiTransformer3DModel.from_pretrained(root, subfolder="transformer", dtype=dtype)
    seconds = time.perf_counter() - start
    # Weights mapped from the file are only read when first used: read each once, as a first forward pass would.
    for tensor in model.state_dict().values():
        tensor.sum()
    touched = time.perf_counter() - start
    stop.set()
    sampler.join()
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    print_result(
        {
            "seconds": seconds,
            "touched_seconds": touched,
            "peak_mb": _rss_mb("VmHWM") - before,
            "anon_peak_mb": anon_peak[0] - anon_before,
            "weights_mb": weights,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (even); 4 gives 1.4 GB in bf16")
    parser.add_argument("--checkpoint", help="reuse (or create) the random checkpoint here instead of a temp dir")
    parser.add_argument("--reference", help="a checkout of the original Ruyi-Models, to time its loader too")
    parser.add_argument("--reference-python", help="the interpreter of the original's venv")
    parser.add_argument("--worker", nargs=3, metavar=("ROOT", "DTYPE", "LOADER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    if args.reference and not args.reference_python:
        parser.error("--reference needs --reference-python (the original's own venv)")

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(args.checkpoint or tmp)
        if not (root / "transformer" / "diffusion_pytorch_model.safetensors").is_file():
            size = write_checkpoint(root, args.layers)
        else:
            size = (root / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size / 2**20
        print(f"checkpoint: {root / 'transformer'} ({size:.0f} MB, bfloat16)\n")
        rows = []
        for dtype in ("bfloat16", "float32"):
            for loader in ("from_pretrained", "from_single_file"):
                cmd = [sys.executable, __file__, "--worker", str(root), dtype, loader]
                rows.append((f"diffusers-ruyi `{loader}`", dtype, run_worker(cmd, what=f"{loader} ({dtype})")))
            if args.reference:
                cmd = [
                    args.reference_python,
                    str(ROOT / "benchmarks" / "original_driver.py"),
                    "--reference",
                    args.reference,
                    "load-transformer",
                    "--root",
                    str(root),
                    "--dtype",
                    dtype,
                ]
                rows.append(("original", dtype, run_worker(cmd, what=f"original loader ({dtype})")))

    print(
        "| loader | dtype | load (s) | load + read every weight (s) | weights (MB) | peak RSS above start (MB) "
        "| peak / weights | peak anonymous RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, dtype, r in rows:
        ratio = r["peak_mb"] / r["weights_mb"]
        touched = f"{r['touched_seconds']:.2f}" if "touched_seconds" in r else "-"
        anon = f"{r['anon_peak_mb']:.0f}" if "anon_peak_mb" in r else "-"
        print(
            f"| {name} | {dtype} | {r['seconds']:.2f} | {touched} | {r['weights_mb']:.0f} | {r['peak_mb']:.0f} "
            f"| {ratio:.2f}x | {anon} |"
        )


if __name__ == "__main__":
    main()
