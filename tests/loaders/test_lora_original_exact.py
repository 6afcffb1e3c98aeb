"""Original-format LoRAs keep the file's numbers: float32 adapters, alpha in the adapter config, and a bfloat16
`fuse_lora` that gives the weights of the original `merge_lora` bit for bit."""

import re

import pytest
import torch
from _helpers import (
    TINY_CHECKPOINT,
    linear_paths,
    load_pipe,
    restored_after_test,
    run_transformer,
    small_golden_inputs,
)
from accelerate.hooks import CpuOffload, add_hook_to_module
from diffusers.hooks.group_offloading import _is_group_offload_enabled
from peft.utils.other import get_pattern_key

from diffusers_ruyi.loaders.original_checkpoint import convert_original_lora_state_dict


@pytest.fixture(scope="module")
def bf16_pipe():
    return load_pipe(TINY_CHECKPOINT, dtype=torch.bfloat16)


@pytest.fixture
def clean_bf16_pipe(bf16_pipe):
    yield from restored_after_test(bf16_pipe)


@pytest.fixture(scope="module")
def bf16_inputs():
    return {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in small_golden_inputs().items()}


def original_lora(transformer, seed=0):
    """A LoRA on every Linear of `transformer`, as the original `LoRANetwork` writes it (float32): ranks 2-4, alphas
    1-5 and some modules without alpha. Returns it and, per module path, (up, down, alpha / rank)."""
    gen = torch.Generator().manual_seed(seed)
    lora, parts = {}, {}
    for i, (path, module) in enumerate(sorted(linear_paths(transformer).items())):
        rank = 2 + i % 3
        name = "lora_unet__" + path.replace(".", "_")
        down = torch.randn(rank, module.in_features, generator=gen) * 0.3
        up = torch.randn(module.out_features, rank, generator=gen) * 0.3
        lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"] = down, up
        factor = 1.0
        if i % 4:
            lora[f"{name}.alpha"] = torch.tensor(float(1 + i % 5))
            factor = lora[f"{name}.alpha"].item() / rank
        parts[path] = (up, down, factor)
    return lora, parts


def direct_and_swapped(pipe, first, second, inputs, target_rank=None):
    """The transformer's output with `second` loaded on its own, and with `second` hot-swapped into a slot that held
    `first` (after `enable_lora_hotswap(target_rank)` when given)."""
    pipe.load_lora_weights(second, adapter_name="direct")
    direct = run_transformer(pipe.transformer, inputs)
    pipe.delete_adapters("direct")
    if target_rank is not None:
        pipe.enable_lora_hotswap(target_rank=target_rank)
    pipe.load_lora_weights(first, adapter_name="slot")
    pipe.load_lora_weights(second, adapter_name="slot", hotswap=True)
    return direct, run_transformer(pipe.transformer, inputs)


def original_merge(weight, up, down, factor, multiplier):
    """The original `merge_lora` line (float32 product, added in place into the model's weight)."""
    merged = weight.clone()
    merged += multiplier * factor * torch.mm(up.float(), down.float())
    return merged


def test_conversion_keeps_the_file_values_and_puts_alpha_in_the_config(bf16_pipe):
    transformer = bf16_pipe.transformer
    lora, parts = original_lora(transformer)
    tensors, config = convert_original_lora_state_dict(lora, transformer, return_metadata=True)
    for path, (up, down, factor) in parts.items():
        assert torch.equal(tensors[f"transformer.{path}.lora_A.weight"], down)
        assert torch.equal(tensors[f"transformer.{path}.lora_B.weight"], up)
        rank = config["rank_pattern"].get(get_pattern_key(config["rank_pattern"], path), config["r"])
        alpha = config["alpha_pattern"].get(get_pattern_key(config["alpha_pattern"], path), config["lora_alpha"])
        assert (rank, alpha / rank) == (down.shape[0], factor)
    # Patterns and targets name whole module paths: a longer path that ends with one matches neither.
    for path in parts:
        assert get_pattern_key(config["alpha_pattern"], "outer." + path) == "outer." + path
    assert all(re.fullmatch(config["target_modules"], path) for path in parts)
    assert not re.fullmatch(config["target_modules"], "outer.proj_out")

    # Without metadata the factor is folded into the matrices (self-contained tensors, as before).
    folded = convert_original_lora_state_dict(lora, transformer)
    for path, (up, down, factor) in parts.items():
        product = folded[f"transformer.{path}.lora_B.weight"] @ folded[f"transformer.{path}.lora_A.weight"]
        torch.testing.assert_close(product, factor * up @ down, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("low_cpu_mem_usage", [True, False])
def test_bfloat16_model_gets_float32_adapters_with_the_file_values(clean_bf16_pipe, low_cpu_mem_usage):
    pipe = clean_bf16_pipe
    lora, parts = original_lora(pipe.transformer, seed=1)
    pipe.load_lora_weights(lora, adapter_name="orig", low_cpu_mem_usage=low_cpu_mem_usage)
    modules = dict(pipe.transformer.named_modules())
    for path, (up, down, factor) in parts.items():
        module = modules[path]
        assert module.lora_A["orig"].weight.dtype == torch.float32
        assert torch.equal(module.lora_A["orig"].weight, down)
        assert torch.equal(module.lora_B["orig"].weight, up)
        assert module.scaling["orig"] == factor
        assert module.base_layer.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("multiplier, file_dtype", [(1.0, torch.float32), (0.7, torch.float32), (0.7, torch.float16)])
def test_bfloat16_fuse_equals_the_original_merge_bit_for_bit(clean_bf16_pipe, multiplier, file_dtype):
    """`LoRANetwork.save_weights` writes float32 or half files; the original merges both in float32."""
    pipe = clean_bf16_pipe
    transformer = pipe.transformer
    lora, parts = original_lora(transformer, seed=2)
    lora = {key: value.to(file_dtype) for key, value in lora.items()}
    parts = {path: (up.to(file_dtype), down.to(file_dtype), factor) for path, (up, down, factor) in parts.items()}
    base = {path: module.weight.detach().clone() for path, module in linear_paths(transformer).items()}
    pipe.load_lora_weights(lora, adapter_name="orig")
    pipe.fuse_lora(lora_scale=multiplier)
    state = transformer.state_dict()
    differing = [
        path
        for path, (up, down, factor) in parts.items()
        if not torch.equal(
            state[f"{path}.base_layer.weight"], original_merge(base[path], up, down, factor, multiplier)
        )
    ]
    assert not differing, f"{len(differing)} of {len(parts)} fused weights differ from the original merge"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_1x1_lora_on_the_2x2_patch_convolution_merges_as_the_original(dtype):
    """The original's merge adds a 1x1 delta `(up @ down)[..., None, None]` to every position of the 2x2 patch kernel
    (checked against its `merge_lora`); `lora_A` with `lora_down` at every position computes the same, fused (bit for
    bit) and as an adapter."""
    pipe = load_pipe(TINY_CHECKPOINT, dtype=dtype)
    conv = pipe.transformer.pos_embed.proj
    assert tuple(conv.kernel_size) == (2, 2)
    gen = torch.Generator().manual_seed(3)
    down = torch.randn(3, conv.in_channels, 1, 1, generator=gen) * 0.3
    up = torch.randn(conv.out_channels, 3, 1, 1, generator=gen) * 0.3
    name = "lora_unet__pos_embed_proj"
    lora = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0)}
    base = conv.weight.detach().clone()
    merged = base.clone()
    merged += (
        0.7 * (2.0 / 3) * torch.mm(up.squeeze(3).squeeze(2), down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
    )
    inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in small_golden_inputs().items()}

    pipe.load_lora_weights(lora, adapter_name="patch")
    conv = pipe.transformer.pos_embed.proj  # now PEFT's wrapper
    assert torch.equal(conv.lora_A["patch"].weight, down.expand(-1, -1, 2, 2))
    pipe.set_adapters("patch", 0.7)
    adapter = run_transformer(pipe.transformer, inputs)
    pipe.set_adapters("patch", 1.0)
    pipe.fuse_lora(lora_scale=0.7)
    assert torch.equal(conv.base_layer.weight, merged.to(dtype))
    if dtype == torch.float32:  # (in bfloat16 the fused weights are rounded: only the merge is compared)
        torch.testing.assert_close(run_transformer(pipe.transformer, inputs), adapter, atol=1e-5, rtol=0)
        unchanged = load_pipe(TINY_CHECKPOINT)
        assert (run_transformer(unchanged.transformer, inputs) - adapter).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_lora_on_the_style_embedding_merges_as_the_original(dtype):
    """The original's merge adds `up @ down` to any weight its name walk reaches, the `nn.Embedding` of the style id
    too (checked against its `merge_lora`): it becomes PEFT's Embedding adapter, `lora_embedding_A = up.T` and
    `lora_embedding_B = down.T`. Fused, the delta is PEFT's `(B @ A).T`, the same products summed by another kernel:
    float32 round-off apart (one bfloat16 step at most), at the `lora_scale` given (PEFT's `scale_layer` skips
    Embedding adapters, which fused at scale 1)."""
    pipe = load_pipe(TINY_CHECKPOINT, dtype=dtype)
    embedding = pipe.transformer.time_extra_emb.style_embedder
    assert isinstance(embedding, torch.nn.Embedding)
    gen = torch.Generator().manual_seed(4)
    for rank, multiplier in ((3, 0.7), (1, -1.3), (5, 1.0)):
        down = torch.randn(rank, embedding.embedding_dim, generator=gen)
        up = torch.randn(embedding.num_embeddings, rank, generator=gen)
        name = "lora_unet__time_extra_emb_style_embedder"
        lora = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0)}
        base = embedding.weight.detach().clone()
        merged = original_merge(base, up, down, 2.0 / rank, multiplier)
        inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in small_golden_inputs().items()}

        pipe.load_lora_weights(lora, adapter_name="style")
        layer = pipe.transformer.time_extra_emb.style_embedder  # now PEFT's wrapper
        assert torch.equal(layer.lora_embedding_A["style"], up.T)
        pipe.set_adapters("style", multiplier)
        adapter = run_transformer(pipe.transformer, inputs)
        pipe.set_adapters("style", 1.0)
        pipe.fuse_lora(lora_scale=multiplier)
        if dtype == torch.float32:
            torch.testing.assert_close(layer.base_layer.weight.data, merged, atol=1e-6, rtol=1e-6)
        else:
            torch.testing.assert_close(layer.base_layer.weight.data, merged, atol=0, rtol=2**-7)
        if dtype == torch.float32:
            torch.testing.assert_close(run_transformer(pipe.transformer, inputs), adapter, atol=1e-5, rtol=0)
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        embedding = pipe.transformer.time_extra_emb.style_embedder
        embedding.weight.data.copy_(base)
    unchanged = run_transformer(pipe.transformer, inputs)
    assert (unchanged.float() - adapter.float()).abs().max() > 1e-3


def test_hotswap_into_an_original_lora_slot(clean_bf16_pipe, bf16_inputs):
    """A hot-swap keeps the slot's float32 tensors and sets every module's own alpha / rank."""
    pipe = clean_bf16_pipe
    lora_a, _ = original_lora(pipe.transformer, seed=3)
    lora_b, _ = original_lora(pipe.transformer, seed=4)
    direct, swapped = direct_and_swapped(pipe, lora_a, lora_b, bf16_inputs)
    assert torch.equal(swapped, direct)


def test_hotswap_between_lora_network_files_of_different_alpha_and_rank(clean_bf16_pipe, bf16_inputs):
    """The original `LoRANetwork` writes one alpha for all modules: such files swap into each other."""
    pipe = clean_bf16_pipe

    def lora_network_file(seed, rank, alpha):
        # One rank and one alpha for every module (`original_lora` draws both per module).
        lora, _ = original_lora(pipe.transformer, seed=seed)
        file = {}
        for key, value in lora.items():
            name, _, element = key.partition(".")
            if element == "lora_down.weight":
                file[key], file[f"{name}.alpha"] = value[:rank], torch.tensor(alpha)
            elif element == "lora_up.weight":
                file[key] = value[:, :rank]
        return file

    first, second = lora_network_file(7, rank=2, alpha=1.0), lora_network_file(8, rank=2, alpha=6.0)
    direct, swapped = direct_and_swapped(pipe, first, second, bf16_inputs)
    assert torch.equal(swapped, direct)


def test_prepared_hotswap_slot_takes_each_modules_alpha():
    """After `enable_lora_hotswap` (padded ranks, tensor scalings) a swapped-in file still gets its own alphas."""
    pipe = load_pipe(TINY_CHECKPOINT, dtype=torch.float32)
    lora_a, _ = original_lora(pipe.transformer, seed=9)
    lora_b, _ = original_lora(pipe.transformer, seed=10)
    direct, swapped = direct_and_swapped(pipe, lora_a, lora_b, small_golden_inputs(), target_rank=8)
    torch.testing.assert_close(swapped, direct, atol=1e-5, rtol=0)


def test_group_offloading_stays_on_and_the_adapter_loads_in_float32(clean_bf16_pipe, bf16_inputs):
    pipe = clean_bf16_pipe
    inputs = bf16_inputs
    lora, _ = original_lora(pipe.transformer, seed=5)
    pipe.load_lora_weights(lora, adapter_name="plain")
    expected = run_transformer(pipe.transformer, inputs)
    pipe.unload_lora_weights()

    offloaded = load_pipe(TINY_CHECKPOINT, dtype=torch.bfloat16)
    cpu = torch.device("cpu")
    offloaded.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="leaf_level")
    offloaded.load_lora_weights(lora, adapter_name="offloaded")
    assert _is_group_offload_enabled(offloaded.transformer)
    assert offloaded.transformer.blocks[0].attn1.to_q.lora_A["offloaded"].weight.dtype == torch.float32
    assert torch.equal(run_transformer(offloaded.transformer, inputs), expected)


def test_model_offload_hooks_come_off_during_the_load_and_back_after_it(clean_bf16_pipe, monkeypatch):
    pipe = clean_bf16_pipe
    lora, _ = original_lora(pipe.transformer, seed=6)
    enabled = []
    monkeypatch.setattr(pipe, "enable_model_cpu_offload", lambda *a, **k: enabled.append(True))
    add_hook_to_module(pipe.transformer, CpuOffload(execution_device="cpu"))
    seen_during_load = []
    original_cast = torch.nn.Module.to

    def spying_to(module, *args, **kwargs):
        seen_during_load.append(hasattr(pipe.transformer, "_hf_hook"))
        return original_cast(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spying_to)
    pipe.load_lora_weights(lora, adapter_name="x")
    monkeypatch.setattr(torch.nn.Module, "to", original_cast)
    assert seen_during_load and not any(seen_during_load)
    assert enabled == [True]

    # A load that fails inside diffusers (the name is taken) still puts the offloading back.
    add_hook_to_module(pipe.transformer, CpuOffload(execution_device="cpu"))
    with pytest.raises(ValueError, match="already in use"):
        pipe.load_lora_weights(lora, adapter_name="x")
    assert enabled == [True, True]


def test_a_diffusers_format_lora_loads_into_a_group_offloaded_transformer(clean_bf16_pipe, bf16_inputs, monkeypatch):
    # diffusers' own load pauses group offloading around the adapter's creation and re-applies it after: the pipeline
    # must be handed to it (original-format LoRAs are paused by the package itself, around the float32 upcast too).
    import diffusers.hooks.group_offloading as group_offloading
    from peft.utils import get_peft_model_state_dict

    pipe = clean_bf16_pipe
    lora, _ = original_lora(pipe.transformer, seed=7)
    pipe.load_lora_weights(lora, adapter_name="source")
    peft_state = {
        f"transformer.{k}": v for k, v in get_peft_model_state_dict(pipe.transformer, adapter_name="source").items()
    }
    pipe.unload_lora_weights()
    pipe.load_lora_weights(dict(peft_state), adapter_name="plain")
    expected = run_transformer(pipe.transformer, bf16_inputs)
    pipe.unload_lora_weights()

    offloaded = load_pipe(TINY_CHECKPOINT, dtype=torch.bfloat16)
    cpu = torch.device("cpu")
    offloaded.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="leaf_level")
    reapplied = []
    original_apply = group_offloading._maybe_remove_and_reapply_group_offloading
    monkeypatch.setattr(  # diffusers' `load_lora_adapter` imports it from there at each call
        group_offloading,
        "_maybe_remove_and_reapply_group_offloading",
        lambda component: reapplied.append(type(component).__name__) or original_apply(component),
    )
    offloaded.load_lora_weights(dict(peft_state), adapter_name="offloaded")
    assert "RuyiTransformer3DModel" in reapplied
    assert _is_group_offload_enabled(offloaded.transformer)
    assert torch.equal(run_transformer(offloaded.transformer, bf16_inputs), expected)
