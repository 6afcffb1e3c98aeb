"""`image` / `last_image` as diffusers' `PipelineImageInput` (PIL, numpy, torch, lists), and `latents_dtype`.

Arrays and tensors go through the video processor's converters to PIL and are then resized like PIL inputs, so they
give the videos of the same images given as PIL.
"""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffusers_ruyi import RuyiImageToVideoPipeline


SIZE = dict(num_frames=8, height=32, width=48)


@pytest.fixture(scope="module")
def images():
    # Noise, not a smooth picture, so that any other resize filter or rounding shows; 70x50 is resized to 48x32.
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)) for _ in range(3)]


def _run(pipe, image, last_image=None, **kwargs):
    args = dict(num_inference_steps=1, generator=torch.Generator("cpu").manual_seed(0), output_type="pt", **SIZE)
    args.update(kwargs)
    return pipe(image=image, last_image=last_image, **args).frames


def _np(image, dtype=np.uint8):
    array = np.asarray(image)
    return array if dtype == np.uint8 else array.astype(dtype) / 255


def _pt(image, signed=False):
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    return tensor * 2 - 1 if signed else tensor


def test_numpy_and_tensor_images_give_the_pil_videos(pipe, images):
    start, end = images[0], images[1]
    expected = _run(pipe, start, end)
    for image, last_image in [
        (_np(start), _np(end)),
        (_np(start, np.float32), _np(end, np.float64)),
        (_pt(start), _pt(end)),
        (_pt(start, signed=True), _pt(end, signed=True)),
        (_np(start)[None], [_pt(end)]),  # a batch of one, as an NHWC array and as a flat list
    ]:
        assert torch.equal(_run(pipe, image, last_image), expected)


@pytest.mark.parametrize(
    "convert",
    [
        lambda frames: np.stack([_np(f) for f in frames]),  # NHWC uint8
        lambda frames: torch.stack([_pt(f) for f in frames]),  # NCHW in [0, 1]
        lambda frames: [_np(f, np.float32) for f in frames],  # a list of HWC floats
        lambda frames: [_pt(f, signed=True) for f in frames],  # a list of CHW in [-1, 1]
    ],
)
def test_every_form_gives_the_frames_of_the_pil_images(pipe, images, convert):
    # A batch: one video per image. A list of lists, or a list holding a stack of frames: one video of those frames.
    expected_batch = pipe._as_frame_lists(images, "image")
    expected_video = pipe._as_frame_lists([images], "image")
    for got, expected in [
        (pipe._as_frame_lists(convert(images), "image"), expected_batch),
        (pipe._as_frame_lists([convert(images)], "image"), expected_video),
        (pipe._as_frame_lists([list(convert(images))], "image"), expected_video),
    ]:
        assert [len(v) for v in got] == [len(v) for v in expected]
        for video, expected_frames in zip(got, expected):
            for frame, expected_frame in zip(video, expected_frames):
                assert frame.mode == "RGB" and np.array_equal(np.asarray(frame), np.asarray(expected_frame))
    # ... and the conditioning video built from them is the PIL one.
    built = pipe.prepare_conditioning_video(pipe._as_frame_lists([convert(images)], "image"), None, **SIZE)
    assert torch.equal(built[0], pipe.prepare_conditioning_video(expected_video, None, **SIZE)[0])


def test_a_stacked_video_of_frames_matches_the_list_of_lists(pipe, images):
    expected = _run(pipe, [images[:2]], [[images[2]]])
    assert torch.equal(_run(pipe, [np.stack([_np(f) for f in images[:2]])], [[_pt(images[2])]]), expected)


@pytest.mark.parametrize(
    "image, error, match",
    [
        ("start.png", TypeError, "`image` must be a PIL image, a numpy array, a torch tensor.*load_image"),
        ([np.zeros((32, 48, 3), np.uint8), None], TypeError, "`image\\[1\\]` must be a PIL image"),
        (np.zeros((32, 48, 3), np.int64), TypeError, "`image` as an array must be uint8 or float"),
        (np.ones((32, 48, 3), bool), TypeError, "`image` as an array must be uint8 or float .*got bool"),  # not a mask
        (torch.zeros(3, 32, 48, dtype=torch.uint8), TypeError, "`image` as a tensor must be floating point"),
        (np.zeros((32, 48, 2), np.uint8), ValueError, "`image` as an array must be \\(H, W, C\\) .* C 1, 3 or 4"),
        (np.zeros(48, np.uint8), ValueError, "`image` as an array must be .* or \\(H, W\\) for one grayscale"),
        (torch.zeros(48), ValueError, "`image` as a tensor must be .* or \\(H, W\\) for one grayscale"),
        (torch.zeros(32, 48, 3), ValueError, "`image` as a tensor must be \\(C, H, W\\)"),
        (np.full((32, 48, 3), 2.0), ValueError, "`image` as a float array must hold values in \\[0, 1\\]"),
        (torch.full((3, 32, 48), -2.0), ValueError, "`image` as a tensor must hold values in \\[0, 1\\]"),
        ([], TypeError, "`image` must not be an empty list"),
        (np.full((32, 48, 3), np.nan, np.float32), ValueError, "`image` holds NaN or infinite values"),
        (torch.full((3, 32, 48), float("inf")), ValueError, "`image` holds NaN or infinite values"),
        (np.zeros((0, 0, 3), np.uint8), ValueError, "`image` as an array must be .* no size 0"),
        (np.zeros((0, 32, 48, 3), np.uint8), ValueError, "`image` as an array must be .* no size 0"),
        (torch.zeros(3, 0, 0), ValueError, "`image` as a tensor must be .* no size 0"),
        (torch.zeros(0, 3, 32, 48), ValueError, "`image` as a tensor must be .* no size 0"),
        (PIL.Image.new("RGB", (0, 0)), ValueError, "`image` is an empty image"),
        (torch.empty(3, 32, 48, device="meta"), ValueError, "`image` is a tensor on the meta device"),
    ],
)
def test_bad_images_fail_early_naming_the_argument(guarded_pipe, image, error, match):
    with pytest.raises(error, match=match):
        _run(guarded_pipe, image)


def test_bad_last_image_is_named(guarded_pipe):
    with pytest.raises(TypeError, match="`last_image\\[0\\]\\[1\\]` must be a PIL image"):
        _run(guarded_pipe, [[np.zeros((32, 48, 3), np.uint8)]], [[np.zeros((32, 48, 3), np.uint8), 3]])


def test_latents_dtype(tiny_checkpoint, images):
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    default = _run(pipe, images[0], num_inference_steps=2, output_type="latent")
    as_transformer = _run(pipe, images[0], num_inference_steps=2, output_type="latent", latents_dtype=torch.bfloat16)
    upcast = _run(pipe, images[0], num_inference_steps=2, output_type="latent", latents_dtype=torch.float32)
    # The original keeps the latents in the model's dtype; float32 latents are an option that changes the result.
    assert default.dtype == torch.bfloat16 and torch.equal(default, as_transformer)
    assert upcast.dtype == torch.float32 and not torch.equal(upcast, default.float())
    # Closeness is compared from the same noise: whether a bfloat16 draw is the float32 draw rounded depends on the
    # torch build (torch 2.11's CPU `randn` draws bfloat16 differently, 2.13's rounds the float32 values).
    noise = randn_tensor(pipe._latent_shape(1, **SIZE), generator=torch.Generator().manual_seed(1))
    from_noise = _run(pipe, images[0], num_inference_steps=2, output_type="latent", latents=noise)
    upcast_from_noise = _run(
        pipe, images[0], num_inference_steps=2, output_type="latent", latents=noise, latents_dtype=torch.float32
    )
    assert from_noise.dtype == torch.bfloat16 and upcast_from_noise.dtype == torch.float32
    assert 0 < (upcast_from_noise - from_noise.float()).abs().max() < 0.5
    with pytest.raises(TypeError, match="`latents_dtype` must be a floating-point torch.dtype"):
        _run(pipe, images[0], latents_dtype="float32")


def test_bfloat16_noise_is_drawn_and_scaled_in_bfloat16(tiny_checkpoint, images):
    # As the original: drawn in the latents' dtype and rounded before the scaling by `init_noise_sigma` (3.26 for
    # Euler with this config and 2 steps), not scaled in float32 and rounded after.
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    _run(pipe, images[0], num_inference_steps=2, output_type="latent")
    noise = randn_tensor(
        pipe._latent_shape(1, SIZE["num_frames"], SIZE["height"], SIZE["width"]),
        generator=torch.Generator("cpu").manual_seed(0),
        dtype=torch.bfloat16,
    )
    pipe.scheduler.set_timesteps(2)
    expected = pipe.scheduler.scale_model_input(noise * pipe.scheduler.init_noise_sigma, pipe.scheduler.timesteps[0])
    assert pipe.scheduler.init_noise_sigma > 2
    assert torch.equal(seen[0][1:], expected)  # the conditional half of the CFG batch


def test_frames_are_resized_as_the_original(pipe, images):
    # The original: `Image.resize((width, height))` (PIL's default filter) per frame, then `/ 255`, then `2 x - 1`.
    video, mask, clip_images = pipe.prepare_conditioning_video([[images[0]]], [images[1]], **SIZE)
    for frame, image in ((0, images[0]), (-1, images[1])):
        resized = torch.from_numpy(np.array(image.resize((SIZE["width"], SIZE["height"])))).permute(2, 0, 1) / 255
        assert torch.equal(video[0, :, frame], 2.0 * resized - 1.0)
    assert np.array_equal(np.asarray(clip_images[0]), np.asarray(images[0].resize((SIZE["width"], SIZE["height"]))))
    assert mask[0, 0, :, 0, 0].tolist() == [0, 1, 1, 1, 1, 1, 1, 0]


def test_grey_and_rgba_arrays_and_tensors_become_rgb_frames(pipe, images):
    # Like a grey or RGBA PIL image: converted to RGB (grey repeated, alpha dropped).
    rgb = _np(images[0])
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 77, np.uint8)], axis=-1)
    grey = rgb[..., :1]
    for array, expected in [(rgba, rgb), (grey, np.repeat(grey, 3, axis=-1))]:
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
        for given in (array, tensor):
            (frame,) = pipe._as_frame_lists(given, "image")[0]
            assert frame.mode == "RGB" and np.array_equal(np.asarray(frame), expected)
    # A 2-D (H, W) array or tensor is one grayscale image, as diffusers' `is_valid_image` has it.
    for given in (grey[..., 0], torch.from_numpy(grey[..., 0].copy()).float() / 255):
        (frame,) = pipe._as_frame_lists(given, "image")[0]
        assert frame.mode == "RGB" and np.array_equal(np.asarray(frame), np.repeat(grey, 3, axis=-1))


def test_a_16_bit_grayscale_image_is_scaled_not_clipped(pipe):
    # Pillow opens a 16-bit grayscale PNG as mode "I;16"; its `convert("RGB")` clips every value at 255 (a white
    # frame). The pipeline reads it as the 8-bit picture it is.
    rng = np.random.default_rng(1)
    eight_bit = rng.integers(0, 256, (32, 48), dtype=np.uint8)
    sixteen_bit = PIL.Image.fromarray(eight_bit.astype(np.uint16) * 257)
    assert sixteen_bit.mode == "I;16"
    frames = pipe._as_frame_lists([sixteen_bit], "image")[0]
    assert np.array_equal(np.asarray(frames[0]), np.asarray(PIL.Image.fromarray(eight_bit).convert("RGB")))


def test_a_16_bit_png_opened_as_mode_i_is_scaled_too(pipe, tmp_path):
    # Pillow before 10.3 opens a 16-bit grayscale PNG as mode "I": from a PNG file, "I" is 16-bit.
    rng = np.random.default_rng(2)
    eight_bit = rng.integers(0, 256, (32, 48), dtype=np.uint8)
    PIL.Image.fromarray(eight_bit.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    old_style = PIL.Image.open(tmp_path / "g16.png").convert("I")
    old_style.format = "PNG"  # as an older Pillow returns it from `Image.open`
    frames = pipe._as_frame_lists([old_style], "image")[0]
    assert np.array_equal(np.asarray(frames[0]), np.asarray(PIL.Image.fromarray(eight_bit).convert("RGB")))


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "1"])
def test_8_bit_png_files_read_as_themselves(pipe, tmp_path, mode):
    # Only a 16-bit PNG is scaled: every other mode of a PNG file is what `convert("RGB")` makes of it.
    rng = np.random.default_rng(3)
    image = PIL.Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).convert(mode)
    image.save(tmp_path / "image.png")
    opened = PIL.Image.open(tmp_path / "image.png")
    assert opened.format == "PNG" and opened.mode == mode
    frames = pipe._as_frame_lists([opened], "image")[0]
    assert np.array_equal(np.asarray(frames[0]), np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_images_of_unknown_range_are_refused(pipe, mode):
    image = PIL.Image.new(mode, (48, 32))
    with pytest.raises(ValueError, match=rf"`image` is a 32-bit .* image \(PIL mode '{mode}'\), whose value range"):
        pipe(image=image, num_inference_steps=1, **SIZE)
