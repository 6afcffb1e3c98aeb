"""Pipeline behaviours that survived mutation testing (scripts/mutation.py); each test names the mutant it kills."""

import numpy as np
import pytest
import torch
from _helpers import quick_latents
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from diffusers_ruyi.pipelines import pipeline_ruyi_i2v as pipeline_module
from diffusers_ruyi.pipelines.controls import _BUCKETS_512, get_bucket_size


def test_bucket_table_is_consistent():
    # Kills a changed bucket such as `1.07: (512, 480)` -> `(512, 481)` (pipelines/controls.py), which the rounding
    # down to 16 hides at most base resolutions (it shows at 528). The original's 512 table: every side a multiple of
    # 32, keyed by its height / width rounded to two decimals, about 512 x 512 pixels, sorted by ratio.
    assert len(_BUCKETS_512) == 40
    for ratio, (height, width) in _BUCKETS_512.items():
        assert height % 32 == 0 and width % 32 == 0, ratio
        assert round(height / width, 2) == ratio
        assert 0.85 * 512**2 <= height * width <= 1.15 * 512**2, ratio
    ratios = list(_BUCKETS_512)
    assert ratios == sorted(ratios)
    assert [h for h, _ in _BUCKETS_512.values()] == sorted(h for h, _ in _BUCKETS_512.values())


@pytest.mark.parametrize("base_resolution", [384, 528, 640, 1024])
def test_bucket_sizes_scale_every_bucket(base_resolution):
    # Every bucket is reachable (its own ratio picks it) and scales as floor16(side * base / 512).
    for ratio, (height, width) in _BUCKETS_512.items():
        expected = (height * base_resolution // 512 // 16 * 16, width * base_resolution // 512 // 16 * 16)
        assert get_bucket_size(round(ratio * 10000), 10000, base_resolution) == expected, ratio


def test_smallest_base_resolution_is_64():
    # Kills `MIN_BASE_RESOLUTION = 64` -> 65 (pipelines/controls.py): 64 is taken (its narrowest bucket is 32 x 128
    # pixels), 63 is refused.
    assert get_bucket_size(256, 1024, 64) == (32, 128)
    with pytest.raises(ValueError, match="`base_resolution` must be an integer from 64 to 2048, got 63"):
        get_bucket_size(256, 1024, 63)
    # And the largest (`MAX_BASE_RESOLUTION`): its widest bucket is 4096 pixels, the largest frame side.
    assert get_bucket_size(256, 1024, 2048) == (1024, 4096)
    with pytest.raises(ValueError, match="`base_resolution` must be an integer from 64 to 2048, got 2049"):
        get_bucket_size(256, 1024, 2049)


@pytest.mark.parametrize("aspect_ratio", ["16:", ":9", "a:9", "16:b", "16:0", "0:9", "16x9", "-16:9", 169, None])
def test_control_names_refuse_malformed_aspect_ratios(aspect_ratio):
    # Kills `and` -> `or` in _aspect_ratio_tag (pipelines/controls.py): both sides must be positive integers.
    from diffusers_ruyi.pipelines.controls import control_name

    assert control_name(2, "left", "16:9") == "p.16x9movie2left"
    # a side of 1 is positive too (the boundary of the check on either side)
    assert (control_name(2, "left", "3:1"), control_name(2, "left", "1:3")) == ("p.3x1movie2left", "p.1x3movie2left")
    if isinstance(aspect_ratio, str):
        with pytest.raises(ValueError, match="`aspect_ratio` must be a tag like"):
            control_name(2, "left", aspect_ratio)
    else:
        with pytest.raises(TypeError, match="`aspect_ratio` must be a string like 'W:H', got"):
            control_name(2, "left", aspect_ratio)


@pytest.mark.parametrize(
    "motion, camera_direction, error, match",
    [
        (2.0, "left", TypeError, "`motion` must be one of .*, got float 2.0"),
        (True, "left", TypeError, "`motion` must be one of .*, got bool True"),
        (5, "left", ValueError, "`motion` must be one of 1, 2, 3, 4 or 'auto' \\(int or str\\), got 5"),
        ("2", 1, TypeError, "`camera_direction` must be one of \\['static', .*\\], got int"),
        ("2", "diagonal", ValueError, "`camera_direction` must be one of .*, got 'diagonal'"),
    ],
)
def test_control_names_refuse_a_wrong_type_with_a_type_error(motion, camera_direction, error, match):
    # Kills `or` -> `and` in normalize_motion (pipelines/controls.py): a float whose text is close to a valid motion
    # is refused by type; a wrong type is a TypeError, a wrong value a ValueError, as for every argument. A NumPy
    # integer is an integer.
    from diffusers_ruyi.pipelines.controls import control_name

    with pytest.raises(error, match=match):
        control_name(motion, camera_direction)
    assert control_name(np.int64(2), "left") == control_name(2, "left") == "p.16x9movie2left"


def test_encode_prompt_keeps_the_masks_integer(pipe):
    # Kills `dtype if k % 2 == 0 else None` -> `k % 2 >= 0` in encode_prompt (pipeline_ruyi_i2v.py): the embeddings
    # take `dtype`, the attention masks keep their own integer dtype (as HunyuanDiT's encode_prompt returns them).
    outputs = pipe.encode_prompt(batch_size=2, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert len(outputs) == 8
    for k, tensor in enumerate(outputs):
        assert tensor.shape[0] == 2
        if k % 2 == 0:
            assert tensor.dtype == torch.bfloat16, k
        else:
            assert not tensor.dtype.is_floating_point, (k, tensor.dtype)


@pytest.mark.parametrize("guidance_rescale, calls", [(0.0, 0), (0.5, 2)])
def test_guidance_rescale_zero_skips_the_rescale(pipe, start_image, monkeypatch, guidance_rescale, calls):
    # Kills `if guidance_rescale > 0.0` -> `>= 0.0` in __call__ (pipeline_ruyi_i2v.py): at 0 (off, the default) the
    # rescale is not computed at all, as in diffusers' pipelines; it would add work, and NaN where the guided
    # prediction's standard deviation is 0 (0 x NaN is NaN).
    seen = []

    def spy(noise_cfg, noise_pred_text, guidance_rescale):
        seen.append(guidance_rescale)
        return rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale=guidance_rescale)

    monkeypatch.setattr(pipeline_module, "rescale_noise_cfg", spy)
    quick_latents(pipe, start_image, guidance_scale=7.0, guidance_rescale=guidance_rescale)
    assert seen == [guidance_rescale] * calls


def test_bucket_size_takes_any_positive_image_size():
    # Kills `0 < value` -> `1 < value` in get_bucket_size (pipelines/controls.py): a one-pixel-wide image (or a
    # fractional size from a resized frame) has an aspect ratio like any other.
    assert get_bucket_size(1, 1, 512) == get_bucket_size(512, 512, 512) == (512, 512)
    assert get_bucket_size(1, 0.5, 512) == get_bucket_size(1024, 512, 512)
    with pytest.raises(ValueError, match="`image_height` must be a positive number"):
        get_bucket_size(0, 1, 512)


def test_control_embeddings_list_every_unexpected_key(tiny_realfmt_checkpoint):
    # Kills `continue` -> `break` in RuyiControlEmbeddings.from_flat_dict (pipelines/controls.py): the error lists all
    # the keys that do not fit the layout, not only the first one.
    from diffusers_ruyi.loaders.original_checkpoint import read_safetensors
    from diffusers_ruyi.pipelines.controls import RuyiControlEmbeddings

    flat = read_safetensors(str(tiny_realfmt_checkpoint / "embeddings.safetensors"))
    bad = {"stray": torch.zeros(1), **flat, "p.default.emb3": torch.zeros(1, 2)}
    with pytest.raises(
        ValueError, match=r"Unexpected keys: \['p.default.emb3', 'stray'\]; entries missing fields: \{\}"
    ):
        RuyiControlEmbeddings.from_flat_dict(bad)


def test_cache_vae_tiling_check_skips_the_smoothing_round_trip(pipe, start_image):
    # Kills `compression_mode != "cache"` -> `>= "cache"` in _check_vae_tiling (pipeline_ruyi_i2v.py): only the slice
    # VAE re-encodes its decode (`smooth_output`), so only there must the grown decode encode back to its size. At
    # 48 px tiles with overlap 0.125, the cache VAE's 64x64 decode does not round-trip, and the pipeline runs.
    vae = pipe.vae
    assert vae.config.compression_mode == "cache"
    vae.enable_original_tiling(tile_sample_min_size=48, tile_overlap_factor=0.125)
    try:
        decoded = vae.tiled_output_size(*vae.tiled_output_size(64, 64), decode=True)
        assert vae.tiled_output_size(*vae.tiled_output_size(*decoded), decode=True) != decoded
        video = pipe(
            image=start_image,
            num_frames=16,
            height=64,
            width=64,
            num_inference_steps=1,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="pt",
        ).frames
    finally:
        vae.disable_tiling()
    assert video.shape[:3] == (1, 16, 3) and bool(torch.isfinite(video).all())


def test_a_tensor_image_in_zero_one_is_not_taken_for_minus_one_one(pipe):
    # Kills `images.min() < 0` -> `!= 0` in _to_pil (pipelines/pipeline_ruyi_i2v.py): only a tensor with negative
    # values is in [-1, 1]; one in [0.2, 0.8] keeps its values.
    tensor = torch.linspace(0.2, 0.8, 3 * 4 * 4).reshape(3, 4, 4)
    image = pipe._to_pil(tensor, "image")[0]
    expected = (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.abs(np.asarray(image).astype(int) - expected.astype(int)).max() <= 1


def test_call_defaults_are_predict_i2v_settings():
    # Kills `num_frames: int = 120` -> 119 in RuyiImageToVideoPipeline.__call__ (pipelines/pipeline_ruyi_i2v.py): the
    # defaults are the original `predict_i2v.py`'s settings (video_length, base_resolution, aspect_ratio, motion,
    # camera_direction, steps, cfg) and its pipeline's (eta, clip_apply_ratio, guidance_rescale, original_size).
    import inspect

    parameters = inspect.signature(pipeline_module.RuyiImageToVideoPipeline.__call__).parameters
    expected = {
        "num_frames": 120, "height": None, "width": None, "base_resolution": 512, "aspect_ratio": "16:9",
        "motion": "auto", "camera_direction": "auto", "num_inference_steps": 25, "guidance_scale": 7.0,
        "eta": 0.0, "clip_apply_ratio": 0.4, "guidance_rescale": 0.0, "original_size": (1024, 1024),
        "crops_coords_top_left": (0, 0), "num_videos_per_prompt": 1, "last_image": None,
    }  # fmt: skip
    assert {name: parameters[name].default for name in expected} == expected


def test_a_bfloat16_decode_keeps_its_values(pipe, start_image, monkeypatch):
    # Kills `(video / 2 + 0.5)` -> `(video / 3 + 0.5)` in __call__ (pipeline_ruyi_i2v.py): a VAE decoding in bfloat16
    # gives frames mapped to [0, 1] in bfloat16 (as the original), with the values of the decode, not only values that
    # are bfloat16 numbers.
    decoded = torch.linspace(-1, 1, 3 * 8 * 32 * 48).reshape(1, 3, 8, 32, 48).bfloat16()
    monkeypatch.setattr(pipe, "decode_latents", lambda latents: decoded.clone())
    video = pipe(image=start_image, num_frames=8, height=32, width=48, num_inference_steps=1, output_type="pt").frames
    expected = (decoded / 2 + 0.5).clamp(0, 1).float().permute(0, 2, 1, 3, 4)
    assert video.dtype == torch.float32 and torch.equal(video, expected)


@pytest.mark.parametrize("corner", [(-1, 0), (0, -0.5)])
def test_a_negative_crop_corner_is_refused_before_any_model(guarded_pipe, start_image, corner):
    with pytest.raises(ValueError, match=r"`crops_coords_top_left` must be a finite number >= 0, got -"):
        guarded_pipe(image=start_image, num_frames=8, height=32, width=48, num_inference_steps=1,
                     crops_coords_top_left=corner, generator=torch.Generator("cpu").manual_seed(0), output_type="pt")  # fmt: skip
