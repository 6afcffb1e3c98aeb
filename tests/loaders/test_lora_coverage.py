"""LoRA reaches every Linear of the transformer, the CLIP resampler included.

The original `LoRANetwork` writes an entry for every `nn.Linear` anywhere in the transformer; a module that the
forward pass calls by its weight (`F.linear(x, m.weight)`) instead of as a module silently bypasses a LoRA or a hook.
"""

import pytest
import torch
from _helpers import run_transformer, small_golden_inputs
from peft.tuners.tuners_utils import BaseTunerLayer


@pytest.fixture(scope="module")
def inputs():
    return small_golden_inputs()


def _linears(transformer):
    return {name: m for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}


def _original_lora(linears, seed=0, rank=2):
    gen = torch.Generator().manual_seed(seed)
    lora, deltas = {}, {}
    for path, module in linears.items():
        name = "lora_unet__" + path.replace(".", "_")
        down = torch.randn(rank, module.in_features, generator=gen) * 0.1
        up = torch.randn(module.out_features, rank, generator=gen) * 0.1
        lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"] = down, up
        lora[f"{name}.alpha"] = torch.tensor(float(rank))
        deltas[path] = up @ down
    return lora, deltas


def test_every_linear_is_called_as_a_module(pipe, inputs):
    """Forward hooks fire on every Linear: none is bypassed by a functional call on its weight."""
    called = set()
    linears = _linears(pipe.transformer)
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: called.add(n)) for n, m in linears.items()]
    try:
        run_transformer(pipe.transformer, inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert any(n.startswith("clip_projection.") for n in linears)
    assert sorted(set(linears) - called) == []


def test_original_lora_on_every_linear(clean_pipe, inputs):
    """An original-format LoRA covering every Linear (as `LoRANetwork` writes it) loads on every one of them, and
    the adapter in the forward pass equals the merged weights, module by module."""
    pipe = clean_pipe
    transformer = pipe.transformer
    linears = _linears(transformer)
    base = {k: v.clone() for k, v in transformer.state_dict().items()}
    lora, deltas = _original_lora(linears)
    pipe.load_lora_weights(lora, adapter_name="everywhere")
    wrapped = {n for n, m in transformer.named_modules() if isinstance(m, BaseTunerLayer)}
    assert wrapped == set(linears)
    adapter_out = run_transformer(transformer, inputs)

    pipe.unload_lora_weights()
    merged = {k: v.clone() for k, v in base.items()}
    for path, delta in deltas.items():
        merged[f"{path}.weight"] += delta
    transformer.load_state_dict(merged)
    torch.testing.assert_close(adapter_out, run_transformer(transformer, inputs), atol=1e-5, rtol=0)


def test_resampler_lora_changes_the_output(clean_pipe, inputs):
    """A LoRA on the resampler alone changes the output, by as much as merging it into the weight does."""
    pipe = clean_pipe
    transformer = pipe.transformer
    path = "clip_projection.attn.out_proj"
    module = _linears(transformer)[path]
    base_out = run_transformer(transformer, inputs)
    base_weight = module.weight.detach().clone()
    lora, deltas = _original_lora({path: module}, seed=1)
    pipe.load_lora_weights(lora, adapter_name="resampler")
    adapter_out = run_transformer(transformer, inputs)
    assert (adapter_out - base_out).abs().max() > 1e-4
    pipe.fuse_lora()
    fused_weight = transformer.state_dict()[f"{path}.base_layer.weight"]
    torch.testing.assert_close(fused_weight, base_weight + deltas[path], atol=1e-6, rtol=0)
    torch.testing.assert_close(run_transformer(transformer, inputs), adapter_out, atol=1e-5, rtol=0)
    pipe.unfuse_lora()


def test_fuse_only_the_named_adapter(clean_pipe, inputs):
    pipe = clean_pipe
    transformer = pipe.transformer
    path = "blocks.0.attn1.to_q"
    module = _linears(transformer)[path]
    base_weight = module.weight.detach().clone()
    for seed, name in ((2, "a"), (3, "b")):
        lora, deltas = _original_lora({path: module}, seed=seed)
        pipe.load_lora_weights(lora, adapter_name=name)
        if name == "a":
            delta_a = deltas[path]
    pipe.set_adapters(["a", "b"], [1.0, 1.0])
    pipe.fuse_lora(adapter_names=["a"])
    fused = transformer.state_dict()[f"{path}.base_layer.weight"]
    torch.testing.assert_close(fused, base_weight + delta_a, atol=1e-6, rtol=0)
    pipe.unfuse_lora()
