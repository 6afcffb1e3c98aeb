"""Loading the PUBLISHED Ruyi-Mini-7B layout: layout recognition, configs, scheduler, CLIP, embeddings, dtypes.

The end-to-end and VAE parity tests on the same folder live in tests/pipelines and tests/models.
"""

import json
import logging
import re
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler
from safetensors.torch import save_file

from diffusers_ruyi import RuyiImageToVideoPipeline, RuyiTransformer3DModel
from diffusers_ruyi.loaders.original_checkpoint import (
    convert_transformer_config,
    convert_transformer_state_dict,
    is_original_pipeline_folder,
    read_safetensors,
    resolve_dtype,
)
from diffusers_ruyi.loaders.original_pipeline import (
    _disk_size,
    load_clip_image_encoder,
    load_clip_image_processor,
    load_control_embeddings,
    load_original_scheduler,
)


def _published_transformer_on_meta(real_checkpoint_dir):
    config = json.loads((real_checkpoint_dir / "transformer_config.json").read_text())
    with torch.device("meta"):
        return RuyiTransformer3DModel.from_config(convert_transformer_config(config))


@pytest.mark.parametrize("with_pe", [True, False], ids=["file-with-t_embed.pe", "file-without-t_embed.pe"])
def test_published_transformer_config_matches_original_keys_and_shapes(real_checkpoint_dir, with_pe):
    reference = json.loads((real_checkpoint_dir / "original_transformer_keys.json").read_text())
    original = {k: tuple(v) for k, v in reference["state_dict"].items()}
    if not with_pe:
        original = {k: v for k, v in original.items() if not k.endswith("t_embed.pe")}
    model = _published_transformer_on_meta(real_checkpoint_dir)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = convert_transformer_state_dict({k: torch.empty(0) for k in original})
    assert set(converted) == set(ours)
    assert {k: original[k] for k in converted} == {k: ours[k] for k in converted}
    assert sum(p.numel() for p in model.parameters()) == reference["num_params"] == 7_186_781_312


def test_transformer_defaults_are_the_published_model(real_checkpoint_dir):
    published = _published_transformer_on_meta(real_checkpoint_dir).config
    with torch.device("meta"):
        default_model = RuyiTransformer3DModel()
    for key in ("num_attention_heads", "attention_head_dim", "projection_dim", "num_layers", "mlp_ratio"):
        assert default_model.config[key] == published[key], key
    assert (default_model.config.num_attention_heads, default_model.config.attention_head_dim) == (16, 176)


def test_control_embedding_defaults_fit_the_published_transformer(real_checkpoint_dir):
    # The embeddings feed the transformer's two text streams, so their default sizes are its published ones (a width
    # one off passed before: from_flat_dict always passes the file's sizes).
    import inspect

    from diffusers_ruyi.pipelines.controls import RuyiControlEmbeddings

    published = _published_transformer_on_meta(real_checkpoint_dir).config
    parameters = inspect.signature(RuyiControlEmbeddings.__init__).parameters
    for key in ("text_len", "cross_attention_dim", "text_len_t5", "cross_attention_dim_t5"):
        assert parameters[key].default == published[key], key


def test_layout_recognition(tiny_realfmt_checkpoint, tiny_checkpoint, tmp_path):
    # Published layout: model_index.json names RuyiInpaintPipeline with stock diffusers component entries.
    assert is_original_pipeline_folder(str(tiny_realfmt_checkpoint))
    # First goldens: no model_index.json, transformer/ + vae/ + embeddings.safetensors.
    assert is_original_pipeline_folder(str(tiny_checkpoint))
    # A diffusers-format folder (what save_pretrained writes) is not the original layout.
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "RuyiImageToVideoPipeline"}))
    (tmp_path / "vae").mkdir()
    (tmp_path / "transformer").mkdir()
    (tmp_path / "embeddings.safetensors").write_bytes(b"")
    assert not is_original_pipeline_folder(str(tmp_path))
    (tmp_path / "model_index.json").unlink()
    assert is_original_pipeline_folder(str(tmp_path))
    shutil.rmtree(tmp_path / "vae")
    assert not is_original_pipeline_folder(str(tmp_path))


def test_scheduler_is_ddim_built_from_the_ddpm_config(tiny_realfmt_checkpoint):
    scheduler = load_original_scheduler(str(tiny_realfmt_checkpoint / "scheduler"))
    assert type(scheduler) is DDIMScheduler
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.set_alpha_to_one is False
    assert scheduler.config.timestep_spacing == "leading"
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]
    # Other samplers swap in with from_config and keep the file's keys (PNDM's skip_prk_steps), as the original's
    # `<Sampler>.from_pretrained(root, subfolder="scheduler")` would.
    assert PNDMScheduler.from_config(scheduler.config).config.skip_prk_steps is True
    assert EulerDiscreteScheduler.from_config(scheduler.config).config.prediction_type == "v_prediction"


def test_full_clip_bin_loads_the_vision_tower(tiny_realfmt_checkpoint):
    folder = tiny_realfmt_checkpoint / "image_encoder"
    encoder = load_clip_image_encoder(str(folder), torch.bfloat16)
    assert type(encoder).__name__ == "CLIPVisionModelWithProjection"
    assert encoder.dtype == torch.bfloat16
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    ours = encoder.state_dict()
    for key, value in state.items():
        if key in ours:
            assert torch.equal(ours[key].float(), value.to(torch.bfloat16).float()), key
    assert any(k.startswith("text_model.") for k in state)  # the file really is a full CLIPModel
    processor = load_clip_image_processor(str(folder))
    assert processor.crop_size == {"height": 32, "width": 32}
    assert processor.size == {"shortest_edge": 32}


def test_clip_missing_vision_weight_is_an_error(tiny_realfmt_checkpoint, tmp_path):
    folder = tmp_path / "image_encoder"
    shutil.copytree(tiny_realfmt_checkpoint / "image_encoder", folder)
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    del state["visual_projection.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="visual_projection.weight"):
        load_clip_image_encoder(str(folder))


def test_clip_extra_vision_weight_is_an_error(tiny_realfmt_checkpoint, tmp_path):
    # Text-tower weights are expected in the full-CLIP file; any other tensor the vision tower lacks is not.
    folder = tmp_path / "image_encoder"
    shutil.copytree(tiny_realfmt_checkpoint / "image_encoder", folder)
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    state["vision_model.extra.weight"] = torch.zeros(2)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"unexpected keys: \['vision_model.extra.weight'\]"):
        load_clip_image_encoder(str(folder))


def test_clip_config_of_other_sizes_names_the_weights(tiny_realfmt_checkpoint, tmp_path):
    # transformers raised "look at the above report!" with its report silenced: the keys are now in the error.
    folder = tmp_path / "image_encoder"
    shutil.copytree(tiny_realfmt_checkpoint / "image_encoder", folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"keys of the wrong shape: \['vision_model.encoder.layers.0.mlp.fc1.bias'"):
        load_clip_image_encoder(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json for its CLIP weights"):
        load_clip_image_encoder(str(folder))


@pytest.mark.parametrize("part", ["transformer", "vae", "image_encoder"])
def test_a_truncated_weight_file_is_reported_before_anything_loads(
    tiny_realfmt_checkpoint, tmp_path, monkeypatch, part
):
    import diffusers_ruyi.loaders.original_pipeline as original_pipeline

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_realfmt_checkpoint, folder)
    name = "model.safetensors" if part == "image_encoder" else "diffusion_pytorch_model.safetensors"
    weights = folder / part / name
    if part == "image_encoder":  # the converter writes a safetensors CLIP next to (or instead of) the .bin
        state = torch.load(folder / part / "pytorch_model.bin", map_location="cpu", weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    weights.write_bytes(weights.read_bytes()[:-100])
    loaded = []
    monkeypatch.setattr(original_pipeline, "load_control_embeddings", lambda path: loaded.append(path))
    with pytest.raises(ValueError, match=f"{part}/{name}' is truncated"):
        RuyiImageToVideoPipeline.from_pretrained(folder)
    assert loaded == []  # not even the (first, small) embeddings


def test_disk_sizes_in_the_loading_progress(tmp_path):
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(b"0" * 3 * 2**20)
    with open(large, "wb") as f:  # sparse: 1.5 GiB of size, no disk used
        f.truncate(3 * 2**29)
    assert _disk_size(str(small)) == "3 MB"
    assert _disk_size(str(large)) == "1.5 GB"
    assert _disk_size(str(tmp_path)) == "1.5 GB"


def test_original_layout_loading_bar_follows_diffusers_progress_setting(tiny_realfmt_checkpoint, capsys):
    from diffusers.utils import logging as diffusers_logging

    from diffusers_ruyi import RuyiImageToVideoPipeline

    RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint)
    assert "Loading Ruyi (original layout)" in capsys.readouterr().err
    diffusers_logging.disable_progress_bar()
    try:
        RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint)
    finally:
        diffusers_logging.enable_progress_bar()
    assert "Loading Ruyi (original layout)" not in capsys.readouterr().err


def test_bf16_embeddings_with_every_aspect_ratio_tag(tiny_realfmt_checkpoint, caplog):
    path = tiny_realfmt_checkpoint / "embeddings.safetensors"
    flat = read_safetensors(str(path))
    assert flat["p.default.emb1"].dtype == torch.bfloat16
    embeddings = load_control_embeddings(str(path))
    assert embeddings.aspect_ratios == ["16:9", "9:16"]
    positive, negative = embeddings.get_controls(motion=3, camera_direction="up", aspect_ratio="9:16")
    assert torch.equal(positive[0], flat["p.9x16movie3up.emb1"].float())
    assert torch.equal(negative[0], flat["n.default.emb1"].float())
    # A combination the file lacks falls back to p.default with a warning, as the original does.
    with caplog.at_level(logging.WARNING):
        positive, _ = embeddings.get_controls(motion=3, camera_direction="up", aspect_ratio="4:3")
    assert torch.equal(positive[0], flat["p.default.emb1"].float())
    assert "p.4x3movie3up" in caplog.text


def test_read_safetensors_truncated_and_garbage(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    tensors = {"a": torch.randn(64, 64), "b": torch.arange(10), "c": torch.randn(3, 5).to(torch.bfloat16)}
    save_file(tensors, str(path))
    full = read_safetensors(str(path))
    assert full["b"].tolist() == list(range(10))
    # Casting streams through a small reused buffer: force many chunks, with a last partial one.
    monkeypatch.setattr("diffusers_ruyi.loaders.original_checkpoint._CAST_CHUNK_BYTES", 60)
    cast = read_safetensors(str(path), torch.float64)
    assert all(torch.equal(cast[k], v.to(cast[k].dtype)) for k, v in tensors.items())
    assert cast["c"].dtype == torch.float64
    assert read_safetensors(str(path), torch.bfloat16)["a"].dtype == torch.bfloat16
    assert read_safetensors(str(path), torch.bfloat16)["b"].dtype == torch.int64  # only floating tensors cast
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        read_safetensors(str(path))
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        read_safetensors(str(path))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bfloat16", torch.bfloat16),
        ("torch.float16", torch.float16),
        ("bf16", torch.bfloat16),
        (torch.float32, torch.float32),
        (None, None),
        ({"default": "bfloat16", "vae": "float32"}, {"default": torch.bfloat16, "vae": torch.float32}),
    ],
)
def test_resolve_dtype(value, expected):
    assert resolve_dtype(value) == expected
    assert resolve_dtype(torch_dtype=value) == expected


@pytest.mark.parametrize("value", [torch.float8_e4m3fn, "float8", torch.int8, "bfloat17", 3, "default"])
def test_resolve_dtype_refuses(value):
    with pytest.raises(ValueError, match="must be one of"):
        resolve_dtype(value)


def test_dtype_auto_is_refused_not_float32_in_silence():
    # transformers reads "auto" as the checkpoint's dtype (bfloat16 here); float32 would double the memory unasked.
    with pytest.raises(ValueError, match=r"`torch_dtype='auto'` is not supported: the dtype is not guessed"):
        resolve_dtype(torch_dtype="auto")
    with pytest.raises(ValueError, match=r"`dtype\['vae'\]='auto'` is not supported"):
        resolve_dtype({"vae": "auto"})


def test_resolve_dtype_conflict():
    with pytest.raises(ValueError, match="pass only `dtype`"):
        resolve_dtype(torch.float16, torch.bfloat16)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_transformer_dtype_string_on_both_layouts(tiny_realfmt_checkpoint, tmp_path, layout):
    folder = tiny_realfmt_checkpoint
    if layout == "diffusers":
        RuyiTransformer3DModel.from_pretrained(folder, subfolder="transformer").save_pretrained(tmp_path / "t")
        model = RuyiTransformer3DModel.from_pretrained(tmp_path / "t", dtype="bfloat16")
    else:
        model = RuyiTransformer3DModel.from_pretrained(folder, subfolder="transformer", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="must be one of"):
        RuyiTransformer3DModel.from_pretrained(folder, subfolder="transformer", dtype=torch.float8_e4m3fn)


@pytest.mark.parametrize(
    "dtype, expected",
    [(None, torch.float32), (torch.bfloat16, torch.bfloat16), ({"default": "fp16", "vae": "fp32"}, torch.float16)],
)
def test_control_embeddings_take_the_dtype_on_both_layouts(tiny_realfmt_checkpoint, tmp_path, dtype, expected):
    # The original layout ignored `dtype` for them; a converted folder honoured it. Both now agree.
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, dtype=dtype)
    pipe.control_embeddings.save_pretrained(tmp_path / "c")
    converted = type(pipe.control_embeddings).from_pretrained(tmp_path / "c", dtype=dtype and expected)
    for embeddings in (pipe.control_embeddings, converted):
        assert embeddings.emb1.dtype == embeddings.emb2.dtype == expected
        assert embeddings.mask1.dtype == embeddings.mask2.dtype == torch.long


@pytest.mark.parametrize(
    "which, key, value",
    [
        ("vae", "cache_compression_vae", "false"),  # a string: would read as true and build the other VAE
        ("vae", "use_tiling", "no"),
        ("vae", "force_upcast", 1),
        ("vae", "latent_channels", 16.5),
        ("vae", "ch_mult", [1, 2.5, 4]),
        ("vae", "scaling_factor", None),
        ("vae", "scaling_factor", 0),
        ("vae", "mini_batch_encoder", True),
        ("transformer", "num_layers", "4"),
        ("transformer", "num_attention_heads", 2.0),
        ("transformer", "n_query", 0),
        ("transformer", "mlp_ratio", -1),
        ("transformer", "learn_sigma", "true"),
    ],
)
def test_original_config_values_of_the_wrong_type_are_refused(real_checkpoint_dir, which, key, value):
    from diffusers_ruyi.loaders.original_checkpoint import convert_vae_config

    config = json.loads((real_checkpoint_dir / f"{which}_config.json").read_text())
    convert = convert_vae_config if which == "vae" else convert_transformer_config
    convert(dict(config))  # the published file itself is fine
    config[key] = value
    with pytest.raises(ValueError, match=f"config has values of the wrong type: {key}="):
        convert(config)


def test_config_type_errors_offer_a_list_only_for_ch_mult(real_checkpoint_dir):
    # `ch_mult` may be a list; `ch` (which sorts before it) may not, and its message must not say so.
    from diffusers_ruyi.loaders.original_checkpoint import convert_vae_config

    config = json.loads((real_checkpoint_dir / "vae_config.json").read_text())
    with pytest.raises(ValueError, match=r"ch=0 \(expected an integer >= 1\)"):
        convert_vae_config({**config, "ch": 0})
    with pytest.raises(ValueError, match=r"ch_mult=\[\] \(expected an integer >= 1, or a list of them\)"):
        convert_vae_config({**config, "ch_mult": []})


def test_dtype_errors_name_the_argument_given():
    with pytest.raises(ValueError, match=r"`torch_dtype` must be one of"):
        resolve_dtype(None, "float64")
    with pytest.raises(ValueError, match=r"`dtype` must be one of"):
        resolve_dtype("float64", None)
    with pytest.raises(ValueError, match=r"`torch_dtype\['vae'\]` must be one of"):
        resolve_dtype(torch_dtype={"vae": "int8"})


def test_a_null_out_channels_is_refused_in_both_configs(real_checkpoint_dir):
    # The original transformer resolves a null `out_channels` from `learn_sigma` (for the published in_channels=48
    # that is 96, which no image-to-video checkpoint has); the original VAE has no such default.
    from diffusers_ruyi.loaders.original_checkpoint import convert_vae_config

    config = json.loads((real_checkpoint_dir / "transformer_config.json").read_text())
    with pytest.raises(ValueError, match=r"`out_channels` is null: the original would make it in_channels \* 2 = 96"):
        convert_transformer_config({**config, "out_channels": None})
    with pytest.raises(ValueError, match=r"in_channels \* 1 = 48"):
        convert_transformer_config({**config, "out_channels": None, "learn_sigma": False})
    config = json.loads((real_checkpoint_dir / "vae_config.json").read_text())
    with pytest.raises(ValueError, match="VAE config has values of the wrong type: out_channels=None"):
        convert_vae_config({**config, "out_channels": None})


@pytest.mark.parametrize(
    "key, change, message",
    [
        ("p.default.mask1", lambda t: t.float() * 0.5, "p.default.mask1 is not a 0/1 attention mask"),
        ("n.default.mask2", lambda t: t * 7, "n.default.mask2 is not a 0/1 attention mask"),
        ("p.default.emb1", lambda t: t.float().fill_(float("nan")), "p.default.emb1 is not finite floating-point"),
        ("n.default.emb2", lambda t: t.long(), "n.default.emb2 is not finite floating-point"),
        ("p.default.emb2", lambda t: torch.tensor(1.0), "p.default.emb2 is not a tensor with a batch dimension"),
        # Every entry must have p.default's shape: a longer or shorter one would not fit the table, and a batch of two
        # would be cut to its first row without a word.
        (
            "p.16x9movie0auto.mask2",
            lambda t: t[:, :-1],
            r"Control embedding 'p.16x9movie0auto.mask2' has shape .*, expected",
        ),
        (
            "p.16x9movie2left.emb1",
            lambda t: torch.cat([t, t[:, :1]], 1),
            r"Control embedding 'p.16x9movie2left.emb1' has shape .*, expected",
        ),
        ("n.default.emb2", lambda t: torch.cat([t, t]), r"Control embedding 'n.default.emb2' has shape .*, expected"),
    ],
)
def test_control_embeddings_with_bad_values_are_refused(tiny_realfmt_checkpoint, key, change, message):
    from diffusers_ruyi.pipelines.controls import RuyiControlEmbeddings

    flat = read_safetensors(str(tiny_realfmt_checkpoint / "embeddings.safetensors"))
    RuyiControlEmbeddings.from_flat_dict(dict(flat))  # the published layout itself is fine
    flat[key] = change(flat[key])
    with pytest.raises(ValueError, match=message):
        RuyiControlEmbeddings.from_flat_dict(flat)


CLIP_KEY = "vision_model.encoder.layers.0.layer_norm1.bias"


def _drop_clip_weight(folder) -> None:
    """Deletes `CLIP_KEY` from the CLIP weights of a pipeline saved to ``folder``."""
    from safetensors.torch import load_file

    weights = folder / "image_encoder" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors[CLIP_KEY]
    save_file(tensors, str(weights), metadata={"format": "pt"})


def test_diffusers_folder_missing_a_clip_weight_is_refused(tiny_realfmt_checkpoint, tmp_path):
    # transformers would initialise the weight at random and only log it; the pipeline lists it instead.
    folder = tmp_path / "saved"
    RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint).save_pretrained(folder)
    RuyiImageToVideoPipeline.from_pretrained(folder)  # intact: loads
    _drop_clip_weight(folder)
    with pytest.raises(ValueError, match=f"CLIP image encoder .* lacks these weights: \\['{re.escape(CLIP_KEY)}'\\]"):
        RuyiImageToVideoPipeline.from_pretrained(folder)


def test_the_clip_weight_check_takes_the_models_ignored_keys_in_any_container(
    tiny_realfmt_checkpoint, tmp_path, monkeypatch
):
    # Kills `getattr(..., "_keys_to_ignore_on_load_missing", None) or []` -> `and []` in `check_clip_weight_keys`:
    # transformers 4.x leaves the attribute None (no pattern, not a TypeError), and patterns a model declares cover
    # the weights they name.
    import transformers

    from diffusers_ruyi.loaders.original_pipeline import check_clip_weight_keys

    saved = tmp_path / "saved"
    RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint).save_pretrained(saved)
    _drop_clip_weight(saved)
    folder = saved / "image_encoder"

    def clip_class(ignored):
        class CLIP(transformers.CLIPVisionModelWithProjection):
            def __init__(self, config):
                super().__init__(config)
                self._keys_to_ignore_on_load_missing = ignored

        return CLIP

    monkeypatch.setattr(transformers, "CLIPVisionModelWithProjection", clip_class(None))
    with pytest.raises(ValueError, match=f"lacks these weights: \\['{re.escape(CLIP_KEY)}'\\]"):
        check_clip_weight_keys(str(folder))
    monkeypatch.setattr(transformers, "CLIPVisionModelWithProjection", clip_class({re.escape(CLIP_KEY)}))
    check_clip_weight_keys(str(folder))


@pytest.mark.parametrize("field, width", [("emb1", 48), ("emb2", None)])
def test_control_embeddings_of_another_transformer_are_refused_at_load(
    tiny_realfmt_checkpoint, tmp_path, field, width
):
    # They loaded, and the first call failed after the CLIP and VAE encodes, naming `encoder_hidden_states`.
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_realfmt_checkpoint, folder)
    flat = read_safetensors(str(folder / "embeddings.safetensors"))
    for key in [k for k in flat if k.endswith(field) or (width is None and k.endswith("mask2"))]:
        # A wider first stream, or one more token (embedding and mask) in the second.
        flat[key] = (
            torch.cat([flat[key], flat[key][:, :1]], 1)
            if width is None
            else flat[key].new_zeros(flat[key].shape[0], flat[key].shape[1], width)
        )
    save_file(flat, str(folder / "embeddings.safetensors"))
    with pytest.raises(ValueError, match=r"The control embeddings \(embeddings.safetensors\) hold text streams"):
        RuyiImageToVideoPipeline.from_pretrained(folder)
    # A pipeline whose transformer is replaced afterwards is checked at the call, before any model runs.
    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint)
    other = RuyiTransformer3DModel.from_config({**pipe.transformer.config, "text_len": 9})
    pipe.transformer = other
    c = other.config  # each stream's shape is named, the transformer's beside the file's
    takes = f"the transformer takes (9, {c.cross_attention_dim}) and ({c.text_len_t5}, {c.cross_attention_dim_t5})"
    with pytest.raises(ValueError, match=re.escape(takes) + ".*they belong to another checkpoint"):
        pipe(image=__import__("PIL.Image").Image.new("RGB", (32, 32)), num_frames=1, height=32, width=32)


@pytest.mark.parametrize("which", ["vae", "image_encoder", "out_channels"])
def test_components_of_another_checkpoint_are_refused(tiny_realfmt_checkpoint, which):
    # Each failed at the first call, after the CLIP and VAE encodes, deep inside the transformer.
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from diffusers_ruyi import AutoencoderKLRuyiCausal3D

    pipe = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint)
    components = dict(pipe.components)
    if which == "vae":
        components["vae"] = AutoencoderKLRuyiCausal3D.from_config({**pipe.vae.config, "latent_channels": 8})
        message = r"The VAE has 8 latent channels, but the transformer takes in_channels=48"
    elif which == "out_channels":
        components["transformer"] = RuyiTransformer3DModel.from_config({**pipe.transformer.config, "out_channels": 8})
        message = r"predicts out_channels=8"
    else:
        config = CLIPVisionConfig(**{**pipe.image_encoder.config.to_dict(), "hidden_size": 48})
        components["image_encoder"] = CLIPVisionModelWithProjection(config)
        message = r"The image encoder's hidden states are 48 wide, but the transformer attends to CLIP features of"
    with pytest.raises(ValueError, match=message):
        RuyiImageToVideoPipeline(**components)
    # Replaced after the pipeline was made: refused at the call, before any model runs.
    name = "transformer" if which == "out_channels" else which
    setattr(pipe, name, components[name])
    with pytest.raises(ValueError, match=message):
        pipe(image=__import__("PIL.Image").Image.new("RGB", (32, 32)), num_frames=1, height=32, width=32)


def test_stored_temporal_table_dtype_from_a_state_dict_or_the_headers(tmp_path):
    from diffusers_ruyi.loaders.original_checkpoint import stored_temporal_table_dtype

    key = "blocks.3.t_embed.pe"
    table = torch.zeros(1, 4, 8)
    # A single file is loaded whole: its tensor says.
    assert stored_temporal_table_dtype({key: table.bfloat16()}, [], [key]) == "bfloat16"
    assert stored_temporal_table_dtype({key: table.half()}, [], [key]) == "float16"
    assert stored_temporal_table_dtype({key: table}, [], [key]) is None  # float32: exact, as computed
    assert stored_temporal_table_dtype({key: torch.bfloat16}, [], [key]) == "bfloat16"  # a header's dtypes only
    assert stored_temporal_table_dtype({}, [], ["blocks.3.attn1.to_q.weight"]) is None  # no table stored
    # Shards are not loaded up front: the header of the one that holds a table says.
    save_file({"other": table}, str(tmp_path / "a.safetensors"))
    save_file({key: table.half()}, str(tmp_path / "b.safetensors"))
    files = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    assert stored_temporal_table_dtype(None, files, ["other", key]) == "float16"


def test_disk_size_of_exactly_one_gib_is_in_gb(tmp_path):
    exact, below = tmp_path / "exact.bin", tmp_path / "below.bin"
    with open(exact, "wb") as f:  # sparse: sizes without disk use
        f.truncate(2**30)
    with open(below, "wb") as f:
        f.truncate(2**30 - 2**20)
    assert _disk_size(str(exact)) == "1.0 GB"  # not "1024 MB"
    assert _disk_size(str(below)) == "1023 MB"
