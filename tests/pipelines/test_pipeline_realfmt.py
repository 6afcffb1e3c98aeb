"""End-to-end parity on a checkpoint laid out like the PUBLISHED `IamCreateAI/Ruyi-Mini-7B` files, loaded as it is.

The folder (tests/fixtures/golden_realfmt/Ruyi-tiny-realfmt) has the original `model_index.json`, a DDPM scheduler
config, the slice VAE with the original's tiling switched on, a full-CLIP `.bin` and bf16 embeddings; the goldens
went through the original's `decode_latents`, so `smooth_output` included.
"""

import PIL.Image
import pytest
import torch
from _helpers import load_golden_case, load_pipe, run_case
from diffusers import DDIMScheduler

from diffusers_ruyi import RuyiImageToVideoPipeline


@pytest.fixture(scope="module")
def realfmt_pipe(tiny_realfmt_checkpoint):
    return load_pipe(tiny_realfmt_checkpoint)


def test_loads_the_published_layout_as_it_is(realfmt_pipe):
    assert type(realfmt_pipe.scheduler) is DDIMScheduler  # the file names DDPMScheduler; the original builds DDIM
    assert type(realfmt_pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    assert realfmt_pipe.control_embeddings.aspect_ratios == ["16:9", "9:16"]
    assert realfmt_pipe.vae.use_tiling  # `use_tiling: true` in the published VAE config
    assert realfmt_pipe.transformer.dtype == torch.float32


@pytest.mark.parametrize("case_name", ["rf_start_only", "rf_start_end_24f"])
def test_end_to_end_matches_original(realfmt_pipe, golden_realfmt_dir, case_name):
    case, start, end, expected = load_golden_case(golden_realfmt_dir, "realfmt_cases.json", case_name)
    video = run_case(realfmt_pipe, case, start, end)
    assert tuple(video.shape) == tuple(case["video_shape"])
    assert (video - expected).abs().max().item() <= 1e-4


def test_smooth_output_is_applied(realfmt_pipe, golden_realfmt_dir, monkeypatch):
    # Without `smooth_output` the 16-frame case no longer matches the original: the branch is pinned.
    case, start, end, expected = load_golden_case(golden_realfmt_dir, "realfmt_cases.json", "rf_start_only")
    monkeypatch.setattr(type(realfmt_pipe), "smooth_output", lambda self, video: video)
    video = run_case(realfmt_pipe, case, start, end)
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
