"""LoRA state across calls: what each call leaves behind (scales, names, partial fuses, refused loads)."""

import PIL.Image
import pytest
import torch
from _helpers import FIXTURES

from diffusers_ruyi.hooks import apply_fp8_mode
from diffusers_ruyi.tiny import build_tiny_random_pipeline


LORA = FIXTURES / "lora"
ORIGINAL, PEFT, EXPORTED = (LORA / f"ruyi_lora_{k}.safetensors" for k in ("original", "peft", "exported"))


@pytest.fixture
def tiny_pipe():
    pipe = build_tiny_random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, **kwargs):
    return pipe(
        PIL.Image.new("RGB", (32, 32), (120, 60, 200)), height=32, width=32, num_frames=8, num_inference_steps=2,
        output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs,
    ).frames  # fmt: skip


def test_a_call_at_scale_zero_keeps_the_adapter_weights(tiny_pipe):
    # diffusers undid a scale of 0 by resetting every adapter to its alpha / r: a weight given with `set_adapters`
    # was lost after one such call, and a fused adapter then unfused another delta than it had fused.
    base = _latents(tiny_pipe)
    tiny_pipe.load_lora_weights(ORIGINAL, adapter_name="a")
    tiny_pipe.set_adapters("a", 0.5)
    half = _latents(tiny_pipe)
    # Scale 0: no LoRA (up to rounding: the attentions run unfused while they carry LoRA layers).
    assert (_latents(tiny_pipe, attention_kwargs={"scale": 0.0}) - base).abs().max() < 1e-5
    assert torch.equal(_latents(tiny_pipe), half)
    assert torch.equal(
        _latents(tiny_pipe, attention_kwargs={"scale": 0.3}), _latents(tiny_pipe, attention_kwargs={"scale": 0.3})
    )
    assert torch.equal(_latents(tiny_pipe), half)  # restored exactly, not divided back
    tiny_pipe.fuse_lora()
    _latents(tiny_pipe, attention_kwargs={"scale": 0.0})
    tiny_pipe.unfuse_lora()
    tiny_pipe.unload_lora_weights()
    assert (_latents(tiny_pipe) - base).abs().max() < 1e-5


def test_adapters_loaded_without_names_get_unused_default_names(tiny_pipe):
    # diffusers counted the adapters of one layer only: LoRAs of other modules got a name in use ("default_1" twice).
    for path in (PEFT, ORIGINAL, EXPORTED):
        tiny_pipe.load_lora_weights(path)
    assert sorted(tiny_pipe.get_list_adapters()["transformer"]) == ["default_0", "default_1", "default_2"]


def test_unfuse_lora_refuses_arguments_it_would_ignore(tiny_pipe):
    tiny_pipe.load_lora_weights(ORIGINAL, adapter_name="a")
    tiny_pipe.fuse_lora()
    with pytest.raises(TypeError, match=r"Unexpected argument\(s\) for `unfuse_lora`: \['adapter_names'\]"):
        tiny_pipe.unfuse_lora(adapter_names=["a"])
    assert any(getattr(m, "merged", False) for m in tiny_pipe.transformer.modules())  # nothing was unfused


def test_a_refused_safe_fuse_leaves_nothing_fused(tiny_pipe):
    base = _latents(tiny_pipe)
    tiny_pipe.load_lora_weights(ORIGINAL, adapter_name="a")
    last = [m for m in tiny_pipe.transformer.modules() if "a" in getattr(m, "lora_B", {})][-1]
    with torch.no_grad():
        last.lora_B["a"].weight[0, 0] = float("nan")
    scalings = {name: dict(m.scaling) for name, m in tiny_pipe.transformer.named_modules() if hasattr(m, "scaling")}
    with pytest.raises(ValueError, match="NaNs detected"):
        tiny_pipe.fuse_lora(lora_scale=0.5, safe_fusing=True)
    assert not any(getattr(m, "merged", False) for m in tiny_pipe.transformer.modules())
    # The adapters are as they were, at their own scale (`lora_scale` scales them only for the merge).
    assert {name: dict(tiny_pipe.transformer.get_submodule(name).scaling) for name in scalings} == scalings
    tiny_pipe.unload_lora_weights()
    assert (_latents(tiny_pipe) - base).abs().max() < 1e-5  # no delta left in the weights


def test_a_refused_safe_fuse_keeps_what_was_fused_before(tiny_pipe):
    # A layer with "a" fused and "b" merged on top before a later layer's NaN: rolling back unmerges both, then fuses
    # "a" again (the weights are those of the first fuse).
    tiny_pipe.load_lora_weights(ORIGINAL, adapter_name="a")
    tiny_pipe.load_lora_weights(ORIGINAL, adapter_name="b")
    tiny_pipe.set_adapters(["a", "b"], [1.0, 0.5])
    tiny_pipe.fuse_lora(adapter_names=["a"])
    layers = [m for m in tiny_pipe.transformer.modules() if "b" in getattr(m, "lora_B", {})]
    fused = {id(m): m.base_layer.weight.detach().clone() for m in layers}
    with torch.no_grad():
        layers[-1].lora_B["b"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaNs detected"):
        tiny_pipe.fuse_lora(adapter_names=["b"], safe_fusing=True)
    assert all(m.merged_adapters == ["a"] for m in layers)
    assert all(torch.allclose(m.base_layer.weight, fused[id(m)], atol=1e-6, rtol=0) for m in layers)


@pytest.mark.parametrize("prepare", ["fuse_qkv", "fp8"])
def test_the_transformers_own_load_lora_adapter_refuses_what_the_pipeline_refuses(tiny_pipe, prepare):
    transformer = tiny_pipe.transformer
    if prepare == "fuse_qkv":
        transformer.fuse_qkv_projections()
    else:
        apply_fp8_mode(transformer, "extreme", min_numel=0)
    before = _latents(tiny_pipe)
    match = "replaced" if prepare == "fuse_qkv" else "stored in fp8"
    with pytest.raises(ValueError, match=f"The LoRA adapts .*{match}.* It was not loaded"):
        transformer.load_lora_adapter(PEFT, prefix="transformer", adapter_name="p")
    assert not (getattr(transformer, "peft_config", None) or {})
    assert not [name for name, module in transformer.named_modules() if hasattr(module, "base_layer")]
    # (Up to round-off: PEFT leaves the weights frozen, `requires_grad=False`, and the CPU kernels then differ.)
    assert (_latents(tiny_pipe) - before).abs().max() < 1e-5


def test_a_refused_load_lora_adapter_keeps_the_adapters_loaded_before(tiny_pipe):
    # With adapters before, only the refused one goes (diffusers' `delete_adapters`), not every PEFT wrapper.
    from peft import LoraConfig

    transformer = tiny_pipe.transformer
    transformer.add_adapter(LoraConfig(r=2, target_modules=["proj_out"], init_lora_weights=False), "kept")
    apply_fp8_mode(transformer, "extreme", min_numel=0)  # leaves the adapted layer in full precision
    before = _latents(tiny_pipe)
    with pytest.raises(ValueError, match="The LoRA adapts .*stored in fp8.* It was not loaded"):
        transformer.load_lora_adapter(PEFT, prefix="transformer", adapter_name="p")
    assert list(transformer.peft_config) == ["kept"]
    assert {n for m in transformer.modules() for n in getattr(m, "lora_A", {})} == {"kept"}
    assert torch.equal(_latents(tiny_pipe), before)


def test_a_hot_swap_takes_the_new_files_alphas_in_either_format(tiny_pipe, tmp_path):
    from safetensors.torch import load_file, save_file

    # A diffusers/PEFT file with an `alpha_pattern`: PEFT's hot-swap gave every module the default alpha / r.
    tiny_pipe.load_lora_weights(PEFT, adapter_name="slot")
    before = _latents(tiny_pipe)
    tiny_pipe.load_lora_weights(PEFT, adapter_name="slot", hotswap=True)
    assert torch.equal(_latents(tiny_pipe), before)
    tiny_pipe.unload_lora_weights()
    # The same original-format LoRA with alpha 1, then hot-swapped to alpha 4: `set_adapters` (which scales from the
    # layers' alphas) used to go back to alpha 1.
    tensors = load_file(ORIGINAL)
    for alpha in (1.0, 4.0):
        changed = {k: torch.tensor(alpha) if k.endswith(".alpha") else v for k, v in tensors.items()}
        save_file(changed, tmp_path / f"alpha{alpha:g}.safetensors")
    tiny_pipe.load_lora_weights(tmp_path / "alpha4.safetensors", adapter_name="fresh")
    fresh = _latents(tiny_pipe)
    tiny_pipe.delete_adapters("fresh")
    tiny_pipe.load_lora_weights(tmp_path / "alpha1.safetensors", adapter_name="slot")
    tiny_pipe.load_lora_weights(tmp_path / "alpha4.safetensors", adapter_name="slot", hotswap=True)
    assert torch.equal(_latents(tiny_pipe), fresh)
    tiny_pipe.set_adapters("slot", 1.0)
    assert torch.equal(_latents(tiny_pipe), fresh)
    assert tiny_pipe.transformer.peft_config["slot"].lora_alpha == 4.0


def _peft_file(directory, seed, **config):
    """A diffusers-format LoRA file with its config, of a random adapter on the attention projections."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = build_tiny_random_pipeline().transformer
    torch.manual_seed(seed)
    options = dict(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    transformer.add_adapter(LoraConfig(**{**options, **config}))
    type(build_tiny_random_pipeline()).save_lora_weights(
        directory,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
    )
    return directory / "pytorch_lora_weights.safetensors"


def test_a_call_scale_is_undone_on_hotswap_ready_scalings(tiny_pipe, tmp_path):
    # `enable_lora_hotswap` makes the scalings tensors, which `scale_layer` changes in place: a shallow copy of them
    # restored the scaled tensor, so the scale of one call stayed for every later call (compounded per step).
    tiny_pipe.enable_lora_hotswap(target_rank=8)
    tiny_pipe.load_lora_weights(_peft_file(tmp_path, seed=0), adapter_name="slot")
    reference = _latents(tiny_pipe)
    _latents(tiny_pipe, attention_kwargs={"scale": 0.5})
    assert torch.equal(_latents(tiny_pipe), reference)


@pytest.mark.parametrize("prepared", [False, True], ids=["same-rank", "enable_lora_hotswap"])
def test_hotswapping_an_rslora_file_scales_as_loading_it(tiny_pipe, tmp_path, prepared):
    # The hot-swap set every module's scaling to alpha / r, where a rank-stabilised adapter has alpha / sqrt(r).
    rank = 2 if prepared else 4
    first = _peft_file(tmp_path / "a", seed=0, use_rslora=True)  # PEFT swaps only between rslora configs
    second = _peft_file(tmp_path / "b", seed=1, r=rank, lora_alpha=8, use_rslora=True)
    fresh = build_tiny_random_pipeline()
    fresh.set_progress_bar_config(disable=True)
    fresh.load_lora_weights(second, adapter_name="slot")
    expected = _latents(fresh)
    if prepared:
        tiny_pipe.enable_lora_hotswap(target_rank=8)
    tiny_pipe.load_lora_weights(first, adapter_name="slot")
    tiny_pipe.load_lora_weights(second, adapter_name="slot", hotswap=True)
    torch.testing.assert_close(_latents(tiny_pipe), expected, atol=1e-6, rtol=0)
    tiny_pipe.set_adapters("slot", 1.0)  # from the layers' `lora_alpha`, as PEFT recomputes it
    torch.testing.assert_close(_latents(tiny_pipe), expected, atol=1e-6, rtol=0)
    assert tiny_pipe.transformer.peft_config["slot"].use_rslora
