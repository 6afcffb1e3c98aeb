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
It also gives both models `from_single_file` (one weights file and a config), which diffusers' `FromOriginalModelMixin`
only offers its built-in classes; it builds the model as `from_pretrained` does, with the same rules.
"""

import functools
import inspect
import json
import numbers
import os
import posixpath
import re
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import unquote, urlparse

import torch
from diffusers import ModelMixin

from .._logging import modeling_logs_dropped
from .._validation import check_bool, check_device_available, is_fp8_dtype
from .original_checkpoint import (
    ORIGINAL_KEY_RENAMES,
    ORIGINAL_LOADS_STRICTLY,
    TRANSFORMER_SUBFOLDERS,
    check_loaded_keys,
    check_local_source,
    check_model_folder,
    hf_download_command,
    hub_download_errors,
    local_folder,
    original_model_config,
    read_safetensors,
    read_safetensors_shapes,
    rename_original_keys,
    resolve_dtype,
    stored_temporal_table_dtype,
)


# `from_single_file` without `config`: the published checkpoint's config, and where each model's is in it (the
# published transformer folder has been spelled both ways).
PUBLISHED_REPO_ID = "IamCreateAI/Ruyi-Mini-7B"
_CONFIG_SUBFOLDERS = {"transformer": TRANSFORMER_SUBFOLDERS, "vae": ("vae",)}
_SINGLE_FILE_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
_HUB_HOSTS = ("huggingface.co", "hf.co")


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
        r"""[`~diffusers.ModelMixin.save_pretrained`], with its arguments checked before anything is written:
        `safe_serialization=False` (pickle weights, which `from_pretrained` refuses to read), a `save_directory` that
        is a file, a bad `variant` or `max_shard_size`, an unknown keyword argument and a model carrying LoRA layers
        are refused."""
        check_save_arguments(super().save_pretrained, save_directory, *args, **kwargs)
        check_no_lora_layers(self, type(self).__name__)
        check_no_fp8_storage(self, type(self).__name__)
        super().save_pretrained(save_directory, *args, **kwargs)
        remove_stale_shard_indexes(save_directory)

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
        check_model_loading_kwargs(cls, kwargs)
        strict = ORIGINAL_LOADS_STRICTLY[cls._original_model_type]
        load = functools.partial(super().from_pretrained, torch_dtype=dtype)
        model, info, output_loading_info = load_checked_model(
            load,
            cls.__name__,
            pretrained_model_name_or_path,
            kwargs,
            allow_unexpected=not strict,
            model_subfolders=_CONFIG_SUBFOLDERS[cls._original_model_type],
        )
        return (model, info) if output_loading_info else model

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path_or_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
        config: Union[str, os.PathLike, Mapping[str, Any], None] = None,
        subfolder: Optional[str] = None,
        dtype: Union[torch.dtype, str, None] = None,
        torch_dtype: Union[torch.dtype, str, None] = None,
        device: Union[str, torch.device, None] = None,
        **kwargs,
    ):
        r"""
        Loads the model from ONE weights file: the published `diffusion_pytorch_model.safetensors` of the original
        layout (or of a diffusers-format folder), a local path or a Hugging Face Hub file URL, or a state dict. This
        is diffusers' `from_single_file` for this package's models (diffusers' own only knows its built-in classes).

        Parameters:
            pretrained_model_link_or_path_or_dict (`str`, `os.PathLike` or `Mapping[str, torch.Tensor]`):
                A local `.safetensors` file, a Hub file URL
                (`https://huggingface.co/<repo_id>/blob/<revision>/<path>.safetensors`, or `resolve` for `blob`), or
                a state dict (copied: the model never shares its tensors). Keys may be the original's or this
                package's.
            config (`str`, `os.PathLike` or `Mapping`, *optional*):
                The model's config: a local folder or Hub repository id, either a model folder (its `config.json`)
                or a checkpoint root in the original or diffusers layout (its `transformer/` or `transformers/`,
                or `vae/`); a `config.json` file; or a config dict (`model.config`, or an original `config.json` as
                loaded). Defaults to the published checkpoint, `IamCreateAI/Ruyi-Mini-7B`, whose config fits its
                weights only.
            subfolder (`str`, *optional*):
                The sub-folder of a folder or repository `config` that holds the `config.json` (`""`: the folder
                itself); found as above when not given.
            dtype (`torch.dtype` or `str`, *optional*):
                float32, float16 or bfloat16 (or the name); torch's default dtype (float32) when not given, whatever
                the file stores, as `from_pretrained`. `torch_dtype` is an alias.
            device (`str` or `torch.device`, *optional*):
                The device the weights are put on (a file is read on the CPU first; a state dict is copied straight
                there); `"cpu"` when not given.
            kwargs:
                The Hub arguments `cache_dir`, `force_download`, `proxies` (which huggingface_hub 1.0 and later
                ignore, with a warning), `local_files_only`, `token` and `revision` (the config's revision; a URL
                names its file's). For `device_map`, `quantization_config`
                and diffusers' other loading options, load the folder with `from_pretrained`.

        The result equals `from_pretrained` of the same weights and config, and the same rules apply: safetensors
        only (a pickle `.bin`/`.ckpt` is refused); the arguments and the config are checked before anything is
        downloaded, and the file's header (its names, shapes and dtypes) before any weight is read (a Hub file is
        downloaded, or found in the cache, first); a weight of another shape or a non-floating one is a `ValueError`
        that counts them and names the first ten, a missing weight one that lists every one; tensors the model does
        not have are not read, and named in one warning (except the original's fixed temporal tables and the fused
        projections a model saved after `fuse_qkv_projections()` holds, skipped without a word as by
        `from_pretrained`).

        Examples:

        ```py
        >>> import torch
        >>> from diffusers_ruyi import RuyiTransformer3DModel

        >>> transformer = RuyiTransformer3DModel.from_single_file(
        ...     "https://huggingface.co/IamCreateAI/Ruyi-Mini-7B/blob/main/transformer/diffusion_pytorch_model.safetensors",
        ...     dtype=torch.bfloat16,
        ... )
        ```
        """
        name = cls.__name__
        model_type = cls._original_model_type
        unknown = sorted(set(kwargs) - set(_SINGLE_FILE_HUB_KWARGS))
        if unknown:
            raise TypeError(
                f"{name}.from_single_file() got unsupported argument(s) {unknown}. Supported: `config`, `subfolder`, "
                f"`dtype` (or `torch_dtype`), `device` and the Hub arguments {list(_SINGLE_FILE_HUB_KWARGS)}; for "
                "`device_map`, `quantization_config` and diffusers' other loading options, use `from_pretrained` on "
                "the folder."
            )
        torch_dtype = resolve_dtype(dtype, torch_dtype)
        if isinstance(torch_dtype, dict):
            raise ValueError(f"`dtype` of {name} is one dtype, not a dict per component, got {torch_dtype!r}.")
        _check_config_arguments(config, subfolder)
        device = _load_device(device)
        source = pretrained_model_link_or_path_or_dict
        if isinstance(source, Mapping):
            state_dict, where = _checked_state_dict(source), "the given state dict"
            local_path = hub_file = None
        elif isinstance(source, (str, os.PathLike)):
            state_dict, where = None, os.fspath(source)
            local_path, hub_file = _single_file_location(where)
        else:
            raise TypeError(
                "`pretrained_model_link_or_path_or_dict` must be a path, a Hub file URL or a state dict, got "
                f"{type(source).__name__}."
            )

        # The config and the model without weights first: a bad config is found before any download.
        model_config, config_source = cls._single_file_config(config, subfolder, kwargs)
        model = _empty_model(cls, model_config, torch_dtype)
        if hub_file is not None:
            from huggingface_hub import hf_hub_download

            repo_id, filename, revision = hub_file
            hub_kwargs = {key: kwargs[key] for key in _SINGLE_FILE_HUB_KWARGS if key in kwargs and key != "revision"}
            command = hf_download_command(repo_id, filename, {**hub_kwargs, "revision": revision})
            with hub_download_errors(where, kwargs, command, "a local file"):
                local_path = hf_hub_download(repo_id, filename, revision=revision, **hub_kwargs)
        if local_path is not None:
            header = read_safetensors_shapes(local_path)
        else:
            header = {key: (tuple(tensor.shape), tensor.dtype) for key, tensor in state_dict.items()}

        # Every check on the names, shapes and dtypes, before a weight is read.
        what = f"{name} ({where})"
        rename = ORIGINAL_KEY_RENAMES[model_type]
        # Model key -> key in the file. Where a file holds a key in both spellings, the original's wins, as in
        # `from_pretrained` (which renames it over the other).
        sources = {}
        for key in header:
            if key != rename(key) or key not in sources:
                sources[rename(key)] = key
        expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
        _check_single_file_tensors(what, config_source, header, sources, expected)
        ignored = [re.compile(pattern) for pattern in cls._keys_to_ignore_on_load_unexpected or []]
        check_loaded_keys(
            [key for key in expected if key not in sources],
            [key for key in sources if key not in expected and not any(p.search(key) for p in ignored)],
            what,
            allow_unexpected=not ORIGINAL_LOADS_STRICTLY[model_type],
        )

        # As `from_pretrained`: the model's dtype is `dtype`, else the default dtype it was built in.
        target = torch_dtype or torch.get_default_dtype()
        stored = stored_temporal_table_dtype({key: dtype for key, (_, dtype) in header.items()}, [], header)
        if local_path is not None:
            # Only the weights the model has, cast while read: the peak is the loaded weights, not them and the file.
            tensors = read_safetensors(local_path, dtype=target, keys=[sources[key] for key in expected])
            weights = {key: tensors.pop(sources[key]) for key in expected}
        else:
            # A copy (cast or not) made where the weights go: the model must not share the caller's tensors.
            weights = {key: state_dict[sources[key]].to(device, target, copy=True) for key in expected}
        if model_type == "transformer" and model.config.get("temporal_embedding_dtype") is None and stored:
            model.register_to_config(temporal_embedding_dtype=stored)
        from diffusers.models.model_loading_utils import load_model_dict_into_meta

        load_model_dict_into_meta(model, weights, dtype=torch_dtype, device_map={"": device}, keep_in_fp32_modules=[])
        del weights
        model.register_to_config(_name_or_path=where)
        return model.eval()

    @classmethod
    def _single_file_config(
        cls, config: Union[str, os.PathLike, Mapping[str, Any], None], subfolder: Optional[str], kwargs: Dict[str, Any]
    ) -> Tuple[Dict[str, Any], str]:
        """The config `from_single_file` builds the model from (converted when it is an original one), and where it
        was found, for messages."""
        if isinstance(config, Mapping):
            found = "the given config dict"
            # diffusers' note of the keys a saved file lacked: `from_config` would replace the values given here
            # for those keys (one set after loading, as `temporal_embedding_dtype`) by the defaults.
            loaded = {key: value for key, value in config.items() if key != "_use_default_values"}
            converted = original_model_config(cls._original_model_type, loaded)
            if converted is not None:
                loaded = {"_class_name": cls.__name__, **converted}
        elif config is not None and os.path.isfile(config):
            found = f"{os.fspath(config)!r}"
            loaded = cls.load_config(os.fspath(config))
        else:
            source = PUBLISHED_REPO_ID if config is None else os.fspath(config)
            if subfolder is not None:  # "transformer/", "./transformer": one spelling, as the Hub's file filter needs
                normalized = posixpath.normpath(subfolder.replace("\\", "/"))
                subfolder = "" if normalized == "." else normalized
            candidates = (subfolder,) if subfolder is not None else ("", *_CONFIG_SUBFOLDERS[cls._original_model_type])
            patterns = [f"{c}/config.json" if c else "config.json" for c in candidates]
            hub_kwargs = {key: kwargs[key] for key in _SINGLE_FILE_HUB_KWARGS if key in kwargs}
            root = local_folder(source, hub_kwargs, allow_patterns=patterns, local="`config=` a local folder")
            folder = next((c for c in candidates if os.path.isfile(os.path.join(root, c, "config.json"))), None)
            if folder is None:
                raise FileNotFoundError(
                    f"{source!r} has no config.json for the {cls.__name__} in {[c or '.' for c in candidates]}; pass "
                    "`config=` a model folder (or `subfolder=` where its config.json is)."
                )
            found = f"{source!r}" + (f", subfolder {folder!r}" if folder else "")
            loaded = cls.load_config(os.path.join(root, folder))
        if loaded.get("_class_name", cls.__name__) != cls.__name__:
            raise ValueError(
                f"The config from {found} is a {loaded['_class_name']!r} config, not a {cls.__name__} one; pass "
                f"`config=` (or `subfolder=`) for the {cls.__name__}."
            )
        return loaded, found


def _check_config_arguments(config: Any, subfolder: Any) -> None:
    if config is not None and not isinstance(config, (str, os.PathLike, Mapping)):
        raise TypeError(
            f"`config` must be a folder, a config.json file, a Hub repository id or a config dict, got "
            f"{type(config).__name__}."
        )
    if subfolder is None:
        return
    if not isinstance(subfolder, str):
        raise TypeError(f"`subfolder` must be a str, got {type(subfolder).__name__}.")
    if isinstance(config, Mapping):
        raise ValueError("`subfolder` is where a folder's config.json is; `config` is a dict here, so leave it out.")
    if os.path.isabs(subfolder) or ".." in subfolder.replace("\\", "/").split("/"):
        raise ValueError(f"`subfolder` must be a relative path inside `config`, got {subfolder!r}.")


def _load_device(device: Union[str, torch.device, None]) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"`device` must be a str or torch.device, got {type(device).__name__}.")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"`device` {device!r} is not a device: {e}") from None
    if device.type == "meta":
        raise ValueError("`device='meta'` keeps no weights; load on a real device (or build the model on meta).")
    check_device_available("device", device)
    return device


def _checked_state_dict(state_dict: Mapping[Any, Any]) -> Mapping[str, torch.Tensor]:
    bad = [key for key, value in state_dict.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        raise TypeError(f"A state dict maps str keys to tensors; these entries do not: {bad[:10]}.")
    meta = [key for key, value in state_dict.items() if value.is_meta]
    if meta:
        raise ValueError(f"The state dict holds meta tensors, which carry no weights: {meta[:10]}.")
    return state_dict


def _hub_url_hosts() -> Tuple[str, ...]:
    from huggingface_hub import constants

    return (*_HUB_HOSTS, (urlparse(constants.ENDPOINT).hostname or "").lower())


def _single_file_location(source: str) -> Tuple[Optional[str], Optional[Tuple[str, str, Optional[str]]]]:
    """(local path, None) for a local file, or (None, (repo id, file in it, revision)) for a Hub file URL
    (`https://huggingface.co/<owner>/<name>/blob/<revision>/<path>`, `resolve` for `blob`, or without both as
    diffusers accepts, for the main revision); checks that it names a safetensors file."""
    if os.path.isdir(source):
        raise ValueError(
            f"{source!r} is a folder; `from_single_file` reads one weights file. Load a folder with `from_pretrained`."
        )
    # A URL has a scheme, or starts with a Hub host (diffusers accepts "huggingface.co/..."); anything else is a path.
    hosts = _hub_url_hosts()
    parsed = urlparse(source if "://" in source else f"https://{source}")
    full_host = (parsed.hostname or "").lower()
    host = full_host.removeprefix("www.")
    is_url = not os.path.isfile(source) and (
        "://" in source or (host in hosts and source.lower().startswith(full_host))
    )
    path = parsed.path if is_url else source  # without a URL's query (`?download=true`) or fragment
    if path.endswith(".safetensors.index.json"):
        raise ValueError(f"{source!r} is the index of a sharded checkpoint; load its folder with `from_pretrained`.")
    if not path.endswith(".safetensors"):
        raise ValueError(
            f"{source!r} is not a .safetensors file; diffusers-ruyi loads model weights from safetensors only."
        )
    if not is_url:
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{source!r} is not an existing file (nor a Hugging Face Hub file URL).")
        return source, None
    if parsed.scheme not in ("http", "https") or host not in hosts:
        raise FileNotFoundError(f"{source!r} is not a Hugging Face Hub file URL (nor an existing file).")
    parts = [unquote(part) for part in parsed.path.split("/") if part]
    if parts[:1] in (["datasets"], ["spaces"]):
        raise ValueError(f"{source!r} is in a {parts[0][:-1]} repository; model weights are in model repositories.")
    revision, rest = None, parts[2:]
    if parts[2:3] in (["blob"], ["resolve"]):
        # A branch, tag or commit; `refs/pr/N` (and `refs/convert/...`) has its slashes unencoded in the Hub's links.
        length = 3 if parts[3:5] in (["refs", "pr"], ["refs", "convert"], ["refs", "heads"]) else 1
        revision, rest = "/".join(parts[3 : 3 + length]), parts[3 + length :]
    filename = "/".join(rest)
    if not rest or parts[2] in ("tree", "raw", "commit") or ".." in filename.split("/"):
        raise ValueError(
            f"{source!r} is not a Hub file URL: expected https://huggingface.co/<owner>/<name>/blob/<revision>/<path>."
        )
    return None, (f"{parts[0]}/{parts[1]}", filename, revision)


def _check_single_file_tensors(
    what: str,
    config_source: str,
    header: Dict[str, Tuple[Tuple[int, ...], Optional[torch.dtype]]],
    sources: Dict[str, str],
    expected: Dict[str, Tuple[int, ...]],
) -> None:
    """Raises a `ValueError` when the weights cannot be the model's: none of its names, another shape, or a dtype
    that is not floating (which loading would cast silently)."""
    if not any(key in sources for key in expected):
        raise ValueError(
            f"The {what} checkpoint holds none of the model's {len(expected)} weights (it has {len(header)} tensors, "
            f"e.g. {sorted(header)[:3]}): it is not this model's file (the other model's, or a LoRA?)."
        )
    problems = []
    for key, shape in expected.items():
        if key not in sources:
            continue
        stored_shape, stored_dtype = header[sources[key]]
        if stored_shape != shape:
            problems.append(f"{sources[key]}: {stored_shape} in the file, {shape} in the model")
        elif stored_dtype is None or not stored_dtype.is_floating_point:
            problems.append(f"{sources[key]}: not a floating-point tensor ({stored_dtype or 'unsupported dtype'})")
    if problems:
        raise ValueError(
            f"The {what} checkpoint does not fit the config ({config_source}): {len(problems)} weight(s) of another "
            f"shape or dtype, e.g. {problems[:10]}. Pass `config=` the folder, Hub repository or dict whose "
            "config.json this file was saved with."
        )


def _empty_model(cls, config: Dict[str, Any], dtype: Optional[torch.dtype]):
    """The model built from ``config`` without weights, as `from_pretrained` builds it (under ``dtype``)."""
    import accelerate
    from diffusers.models.modeling_utils import no_init_weights

    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with no_init_weights(), accelerate.init_empty_weights():
            return cls.from_config(config)
    finally:
        torch.set_default_dtype(previous)


# What diffusers' `ModelMixin.from_pretrained` (and the `load_config` it calls, and a pipeline loading a component)
# reads from its `**kwargs`; with the model's config keys (overrides), anything else would be ignored without a word.
MODEL_LOADING_KWARGS = (
    "cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder", "torch_dtype",
    "dtype", "device_map", "max_memory", "offload_folder", "offload_state_dict", "low_cpu_mem_usage", "variant",
    "use_safetensors", "quantization_config", "use_flashpack", "flashpack_kwargs", "disable_mmap",
    "ignore_mismatched_sizes", "output_loading_info", "dduf_entries", "user_agent", "mirror", "local_dir",
    "local_dir_use_symlinks", "provider", "provider_options", "sess_options", "return_unused_kwargs",
    "parallel_config",
)  # fmt: skip


@functools.lru_cache(maxsize=None)
def _installed_diffusers_loading_kwargs() -> frozenset:
    # What the installed diffusers' `ModelMixin.from_pretrained` pops: a newer release's options are not refused.
    from diffusers.models.modeling_utils import ModelMixin

    try:
        source = inspect.getsource(ModelMixin.from_pretrained)
    except (OSError, TypeError):  # no source shipped
        return frozenset()
    return frozenset(re.findall(r"kwargs\.pop\(\s*[\"'](\w+)[\"']", source))


def check_model_loading_kwargs(cls: type, kwargs: Dict[str, Any]) -> None:
    """Refuses `from_pretrained` keywords that are neither loading options nor config keys of ``cls``: diffusers
    would ignore them (a misspelt `dtpye=` loaded in float32)."""
    import difflib

    known = set(MODEL_LOADING_KWARGS) | _installed_diffusers_loading_kwargs()
    known |= set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(key for key in kwargs if key not in known and not key.startswith("_"))
    if unknown:
        hints = [
            f"{key!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(key, known, 1))
            else repr(key)
            for key in unknown
        ]
        raise TypeError(
            f"{cls.__name__}.from_pretrained() got unexpected keyword arguments: {', '.join(hints)}; it takes "
            "diffusers' loading options and the model's config keys (as overrides)."
        )


def remove_stale_shard_indexes(folder: Union[str, os.PathLike]) -> None:
    """Removes a shard index (`*.index.json`, `*.index.<variant>.json`) whose shards are gone: diffusers deletes the
    old shards when it saves a model unsharded into a folder that held a sharded save, but keeps their index, which
    loading then follows to files that do not exist."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if ".index" not in name or not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as f:
                shards = set(json.load(f).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            continue
        if shards and not all(os.path.isfile(os.path.join(folder, shard)) for shard in shards):
            os.remove(path)


def load_checked_model(
    load: Callable,
    name: str,
    pretrained_model_name_or_path: Union[str, os.PathLike],
    kwargs: Dict[str, Any],
    allow_unexpected: bool,
    model_subfolders: Sequence[str] = ("transformer", "transformers", "vae"),
) -> Tuple[Any, Dict[str, Any], bool]:
    """diffusers' ``load`` (a model class's `from_pretrained`) with this package's rules: safetensors only
    (`use_safetensors=False` refused), a local folder's files checked first, and every missing (and, unless
    ``allow_unexpected``, unexpected) key one `ValueError` instead of diffusers' warning. Returns the model, its
    loading info and whether the caller asked for that info (`output_loading_info`). ``model_subfolders``: where a
    pipeline folder keeps this model, named when such a folder is given instead of the model's."""
    if kwargs.get("use_safetensors") is False:
        raise ValueError("`use_safetensors=False`: diffusers-ruyi loads model weights from safetensors files only.")
    # (A DDUF archive is read by diffusers from its entries, not from a folder.)
    if not kwargs.get("dduf_entries") and check_local_source(pretrained_model_name_or_path):
        check_model_folder(
            os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or ""), model_subfolders
        )
    output_loading_info = kwargs.pop("output_loading_info", False)
    kwargs["use_safetensors"] = True
    with modeling_logs_dropped(_is_key_report):
        model, info = load(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
    what = f"{name} ({pretrained_model_name_or_path})"
    check_loaded_keys(info["missing_keys"], info["unexpected_keys"], what, allow_unexpected=allow_unexpected)
    return model, info, output_loading_info


# What diffusers' `save_pretrained` reads from its `**kwargs` (for `push_to_hub`); any other name would be ignored.
PUSH_TO_HUB_KWARGS = ("commit_message", "private", "create_pr", "token", "repo_id")


def check_save_arguments(
    save_pretrained: Callable, *args, folders: Optional[Tuple[str, ...]] = None, **kwargs
) -> None:
    """Checks a ``save_pretrained`` call before anything is written; diffusers would log some of these problems
    and go on, leaving a folder that does not load.

    Refused: pickle weights (``safe_serialization=False``, by keyword or position: diffusers-ruyi reads safetensors
    only), a ``save_directory`` or one of its ``folders`` (the pipeline's component folders) that is a file, a
    ``variant`` that is not a string, a ``max_shard_size`` that is not a positive size, a non-bool flag and an
    unknown keyword argument.
    """
    try:
        bound = inspect.signature(save_pretrained).bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"save_pretrained(): {error}.") from None
    arguments = bound.arguments
    if "safe_serialization" in arguments:  # "false" would be taken as True
        check_bool("safe_serialization", arguments["safe_serialization"])
    if not arguments.get("safe_serialization", True):
        raise ValueError(
            "`safe_serialization` must be True: diffusers-ruyi loads weights from safetensors files only, so pickle "
            "weights would not load back."
        )
    save_directory = arguments["save_directory"]
    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"`save_directory` must be a str or os.PathLike, got {type(save_directory).__name__}.")
    for path in (save_directory, *(os.path.join(save_directory, folder) for folder in folders or ())):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{os.fspath(path)!r} is a file; `save_pretrained` writes a folder there.")
    # The config file written last would fail after every weight was written.
    config = os.path.join(save_directory, "model_index.json" if folders is not None else "config.json")
    if os.path.isdir(config):
        raise ValueError(f"{os.fspath(config)!r} is a folder; `save_pretrained` writes a file there.")
    variant = arguments.get("variant")
    if variant is not None and not isinstance(variant, str):
        raise TypeError(f"`variant` must be a str such as 'fp16' or None, got {type(variant).__name__}.")
    for flag in ("is_main_process", "push_to_hub", "use_flashpack"):
        if flag in arguments:
            check_bool(flag, arguments[flag])
    # A pipeline (which names its component folders) hands `None` on as "each model's default"; a model cannot.
    if "max_shard_size" in arguments:
        check_max_shard_size(arguments["max_shard_size"], allow_none=folders is not None)
    unknown = sorted(set(arguments.get("kwargs", {})) - set(PUSH_TO_HUB_KWARGS))
    if unknown:
        raise TypeError(
            f"save_pretrained() got unexpected keyword arguments {unknown}; besides its named arguments it takes "
            f"{list(PUSH_TO_HUB_KWARGS)} (for `push_to_hub=True`)."
        )


def check_max_shard_size(value: Any, allow_none: bool = False) -> None:
    """``max_shard_size`` as ``save_pretrained`` takes it: a positive number of bytes, or a size string read by
    huggingface_hub's own parser (``"5GB"``, ``"500MB"``); ``None`` only where ``allow_none`` (the pipeline's default:
    each model's own)."""
    message = f"`max_shard_size` must be a positive int (bytes) or a size such as '5GB', got {value!r}."
    if value is None and allow_none:
        return
    if isinstance(value, str):
        from huggingface_hub.serialization._base import parse_size_to_int

        try:
            size = parse_size_to_int(value)
        except (ValueError, OverflowError):  # "abc", "nanMB", "infGB"
            raise ValueError(message) from None
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        size = int(value)
    else:
        raise TypeError(message)
    if size < 1:  # "0MB", "-1GB", "0.0001KB"
        raise ValueError(message)


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


def check_no_fp8_storage(model: Any, name: str) -> None:
    """Refuses saving a model whose weights are stored in fp8 (`apply_fp8_mode`): the folder would hold the
    fp8-rounded values, which load back as plain full-precision weights, the model's own precision lost for good."""
    if not hasattr(model, "named_parameters"):
        return
    stored = [param_name for param_name, param in model.named_parameters() if is_fp8_dtype(param.dtype)]
    if stored:
        raise ValueError(
            f"The {name} stores {len(stored)} weights in fp8 (`apply_fp8_mode` or `enable_layerwise_casting`, e.g. "
            f"{stored[0]!r}): saved, they would "
            "load back as full-precision weights rounded to fp8, with no fp8 mode. Save the model before applying "
            "the fp8 mode (and apply it again after loading)."
        )


def _is_key_report(message: str) -> bool:
    """diffusers' reports of missing and unused weights ("newly initialized ... TRAIN this model"): loading reports
    those itself, a missing one as an error. Its report of weights re-made for a shape mismatch stays: only
    `ignore_mismatched_sizes=True` gets that far, and it names the weights left random at the user's request."""
    return message.startswith("Some weights of") and "shapes did not match" not in message
