"""Image to video: a start frame becomes a video.

python examples/image_to_video.py --model IamCreateAI/Ruyi-Mini-7B --image start.jpg --output ruyi.mp4
python examples/image_to_video.py --model tiny-random --num-frames 8 --steps 2   # offline smoke run
"""

import torch
from _example_common import example_parser, parse_args
from diffusers.utils import export_to_video, load_image

from diffusers_ruyi.tiny import load_pipeline


def main(argv=None):
    parser = example_parser(__doc__, "outputs/image_to_video.mp4")
    parser.add_argument("--base-resolution", type=int, default=512)
    args = parse_args(parser, argv)

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
