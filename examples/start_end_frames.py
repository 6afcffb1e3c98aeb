"""Start and end frame: the video moves from one image to the other.

python examples/start_end_frames.py --model IamCreateAI/Ruyi-Mini-7B --image a.jpg --last-image b.jpg
"""

import torch
from _example_common import example_parser, parse_args
from diffusers.utils import export_to_video, load_image

from diffusers_ruyi.tiny import load_pipeline


def main(argv=None):
    parser = example_parser(__doc__, "outputs/start_end.mp4")
    parser.add_argument("--last-image", default="examples/assets/end.png")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=672)
    args = parse_args(parser, argv)

    on_gpu = torch.cuda.is_available()
    pipe = load_pipeline(args.model, dtype=torch.bfloat16 if on_gpu else torch.float32)
    if on_gpu:
        pipe.enable_model_cpu_offload()

    video = pipe(
        image=load_image(args.image),
        last_image=load_image(args.last_image),  # resized to the same (height, width) as the start frame
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(7),
    ).frames[0]
    export_to_video(video, args.output, fps=24)
    return args.output


if __name__ == "__main__":
    print(main())
