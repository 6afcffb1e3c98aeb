"""The transformer's inference RoPE (`apply_rotary_emb_lean`) against diffusers' `apply_rotary_emb`, same run.

    python benchmarks/bench_rope.py                      # medium and full-size query shapes, float32 and bfloat16
    python benchmarks/bench_rope.py --device cuda        # the same on a GPU (half precision read directly there)

Per shape and dtype: the median time of one call (the two implementations alternate), the ratio, the peak of live tensor bytes during one call (the
`_live_bytes` tracker that `estimate_memory.py` uses, CPU only) and whether the outputs are equal bit for bit. The
shapes are `(batch, tokens, heads, head_dim)` queries as the processor rotates them: the medium benchmark model's
(2 x 1,024 tokens, 8 x 64) and the published model's at 512x512x24 with CFG (2 x 6,144 tokens, 16 x 176), which is
above the chunk size, so the lean step also runs in chunks there. The tables have pairs that differ, as a check.
"""

import argparse
import os
import statistics
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

SHAPES = {
    "tiny": (2, 48, 2, 8),
    "medium": (2, 1024, 8, 64),
    "full": (2, 6144, 16, 176),
}


def measure(shape, dtype, device, repeats: int):
    import torch
    from _live_bytes import phase_peak
    from diffusers.models.embeddings import apply_rotary_emb

    from diffusers_ruyi.models.transformer_ruyi import apply_rotary_emb_lean

    generator = torch.Generator().manual_seed(0)
    _, tokens, _, head_dim = shape
    x = torch.randn(shape, generator=generator).to(device, dtype)
    tables = tuple(torch.randn(tokens, head_dim, generator=generator).to(device) for _ in range(2))
    calls = {
        "diffusers": lambda: apply_rotary_emb(x, tables, sequence_dim=1),
        "diffusers-ruyi": lambda: apply_rotary_emb_lean(x, tables),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in calls}
    with torch.no_grad():
        outputs = {name: call() for name, call in calls.items()}
        for _ in range(3):  # warm-up: allocator, thread pool
            for call in calls.values():
                call()
        for _ in range(repeats):  # interleaved, so that a drifting machine load affects both alike
            for name, call in calls.items():
                sync()
                start = time.perf_counter()
                call()
                sync()
                times[name].append(time.perf_counter() - start)
        peaks = {name: phase_peak(call) if device.type == "cpu" else None for name, call in calls.items()}
    rows = {name: (statistics.median(times[name]), peaks[name]) for name in calls}
    equal = torch.equal(outputs["diffusers"], outputs["diffusers-ruyi"])
    return rows, equal


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="medium,full", help=f"Comma-separated subset of {sorted(SHAPES)}.")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="Comma-separated torch dtypes.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv)
    import torch

    device = torch.device(args.device)
    print(f"RoPE of one query, {device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print()
    print("| shape (batch, tokens, heads, head_dim) | dtype | implementation | ms | speed-up | peak MB | equal |")
    print("|---|---|---|---|---|---|---|")
    # The first measurement in a process runs slow (4-6x at the medium shape on this CPU), whatever comes first.
    measure(SHAPES["medium"], torch.float32, device, 3)
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        for dtype_name in args.dtypes.split(","):
            rows, equal = measure(shape, getattr(torch, dtype_name), device, args.repeats)
            base = rows["diffusers"][0]
            for name, (seconds, peak) in rows.items():
                peak_text = "-" if peak is None else f"{peak / 2**20:.1f}"
                print(
                    f"| {shape_name} {shape} | {dtype_name} | {name} | {seconds * 1e3:.2f} | {base / seconds:.2f}x | "
                    f"{peak_text} | {'yes' if equal else 'NO'} |"
                )


if __name__ == "__main__":
    main()
