"""Tests of `RuyiTransformer3DModel`: parity with the original (goldens), loading, diffusers features, validation."""

import json
import logging
import shutil

import pytest
import torch
from _helpers import transformer_inputs
from safetensors.torch import load_file, save_file

from diffusers_ruyi.loaders.original_checkpoint import (
    TRANSFORMER_KEY_RENAMES,
    convert_transformer_config,
    convert_transformer_state_dict,
    is_original_transformer_config,
)
from diffusers_ruyi.models.transformer_ruyi import RuyiTransformer3DModel, RuyiTransformerBlock


GOLDEN_TOL = 1e-4
ROPE_NAMES = ("rope_cos", "rope_sin")


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_file(str(golden_dir / "transformer_forward.safetensors"))


@pytest.fixture
def golden_inputs(golden):
    """Every forward input of the golden except the RoPE tables (the model computes those when not given)."""
    return {k: v.clone() for k, v in golden.items() if k != "output" and k not in ROPE_NAMES}


def _load(tiny_checkpoint, **kwargs) -> RuyiTransformer3DModel:
    return RuyiTransformer3DModel.from_pretrained(tiny_checkpoint, subfolder="transformer", **kwargs)


@pytest.fixture
def model(tiny_checkpoint):
    return _load(tiny_checkpoint)


def _copy_transformer(tiny_checkpoint, tmp_path, edit):
    """Copies the tiny transformer into ``tmp_path/transformer``, its weights replaced by ``edit(state_dict)``."""
    folder = tmp_path / "transformer"
    shutil.copytree(tiny_checkpoint / "transformer", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    save_file(edit(load_file(str(weights))), str(weights))


def _random_inputs(config, batch=2, frames=3, height=8, width=10, clip_tokens=16):
    inputs = transformer_inputs(config, batch, frames, height, width, clip_tokens)
    return {**inputs, "timestep": torch.linspace(999.0, 1.0, batch)}


# ----------------------------------------------------------------------------------------------------------------
# Parity with the original (goldens)
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_golden_forward_with_golden_rope(model, golden, golden_inputs):
    rope = (golden["rope_cos"], golden["rope_sin"])
    output = model(**golden_inputs, image_rotary_emb=rope).sample
    assert output.shape == golden["output"].shape == (2, 32, 4, 8, 12)
    assert (output - golden["output"]).abs().max().item() <= GOLDEN_TOL


@torch.no_grad()
def test_golden_forward_computes_rope(model, golden, golden_inputs):
    output = model(**golden_inputs, image_rotary_emb=None).sample
    assert (output - golden["output"]).abs().max().item() <= GOLDEN_TOL


def test_rope_helper_matches_golden(model, golden):
    height, width = golden["hidden_states"].shape[-2:]
    cos, sin = model.rope.frame_embedding(height, width)
    assert cos.dtype == sin.dtype == torch.float32
    torch.testing.assert_close(cos, golden["rope_cos"], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, golden["rope_sin"], rtol=0, atol=1e-6)
    # Cached per size and device.
    assert model.rope.frame_embedding(height, width)[0] is cos


# ----------------------------------------------------------------------------------------------------------------
# Loading and saving
# ----------------------------------------------------------------------------------------------------------------


def test_original_config_conversion(tiny_checkpoint):
    original = json.loads((tiny_checkpoint / "transformer" / "config.json").read_text())
    assert is_original_transformer_config(original)
    config = convert_transformer_config(original)
    assert "_class_name" not in config and "hidden_size" not in config
    assert config["out_channels"] == 32 and config["in_channels"] == 48 and config["num_layers"] == 4
    assert not is_original_transformer_config({"_class_name": "RuyiTransformer3DModel"})
    # out_channels defaults to 2 * in_channels with learn_sigma, which is the non-inpainting model Ruyi does not use.
    with pytest.raises(ValueError, match="`out_channels` is null"):
        convert_transformer_config({**original, "out_channels": None})
    with pytest.raises(ValueError, match="non-inpainting"):
        convert_transformer_config({**original, "out_channels": 96})
    with pytest.raises(ValueError, match="basic_block_type"):
        convert_transformer_config({**original, "basic_block_type": "motionmodule"})
    with pytest.raises(ValueError, match="time_position_encoding"):
        convert_transformer_config({**original, "time_position_encoding": False})
    with pytest.raises(ValueError, match="hidden_size"):
        convert_transformer_config({**original, "hidden_size": 64})


def test_state_dict_conversion_is_identity_except_temporal_tables(tiny_checkpoint):
    original = load_file(str(tiny_checkpoint / "transformer" / "diffusion_pytorch_model.safetensors"))
    converted = convert_transformer_state_dict(original)
    dropped = set(original) - set(converted)
    assert dropped == {f"blocks.{i}.t_embed.pe" for i in range(4)}
    assert all(converted[k] is original[k] for k in converted)
    assert list(TRANSFORMER_KEY_RENAMES.values()) == [None]


def test_load_original_layout_respects_dtype(tiny_checkpoint):
    model = _load(tiny_checkpoint, dtype=torch.bfloat16)
    assert type(model) is RuyiTransformer3DModel
    assert model.dtype == torch.bfloat16
    assert not model.training
    assert _load(tiny_checkpoint, torch_dtype=torch.float16).dtype == torch.float16


def test_load_original_layout_defaults_to_float32(tiny_checkpoint, tmp_path):
    # As diffusers' own loader: float32 unless a dtype is requested, even for a bf16 file.
    _copy_transformer(tiny_checkpoint, tmp_path, lambda sd: {k: v.to(torch.bfloat16) for k, v in sd.items()})
    assert RuyiTransformer3DModel.from_pretrained(tmp_path, subfolder="transformer").dtype == torch.float32


def test_save_load_roundtrip(model, golden_inputs, tmp_path):
    model.save_pretrained(tmp_path / "diffusers")
    saved_config = json.loads((tmp_path / "diffusers" / "config.json").read_text())
    assert saved_config["_class_name"] == "RuyiTransformer3DModel"
    reloaded = RuyiTransformer3DModel.from_pretrained(tmp_path / "diffusers")
    with torch.no_grad():
        expected = model(**golden_inputs).sample
        actual = reloaded(**golden_inputs).sample
    assert torch.equal(expected, actual)


def test_missing_key_raises(tiny_checkpoint, tmp_path):
    missing = "blocks.1.attn2.to_k.weight"
    _copy_transformer(tiny_checkpoint, tmp_path, lambda sd: {k: v for k, v in sd.items() if k != missing})
    with pytest.raises(ValueError, match=r"Missing keys \(1\).*blocks\.1\.attn2\.to_k\.weight"):
        RuyiTransformer3DModel.from_pretrained(tmp_path, subfolder="transformer")


def test_unexpected_key_is_ignored_with_one_warning(tiny_checkpoint, tmp_path, caplog):
    # The original loads its transformer with `strict=False` (`from_pretrained_2d`): a tensor the model does not have
    # is ignored there too.
    _copy_transformer(
        tiny_checkpoint, tmp_path, lambda sd: {**sd, "blocks.0.motion_module.proj.weight": torch.zeros(2, 2)}
    )
    expected = RuyiTransformer3DModel.from_pretrained(tiny_checkpoint, subfolder="transformer").state_dict()
    with caplog.at_level(logging.WARNING):
        loaded = RuyiTransformer3DModel.from_pretrained(tmp_path, subfolder="transformer").state_dict()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    warnings = [r.getMessage() for r in caplog.records if "blocks.0.motion_module.proj.weight" in r.getMessage()]
    assert len(warnings) == 1


def test_wrong_shape_raises(tiny_checkpoint, tmp_path):
    _copy_transformer(tiny_checkpoint, tmp_path, lambda sd: {**sd, "proj_out.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match="proj_out.bias"):
        RuyiTransformer3DModel.from_pretrained(tmp_path, subfolder="transformer")


# ----------------------------------------------------------------------------------------------------------------
# diffusers features
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_dict_and_tuple_outputs_match(model, golden_inputs):
    as_dict = model(**golden_inputs, return_dict=True).sample
    as_tuple = model(**golden_inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(as_dict, as_tuple[0])


def test_gradient_checkpointing_gives_same_gradients(tiny_checkpoint, golden_inputs):
    def grads(checkpointing):
        model = _load(tiny_checkpoint).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        output = model(**golden_inputs).sample
        output.square().mean().backward()
        return output.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    output, expected = grads(False)
    output_ckpt, actual = grads(True)
    assert torch.equal(output, output_ckpt)
    assert expected.keys() == actual.keys() and len(expected) > 100
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("backend", ["native", "_native_math"])
@torch.no_grad()
def test_attention_backends(model, golden, golden_inputs, backend):
    reference = model(**golden_inputs).sample
    model.set_attention_backend(backend)
    processors = [m.processor for m in model.modules() if hasattr(m, "processor")]
    assert len(processors) == 3 * len(model.blocks)
    assert all(p._attention_backend is not None and p._attention_backend.value == backend for p in processors)
    output = model(**golden_inputs).sample
    torch.testing.assert_close(output, reference, rtol=0, atol=1e-5)
    assert (output - golden["output"]).abs().max().item() <= GOLDEN_TOL
    model.reset_attention_backend()


@torch.no_grad()
def test_fused_qkv_projections(model, golden_inputs):
    reference = model(**golden_inputs).sample
    model.fuse_qkv_projections()
    assert model.blocks[0].attn1.fused_projections and hasattr(model.blocks[0].attn1, "to_qkv")
    assert hasattr(model.blocks[0].attn2, "to_kv")
    torch.testing.assert_close(model(**golden_inputs).sample, reference, rtol=0, atol=1e-5)
    model.unfuse_qkv_projections()
    torch.testing.assert_close(model(**golden_inputs).sample, reference, rtol=0, atol=1e-6)


@torch.no_grad()
def test_training_mode_computes_what_inference_does(model, golden_inputs):
    # Ruyi has no dropout (the original's attention output dropout is 0): a LoRA trains on the inference forward.
    expected = model.eval()(**golden_inputs).sample
    torch.testing.assert_close(model.train()(**golden_inputs).sample, expected, rtol=0, atol=0)
    model.eval()


@torch.no_grad()
def test_a_model_saved_fused_loads_unfused(model, golden_inputs, tmp_path):
    reference = model(**golden_inputs).sample
    model.fuse_qkv_projections()
    model.save_pretrained(tmp_path)  # to_q/to_k/to_v and their fused copies
    loaded, info = RuyiTransformer3DModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not loaded.blocks[0].attn1.fused_projections and info["unexpected_keys"] == []
    torch.testing.assert_close(loaded(**golden_inputs).sample, reference, rtol=0, atol=0)


@torch.no_grad()
def test_bf16_forward(tiny_checkpoint, golden, golden_inputs):
    model = _load(tiny_checkpoint).to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in golden_inputs.items()}
    output = model(**inputs).sample
    assert output.dtype == torch.bfloat16
    assert torch.isfinite(output).all()
    # bf16 has ~3 significant digits; outputs are O(1).
    assert (output.float() - golden["output"]).abs().max().item() < 0.15


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, tokens", [(2, 16), (3, 25)])  # 25 CLIP tokens: the key positions are resized
def test_clip_resampler_computes_what_the_original_multihead_attention_does(tiny_checkpoint, dtype, batch, tokens):
    # The original resampler: sequence-first tensors through `nn.MultiheadAttention` (asking for the weights, so
    # unfused). Built here from torch's own module with the same weights, it must agree bit for bit, in bfloat16 too,
    # where fused SDPA or batch-first layouts differ by up to 1e-3 (and the transformer's output by 1.6e-2).
    model = _load(tiny_checkpoint).to(dtype)
    resampler, attention = model.clip_projection, model.clip_projection.attn
    embed_dim = attention.out_proj.in_features
    reference = torch.nn.MultiheadAttention(embed_dim, attention.num_heads).to(dtype).eval()
    reference.load_state_dict(attention.state_dict())
    clip_width = model.config.projection_dim  # the CLIP features the resampler takes
    clip = torch.randn(batch, tokens, clip_width, generator=torch.Generator().manual_seed(0)).to(dtype)
    kv = resampler.ln_kv(resampler.kv_proj(clip)).permute(1, 0, 2)
    query = resampler.ln_q(resampler.query).unsqueeze(1).repeat(1, batch, 1) + resampler.pos_embed.unsqueeze(1)
    key = kv + resampler._key_positions(tokens).unsqueeze(1)
    expected = reference(query, key, kv)[0].permute(1, 0, 2)
    assert torch.equal(resampler(clip), expected)


@torch.no_grad()
def test_built_under_a_bf16_default_every_weight_is_bf16(tiny_checkpoint):
    # `from_config` under `torch.set_default_dtype(torch.bfloat16)` (how a benchmark builds random full-size
    # weights on the GPU): no weight may stay float32, or the CLIP branch mixes dtypes and the forward fails.
    config = RuyiTransformer3DModel.load_config(tiny_checkpoint, subfolder="transformer")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = RuyiTransformer3DModel.from_config(config).eval()
    finally:
        torch.set_default_dtype(previous)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in transformer_inputs(config).items()}
    output = model(inputs.pop("hidden_states"), torch.full((2,), 500.0, dtype=torch.bfloat16), **inputs).sample
    assert output.dtype == torch.bfloat16


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_layerwise_casting_fp8(tiny_checkpoint, golden, golden_inputs, compute_dtype):
    # Under layerwise casting the un-hooked (skipped) modules run in the model dtype, so the model and the inputs
    # are in the compute dtype, as diffusers expects.
    model = _load(tiny_checkpoint, dtype=compute_dtype)
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
    block = model.blocks[3]
    for linear in (block.attn1.to_q, block.attn2.to_k, block.attn_clip.to_v, block.ff.net[2], block.skip_linear):
        assert linear.weight.dtype == torch.float8_e4m3fn
    for kept in (
        model.pos_embed.proj.weight,
        model.proj_out.weight,
        model.norm_out.linear.weight,
        model.time_extra_emb.timestep_embedder.linear_1.weight,
        model.text_embedder.linear_1.weight,
        model.clip_projection.attn.out_proj.weight,
        block.norm1.linear.weight,
        block.norm2.weight,
    ):
        assert kept.dtype == compute_dtype
    inputs = {k: v.to(compute_dtype) if v.is_floating_point() else v for k, v in golden_inputs.items()}
    output = model(**inputs).sample
    assert output.dtype == compute_dtype and torch.isfinite(output).all()
    assert (output.float() - golden["output"]).abs().max().item() < 0.3
    # Weights are back in fp8 after the forward.
    assert block.attn1.to_q.weight.dtype == torch.float8_e4m3fn


def test_block_registered_for_first_block_caches(model, golden_inputs):
    from diffusers import FirstBlockCacheConfig
    from diffusers.hooks._helpers import TransformerBlockRegistry

    assert TransformerBlockRegistry.get(RuyiTransformerBlock).return_hidden_states_index == 0
    with torch.no_grad():
        reference = model(**golden_inputs).sample
        model.enable_cache(FirstBlockCacheConfig(threshold=0.0))
        with model.cache_context("cond"):
            output = model(**golden_inputs).sample
    model.disable_cache()
    torch.testing.assert_close(output, reference, rtol=0, atol=1e-6)


def test_lora_scale_zero_matches_base(model, golden_inputs):
    from peft import LoraConfig

    with torch.no_grad():
        reference = model(**golden_inputs).sample
    model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v", "proj"], init_lora_weights=False))
    with torch.no_grad():
        with_lora = model(**golden_inputs).sample
        scaled_off = model(**golden_inputs, attention_kwargs={"scale": 0.0}).sample
    assert not torch.allclose(with_lora, reference, atol=1e-4)
    torch.testing.assert_close(scaled_off, reference, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Other sizes and code paths
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_layers": 2},
        {"num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 8, "mlp_ratio": 3.0},
        # CLIP width != cross-attention width (kv projection) and 4x4 queries over 6x6 CLIP tokens (resized grid).
        {"num_layers": 4, "projection_dim": 40, "n_query": 16},
    ],
)
@torch.no_grad()
def test_other_sizes_run(overrides):
    config = {
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 48,
        "out_channels": 32,
        "patch_size": 2,
        "n_query": 4,
        "projection_dim": 32,
        "num_layers": 4,
        "mlp_ratio": 2.0,
        "cross_attention_dim": 32,
        "cross_attention_dim_t5": 24,
        "pooled_projection_dim": 16,
        "text_len": 5,
        "text_len_t5": 7,
        **overrides,
    }
    model = RuyiTransformer3DModel(**config).eval()
    assert len(model.blocks) == config["num_layers"]
    assert sum(block.skip_linear is not None for block in model.blocks) == config["num_layers"] // 2 - 1
    inputs = _random_inputs(config, clip_tokens=36 if config["projection_dim"] == 40 else 9)
    output = model(**inputs).sample
    assert output.shape == (2, 32, 3, 8, 10)
    assert torch.isfinite(output).all()


@torch.no_grad()
def test_single_frame_and_missing_clip_paths(model):
    config = dict(model.config)
    inputs = _random_inputs(config, batch=1, frames=1)
    assert model(**inputs).sample.shape == (1, 32, 1, 8, 10)
    inputs.pop("clip_encoder_hidden_states")
    inputs.pop("clip_attention_mask")
    assert torch.isfinite(model(**inputs).sample).all()
    # A scalar timestep is broadcast over the batch.
    inputs = _random_inputs(config, batch=2, frames=2)
    expected = model(**{**inputs, "timestep": torch.tensor([500.0, 500.0])}).sample
    torch.testing.assert_close(model(**{**inputs, "timestep": torch.tensor(500.0)}).sample, expected)


@pytest.mark.parametrize("num_layers", [0, 3, 5])
def test_num_layers_must_be_one_or_even(num_layers):
    # The original pops one skip more than it pushed with an odd count >= 3.
    with pytest.raises(ValueError, match="num_layers"):
        RuyiTransformer3DModel(num_layers=num_layers, num_attention_heads=2, attention_head_dim=16)


@torch.no_grad()
def test_one_block_runs_without_skips():
    # One block is the original's other valid count: nothing pushed, nothing popped.
    config = {"num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 48, "out_channels": 32, "n_query": 4,
              "projection_dim": 32, "num_layers": 1, "mlp_ratio": 2.0, "cross_attention_dim": 32,
              "cross_attention_dim_t5": 24, "pooled_projection_dim": 16, "text_len": 5, "text_len_t5": 7}  # fmt: skip
    model = RuyiTransformer3DModel(**config).eval()
    assert model.blocks[0].skip_linear is None
    assert torch.isfinite(model(**_random_inputs(config, clip_tokens=9)).sample).all()


def test_resampler_heads_must_divide_the_clip_width():
    with pytest.raises(ValueError, match="cross_attention_dim.*num_attention_heads"):
        RuyiTransformer3DModel(num_layers=2, num_attention_heads=3, attention_head_dim=16, cross_attention_dim=32)


# ----------------------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------------------


def test_wrong_channel_count_raises(model, golden_inputs):
    golden_inputs["inpaint_latents"] = golden_inputs["inpaint_latents"][:, :16]
    with pytest.raises(ValueError, match=r"32 channels, but the model expects in_channels=48"):
        model(**golden_inputs)


def test_size_not_divisible_by_patch_raises(model, golden_inputs):
    golden_inputs["hidden_states"] = golden_inputs["hidden_states"][..., :11]
    golden_inputs["inpaint_latents"] = golden_inputs["inpaint_latents"][..., :11]
    with pytest.raises(ValueError, match=r"\(8x11\) must be divisible by patch_size=2"):
        model(**golden_inputs)


@pytest.mark.parametrize(
    "name",
    [
        "encoder_hidden_states",
        "text_embedding_mask_t5",
        "image_meta_size",
        "style",
        "inpaint_latents",
        "clip_attention_mask",
    ],
)
def test_mismatched_batch_raises(model, golden_inputs, name):
    golden_inputs[name] = golden_inputs[name][:1]
    with pytest.raises(ValueError, match=rf"`{name}` has batch size 1, but `hidden_states` has batch size 2"):
        model(**golden_inputs)


def test_bad_timestep_and_text_length_raise(model, golden_inputs):
    with pytest.raises(ValueError, match="`timestep` must be a scalar or have shape \\(2,\\)"):
        model(**{**golden_inputs, "timestep": torch.ones(3)})
    with pytest.raises(ValueError, match="text_len=8"):
        model(**{**golden_inputs, "encoder_hidden_states": golden_inputs["encoder_hidden_states"][:, :5]})
    with pytest.raises(ValueError, match="image_rotary_emb"):
        model(**golden_inputs, image_rotary_emb=(torch.ones(5, 16), torch.ones(5, 16)))
