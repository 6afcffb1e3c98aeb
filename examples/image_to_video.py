"""Image to video: a start frame becomes a video.

python examples/image_to_video.py --model IamCreateAI/Ruyi-Mini-7B --image start.jpg --output ruyi.mp4
python examples/image_to_video.py --model tiny-random --num-frames 8 --steps 2   # offline smoke run
"""

import argparse
import os

import torch
from diffusers.utils import export_to_video, load_image

from diffusers_ruyi.tiny import load_pipeline


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="IamCreateAI/Ruyi-Mini-7B")
    parser.add_argument("--image", default="examples/assets/start.png")
    parser.add_argument("--output", default="outputs/image_to_video.mp4")
    parser.add_argument("--num-frames", type=int, default=48)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--base-resolution", type=int, default=512)
    args = parser.parse_args(argv)
    # Create the output folder now: a bad --output then fails before the model is loaded, not after generating.
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)

    on_gpu = torch.cuda.is_available()
    pipe = load_pipeline(args.model, dtype=torch.bfloat16 if on_gpu else torch.float32)
    if on_gpu:
        pipe.enable_model_cpu_offload()

    video = pipe(
        image=load_image(args.image),
        num_frames=args.num_frames,
        base_resolution=args.base_resolution,  # the size follows the image's aspect ratio
        num_inference_steps=args.steps,
        motion="auto",
        camera_direction="auto",
        generator=torch.Generator("cpu").manual_seed(42),
    ).frames[0]
    export_to_video(video, args.output, fps=24)
    return args.output


if __name__ == "__main__":
    print(main())
