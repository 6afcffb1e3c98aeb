"""Load time and peak memory of the transformer from the ORIGINAL (published) layout, against the weights' size.

Writes a random checkpoint laid out like the published `transformer/` folder (the published config at its real
width, 16 heads x 176 = 2816, with fewer layers: >= 1 GB in bfloat16), then loads it in fresh processes:

- ours, in the file's dtype (bfloat16) and in float32: `RuyiTransformer3DModel.from_pretrained(root,
  subfolder="transformer", dtype=...)`;
- with ``--reference``, the original loader in the same run (`HunyuanTransformer3DModel.from_pretrained_2d` then
  `.to(dtype)`, as `predict_i2v.py` does), through `benchmarks/original_driver.py` and the original's own venv.

Prints a table: load seconds, peak RSS above the process's RSS before loading, and that peak as a multiple of the
loaded weights' size.

    python benchmarks/bench_loading.py                        # ours only, 4 layers (1.4 GB in bfloat16)
    python benchmarks/bench_loading.py --reference /path/to/Ruyi-Models --reference-python /path/to/venv/bin/python
"""

import argparse
import json
import pathlib
import sys
import tempfile
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


def worker(root: str, dtype_name: str) -> None:
    import torch

    from diffusers_ruyi import RuyiTransformer3DModel

    before = _rss_mb("VmRSS")
    start = time.perf_counter()
    model = RuyiTransformer3DModel.from_pretrained(root, subfolder="transformer", dtype=getattr(torch, dtype_name))
    seconds = time.perf_counter() - start
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    print_result({"seconds": seconds, "peak_mb": _rss_mb("VmHWM") - before, "weights_mb": weights})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (even); 4 gives 1.4 GB in bf16")
    parser.add_argument("--checkpoint", help="reuse (or create) the random checkpoint here instead of a temp dir")
    parser.add_argument("--reference", help="a checkout of the original Ruyi-Models, to time its loader too")
    parser.add_argument("--reference-python", help="the interpreter of the original's venv")
    parser.add_argument("--worker", nargs=2, metavar=("ROOT", "DTYPE"), help=argparse.SUPPRESS)
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
            cmd = [sys.executable, __file__, "--worker", str(root), dtype]
            rows.append(("diffusers-ruyi", dtype, run_worker(cmd, what=f"loader ({dtype})")))
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

    print("| loader | dtype | load (s) | weights (MB) | peak RSS above start (MB) | peak / weights |")
    print("|---|---|---|---|---|---|")
    for name, dtype, r in rows:
        ratio = r["peak_mb"] / r["weights_mb"]
        print(f"| {name} | {dtype} | {r['seconds']:.2f} | {r['weights_mb']:.0f} | {r['peak_mb']:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
