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
"""`from_pretrained` of both Ruyi models: diffusers' own loader, taught to read the original layout.

diffusers' `ModelMixin.from_pretrained` does the work for every layout, so every one of its options
(`device_map`, `quantization_config`, `variant`, `low_cpu_mem_usage`, `revision`, `cache_dir`, ...) works on the
published files as on a converted folder, with nothing converted on disk. Three hooks of diffusers' loader carry the
original layout (the rules themselves are in `diffusers_ruyi.loaders.original_checkpoint`):

* `load_config` converts an original ``config.json`` as it is read;
* `_keys_to_ignore_on_load_unexpected` names the original tensors the models do not have;
* `_fix_state_dict_keys_on_load` renames the VAE's attention keys (a single-file checkpoint, as published);
  `_load_pretrained_model` does the same for a sharded one, which diffusers leaves unrenamed.

What this mixin adds is the package's one argument policy: ``dtype``/``torch_dtype`` checked the same way everywhere,
safetensors only, a broken file or a mistyped path reported before anything loads, and a missing weight an error.
"""

import contextlib
import functools
import inspect
import logging
import os
import sys
from typing import Any, Callable, Dict, Iterator, Tuple, Union

from diffusers import ModelMixin

from .original_checkpoint import (
    ORIGINAL_KEY_RENAMES,
    ORIGINAL_LOADS_STRICTLY,
    check_loaded_keys,
    check_local_source,
    check_model_folder,
    original_model_config,
    rename_original_keys,
    resolve_dtype,
    stored_temporal_table_dtype,
)


class RuyiModelLoadingMixin:
    """Loading of a Ruyi model from a diffusers-format folder or the original layout; set `_original_model_type`."""

    # "transformer" or "vae": which original config and key rules apply. Each model also sets diffusers'
    # `_keys_to_ignore_on_load_unexpected = ORIGINAL_UNUSED_KEYS[<its type>]`.
    _original_model_type: str

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: Union[str, os.PathLike, Dict[str, Any]], *args, **kwargs):
        r"""[`~diffusers.ConfigMixin.load_config`], converting an original Ruyi ``config.json`` to this class's."""
        outputs = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        config = outputs[0] if isinstance(outputs, tuple) else outputs
        converted = original_model_config(cls._original_model_type, config)
        if converted is None:
            return outputs
        converted = {"_class_name": cls.__name__, **converted}
        return (converted, *outputs[1:]) if isinstance(outputs, tuple) else converted

    @classmethod
    def from_config(cls, config: Union[Dict[str, Any], None] = None, return_unused_kwargs: bool = False, **kwargs):
        r"""[`~diffusers.ConfigMixin.from_config`], completing a config saved by an earlier version of this package
        (`from_pretrained` builds the model through here too)."""
        if isinstance(config, dict):
            config = cls._complete_saved_config(config)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def _complete_saved_config(cls, config: Dict[str, Any]) -> Dict[str, Any]:
        """A diffusers-format config as saved by an earlier version of this package, with what it meant by the keys
        it lacks (where a default has changed since)."""
        return config

    def _fix_state_dict_keys_on_load(self, state_dict) -> None:
        # diffusers calls this on single-file checkpoints before matching keys: the original layout's renames.
        super()._fix_state_dict_keys_on_load(state_dict)
        rename_original_keys(self._original_model_type, state_dict)

    def save_pretrained(self, save_directory: Union[str, os.PathLike], *args, **kwargs) -> None:
        r"""[`~diffusers.ModelMixin.save_pretrained`]; `safe_serialization=False` (pickle weights, which
        `from_pretrained` refuses to read) and a model carrying LoRA layers are refused before anything is
        written."""
        check_safe_serialization(super().save_pretrained, save_directory, *args, **kwargs)
        check_no_lora_layers(self, type(self).__name__)
        super().save_pretrained(save_directory, *args, **kwargs)

    # diffusers reads the arguments a component's `save_pretrained` takes (`variant`, `max_shard_size`, ...) from
    # its signature when it saves a pipeline: they must show.
    save_pretrained.__signature__ = inspect.signature(ModelMixin.save_pretrained)

    @classmethod
    def _load_pretrained_model(
        cls, model, state_dict, resolved_model_file, pretrained_model_name_or_path, loaded_keys, *args, **kwargs
    ):
        # The dtype the checkpoint stores the original's temporal tables in (the model rounds its own through it).
        if cls._original_model_type == "transformer" and model.config.get("temporal_embedding_dtype") is None:
            stored = stored_temporal_table_dtype(state_dict, resolved_model_file, loaded_keys)
            if stored is not None:
                model.register_to_config(temporal_embedding_dtype=stored)
        # diffusers renames keys (`_fix_state_dict_keys_on_load`) of a single file only. An original checkpoint in
        # shards (one or more, with an index) is read whole here and renamed: only the VAE has renames, and it is
        # small (1 GB in float32).
        rename = ORIGINAL_KEY_RENAMES[cls._original_model_type]
        if state_dict is None and any(rename(key) != key for key in loaded_keys):
            from diffusers.models.model_loading_utils import load_state_dict

            state_dict = {}
            for shard_file in resolved_model_file:
                state_dict.update(load_state_dict(shard_file))
            model._fix_state_dict_keys_on_load(state_dict)
            loaded_keys = list(state_dict)
        return super()._load_pretrained_model(
            model, state_dict, resolved_model_file, pretrained_model_name_or_path, loaded_keys, *args, **kwargs
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        r"""
        Loads the model from a diffusers-format folder or hub repository, or from the ORIGINAL Ruyi layout (the
        published `IamCreateAI/Ruyi-Mini-7B`, `subfolder="transformer"` or `"vae"`), converted while it is read.

        This is [`~diffusers.ModelMixin.from_pretrained`] with all its arguments (`subfolder`, `device_map`,
        `quantization_config`, `variant`, `low_cpu_mem_usage`, `revision`, `cache_dir`, `output_loading_info`, ...),
        and:

        - `dtype` (or its alias `torch_dtype`) is a `torch.dtype` or its name, one of float32, float16, bfloat16;
          float32 when not given, whatever the file stores, as in diffusers;
        - weights are read from safetensors files only (`use_safetensors=False` is refused);
        - a mistyped local path, or a truncated or corrupt safetensors file in a local folder, is reported before
          anything is loaded;
        - a weight the checkpoint lacks is a `ValueError` that lists every missing key (diffusers would warn and leave
          it random); a tensor the model does not have is ignored, as the original loads both models with
          `strict=False`, with one warning that names them; the transformer's fixed `t_embed.pe` tables are skipped
          without a word;
        - a weight of another shape is diffusers' error, or with `ignore_mismatched_sizes=True` diffusers' warning that
          lists the weights left random.
        """
        dtype = resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
        if isinstance(dtype, dict):
            raise ValueError(f"`dtype` of {cls.__name__} is one dtype, not a dict per component, got {dtype!r}.")
        strict = ORIGINAL_LOADS_STRICTLY[cls._original_model_type]
        load = functools.partial(super().from_pretrained, torch_dtype=dtype)
        model, info, output_loading_info = load_checked_model(
            load, cls.__name__, pretrained_model_name_or_path, kwargs, allow_unexpected=not strict
        )
        return (model, info) if output_loading_info else model


def load_checked_model(
    load: Callable,
    name: str,
    pretrained_model_name_or_path: Union[str, os.PathLike],
    kwargs: Dict[str, Any],
    allow_unexpected: bool,
) -> Tuple[Any, Dict[str, Any], bool]:
    """diffusers' ``load`` (a model class's `from_pretrained`) with this package's rules: safetensors only
    (`use_safetensors=False` refused), a local folder's files checked first, and every missing (and, unless
    ``allow_unexpected``, unexpected) key one `ValueError` instead of diffusers' warning. Returns the model, its
    loading info and whether the caller asked for that info (`output_loading_info`)."""
    if kwargs.get("use_safetensors") is False:
        raise ValueError("`use_safetensors=False`: diffusers-ruyi loads model weights from safetensors files only.")
    # (A DDUF archive is read by diffusers from its entries, not from a folder.)
    if not kwargs.get("dduf_entries") and check_local_source(pretrained_model_name_or_path):
        check_model_folder(os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or ""))
    output_loading_info = kwargs.pop("output_loading_info", False)
    kwargs["use_safetensors"] = True
    with modeling_logs_dropped(_is_key_report):
        model, info = load(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
    what = f"{name} ({pretrained_model_name_or_path})"
    check_loaded_keys(info["missing_keys"], info["unexpected_keys"], what, allow_unexpected=allow_unexpected)
    return model, info, output_loading_info


def check_safe_serialization(save_pretrained: Callable, *args, **kwargs) -> None:
    """Refuses a ``save_pretrained`` call that would write pickle weights (``safe_serialization=False``, by keyword or
    position): diffusers-ruyi reads safetensors only, so the folder would not load back."""
    bound = inspect.signature(save_pretrained).bind_partial(*args, **kwargs)
    if not bound.arguments.get("safe_serialization", True):
        raise ValueError(
            "`safe_serialization` must be True: diffusers-ruyi loads weights from safetensors files only, so pickle "
            "weights would not load back."
        )


def check_no_lora_layers(model: Any, name: str) -> None:
    """Refuses saving a model that carries PEFT (LoRA) layers, fused or not: their ``base_layer`` / ``lora_A`` keys
    are not the model's, so the folder would not load back."""
    tuners = sys.modules.get("peft.tuners.tuners_utils")  # no PEFT layer can exist before peft is imported
    if tuners is None or not hasattr(model, "named_modules"):
        return
    wrapped = [
        module_name for module_name, module in model.named_modules() if isinstance(module, tuners.BaseTunerLayer)
    ]
    if wrapped:
        raise ValueError(
            f"The {name} carries LoRA layers ({len(wrapped)}, e.g. {wrapped[0]!r}), whose weights would be saved "
            "under keys the model does not have, so the folder would not load back. To save the merged weights call "
            "`fuse_lora()` then `unload_lora_weights()` first; to save without the LoRA, `unload_lora_weights()`; to "
            "save the LoRA itself, `save_lora_weights()`."
        )


class _DropRecords(logging.Filter):
    def __init__(self, drop: Callable[[str], bool]) -> None:
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record.getMessage())


@contextlib.contextmanager
def modeling_logs_dropped(drop: Callable[[str], bool]) -> Iterator[None]:
    """Drops, while the block runs, the records of diffusers' `modeling_utils` logger whose message ``drop`` accepts:
    reports that the package makes itself, or that are not the user's doing."""
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    record_filter = _DropRecords(drop)
    diffusers_logger.addFilter(record_filter)
    try:
        yield
    finally:
        diffusers_logger.removeFilter(record_filter)


def _is_key_report(message: str) -> bool:
    """diffusers' reports of missing and unused weights ("newly initialized ... TRAIN this model"): loading reports
    those itself, a missing one as an error. Its report of weights re-made for a shape mismatch stays: only
    `ignore_mismatched_sizes=True` gets that far, and it names the weights left random at the user's request."""
    return message.startswith("Some weights of") and "shapes did not match" not in message
