# Copyright 2025 The diffusers-ruyi authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Every pipeline component from a snapshot in the ORIGINAL Ruyi layout (what `predict_i2v.py` reads).

The two models load through their own `from_pretrained` (diffusers' loader, see `model_loading`), with the loading
options given to the pipeline; the CLIP tower, its processor, the scheduler and the control embeddings are read here.
"""

import os
import re
from typing import Any, Dict, Optional

import torch
from diffusers.utils import is_transformers_version
from tqdm.auto import tqdm

from .._validation import check_bool, check_device_available
from .original_checkpoint import (
    TRANSFORMER_SUBFOLDERS,
    check_model_folder,
    check_safetensors_file,
    clip_image_processor_class,
    find_original_subfolder,
    read_json,
    read_safetensors,
    resolve_dtype,
)


_PIPELINE_COMPONENTS = ("vae", "transformer", "scheduler", "image_encoder", "image_processor", "control_embeddings")
# Weights of a full `CLIPModel` that the vision tower does not use.
_CLIP_TEXT_TOWER_PREFIXES = ("text_model.", "text_projection.", "logit_scale")
# transformers renamed `torch_dtype` to `dtype` in 4.56 (and warns about the old name since).
_TRANSFORMERS_DTYPE_ARG = "dtype" if is_transformers_version(">=", "4.56.0") else "torch_dtype"
# `DiffusionPipeline.from_pretrained` options that apply to the models of an original snapshot, handed on as they are.
_MODEL_LOADING_KWARGS = ("low_cpu_mem_usage", "variant", "use_safetensors", "max_memory", "offload_folder")


def _component_dtype(dtype, name: str):
    if isinstance(dtype, dict):
        return dtype.get(name, dtype.get("default"))
    return dtype


def load_control_embeddings(path: str):
    """Reads the original ``embeddings.safetensors`` (bfloat16 in the published file) into a
    [`RuyiControlEmbeddings`] component (float32 buffers until cast; the pipeline casts them to the transformer's
    dtype where they are used)."""
    from ..pipelines.controls import RuyiControlEmbeddings

    return RuyiControlEmbeddings.from_flat_dict(read_safetensors(path))


def load_clip_image_processor(folder: str):
    """The CLIP preprocessing of ``image_encoder/``; the published old-style ``CLIPFeatureExtractor`` config (integer
    ``size`` / ``crop_size``) reads as a shortest-edge resize and a square centre crop, as in the original."""
    return clip_image_processor_class().from_pretrained(folder)


def load_clip_image_encoder(folder: str, dtype: Optional[torch.dtype] = None, **kwargs):
    """Loads the CLIP vision tower with its projection from ``image_encoder/``, as the original does.

    The published folder holds a FULL ``CLIPModel`` (text and vision towers) as ``pytorch_model.bin``: that official
    pickle file is the one exception to safetensors-only loading, and transformers reads it with
    ``torch.load(weights_only=True)``, which refuses anything but tensors. A ``model.safetensors`` is preferred when
    present (the converter writes one). Weights of the text tower are skipped; a missing vision weight is an error.
    ``kwargs`` (``device_map``, ``quantization_config``) go to transformers' ``from_pretrained``.
    """
    from transformers import CLIPVisionModelWithProjection
    from transformers.utils import logging as transformers_logging

    names = ("model.safetensors", "pytorch_model.bin")
    if not any(os.path.isfile(os.path.join(folder, n)) for n in names):
        raise FileNotFoundError(f"{folder!r} has no CLIP weights (expected one of {list(names)}).")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{folder!r} has no config.json for its CLIP weights.")
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report would list every (expected) text-tower key
    try:
        # `ignore_mismatched_sizes`: transformers then reports weights of the wrong shape (which the check below
        # refuses, naming them) instead of raising without them, its report being silenced here.
        encoder, info = CLIPVisionModelWithProjection.from_pretrained(
            folder,
            **{_TRANSFORMERS_DTYPE_ARG: dtype or torch.float32},
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **kwargs,
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys", []))
    mismatched = sorted(str(k[0]) if isinstance(k, (tuple, list)) else str(k) for k in info.get("mismatched_keys", []))
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if not k.startswith(_CLIP_TEXT_TOWER_PREFIXES))
    if missing or mismatched or unexpected:
        raise ValueError(
            f"The CLIP image encoder in {folder!r} does not match its config. Missing keys: {missing}; keys of the "
            f"wrong shape: {mismatched}; unexpected keys: {unexpected}."
        )
    return encoder.eval()


def check_clip_weight_keys(folder: str) -> None:
    """Raises a `ValueError` listing the weights of the CLIP vision tower that the ``*.safetensors`` files in
    ``folder`` (an ``image_encoder/`` of a diffusers-format pipeline) lack: transformers would initialise them at
    random and only log it. Reads the files' headers and builds the model on the meta device (no weights)."""
    from safetensors import safe_open
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    files = sorted(name for name in os.listdir(folder) if name.endswith(".safetensors"))
    if not files or not os.path.isfile(os.path.join(folder, "config.json")):
        return  # nothing to compare (another format): transformers reports it
    stored = set()
    for name in files:
        with safe_open(os.path.join(folder, name), framework="pt") as f:
            stored.update(f.keys())
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(folder))
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or []]
    missing = sorted(k for k in model.state_dict() if k not in stored and not any(p.search(k) for p in ignored))
    if missing:
        raise ValueError(f"The CLIP image encoder in {folder!r} lacks these weights: {missing}.")


def load_original_scheduler(folder: str):
    """`DDIMScheduler` from ``scheduler/scheduler_config.json``, whatever class the file names: the original always
    builds DDIM from it (the published file names HunyuanDiT's ``DDPMScheduler``). Every key is kept in the config, so
    ``EulerDiscreteScheduler.from_config(pipe.scheduler.config)`` and the other samplers swap in as in the original."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(read_json(os.path.join(folder, "scheduler_config.json")))


def _disk_size(path: str) -> str:
    """Size of a file or folder, for progress messages."""
    if os.path.isfile(path):
        total = os.path.getsize(path)
    else:
        total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    return f"{total / 2**20:.0f} MB" if total < 2**30 else f"{total / 2**30:.1f} GB"


def check_torch_archive(path: str) -> None:
    """A CLIP `pytorch_model.bin` in torch's zip format (the published one): its central directory, at the end, is
    read (not the data) so that a truncated download is named here, before anything loads, rather than by torch's
    "failed finding central directory" after the other models. A file in torch's legacy format is left to torch."""
    import zipfile

    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # not a zip: torch's legacy format, left to torch
            return
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(
            f"{path!r} is not a complete PyTorch checkpoint ({error}); the download may be incomplete: download it "
            "again."
        ) from None


def load_original_pipeline_components(folder: str, **kwargs) -> Dict[str, Any]:
    """Loads every pipeline component from a folder in the original Ruyi hub layout.

    Args:
        folder (`str`): The local snapshot (``transformer/`` or ``transformers/``, ``vae/``, ``image_encoder/``,
            ``scheduler/``, ``embeddings.safetensors``, and optionally the original ``model_index.json``).
        kwargs: ``dtype`` (a ``torch.dtype``, its name, or a dict per component with a ``"default"``) or its alias
            ``torch_dtype``; ``device_map`` (one device for every component); ``quantization_config`` (a
            `PipelineQuantizationConfig`); ``low_cpu_mem_usage``, ``variant``, ``use_safetensors``, ``max_memory``,
            ``offload_folder`` for the two models; already-built components to use instead of loading them
            (``vae=...``).

    Returns:
        `Dict[str, Any]`: the keyword arguments of ``RuyiImageToVideoPipeline(...)``.
    """
    from diffusers.utils import logging as diffusers_logging

    from ..models.autoencoder_kl_ruyi import AutoencoderKLRuyiCausal3D
    from ..models.transformer_ruyi import RuyiTransformer3DModel

    logger = diffusers_logging.get_logger(__name__)
    dtype = resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
    given = {name: kwargs.pop(name) for name in _PIPELINE_COMPONENTS if name in kwargs}
    device_map = _single_device(kwargs.pop("device_map", None))
    quantization = _pipeline_quantization(kwargs.pop("quantization_config", None))
    model_kwargs = {key: kwargs.pop(key) for key in _MODEL_LOADING_KWARGS if key in kwargs}
    if "low_cpu_mem_usage" in model_kwargs:
        check_bool("low_cpu_mem_usage", model_kwargs["low_cpu_mem_usage"])
    if kwargs:
        raise TypeError(
            f"Unsupported argument(s) for loading the original Ruyi layout: {sorted(kwargs)}. Supported: `dtype`, "
            f"`device_map`, `quantization_config`, {', '.join(f'`{k}`' for k in _MODEL_LOADING_KWARGS)}, the hub "
            f"arguments, and components to use as they are: {list(_PIPELINE_COMPONENTS)}."
        )

    # Where each component is read from; cheap ones first, so a broken small file fails before the big weights.
    sources = {
        "control_embeddings": "embeddings.safetensors",
        "scheduler": "scheduler",
        "image_processor": "image_encoder",
        "vae": "vae",
        "image_encoder": "image_encoder",
        "transformer": find_original_subfolder(folder, TRANSFORMER_SUBFOLDERS) or "transformer",
    }
    missing = sorted({s for n, s in sources.items() if n not in given and not os.path.exists(os.path.join(folder, s))})
    if missing:
        raise FileNotFoundError(
            f"{folder!r} is a Ruyi checkpoint in the original layout but lacks {missing}; it needs transformer/, vae/, "
            "image_encoder/, scheduler/ and embeddings.safetensors (download the whole IamCreateAI/Ruyi-Mini-7B "
            "snapshot)."
        )

    # The weight files' headers, before anything loads: a truncated transformer must not wait for the VAE and CLIP.
    for name in ("vae", "transformer"):
        if name not in given:
            check_model_folder(os.path.join(folder, sources[name]))
    if "image_encoder" not in given and os.path.isfile(os.path.join(folder, "image_encoder", "model.safetensors")):
        check_safetensors_file(os.path.join(folder, "image_encoder", "model.safetensors"))
    elif "image_encoder" not in given and os.path.isfile(os.path.join(folder, "image_encoder", "pytorch_model.bin")):
        check_torch_archive(os.path.join(folder, "image_encoder", "pytorch_model.bin"))

    def quantization_of(name: str, is_diffusers: bool) -> Dict[str, Any]:
        if quantization is None:
            return {}
        # diffusers' own per-component resolution (`DiffusionPipeline.from_pretrained` calls it the same way).
        config = quantization._resolve_quant_config(is_diffusers=is_diffusers, module_name=name)
        return {} if config is None else {"quantization_config": config}

    placement = {} if device_map is None else {"device_map": device_map}

    def load(name: str, source: str) -> Any:
        path = os.path.join(folder, source)
        if name == "control_embeddings":
            embeddings = load_control_embeddings(path)
            # As for a diffusers-format folder: the float buffers take the dtype asked for (the masks stay integers).
            embeddings_dtype = _component_dtype(dtype, name)
            if embeddings_dtype is not None:
                embeddings = embeddings.to(embeddings_dtype)
            return embeddings if device_map is None else embeddings.to(device_map)
        if name == "scheduler":
            return load_original_scheduler(path)
        if name == "image_processor":
            return load_clip_image_processor(path)
        if name == "image_encoder":
            options = {**placement, **quantization_of(name, is_diffusers=False)}
            return load_clip_image_encoder(path, _component_dtype(dtype, name), **options)
        model_cls = AutoencoderKLRuyiCausal3D if name == "vae" else RuyiTransformer3DModel
        options = {**model_kwargs, **placement, **quantization_of(name, is_diffusers=True)}
        return model_cls.from_pretrained(folder, subfolder=source, dtype=_component_dtype(dtype, name), **options)

    components = dict(given)
    todo = [name for name in sources if name not in components]
    bar = tqdm(todo, desc="Loading Ruyi (original layout)", disable=not diffusers_logging.is_progress_bar_enabled())
    for name in bar:
        size = _disk_size(os.path.join(folder, sources[name]))
        bar.set_postfix_str(f"{name} ({size})")
        logger.info(f"Loading {name} from {sources[name]} ({size})")
        components[name] = load(name, sources[name])
    return components


def _single_device(device_map: Any) -> Any:
    """The one device of a pipeline-level ``device_map`` (``"cuda"``, ``"cpu"``, ``torch.device``, an index), checked
    to exist before anything is read (torch would fail on the first weight moved there)."""
    if device_map is None:
        return None
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return device_map  # an index on whichever accelerator accelerate finds: not probed here
    device = None
    if isinstance(device_map, torch.device):
        device = device_map
    elif isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        try:
            device = torch.device(device_map)
        except RuntimeError:
            raise ValueError(f"`device_map={device_map!r}` is not a device; pass 'cuda', 'cuda:1' or 'cpu'.") from None
    if device is not None:
        check_device_available("device_map", device)
        return device
    raise ValueError(
        f"`device_map={device_map!r}`: the original Ruyi layout loads every component on one device; pass a device "
        "('cuda', 'cuda:1', 'cpu'), or use `enable_model_cpu_offload()` to spread the work."
    )


def _pipeline_quantization(config: Any) -> Any:
    if config is None:
        return None
    from diffusers.quantizers import PipelineQuantizationConfig

    if not isinstance(config, PipelineQuantizationConfig):
        raise TypeError(
            "`quantization_config` of a pipeline must be a `diffusers.PipelineQuantizationConfig` (e.g. "
            "`PipelineQuantizationConfig(quant_mapping={'transformer': TorchAoConfig('int8wo')})`), got "
            f"{type(config).__name__}; a model's own config goes to that model's `from_pretrained`."
        )
    return config
