"""Peak memory of long videos: `ruyi-i2v` in 1 segment, in 3 segments, and the 3 segments' length in one call.

    python benchmarks/bench_long_video.py                       # tiny and medium random models, CPU
    python benchmarks/bench_long_video.py --models tiny --segment-frames 32 --height 256 --width 256
    python benchmarks/bench_long_video.py --trace 8 --segment-frames 16 --height 128 --width 128 --steps 1

Each run is the CLI in a fresh subprocess (peak RSS is per process; on a GPU, also CUDA's max_memory_allocated).
A long video writes each segment to the mp4 as it is made and keeps only the last frames as context, so its peak
should be that of one segment, whatever the number of segments; one call of the same total length is the contrast.
Prints a markdown table. `--trace N` instead makes one video of N segments with the tiny model in this process and
prints the peak and current RSS after each segment.
"""

import argparse
import os
import resource
import sys
import tempfile
import time

from _worker_protocol import print_result, run_worker


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMAGE = os.path.join(ROOT, "examples", "assets", "start.png")


def worker(args) -> None:
    """Runs the CLI in this process and prints a RESULT line with its peak memory."""
    from diffusers_ruyi.cli import main

    argv = [
        "--model", args.model, "--image", IMAGE, "--output", args.output, "--overwrite", "--quiet",
        "--num-frames", str(args.frames), "--segment-frames", str(args.segment), "--context-frames", str(args.context),
        "--height", str(args.height), "--width", str(args.width), "--steps", str(args.steps),
    ]  # fmt: skip
    start = time.perf_counter()
    code = main(argv)
    if code:
        sys.exit(code)
    peak_cuda = None
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            peak_cuda = torch.cuda.max_memory_allocated() / 2**20
    print_result(
        {
            "seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_cuda_mb": peak_cuda,
        }
    )


def trace(args) -> None:
    """Peak and current RSS after each of `args.trace` segments (tiny random model, this process)."""
    import psutil
    import torch
    from PIL import Image

    from diffusers_ruyi.long_video import iter_video_segments, plan_segments
    from diffusers_ruyi.tiny import build_tiny_random_pipeline

    pipe = build_tiny_random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    s, k = args.segment_frames, args.context_frames
    plan = plan_segments(s + (args.trace - 1) * (s - k), k, s)
    process = psutil.Process()
    print(f"tiny, {args.height}x{args.width}, {args.steps} steps, segments of {s} frames, {k} context frames\n")
    print("| segment | frames so far | peak RSS (MB) | RSS now (MB) |")
    print("|---|---|---|---|")
    done = 0
    segments = iter_video_segments(
        pipe,
        plan,
        args.height,
        args.width,
        image=Image.open(IMAGE),
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(0),
    )
    for segment, new in segments:
        done += len(new)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {segment.index + 1} | {done} | {peak:.0f} | {process.memory_info().rss / 2**20:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "medium"], choices=["tiny", "medium"])
    parser.add_argument("--segment-frames", type=int, default=32)
    parser.add_argument("--context-frames", type=int, default=5)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--trace", type=int, help="Trace the RSS over this many segments instead.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--segment", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--context", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.trace:
        trace(args)
        return

    s, k = args.segment_frames, args.context_frames
    three = s + 2 * (s - k)
    one_call = -(-three // 8) * 8
    rows = [
        ("1 segment", s, s),
        ("3 segments", three, s),
        ("1 call of the 3 segments' length", one_call, one_call),
    ]
    print(f"{args.height}x{args.width}, {args.steps} steps, {k} context frames\n")
    print("| model | run | frames | peak RSS (MB) | peak CUDA (MB) | seconds |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models:
            model = "tiny-random"
            if kind == "medium":
                sys.path.insert(0, HERE)
                from bench_pipeline import make_medium_checkpoint

                model = make_medium_checkpoint(argparse.Namespace(reference=None), tmp)
            for name, frames, segment in rows:
                if segment > 120:
                    continue  # the CLI makes at most 120 frames in one call
                cmd = [
                    sys.executable, os.path.abspath(__file__), "--worker", "--model", model, "--frames", str(frames),
                    "--segment", str(segment), "--context", str(k), "--height", str(args.height),
                    "--width", str(args.width), "--steps", str(args.steps), "--output", os.path.join(tmp, "out.mp4"),
                ]  # fmt: skip
                r = run_worker(cmd, env={**os.environ, "PYTHONPATH": ROOT}, what=f"{kind} {name}")
                cuda = f"{r['peak_cuda_mb']:.0f}" if r["peak_cuda_mb"] is not None else "-"
                print(f"| {kind} | {name} | {frames} | {r['peak_rss_mb']:.0f} | {cuda} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
