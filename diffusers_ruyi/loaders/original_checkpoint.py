"""The one place that knows the ORIGINAL Ruyi hub layout (``IamCreateAI/Ruyi-Mini-7B``).

Every component that can be read from the original checkpoint converts its config and weights here: the
transformer, the VAE, the control embeddings and LoRA files. ``from_pretrained`` of each class, the pipeline and
``scripts/convert_ruyi_to_diffusers.py`` all call these functions, so the conversion rules exist exactly once.
"""

import json
import os
from typing import Any, Dict, Iterable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------


def read_json(path: str) -> Dict[str, Any]:
    """Reads a JSON file, raising a clear error that names the file when it is missing or malformed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Expected a JSON file at {path!r}, but it does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path!r} is not valid JSON: {e}") from e


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """Loads a safetensors file on CPU (never pickle), with a clear error for a missing or corrupted file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Expected a safetensors file at {path!r}, but it does not exist.")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"Could not read {path!r} as a safetensors file (truncated or corrupted?): {e}") from e


def check_state_dict_keys(expected: Iterable[str], state_dict: Dict[str, Any], what: str) -> None:
    """Raises a `ValueError` listing every missing and unexpected key; loading is all or nothing."""
    expected = set(expected)
    given = set(state_dict)
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        lines = [f"The {what} checkpoint does not match the model."]
        if missing:
            lines.append(f"Missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"Unexpected keys ({len(unexpected)}): {unexpected}")
        raise ValueError("\n".join(lines))


def load_converted_state_dict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], what: str) -> None:
    """Checks the keys and shapes of a converted state dict before copying it into ``model`` (never partially)."""
    own = model.state_dict()
    check_state_dict_keys(own.keys(), state_dict, what)
    bad_shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad_shapes:
        raise ValueError(f"The {what} checkpoint has tensors of the wrong shape: {bad_shapes}")
    model.load_state_dict(state_dict, strict=True)


def weights_file(folder: str, name: str = "diffusion_pytorch_model.safetensors") -> str:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(folder, name.replace(".safetensors", ".bin"))):
            raise ValueError(
                f"{folder!r} only has a pickle checkpoint (.bin); diffusers-ruyi loads safetensors only. "
                "Convert it with safetensors first."
            )
        raise FileNotFoundError(f"Expected the weights file {path!r}, but it does not exist.")
    return path


def find_original_subfolder(root: str, candidates: Iterable[str]) -> Optional[str]:
    """Returns the first existing sub-folder of ``root`` among ``candidates`` (the hub used both spellings)."""
    for name in candidates:
        if os.path.isdir(os.path.join(root, name)):
            return name
    return None


# ----------------------------------------------------------------------------------------------------------------
# Transformer (HunyuanTransformer3DModel -> RuyiTransformer3DModel)
# ----------------------------------------------------------------------------------------------------------------

# TRANSFORMER-SECTION

# ----------------------------------------------------------------------------------------------------------------
# VAE (AutoencoderKLMagvit -> AutoencoderKLRuyiCausal3D)
# ----------------------------------------------------------------------------------------------------------------

# VAE-SECTION

# ----------------------------------------------------------------------------------------------------------------
# Pipeline (embeddings.safetensors, folder layout)
# ----------------------------------------------------------------------------------------------------------------

# PIPELINE-SECTION
