import inspect
import json
import pathlib
import shutil

import pytest
import torch
from _helpers import check_vae_operations
from safetensors.torch import load_file, save_file

from diffusers_ruyi.loaders.original_checkpoint import convert_vae_config, is_original_vae_config
from diffusers_ruyi.models.autoencoder_kl_ruyi import AutoencoderKLRuyiCausal3D, _blend_weights, _tile_spans


TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_file(str(golden_dir / "vae_encode_decode.safetensors"))


@pytest.fixture(scope="module")
def vae(tiny_checkpoint):
    # Loaded straight from the ORIGINAL layout (AutoencoderKLMagvit config + original key names).
    return AutoencoderKLRuyiCausal3D.from_pretrained(str(tiny_checkpoint / "vae")).eval()


@pytest.fixture
def original_vae_copy(tiny_checkpoint, tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(tiny_checkpoint / "vae", folder)
    return folder


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------------------------------
# Parity with the original implementation (goldens)
# ------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_encode_video_matches_original(vae, golden):
    posterior = vae.encode(golden["video"]).latent_dist
    assert _max_diff(posterior.mean, golden["video_latent_mean"]) <= TOLERANCE
    assert _max_diff(posterior.logvar, golden["video_latent_logvar"]) <= TOLERANCE


@torch.no_grad()
def test_encode_image_matches_original(vae, golden):
    posterior = vae.encode(golden["image"]).latent_dist
    assert _max_diff(posterior.mean, golden["image_latent_mean"]) <= TOLERANCE
    assert _max_diff(posterior.logvar, golden["image_latent_logvar"]) <= TOLERANCE


@torch.no_grad()
def test_decode_matches_original(vae, golden):
    video = vae.decode(golden["decode_input"]).sample
    assert _max_diff(video, golden["decode_output"]) <= TOLERANCE
    # The causal cache must not leak between calls: a second decode is bit-identical.
    assert torch.equal(vae.decode(golden["decode_input"]).sample, video)


@torch.no_grad()
def test_float32_convolutions_call_onednn_directly_on_contiguous_inputs_only(monkeypatch):
    # Contiguous float32 chunks skip PyTorch's reference kernel by calling oneDNN directly; a channels-last input (after
    # the mid-block attention) goes through `F.conv3d`, which picks the original's kernel and so its round-off.
    from diffusers_ruyi.models.autoencoder_kl_ruyi import RuyiCausalConv3d

    if not torch.backends.mkldnn.is_available():
        pytest.skip("needs oneDNN")
    calls = []
    direct = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *args: calls.append(1) or direct(*args))
    conv = RuyiCausalConv3d(4, 4)
    video = torch.randn(1, 4, 3, 6, 5)
    expected = conv(video)
    assert len(calls) == 1
    channels_last = conv(video.contiguous(memory_format=torch.channels_last_3d))
    assert len(calls) == 1
    torch.testing.assert_close(channels_last, expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_causal_decode_keeps_the_attentions_layout(tiny_checkpoint):
    # The cache variant decodes chunk after chunk through causal convolutions that prefix the frames of the chunk
    # before. The original pads and prefixes in the input's layout, so the channels-last layout of the mid-block
    # attention reaches every convolution after it (their kernels, and so the bits, depend on it).
    config = AutoencoderKLRuyiCausal3D.load_config(str(tiny_checkpoint / "vae"))
    vae = AutoencoderKLRuyiCausal3D.from_config({**config, "layers_per_block": 2}).eval()
    assert vae.config.compression_mode == "cache" and len(vae.decoder.mid_block.attentions) == 1
    for dtype in (torch.float32, torch.bfloat16):
        vae.to(dtype)
        outputs = []
        handles = [
            module.register_forward_hook(lambda module, args, out: outputs.append(out))
            for module in vae.decoder.up_blocks.modules()
            if isinstance(module, torch.nn.Conv3d) and module.kernel_size[0] == 3
        ]
        vae.decode(torch.randn(1, 16, 4, 3, 2, dtype=dtype))
        for handle in handles:
            handle.remove()
        assert len(outputs) > 8
        for output in outputs:
            # In float32 each convolution of a channels-last input runs as `F.conv3d` picks, as the original's: at
            # these sizes PyTorch's reference kernel, whose output is contiguous (oneDNN, at larger ones, keeps
            # channels last). In bfloat16 oneDNN always runs, and the layout reaches every convolution.
            assert output.is_contiguous(memory_format=torch.channels_last_3d) == (dtype == torch.bfloat16)
            assert output.is_contiguous() == (dtype == torch.float32)


def test_config_conversion(tiny_checkpoint):
    original = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())
    assert is_original_vae_config(original)
    config = convert_vae_config(original)
    assert config["block_out_channels"] == [16, 32, 32, 32]
    assert config["num_sample_frames_batch_size"] == 8 and config["num_latent_frames_batch_size"] == 2
    assert config["latent_channels"] == 16 and config["scaling_factor"] == 0.7125
    with pytest.raises(ValueError, match="cache_compression_vae"):
        convert_vae_config({**original, "cache_compression_vae": False})
    with pytest.raises(ValueError, match="mid_block_attention_type"):
        convert_vae_config({**original, "mid_block_attention_type": "temporal"})
    assert config["compression_mode"] == "cache" and config["mid_block_attention_type"] == "spatial"
    assert not config["use_tiling"] and config["force_upcast"]  # upcast_vae: true


def test_attributes(vae):
    assert vae.spatial_compression_ratio == 8
    assert vae.temporal_compression_ratio == 4
    assert vae.config.scaling_factor == 0.7125


def test_defaults_are_the_published_vae():
    # The constructor defaults are the published Ruyi-Mini-7B VAE's converted config, key for key (slice variant, 3D
    # mid-block attention, the original's tiling, scaling 0.18215), as the transformer's are its published config.
    path = pathlib.Path(__file__).parents[1] / "fixtures" / "real_checkpoint" / "vae_config.json"
    published = convert_vae_config(json.loads(path.read_text()))
    parameters = inspect.signature(AutoencoderKLRuyiCausal3D.__init__).parameters
    assert set(published) == set(parameters) - {"self"}
    defaults = {name: parameters[name].default for name in published}
    assert defaults == {name: tuple(v) if isinstance(v, list) else v for name, v in published.items()}


# ------------------------------------------------------------------------------------------------------------------
# Frame counts
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_frames, num_latent, num_decoded",
    [(1, 1, 1), (2, 1, 1), (3, 2, 8), (5, 2, 8), (8, 2, 8), (9, 3, 12), (12, 3, 12), (13, 4, 16), (24, 6, 24)],
)
@torch.no_grad()
def test_frame_counts(vae, num_frames, num_latent, num_decoded):
    # As the original cache VAE: any count encodes (the first frame alone when odd, then 8-frame slices, the last
    # one shorter), and any latent count decodes, to one image for a lone latent and to 4 frames per latent otherwise.
    video = torch.rand(1, 3, num_frames, 32, 24) * 2 - 1
    latents = vae.encode(video).latent_dist.mode()
    assert latents.shape == (1, 16, num_latent, 4, 3)
    assert vae.num_latent_frames(num_frames) == num_latent
    assert vae.num_sample_frames(num_latent) == num_decoded
    decoded = vae.decode(latents).sample
    assert decoded.shape == (1, 3, num_decoded, 32, 24)


def test_frame_count_rules_of_the_cache_variant(vae):
    assert [vae.num_latent_frames(f) for f in (1, 2, 3, 4, 5, 8, 9, 12, 13, 16, 17, 20, 24)] == [
        1, 1, 2, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6,
    ]  # fmt: skip
    assert [vae.num_sample_frames(n) for n in range(1, 8)] == [1, 8, 12, 16, 20, 24, 28]


def test_no_frames_are_refused(vae):
    # The original fails on them too (its encoder concatenates no slices, its decoder convolves nothing).
    with pytest.raises(ValueError, match=r"encode needs at least one frame, got 0"):
        vae.encode(torch.zeros(1, 3, 0, 16, 16))
    with pytest.raises(ValueError, match=r"decode needs at least one latent frame, got 0"):
        vae.decode(torch.zeros(1, 16, 0, 2, 2))


def _frame_count_cases(golden_dir):
    return json.loads((golden_dir / "vae_cache_frame_counts.json").read_text())


FRAME_COUNT_CASES = [
    "encode_12_frames",
    "encode_9_frames_batch2",
    "encode_13_frames",
    "decode_3_latents",
    "decode_5_latents_batch2",
    "tiled_16_half",
]


@torch.no_grad()
@pytest.mark.parametrize("name", FRAME_COUNT_CASES)
def test_frame_counts_match_original(golden_dir, original_vae_copy, name):
    # Goldens of the original cache VAE on counts that are not whole chunks (`make_cache_vae_frame_count_goldens.py`).
    case = _frame_count_cases(golden_dir)[name]
    config = json.loads((original_vae_copy / "config.json").read_text())
    (original_vae_copy / "config.json").write_text(json.dumps({**config, **case["config"]}))
    vae = AutoencoderKLRuyiCausal3D.from_pretrained(str(original_vae_copy)).eval()
    assert vae.config.compression_mode == "cache" and vae.use_tiling == bool(case["config"])
    tensors = load_file(str(golden_dir / "vae_cache_frame_counts.safetensors"))
    check_vae_operations(vae, case["operations"], tensors, TOLERANCE)


# ------------------------------------------------------------------------------------------------------------------
# Tiling and slicing
# ------------------------------------------------------------------------------------------------------------------


def test_tile_spans_cover_and_blend_to_one():
    for size, tile, overlap in [(64, 32, 8), (12, 6, 3), (90, 32, 8), (33, 32, 8)]:
        spans = _tile_spans(size, tile, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(end - start <= tile for start, end in spans)
        assert all(b[0] - a[1] <= -overlap + 1 for a, b in zip(spans, spans[1:]))  # neighbours overlap
        total = torch.zeros(size * 8)
        for i, (start, end) in enumerate(spans):
            weight = _blend_weights(spans, i, 8, "cpu", torch.float32)
            assert (weight > 0).all()
            total[start * 8 : end * 8] += weight
        # Two-tile overlaps are a linear cross-fade: the ramps sum to one everywhere.
        torch.testing.assert_close(total, torch.ones_like(total))


@torch.no_grad()
def test_tiled_decode_close_to_untiled(vae):
    latents = torch.randn(1, 16, 2, 12, 10, generator=torch.Generator().manual_seed(0))
    reference = vae.decode(latents).sample
    first_tile_alone = vae.decode(latents[:, :, :, :6, :6]).sample
    try:
        vae.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=48, tile_overlap_factor=0.5)
        tiled = vae.decode(latents).sample  # 3x3 tiles of 6x6 latents, overlap 3 (rows) / 4 (columns)
    finally:
        vae.disable_tiling()
    assert tiled.shape == reference.shape
    # Where only the first tile contributes (rows < 24 px, columns < 16 px), tiling is exactly that tile's decode.
    assert torch.equal(tiled[..., :24, :16], first_tile_alone[..., :24, :16])
    # Versus the untiled decode: each tile computes its own group-norm statistics and sees less context, so tiling
    # approximates. Measured on this tiny random model with 48 px tiles: mean abs error 0.28 (mean |output| 0.47);
    # a single tile decoded alone already differs by 0.19 on its own region, so the error is context, not blending.
    error = (tiled - reference).abs()
    assert error.mean().item() <= 0.35
    assert error.max().item() <= reference.abs().max().item()
    # disable_tiling restores the exact untiled result.
    assert torch.equal(vae.decode(latents).sample, reference)


@torch.no_grad()
def test_tiled_encode_close_to_untiled(vae):
    video = torch.rand(1, 3, 8, 96, 80, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = vae.encode(video).latent_dist.mean
    try:
        vae.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=48, tile_overlap_factor=0.5)
        tiled = vae.encode(video).latent_dist.mean
    finally:
        vae.disable_tiling()
    error = (tiled - reference).abs()
    print(f"tiled encode: mean abs error {error.mean().item():.4f}, max {error.max().item():.4f}")
    assert error.mean().item() <= 0.15 and error.max().item() <= 1.0  # measured: see the printed values
    assert torch.equal(vae.encode(video).latent_dist.mean, reference)


@torch.no_grad()
@pytest.mark.parametrize("decode", [True, False])
def test_package_tiling_cross_fades_the_tiles_it_decodes_alone(vae, decode):
    # Two tiles along the width (9 latents, 6-latent tiles, overlap 3 -> spans (0, 6) and (3, 9)): the tiled result
    # is each tile's own result, weighted by its ramp and normalised by the summed ramps. The closeness tests above
    # cannot see how the overlap is accumulated; this pins it.
    generator = torch.Generator().manual_seed(0)
    if decode:
        source, scale, out_scale = torch.randn(1, 16, 2, 6, 9, generator=generator), 1, 8
        run = lambda x: vae.decode(x).sample  # noqa: E731
    else:
        source, scale, out_scale = torch.rand(1, 3, 8, 48, 72, generator=generator) * 2 - 1, 8, 1
        run = lambda x: vae.encode(x).latent_dist.mean  # noqa: E731
    spans = [(0, 6), (3, 9)]
    assert _tile_spans(9, 6, 3) == spans
    tiles = [run(source[..., a * scale : b * scale]) for a, b in spans]
    try:
        vae.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=48, tile_overlap_factor=0.5)
        tiled = run(source)
    finally:
        vae.disable_tiling()
    expected = torch.zeros_like(tiled)
    weight_sum = torch.zeros(tiled.shape[-1])
    for index, ((a, b), tile) in enumerate(zip(spans, tiles)):
        weight = _blend_weights(spans, index, out_scale, "cpu", torch.float32)
        expected[..., a * out_scale : b * out_scale] += tile * weight
        weight_sum[a * out_scale : b * out_scale] += weight
    torch.testing.assert_close(tiled, expected / weight_sum, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_tiling_not_triggered_for_small_inputs(vae, golden):
    try:
        vae.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64)
        video = vae.decode(golden["decode_input"]).sample  # 64x48 fits in one tile
    finally:
        vae.disable_tiling()
    assert _max_diff(video, golden["decode_output"]) <= TOLERANCE


def test_enable_tiling_validates_arguments(vae):
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.enable_tiling(tile_sample_min_height=100)
    with pytest.raises(ValueError, match="tile_overlap_factor"):
        vae.enable_tiling(tile_overlap_factor=0.8)
    assert not vae.use_tiling


def _decoder_calls(vae, latents):
    calls = []
    handle = vae.decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        vae.decode(latents)
    finally:
        handle.remove()
    return len(calls)


@torch.no_grad()
def test_tiling_strides_as_diffusers_names_them(vae):
    # diffusers' `tile_sample_stride_*` (AutoencoderKLWan): overlap = tile - stride, per dimension.
    latents = torch.randn(1, 16, 2, 12, 10, generator=torch.Generator().manual_seed(0))
    untiled = _decoder_calls(vae, latents)
    try:
        vae.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=48, tile_overlap_factor=0.5)
        by_factor, factor_calls = vae.decode(latents).sample, _decoder_calls(vae, latents)
        assert vae._latent_tile_geometry() == (6, 6, 3, 3)
        vae.enable_tiling(
            tile_sample_min_height=48,
            tile_sample_min_width=48,
            tile_sample_stride_height=24,
            tile_sample_stride_width=24,
        )
        assert vae._latent_tile_geometry() == (6, 6, 3, 3)
        assert torch.equal(vae.decode(latents).sample, by_factor) and _decoder_calls(vae, latents) == factor_calls
        assert factor_calls == 3 * 3 * untiled  # rows: 12 latents in tiles of 6 overlapping by 3; columns: 10
        # A stride of a whole tile (no overlap) for the rows, 40 px (one latent of overlap) for the columns:
        # 2 rows of 6 latents, and columns of at most 6 overlapping by at least 1 (2 tiles of 6 over 10 latents).
        vae.enable_tiling(tile_sample_stride_height=48, tile_sample_stride_width=40)
        assert vae._latent_tile_geometry() == (6, 6, 0, 1)
        assert _decoder_calls(vae, latents) == 2 * 2 * untiled
        # A call without strides goes back to the overlap factor.
        vae.enable_tiling()
        assert vae._latent_tile_geometry() == (6, 6, 3, 3)
    finally:
        vae.disable_tiling()


def test_tiling_strides_are_validated(vae):
    for kwargs, match in [
        (dict(tile_sample_stride_height=20), "`tile_sample_stride_height` must be a positive multiple of 8"),
        (
            dict(tile_sample_min_width=48, tile_sample_stride_width=56),
            "`tile_sample_stride_width` .* at most the tile \\(48\\)",
        ),
        (dict(tile_sample_stride_width=0), "`tile_sample_stride_width` must be a positive multiple"),
        (
            dict(tile_overlap_factor=0.25, tile_sample_stride_height=64, tile_sample_stride_width=64),
            "Give `tile_overlap_factor` or both `tile_sample_stride_\\*`",
        ),
    ]:
        with pytest.raises(ValueError, match=match):
            vae.enable_tiling(**kwargs)
    assert not vae.use_tiling


@torch.no_grad()
def test_slicing_matches_batched(vae, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 8, 32, 24, generator=generator) * 2 - 1
    latents = torch.randn(2, 16, 2, 4, 3, generator=generator)
    encoded, decoded = vae.encode(video).latent_dist.mean, vae.decode(latents).sample
    batches = []  # the batch sizes the encoder and the decoder see
    for name in ("_encode", "_decode"):
        run = getattr(vae, name)
        monkeypatch.setattr(vae, name, lambda x, run=run: batches.append(x.shape[0]) or run(x))
    try:
        vae.enable_slicing()
        encoded_sliced, decoded_sliced = vae.encode(video).latent_dist.mean, vae.decode(latents).sample
        assert batches == [1, 1, 1, 1]  # one video at a time: what slicing saves
        vae.encode(video[:1]), vae.decode(latents[:1])
        assert batches[4:] == [1, 1]
    finally:
        vae.disable_slicing()
    # Identical up to float round-off (batched vs per-sample convolution kernels; measured ~8e-6).
    assert _max_diff(encoded_sliced, encoded) <= 1e-5
    assert _max_diff(decoded_sliced, decoded) <= 1e-5


# ------------------------------------------------------------------------------------------------------------------
# Loading and saving
# ------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_save_load_round_trip(vae, golden, tmp_path):
    vae.save_pretrained(tmp_path / "saved")
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved_config["_class_name"] == "AutoencoderKLRuyiCausal3D"
    reloaded = AutoencoderKLRuyiCausal3D.from_pretrained(str(tmp_path / "saved")).eval()
    assert torch.equal(reloaded.decode(golden["decode_input"]).sample, vae.decode(golden["decode_input"]).sample)
    assert torch.equal(reloaded.encode(golden["image"]).latent_dist.mean, vae.encode(golden["image"]).latent_dist.mean)


@pytest.mark.parametrize("kwarg", ["dtype", "torch_dtype"])
def test_load_original_with_dtype(tiny_checkpoint, kwarg):
    model = AutoencoderKLRuyiCausal3D.from_pretrained(str(tiny_checkpoint), subfolder="vae", **{kwarg: torch.bfloat16})
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_missing_key_raises(original_vae_copy):
    weights = original_vae_copy / "diffusion_pytorch_model.safetensors"
    state_dict = load_file(str(weights))
    del state_dict["decoder.conv_out.weight"]
    save_file(state_dict, str(weights))
    with pytest.raises(ValueError, match=r"Missing keys \(1\): \['decoder.conv_out.weight'\]"):
        AutoencoderKLRuyiCausal3D.from_pretrained(str(original_vae_copy))


def test_unexpected_key_is_ignored_with_a_warning(original_vae_copy, golden, caplog):
    # The original loads its VAE with strict=False; tensors the model does not have are listed once and left out.
    weights = original_vae_copy / "diffusion_pytorch_model.safetensors"
    state_dict = load_file(str(weights))
    state_dict["decoder.extra.weight"] = torch.zeros(1)
    save_file(state_dict, str(weights))
    with caplog.at_level("WARNING"):
        model = AutoencoderKLRuyiCausal3D.from_pretrained(str(original_vae_copy))
    assert "ignoring them, as the original does: ['decoder.extra.weight']" in caplog.text
    with torch.no_grad():
        assert _max_diff(model.encode(golden["image"]).latent_dist.mean, golden["image_latent_mean"]) <= TOLERANCE


def test_forward_and_gradient_checkpointing(vae, caplog):
    video = torch.rand(1, 3, 8, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = vae(video).sample
        assert vae(video, return_dict=False)[0].shape == expected.shape == video.shape
    latents = torch.randn(1, vae.config.latent_channels, 4, 2, 2, requires_grad=True)  # two chunks
    vae.decode(latents).sample.square().sum().backward()
    expected = latents.grad.clone()
    latents.grad = None
    vae.enable_gradient_checkpointing()
    try:
        encoded = vae.encode(video.requires_grad_()).latent_dist.mean
        encoded.sum().backward()
        assert video.grad is not None and torch.isfinite(video.grad).all()
        # The cache variant's decoder carries activations between chunks: it is not checkpointed, and says so once.
        with caplog.at_level("WARNING"):
            for _ in range(2):
                latents.grad = None
                vae.decode(latents).sample.square().sum().backward()
                torch.testing.assert_close(latents.grad, expected, rtol=1e-5, atol=1e-6)
        assert caplog.text.count("Gradient checkpointing skips the decoder of the cache VAE variant") == 1
    finally:
        vae.disable_gradient_checkpointing()
        vae.zero_grad(set_to_none=True)


@torch.no_grad()
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # from `mkldnn.flags` itself
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_convolutions_run_on_onednn(monkeypatch, causal):
    # At a few frames PyTorch would pick its slow reference conv3d kernel on the CPU; the layer calls oneDNN itself
    # (same result), and falls back to `F.conv3d` when oneDNN is off.
    from diffusers_ruyi.models.autoencoder_kl_ruyi import RuyiCausalCache, RuyiCausalConv3d

    torch.manual_seed(0)
    conv = RuyiCausalConv3d(16, 32).eval()
    x = torch.randn(1, 16, 4, 12, 10)
    calls = []
    onednn = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *args: calls.append(1) or onednn(*args))

    def run():
        cache = RuyiCausalCache() if causal else None
        if cache is not None:
            cache.begin_chunk()
        return conv(x, cache)

    fast = run()
    assert len(calls) == 1
    with torch.backends.mkldnn.flags(enabled=False):
        reference = run()
    assert len(calls) == 1
    padded = torch.cat([x[:, :, :1]] * 2 + [x], dim=2) if causal else x
    expected = torch.nn.functional.conv3d(padded, conv.weight, conv.bias, 1, (0 if causal else 1, 1, 1))
    torch.testing.assert_close(reference, expected, rtol=0, atol=0)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    # Under CPU autocast the convolution runs in the autocast dtype, as `F.conv3d` does (autocast does not intercept
    # the direct oneDNN call, which left it in float32).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = run()
        expected = torch.nn.functional.conv3d(padded, conv.weight, conv.bias, 1, (0 if causal else 1, 1, 1))
    assert len(calls) == 1 and autocast.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(autocast, expected, rtol=0, atol=0)


@torch.no_grad()
def test_a_config_saved_before_the_variant_keys_loads_as_the_cache_variant(vae, tmp_path):
    # Configs saved before `compression_mode`, `mid_block_attention_type` and `use_tiling` existed meant the cache
    # variant without tiling; the defaults (now the published slice VAE's) would read them otherwise.
    vae.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("compression_mode", "mid_block_attention_type", "use_tiling"):
        del config[key]
    config_path.write_text(json.dumps(config))
    old = AutoencoderKLRuyiCausal3D.from_pretrained(tmp_path).eval()
    assert (old.config.compression_mode, old.config.mid_block_attention_type, old.config.use_tiling) == (
        "cache",
        "spatial",
        False,
    )
    latents = torch.randn(1, 16, 2, 4, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(old.decode(latents).sample, vae.decode(latents).sample, rtol=0, atol=0)
    # Read by hand and given to from_config, the same.
    assert AutoencoderKLRuyiCausal3D.from_config(config).config.compression_mode == "cache"
    # A config that names its variant keeps it.
    config["compression_mode"] = "slice"
    config_path.write_text(json.dumps(config))
    assert AutoencoderKLRuyiCausal3D.from_pretrained(tmp_path).config.mid_block_attention_type == "3d"


@torch.no_grad()
def test_bfloat16_on_an_amx_cpu_warns_once_unless_onednn_is_capped(vae, monkeypatch, caplog):
    # torch's oneDNN bfloat16 conv3d on AMX CPUs returns wrong values at random (docs/pipeline.md, known issues).
    import diffusers_ruyi.models.autoencoder_kl_ruyi as module

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    latents, video = torch.randn(1, 16, 1, 4, 3), torch.rand(1, 3, 1, 32, 24)
    bf16 = AutoencoderKLRuyiCausal3D.from_config(vae.config).to(torch.bfloat16).eval()
    runs = {
        "decode": lambda: bf16.decode(latents.bfloat16()),
        "encode": lambda: bf16.encode(video.bfloat16()),
        "autocast": lambda: torch.autocast("cpu", torch.bfloat16)(vae.decode)(latents),
    }
    message = "start Python with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16"
    for name, run in runs.items():
        for cap, warns in (("AVX512_CORE_BF16", False), ("AVX512_CORE_AMX", True), (None, True)):
            monkeypatch.setattr(module, "_warned_amx_bfloat16", False)
            if cap is None:
                monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
            else:  # (oneDNN read the suite's cap long ago: these runs still use AVX-512 kernels)
                monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
            caplog.clear()
            with caplog.at_level("WARNING"):
                run()
                run()
                vae.decode(latents)  # float32: never
            assert caplog.text.count(message) == (1 if warns else 0), (name, cap)
