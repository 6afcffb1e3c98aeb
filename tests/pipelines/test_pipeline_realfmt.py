"""End-to-end parity on a checkpoint laid out like the PUBLISHED `IamCreateAI/Ruyi-Mini-7B` files, loaded as it is.

The folder (tests/fixtures/golden_realfmt/Ruyi-tiny-realfmt) has the original `model_index.json`, a DDPM scheduler
config, the slice VAE with the original's tiling switched on, a full-CLIP `.bin` and bf16 embeddings; the goldens
went through the original's `decode_latents`, so `smooth_output` included.
"""

import PIL.Image
import pytest
import torch
from _helpers import (
    GOLDEN_REALFMT,
    fake_snapshot_download,
    files_under,
    load_golden_case,
    load_pipe,
    load_video,
    logged,
    open_rgb,
    run_case,
    write_stored_tables_checkpoint,
)
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


def test_a_size_that_is_no_multiple_of_16_is_floored_as_the_original_does(realfmt_pipe, golden_realfmt_dir, caplog):
    # 36x44 asked for: the original resizes the frames to it (PIL), floors it to 32x32 and resizes them again (nearest
    # neighbour), its CLIP image keeping 36x44. Made by the original (make_floored_size_golden.py).
    import json
    import logging

    case = json.loads((golden_realfmt_dir / "floored_size_case.json").read_text())
    expected = load_video(golden_realfmt_dir / "floored_size_video.safetensors")
    start, end = (open_rgb(golden_realfmt_dir / case[k]) for k in ("start", "end"))
    logger = logging.getLogger("diffusers_ruyi.pipelines.pipeline_ruyi_i2v")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            video = run_case(realfmt_pipe, case, start, end)
    finally:
        logger.removeHandler(caplog.handler)
    assert tuple(video.shape) == tuple(case["video_shape"])
    assert (video - expected).abs().max().item() <= 1e-4
    assert "`height`x`width` 36x44 is not a multiple of 16" in caplog.text and "the video is 32x32" in caplog.text
    # Resizing straight to 32x32 (one PIL resize) is another video: the two-step resize is pinned.
    direct = run_case(realfmt_pipe, {**case, "h": 32, "w": 32}, start, end)
    assert (direct - expected).abs().max().item() > 1e-3
    # The CLIP image keeps the size asked for (the tiny CLIP barely tells it from a 32x32 one: pinned here).
    _, _, clip_images = realfmt_pipe.prepare_conditioning_video([[start]], None, 8, 32, 32, resize_to=(36, 44))
    assert clip_images[0].size == (44, 36)


@pytest.mark.parametrize("height, width", [(8, 32), (32, 15)])
def test_a_size_below_16_is_refused(guarded_pipe, start_image, height, width):
    name, value = ("height", height) if height < 16 else ("width", width)
    with pytest.raises(
        ValueError, match=rf"`{name}` must be at least 16 \(a 16 px multiple, or floored to one\), got {value}\."
    ):
        guarded_pipe(image=start_image, num_frames=8, height=height, width=width)


def test_smooth_output_is_applied(realfmt_pipe, golden_realfmt_dir, monkeypatch):
    # Without `smooth_output` the 16-frame case no longer matches the original: the branch is pinned.
    case, start, end, expected = load_golden_case(golden_realfmt_dir, "realfmt_cases.json", "rf_start_only")
    monkeypatch.setattr(type(realfmt_pipe), "smooth_output", lambda self, video: video)
    video = run_case(realfmt_pipe, case, start, end)
    assert (video - expected).abs().max().item() > 1e-3


def test_hub_id_fetches_only_what_loading_reads(tiny_realfmt_checkpoint, tmp_path, monkeypatch):
    # The whole repository was downloaded (everything in it, and the weights of the components passed in); now its
    # model_index.json first, then the files of the original layout: what loads from them is the checkpoint.
    import shutil

    from diffusers_ruyi.loaders.original_checkpoint import original_layout_patterns

    repo = tmp_path / "repo"
    shutil.copytree(tiny_realfmt_checkpoint, repo)
    (repo / "assets").mkdir()
    (repo / "assets" / "demo.mp4").write_bytes(b"the model card's media")
    (repo / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle loading never reads")
    calls = []
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download(repo, tmp_path, calls))
    pipe = RuyiImageToVideoPipeline.from_pretrained("IamCreateAI/Ruyi-Mini-7B", revision="main")
    assert calls == [
        ("IamCreateAI/Ruyi-Mini-7B", ["model_index.json"], None, {"revision": "main"}),
        ("IamCreateAI/Ruyi-Mini-7B", original_layout_patterns(), None, {"revision": "main"}),
    ]
    assert files_under(tmp_path / "snapshot-2") == files_under(tiny_realfmt_checkpoint)
    assert type(pipe.scheduler) is DDIMScheduler
    reference = load_pipe(tiny_realfmt_checkpoint)
    for name in ("transformer", "vae", "image_encoder"):
        expected = getattr(reference, name).state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in getattr(pipe, name).state_dict().items()), name

    # A component passed in: its weights are not fetched (its config is: it tells the layout apart).
    calls.clear()
    again = RuyiImageToVideoPipeline.from_pretrained(
        "IamCreateAI/Ruyi-Mini-7B", vae=pipe.vae, image_encoder=pipe.image_encoder
    )
    assert again.vae is pipe.vae
    fetched = files_under(tmp_path / "snapshot-4")
    assert "vae/config.json" in fetched and "vae/diffusion_pytorch_model.safetensors" not in fetched
    assert "image_encoder/preprocessor_config.json" in fetched and "image_encoder/pytorch_model.bin" not in fetched
    assert "transformer/diffusion_pytorch_model.safetensors" in fetched


def test_dtype_bfloat16_keeps_vae_in_bfloat16(tiny_realfmt_checkpoint):
    # The original ran the published VAE in the pipeline's dtype; diffusers upcasts only float16 (force_upcast).
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, dtype="bfloat16")
    assert pipe.transformer.dtype == pipe.vae.dtype == pipe.image_encoder.dtype == torch.bfloat16
    image = PIL.Image.new("RGB", (64, 64), (120, 30, 200))
    pipe.set_progress_bar_config(disable=True)
    video = pipe(image=image, num_frames=16, height=64, width=64, num_inference_steps=2, output_type="pt").frames
    assert video.dtype == torch.float32 and torch.isfinite(video).all()
    # As the original, the video is mapped to [0, 1] in bfloat16 before the cast: every value is a bfloat16 one
    # (mapping in float32 gives values between them).
    assert torch.equal(video, video.bfloat16().float())


def test_float16_upcasts_the_vae_for_the_call_without_warning(tiny_realfmt_checkpoint):
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, dtype="float16")
    # A user's subclass of the VAE: the package's standing filter of diffusers' false cast warning names its own
    # classes only (tests/test_logging.py), so this one shows what the pipeline does around its upcast.
    pipe.vae.__class__ = type("UserVae", (type(pipe.vae),), {})
    vae_dtypes = []
    pipe.vae.register_forward_pre_hook(lambda module, args: vae_dtypes.append(module.dtype))
    pipe.vae.encoder.register_forward_pre_hook(lambda module, args: vae_dtypes.append(module.conv_in.weight.dtype))
    pipe.vae.decoder.register_forward_pre_hook(lambda module, args: vae_dtypes.append(module.conv_in.weight.dtype))
    pipe.set_progress_bar_config(disable=True)
    with logged() as records:
        pipe(image=PIL.Image.new("RGB", (64, 64), (120, 30, 200)), num_frames=8, height=64, width=64,
             num_inference_steps=1, output_type="pt")  # fmt: skip
    # force_upcast: the float16 VAE encodes and decodes in float32, and is float16 again after the call ...
    assert vae_dtypes and set(vae_dtypes) == {torch.float32} and pipe.vae.dtype == torch.float16
    # ... without diffusers' cast warning, which the user could do nothing about.
    assert not [r.getMessage() for r in records if "kept in float32" in r.getMessage()]
    # The filter is gone after the call: the user's own casts still warn, as diffusers does.
    with logged() as records:
        pipe.vae.to(torch.float16)
    assert [r for r in records if "kept in float32" in r.getMessage()]


def test_float16_vae_with_layerwise_casting_keeps_its_storage(tiny_realfmt_checkpoint, caplog):
    # Upcasting the VAE for the call would cast its float8 weights to float32, then to float16: the storage lost.
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, dtype="float16")
    pipe.vae.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float16)
    stored = {name: p.dtype for name, p in pipe.vae.named_parameters()}
    assert torch.float8_e4m3fn in stored.values()
    pipe.set_progress_bar_config(disable=True)
    with caplog.at_level("WARNING"):
        pipe(
            image=PIL.Image.new("RGB", (32, 32), (120, 30, 200)),
            num_frames=1,
            height=32,
            width=32,
            num_inference_steps=1,
            output_type="pt",
        )  # fmt: skip (float16 convolutions are slow on the CPU)
    assert {name: p.dtype for name, p in pipe.vae.named_parameters()} == stored
    assert "The float16 VAE has layerwise casting, so it is not upcast to float32" in caplog.text


def test_original_tiling_that_would_resize_the_latents_is_refused_early(realfmt_pipe, monkeypatch):
    # 48 px tiles with overlap 0.25 are not aligned: the original steps 36 px between tiles but keeps 5 latents (40
    # px) of each, so it encodes 80x64 px to 11x8 latents and then fails on a shape mismatch (a `drift_*` golden).
    vae = realfmt_pipe.vae

    def boom(*args, **kwargs):
        raise AssertionError("a model ran before the input was validated")

    for module in (realfmt_pipe.transformer, realfmt_pipe.image_encoder):
        monkeypatch.setattr(module, "forward", boom)
    monkeypatch.setattr(vae, "encode", boom)
    vae.enable_original_tiling(48, 0.25)
    try:
        assert vae.tiled_output_size(80, 64) == (11, 8) and vae.tiled_output_size(9, 7, decode=True) == (80, 60)
        assert vae.tiled_output_size(48, 48) == (6, 6)  # one tile: not tiled
        with pytest.raises(ValueError, match="tile_sample_min_size=48, tile_overlap_factor=0.25.*80x64 video to 11x8"):
            realfmt_pipe(
                image=PIL.Image.new("RGB", (64, 80)), num_frames=8, height=80, width=64, num_inference_steps=1
            )
        # 64x48 encodes to 8x6 latents, but they decode to 68x52 px, which `smooth_output` (16 frames) cannot
        # re-encode to the same size; 8 frames are not smoothed: the grown video is the original's, and it runs.
        with pytest.raises(ValueError, match="decodes a 64x48 video to 68x52 px, and `smooth_output`"):
            realfmt_pipe(
                image=PIL.Image.new("RGB", (48, 64)), num_frames=16, height=64, width=48, num_inference_steps=1
            )
        with pytest.raises(AssertionError, match="a model ran"):
            realfmt_pipe(
                image=PIL.Image.new("RGB", (48, 64)), num_frames=8, height=64, width=48, num_inference_steps=1
            )
        vae.enable_original_tiling(48, 0.125)  # steps 42 px: a 48 px width leaves a last tile of 6 px
        with pytest.raises(ValueError, match="48 px width into tiles every 42 px.*last tile of 6 px"):
            realfmt_pipe(
                image=PIL.Image.new("RGB", (48, 80)), num_frames=8, height=80, width=48, num_inference_steps=1
            )
        vae.enable_original_tiling(48, 1 / 3)  # aligned: 48 / 8 / 3 = 2 latents of overlap
        assert vae.tiled_output_size(80, 64) == (10, 8) and vae.tiled_output_size(10, 8, decode=True) == (80, 64)
    finally:
        vae.enable_original_tiling()


def test_stored_temporal_tables_are_added_as_the_original_reads_them(tmp_path):
    # A transformer stored in bfloat16 with the original's fixed temporal tables (as the published file probably is),
    # run in float32: the original adds the tables' stored, rounded values, 1.5e-3 away from the exact ones.
    import json

    checkpoint = write_stored_tables_checkpoint(tmp_path / "ckpt")
    pipe = load_pipe(checkpoint, dtype=torch.float32)
    assert pipe.transformer.config.temporal_embedding_dtype == "bfloat16"
    case = json.loads((GOLDEN_REALFMT / "stored_tables_case.json").read_text())
    video = run_case(pipe, case, open_rgb(GOLDEN_REALFMT / case["image"]))
    expected = load_video(GOLDEN_REALFMT / "stored_tables_video.safetensors")
    assert (video - expected).abs().max().item() < 1e-4
    # Saved in the diffusers format, the setting stays.
    pipe.transformer.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["temporal_embedding_dtype"] == "bfloat16"


def test_hub_id_with_a_sharded_variant_fetches_its_index(tiny_realfmt_checkpoint, tmp_path, monkeypatch):
    # A variant's shard index is `....safetensors.index.fp16.json`: it was left behind, and loading failed.
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_realfmt_checkpoint, repo)
    reference = load_pipe(tiny_realfmt_checkpoint)
    transformer = reference.transformer
    for name, shard_size in (("transformer", "200KB"), ("vae", "10GB")):
        (repo / name / "diffusion_pytorch_model.safetensors").unlink()
        getattr(reference, name).save_pretrained(repo / name, variant="fp16", max_shard_size=shard_size)
    assert len(list((repo / "transformer").glob("*.fp16-0000*-of-*.safetensors"))) > 1
    calls = []
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download(repo, tmp_path, calls))
    pipe = RuyiImageToVideoPipeline.from_pretrained("IamCreateAI/Ruyi-Mini-7B", variant="fp16")
    assert "transformer/diffusion_pytorch_model.safetensors.index.fp16.json" in files_under(tmp_path / "snapshot-2")
    expected = transformer.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in pipe.transformer.state_dict().items())
