"""Loader behaviours that survived mutation testing (scripts/mutation.py); each test names the mutant it kills."""

import json

import pytest
import torch
from safetensors.torch import save_file

from diffusers_ruyi.loaders.original_checkpoint import convert_vae_config, read_safetensors


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
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        read_safetensors(str(one))


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
