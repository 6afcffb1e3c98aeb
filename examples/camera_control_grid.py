"""Camera control grid: one video per camera direction (and motion amplitude), tiled side by side in one mp4.

python examples/camera_control_grid.py --model IamCreateAI/Ruyi-Mini-7B --image start.jpg
"""

import numpy as np
import torch
from _example_common import example_parser, parse_args
from diffusers.utils import export_to_video, load_image

from diffusers_ruyi.tiny import load_pipeline


def main(argv=None):
    parser = example_parser(__doc__, "outputs/camera_grid.mp4", num_frames=24)
    parser.add_argument("--cameras", nargs="+", default=["static", "left", "right", "up", "down"])
    parser.add_argument("--motions", nargs="+", default=["1", "3"])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=448)
    args = parse_args(parser, argv)

    on_gpu = torch.cuda.is_available()
    pipe = load_pipeline(args.model, dtype=torch.bfloat16 if on_gpu else torch.float32)
    if on_gpu:
        pipe.enable_model_cpu_offload()
    pipe.set_progress_bar_config(disable=True)
    image = load_image(args.image)

    rows = []
    for motion in args.motions:
        row = []
        for camera in args.cameras:
            frames = pipe(
                image=image,
                num_frames=args.num_frames,
                height=args.height,
                width=args.width,
                num_inference_steps=args.steps,
                motion=motion,
                camera_direction=camera,
                generator=torch.Generator("cpu").manual_seed(42),  # same noise: only the control changes
                output_type="np",
            ).frames[0]
            row.append(frames)
        rows.append(np.concatenate(row, axis=2))  # side by side: (frames, H, W * cameras, 3)
    grid = np.concatenate(rows, axis=1)  # motions stacked vertically
    export_to_video(list(grid), args.output, fps=24)
    return args.output


if __name__ == "__main__":
    print(main())
