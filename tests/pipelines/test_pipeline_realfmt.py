"""End-to-end parity on a checkpoint laid out like the PUBLISHED `IamCreateAI/Ruyi-Mini-7B` files, loaded as it is.

The folder (tests/fixtures/golden_realfmt/Ruyi-tiny-realfmt) has the original `model_index.json`, a DDPM scheduler
config, the slice VAE with the original's tiling switched on, a full-CLIP `.bin` and bf16 embeddings; the goldens
went through the original's `decode_latents`, so `smooth_output` included.
"""

import json

import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from diffusers_ruyi import RuyiImageToVideoPipeline


def _cases(golden_realfmt_dir):
    return {c["name"]: c for c in json.loads((golden_realfmt_dir / "realfmt_cases.json").read_text())["cases"]}


@pytest.fixture(scope="module")
def realfmt_pipe(tiny_realfmt_checkpoint):
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_case(pipe, golden_dir, case):
    name = case["name"]
    start = PIL.Image.open(golden_dir / f"{name}_start.png").convert("RGB")
    end = PIL.Image.open(golden_dir / f"{name}_end.png").convert("RGB") if case["end"] else None
    return pipe(
        image=start,
        last_image=end,
        num_frames=case["frames"],
        height=case["h"],
        width=case["w"],
        num_inference_steps=case["steps"],
        guidance_scale=case["cfg"],
        motion=case["motion"],
        camera_direction=case["cam"],
        generator=torch.Generator("cpu").manual_seed(case["seed"]),
        output_type="pt",
    ).frames.permute(0, 2, 1, 3, 4)  # (B, F, C, H, W) -> the original's (B, C, F, H, W)


def test_loads_the_published_layout_as_it_is(realfmt_pipe):
    assert type(realfmt_pipe.scheduler) is DDIMScheduler  # the file names DDPMScheduler; the original builds DDIM
    assert type(realfmt_pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    assert realfmt_pipe.control_embeddings.aspect_ratios == ["16:9", "9:16"]
    assert realfmt_pipe.vae.use_tiling  # `use_tiling: true` in the published VAE config
    assert realfmt_pipe.transformer.dtype == torch.float32


@pytest.mark.parametrize("case_name", ["rf_start_only", "rf_start_end_24f"])
def test_end_to_end_matches_original(realfmt_pipe, golden_realfmt_dir, case_name):
    case = _cases(golden_realfmt_dir)[case_name]
    video = _run_case(realfmt_pipe, golden_realfmt_dir, case)
    expected = load_file(str(golden_realfmt_dir / f"{case_name}_video.safetensors"))["video"]
    assert tuple(video.shape) == tuple(case["video_shape"])
    assert (video - expected).abs().max().item() <= 1e-4


def test_smooth_output_is_applied(realfmt_pipe, golden_realfmt_dir, monkeypatch):
    # Without `smooth_output` the 16-frame case no longer matches the original: the branch is pinned.
    case = _cases(golden_realfmt_dir)["rf_start_only"]
    monkeypatch.setattr(type(realfmt_pipe), "smooth_output", lambda self, video: video)
    video = _run_case(realfmt_pipe, golden_realfmt_dir, case)
    expected = load_file(str(golden_realfmt_dir / "rf_start_only_video.safetensors"))["video"]
    assert (video - expected).abs().max().item() > 1e-3


def test_hub_id_snapshot_loads_the_same(tiny_realfmt_checkpoint, monkeypatch):
    # A hub id goes through snapshot_download and then loads the downloaded folder the same way.
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tiny_realfmt_checkpoint)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    pipe = RuyiImageToVideoPipeline.from_pretrained("IamCreateAI/Ruyi-Mini-7B", revision="main")
    assert calls == [("IamCreateAI/Ruyi-Mini-7B", {"revision": "main"})]
    assert type(pipe.scheduler) is DDIMScheduler


def test_dtype_bfloat16_keeps_vae_in_bfloat16(tiny_realfmt_checkpoint):
    # The original ran the published VAE in the pipeline's dtype; diffusers upcasts only float16 (force_upcast).
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, dtype="bfloat16")
    assert pipe.transformer.dtype == pipe.vae.dtype == pipe.image_encoder.dtype == torch.bfloat16
    image = PIL.Image.new("RGB", (64, 64), (120, 30, 200))
    pipe.set_progress_bar_config(disable=True)
    video = pipe(image=image, num_frames=16, height=64, width=64, num_inference_steps=2, output_type="pt").frames
    assert video.dtype == torch.float32 and torch.isfinite(video).all()
