"""The published VAE format: the slice variant, 3D mid-block attention, the original's tiling, loading as it is.

Goldens: `golden_realfmt/realfmt_vae.safetensors` (the published-format tiny VAE, its config unchanged) and
`golden_realfmt/vae_variants.*` (other frame counts, slice/chunk sizes, attention type, layer counts, block layouts
and tile sizes), all computed by the original (`make_vae_variant_goldens.py`).
"""

import json
import logging
import shutil

import pytest
import torch
from _helpers import check_vae_operations
from safetensors.torch import load_file, save_file

from diffusers_ruyi import AutoencoderKLRuyiCausal3D
from diffusers_ruyi.loaders.original_checkpoint import (
    convert_vae_config,
    convert_vae_state_dict,
    is_original_vae_config,
)


TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def golden(golden_realfmt_dir):
    return load_file(str(golden_realfmt_dir / "realfmt_vae.safetensors"))


@pytest.fixture(scope="module")
def vae(tiny_realfmt_checkpoint):
    # The published layout as it is: `_class_name: AutoencoderKL`, slice variant, `use_tiling: true`.
    return AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae")


@pytest.fixture
def vae_folder_copy(tiny_realfmt_checkpoint, tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(tiny_realfmt_checkpoint / "vae", folder)
    return folder


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------------------------------
# The published-format goldens
# ------------------------------------------------------------------------------------------------------------------


def test_loads_the_published_config_as_it_is(vae):
    assert vae.config.compression_mode == "slice"
    assert vae.config.mid_block_attention_type == "3d"
    assert vae.config.layers_per_block == 2 and len(vae.encoder.mid_block.attentions) == 1
    assert vae.config.scaling_factor == 0.18215 and vae.config.force_upcast
    assert vae.use_tiling and vae.tiling_mode == "original" and vae.tile_sample_min_size == 32
    assert vae.spatial_compression_ratio == 8 and vae.temporal_compression_ratio == 4
    assert vae.dtype == torch.float32 and not vae.training


@torch.no_grad()
@pytest.mark.parametrize("name", ["video", "small_video", "image"])
def test_encode_matches_original(vae, golden, name):
    # `video` and `image` (64x48) are larger than a 32 px tile: the original's tiled encode; `small_video` is not.
    mean = vae.encode(golden[name]).latent_dist.mean
    assert _max_diff(mean, golden[f"{name}_latent_mean"]) <= TOLERANCE


@torch.no_grad()
def test_tiled_decode_matches_original(vae, golden):
    video = vae.decode(golden["decode_input"]).sample
    assert _max_diff(video, golden["decode_output"]) <= TOLERANCE


@torch.no_grad()
def test_tiled_decode_keeps_only_the_strips_later_tiles_blend_with(vae, golden, monkeypatch):
    # Memory, not numbers (the blend reads only the last `overlap` rows or columns either way): between tiles the
    # loop holds each tile's bottom and right strips, never a whole tile.
    from diffusers_ruyi.models import autoencoder_kl_ruyi

    blend, kept = autoencoder_kl_ruyi._blend_into, []

    def recording_blend(a_strip, b, dim, extent):
        kept.append((dim, a_strip.shape[dim], extent))
        blend(a_strip, b, dim, extent)

    monkeypatch.setattr(autoencoder_kl_ruyi, "_blend_into", recording_blend)
    video = vae.decode(golden["decode_input"]).sample
    assert _max_diff(video, golden["decode_output"]) <= TOLERANCE
    assert {dim for dim, _, _ in kept} == {-2, -1}
    assert all(size == extent for _, size, extent in kept), kept


# ------------------------------------------------------------------------------------------------------------------
# The original's general rules (frame counts, slice sizes, layouts, tile sizes)
# ------------------------------------------------------------------------------------------------------------------


def _variant_cases(golden_realfmt_dir):
    return json.loads((golden_realfmt_dir / "vae_variants.json").read_text())


VARIANTS = [
    "odd_17_frames",
    "uneven_12_frames",
    "five_frames_batch2",
    "one_latent",
    "slices_4_chunks_3",
    "spatial_attention",
    "tiles_48_overlap_third",
    "tiles_32_overlap_half",
    "layers_1",
    "layers_3",
    "three_stages",
    "drift_48_quarter",
    "drift_40_quarter",
    "drift_56_quarter",
    "long_33_frames_batch2",
    "three_frames",
    "slices_16_chunks_4",
    "tiles_96_half",
]


def _variant_vae(golden_realfmt_dir, tmp_path, case) -> AutoencoderKLRuyiCausal3D:
    if case["checkpoint"] == "realfmt":
        folder = tmp_path / "vae"
        shutil.copytree(golden_realfmt_dir / "Ruyi-tiny-realfmt" / "vae", folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **case["config"]}))
    else:
        folder = golden_realfmt_dir / "vae_variants" / case["checkpoint"]
    return AutoencoderKLRuyiCausal3D.from_pretrained(folder)


@torch.no_grad()
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_matches_original(golden_realfmt_dir, tmp_path, name):
    case = _variant_cases(golden_realfmt_dir)[name]
    tensors = load_file(str(golden_realfmt_dir / "vae_variants.safetensors"))
    vae = _variant_vae(golden_realfmt_dir, tmp_path, case)
    check_vae_operations(vae, case["operations"], tensors, TOLERANCE)


@torch.no_grad()
def test_deep_float32_decode_has_the_originals_round_off(golden_realfmt_dir):
    # The original's group norms after its mid-block attention run channels last; in float32 that layout sets the
    # round-off, which this deep decoder of large values amplifies: computed contiguous, the decode was 1.8e-4 from the
    # original's (where the crop is), channels last as the original 1.5e-5. See `make_deep_decode_golden.py`.
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(golden_realfmt_dir / "deep_decode").eval()
    tensors = load_file(str(golden_realfmt_dir / "deep_decode.safetensors"))
    video = vae.decode(tensors["latents"]).sample
    assert video.shape == (2, 3, 16, 72, 72)
    torch.testing.assert_close(video[:1, :, 2:10, 20:36, 20:36], tensors["video_crop"], rtol=0, atol=TOLERANCE)


def test_frame_counts_of_the_slice_variant(vae):
    # Encode: the first frame alone when the count is odd, then 8-frame slices (a slice of n frames gives
    # ceil(ceil(n / 2) / 2) latents); decode: the first latent alone when odd, 4 frames per other latent.
    assert [vae.num_latent_frames(f) for f in (1, 2, 5, 8, 9, 12, 16, 17, 24)] == [1, 1, 2, 2, 3, 3, 4, 5, 6]
    assert [vae.num_sample_frames(n) for n in (1, 2, 3, 4, 5, 6)] == [1, 8, 9, 16, 17, 24]
    with pytest.raises(ValueError, match="at least one frame"):
        vae.num_latent_frames(0)


@torch.no_grad()
@pytest.mark.parametrize("tiling", ["none", "original", "package"])
def test_encode_reuses_a_slice_equal_to_the_one_before(tiny_realfmt_checkpoint, tiling):
    # Slices encode independently, so a run of equal slices (the pipeline's masked frames) is encoded once per tile:
    # the moments must be exactly those of encoding every slice on its own.
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae")
    if tiling == "none":
        vae.disable_tiling()
    elif tiling == "package":
        vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_overlap_factor=0.5)
    generator = torch.Generator().manual_seed(0)
    video = -torch.ones(1, 3, 48, 40, 48)
    video[:, :, :3] = torch.rand(1, 3, 3, 40, 48, generator=generator) * 2 - 1  # start frames, then a constant
    video[:, :, 24:32] = 0.5  # another slice, then the constant again: only the slice just before is compared
    tiles = vae.num_tiles(40, 48)
    calls = []
    handle = vae.encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        moments = vae.encode(video).latent_dist.parameters
        assert len(calls) == 4 * tiles  # slices 0, 1 (then 2 reused), 3, 4 (then 5 reused) of the 6
        calls.clear()
        one_by_one = torch.cat([vae.encode(video[:, :, s : s + 8]).latent_dist.parameters for s in range(0, 48, 8)], 2)
        assert len(calls) == 6 * tiles
    finally:
        handle.remove()
    assert torch.equal(moments, one_by_one)


def test_same_values_compares_only_tensors_with_values():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from diffusers_ruyi.models.autoencoder_kl_ruyi import same_values

    a = torch.ones(2, 3)
    assert same_values(a, a.clone()) and not same_values(a, a.clone().add_(1e-7)) and not same_values(a, a[:1])
    assert not same_values(a.to("meta"), a.to("meta"))
    with FakeTensorMode():  # the memory estimate's tensors: no values, so never equal (and no data-dependent error)
        fake = torch.ones(2, 3)
        assert not same_values(fake, fake)


def _vae_gradients(vae, video, latents):
    video, latents = video.clone().requires_grad_(), latents.clone().requires_grad_()
    loss = vae.encode(video).latent_dist.mean.square().sum() + vae.decode(latents).sample.square().sum()
    loss.backward()
    grads = [video.grad, latents.grad] + [p.grad for p in vae.parameters()]
    vae.zero_grad(set_to_none=True)
    return grads


def test_gradient_checkpointing_covers_encoder_and_decoder(tiny_realfmt_checkpoint):
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae")
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 9, 16, 16, generator=generator) * 2 - 1
    latents = torch.randn(1, vae.config.latent_channels, 3, 2, 2, generator=generator)
    expected = _vae_gradients(vae, video, latents)
    vae.enable_gradient_checkpointing()
    checkpointed = []
    for part in (vae.encoder, vae.decoder):
        run = part._gradient_checkpointing_func
        part._gradient_checkpointing_func = lambda block, *args, run=run: (
            checkpointed.append(block) or run(block, *args)
        )
    try:
        grads = _vae_gradients(vae, video, latents)
    finally:
        vae.disable_gradient_checkpointing()
    # Every block of both halves ran checkpointed (per encoded slice and decoded chunk), with the same gradients.
    blocks = [*vae.encoder.down_blocks, vae.encoder.mid_block, vae.decoder.mid_block, *vae.decoder.up_blocks]
    assert {id(block) for block in checkpointed} == {id(block) for block in blocks}
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_package_tiling_encodes_the_pixels_past_the_last_whole_latent(tiny_realfmt_checkpoint):
    # 71 x 45 px encode to 8 x 5 latents; the untiled encoder also reads the last 7 rows and 5 columns, and so must the
    # last tiles (they stopped at 64 x 40 px).
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae")
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_overlap_factor=0.25)
    x = torch.rand(1, 3, 1, 71, 45, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert vae.num_tiles(71, 45) > 1
    base = vae.encode(x).latent_dist.mean
    for edge in (
        x.clone().index_fill_(3, torch.arange(64, 71), 0.0),
        x.clone().index_fill_(4, torch.arange(40, 45), 0.0),
    ):
        assert vae.encode(edge).latent_dist.mean.shape == base.shape
        assert not torch.equal(vae.encode(edge).latent_dist.mean, base)


def test_repeated_slices_keep_their_own_gradient(tiny_realfmt_checkpoint):
    # The encoder reuses a repeated slice's moments; with autograd on the input that would send the gradient of both
    # slices to the first one and none to the second.
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae")
    chunk = torch.rand(1, 3, 8, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    video = torch.cat([chunk, chunk], dim=2).requires_grad_()
    vae.encode(video).latent_dist.mean.square().sum().backward()
    alone = chunk.clone().requires_grad_()
    vae.encode(alone).latent_dist.mean.square().sum().backward()
    torch.testing.assert_close(video.grad[:, :, :8], alone.grad)
    torch.testing.assert_close(video.grad[:, :, 8:], alone.grad)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("attention_type", ["3d", "spatial"])
def test_mid_block_attention_hands_on_the_originals_layout(tiny_realfmt_checkpoint, attention_type, dtype):
    # The original's attention returns a channels-last view of its tokens, and the group norms and convolutions after
    # it keep that layout and choose their kernels by it: in bfloat16 a contiguous tensor here gave other numbers, in
    # float32 other round-off (1.8e-4 from the original on a deep decoder, against 1.5e-5 channels last).
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae").to(dtype)
    block = vae.encoder.mid_block
    block.attention_type = attention_type  # the original's two: all frames at once, or frame by frame
    attend = block._attend_volume if attention_type == "3d" else block._attend_per_frame
    hidden_states = torch.randn(1, 32, 3, 4, 5).to(dtype)  # batch 1: its stride counts too
    output = attend(block.attentions[0], hidden_states)
    assert output.shape == hidden_states.shape
    # The view of (b, t * h * w, c) tokens (per frame: (b * t, h * w, c)), exactly the original's strides.
    assert output.stride() == (3 * 4 * 5 * 32, 1, 4 * 5 * 32, 5 * 32, 32)
    # And the encoder keeps it to its output layers, as the original does.
    strides = []
    vae.encoder.conv_norm_out.register_forward_hook(lambda module, args, out: strides.append(args[0].stride()))
    vae.disable_tiling()
    vae.encode((torch.rand(1, 3, 8, 32, 32) * 2 - 1).to(dtype))
    # In bfloat16 channels last; in float32 as `F.conv3d` leaves it, as in the original: contiguous at this size.
    assert strides and (strides[0][1] == 1) == (dtype == torch.bfloat16)


@torch.no_grad()
@pytest.mark.parametrize("tiling", ["none", "original", "package"])
@pytest.mark.parametrize("attention", [True, False])
def test_outputs_carry_the_originals_layout(tiny_realfmt_checkpoint, vae_folder_copy, tiling, attention):
    # The original's outputs carry its attention's channels-last layout (without mid-block attention: contiguous), and
    # the pipeline's `smooth_output` encodes a slice of the decoded video again, with kernels chosen by layout.
    if attention:
        vae = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae")
    else:
        config = json.loads((vae_folder_copy / "config.json").read_text())
        vae = AutoencoderKLRuyiCausal3D.from_config({**convert_vae_config(config), "mid_block_add_attention": False})
    if tiling == "none":
        vae.disable_tiling()
    elif tiling == "package":
        vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_overlap_factor=0.5)
    for dtype in (torch.float32, torch.bfloat16):
        vae.to(dtype)
        moments = vae.encode((torch.rand(1, 3, 8, 48, 40) * 2 - 1).to(dtype)).latent_dist.parameters
        video = vae.decode(torch.randn(1, 16, 2, 6, 5).to(dtype)).sample
        channels_last = attention
        for output in (moments, video):
            assert output.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
            assert output.is_contiguous() != channels_last


# ------------------------------------------------------------------------------------------------------------------
# Tiling switches
# ------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_tiling_switches(tiny_realfmt_checkpoint, golden):
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae")
    latents = golden["decode_input"][:, :, :2, :5, :4]  # 40x32 px: 2x1 tiles of 32 px (4 latents)
    original_tiled = vae.decode(latents).sample
    vae.disable_tiling()  # off entirely: the untiled decode
    untiled = vae.decode(latents).sample
    assert not vae.use_tiling and _max_diff(untiled, original_tiled) > 1e-2
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_overlap_factor=0.5)  # the package's
    assert vae.tiling_mode == "package"
    package_tiled = vae.decode(latents).sample
    assert _max_diff(package_tiled, original_tiled) > 1e-3 and _max_diff(package_tiled, untiled) > 1e-3
    vae.enable_original_tiling()  # back to the config's tiling, exactly
    assert torch.equal(vae.decode(latents).sample, original_tiled)
    vae.enable_original_tiling(tile_sample_min_size=40)  # fits in one 40 px tile: not tiled
    assert torch.equal(vae.decode(latents).sample, untiled)


@pytest.mark.parametrize(
    "size, overlap, aligned",
    # (17 px at 0.5: the encode's step is aligned, the decode's is not; both must be)
    [(384, 0.25, True), (32, 0.25, True), (48, 1 / 3, True), (48, 0.25, False), (40, 0.25, False), (17, 0.5, False)],
)
def test_original_tiling_alignment(vae, size, overlap, aligned):
    vae.enable_original_tiling(size, overlap)
    try:
        assert vae.original_tiling_is_aligned() is aligned
    finally:
        vae.enable_original_tiling()


@torch.no_grad()
def test_original_tiling_warns_when_the_original_resizes(vae, caplog):
    # 48 px / 0.25 (a `drift_*` golden): the original's decode of 9x7 latents is 80x60 px, not 72x56.
    vae.enable_original_tiling(48, 0.25)
    try:
        with caplog.at_level(logging.WARNING, logger="diffusers_ruyi.models.autoencoder_kl_ruyi"):
            decoded = vae.decode(torch.randn(1, 16, 1, 9, 7)).sample
    finally:
        vae.enable_original_tiling()
    assert decoded.shape[-2:] == (80, 60)
    assert "80x60 instead of 72x56" in caplog.text and "enable_tiling()" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffusers_ruyi.models.autoencoder_kl_ruyi"):
        assert vae.decode(torch.randn(1, 16, 1, 9, 7)).sample.shape[-2:] == (72, 56)  # 32 px tiles: aligned
    assert caplog.text == ""


@torch.no_grad()
def test_original_tiling_refuses_a_last_tile_too_small_to_encode(vae):
    # 48 px tiles every 42 px (overlap 0.125): an 80x48 video is tiled (80 > 48) and its width leaves a 6 px tile,
    # which the original fails to encode inside a convolution.
    vae.enable_original_tiling(48, 0.125)
    try:
        for call in (lambda: vae.tiled_output_size(80, 48), lambda: vae.encode(torch.zeros(1, 3, 1, 80, 48))):
            with pytest.raises(ValueError, match="last tile of 6 px, too small to encode"):
                call()
        assert vae.tiled_output_size(80, 56) == (10, 7)  # a 14 px last tile encodes (to 1 latent)
    finally:
        vae.enable_original_tiling()


@torch.no_grad()
def test_original_tiling_starts_above_the_tile_size(vae):
    # As the original: tiled only when wider or taller than the tile (pixels for encode, latents for decode).
    torch.manual_seed(0)
    image = torch.rand(1, 3, 1, 32, 40) * 2 - 1
    latents = torch.randn(1, 16, 1, 4, 5)
    vae.disable_tiling()
    untiled = [vae.encode(image[..., :32]).latent_dist.mean, vae.decode(latents[..., :4]).sample]
    untiled += [vae.encode(image).latent_dist.mean, vae.decode(latents).sample]
    vae.enable_original_tiling(32, 0.5)
    try:
        assert torch.equal(vae.encode(image[..., :32]).latent_dist.mean, untiled[0])
        assert torch.equal(vae.decode(latents[..., :4]).sample, untiled[1])
        assert _max_diff(vae.encode(image).latent_dist.mean, untiled[2]) > 1e-3
        assert _max_diff(vae.decode(latents).sample, untiled[3]) > 1e-3
    finally:
        vae.enable_original_tiling()


def test_original_tiling_validates_arguments(vae):
    with pytest.raises(ValueError, match="tile_sample_min_size"):
        vae.enable_original_tiling(4)
    with pytest.raises(ValueError, match="tile_overlap_factor"):
        vae.enable_original_tiling(32, 1.0)
    assert vae.tiling_mode == "original" and vae.tile_sample_min_size == 32


# ------------------------------------------------------------------------------------------------------------------
# Configs and loading
# ------------------------------------------------------------------------------------------------------------------


def test_published_config_matches_original_keys_and_shapes(real_checkpoint_dir):
    config = json.loads((real_checkpoint_dir / "vae_config.json").read_text())
    assert is_original_vae_config(config) and "ch" not in config and "ch_mult" not in config
    converted_config = convert_vae_config(config)
    assert converted_config["block_out_channels"] == [128, 256, 512, 512]  # the original's ch/ch_mult defaults
    assert converted_config["compression_mode"] == "slice" and converted_config["use_tiling"]
    assert converted_config["tile_sample_min_size"] == 384 and converted_config["tile_overlap_factor"] == 0.25
    with torch.device("meta"):
        model = AutoencoderKLRuyiCausal3D.from_config(converted_config)
    reference = json.loads((real_checkpoint_dir / "original_vae_keys.json").read_text())
    original = {k: tuple(v) for k, v in reference["state_dict"].items()}
    converted = convert_vae_state_dict({k: torch.empty(0) for k in original})
    assert len(converted) == len(original)  # 1:1
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(converted) == set(ours)
    renamed = dict(zip(original, converted))
    assert {renamed[k]: v for k, v in original.items()} == ours
    assert sum(p.numel() for p in model.parameters()) == reference["num_params"] == 246_478_803


def test_autoencoder_kl_config_without_the_original_keys_is_refused(vae_folder_copy):
    config = json.loads((vae_folder_copy / "config.json").read_text())
    for key in ("slice_compression_vae", "mini_batch_encoder", "mini_batch_decoder", "ch", "ch_mult"):
        config.pop(key)
    (vae_folder_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a Ruyi VAE"):
        AutoencoderKLRuyiCausal3D.from_pretrained(vae_folder_copy)


def test_unexpected_tensors_are_ignored_with_one_warning(vae_folder_copy, golden, caplog):
    weights = vae_folder_copy / "diffusion_pytorch_model.safetensors"
    state_dict = load_file(str(weights))
    state_dict["loss.discriminator.weight"] = torch.zeros(3)
    state_dict["decoder.extra.bias"] = torch.zeros(1)
    save_file(state_dict, str(weights))
    with caplog.at_level(logging.WARNING):
        vae = AutoencoderKLRuyiCausal3D.from_pretrained(vae_folder_copy)
    warnings = [r for r in caplog.records if "does not use" in r.getMessage()]
    assert len(warnings) == 1
    assert "['decoder.extra.bias', 'loss.discriminator.weight']" in warnings[0].getMessage()
    with torch.no_grad():
        assert _max_diff(vae.decode(golden["decode_input"]).sample, golden["decode_output"]) <= TOLERANCE


def test_missing_tensor_is_an_error_that_lists_them(vae_folder_copy):
    weights = vae_folder_copy / "diffusion_pytorch_model.safetensors"
    state_dict = load_file(str(weights))
    del state_dict["decoder.conv_out.weight"]
    del state_dict["encoder.mid_block.attentions.0.to_out.weight"]
    state_dict["loss.discriminator.weight"] = torch.zeros(3)
    save_file(state_dict, str(weights))
    with pytest.raises(ValueError, match=r"Missing keys \(2\)") as error:
        AutoencoderKLRuyiCausal3D.from_pretrained(vae_folder_copy)
    assert "'decoder.conv_out.weight'" in str(error.value)
    assert "'encoder.mid_block.attentions.0.to_out.0.weight'" in str(error.value)


def test_dtype_is_applied_while_reading(tiny_realfmt_checkpoint):
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(tiny_realfmt_checkpoint, subfolder="vae", dtype="bfloat16")
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in vae.parameters())


@torch.no_grad()
def test_save_load_round_trip_keeps_the_variant(vae, golden, tmp_path):
    vae.save_pretrained(tmp_path / "saved")
    reloaded = AutoencoderKLRuyiCausal3D.from_pretrained(tmp_path / "saved")
    assert reloaded.config.compression_mode == "slice" and reloaded.tiling_mode == "original"
    latents = golden["decode_input"][:, :, :3, :5, :4]  # tiled, with a lone first latent and one chunk
    assert torch.equal(reloaded.decode(latents).sample, vae.decode(latents).sample)


def test_original_tiling_refuses_an_overlap_that_leaves_no_step(vae):
    # Kills `size / ratio` -> `size - ratio` in _check_original_tiling (models/autoencoder_kl_ruyi.py): 16 px tiles
    # are 2 latents, and an overlap of 0.75 leaves int(2 * 0.25) = 0 latents between them; 0.5 leaves one.
    with pytest.raises(ValueError, match="`tile_overlap_factor` 0.75 leaves no step between 16 px tiles"):
        vae.enable_original_tiling(16, 0.75)
    try:
        vae.enable_original_tiling(16, 0.5)
        assert vae.tile_sample_min_size == 16
    finally:
        vae.enable_original_tiling()
