"""Writing a LoRA in the original Ruyi format (`save_lora_weights(..., original_format=True)`), for the original
`predict_i2v.py` and its ComfyUI nodes; checked against the original `merge_lora` of an exported file."""

import os
import re

import pytest
import torch
from _helpers import FIXTURES, ORIGINAL_LORA, run_transformer
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusers_ruyi.loaders.original_checkpoint import convert_lora_state_dict_to_original
from diffusers_ruyi.pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline


LORA = FIXTURES / "lora"
PEFT_FILE = LORA / "ruyi_lora_peft.safetensors"  # tests/fixtures/lora/make_export_goldens.py
EXPORTED_FILE = LORA / "ruyi_lora_exported.safetensors"
MERGED = LORA / "ruyi_lora_exported_merged_output.safetensors"


def export(tmp_path, state_dict, metadata=None, **kwargs):
    RuyiImageToVideoPipeline.save_lora_weights(
        str(tmp_path),
        transformer_lora_layers=state_dict,
        transformer_lora_adapter_metadata=metadata,
        original_format=True,
        **kwargs,
    )
    return str(tmp_path / kwargs.get("weight_name", "pytorch_lora_weights.safetensors"))


def random_adapter(transformer, config, name, seed):
    transformer.add_adapter(config, adapter_name=name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in sorted(transformer.named_parameters()):
            if f".{name}." in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return get_peft_model_state_dict(transformer, adapter_name=name), config.to_dict()


def test_the_export_is_what_the_original_merged(clean_pipe, golden_inputs, tmp_path):
    """The fixture's adapter (rank and alpha patterns) exported now gives the file the original merged; the original's
    outputs after `merge_lora(file, 1.0 / 0.7)` are the adapter's in this package, and the file's loaded back."""
    pipe = clean_pipe
    state_dict, metadata = RuyiImageToVideoPipeline.lora_state_dict(str(PEFT_FILE), return_lora_metadata=True)
    written = load_file(export(tmp_path, state_dict, metadata))
    expected = load_file(EXPORTED_FILE)
    assert sorted(written) == sorted(expected)
    for key, value in expected.items():
        assert written[key].dtype == value.dtype and torch.equal(written[key], value), key
    # Alphas from the config: 6, `alpha_pattern` 3 (every block's ff.net.2) and 10 (proj_out), with ranks 4 and 2.
    alphas = {key.split(".")[0]: value.item() for key, value in written.items() if key.endswith(".alpha")}
    assert alphas["lora_unet__blocks_0_attn1_to_q"] == 6 and alphas["lora_unet__blocks_1_ff_net_2"] == 3
    assert alphas["lora_unet__proj_out"] == 10 and alphas["lora_unet__time_extra_emb_pooler_q_proj"] == 6
    assert written["lora_unet__time_extra_emb_pooler_q_proj.lora_down.weight"].shape[0] == 2

    merged = load_file(MERGED)
    pipe.load_lora_weights(str(PEFT_FILE), adapter_name="peft")
    for multiplier in (1.0, 0.7):
        pipe.set_adapters("peft", multiplier)
        output = run_transformer(pipe.transformer, golden_inputs)
        assert (output - merged[f"merged_output_{multiplier}"]).abs().max() < 1e-4
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(EXPORTED_FILE), adapter_name="exported")
    output = run_transformer(pipe.transformer, golden_inputs)
    assert (output - merged["merged_output_1.0"]).abs().max() < 1e-4


@pytest.mark.parametrize(
    "config_kwargs",
    [
        {"r": 4, "lora_alpha": 3},
        {"r": 4, "lora_alpha": 3, "use_rslora": True},
        {"r": 2, "lora_alpha": 5, "rank_pattern": {"to_k": 3}, "alpha_pattern": {"^blocks.1.attn1.to_q": 0.5}},
    ],
    ids=["alpha", "rslora", "patterns"],
)
def test_an_exported_adapter_changes_the_model_as_the_adapter_does(clean_pipe, small_inputs, tmp_path, config_kwargs):
    pipe, transformer = clean_pipe, clean_pipe.transformer
    base = run_transformer(transformer, small_inputs)
    config = LoraConfig(target_modules=["to_q", "to_k", "proj_out"], **config_kwargs)
    state_dict, metadata = random_adapter(transformer, config, "trained", seed=1)
    expected = run_transformer(transformer, small_inputs)
    transformer.delete_adapters("trained")
    pipe.load_lora_weights(export(tmp_path, state_dict, metadata), adapter_name="exported")
    output = run_transformer(transformer, small_inputs)
    assert (expected - base).abs().max() > 1e-2  # the adapter does change the output
    torch.testing.assert_close(output, expected, atol=2e-6, rtol=0)


def test_an_exported_style_embedding_adapter_changes_the_model_as_the_adapter_does(clean_pipe, small_inputs, tmp_path):
    # PEFT's Embedding adapter (delta `(B @ A).T`) is the original's `up @ down` with up = A.T, down = B.T, which the
    # original merges into the embedding's weight like any other; loading converts it back.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    base = run_transformer(transformer, small_inputs)
    config = LoraConfig(r=3, lora_alpha=2, target_modules=["style_embedder", "to_q"])
    state_dict, metadata = random_adapter(transformer, config, "trained", seed=5)
    expected = run_transformer(transformer, small_inputs)
    transformer.delete_adapters("trained")
    written = load_file(export(tmp_path, state_dict, metadata))
    name, path = "lora_unet__time_extra_emb_style_embedder", "time_extra_emb.style_embedder"
    assert torch.equal(written[f"{name}.lora_up.weight"], state_dict[f"{path}.lora_embedding_A"].T)
    assert torch.equal(written[f"{name}.lora_down.weight"], state_dict[f"{path}.lora_embedding_B"].T)
    assert written[f"{name}.alpha"].item() == 2
    pipe.load_lora_weights(str(tmp_path / "pytorch_lora_weights.safetensors"), adapter_name="exported")
    assert (expected - base).abs().max() > 1e-3
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=2e-6, rtol=0)
    # Its shapes are an Embedding's, checked as such.
    state_dict[f"{path}.lora_embedding_B"] = state_dict[f"{path}.lora_embedding_B"][:, :2]
    with pytest.raises(ValueError, match=r"style_embedder: lora_A \(3, 1\), lora_B \(32, 2\) \(an Embedding's are"):
        export(tmp_path / "bad", state_dict, metadata)


def test_a_patch_convolution_adapter_from_an_original_file_is_written_back(clean_pipe, small_inputs, tmp_path):
    # Loading spreads the file's 1x1 `lora_down` over the 2x2 patch kernel (the original adds its delta at every
    # position); the export writes that one position back, so the file round-trips and merges as it did.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    conv = transformer.pos_embed.proj
    gen = torch.Generator().manual_seed(8)
    name, q = "lora_unet__pos_embed_proj", "lora_unet__blocks_0_attn1_to_q"
    lora = {
        f"{name}.lora_down.weight": torch.randn(3, conv.in_channels, 1, 1, generator=gen),
        f"{name}.lora_up.weight": torch.randn(conv.out_channels, 3, 1, 1, generator=gen),
        f"{name}.alpha": torch.tensor(1.5),
        f"{q}.lora_down.weight": torch.randn(2, transformer.blocks[0].attn1.to_q.in_features, generator=gen),
        f"{q}.lora_up.weight": torch.randn(transformer.blocks[0].attn1.to_q.out_features, 2, generator=gen),
        f"{q}.alpha": torch.tensor(2.0),
    }
    pipe.load_lora_weights(dict(lora), adapter_name="original")
    expected = run_transformer(transformer, small_inputs)
    state_dict = get_peft_model_state_dict(transformer, adapter_name="original")
    assert state_dict["pos_embed.proj.lora_A.weight"].shape[2:] == (2, 2)
    written = load_file(export(tmp_path, state_dict, transformer.peft_config["original"].to_dict()))
    assert sorted(written) == sorted(lora)
    for key, value in lora.items():
        assert written[key].shape == value.shape and torch.equal(written[key], value), key
    transformer.delete_adapters("original")
    pipe.load_lora_weights(str(tmp_path / "pytorch_lora_weights.safetensors"), adapter_name="exported")
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=1e-6, rtol=0)


def test_a_patch_convolution_adapter_the_original_cannot_merge_is_refused(tmp_path):
    path = "pos_embed.proj"
    down, up = torch.randn(2, 48, 2, 2), torch.randn(32, 2, 1, 1)  # e.g. trained with PEFT: a full 2x2 kernel
    with pytest.raises(ValueError, match=r"pos_embed.proj \(its lora_A differs between the \(2, 2\) kernel positions"):
        export(tmp_path / "a", {f"{path}.lora_A.weight": down, f"{path}.lora_B.weight": up})
    down[..., 1, 0] = down[..., 0, 0]
    down[..., 1, 1] = down[..., 0, 0]
    down[..., 0, 1] = down[..., 0, 0]
    down[0, 5, 1, 1] += 1e-3  # one value at one position is enough
    with pytest.raises(ValueError, match=r"differs between the \(2, 2\) kernel positions"):
        export(tmp_path / "b", {f"{path}.lora_A.weight": down, f"{path}.lora_B.weight": up})
    down[0, 5, 1, 1] = down[0, 5, 0, 0]
    written = load_file(export(tmp_path / "c", {f"{path}.lora_A.weight": down, f"{path}.lora_B.weight": up}))
    assert torch.equal(written["lora_unet__pos_embed_proj.lora_down.weight"], down[..., :1, :1])
    shapes = r"pos_embed.proj: lora_A \(2, 48, 2, 2\), lora_B \(32, 2, 2, 2\) \(a convolution's are"
    with pytest.raises(ValueError, match=shapes):
        export(tmp_path / "d", {f"{path}.lora_A.weight": down, f"{path}.lora_B.weight": torch.randn(32, 2, 2, 2)})
    for bad in (torch.randn(2, 48), torch.randn(3, 48, 2, 2)):  # a Linear's A; another rank than B's
        with pytest.raises(ValueError, match=r"tensors of the wrong shape.*a convolution's are"):
            export(tmp_path / "e", {f"{path}.lora_A.weight": bad, f"{path}.lora_B.weight": up})
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_without_a_config_the_scaling_is_one(clean_pipe, small_inputs, tmp_path, monkeypatch):
    # diffusers loads a LoRA file without metadata with alpha = rank per module; the export says so with its alphas.
    pipe, transformer = clean_pipe, clean_pipe.transformer
    state_dict, _ = random_adapter(transformer, LoraConfig(r=4, lora_alpha=1, target_modules=["to_v"]), "a", seed=2)
    transformer.delete_adapters("a")
    pipe.load_lora_weights(dict(state_dict), adapter_name="plain")
    expected = run_transformer(transformer, small_inputs)
    pipe.unload_lora_weights()
    from diffusers_ruyi.loaders import lora

    warnings = []
    monkeypatch.setattr(lora.logger, "warning", warnings.append)
    path = export(tmp_path, state_dict)
    assert {value.item() for key, value in load_file(path).items() if key.endswith(".alpha")} == {4.0}
    assert len(warnings) == 1 and "No `transformer_lora_adapter_metadata`" in warnings[0]  # it may be a mistake
    pipe.load_lora_weights(path, adapter_name="exported")
    torch.testing.assert_close(run_transformer(transformer, small_inputs), expected, atol=2e-6, rtol=0)


def test_prefixed_keys_a_module_and_a_lora_config_are_taken(tmp_path):
    down, up = torch.randn(2, 8), torch.randn(6, 2)
    prefixed = {
        "transformer.blocks.0.attn1.to_q.lora_A.weight": down,
        "transformer.blocks.0.attn1.to_q.lora_B.weight": up,
    }
    converted = convert_lora_state_dict_to_original(prefixed, {"transformer.r": 2, "transformer.lora_alpha": 1.5})
    assert converted["lora_unet__blocks_0_attn1_to_q.alpha"].item() == 1.5
    assert converted["lora_unet__blocks_0_attn1_to_q.lora_down.weight"] is down
    assert converted["lora_unet__blocks_0_attn1_to_q.lora_up.weight"] is up
    # The metadata as a `LoraConfig`, and keys without any prefix.
    plain = {A: down, B: up}
    converted = convert_lora_state_dict_to_original(plain, LoraConfig(r=2, lora_alpha=3, target_modules=["to_q"]))
    assert converted["lora_unet__blocks_0_attn1_to_q.alpha"].item() == 3
    # An `nn.Module` holding the adapter, as `save_lora_weights` takes for the diffusers format too.
    layers = torch.nn.Module()
    layers.proj_out = torch.nn.Module()
    layers.proj_out.lora_A = torch.nn.Linear(8, 2, bias=False)
    layers.proj_out.lora_B = torch.nn.Linear(2, 6, bias=False)
    written = load_file(export(tmp_path, layers, {"r": 2, "lora_alpha": 4}))
    assert written["lora_unet__proj_out.alpha"].item() == 4
    torch.testing.assert_close(written["lora_unet__proj_out.lora_up.weight"], layers.proj_out.lora_B.weight.detach())


def test_a_lora_config_is_taken_as_metadata_in_the_diffusers_format_too(tmp_path):
    config = LoraConfig(r=2, lora_alpha=5, target_modules=["to_q"])
    with pytest.raises(TypeError, match="`is_main_process` must be True or False, got NoneType"):  # the 3rd argument
        RuyiImageToVideoPipeline.save_lora_weights(str(tmp_path), {A: torch.randn(2, 8), B: torch.randn(6, 2)}, None)
    RuyiImageToVideoPipeline.save_lora_weights(
        str(tmp_path), {A: torch.randn(2, 8), B: torch.randn(6, 2)}, transformer_lora_adapter_metadata=config
    )
    _, metadata = RuyiImageToVideoPipeline.lora_state_dict(str(tmp_path), return_lora_metadata=True)
    assert metadata["transformer.lora_alpha"] == 5 and metadata["transformer.r"] == 2
    RuyiImageToVideoPipeline.save_lora_weights(
        str(tmp_path), {A: torch.randn(2, 8), B: torch.randn(6, 2)}, weight_name="b.safetensors"
    )
    assert sorted(os.listdir(tmp_path)) == ["b.safetensors", "pytorch_lora_weights.safetensors"]


def test_every_linear_layer_and_nothing_else_is_exportable(pipe):
    """`RUYI_LORA_MODULE_PATHS` holds every Linear of the transformer (tiny golden and published configs) and no other
    module; on the tiny model it gives exactly the names of the original `LoRANetwork` file, which the original's
    `merge_lora` resolved (`make_lora_goldens.py`), plus the CLIP resampler's out-projection that `LoRANetwork` skips
    (an `nn.MultiheadAttention` part; the original's merge resolves it too)."""
    from diffusers_ruyi.loaders.original_checkpoint import (
        RUYI_LORA_MODULE_PATHS,
        convert_transformer_config,
        read_json,
    )
    from diffusers_ruyi.models.transformer_ruyi import RuyiTransformer3DModel

    config = convert_transformer_config(read_json(str(FIXTURES / "real_checkpoint" / "transformer_config.json")))
    with torch.device("meta"):
        published = RuyiTransformer3DModel.from_config(config)
        # CLIP features of another width than the cross-attention: the resampler then has its `kv_proj` Linear.
        projected = RuyiTransformer3DModel.from_config({**pipe.transformer.config, "projection_dim": 24})
    assert isinstance(projected.clip_projection.kv_proj, torch.nn.Linear)
    for model in (pipe.transformer, published, projected):
        for path, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                assert RUYI_LORA_MODULE_PATHS.fullmatch(path), path
            elif RUYI_LORA_MODULE_PATHS.fullmatch(path):  # only the place of an absent `kv_proj`
                assert isinstance(module, torch.nn.Identity), path

    adapter = {}
    for path, module in pipe.transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            adapter[f"{path}.lora_A.weight"] = torch.zeros(1, module.in_features)
            adapter[f"{path}.lora_B.weight"] = torch.zeros(module.out_features, 1)
    exported = {key.split(".")[0] for key in convert_lora_state_dict_to_original(adapter)}
    original = {key.split(".")[0] for key in load_file(ORIGINAL_LORA)}
    assert exported == original | {"lora_unet__clip_projection_attn_out_proj"}
    assert len(exported) == len(adapter) // 2  # one name per module


@pytest.mark.parametrize(
    "path, hint",
    [
        ("_orig_mod.blocks.0.attn1.to_q", "unwrapped model"),
        ("module.blocks.0.attn1.to_q", "unwrapped model"),
        ("base_model.model.proj_out", "unwrapped model"),
        ("blocks.0.attn1.to_qkv", "no fused projections"),
        ("blocks.0.attn2.to_kv", "no fused projections"),
        ("blocks.007.attn1.to_q", ": "),
        ("pos_embed", ": "),
        ("blocks.0.attn1.norm_q", ": "),
        ("blocks.0.attn1", ": "),
    ],
)
def test_modules_the_original_cannot_merge_are_refused(tmp_path, path, hint):
    state_dict = {f"{path}.lora_A.weight": torch.randn(2, 8), f"{path}.lora_B.weight": torch.randn(6, 2)}
    with pytest.raises(ValueError, match=rf"not a Linear layer .*of Ruyi's transformer.*{hint}.*{re.escape(path)}"):
        export(tmp_path / "out", state_dict)
    assert not (tmp_path / "out").exists()


A, B = "blocks.0.attn1.to_q.lora_A.weight", "blocks.0.attn1.to_q.lora_B.weight"


@pytest.mark.parametrize(
    "state_dict, metadata, match",
    [
        (
            {A: torch.randn(2, 8), B: torch.randn(6, 2), "blocks.0.attn1.to_q.lora_B.bias": torch.randn(6)},
            None,
            r"a LoRA bias",
        ),
        (
            {
                "blocks.0.attn1.to_q.lora_embedding_A": torch.randn(2, 3),
                "blocks.0.attn1.to_q.lora_embedding_B": torch.randn(4, 2),
            },
            None,
            r"the style embedding\) of Ruyi's transformer: \['blocks.0.attn1.to_q'\]",
        ),
        (
            {A: torch.randn(2, 8), B: torch.randn(6, 2), "blocks.0.attn1.to_q.lora_magnitude_vector": torch.randn(6)},
            None,
            r"DoRA",
        ),
        ({A: torch.randn(2, 8), B: torch.randn(6, 2)}, {"r": 2, "use_dora": True}, r"a LoRA variant.*use_dora=True"),
        (
            {A: torch.randn(2, 8), B: torch.randn(6, 2)},
            {"r": 2, "alora_invocation_tokens": [1, 2]},
            r"a LoRA variant.*alora_invocation_tokens=\[1, 2\]",
        ),
        (
            {A: torch.randn(2, 8), B: torch.randn(6, 2)},
            {"r": 2, "use_qalora": True},
            r"a LoRA variant.*use_qalora=True",
        ),
        (
            {
                "transformer." + A: torch.randn(2, 8),
                "transformer." + B: torch.randn(6, 2),
                "text_encoder.x.lora_A.weight": torch.randn(2, 2),
            },
            None,
            r"keys of components other than `transformer`",
        ),
        ({A: torch.randn(2, 8)}, None, r"modules without both lora_A and lora_B: \['blocks.0.attn1.to_q'\]"),
        ({A: torch.randn(2, 8, 3, 3), B: torch.randn(6, 2, 1, 1)}, None, r"lora_A \(2, 8, 3, 3\)"),
        ({A: torch.randn(2, 8, 1, 1), B: torch.randn(6, 2, 1, 1)}, None, r"lora_B \(6, 2, 1, 1\) \(a Linear's"),
        ({A: torch.randn(2), B: torch.randn(6, 2)}, None, r"lora_A \(2,\), lora_B \(6, 2\) \(a Linear's"),
        ({A: torch.randn(2, 8), B: torch.randn(6, 2)}, {"r": 2, "lora_bias": True}, r"lora_bias=True"),
        (
            {A: torch.randn(2, 8), B: torch.randn(6, 2)},
            {"r": 2, "init_lora_weights": "pissa"},
            r"'pissa', which changed",
        ),
        (
            {A: torch.randn(2, 8), B: torch.randn(6, 2)},
            {"r": 2, "init_lora_weights": "olora"},
            r"'olora', which changed",
        ),
        ({A: torch.randn(2, 8, device="meta"), B: torch.randn(6, 2)}, None, r"lora_A is on the meta device"),
        ({A: torch.randn(3, 8), B: torch.randn(6, 2)}, None, r"tensors of the wrong shape"),
        ({A: torch.full((2, 8), float("nan")), B: torch.randn(6, 2)}, None, r"NaN or infinite"),
        ({A: torch.randn(2, 8), B: torch.randn(6, 2)}, {"r": 4}, r"rank 2, config 4"),
        ({A: torch.randn(2, 8), B: torch.randn(6, 2)}, {"r": 2, "not_an_option": 1}, r"not a valid `LoraConfig`"),
        ({}, None, r"holds no `lora_A`/`lora_B` weights"),
    ],
    ids=[
        "bias",
        "embedding",
        "dora",
        "dora-config",
        "alora-config",
        "qalora-config",
        "foreign",
        "incomplete",
        "3x3",
        "pointwise-conv",
        "one-dimensional",
        "lora-bias-config",
        "pissa",
        "olora",
        "meta",
        "ranks",
        "nan",
        "config-rank",
        "config-key",
        "empty",
    ],
)
def test_what_the_original_format_cannot_hold_is_refused_and_nothing_written(tmp_path, state_dict, metadata, match):
    with pytest.raises(ValueError, match=match):
        if state_dict:
            export(tmp_path / "out", state_dict, metadata)
        else:  # `save_lora_weights` refuses an empty dict itself
            convert_lora_state_dict_to_original(state_dict, metadata)
    assert not (tmp_path / "out").exists()


def test_every_problem_is_listed_in_one_error():
    # Modules in sorted order: an incomplete one, one with NaN values, one of the wrong shape.
    state_dict = {
        "blocks.0.attn1.to_k.lora_A.weight": torch.randn(2, 8),
        "blocks.0.attn1.to_q.lora_A.weight": torch.full((2, 8), float("nan")),
        "blocks.0.attn1.to_q.lora_B.weight": torch.randn(6, 2),
        "blocks.0.attn1.to_v.lora_A.weight": torch.randn(3, 8),
        "blocks.0.attn1.to_v.lora_B.weight": torch.randn(6, 2),
    }
    with pytest.raises(ValueError) as error:
        convert_lora_state_dict_to_original(state_dict)
    for part in ("both lora_A and lora_B: ['blocks.0.attn1.to_k']", "to_q: lora_A holds NaN", "to_v: lora_A (3, 8)"):
        assert part in str(error.value)
    # A bad alpha pattern does not hide a rank that does not fit the config.
    with pytest.raises(ValueError, match=r"alpha_pattern\['x'\]='bad' is not a finite number.*rank 2, config 4"):
        convert_lora_state_dict_to_original(
            {A: torch.randn(2, 8), B: torch.randn(6, 2)}, {"r": 4, "alpha_pattern": {"x": "bad"}}
        )


def test_the_config_is_checked_without_a_prefix_too_and_arguments_by_type():
    plain = {A: torch.randn(2, 8), B: torch.randn(6, 2)}
    with pytest.raises(ValueError, match=r"Cannot write this LoRA in the original format: .*lora_alpha=nan"):
        convert_lora_state_dict_to_original(plain, {"r": 2, "lora_alpha": float("nan")}, prefix=None)
    with pytest.raises(ValueError, match=r"rank 2, config 4"):
        convert_lora_state_dict_to_original(plain, {"r": 4}, prefix=None)
    for init in (True, False, "gaussian", "eva", "orthogonal", "mica"):  # leave the base weights alone
        convert_lora_state_dict_to_original(plain, {"r": 2, "init_lora_weights": init})
    with pytest.raises(TypeError, match=r"`metadata` must be a `LoraConfig`, a dict of its values or None, got str"):
        convert_lora_state_dict_to_original(plain, "r=2")
    with pytest.raises(TypeError, match=r"`state_dict` must be a dict of LoRA tensors, got list"):
        convert_lora_state_dict_to_original(list(plain.items()))


def test_the_file_is_written_whole_or_not_at_all(tmp_path):
    state_dict = {A: torch.randn(2, 8), B: torch.randn(6, 2)}

    def fails(tensors, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export(tmp_path, state_dict, save_function=fails)
    assert os.listdir(tmp_path) == []
    path = export(tmp_path, state_dict, weight_name="for_comfyui.safetensors")
    assert os.listdir(tmp_path) == ["for_comfyui.safetensors"]
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    # Another process of a multi-process run writes nothing; a file where the folder should be is refused.
    RuyiImageToVideoPipeline.save_lora_weights(
        str(tmp_path / "other"), state_dict, is_main_process=False, original_format=True
    )
    assert not (tmp_path / "other").exists()
    # In the diffusers format too (diffusers' writer saved anyway).
    RuyiImageToVideoPipeline.save_lora_weights(str(tmp_path / "other"), state_dict, is_main_process=False)
    assert not (tmp_path / "other").exists()
    (tmp_path / "a_file").write_text("")
    for original_format in (True, False):  # diffusers would log it and write nothing
        with pytest.raises(ValueError, match=r"`save_directory` .*a_file' is a file, not a folder"):
            RuyiImageToVideoPipeline.save_lora_weights(
                str(tmp_path / "a_file"), state_dict, original_format=original_format
            )
    with pytest.raises(TypeError, match="`is_main_process` must be True or False, got str"):
        export(tmp_path / "other", state_dict, is_main_process="yes")
    with pytest.raises(TypeError, match="`save_directory` must be a str or os.PathLike, got NoneType"):
        RuyiImageToVideoPipeline.save_lora_weights(None, state_dict)
    # A custom `save_function` gets contiguous CPU-ready tensors, under a name with the final extension.
    seen = []

    def save(tensors, path):
        seen.append((path, all(t.is_contiguous() for t in tensors.values())))
        save_file(tensors, path)

    transposed = {A: torch.randn(8, 2).t(), B: torch.randn(2, 6).t()}
    export(tmp_path / "custom", transposed, save_function=save)
    assert seen == [(str(tmp_path / "custom" / "pytorch_lora_weights.partial.safetensors"), True)]
    assert os.listdir(tmp_path / "custom") == ["pytorch_lora_weights.safetensors"]
    with pytest.raises(TypeError, match="`original_format` must be True or False"):
        RuyiImageToVideoPipeline.save_lora_weights(str(tmp_path), state_dict, original_format="yes")
