"""LoRA inference: load one or more LoRAs (diffusers or original Ruyi format) and generate.

python examples/lora_inference.py --model IamCreateAI/Ruyi-Mini-7B --lora my_lora.safetensors --lora-weight 0.8

Offline smoke run: the test suite's original-format LoRA was made for the tiny random model's architecture.

python examples/lora_inference.py --model tiny-random --lora tests/fixtures/lora/ruyi_lora_original.safetensors \
    --num-frames 8 --steps 2 --base-resolution 128
"""

import torch
from _example_common import example_parser, parse_args
from diffusers.utils import export_to_video, load_image

from diffusers_ruyi.tiny import load_pipeline


def main(argv=None):
    parser = example_parser(__doc__, "outputs/lora.mp4")
    parser.add_argument("--lora", required=True, help="A LoRA file: diffusers/PEFT or the original Ruyi format.")
    parser.add_argument("--lora-weight", type=float, default=1.0)
    parser.add_argument(
        "--fuse",
        action="store_true",
        help="Merge the LoRA into the weights as the original's merge_lora does (faster inference; in bfloat16 the "
        "original's weights bit for bit) and drop the adapter layers.",
    )
    parser.add_argument("--base-resolution", type=int, default=512)
    args = parse_args(parser, argv)

    on_gpu = torch.cuda.is_available()
    pipe = load_pipeline(args.model, dtype=torch.bfloat16 if on_gpu else torch.float32)
    pipe.load_lora_weights(args.lora, adapter_name="style")
    if args.fuse:
        pipe.fuse_lora(lora_scale=args.lora_weight)
        pipe.unload_lora_weights()  # keeps the merged weights, frees the adapter
    else:
        pipe.set_adapters(["style"], [args.lora_weight])
    if on_gpu:
        pipe.enable_model_cpu_offload()

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
