"""LoRA loading, saving, fusing and adapters for RuyiImageToVideoPipeline (diffusers/PEFT and original Ruyi files)."""

import os

import numpy as np
import PIL.Image
import pytest
import torch
from _helpers import (
    FIXTURES,
    ORIGINAL_LORA,
    linear_paths,
    logged,
    quick_latents,
    run_transformer,
)
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from diffusers_ruyi.loaders.lora import RuyiLoraLoaderMixin
from diffusers_ruyi.loaders.original_checkpoint import convert_original_lora_state_dict, original_lora_module_map
from diffusers_ruyi.pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline


ORIGINAL_MERGED = FIXTURES / "lora" / "ruyi_lora_merged_output.safetensors"


@pytest.fixture(scope="module")
def base_small_output(pipe, small_inputs):
    return run_transformer(pipe.transformer, small_inputs)


def make_original_lora(transformer, paths, seed=0, rank=4, with_alpha=True):
    """An original-format (kohya-style) LoRA for `paths`, and the expected delta per module path."""
    gen = torch.Generator().manual_seed(seed)
    modules = linear_paths(transformer)
    lora, deltas = {}, {}
    for i, path in enumerate(paths):
        module = modules[path]
        r = rank + (i % 2)  # mixed ranks
        name = "lora_unet__" + path.replace(".", "_")
        down = torch.randn(r, module.in_features, generator=gen) * 0.1
        up = torch.randn(module.out_features, r, generator=gen) * 0.1
        lora[f"{name}.lora_down.weight"] = down
        lora[f"{name}.lora_up.weight"] = up
        if with_alpha and i % 3 != 2:  # some modules without alpha: factor 1
            alpha = float(1 + i % 5)
            lora[f"{name}.alpha"] = torch.tensor(alpha)
            scale = alpha / r
        else:
            scale = 1.0
        deltas[path] = scale * up @ down
    return lora, deltas


# A mix of attention, feed-forward, norm, conditioning and final layers.
ORIGINAL_PATHS = [
    "blocks.0.attn1.to_q",
    "blocks.1.attn2.to_out.0",
    "blocks.2.attn_clip.to_v",
    "blocks.0.ff.net.0.proj",
    "blocks.3.ff.net.2",
    "blocks.1.norm1.linear",
    "blocks.3.skip_linear",
    "blocks.2.gate_clip.proj",
    "time_extra_emb.pooler.q_proj",
    "time_extra_emb.extra_embedder.linear_1",
    "text_embedder.linear_2",
    "norm_out.linear",
    "proj_out",
]


def add_random_adapter(
    transformer, name, seed, rank=4, alpha=8, targets=("to_q", "to_k", "to_v", "to_out.0", "proj_out")
):
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)), adapter_name=name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in transformer.named_parameters():
            if f"lora_B.{name}." in pname or f"lora_A.{name}." in pname:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def save_adapter(transformer, name, directory):
    RuyiImageToVideoPipeline.save_lora_weights(
        directory,
        transformer_lora_layers=get_peft_model_state_dict(transformer, adapter_name=name),
        transformer_lora_adapter_metadata=transformer.peft_config[name].to_dict(),
    )


# ----------------------------------------------------------------------------------------------------------------
# Original-format LoRA files
# ----------------------------------------------------------------------------------------------------------------


def test_original_lora_file_matches_original_merge(clean_pipe, golden_inputs):
    """A LoRA written by the original LoRANetwork reproduces the original merge_lora outputs (multipliers 1, 0.5)."""
    pipe = clean_pipe
    merged = load_file(ORIGINAL_MERGED)
    pipe.load_lora_weights(ORIGINAL_LORA, adapter_name="orig")
    assert pipe.get_list_adapters() == {"transformer": ["orig"]}
    # Every entry of the file (77 modules, all over the transformer) became a LoRA layer.
    n_modules = len({k.split(".")[0] for k in load_file(ORIGINAL_LORA)})
    assert sum(isinstance(m, BaseTunerLayer) for m in pipe.transformer.modules()) == n_modules

    out = run_transformer(pipe.transformer, golden_inputs)
    assert (out - merged["merged_output_1.0"]).abs().max() < 1e-4
    pipe.set_adapters("orig", 0.5)
    out_half = run_transformer(pipe.transformer, golden_inputs)
    assert (out_half - merged["merged_output_0.5"]).abs().max() < 1e-4


def test_original_lora_fuse_equals_merge_rule(clean_pipe, small_inputs, base_small_output):
    pipe = clean_pipe
    transformer = pipe.transformer
    base = {k: v.clone() for k, v in transformer.state_dict().items()}
    lora, deltas = make_original_lora(transformer, ORIGINAL_PATHS, seed=1)
    pipe.load_lora_weights(lora, adapter_name="synthetic")
    unfused = run_transformer(transformer, small_inputs)
    assert (unfused - base_small_output).abs().max() > 1e-3

    pipe.fuse_lora()
    fused_state = transformer.state_dict()
    for path, delta in deltas.items():
        fused = fused_state[f"{path}.base_layer.weight"]
        torch.testing.assert_close(fused, base[f"{path}.weight"] + delta, atol=1e-6, rtol=0)
    fused_out = run_transformer(transformer, small_inputs)
    torch.testing.assert_close(fused_out, unfused, atol=1e-5, rtol=0)

    pipe.unfuse_lora()
    for path in deltas:
        torch.testing.assert_close(
            transformer.state_dict()[f"{path}.base_layer.weight"], base[f"{path}.weight"], atol=1e-6, rtol=0
        )


def test_original_lora_multiplier_via_set_adapters(clean_pipe, small_inputs):
    """`set_adapters(name, 0.5)` equals the original merge with multiplier 0.5 (W + 0.5 * alpha/rank * up @ down)."""
    pipe = clean_pipe
    transformer = pipe.transformer
    base = {k: v.clone() for k, v in transformer.state_dict().items()}
    lora, deltas = make_original_lora(transformer, ORIGINAL_PATHS, seed=2)
    pipe.load_lora_weights(lora, adapter_name="times_half")
    pipe.set_adapters("times_half", 0.5)
    adapter_out = run_transformer(transformer, small_inputs)

    pipe.unload_lora_weights()
    merged = {k: v.clone() for k, v in base.items()}
    for path, delta in deltas.items():
        merged[f"{path}.weight"] += 0.5 * delta
    transformer.load_state_dict(merged)
    torch.testing.assert_close(adapter_out, run_transformer(transformer, small_inputs), atol=1e-5, rtol=0)


def test_original_lora_conversion_keys(pipe):
    lora, deltas = make_original_lora(pipe.transformer, ["blocks.0.attn1.to_q", "proj_out"], seed=3)
    converted = convert_original_lora_state_dict(lora, pipe.transformer)
    assert sorted(converted) == sorted(f"transformer.{p}.lora_{ab}.weight" for p in deltas for ab in ("A", "B"))
    for path, delta in deltas.items():
        product = converted[f"transformer.{path}.lora_B.weight"] @ converted[f"transformer.{path}.lora_A.weight"]
        torch.testing.assert_close(product, delta, atol=1e-6, rtol=0)
    # Every Linear of the model has a name; names are unique.
    mapping = original_lora_module_map(pipe.transformer)
    assert mapping["lora_unet__blocks_0_attn1_to_q"] == "blocks.0.attn1.to_q"
    assert mapping["lora_unet__time_extra_emb_pooler_q_proj"] == "time_extra_emb.pooler.q_proj"
    assert set(mapping.values()) >= set(ORIGINAL_PATHS)


# ----------------------------------------------------------------------------------------------------------------
# diffusers/PEFT format: save, load, fuse, adapters, scale
# ----------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(clean_pipe, small_inputs, base_small_output, tmp_path):
    pipe = clean_pipe
    transformer = pipe.transformer
    add_random_adapter(transformer, "trained", seed=0, rank=4, alpha=8)
    expected = run_transformer(transformer, small_inputs)
    assert (expected - base_small_output).abs().max() > 1e-3
    save_adapter(transformer, "trained", tmp_path)
    assert os.listdir(tmp_path) == ["pytorch_lora_weights.safetensors"]

    state_dict, metadata = RuyiImageToVideoPipeline.lora_state_dict(tmp_path, return_lora_metadata=True)
    assert all(k.startswith("transformer.") for k in state_dict)
    assert metadata["transformer.lora_alpha"] == 8 and metadata["transformer.r"] == 4
    # Without it, the state dict alone, as diffusers' loaders return.
    plain = RuyiImageToVideoPipeline.lora_state_dict(tmp_path)
    assert isinstance(plain, dict) and plain.keys() == state_dict.keys()

    pipe.unload_lora_weights()
    torch.testing.assert_close(run_transformer(transformer, small_inputs), base_small_output, atol=0, rtol=0)
    pipe.load_lora_weights(tmp_path, adapter_name="reloaded")
    assert transformer.peft_config["reloaded"].lora_alpha == 8  # alpha restored from the metadata
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=0, rtol=0)


def test_fuse_unfuse_restores_weights(clean_pipe, small_inputs):
    pipe = clean_pipe
    transformer = pipe.transformer
    add_random_adapter(transformer, "a", seed=1)
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    unfused = run_transformer(transformer, small_inputs)
    pipe.fuse_lora()
    assert pipe.num_fused_loras == 1
    assert not torch.equal(
        transformer.state_dict()["blocks.0.attn1.to_q.base_layer.weight"],
        before["blocks.0.attn1.to_q.base_layer.weight"],
    )
    torch.testing.assert_close(run_transformer(transformer, small_inputs), unfused, atol=1e-5, rtol=0)
    pipe.unfuse_lora()
    after = transformer.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, atol=1e-6, rtol=0)


def test_scale_zero_and_unload_restore_base(clean_pipe, small_inputs, base_small_output):
    pipe = clean_pipe
    transformer = pipe.transformer
    pipe.load_lora_weights(make_original_lora(transformer, ORIGINAL_PATHS, seed=4)[0], adapter_name="x")
    full = run_transformer(transformer, small_inputs)
    assert (full - base_small_output).abs().max() > 1e-3
    torch.testing.assert_close(
        run_transformer(transformer, small_inputs, attention_kwargs={"scale": 0.0}), base_small_output
    )
    # The per-call scale is undone after the call.
    torch.testing.assert_close(run_transformer(transformer, small_inputs), full, atol=0, rtol=0)
    pipe.disable_lora()
    torch.testing.assert_close(run_transformer(transformer, small_inputs), base_small_output, atol=0, rtol=0)
    pipe.enable_lora()
    pipe.unload_lora_weights()
    assert not any(isinstance(m, BaseTunerLayer) for m in transformer.modules())
    torch.testing.assert_close(run_transformer(transformer, small_inputs), base_small_output, atol=0, rtol=0)
    # docs/lora.md: PEFT left the base model frozen (requires_grad_(True) to fine-tune it whole).
    assert not any(p.requires_grad for p in transformer.parameters())


def test_two_adapters_with_weights(clean_pipe, small_inputs):
    pipe = clean_pipe
    transformer = pipe.transformer
    base = {k: v.clone() for k, v in transformer.state_dict().items()}
    lora_a, deltas_a = make_original_lora(transformer, ORIGINAL_PATHS[:7], seed=5)
    lora_b, deltas_b = make_original_lora(transformer, ORIGINAL_PATHS[4:], seed=6)
    pipe.load_lora_weights(lora_a, adapter_name="a")
    pipe.load_lora_weights(lora_b, adapter_name="b")
    assert pipe.get_list_adapters() == {"transformer": ["a", "b"]}
    pipe.set_adapters(["a", "b"], adapter_weights=[0.7, -0.4])
    assert sorted(pipe.get_active_adapters()) == ["a", "b"]
    combined = run_transformer(transformer, small_inputs)
    pipe.set_adapters("a")
    only_a = run_transformer(transformer, small_inputs)

    pipe.unload_lora_weights()
    expected = {k: v.clone() for k, v in base.items()}
    for weight, deltas in ((0.7, deltas_a), (-0.4, deltas_b)):
        for path, delta in deltas.items():
            expected[f"{path}.weight"] += weight * delta
    transformer.load_state_dict(expected)
    torch.testing.assert_close(combined, run_transformer(transformer, small_inputs), atol=1e-5, rtol=0)

    expected = {k: v.clone() for k, v in base.items()}
    for path, delta in deltas_a.items():
        expected[f"{path}.weight"] += delta
    transformer.load_state_dict(expected)
    torch.testing.assert_close(only_a, run_transformer(transformer, small_inputs), atol=1e-5, rtol=0)


def test_delete_adapter_and_hotswap(clean_pipe, small_inputs, tmp_path):
    pipe = clean_pipe
    transformer = pipe.transformer
    paths = ORIGINAL_PATHS[:5]
    lora_a, _ = make_original_lora(transformer, paths, seed=7)
    lora_b, _ = make_original_lora(transformer, paths, seed=8)
    pipe.load_lora_weights(lora_b, adapter_name="b")
    expected_b = run_transformer(transformer, small_inputs)
    pipe.delete_adapters("b")
    assert pipe.get_list_adapters() == {}

    pipe.load_lora_weights(lora_a, adapter_name="slot")
    pipe.load_lora_weights(lora_b, adapter_name="slot", hotswap=True)
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected_b, atol=1e-6, rtol=0)


def test_unprefixed_peft_state_dict_loads(clean_pipe, small_inputs):
    pipe = clean_pipe
    transformer = pipe.transformer
    add_random_adapter(transformer, "raw", seed=3, alpha=4)
    expected = run_transformer(transformer, small_inputs)
    raw = get_peft_model_state_dict(transformer, adapter_name="raw")
    assert not any(k.startswith("transformer.") for k in raw)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(raw, adapter_name="again")  # no metadata: alpha defaults to the rank (4 here)
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=0, rtol=0)


def _older_diffusers_key(key: str, attention_style: bool) -> str:
    """A PEFT key in older diffusers' naming: `<module>.lora.down/up`, or `<attn>.to_q_lora.down/up` for the
    attention projections (what diffusers' `convert_unet_state_dict_to_peft` reads)."""
    factor = {"lora_A": "down", "lora_B": "up"}
    module, name, weight = key.rsplit(".", 2)
    parent, _, leaf = module.rpartition(".")
    if attention_style and leaf in ("to_q", "to_k", "to_v"):
        return f"{parent}.{leaf}_lora.{factor[name]}.{weight}"
    if attention_style and module.endswith(".to_out.0"):
        return f"{module[: -len('.to_out.0')]}.to_out_lora.{factor[name]}.{weight}"
    return f"{module}.lora.{factor[name]}.{weight}"


@pytest.mark.parametrize("attention_style", [False, True], ids=["lora.down", "to_q_lora.down"])
def test_older_diffusers_lora_naming_loads(clean_pipe, small_inputs, attention_style):
    # Files saved by older diffusers name the factors `.lora.down` / `.lora.up` (the attention projections also
    # `.to_q_lora.down` ...): they are converted to PEFT's `lora_A` / `lora_B` and give the same adapter.
    pipe = clean_pipe
    transformer = pipe.transformer
    add_random_adapter(transformer, "new", seed=5, alpha=4)
    expected = run_transformer(transformer, small_inputs)
    peft = get_peft_model_state_dict(transformer, adapter_name="new")
    older = {"transformer." + _older_diffusers_key(key, attention_style): value for key, value in peft.items()}
    assert not any("lora_A" in key or "lora_B" in key for key in older)
    assert any("to_q_lora.down" in key for key in older) == attention_style
    pipe.unload_lora_weights()
    pipe.load_lora_weights(older, adapter_name="older")  # no metadata: alpha defaults to the rank (4 here)
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Bad files: clear errors, nothing loaded
# ----------------------------------------------------------------------------------------------------------------


def _assert_nothing_loaded(pipe):
    assert not any(isinstance(m, BaseTunerLayer) for m in pipe.transformer.modules())


def test_fused_qkv_projections_and_lora_refuse_each_other(clean_pipe, small_inputs):
    # A fused attention computes with to_qkv/to_kv, built from the base weights: adapters on to_q/to_k/to_v would be
    # left out without a word, whichever of the two came first.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    lora, _ = make_original_lora(transformer, ORIGINAL_PATHS)  # adapts blocks.0.attn1.to_q and blocks.2.attn_clip.to_v
    transformer.fuse_qkv_projections()
    try:
        with pytest.raises(ValueError, match=r"unfuse_qkv_projections\(\)") as error:
            pipe.load_lora_weights(dict(lora))
        assert "blocks.0.attn1.to_q" in str(error.value) and "2 projections" in str(error.value)
        _assert_nothing_loaded(pipe)
    finally:
        transformer.unfuse_qkv_projections()

    pipe.load_lora_weights(dict(lora), adapter_name="a")
    expected = run_transformer(transformer, small_inputs)
    with pytest.raises(ValueError, match=r"2 of them carry LoRA adapters.*fuse_lora\(\)` then `unload_lora_weights"):
        transformer.fuse_qkv_projections()
    assert not any(getattr(m, "fused_projections", False) for m in transformer.modules())  # refused before fusing
    with pytest.raises(ValueError, match=r"\['to_v'\] carry LoRA adapters"):
        transformer.blocks[2].attn_clip.fuse_projections()
    transformer.blocks[1].attn1.fuse_projections()  # no adapter there
    transformer.blocks[1].attn1.unfuse_projections()
    # Merged, the adapters are still there: a fused copy would keep them after `unfuse_lora` / `unload_lora_weights`.
    pipe.fuse_lora()
    with pytest.raises(ValueError, match=r"2 of them carry LoRA adapters"):
        transformer.fuse_qkv_projections()
    # Fused in for good (merged, then the adapters unloaded), the LoRA is part of what is fused.
    pipe.unload_lora_weights()
    transformer.fuse_qkv_projections()
    try:
        assert transformer.blocks[0].attn1.fused_projections
        torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=1e-5, rtol=0)
    finally:
        transformer.unfuse_qkv_projections()


def test_error_unknown_original_module(clean_pipe):
    lora, _ = make_original_lora(clean_pipe.transformer, ["proj_out"], seed=9)
    lora["lora_unet__blocks_0_attn9_to_q.lora_down.weight"] = torch.zeros(4, 32)
    lora["lora_unet__blocks_0_attn9_to_q.lora_up.weight"] = torch.zeros(32, 4)
    with pytest.raises(ValueError, match="lora_unet__blocks_0_attn9_to_q"):
        clean_pipe.load_lora_weights(lora)
    _assert_nothing_loaded(clean_pipe)


def test_error_missing_lora_up(clean_pipe):
    lora, _ = make_original_lora(clean_pipe.transformer, ["proj_out", "blocks.0.attn1.to_k"], seed=10)
    del lora["lora_unet__blocks_0_attn1_to_k.lora_up.weight"]
    with pytest.raises(ValueError, match=r"lora_unet__blocks_0_attn1_to_k \(missing lora_up.weight\)"):
        clean_pipe.load_lora_weights(lora)
    _assert_nothing_loaded(clean_pipe)


def test_error_stray_and_text_encoder_keys(clean_pipe):
    lora, _ = make_original_lora(clean_pipe.transformer, ["proj_out"], seed=11)
    bad = dict(lora)
    bad["lora_te_encoder_layer_0_q.lora_down.weight"] = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="text-encoder"):
        clean_pipe.load_lora_weights(bad)
    bad = dict(lora)
    bad["lora_unet__proj_out.bogus_element"] = torch.zeros(1)
    with pytest.raises(ValueError, match="bogus_element"):
        clean_pipe.load_lora_weights(bad)
    bad = dict(lora)
    bad["lora_unet__proj_out.lora_down.weight"] = torch.zeros(4, 31)
    with pytest.raises(ValueError, match="wrong shape"):
        clean_pipe.load_lora_weights(bad)
    _assert_nothing_loaded(clean_pipe)


def test_error_bad_peft_keys(clean_pipe):
    good = {
        "transformer.proj_out.lora_A.weight": torch.zeros(4, 32),
        "transformer.proj_out.lora_B.weight": torch.zeros(128, 4),
    }
    for extra, message in (
        ({"transformer.blocks.0.attn7.to_q.lora_A.weight": torch.zeros(4, 32)}, "attn7"),
        ({"text_encoder.layer.lora_A.weight": torch.zeros(4, 32)}, "other than `transformer`"),
        ({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32)}, "without both lora_A and lora_B"),
        ({"transformer.proj_out.something": torch.zeros(1)}, "proj_out.something"),
    ):
        with pytest.raises(ValueError, match=message):
            clean_pipe.load_lora_weights({**good, **extra})
    _assert_nothing_loaded(clean_pipe)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.long(), "lora_B.weight is torch.int64, not floating point"),
        (lambda t: t.fill_(float("nan")), "lora_B.weight holds NaN or infinite values"),
        (lambda t: t[:-1], r"proj_out: lora_B.weight \(127, 4\)"),
        (lambda t: t.to("meta"), "lora_B.weight is on the meta device"),
    ],
)
def test_error_bad_peft_tensors_load_nothing(clean_pipe, change, message):
    # Found by a check, not by torch's `load_state_dict` after PEFT has wrapped the layers.
    lora = {
        "transformer.proj_out.lora_A.weight": torch.zeros(4, 32),
        "transformer.proj_out.lora_B.weight": change(torch.zeros(128, 4)),
    }
    with pytest.raises(ValueError, match=message):
        clean_pipe.load_lora_weights(lora)
    _assert_nothing_loaded(clean_pipe)


@pytest.mark.parametrize(
    "element, value, message",
    [
        ("lora_down.weight", lambda t: t.long(), "lora_down is torch.int64, not floating point"),
        ("lora_up.weight", lambda t: t.fill_(float("inf")), "lora_up holds NaN or infinite values"),
        ("alpha", lambda t: torch.tensor(float("nan")), "alpha holds NaN or infinite values"),
        ("alpha", lambda t: torch.ones(2), "alpha holds 2 values, not one"),
        ("alpha", lambda t: torch.ones(0), "alpha holds 0 values, not one"),
        ("lora_up.weight", lambda t: t.to("meta"), "lora_up is on the meta device"),
    ],
)
def test_error_bad_original_tensors_load_nothing(clean_pipe, element, value, message):
    lora, _ = make_original_lora(clean_pipe.transformer, ["proj_out", "blocks.0.attn1.to_k"], seed=13)
    key = f"lora_unet__blocks_0_attn1_to_k.{element}"
    lora[key] = value(lora.get(key, torch.tensor(1.0)).clone())
    with pytest.raises(ValueError, match=f"lora_unet__blocks_0_attn1_to_k: {message}"):
        clean_pipe.load_lora_weights(lora)
    _assert_nothing_loaded(clean_pipe)


@pytest.mark.parametrize("rows", [-1, 1])
def test_original_lora_up_of_another_output_size_is_refused(clean_pipe, rows):
    # A smaller lora_up as well as a larger one (a `>` check let the smaller through).
    lora, _ = make_original_lora(clean_pipe.transformer, ["blocks.0.attn1.to_k"], seed=13)
    key = "lora_unet__blocks_0_attn1_to_k.lora_up.weight"
    up = lora[key]
    lora[key] = up[:rows] if rows < 0 else torch.cat([up, up[:rows]])
    with pytest.raises(ValueError, match=r"lora_unet__blocks_0_attn1_to_k: lora_down .*, lora_up \((31|33), 4\)"):
        clean_pipe.load_lora_weights(lora)
    _assert_nothing_loaded(clean_pipe)


@pytest.mark.parametrize("alpha", [-3.0, 0.0, 0.4])
def test_conversion_folds_any_alpha(pipe, alpha):
    # The folded factor alpha / rank is split between the two matrices; a negative or zero one once never returned.
    import signal

    lora, _ = make_original_lora(pipe.transformer, ["proj_out"], seed=14, rank=4)
    lora["lora_unet__proj_out.alpha"] = torch.tensor(alpha)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the conversion did not return"))
    signal.alarm(20)
    try:
        converted = convert_original_lora_state_dict(lora, pipe.transformer)
    finally:
        signal.alarm(0)
    delta = converted["transformer.proj_out.lora_B.weight"] @ converted["transformer.proj_out.lora_A.weight"]
    expected = alpha / 4 * lora["lora_unet__proj_out.lora_up.weight"] @ lora["lora_unet__proj_out.lora_down.weight"]
    torch.testing.assert_close(delta, expected)


def test_fuse_lora_refuses_bad_arguments(clean_pipe):
    clean_pipe.load_lora_weights(
        make_original_lora(clean_pipe.transformer, ["proj_out"], seed=15)[0], adapter_name="a"
    )
    weights = {n: p.clone() for n, p in clean_pipe.transformer.named_parameters()}
    for kwargs, error, message in (
        (dict(lora_scale=float("nan")), ValueError, "`lora_scale` must be a finite number"),
        (dict(lora_scale=float("inf")), ValueError, "`lora_scale` must be a finite number"),
        (dict(lora_scale="1"), TypeError, "`lora_scale` must be a number"),
        (dict(lora_scael=0.5), TypeError, "Unexpected argument\\(s\\) for `fuse_lora`: \\['lora_scael'\\]"),
        (dict(adapter_names=["nope"]), ValueError, "`adapter_names` \\['nope'\\] are not loaded"),
    ):
        with pytest.raises(error, match=message):
            clean_pipe.fuse_lora(**kwargs)
    assert all(torch.equal(p, weights[n]) for n, p in clean_pipe.transformer.named_parameters())
    clean_pipe.fuse_lora(adapter_names=["a"], lora_scale=0.5)  # the same arguments, well formed, still fuse
    assert not torch.equal(clean_pipe.transformer.proj_out.base_layer.weight, weights["proj_out.base_layer.weight"])
    clean_pipe.unfuse_lora()
    clean_pipe.unload_lora_weights()


def test_error_pickle_and_corrupted_files(clean_pipe, tmp_path):
    lora, _ = make_original_lora(clean_pipe.transformer, ["proj_out"], seed=12)
    bin_path = tmp_path / "lora.bin"
    torch.save(lora, bin_path)
    with pytest.raises(ValueError, match="pickle"):
        clean_pipe.load_lora_weights(str(bin_path))
    only_bin = tmp_path / "only_bin"
    only_bin.mkdir()
    torch.save(lora, only_bin / "pytorch_lora_weights.bin")
    with pytest.raises(ValueError, match="only pickle checkpoints"):
        clean_pipe.load_lora_weights(str(only_bin))
    with pytest.raises(ValueError, match="safetensors"):
        clean_pipe.load_lora_weights(str(tmp_path), weight_name="lora.bin")

    good = tmp_path / "good.safetensors"
    save_file(lora, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated"):
        clean_pipe.load_lora_weights(str(truncated))
    disguised = tmp_path / "pickle.safetensors"
    torch.save(lora, disguised)
    with pytest.raises(ValueError, match="not a safetensors file"):
        clean_pipe.load_lora_weights(str(disguised))
    with pytest.raises(ValueError, match="safetensors"):
        RuyiLoraLoaderMixin.save_lora_weights(tmp_path, transformer_lora_layers=lora, safe_serialization=False)
    _assert_nothing_loaded(clean_pipe)

    # The good file loads.
    clean_pipe.load_lora_weights(str(good))
    assert clean_pipe.get_list_adapters() == {"transformer": ["default_0"]}


# ----------------------------------------------------------------------------------------------------------------
# Through the pipeline
# ----------------------------------------------------------------------------------------------------------------


def _generate(pipe, **kwargs):
    image = PIL.Image.fromarray((np.random.RandomState(0).rand(32, 48, 3) * 255).astype("uint8"))
    return quick_latents(pipe, image, **kwargs)


def test_a_video_that_overflows_is_said_not_silently_black(clean_pipe):
    # A LoRA at 1e30 overflows the transformer: the NaN frames became black pixels without a word.
    clean_pipe.load_lora_weights(str(ORIGINAL_LORA), adapter_name="huge")
    image = PIL.Image.new("RGB", (48, 32), (120, 80, 40))
    args = dict(image=image, num_frames=1, height=32, width=48, num_inference_steps=1, output_type="np")
    for weight, said in ((1.0, False), (1e30, True)):
        clean_pipe.set_adapters("huge", weight)
        with logged("diffusers_ruyi.pipelines.pipeline_ruyi_i2v") as records:
            clean_pipe(**args, generator=torch.Generator().manual_seed(0))
        assert any("holds NaN or infinite values" in r.getMessage() for r in records) == said, weight


def test_pipeline_round_trip_and_scale(clean_pipe, tmp_path):
    pipe = clean_pipe
    base = _generate(pipe)
    add_random_adapter(pipe.transformer, "trained", seed=4, alpha=8)
    with_lora = _generate(pipe)
    assert with_lora.shape == base.shape == (1, 16, 2, 4, 6)
    assert (with_lora - base).abs().max() > 1e-4
    with logged("diffusers_ruyi.pipelines.pipeline_ruyi_i2v") as records:  # a LoRA to scale: no warning
        torch.testing.assert_close(_generate(pipe, attention_kwargs={"scale": 0.0}), base, atol=1e-6, rtol=0)
    assert not [r for r in records if "scales loaded LoRAs" in r.getMessage()]

    save_adapter(pipe.transformer, "trained", tmp_path)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(tmp_path / "pytorch_lora_weights.safetensors", adapter_name="reloaded")
    torch.testing.assert_close(_generate(pipe), with_lora, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# diffusers' workflows: compiled transformers, files of `save_lora_adapter`, Embedding adapters
# ----------------------------------------------------------------------------------------------------------------


def _peft_adapter_state(transformer, targets, adapter_name, seed):
    """A random PEFT adapter on ``targets``: its state dict and config, the transformer's output with it, and the
    transformer without it again."""
    torch.manual_seed(seed)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    transformer.add_adapter(config, adapter_name=adapter_name)
    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    return state, config


def _original_lora_and_its_output(pipe, small_inputs):
    """The original-format LoRA of `ORIGINAL_PATHS` and the transformer's output with it loaded the usual way (as
    adapter "reference", unloaded again): what another way of loading the same file must give."""
    lora, _ = make_original_lora(pipe.transformer, ORIGINAL_PATHS)
    pipe.load_lora_weights(dict(lora), adapter_name="reference")
    expected = run_transformer(pipe.transformer, small_inputs)
    pipe.unload_lora_weights()
    return lora, expected


def test_lora_loads_into_a_compiled_transformer(clean_pipe, small_inputs):
    # diffusers' hotswap workflow loads into a `torch.compile`d transformer, whose module names start `_orig_mod.`.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    lora, expected = _original_lora_and_its_output(pipe, small_inputs)
    pipe.transformer = torch.compile(transformer, backend="eager")
    try:
        pipe.load_lora_weights(dict(lora), adapter_name="compiled")
        torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=0, rtol=0)
    finally:
        pipe.transformer = transformer


def test_a_file_of_save_lora_adapter_loads(clean_pipe, small_inputs, tmp_path):
    # `transformer.save_lora_adapter` writes tensors and config without the `transformer.` prefix.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    _peft_adapter_state(transformer, ["to_q", "to_k"], "trained", seed=3)
    expected = run_transformer(transformer, small_inputs)
    transformer.save_lora_adapter(str(tmp_path), adapter_name="trained")
    transformer.delete_adapters("trained")
    pipe.load_lora_weights(str(tmp_path), adapter_name="again")
    assert transformer.peft_config["again"].lora_alpha == 4  # the file's config, not PEFT's defaults
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=0, rtol=0)


def test_an_embedding_adapter_round_trips(clean_pipe, small_inputs, tmp_path):
    pipe, transformer = clean_pipe, clean_pipe.transformer
    state, config = _peft_adapter_state(transformer, ["style_embedder", "to_q"], "e", seed=4)
    assert any(key.endswith("lora_embedding_A") for key in state)
    expected = run_transformer(transformer, small_inputs)
    pipe.save_lora_weights(
        str(tmp_path), transformer_lora_layers=state, transformer_lora_adapter_metadata=config.to_dict()
    )
    transformer.delete_adapters("e")
    pipe.load_lora_weights(str(tmp_path), adapter_name="e2")
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=0, rtol=0)
    pipe.unload_lora_weights()
    # The Embedding's names on another kind of module, or of the wrong shape, are refused.
    bad = {k.replace("to_q.lora_A.weight", "to_q.lora_embedding_A"): v for k, v in state.items()}
    with pytest.raises(ValueError, match=r"an Embedding's: `<module>.\{lora_embedding_A,lora_embedding_B\}`"):
        pipe.load_lora_weights(bad)
    bad = {k: (v[:, :-1] if k.endswith("lora_embedding_A") else v) for k, v in state.items()}
    with pytest.raises(ValueError, match=r"it needs lora_embedding_A \(rank, "):
        pipe.load_lora_weights(bad)
    bad = {k: (v.new_ones(()) if k.endswith("lora_embedding_A") else v) for k, v in state.items()}
    with pytest.raises(ValueError, match=r"lora_embedding_A \(\), .*it needs lora_embedding_A \(rank, "):
        pipe.load_lora_weights(bad)  # a 0-d tensor has no rank to read
    # Without its config, diffusers would guess an Embedding's rank from the `lora_B` keys alone.
    with pytest.raises(ValueError, match=r"adapts Embedding layers .* and carries no LoRA config"):
        pipe.load_lora_weights(dict(state))
    _assert_nothing_loaded(pipe)


def test_fusing_qkv_after_the_adapters_were_deleted(clean_pipe):
    # `delete_adapters` leaves empty PEFT wrappers on the projections: nothing is left to leave out.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    lora, _ = make_original_lora(transformer, ORIGINAL_PATHS)
    pipe.load_lora_weights(dict(lora), adapter_name="gone")
    pipe.delete_adapters("gone")
    transformer.fuse_qkv_projections()
    try:
        assert transformer.blocks[0].attn1.fused_projections
    finally:
        transformer.unfuse_qkv_projections()


# ----------------------------------------------------------------------------------------------------------------
# Original-format files as the original's own tools write and read them
# ----------------------------------------------------------------------------------------------------------------


def test_integer_alphas_load_as_the_original_merges_them(clean_pipe, small_inputs):
    # `LoRANetwork` saves `alpha` as an int64 tensor when given an integer (its default is 1); `merge_lora` takes it.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    lora, expected = _original_lora_and_its_output(pipe, small_inputs)
    integers = {k: (v.long() if k.endswith(".alpha") else v) for k, v in lora.items()}
    assert any(v.dtype == torch.int64 for v in integers.values())
    pipe.load_lora_weights(integers, adapter_name="int_alpha")
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=0, rtol=0)
    pipe.unload_lora_weights()
    bad = {**integers, next(k for k in integers if k.endswith(".alpha")): torch.tensor(True)}
    with pytest.raises(ValueError, match=r"alpha is torch.bool, not a real number"):
        pipe.load_lora_weights(bad)
    _assert_nothing_loaded(pipe)


@pytest.mark.parametrize(
    "rename",
    [
        lambda name: name.replace("lora_unet__", "lora_unet_"),
        lambda name: name.replace("lora_unet__", ""),
        # The original's name walk skips the empty parts of a doubled `_` anywhere in the name.
        lambda key: (
            "lora_unet___" + key.split(".")[0][len("lora_unet__") :].replace("_", "__") + key[key.index(".") :]
        ),
    ],
    ids=["single-underscore", "no-prefix", "doubled-underscores"],
)
def test_module_names_the_original_merge_resolves(clean_pipe, small_inputs, rename):
    # The original's `merge_lora` takes what follows `lora_unet_` (or the whole name) and walks the modules.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    lora, expected = _original_lora_and_its_output(pipe, small_inputs)
    renamed = {rename(k): v for k, v in lora.items()}
    pipe.load_lora_weights(renamed, adapter_name="renamed")
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=0, rtol=0)
    pipe.unload_lora_weights()
    # One module in two spellings would be merged twice by the original: refused.
    name = next(k for k in lora if k.endswith(".lora_down.weight")).split(".")[0]
    twice = {**lora, **{rename(k): v for k, v in lora.items() if k.startswith(name + ".")}}
    with pytest.raises(ValueError, match="modules named twice, in two spellings"):
        pipe.load_lora_weights(twice)
    _assert_nothing_loaded(pipe)


def test_float8_files_load_as_the_original_merges_them(clean_pipe, small_inputs):
    # `isfinite` has no float8 kernel: a float8_e4m3fn file failed with a NotImplementedError. The original casts the
    # tensors to float32 and merges them, so the file gives what its float32 upcast gives.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    lora, _ = make_original_lora(transformer, ORIGINAL_PATHS)
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        stored = {k: v if k.endswith(".alpha") else v.to(dtype) for k, v in lora.items()}
        pipe.load_lora_weights({k: v.float() for k, v in stored.items()}, adapter_name="upcast")
        expected = run_transformer(transformer, small_inputs)
        pipe.unload_lora_weights()
        pipe.load_lora_weights(stored, adapter_name="float8")
        torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=0, rtol=0)
        pipe.unload_lora_weights()
    bad = {**stored, next(k for k in stored if k.endswith("lora_up.weight")): torch.full((4, 4), float("nan"))}
    with pytest.raises(ValueError, match="holds NaN or infinite values"):
        pipe.load_lora_weights({k: v.to(torch.float8_e5m2) for k, v in bad.items()})
    _assert_nothing_loaded(pipe)


def test_rank_zero_modules_are_skipped_as_the_original_adds_nothing(clean_pipe, small_inputs):
    # PEFT has no rank-0 layer: the load failed inside it. The original merges an empty product, a zero delta.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    lora, expected = _original_lora_and_its_output(pipe, small_inputs)
    extra = "lora_unet__blocks_0_attn1_to_k"
    in_features = transformer.blocks[0].attn1.to_k.in_features
    out_features = transformer.blocks[0].attn1.to_k.out_features
    conv, patch = "lora_unet__pos_embed_proj", transformer.pos_embed.proj  # a convolution's: 4-d tensors
    empty = {
        f"{extra}.lora_down.weight": torch.zeros(0, in_features),
        f"{extra}.lora_up.weight": torch.zeros(out_features, 0),
        f"{conv}.lora_down.weight": torch.zeros(0, patch.in_channels, 1, 1),
        f"{conv}.lora_up.weight": torch.zeros(patch.out_channels, 0, 1, 1),
    }
    with logged("diffusers_ruyi.loaders.original_checkpoint") as records:
        pipe.load_lora_weights({**lora, **empty}, adapter_name="with_empty")
    assert any("have rank 0" in r.getMessage() and extra in r.getMessage() and conv in r.getMessage() for r in records)
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=0, rtol=0)
    pipe.unload_lora_weights()
    with pytest.raises(ValueError, match="has rank 0, so it changes nothing"):
        pipe.load_lora_weights(empty)
    _assert_nothing_loaded(pipe)


@pytest.mark.parametrize("had_adapter", [False, True])
def test_a_load_that_fails_inside_peft_leaves_no_half_adapter(clean_pipe, small_inputs, monkeypatch, had_adapter):
    # PEFT wraps one layer after another: a failure part-way left the layers wrapped so far active, with uninitialised
    # weights (diffusers cleans up only when the model had adapters before).
    from peft.tuners.lora.layer import LoraLayer

    pipe, transformer = clean_pipe, clean_pipe.transformer
    kept, lora = (
        make_original_lora(transformer, ORIGINAL_PATHS[:3], seed=1)[0],
        make_original_lora(transformer, ORIGINAL_PATHS)[0],
    )
    if had_adapter:
        pipe.load_lora_weights(kept, adapter_name="kept")
    before = run_transformer(transformer, small_inputs)
    update_layer, calls = LoraLayer.update_layer, []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("out of memory, say")
        return update_layer(self, *args, **kwargs)

    monkeypatch.setattr(LoraLayer, "update_layer", failing)
    with pytest.raises(RuntimeError, match="out of memory, say"):
        pipe.load_lora_weights(lora, adapter_name="broken")
    monkeypatch.undo()
    assert len(calls) == 4
    assert list(getattr(transformer, "peft_config", {})) == (["kept"] if had_adapter else [])
    adapters = {n for m in transformer.modules() if isinstance(m, BaseTunerLayer) for n in m.lora_A}
    assert adapters == ({"kept"} if had_adapter else set())
    torch.testing.assert_close(run_transformer(transformer, small_inputs), before, atol=0, rtol=0)
    pipe.unload_lora_weights()


@pytest.mark.parametrize("key", ["blocks.0.attn1.to_q.lora_magnitude_vector", "blocks.0.attn1.to_q.dora_scale"])
def test_dora_files_are_refused(clean_pipe, key):
    with pytest.raises(ValueError, match="DoRA LoRAs are not supported for Ruyi"):
        clean_pipe.lora_state_dict({key: torch.ones(4), "blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 4)})


def test_saving_a_model_with_lora_layers_is_refused_and_fuse_unload_saves(clean_pipe, small_inputs, tmp_path):
    # Their `base_layer` / `lora_A` keys are not the model's: the folder would not load back. Fused and unloaded, the
    # merged weights save and reload to the LoRA's output.
    pipe = clean_pipe
    add_random_adapter(pipe.transformer, "a", seed=3)
    expected = run_transformer(pipe.transformer, small_inputs)
    for save in (pipe.save_pretrained, pipe.transformer.save_pretrained):
        with pytest.raises(ValueError, match=r"carries LoRA layers .*`fuse_lora\(\)` then `unload_lora_weights\(\)`"):
            save(tmp_path / "out")
        assert not (tmp_path / "out").exists()
    pipe.fuse_lora()
    with pytest.raises(ValueError, match="The transformer carries LoRA layers"):  # merged, the layers are still there
        pipe.save_pretrained(tmp_path / "out")
    pipe.unload_lora_weights()
    pipe.transformer.save_pretrained(tmp_path / "merged")
    reloaded = type(pipe.transformer).from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(run_transformer(reloaded, small_inputs), expected, atol=1e-5, rtol=0)


def _file_with_metadata(pipe, tmp_path, **config_changes):
    """A PEFT LoRA file (rank 4, alpha 8) whose saved LoraConfig is changed as given."""
    transformer = pipe.transformer
    add_random_adapter(transformer, "src", seed=5)
    metadata = {**transformer.peft_config["src"].to_dict(), **config_changes}
    # Written with diffusers' own writer, unchecked (`save_lora_weights` refuses a config that does not fit), as
    # another tool could write it.
    RuyiImageToVideoPipeline._save_lora_weights(
        save_directory=tmp_path,
        lora_layers={"transformer": get_peft_model_state_dict(transformer, adapter_name="src")},
        lora_metadata={"transformer": metadata},
        is_main_process=True,
        weight_name="pytorch_lora_weights.safetensors",
        save_function=None,
        safe_serialization=True,
    )
    pipe.delete_adapters("src")
    return tmp_path


@pytest.mark.parametrize(
    "changes, match",
    [
        # A NaN alpha scaled every adapted layer by NaN: a black video, exit code 0 in the CLI.
        ({"lora_alpha": float("nan")}, r"lora_alpha=nan is not a finite number"),
        # PEFT built rank-8 layers and failed to copy the rank-4 tensors, with a 150-line state-dict error.
        ({"r": 8}, r"tensors of another rank than the config's `r` / `rank_pattern`: \[.*\(rank 4, config 8\)"),
        ({"rank_pattern": {"proj_out": 2}}, r"\['proj_out \(rank 4, config 2\)'\]"),
        ({"alpha_pattern": {"proj_out": float("inf")}}, r"alpha_pattern\['proj_out'\]=inf is not a finite number"),
        ({"r": 0}, r"r=0 is not a positive integer"),
    ],
)
def test_a_lora_config_that_does_not_fit_its_tensors_is_refused(clean_pipe, tmp_path, changes, match):
    folder = _file_with_metadata(clean_pipe, tmp_path, **changes)
    with pytest.raises(ValueError, match=r"its LoRA config \(the file's metadata\) .*" + match):
        clean_pipe.load_lora_weights(folder, adapter_name="bad")
    assert "bad" not in getattr(clean_pipe.transformer, "peft_config", {})
    clean_pipe.load_lora_weights(_file_with_metadata(clean_pipe, tmp_path / "ok"), adapter_name="good")  # unchanged


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"r": 8}, r"Cannot save this LoRA: .*\(rank 4, config 8\)"),
        # PEFT would build layers for these that the tensors do not fill: every forward then failed on the meta device.
        ({"lora_bias": True}, r"lora_bias=True, but there are no `lora_B.bias` tensors"),
        ({"use_dora": True}, r"use_dora=True \(DoRA LoRAs are not supported"),
    ],
)
def test_save_and_load_refuse_a_lora_config_that_does_not_fit(clean_pipe, tmp_path, changes, match):
    transformer = clean_pipe.transformer
    add_random_adapter(transformer, "src", seed=5)
    try:
        layers = get_peft_model_state_dict(transformer, adapter_name="src")
        metadata = {**transformer.peft_config["src"].to_dict(), **changes}
        with pytest.raises(ValueError, match=match):
            RuyiImageToVideoPipeline.save_lora_weights(
                tmp_path / "out", transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata
            )
        assert not (tmp_path / "out").exists()
        for bad in ("abc", 5):
            with pytest.raises(
                TypeError, match="`transformer_lora_adapter_metadata` must be a dict or a peft.LoraConfig"
            ):
                RuyiImageToVideoPipeline.save_lora_weights(
                    tmp_path / "out", transformer_lora_layers=layers, transformer_lora_adapter_metadata=bad
                )
    finally:
        clean_pipe.delete_adapters("src")
    with pytest.raises(ValueError, match=match.replace("Cannot save", "Cannot load")):
        clean_pipe.load_lora_weights(_file_with_metadata(clean_pipe, tmp_path / "file", **changes), adapter_name="bad")
    assert "bad" not in getattr(transformer, "peft_config", {})


def test_adapter_names_and_weights_are_checked(clean_pipe, tmp_path):
    folder = _file_with_metadata(clean_pipe, tmp_path)
    with pytest.raises(TypeError, match="`adapter_name` must be a str, got int"):
        clean_pipe.load_lora_weights(folder, adapter_name=5)
    with pytest.raises(ValueError, match="`adapter_name` must be a non-empty name without '.', got ''"):
        clean_pipe.load_lora_weights(folder, adapter_name="")
    clean_pipe.load_lora_weights(folder, adapter_name="a")
    # As fuse_lora(lora_scale=nan): a NaN weight would give a NaN video.
    for weights in (float("nan"), [float("inf")], {"transformer": float("nan")}):
        with pytest.raises(ValueError, match="`adapter_weights` must be a finite number"):
            clean_pipe.set_adapters("a", weights)
    clean_pipe.set_adapters("a", 0.5)
    # diffusers logged and ignored some of these, or failed deep inside (IndexError, KeyError, a string iterated).
    for call, error, match in [
        (lambda: clean_pipe.set_adapters(["a", "a"], [0.1, 0.9]), ValueError, "names an adapter twice"),
        (lambda: clean_pipe.set_adapters("a", {"unet": 0.5}), ValueError, r"names no LoRA component.*'unet'"),
        (lambda: clean_pipe.set_adapters("a", {"transformer": {"blocks": 0.5}}), TypeError, "`adapter_weights`"),
        (lambda: clean_pipe.set_adapters("a", [0.5, 0.5]), ValueError, "has 2 entries for 1 adapters"),
        (lambda: clean_pipe.set_adapters([]), ValueError, "`adapter_names` is empty"),
        (lambda: clean_pipe.set_adapters(5), TypeError, "`adapter_names` must be an adapter name or a list"),
        (lambda: clean_pipe.set_adapters("zzz"), ValueError, r"\['zzz'\] are not loaded; the loaded adapters are"),
        (lambda: clean_pipe.delete_adapters("zzz"), ValueError, r"\['zzz'\] are not loaded"),
        (lambda: clean_pipe.fuse_lora(components="transformer"), TypeError, "`components` must be a list"),
        (lambda: clean_pipe.fuse_lora(components=["unet"]), ValueError, r"\['unet'\] carry no LoRA"),
        (lambda: clean_pipe.unfuse_lora(components=["vae"]), ValueError, r"\['vae'\] carry no LoRA"),
        (lambda: clean_pipe.fuse_lora(safe_fusing="yes"), TypeError, "`safe_fusing` must be True or False"),
        (lambda: clean_pipe.load_lora_weights(folder, hotswap="yes"), TypeError, "`hotswap` must be True or False"),
        (lambda: clean_pipe.load_lora_weights(None), TypeError, "must be a file, folder or hub id .* got NoneType"),
    ]:
        with pytest.raises(error, match=match):
            call()
    assert clean_pipe.get_list_adapters() == {"transformer": ["a"]}
    clean_pipe.set_adapters(["a"], [{"transformer": 0.25}])
    clean_pipe.set_adapters(("a",), (0.25,))  # a tuple, as a list (diffusers expands lists only)
    clean_pipe.delete_adapters(["a"])
    assert clean_pipe.get_list_adapters() == {}


def test_lora_sources_are_checked_before_reading(clean_pipe, tmp_path):
    # Offline, diffusers answered a mistyped path with "you must specify a `weight_name`"; of a folder with several
    # files it loaded one with a warning.
    with pytest.raises(FileNotFoundError, match=r"The LoRA '.*nope.safetensors' is not an existing file or folder"):
        clean_pipe.load_lora_weights(str(tmp_path / "nope.safetensors"))
    # One slash, like a hub id `owner/name`, but a file name.
    with pytest.raises(FileNotFoundError, match=r"The LoRA 'loras/nope.safetensors' is not an existing file"):
        clean_pipe.load_lora_weights("loras/nope.safetensors")
    folder = _file_with_metadata(clean_pipe, tmp_path / "two")
    (folder / "pytorch_lora_weights.safetensors").rename(folder / "a.safetensors")
    clean_pipe.load_lora_weights(folder, adapter_name="a")  # one file of any name is the LoRA
    # Hub options as diffusers takes them, through huggingface_hub's checks: its retired ones are ignored with a warning.
    with pytest.warns(UserWarning, match="resume_download"):
        state_dict = clean_pipe.lora_state_dict(folder, resume_download=True)
    assert state_dict.keys() == load_file(folder / "a.safetensors").keys()
    (folder / "b.safetensors").write_bytes((folder / "a.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"holds several safetensors files \['a.safetensors', 'b.safetensors'\]"):
        clean_pipe.load_lora_weights(folder)
    clean_pipe.load_lora_weights(folder, weight_name="b.safetensors", adapter_name="b")


def test_adapter_methods_act_on_a_torch_compiled_transformer(clean_pipe):
    # `pipe.transformer = torch.compile(pipe.transformer)`: the LoRA loaded into it (the loader looks inside the
    # wrapper), but diffusers' methods skipped the OptimizedModule without a word: no adapters listed, set_adapters
    # refused the name, disable/fuse/delete/unload left the LoRA active. (Nothing here runs the compiled model.)
    pipe = clean_pipe
    transformer = pipe.transformer
    base = {k: v.clone() for k, v in transformer.state_dict().items()}
    pipe.load_lora_weights(make_original_lora(transformer, ORIGINAL_PATHS, seed=4)[0], adapter_name="a")
    pipe.transformer = torch.compile(transformer)
    try:
        layer = transformer.blocks[0].attn1.to_q
        assert pipe.get_list_adapters() == {"transformer": ["a"]} and pipe.get_active_adapters() == ["a"]
        full = layer.scaling["a"]
        pipe.set_adapters("a", 0.5)
        assert layer.scaling["a"] == pytest.approx(0.5 * full)
        pipe.disable_lora()
        assert layer.disable_adapters
        pipe.enable_lora()
        pipe.fuse_lora()
        assert not torch.equal(layer.base_layer.weight, base["blocks.0.attn1.to_q.weight"])
        pipe.unfuse_lora()
        torch.testing.assert_close(layer.base_layer.weight, base["blocks.0.attn1.to_q.weight"])
        pipe.unload_lora_weights()
        assert not any(isinstance(m, BaseTunerLayer) for m in pipe.transformer.modules())
        assert type(pipe.transformer).__name__ == "OptimizedModule"  # still the caller's wrapper
    finally:
        pipe.transformer = transformer


def test_saving_keys_that_already_carry_the_transformer_prefix(clean_pipe, tmp_path):
    # docs/lora.md: save `convert_original_lora_state_dict(...)`'s tensors. Its keys start with `transformer.`, and
    # `save_lora_weights` added another: `transformer.transformer.blocks...`, which no loader found.
    pipe = clean_pipe
    converted = convert_original_lora_state_dict(make_original_lora(pipe.transformer, ORIGINAL_PATHS, seed=5)[0],
                                                 pipe.transformer)  # fmt: skip
    assert all(key.startswith("transformer.") for key in converted)
    RuyiImageToVideoPipeline.save_lora_weights(tmp_path / "converted", transformer_lora_layers=converted)
    assert load_file(tmp_path / "converted" / "pytorch_lora_weights.safetensors").keys() == converted.keys()
    pipe.load_lora_weights(tmp_path / "converted", adapter_name="converted")
    assert pipe.get_list_adapters() == {"transformer": ["converted"]}
    mixed = dict(converted)
    mixed["blocks.0.attn1.to_q.lora_A.weight"] = mixed.pop(next(iter(converted)))
    with pytest.raises(ValueError, match="mixes keys with and without the 'transformer.' prefix"):
        RuyiImageToVideoPipeline.save_lora_weights(tmp_path / "mixed", transformer_lora_layers=mixed)
    assert not (tmp_path / "mixed").exists()


def test_a_saved_lora_read_back_with_its_metadata_saves_again(clean_pipe, tmp_path):
    # `lora_state_dict(..., return_lora_metadata=True)` names tensors and config fields `transformer.*`: the fields
    # were written as `transformer.transformer.r`, and the file did not load (LoraConfig could not be built).
    pipe = clean_pipe
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q"]), adapter_name="p")
    RuyiImageToVideoPipeline.save_lora_weights(
        tmp_path / "first",
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer, adapter_name="p"),
        transformer_lora_adapter_metadata=pipe.transformer.peft_config["p"].to_dict(),
    )
    pipe.delete_adapters("p")
    tensors, metadata = RuyiImageToVideoPipeline.lora_state_dict(tmp_path / "first", return_lora_metadata=True)
    assert all(key.startswith("transformer.") for key in [*tensors, *metadata])
    RuyiImageToVideoPipeline.save_lora_weights(
        tmp_path / "again", transformer_lora_layers=tensors, transformer_lora_adapter_metadata=metadata
    )
    pipe.load_lora_weights(tmp_path / "again", adapter_name="again")
    assert pipe.transformer.peft_config["again"].lora_alpha == 8 and pipe.transformer.peft_config["again"].r == 4
    # Original-format keys are not diffusers-format ones: they were written as `transformer.lora_unet_...`.
    original = {"lora_unet__blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 32)}
    with pytest.raises(ValueError, match=r"original-format keys \(`lora_unet_...`\): convert them"):
        RuyiImageToVideoPipeline.save_lora_weights(tmp_path / "unet", transformer_lora_layers=original)
    assert not (tmp_path / "unet").exists()


def test_loading_into_a_compiled_group_offloaded_transformer_keeps_its_groups(clean_pipe):
    # Loading re-applies group offloading to the pipeline's components: to the torch.compile wrapper it made the whole
    # model one group (and a later delete_adapters stacked a second set of hooks). (The compiled model never runs.)
    from diffusers.hooks import apply_group_offloading
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    def groups(model):
        names = []
        for name, module in model.named_modules():
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(_GROUP_OFFLOADING) is not None:
                names.append(name.removeprefix("_orig_mod."))
        return names

    pipe = clean_pipe
    transformer = pipe.transformer
    cpu = torch.device("cpu")
    apply_group_offloading(transformer, cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)
    expected = groups(transformer)
    assert len(expected) > 2
    pipe.transformer = torch.compile(transformer)
    try:
        pipe.load_lora_weights(make_original_lora(transformer, ORIGINAL_PATHS, seed=4)[0], adapter_name="a")
        assert groups(transformer) == expected
        pipe.delete_adapters("a")
        assert groups(transformer) == expected
    finally:
        pipe.transformer = transformer
        from diffusers.hooks import HookRegistry

        HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_GROUP_OFFLOADING, recurse=True)


def test_a_peft_lora_mixing_older_diffusers_keys_is_refused(clean_pipe):
    # Older diffusers' `.lora.down` / `.lora.up` keys are converted only in a file without any PEFT `lora_A` key: a file
    # mixing both namings is refused, naming the older keys, rather than loaded half-converted.
    pipe = clean_pipe
    modules = linear_paths(pipe.transformer)
    q, k = modules["blocks.0.attn1.to_q"], modules["blocks.0.attn1.to_k"]
    mixed = {
        "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.randn(2, q.in_features),
        "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.randn(q.out_features, 2),
        "transformer.blocks.0.attn1.to_k.lora.down.weight": torch.randn(2, k.in_features),
        "transformer.blocks.0.attn1.to_k.lora.up.weight": torch.randn(k.out_features, 2),
    }
    with pytest.raises(ValueError, match="Cannot load this LoRA") as error:
        pipe.load_lora_weights(mixed, adapter_name="mixed")
    message = str(error.value)
    assert "keys that are not `<module>.{lora_A.weight,lora_B.weight,lora_B.bias}`" in message
    assert "blocks.0.attn1.to_k.lora.down.weight" in message and "blocks.0.attn1.to_k.lora.up.weight" in message
    _assert_nothing_loaded(pipe)
