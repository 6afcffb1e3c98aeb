"""Low-memory generation: CPU offload, long-skip offload, VAE tiling, and fp8 weight storage for the transformer.

    python examples/low_memory.py --model IamCreateAI/Ruyi-Mini-7B --image start.jpg --offload model --fp8
    python examples/low_memory.py --model IamCreateAI/Ruyi-Mini-7B --image start.jpg --offload sequential
    # Fits 12 GB (about 3 GB at 512x512x24, 9.6 GB at 768x768x120, estimated):
    python examples/low_memory.py --model IamCreateAI/Ruyi-Mini-7B --image start.jpg --offload group --skip-offload 1

See docs/memory_and_speed.md for the measured effect of each setting.
"""

import torch
from _example_common import example_parser, parse_args
from diffusers.utils import export_to_video, load_image

from diffusers_ruyi.hooks import RuyiSkipOffloadConfig, apply_ruyi_skip_offload
from diffusers_ruyi.tiny import load_pipeline


def main(argv=None):
    parser = example_parser(__doc__, "outputs/low_memory.mp4", num_frames=72)
    parser.add_argument("--base-resolution", type=int, default=512)
    parser.add_argument("--offload", choices=["none", "model", "sequential", "group"], default="model")
    parser.add_argument(
        "--skip-offload", type=int, default=0, help="Long skips parked on the CPU in groups of N (0: off)."
    )
    parser.add_argument(
        "--fp8",
        action="store_true",
        help="Store the transformer's weights in float8 with diffusers' layerwise casting (computed in bf16 on a GPU, "
        "float32 on the CPU); for the original's fp8 modes see apply_fp8_mode.",
    )
    parser.add_argument("--tile", type=int, default=256, help="VAE tile size in pixels.")
    args = parse_args(parser, argv)
    on_gpu = torch.cuda.is_available()
    if args.offload != "none" and not on_gpu:
        parser.error(f"--offload {args.offload} needs a CUDA GPU; use --offload none on a CPU")
    if args.skip_offload < 0:
        parser.error(f"--skip-offload must be >= 0, got {args.skip_offload}")

    compute_dtype = torch.bfloat16 if on_gpu else torch.float32
    pipe = load_pipeline(args.model, dtype=compute_dtype)
    # Decode (and encode) in overlapping spatial tiles: the VAE's activation memory no longer grows with the size.
    pipe.vae.enable_tiling(tile_sample_min_height=args.tile, tile_sample_min_width=args.tile)
    if args.fp8:
        # Weights of Linear/Conv layers are stored in fp8 and up-cast layer by layer during the forward pass.
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
    if args.skip_offload:
        # The long-skip activations wait on the CPU (the original's gpu_offload_steps); the video is the same.
        apply_ruyi_skip_offload(pipe.transformer, RuyiSkipOffloadConfig(group_size=args.skip_offload))
    if args.offload == "model":
        pipe.enable_model_cpu_offload()  # one whole model on the GPU at a time
    elif args.offload == "sequential":
        pipe.enable_sequential_cpu_offload()  # one layer at a time: least memory, slowest
    elif args.offload == "group":
        # The transformer's blocks one at a time, the next one prefetched on a CUDA stream; the rest stays on the GPU.
        pipe.enable_group_offload(
            onload_device=torch.device("cuda"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
            exclude_modules=["vae", "image_encoder", "control_embeddings"],
        )
    else:
        pipe.to("cuda" if on_gpu else "cpu")

    video = pipe(
        image=load_image(args.image),
        num_frames=args.num_frames,
        base_resolution=args.base_resolution,
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(42),
    ).frames[0]
    export_to_video(video, args.output, fps=24)
    return args.output


if __name__ == "__main__":
    print(main())
