"""Loader behaviours that survived mutation testing (scripts/mutation.py); each test names the mutant it kills."""

import json
import math
import re

import pytest
import torch
from safetensors.torch import save_file

from diffusers_ruyi.loaders.original_checkpoint import convert_vae_config, read_safetensors
from diffusers_ruyi.pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline


def test_original_format_reader_takes_a_file_whose_header_fills_it(tmp_path):
    # Kills `header_size <= file_size - 8` -> `file_size - 9` (loaders/original_checkpoint.py): a file without
    # tensors is its 8-byte length and its header, nothing else, and is valid.
    empty, one = tmp_path / "empty.safetensors", tmp_path / "one.safetensors"
    save_file({}, str(empty))
    assert read_safetensors(str(empty)) == {}
    save_file({"x": torch.arange(3.0)}, str(one))
    assert torch.equal(read_safetensors(str(one))["x"], torch.arange(3.0))
    with open(one, "r+b") as f:  # a header that claims one byte more than the file holds
        f.write((one.stat().st_size - 7).to_bytes(8, "little"))
    # Also kills `file_size - 8` -> `+ 8`: the length is refused as such, before a short read is parsed as JSON.
    with pytest.raises(
        ValueError, match=f"not a valid safetensors file: its header claims {one.stat().st_size - 7} bytes"
    ):
        read_safetensors(str(one))
    # Kills `base + end` -> `base * end` in the message: a file cut short names the bytes it should have.
    save_file({"x": torch.arange(3.0)}, str(one))
    size = one.stat().st_size
    with open(one, "r+b") as f:
        f.truncate(size - 4)
    with pytest.raises(
        ValueError, match=f"is truncated: its header describes {size} bytes but the file has {size - 4}"
    ):
        read_safetensors(str(one))


def _rewrite_header(path, change):
    """Rewrites the JSON header of a safetensors file with ``change(header)`` applied, the data as it was."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    change(header)
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + size :])


@pytest.mark.parametrize(
    "change, match",
    [
        # The shape says 4 float32 (16 bytes), the offsets 12: torch failed when the model loaded, after the others.
        (lambda h: h["a"].update(shape=[4]), r"tensor 'a' of shape \[4\] and dtype F32 needs 16 bytes, but its data"),
        # Overlapping tensors: b starts inside a.
        (lambda h: h["b"].update(data_offsets=[8, 16]), r"tensor 'b' has data_offsets \[8, 16\] after byte 12"),
        (lambda h: h["a"].update(shape=[-3]), r"tensor 'a' has data_offsets"),
    ],
)
def test_a_header_whose_tensors_do_not_fit_their_offsets_is_refused(tmp_path, change, match):
    from diffusers_ruyi.loaders.original_checkpoint import check_safetensors_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(3.0), "b": torch.arange(1.0)}, str(path))
    check_safetensors_file(str(path))
    _rewrite_header(path, change)
    with pytest.raises(ValueError, match="not a valid safetensors file: " + match):
        check_safetensors_file(str(path))


def test_a_zero_size_tensor_sharing_its_start_is_valid_in_any_key_order(tmp_path):
    # safetensors orders tensors by (start, end): an empty one at the start of the next is not an overlap.
    from diffusers_ruyi.loaders.original_checkpoint import check_safetensors_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(4.0), "z": torch.zeros(0)}, str(path))
    _rewrite_header(path, lambda h: (h["a"].update(data_offsets=[0, 16]), h["z"].update(data_offsets=[0, 0])))
    check_safetensors_file(str(path))


def test_original_vae_config_conversion_names_the_supported_blocks(tiny_checkpoint):
    # Kills `_SUPPORTED_VAE_DOWN_BLOCKS + _SUPPORTED_VAE_UP_BLOCKS` -> `*` (loaders/original_checkpoint.py): an
    # unknown block type is a ValueError that lists what is supported, not a TypeError from the message.
    config = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())
    config["down_block_types"] = [*config["down_block_types"][:-1], "BogusDownBlock"]
    with pytest.raises(
        ValueError,
        match="Unsupported VAE block types \\['BogusDownBlock'\\]; supported: .*SpatialDownBlock3D.*SpatialUpBlock3D",
    ):
        convert_vae_config(config)


def test_original_vae_config_defaults_and_required_block_lists(tiny_checkpoint):
    # Kills `"out_channels": 3` -> 2 in _ORIGINAL_VAE_DEFAULTS and `not down or not up` -> `and` in
    # convert_vae_config (loaders/original_checkpoint.py): a file without the channel keys means RGB in and out, as
    # the original's defaults; a file missing either block list is refused.
    config = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())
    for key in ("in_channels", "out_channels"):
        config.pop(key, None)
    converted = convert_vae_config(config)
    assert (converted["in_channels"], converted["out_channels"]) == (3, 3)
    for key in ("down_block_types", "up_block_types"):
        with pytest.raises(ValueError, match="must list `down_block_types` and `up_block_types`"):
            convert_vae_config({k: v for k, v in config.items() if k != key})


def test_only_a_2d_autoencoder_kl_config_is_refused_as_not_original():
    # Kills `_class_name == "AutoencoderKL"` -> `<=` in original_model_config (loaders/original_checkpoint.py): a
    # config without a class name, or of another class, is simply not an original config (None), not an error.
    from diffusers_ruyi.loaders.original_checkpoint import original_model_config

    assert original_model_config("vae", {"in_channels": 3}) is None
    assert original_model_config("vae", {"_class_name": "AutoencoderKLRuyiCausal3D"}) is None
    assert original_model_config("vae", {"_class_name": "Autoencoder"}) is None
    with pytest.raises(ValueError, match="2D diffusers `AutoencoderKL` config"):
        original_model_config("vae", {"_class_name": "AutoencoderKL", "in_channels": 3})


def test_original_vae_widths_come_from_ch_and_ch_mult(tiny_checkpoint, caplog):
    # Kills `listed is not None and ...` -> `not listed is not None and ...` in convert_vae_config
    # (loaders/original_checkpoint.py): the original builds its widths from `ch * ch_mult`; a config without
    # `block_out_channels` converts, and one whose list disagrees converts to `ch * ch_mult` with a warning.
    import logging

    config = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())
    widths = [config["ch"] * m for m in config["ch_mult"]]
    logger = logging.getLogger("diffusers_ruyi.loaders.original_checkpoint")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            listed = convert_vae_config({**config, "block_out_channels": widths})
            assert caplog.text == ""
            unlisted = convert_vae_config({k: v for k, v in config.items() if k != "block_out_channels"})
            assert caplog.text == ""
            other = convert_vae_config({**config, "block_out_channels": [w * 2 for w in widths]})
    finally:
        logger.removeHandler(caplog.handler)
    assert listed["block_out_channels"] == unlisted["block_out_channels"] == other["block_out_channels"] == widths
    assert f"lists block_out_channels={[w * 2 for w in widths]}" in caplog.text
    assert f"ch * ch_mult = {widths}" in caplog.text


def test_original_vae_config_refuses_an_empty_ch_mult(tiny_checkpoint):
    # Kills `len(value) > 0` -> `>= 0` in _check_config_types (loaders/original_checkpoint.py): a VAE with no blocks
    # is refused by name at conversion, not built into a model that fails later.
    config = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())
    with pytest.raises(ValueError, match=r"ch_mult=\[\] \(expected an integer >= 1, or a list of them\)"):
        convert_vae_config({**config, "ch_mult": []})


def test_original_layout_passes_a_device_map_to_every_model_and_none_without_one(tiny_realfmt_checkpoint, monkeypatch):
    # Kills `placement = {} if device_map is None else {...}` -> `is not None` in
    # `load_original_pipeline_components`: a `device_map` reaches the VAE's, the transformer's and the CLIP encoder's
    # loading (on the CPU diffusers' `hf_device_map` shows it), and without one none is passed.
    from diffusers_ruyi.loaders import original_pipeline

    clip_options = []
    load_clip = original_pipeline.load_clip_image_encoder

    def spy(path, dtype=None, **kwargs):
        clip_options.append(kwargs)
        return load_clip(path, dtype, **kwargs)

    monkeypatch.setattr(original_pipeline, "load_clip_image_encoder", spy)
    placed = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, device_map="cpu")
    assert placed.transformer.hf_device_map == {"": torch.device("cpu")}
    assert placed.vae.hf_device_map == {"": torch.device("cpu")}
    default = RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint)
    assert getattr(default.transformer, "hf_device_map", None) is None
    assert getattr(default.vae, "hf_device_map", None) is None
    assert clip_options == [{"device_map": torch.device("cpu")}, {}]


def test_original_layout_moves_the_control_embeddings_to_the_device_map(tiny_realfmt_checkpoint, monkeypatch):
    # Kills `embeddings if device_map is None else embeddings.to(device_map)` -> `if not device_map is None` in
    # load_original_pipeline (loaders/original_pipeline.py): with a `device_map`, the control embeddings go to that
    # device with the models (on a CPU-only machine the move is seen through `.to`); without one they stay put.
    from diffusers_ruyi import RuyiImageToVideoPipeline
    from diffusers_ruyi.pipelines.controls import RuyiControlEmbeddings

    moves = []
    original_to = RuyiControlEmbeddings.to

    def spy(self, *args, **kwargs):
        moves.append(args[0] if args else kwargs.get("device"))
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(RuyiControlEmbeddings, "to", spy)
    RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint)
    assert moves == []
    RuyiImageToVideoPipeline.from_pretrained(tiny_realfmt_checkpoint, device_map="cpu")
    assert moves[:1] == [torch.device("cpu")]


@pytest.mark.parametrize("key", ["use_tiling_encoder", "use_tiling_decoder"])
def test_original_vae_config_tiling_one_side_without_use_tiling_is_refused(tiny_checkpoint, key):
    # Kills the loop over ("use_tiling_encoder", "use_tiling_decoder") -> `[]` in convert_vae_config
    # (loaders/original_checkpoint.py): either side's flag without `use_tiling` is refused by name; with it, it loads.
    config = json.loads((tiny_checkpoint / "vae" / "config.json").read_text())
    config.update({"use_tiling": False, key: True})
    with pytest.raises(ValueError, match=f"has {key}=True without use_tiling"):
        convert_vae_config(config)
    config["use_tiling"] = True
    convert_vae_config(config)


def test_lora_state_dict_hands_the_hub_options_to_diffusers_fetch(monkeypatch):
    # Kills `kwargs.pop("force_download", False)` -> `True` in lora_state_dict (loaders/lora.py): by default a LoRA
    # from the hub is read from the cache, not downloaded again; options given are passed on as they are.
    from diffusers_ruyi.loaders import lora
    from diffusers_ruyi.pipelines.pipeline_ruyi_i2v import RuyiImageToVideoPipeline

    asked = []

    class Fetched(Exception):
        pass

    def fetch(**kwargs):
        asked.append(kwargs)
        raise Fetched

    monkeypatch.setattr(lora, "_fetch_state_dict", fetch)
    with pytest.raises(Fetched):
        RuyiImageToVideoPipeline.lora_state_dict("someone/ruyi-lora")
    assert asked[0]["force_download"] is False and asked[0]["local_files_only"] is None
    with pytest.raises(Fetched):
        RuyiImageToVideoPipeline.lora_state_dict(
            "someone/ruyi-lora", force_download=True, revision="v2", weight_name="w.safetensors", subfolder="sub"
        )
    assert {k: asked[1][k] for k in ("force_download", "revision", "weight_name", "subfolder")} == {
        "force_download": True,
        "revision": "v2",
        "weight_name": "w.safetensors",
        "subfolder": "sub",
    }


def test_original_format_reader_casts_in_chunks_per_file_dtype(tmp_path, monkeypatch):
    # Kills `numel - offset` -> `numel / offset` and `staging.dtype != file_dtype` -> `>` in read_safetensors
    # (loaders/original_checkpoint.py): a cast read goes through a staging buffer chunk by chunk, the last chunk
    # shorter (here 10 elements in chunks of 4), and the buffer is made again for each file dtype in turn (the published
    # checkpoint mixes float32 and bfloat16 tensors).
    from diffusers_ruyi.loaders import original_checkpoint

    monkeypatch.setattr(original_checkpoint, "_CAST_CHUNK_BYTES", 8)  # 4 16-bit elements per chunk
    values = {
        "a": torch.linspace(-2, 2, 10).to(torch.bfloat16),
        "b": torch.randn(7, dtype=torch.float16),
        "c": torch.randn(3, dtype=torch.bfloat16),
        "ids": torch.arange(3),
    }
    save_file(values, str(tmp_path / "m.safetensors"))
    read = read_safetensors(str(tmp_path / "m.safetensors"), dtype=torch.float32)
    # Integers are not cast.
    assert {k: v.dtype for k, v in read.items()} == {"a": torch.float32, "b": torch.float32, "c": torch.float32,
                                                     "ids": torch.int64}  # fmt: skip
    for name, tensor in values.items():
        assert torch.equal(read[name], tensor.float() if tensor.is_floating_point() else tensor), name


@pytest.mark.parametrize("scale", [0.4, 0.1, 1 / 64, 0.3, 1.0, 3.0, -0.4, 1e-6])
def test_original_lora_alpha_split_is_the_most_balanced_power_of_two(scale):
    # Kills `scale_down * 2 < scale_up` -> `* 3` in _lora_alpha_scales (loaders/original_checkpoint.py): the product
    # alone (which any split keeps) does not show it. As diffusers' kohya conversion: `up` is halved, and `down`
    # doubled, while `down` is below half of `up`; the sign stays on `down`.
    from diffusers_ruyi.loaders.original_checkpoint import _lora_alpha_scales

    down, up = _lora_alpha_scales(scale)
    assert down * up == scale  # powers of two: exact
    assert up <= 1 and math.log2(up).is_integer() and math.copysign(1, down) == math.copysign(1, scale)
    assert 2 * abs(down) >= up  # no further halving is due
    assert up == 1 or abs(down) < 2 * up  # and the last one was


def test_original_lora_with_zero_alpha_warns_by_name(caplog):
    # Kills `alpha_value == 0.0` -> `not ...` in convert_original_lora_state_dict (loaders/original_checkpoint.py):
    # only modules whose alpha is 0 (a LoRA that changes nothing, as in the original merge) are named in the warning.
    import logging

    from _helpers import tiny_transformer

    from diffusers_ruyi.loaders.original_checkpoint import convert_original_lora_state_dict

    transformer = tiny_transformer()
    lora = {}
    for name, path, alpha in (("proj_out", "proj_out", 0.0), ("blocks_0_attn1_to_q", "blocks.0.attn1.to_q", 2.0)):
        module = transformer.get_submodule(path)
        lora[f"lora_unet__{name}.lora_down.weight"] = torch.randn(2, module.in_features)
        lora[f"lora_unet__{name}.lora_up.weight"] = torch.randn(module.out_features, 2)
        lora[f"lora_unet__{name}.alpha"] = torch.tensor(alpha)
    logger = logging.getLogger("diffusers_ruyi.loaders.original_checkpoint")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            convert_original_lora_state_dict(lora, transformer)
    finally:
        logger.removeHandler(caplog.handler)
    assert "have alpha=0, so (as in the original merge) they change nothing: ['lora_unet__proj_out']" in caplog.text


def test_lora_file_that_cannot_be_read_is_named_with_its_subfolder(tmp_path):
    # Kills `if subfolder:` -> `if not subfolder:` in _describe (loaders/lora.py): the error says where it looked.
    from diffusers_ruyi import RuyiImageToVideoPipeline

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"LoRA weights \(.*, subfolder='sub'\) as a safetensors file"):
        RuyiImageToVideoPipeline.lora_state_dict(str(tmp_path), subfolder="sub")
    with pytest.raises(ValueError, match=r"LoRA weights \([^,]*pytorch_lora_weights.safetensors\) as a safetensors"):
        RuyiImageToVideoPipeline.lora_state_dict(str(tmp_path / "sub" / "pytorch_lora_weights.safetensors"))


def test_lora_load_into_transformer_defaults_as_diffusers_loaders():
    # Kills `low_cpu_mem_usage: bool = False` -> True in load_lora_into_transformer (loaders/lora.py): the same default
    # as diffusers' own video LoRA loaders.
    import inspect

    from diffusers.loaders.lora_pipeline import HunyuanVideoLoraLoaderMixin

    from diffusers_ruyi.loaders.lora import RuyiLoraLoaderMixin

    ours = inspect.signature(RuyiLoraLoaderMixin.load_lora_into_transformer).parameters
    theirs = inspect.signature(HunyuanVideoLoraLoaderMixin.load_lora_into_transformer).parameters
    for name in ("low_cpu_mem_usage", "hotswap", "adapter_name", "metadata"):
        assert ours[name].default == theirs[name].default, name


def test_original_lora_on_a_1x1_convolution_is_converted():
    # Kills `expected_up = (module.out_channels, rank, 1, 1)` -> `(..., 1, 2)` in convert_original_lora_state_dict
    # (loaders/original_checkpoint.py): with `patch_size=1` the patch embedding is a 1x1 Conv2d, whose LoRA (down
    # (rank, in, 1, 1), up (out, rank, 1, 1)) loads; another kernel shape of `up` is refused.
    from _helpers import tiny_transformer

    from diffusers_ruyi.loaders.original_checkpoint import convert_original_lora_state_dict

    transformer = tiny_transformer(patch_size=1)
    conv = transformer.pos_embed.proj
    assert tuple(conv.kernel_size) == (1, 1)
    down, up = torch.randn(2, conv.in_channels, 1, 1), torch.randn(conv.out_channels, 2, 1, 1)
    lora = {"lora_unet__pos_embed_proj.lora_down.weight": down, "lora_unet__pos_embed_proj.lora_up.weight": up}
    converted = convert_original_lora_state_dict(lora, transformer)
    assert torch.equal(converted["transformer.pos_embed.proj.lora_A.weight"], down)  # no alpha: factor 1
    assert torch.equal(converted["transformer.pos_embed.proj.lora_B.weight"], up)
    lora["lora_unet__pos_embed_proj.lora_up.weight"] = torch.randn(conv.out_channels, 2, 1, 2)
    with pytest.raises(ValueError, match=r"pos_embed.proj needs \(2, 48, 1, 1\) and \(32, 2, 1, 1\)"):
        convert_original_lora_state_dict(lora, transformer)


def test_lora_load_into_transformer_is_a_classmethod():
    # Kills the removed `@classmethod` on load_lora_into_transformer (loaders/lora.py): as in diffusers' loaders, it is
    # called on the pipeline class with any transformer (a training script's model), not only through an instance.
    from _helpers import FIXTURES

    from diffusers_ruyi import RuyiImageToVideoPipeline
    from diffusers_ruyi.tiny import build_tiny_random_pipeline

    transformer = build_tiny_random_pipeline().transformer
    state_dict = RuyiImageToVideoPipeline.lora_state_dict(FIXTURES / "lora" / "ruyi_lora_peft.safetensors")
    RuyiImageToVideoPipeline.load_lora_into_transformer(state_dict, transformer=transformer, adapter_name="a")
    assert list(transformer.peft_config) == ["a"]


def test_saving_mixed_prefix_lora_keys_names_the_first_unprefixed_key(tmp_path):
    # The refusal's example is the first key (sorted) without the prefix, and nothing is written.
    layers = {
        "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32),
        "blocks.1.attn1.to_q.lora_B.weight": torch.zeros(32, 4),
        "blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 4),
    }
    with pytest.raises(ValueError, match="mixes keys with and without the 'transformer.' prefix") as raised:
        RuyiImageToVideoPipeline.save_lora_weights(tmp_path / "mixed", transformer_lora_layers=layers)
    assert re.search(r"\(e\.g\. 'blocks\.0\.attn1\.to_q\.lora_B\.weight'\)", str(raised.value))
    assert "blocks.1." not in str(raised.value)
    assert not (tmp_path / "mixed").exists()
