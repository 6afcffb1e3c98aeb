"""The one place that knows the ORIGINAL Ruyi hub layout (``IamCreateAI/Ruyi-Mini-7B``), like diffusers'
``single_file_utils.py`` and ``lora_conversion_utils.py`` together.

It recognises original configs, folders and LoRA files, and converts configs and state dicts (transformer, VAE,
LoRA); it imports no model of this package. `diffusers_ruyi.loaders.model_loading` plugs the config and key rules
into diffusers' own `ModelMixin.from_pretrained`, `diffusers_ruyi.loaders.original_pipeline` reads a whole original
snapshot, and ``scripts/convert_ruyi_to_diffusers.py`` writes a diffusers-format copy through them: the conversion
rules exist exactly once.
"""

import collections
import collections.abc
import contextlib
import dataclasses
import json
import math
import os
import re
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch


if TYPE_CHECKING:  # peft is imported where a LoRA is converted: it is slow to import
    from peft import LoraConfig


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


# safetensors dtype names (the file format's header) -> torch dtypes.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


_CAST_CHUNK_BYTES = 16 * 2**20


def _safetensors_size(path: str) -> int:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Expected a safetensors file at {path!r}, but it does not exist.")
    return os.path.getsize(path)


# Bytes per element of the safetensors dtypes (a dtype not listed here is not size-checked).
_SAFETENSORS_ITEM_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


def _check_safetensors_entries(entries) -> None:
    """The tensors of a header must tile the data without holes or overlaps, each as long as its shape and dtype say
    (a corrupt header otherwise passes the truncation check and fails only when the model loads, after the others)."""
    position = 0
    for name, info in entries:
        begin, stop = info["data_offsets"]
        shape = info["shape"]
        if not all(isinstance(n, int) and n >= 0 for n in [begin, stop, *shape]) or begin != position or stop < begin:
            raise ValueError(f"tensor {name!r} has data_offsets {[begin, stop]} after byte {position}")
        item = _SAFETENSORS_ITEM_BYTES.get(info["dtype"])
        if item is not None and stop - begin != math.prod(shape) * item:
            raise ValueError(
                f"tensor {name!r} of shape {shape} and dtype {info['dtype']} needs {math.prod(shape) * item} bytes, "
                f"but its data_offsets give {stop - begin}"
            )
        position = stop


def _read_safetensors_header(f, path: str, file_size: int):
    """Parses the header of an open safetensors file: (offset of the data, entries sorted by offset).

    Raises `ValueError` when the file is not a safetensors file or is shorter than its header says (truncated)."""
    try:
        header_size = int.from_bytes(f.read(8), "little")
        if not 0 < header_size <= file_size - 8:
            raise ValueError(f"its header claims {header_size} bytes")
        header = json.loads(f.read(header_size))
        header.pop("__metadata__", None)
        base = 8 + header_size
        # By (start, end), as safetensors orders them: a zero-size tensor may share its start with the next one.
        entries = sorted(header.items(), key=lambda item: tuple(item[1]["data_offsets"]))
        end = max((info["data_offsets"][1] for _, info in entries), default=0)
        _check_safetensors_entries(entries)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path!r} is not a valid safetensors file: {e}") from None
    if base + end > file_size:
        raise ValueError(
            f"{path!r} is truncated: its header describes {base + end} bytes but the file has {file_size}. "
            "Download it again."
        )
    return base, entries


def check_safetensors_file(path: str) -> None:
    """Reads only the header of a safetensors file and raises a `ValueError` that says "truncated" or "not a valid
    safetensors file" when the file is broken (diffusers' own loader reports either as a chain of generic errors).

    Raises:
        `FileNotFoundError`: no file at ``path``.
        `ValueError`: the file is truncated or not a safetensors file.
    """
    with open(path, "rb") as f:
        _read_safetensors_header(f, path, _safetensors_size(path))


def read_safetensors_shapes(path: str) -> Dict[str, Tuple[Tuple[int, ...], Optional[torch.dtype]]]:
    """Each tensor's shape and dtype (None for a dtype this package does not read), from the header of a safetensors
    file alone, checked as by `check_safetensors_file`."""
    with open(path, "rb") as f:
        _, entries = _read_safetensors_header(f, path, _safetensors_size(path))
    return {name: (tuple(info["shape"]), _SAFETENSORS_DTYPES.get(info["dtype"])) for name, info in entries}


def check_weight_files(folder: str) -> None:
    """Checks the header of every ``*.safetensors`` file in the component sub-folders of a diffusers-format pipeline
    folder, so that a truncated download is reported as such before anything is loaded (see
    `check_safetensors_file`)."""
    for name in sorted(os.listdir(folder)):
        component = os.path.join(folder, name)
        if os.path.isdir(component):
            _check_safetensors_files(component)


def _check_safetensors_files(folder: str) -> List[str]:
    names = sorted(name for name in os.listdir(folder) if name.endswith(".safetensors"))
    for name in names:
        check_safetensors_file(os.path.join(folder, name))
    return names


def check_model_folder(folder: str, model_subfolders: Sequence[str] = ("transformer", "transformers", "vae")) -> None:
    """Checks a local model folder before diffusers reads it: a ``config.json``, safetensors weights (not only a
    pickle ``.bin``), and intact safetensors headers. Where ``folder`` is a pipeline folder instead, the error names
    those of ``model_subfolders`` (the folders that can hold the model being loaded) it holds.

    Raises:
        `FileNotFoundError`: no folder, or no ``config.json`` or weights in it.
        `ValueError`: only pickle weights, or a truncated or corrupt safetensors file.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Expected a model folder at {folder!r}, but it does not exist; check `subfolder`.")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        # A pipeline folder given where a model's goes: say which `subfolder` holds one.
        models = sorted(name for name in model_subfolders if os.path.isfile(os.path.join(folder, name, "config.json")))
        hint = f" (it holds {', '.join(f'subfolder={m!r}' for m in models)})" if models else ""
        raise FileNotFoundError(f"{folder!r} has no config.json; it is not a model folder{hint}.")
    if _check_safetensors_files(folder):
        return
    if any(name.endswith((".bin", ".pt", ".pth", ".ckpt")) for name in os.listdir(folder)):
        raise ValueError(
            f"{folder!r} only has pickle weights (.bin); diffusers-ruyi loads safetensors only. Convert them with "
            "safetensors first."
        )
    raise FileNotFoundError(
        f"{folder!r} has no weights: expected diffusion_pytorch_model.safetensors (or its shards); the download may "
        "be incomplete."
    )


def read_safetensors(
    path: str, dtype: Optional[torch.dtype] = None, keys: Optional[Iterable[str]] = None
) -> Dict[str, torch.Tensor]:
    """Reads a safetensors file on CPU (never pickle), one tensor at a time, casting floating tensors to ``dtype``;
    with ``keys``, only those tensors (the others are neither read nor checked).

    Tensors are read with plain file reads into their own memory instead of through a memory map: a map keeps
    every page it touched resident until it is closed, so mapping the file and then copying or casting from it
    holds the file twice (1.5x the float32 size for a bfloat16 file loaded in float32). A cast goes through one
    reused 16 MB buffer, so the peak is the result plus 16 MB.

    Raises:
        `FileNotFoundError`: no file at ``path``.
        `ValueError`: the file is truncated or not a safetensors file (the message says which).
    """
    file_size = _safetensors_size(path)
    with open(path, "rb") as f:
        base, entries = _read_safetensors_header(f, path, file_size)
        if keys is not None:
            wanted = set(keys)
            entries = [(name, info) for name, info in entries if name in wanted]
        state_dict = {}
        staging = None  # reused buffer for casting: a cast then costs no second copy of any tensor
        for name, info in entries:
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise ValueError(f"{path!r}: tensor {name!r} has an unsupported dtype {info['dtype']!r}.")
            file_dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            start, stop = info["data_offsets"]
            numel = math.prod(info["shape"])
            item_size = torch.empty((), dtype=file_dtype).element_size()
            if stop - start != numel * item_size:
                raise ValueError(f"{path!r}: tensor {name!r} has {stop - start} bytes for shape {info['shape']}.")
            f.seek(base + start)
            cast = dtype is not None and file_dtype.is_floating_point and file_dtype != dtype
            tensor = torch.empty(info["shape"], dtype=dtype if cast else file_dtype)
            if not cast:
                if numel:
                    f.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy()))
            else:
                if staging is None or staging.dtype != file_dtype:
                    staging = torch.empty(_CAST_CHUNK_BYTES // item_size, dtype=file_dtype)
                flat = tensor.view(-1)
                for offset in range(0, numel, staging.numel()):
                    count = min(staging.numel(), numel - offset)
                    f.readinto(memoryview(staging[:count].view(torch.uint8).numpy()))
                    flat[offset : offset + count].copy_(staging[:count])
            state_dict[name] = tensor
    return state_dict


# Whether a tensor the model does not have is an error, per model: the original loads both with `strict=False`
# (`from_pretrained_2d` for the transformer; the published VAE file holds tensors the model never uses), so such
# tensors are ignored, with one warning naming them. A missing weight is always an error.
ORIGINAL_LOADS_STRICTLY = {"transformer": False, "vae": False}


def check_loaded_keys(missing: Iterable[str], unexpected: Iterable[str], what: str, allow_unexpected: bool) -> None:
    """Loading is all or nothing: raises a `ValueError` listing every missing (and, unless ``allow_unexpected``,
    unexpected) key; unexpected keys that are allowed are named in one warning."""
    missing, unexpected = sorted(missing), sorted(unexpected)
    if missing or (unexpected and not allow_unexpected):
        lines = [f"The {what} checkpoint does not match the model."]
        if missing:
            lines.append(f"Missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"Unexpected keys ({len(unexpected)}): {unexpected}")
        raise ValueError("\n".join(lines))
    if unexpected:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.get_logger(__name__).warning(
            f"The {what} checkpoint has {len(unexpected)} tensor(s) the model does not use; ignoring them, as the "
            f"original does: {unexpected}"
        )


# Floating dtypes the models run in; float8 is a storage format here (see `hooks.fp8`), not a load dtype.
SUPPORTED_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _one_dtype(value: Any, name: str) -> Optional[torch.dtype]:
    if value is None:
        return None
    if value == "auto":  # transformers' "the checkpoint's dtype"; diffusers falls back to float32 with a warning
        raise ValueError(
            f"`{name}='auto'` is not supported: the dtype is not guessed from the files. Pass torch.bfloat16 (the "
            "published checkpoint's and `predict_i2v.py`'s) or torch.float32 (the default)."
        )
    if isinstance(value, str):
        key = value[len("torch.") :] if value.startswith("torch.") else value
        key = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(key, key)
        if key in SUPPORTED_DTYPES:
            return SUPPORTED_DTYPES[key]
    elif value in SUPPORTED_DTYPES.values():
        return value
    raise ValueError(
        f"`{name}` must be one of {list(SUPPORTED_DTYPES)} (a torch.dtype or its name), got {value!r}. "
        "For float8 weight storage load in bfloat16, then call `diffusers_ruyi.hooks.apply_fp8_mode(model, mode)`."
    )


def resolve_dtype(dtype: Any = None, torch_dtype: Any = None) -> Union[None, torch.dtype, Dict[str, torch.dtype]]:
    """The one place that reconciles ``dtype`` with its alias ``torch_dtype`` and validates it.

    Accepts a ``torch.dtype``, its name (``"bfloat16"``, ``"torch.float16"``, ``"bf16"``...), or a dict of those per
    component with an optional ``"default"`` entry. Returns ``None`` when neither is given.

    Raises:
        `ValueError`: both arguments are given and differ, or a dtype is not float32 / float16 / bfloat16.
    """
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"Got both `dtype={dtype!r}` and `torch_dtype={torch_dtype!r}`; pass only `dtype`.")
    value = dtype if dtype is not None else torch_dtype
    name = "dtype" if dtype is not None else "torch_dtype"
    if isinstance(value, dict):
        return {key: _one_dtype(v, f"{name}[{key!r}]") for key, v in value.items()}
    return _one_dtype(value, name)


# `from_pretrained` arguments that say where files come from.
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")


def local_folder(
    path_or_repo_id: Union[str, os.PathLike],
    hub_kwargs: Dict[str, Any],
    allow_patterns: Optional[List[str]] = None,
    local: str = "a local folder",
    command_includes: Optional[List[str]] = None,
    ignore_patterns: Optional[List[str]] = None,
) -> str:
    """The local folder of ``path_or_repo_id`` (joined with ``hub_kwargs["subfolder"]``); a hub id is downloaded
    first with ``snapshot_download`` (only that subfolder, or only ``allow_patterns`` when given, honouring
    ``HF_HUB_OFFLINE``). ``local`` names the alternative to the download in its error messages, and
    ``command_includes`` the files of the `hf download` command they name (default: the config files when
    ``allow_patterns`` is given, else the whole repository; ``[]`` for the whole repository).

    Raises:
        `FileNotFoundError`: a local path that does not exist (a mistyped path is never sent to the hub), or a hub id
            that is not in the local cache while offline.
        `ConnectionError`: a hub id that is not cached while the Hub cannot be reached.
    """
    subfolder = hub_kwargs.get("subfolder") or ""
    is_local = check_local_source(path_or_repo_id)
    path = os.fspath(path_or_repo_id)
    if is_local:
        return os.path.join(path, subfolder)
    from huggingface_hub import snapshot_download

    download_kwargs = {k: v for k, v in hub_kwargs.items() if k != "subfolder"}
    if allow_patterns is not None:
        download_kwargs["allow_patterns"] = allow_patterns
    elif subfolder:
        download_kwargs["allow_patterns"] = [f"{subfolder}/*"]
    if ignore_patterns is not None:
        download_kwargs["ignore_patterns"] = ignore_patterns
    if command_includes is None:
        # With `allow_patterns` (config files), the command fetches every config, a few kB, rather than the weights.
        command_includes = ["*config.json"] if allow_patterns else []
    command = hf_download_command(path, " ".join(f"--include '{p}'" for p in command_includes), hub_kwargs)
    with hub_download_errors(path, hub_kwargs, command, local):
        return os.path.join(snapshot_download(path, **download_kwargs), subfolder)


def hf_download_command(repo_id: str, what: str, hub_kwargs: Dict[str, Any]) -> str:
    """The `hf download` command that fetches ``what`` (files or options) of ``repo_id`` where loading looks for it:
    the same revision and cache."""
    command = " ".join(filter(None, ["hf download", repo_id, what]))
    if hub_kwargs.get("revision"):
        command += f" --revision {hub_kwargs['revision']}"
    if hub_kwargs.get("cache_dir"):
        command += f" --cache-dir {hub_kwargs['cache_dir']}"
    return command


@contextlib.contextmanager
def hub_download_errors(what: str, hub_kwargs: Dict[str, Any], command: str, local: str) -> Iterator[None]:
    """Turns the hub client's "not in the cache" error for ``what`` (a repository or a file in one) into a
    `FileNotFoundError` (downloading is off) or a `ConnectionError` (the Hub could not be reached), in one line that
    names the ``command`` that downloads it and the ``local`` alternative."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        yield
    except LocalEntryNotFoundError as e:
        # `from None`: the hub client's own chain adds ~50 lines that say the same thing less clearly.
        if hub_kwargs.get("local_files_only") or _hub_offline():
            raise FileNotFoundError(
                f"{what!r} is not in the local Hugging Face cache and downloading is off (HF_HUB_OFFLINE=1 or "
                f"local_files_only): download it once online (`{command}`), or pass {local}."
            ) from None
        cause = e.__cause__ or e.__context__
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(e).splitlines()[0]
        raise ConnectionError(
            f"{what!r} could not be downloaded and is not in the local Hugging Face cache: the Hub could not be "
            f"reached ({reason}). Check the network connection, or pass {local}."
        ) from None


def check_local_source(path: Union[str, os.PathLike]) -> bool:
    """True for an existing local folder, False for a hub repository id (``owner/name``).

    Raises:
        `TypeError`: neither a `str` nor an `os.PathLike`.
        `FileNotFoundError`: anything else, a mistyped local path (never sent to the hub, whose validation error would
            not say "path").
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Expected a local folder or a hub id (str or os.PathLike), got {type(path).__name__}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        return True
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    # A hub id is exactly "owner/name"; anything else that is not a folder is a mistyped local path.
    looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1 or (os.sep != "/" and os.sep in path)
    try:
        validate_repo_id(path)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise FileNotFoundError(
            f"{path!r} is not an existing folder (nor a hub repository id like 'owner/name'); check the path."
        )
    return False


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def find_original_subfolder(root: str, candidates: Iterable[str]) -> Optional[str]:
    """Returns the first existing sub-folder of ``root`` among ``candidates`` (the hub used both spellings)."""
    for name in candidates:
        if os.path.isdir(os.path.join(root, name)):
            return name
    return None


# ----------------------------------------------------------------------------------------------------------------
# Transformer (HunyuanTransformer3DModel -> RuyiTransformer3DModel)
# ----------------------------------------------------------------------------------------------------------------

TRANSFORMER_ORIGINAL_CLASS_NAME = "HunyuanTransformer3DModel"

# Ruyi's `config/default.yaml` applies these on top of `config.json`; the port implements exactly these values.
TRANSFORMER_RUYI_EXTRAS = {"basic_block_type": "basic", "after_norm": False, "time_position_encoding": True}

# Original key (regex, full match) -> diffusers-ruyi key (`re.sub` template), or None when the key is dropped.
# Every other key keeps its original name, so original LoRA module paths (`lora_unet__blocks_0_attn1_to_q`) resolve
# unchanged. The only entry: the per-block temporal encoding `t_embed.pe` is a fixed sin/cos table (a buffer of
# shape (1, 512, dim)); RuyiTransformer3DModel computes it on the fly instead of storing 40 copies.
TRANSFORMER_KEY_RENAMES: Dict[str, Optional[str]] = {
    r"blocks\.(\d+)\.t_embed\.pe": None,
}

# Original config keys carried over as-is (same meaning in RuyiTransformer3DModel).
_TRANSFORMER_CONFIG_KEYS = (
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "patch_size",
    "n_query",
    "projection_dim",
    "activation_fn",
    "sample_size",
    "num_layers",
    "mlp_ratio",
    "cross_attention_dim",
    "cross_attention_dim_t5",
    "pooled_projection_dim",
    "text_len",
    "text_len_t5",
)
# Keys that only matter for block types or options Ruyi does not use, or that are checked and then dropped.
_TRANSFORMER_IGNORED_KEYS = (
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "hidden_size",
    "learn_sigma",
    "norm_type",
    "motion_module_type",
    "motion_module_kwargs",
    "motion_module_kwargs_odd",
    "motion_module_kwargs_even",
    *TRANSFORMER_RUYI_EXTRAS,
)


def is_original_transformer_config(config: Dict[str, Any]) -> bool:
    """Whether ``config`` is the original ``HunyuanTransformer3DModel`` config (the original hub layout)."""
    return config.get("_class_name") == TRANSFORMER_ORIGINAL_CLASS_NAME


def _check_config_types(
    config: Dict[str, Any],
    what: str,
    bools: Iterable[str],
    counts: Iterable[str],
    positive: Iterable[str],
    nullable: Iterable[str] = (),
) -> None:
    """Raises a `ValueError` naming the key when a value the file gives has the wrong type: a flag that is not
    true/false (a string "false" would read as true), a count that is not an integer >= 1 (or null, for the
    ``nullable`` counts), or a factor that is not a finite number > 0. Keys the file lacks take the defaults, which
    are right."""

    def is_count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    problems = []
    for key in bools:
        if key in config and not isinstance(config[key], bool):
            problems.append(f"{key}={config[key]!r} (expected true or false)")
    for key in counts:
        value = config.get(key)
        if value is None and key in nullable:
            continue
        ok = all(map(is_count, value)) and len(value) > 0 if isinstance(value, list) else is_count(value)
        if key in config and not ok:
            problems.append(
                f"{key}={value!r} (expected an integer >= 1{', or a list of them' if key == 'ch_mult' else ''})"
            )
    for key in positive:
        value = config.get(key)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in config and not (is_number and math.isfinite(value) and value > 0):
            problems.append(f"{key}={value!r} (expected a finite number > 0)")
    if problems:
        raise ValueError(f"The original {what} config has values of the wrong type: {'; '.join(problems)}.")


_TRANSFORMER_COUNT_KEYS = (
    "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "patch_size", "num_layers", "text_len",
    "text_len_t5", "n_query", "cross_attention_dim", "cross_attention_dim_t5", "projection_dim", "hidden_size",
    "pooled_projection_dim", "sample_size",
)  # fmt: skip
_VAE_BOOL_KEYS = (
    "cache_compression_vae", "slice_compression_vae", "use_tiling", "use_tiling_encoder", "use_tiling_decoder",
    "mid_block_use_attention", "upcast_vae", "force_upcast", "spatial_group_norm",
)  # fmt: skip
_VAE_COUNT_KEYS = (
    "ch", "ch_mult", "in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups",
    "mini_batch_encoder", "mini_batch_decoder", "mid_block_num_attention_heads", "tile_sample_min_size",
)  # fmt: skip


def convert_transformer_config(original_config: Dict[str, Any]) -> Dict[str, Any]:
    """Maps an original ``HunyuanTransformer3DModel`` config to ``RuyiTransformer3DModel`` init arguments.

    Ruyi's yaml extras are applied first (explicit values in the config win, as in the original loader) and must be
    the values Ruyi uses; ``hidden_size`` must equal ``num_attention_heads * attention_head_dim`` and
    ``out_channels`` is resolved from ``learn_sigma`` when missing, as the original does.
    """
    # `out_channels: null` means "from learn_sigma", as the original resolves it.
    _check_config_types(
        original_config, "transformer", ("learn_sigma",), _TRANSFORMER_COUNT_KEYS, ("mlp_ratio",), ("out_channels",)
    )
    config = {**TRANSFORMER_RUYI_EXTRAS, **original_config}
    for key, expected in TRANSFORMER_RUYI_EXTRAS.items():
        if config[key] != expected:
            raise ValueError(
                f"The original transformer config sets {key}={config[key]!r}; diffusers-ruyi only implements Ruyi's "
                f"{key}={expected!r}."
            )
    if config.get("norm_type", "layer_norm") != "layer_norm":
        raise ValueError(f"Unsupported norm_type={config['norm_type']!r}; Ruyi uses 'layer_norm'.")

    required = ("num_attention_heads", "attention_head_dim", "in_channels", "patch_size")
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"The original transformer config lacks required keys: {missing}.")
    inner_dim = config["num_attention_heads"] * config["attention_head_dim"]
    if config.get("hidden_size", inner_dim) != inner_dim:
        raise ValueError(
            f"hidden_size={config['hidden_size']} differs from num_attention_heads * attention_head_dim = {inner_dim}; "
            "the original model only works when they are equal."
        )
    sigma_channels = 2 if config.get("learn_sigma", True) else 1
    if config.get("out_channels") is None:
        # The original's default, `in_channels` (times 2 with learn_sigma), is the text-to-video layout: an
        # image-to-video model takes three latents in and predicts one (with its sigma).
        raise ValueError(
            f"The transformer config's `out_channels` is null: the original would make it in_channels * "
            f"{sigma_channels} = {config['in_channels'] * sigma_channels}, the text-to-video layout, which no Ruyi "
            "image-to-video checkpoint has (the published one: 32). Set it in config.json."
        )
    if config["in_channels"] * sigma_channels == config["out_channels"]:
        raise ValueError(
            "This is a non-inpainting (text-to-video) variant of the original transformer; diffusers-ruyi only "
            "implements the image-to-video (inpainting) model Ruyi uses."
        )

    unknown = sorted(set(config) - set(_TRANSFORMER_CONFIG_KEYS) - set(_TRANSFORMER_IGNORED_KEYS))
    if unknown:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.get_logger(__name__).warning(
            f"Ignoring unknown keys of the original transformer config: {unknown}"
        )
    return {key: config[key] for key in _TRANSFORMER_CONFIG_KEYS if key in config}


def convert_transformer_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Renames original transformer keys per ``TRANSFORMER_KEY_RENAMES`` (drops the fixed ``t_embed.pe`` tables)."""
    patterns = [(re.compile(pattern), target) for pattern, target in TRANSFORMER_KEY_RENAMES.items()]
    converted = {}
    for key, value in state_dict.items():
        for pattern, target in patterns:
            if pattern.fullmatch(key):
                key = None if target is None else pattern.sub(target, key)
                break
        if key is not None:
            converted[key] = value
    return converted


# ----------------------------------------------------------------------------------------------------------------
# VAE (AutoencoderKLMagvit -> AutoencoderKLRuyiCausal3D)
# ----------------------------------------------------------------------------------------------------------------

ORIGINAL_VAE_CLASS_NAME = "AutoencoderKLMagvit"
# The published `vae/config.json` names diffusers' stock `AutoencoderKL` (the original ignores `_class_name`); the
# original's variant switches tell it apart from a real 2D `AutoencoderKL` config.
_ORIGINAL_VAE_VARIANT_KEYS = ("slice_compression_vae", "cache_compression_vae", "slice_mag_vae")

# Defaults of the original `AutoencoderKLMagvit.__init__`: a key missing from an original config.json means this value.
_ORIGINAL_VAE_DEFAULTS: Dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "use_gc_blocks": None,
    "down_block_types": None,
    "up_block_types": None,
    "mid_block_type": "MidBlock3D",
    "mid_block_use_attention": True,
    "mid_block_attention_type": "3d",
    "mid_block_num_attention_heads": 1,
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.1825,
    "slice_mag_vae": True,
    "slice_compression_vae": False,
    "cache_compression_vae": False,
    "use_tiling": False,
    "use_tiling_encoder": False,
    "use_tiling_decoder": False,
    "mini_batch_encoder": 9,
    "mini_batch_decoder": 3,
    "upcast_vae": False,
    "spatial_group_norm": False,
    "tile_sample_min_size": 384,
    "tile_overlap_factor": 0.25,
}

_SUPPORTED_VAE_DOWN_BLOCKS = ("SpatialDownBlock3D", "SpatialTemporalDownBlock3D")
_SUPPORTED_VAE_UP_BLOCKS = ("SpatialUpBlock3D", "SpatialTemporalUpBlock3D")
_SUPPORTED_VAE_ATTENTION_TYPES = ("spatial", "3d")


def is_original_vae_config(config: Dict[str, Any]) -> bool:
    """Whether ``config`` (a loaded ``vae/config.json``) is the original Ruyi ``AutoencoderKLMagvit`` layout: its own
    class name, or ``AutoencoderKL`` (what the published file says) with the original's variant switches."""
    name = config.get("_class_name")
    if name == ORIGINAL_VAE_CLASS_NAME:
        return True
    return name == "AutoencoderKL" and any(key in config for key in _ORIGINAL_VAE_VARIANT_KEYS)


def _as_list(value: Any, key: str) -> Any:
    # The original evaluates string-valued block lists (e.g. "['SpatialDownBlock3D', ...]"); parse them safely.
    if isinstance(value, str):
        import ast

        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"Original VAE config key {key!r} is not a valid list: {value!r}") from e
    return list(value) if value is not None else None


def convert_vae_config(original_config: Dict[str, Any]) -> Dict[str, Any]:
    """Converts an original Ruyi ``AutoencoderKLMagvit`` config into `AutoencoderKLRuyiCausal3D` init arguments.

    Keys the file lacks take the original's defaults (so the published file, which has ``block_out_channels`` but no
    ``ch``/``ch_mult``, gets ``ch=128, ch_mult=[1, 2, 4, 4]``). Both variants Ruyi uses are supported:
    ``cache_compression_vae`` (checked first, as the original does) and ``slice_compression_vae``, with spatial or 3D
    mid-block attention, and the original's tiling (``use_tiling``, ``tile_sample_min_size``,
    ``tile_overlap_factor``). Anything else (``slice_mag_vae`` or whole-video mode, global-context blocks, per-frame
    group norm, other block or attention types, encoder- or decoder-only tiling) raises a `ValueError` naming the
    key. ``force_upcast`` is true when the file says ``force_upcast`` or ``upcast_vae``.
    """
    _check_config_types(original_config, "VAE", _VAE_BOOL_KEYS, _VAE_COUNT_KEYS, ("scaling_factor",))
    cfg = dict(_ORIGINAL_VAE_DEFAULTS)
    cfg.update({k: v for k, v in original_config.items() if not k.startswith("_")})

    if cfg["cache_compression_vae"]:
        compression_mode = "cache"
    elif cfg["slice_compression_vae"]:
        compression_mode = "slice"
    else:
        raise ValueError(
            "Original VAE config enables neither cache_compression_vae nor slice_compression_vae (it would run the "
            f"slice_mag_vae={cfg['slice_mag_vae']!r} or whole-video path); only those two variants are supported."
        )
    unsupported = {"spatial_group_norm": (False,), "mid_block_type": ("MidBlock3D",)}
    for key, allowed in unsupported.items():
        if cfg[key] not in allowed:
            raise ValueError(f"Original VAE config has {key}={cfg[key]!r}; only {allowed} is supported.")
    gc_blocks = cfg["use_gc_blocks"]
    if gc_blocks is not None and any(_as_list(gc_blocks, "use_gc_blocks")):
        raise ValueError(
            "Original VAE config enables global-context blocks (`use_gc_blocks`); they are not supported."
        )
    if cfg["mid_block_attention_type"] not in _SUPPORTED_VAE_ATTENTION_TYPES:
        raise ValueError(
            f"Original VAE config has mid_block_attention_type={cfg['mid_block_attention_type']!r}; supported: "
            f"{_SUPPORTED_VAE_ATTENTION_TYPES}."
        )
    for key in ("use_tiling_encoder", "use_tiling_decoder"):
        if cfg[key] and not cfg["use_tiling"]:
            raise ValueError(
                f"Original VAE config has {key}=True without use_tiling; tiling only one side is not supported."
            )

    down_block_types = _as_list(cfg["down_block_types"], "down_block_types")
    up_block_types = _as_list(cfg["up_block_types"], "up_block_types")
    if not down_block_types or not up_block_types:
        raise ValueError("Original VAE config must list `down_block_types` and `up_block_types`.")
    bad = [t for t in down_block_types if t not in _SUPPORTED_VAE_DOWN_BLOCKS]
    bad += [t for t in up_block_types if t not in _SUPPORTED_VAE_UP_BLOCKS]
    if bad:
        raise ValueError(
            f"Unsupported VAE block types {bad}; supported: {_SUPPORTED_VAE_DOWN_BLOCKS + _SUPPORTED_VAE_UP_BLOCKS}."
        )

    # The original builds its widths from `ch * ch_mult` and ignores any `block_out_channels` key.
    block_out_channels = [int(cfg["ch"]) * int(m) for m in _as_list(cfg["ch_mult"], "ch_mult")]
    listed = original_config.get("block_out_channels")
    if listed is not None and list(listed) != block_out_channels:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.get_logger(__name__).warning(
            f"The VAE config lists block_out_channels={list(listed)}, but the original builds the model from "
            f"ch * ch_mult = {block_out_channels}; using the latter, as the original does."
        )
    return {
        "in_channels": cfg["in_channels"],
        "out_channels": cfg["out_channels"],
        "latent_channels": cfg["latent_channels"],
        "block_out_channels": block_out_channels,
        "down_block_types": down_block_types,
        "up_block_types": up_block_types,
        "layers_per_block": cfg["layers_per_block"],
        "act_fn": cfg["act_fn"],
        "norm_num_groups": cfg["norm_num_groups"],
        "mid_block_add_attention": bool(cfg["mid_block_use_attention"]),
        "mid_block_num_attention_heads": cfg["mid_block_num_attention_heads"],
        "scaling_factor": cfg["scaling_factor"],
        "num_sample_frames_batch_size": cfg["mini_batch_encoder"],
        "num_latent_frames_batch_size": cfg["mini_batch_decoder"],
        "force_upcast": bool(cfg["upcast_vae"]) or bool(original_config.get("force_upcast", False)),
        "mid_block_attention_type": cfg["mid_block_attention_type"],
        "compression_mode": compression_mode,
        "use_tiling": bool(cfg["use_tiling"]),
        "tile_sample_min_size": cfg["tile_sample_min_size"],
        "tile_overlap_factor": cfg["tile_overlap_factor"],
    }


def convert_vae_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Renames original VAE keys to `AutoencoderKLRuyiCausal3D` keys.

    The module tree keeps the original names (``convs``, ``downsampler``, ``upsampler``, ``mid_block.attentions``),
    so the only difference is the attention output projection: a bare ``nn.Linear`` (``to_out``) in the original,
    ``to_out.0`` in diffusers' ``Attention``.
    """
    return {convert_vae_key(key): value for key, value in state_dict.items()}


def convert_vae_key(key: str) -> str:
    """One original VAE key as an `AutoencoderKLRuyiCausal3D` key (see `convert_vae_state_dict`)."""
    if ".attentions." in key and ".to_out." in key and ".to_out.0." not in key:
        return key.replace(".to_out.", ".to_out.0.")
    return key


# ----------------------------------------------------------------------------------------------------------------
# Either model: what `diffusers_ruyi.loaders.model_loading` hands to diffusers' loader
# ----------------------------------------------------------------------------------------------------------------

# Tensors of the original files that the models do not have: the transformer's 40 fixed `t_embed.pe` tables. (The
# published VAE file's extra tensors are not listed: diffusers' loader warns about them, naming each.)
ORIGINAL_UNUSED_KEYS = {
    "transformer": [f"^{pattern}$" for pattern, target in TRANSFORMER_KEY_RENAMES.items() if target is None],
    "vae": [],
}


# Per model, the name in the model of an original key (the transformer's keys are the original's).
ORIGINAL_KEY_RENAMES = {"transformer": lambda key: key, "vae": convert_vae_key}


_TEMPORAL_TABLE_KEY = re.compile(r"^blocks\.\d+\.t_embed\.pe$")
_STORED_TABLE_DTYPES = {"BF16": "bfloat16", "F16": "float16", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def stored_temporal_table_dtype(
    state_dict: Optional[Dict[str, Any]], files: Iterable[Any], keys: Iterable[str]
) -> Optional[str]:
    """The half-precision dtype (``"bfloat16"``, ``"float16"``) an original transformer checkpoint stores its fixed
    temporal tables (``blocks.N.t_embed.pe``) in, or None (none stored, or in float32). Read from ``state_dict`` (its
    tensors, or only their dtypes) when it is loaded, else from the safetensors headers of ``files`` (no tensor is
    read)."""
    key = next((k for k in keys if _TEMPORAL_TABLE_KEY.match(k)), None)
    if key is None:
        return None
    if state_dict is not None and key in state_dict:
        value = state_dict[key]
        return _STORED_TABLE_DTYPES.get(value.dtype if isinstance(value, torch.Tensor) else value)
    from safetensors import safe_open

    for path in files:
        if not isinstance(path, (str, os.PathLike)):
            continue
        with safe_open(path, framework="pt") as f:
            if key in f.keys():
                return _STORED_TABLE_DTYPES.get(f.get_slice(key).get_dtype())
    return None


def rename_original_keys(model_type: str, state_dict: Dict[str, Any]) -> None:
    """Renames, in place, the original keys of ``state_dict`` whose names differ in the ``model_type`` model."""
    rename = ORIGINAL_KEY_RENAMES[model_type]
    for key in [k for k in state_dict if rename(k) != k]:
        state_dict[rename(key)] = state_dict.pop(key)


def original_model_config(model_type: str, config: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The diffusers-ruyi config of an original-layout ``config.json``, or None when ``config`` is not one.

    Args:
        model_type (`str`): ``"transformer"`` or ``"vae"``.
        config (`Dict[str, Any]`): A loaded ``config.json``.

    Raises:
        `ValueError`: ``config`` is an original config of a variant diffusers-ruyi does not implement, or a 2D
            diffusers ``AutoencoderKL`` config read as the VAE.
    """
    if model_type == "transformer":
        return convert_transformer_config(config) if is_original_transformer_config(config) else None
    if model_type != "vae":
        raise ValueError(f"`model_type` must be 'transformer' or 'vae', got {model_type!r}.")
    if is_original_vae_config(config):
        return convert_vae_config(config)
    if config.get("_class_name") == "AutoencoderKL":
        raise ValueError(
            "This is a 2D diffusers `AutoencoderKL` config without the original Ruyi VAE keys "
            "(`slice_compression_vae` / `cache_compression_vae`); it is not a Ruyi VAE."
        )
    return None


# ----------------------------------------------------------------------------------------------------------------
# Pipeline (folder layout)
# ----------------------------------------------------------------------------------------------------------------

TRANSFORMER_SUBFOLDERS = ("transformer", "transformers")
# `model_index.json` of the published checkpoint names the original pipeline class; its component entries name
# stock diffusers classes (`HunyuanDiT2DModel`, `AutoencoderKL`) that cannot load these files.
ORIGINAL_PIPELINE_CLASS_NAME = "RuyiInpaintPipeline"


def original_layout_patterns(given: Iterable[str] = ()) -> List[str]:
    """The files of the original hub layout that loading reads, less the weights of the components in ``given``
    (passed in already built): a snapshot of a hub id fetches these and nothing else the repository holds. The small
    files that tell the layout apart (`model_index.json`, `embeddings.safetensors`, the models' configs) always."""
    given = set(given)
    patterns = ["model_index.json", "embeddings.safetensors"]
    for name, folders in (("transformer", TRANSFORMER_SUBFOLDERS), ("vae", ("vae",))):
        for folder in folders:
            patterns.append(f"{folder}/config.json")
            if name not in given:
                # (a variant's shard index is `...safetensors.index.fp16.json`)
                patterns += [f"{folder}/*.safetensors", f"{folder}/*.safetensors.index*.json"]
    if "scheduler" not in given:
        patterns.append("scheduler/*")
    if "image_encoder" not in given:
        patterns.append("image_encoder/*")
    elif "image_processor" not in given:
        patterns.append("image_encoder/preprocessor_config.json")
    return patterns


# The suffixes of weight files (of any format); anything else in a model's folder (configs, tokenizer files) is not.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".onnx_data", ".pb")


def check_cached_original_snapshot(
    root: str, repo_id: str, hub_kwargs: Dict[str, Any], given: Iterable[str] = ()
) -> None:
    """Offline, the cached snapshot of an original-layout repository may lack a model's weights: a load that was
    given the model (`vae=my_vae`) fetched only its config. Such a gap is named here, with the command that fills
    it, rather than as a model folder without weights.

    Raises:
        `FileNotFoundError`: downloading is off and a model not in ``given`` has no weight files in ``root``.
    """
    if not (hub_kwargs.get("local_files_only") or _hub_offline()):
        return
    given = set(given)
    missing = []
    for name, candidates in (
        ("transformer", TRANSFORMER_SUBFOLDERS),
        ("vae", ("vae",)),
        ("image_encoder", ("image_encoder",)),
    ):
        folder = find_original_subfolder(root, candidates)
        if name in given or folder is None:  # (no folder at all: the layout check says so)
            continue
        if not any(file.endswith(_WEIGHT_SUFFIXES) for file in os.listdir(os.path.join(root, folder))):
            missing.append(folder)
    if missing:
        command = hf_download_command(repo_id, " ".join(f"--include '{m}/*'" for m in missing), hub_kwargs)
        raise FileNotFoundError(
            f"{repo_id!r} is only partly in the local Hugging Face cache and downloading is off (HF_HUB_OFFLINE=1 or "
            f"local_files_only): it has no weights for {', '.join(missing)} (a load given "
            f"{' and '.join(f'`{m}=`' for m in missing)} fetches its config only). Download them once online "
            f"(`{command}`), or pass {' and '.join(f'`{m}=`' for m in missing)} again."
        )


# Weight formats diffusers-ruyi never reads (it loads safetensors), left out of a diffusers-format snapshot.
PICKLE_AND_OTHER_WEIGHT_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data"]


def diffusers_layout_patterns(index: Dict[str, Any], given: Iterable[str] = ()) -> List[str]:
    """The files of a diffusers-format pipeline repository that loading reads: `model_index.json` and the folders of
    the components it lists, less those in ``given`` (passed in already built). Every variant's files come along
    (`diffusers_layout_files` picks them where the Hub can list the repository); pair with
    `PICKLE_AND_OTHER_WEIGHT_PATTERNS` as ignore patterns."""
    given = set(given)
    folders = [
        name
        for name, entry in index.items()
        if not name.startswith("_") and isinstance(entry, (list, tuple)) and entry[:1] != [None] and name not in given
    ]
    return ["model_index.json", *(f"{name}/*" for name in folders)]


def diffusers_layout_files(
    repo_id: str,
    hub_kwargs: Dict[str, Any],
    index: Dict[str, Any],
    given: Iterable[str] = (),
    variant: Optional[str] = None,
) -> Optional[List[str]]:
    """The files of a diffusers-format pipeline repository on the Hub that loading reads, picked as diffusers'
    `DiffusionPipeline.download` picks them: `model_index.json`, the files of the components' folders (less those
    in ``given``) that are not weights, and of the weights the safetensors of ``variant`` (a component without
    them: its plain ones) or, without ``variant``, the plain ones only. `None` where the Hub is not asked (offline or
    ``local_files_only``): the cached snapshot is then read as it is.

    Raises:
        `ValueError`: ``variant`` given and no component has weight files of it (diffusers' own check), before any
            weights are downloaded.
    """
    if hub_kwargs.get("local_files_only") or _hub_offline():
        return None
    import huggingface_hub
    from diffusers.pipelines.pipeline_loading_utils import variant_compatible_siblings

    folders = {pattern.split("/")[0] for pattern in diffusers_layout_patterns(index, given)[1:]}
    try:
        info = huggingface_hub.model_info(repo_id, revision=hub_kwargs.get("revision"), token=hub_kwargs.get("token"))
    except Exception as error:  # e.g. the Hub went unreachable after `model_index.json` came from the cache
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.get_logger(__name__).warning(
            f"Could not list the files of {repo_id!r} ({type(error).__name__}: "
            f"{(str(error).splitlines() or [''])[0][:200]}); fetching its components' folders whole (every variant's "
            "weights), or reading them from the cache."
        )
        return None
    if info.siblings is None:  # no file list came back: as offline
        return None
    names = [s.rfilename for s in info.siblings if len(s.rfilename.split("/")) == 2]
    names = [name for name in names if name.split("/")[0] in folders]
    weights, _ = variant_compatible_siblings(names, variant=variant, ignore_patterns=PICKLE_AND_OTHER_WEIGHT_PATTERNS)
    kept = [name for name in names if name in weights or not name.endswith(_WEIGHT_SUFFIXES)]
    return ["model_index.json", *sorted(kept)]


def is_original_pipeline_folder(folder: str) -> bool:
    """Whether ``folder`` is a Ruyi checkpoint in the ORIGINAL layout (and not a diffusers pipeline folder).

    That is a folder whose ``model_index.json`` names ``RuyiInpaintPipeline`` (whatever its component entries say),
    or one without ``model_index.json`` that has a ``transformer/`` (or ``transformers/``) and a ``vae/`` folder and
    ``embeddings.safetensors``.
    """
    index = os.path.join(folder, "model_index.json")
    if os.path.isfile(index):
        return read_json(index).get("_class_name") == ORIGINAL_PIPELINE_CLASS_NAME
    has_transformer = find_original_subfolder(folder, TRANSFORMER_SUBFOLDERS) is not None
    return (
        has_transformer
        and os.path.isdir(os.path.join(folder, "vae"))
        and os.path.isfile(os.path.join(folder, "embeddings.safetensors"))
    )


def clip_image_processor_class():
    """The PIL-based CLIP processor: the one the original ran with (transformers >= 5 defaults to torchvision)."""
    try:
        from transformers import CLIPImageProcessorPil as processor_cls
    except ImportError:  # transformers < 5: CLIPImageProcessor is the PIL implementation
        from transformers import CLIPImageProcessor as processor_cls
    return processor_cls


# ----------------------------------------------------------------------------------------------------------------
# LoRA (original kohya-style files -> PEFT)
# ----------------------------------------------------------------------------------------------------------------

# Original Ruyi/EasyAnimate LoRA files name each adapted module `lora_unet_` + "_" + its dotted path with every "."
# turned into "_" (`lora_unet__blocks_0_attn1_to_q`) and store `<name>.lora_down.weight` (rank, in),
# `<name>.lora_up.weight` (out, rank) and optionally `<name>.alpha`. Inference merges them as
# `W += multiplier * alpha / rank * up @ down` (a missing alpha means a factor of 1).
ORIGINAL_LORA_PREFIX = "lora_unet"
ORIGINAL_LORA_TEXT_ENCODER_PREFIX = "lora_te"
_ORIGINAL_LORA_ELEMENTS = ("lora_down.weight", "lora_up.weight", "alpha")

# diffusers-ruyi module path (regex, full match) -> original module path (`re.sub` template): the inverse of the
# module renames in `TRANSFORMER_KEY_RENAMES`. Empty while the transformer keeps every original module name; a rename
# of a module that holds a Linear/Conv2d/Embedding weight needs its inverse here (`original_lora_module_map` checks
# this).
LORA_MODULE_PATHS_TO_ORIGINAL: Dict[str, str] = {}


def is_original_lora_state_dict(state_dict: Dict[str, Any]) -> bool:
    """Whether ``state_dict`` holds original (kohya-style) Ruyi LoRA keys: ``lora_unet_*``/``lora_te*`` names, or
    ``<name>.lora_down.weight`` / ``.lora_up.weight`` elements under any name (the original's merge reads those)."""
    return any(
        key.startswith(ORIGINAL_LORA_PREFIX + "_")
        or key.startswith(ORIGINAL_LORA_TEXT_ENCODER_PREFIX)
        or key.partition(".")[2] in ("lora_down.weight", "lora_up.weight")
        for key in state_dict
        if isinstance(key, str)
    )


def _flat_original_name(name: str) -> str:
    """A module name as the original's `merge_lora` resolves it: what follows the last ``lora_unet_`` (the whole name
    without one), split at ``_`` with empty parts skipped, as its name walk skips them. ``lora_unet__blocks_0_attn1_to_q``
    (how `LoRANetwork` names it), ``lora_unet_blocks_0_attn1_to_q``, ``blocks_0__attn1_to_q`` and
    ``blocks_0_attn1_to_q`` are one module."""
    return "_".join(part for part in name.split(ORIGINAL_LORA_PREFIX + "_")[-1].split("_") if part)


def _original_module_path(path: str) -> str:
    for pattern, template in LORA_MODULE_PATHS_TO_ORIGINAL.items():
        if re.fullmatch(pattern, path):
            return re.sub(pattern, template, path)
    return path


def _lora_target_modules(
    model: torch.nn.Module, types: tuple = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)
) -> Dict[str, Any]:
    """Every module of ``types`` in ``model`` by path; a module already wrapped by PEFT counts as its base layer."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is required for LoRA anyway
        BaseTunerLayer = ()

    targets: Dict[str, torch.nn.Module] = {}
    wrapped: list = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in wrapped):
            continue  # the base layer and the adapters inside a PEFT layer
        if BaseTunerLayer and isinstance(module, BaseTunerLayer):
            wrapped.append(name)
            module = module.get_base_layer()
        if isinstance(module, types):
            targets[name] = module
    return targets


def original_lora_module_map(model: torch.nn.Module) -> Dict[str, str]:
    """Maps each flattened original LoRA module name to the path of the module in ``model``.

    For every ``nn.Linear``/``nn.Conv2d``/``nn.Embedding`` of ``model`` (``RuyiTransformer3DModel``) the original
    dotted path is recovered (``LORA_MODULE_PATHS_TO_ORIGINAL``; identity while no module was renamed) and flattened
    the way the original ``LoRANetwork`` names it: ``lora_unet__blocks_0_attn1_to_q`` -> ``blocks.0.attn1.to_q``.

    Raises:
        `ValueError`: when two modules flatten to the same name (the "_" joining would be ambiguous), or when a module
            was renamed in `TRANSFORMER_KEY_RENAMES` without an inverse in `LORA_MODULE_PATHS_TO_ORIGINAL`.
    """
    mapping: Dict[str, str] = {}
    inconsistent = []
    for path in _lora_target_modules(model):
        original = _original_module_path(path)
        # The checkpoint converter must turn the original weight key into this module's weight key.
        if list(convert_transformer_state_dict({original + ".weight": None})) != [path + ".weight"]:
            inconsistent.append(f"{original} -> {path}")
        flat = f"{ORIGINAL_LORA_PREFIX}__{original.replace('.', '_')}"
        if flat in mapping:
            raise ValueError(f"Modules {mapping[flat]!r} and {path!r} both flatten to the LoRA name {flat!r}.")
        mapping[flat] = path
    if inconsistent:
        raise ValueError(
            "These module paths do not round-trip through TRANSFORMER_KEY_RENAMES; add their inverse to "
            f"LORA_MODULE_PATHS_TO_ORIGINAL: {inconsistent}"
        )
    return mapping


def _lora_alpha_scales(scale: float):
    # Splits `scale` between down (A) and up (B) so neither factor gets tiny, as diffusers does for kohya files. The
    # split works on the magnitude and the sign stays on down: a negative or zero scale would never end the loop.
    scale_down, scale_up = abs(scale), 1.0
    while 0 < scale_down and scale_down * 2 < scale_up:
        scale_down *= 2
        scale_up /= 2
    return math.copysign(scale_down, scale), scale_up


def _lora_tensor_problem(tensors: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a LoRA's tensors (named), or None: not a floating-point tensor, or NaN/infinite values,
    which a merge would write into every weight they touch."""
    for label, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            return f"{label} is {getattr(tensor, 'dtype', type(tensor).__name__)}, not floating point"
        if tensor.device.type == "meta":
            return f"{label} is on the meta device (it holds no values)"
        # One-byte (float8) tensors have no `isfinite`; the original merges such files, cast to float32 first.
        if not bool(torch.isfinite(tensor.float() if tensor.element_size() == 1 else tensor).all()):
            return f"{label} holds NaN or infinite values"
    return None


def raise_lora_problems(heading: str, sections: Iterable[Tuple[str, Any]]) -> None:
    """One `ValueError` for every problem found in a LoRA's keys, all or nothing: ``heading`` and a bullet
    ``label: items`` for each section whose items are not empty; nothing when all are."""
    problems = [f"{label}: {items}" for label, items in sections if items]
    if problems:
        raise ValueError(f"{heading}:\n- " + "\n- ".join(problems))


def convert_original_lora_state_dict(
    state_dict: Dict[str, torch.Tensor],
    model: torch.nn.Module,
    prefix: Optional[str] = "transformer",
    return_metadata: bool = False,
) -> Union[Dict[str, torch.Tensor], Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]:
    """Converts an original Ruyi LoRA (``lora_unet_*`` keys) into PEFT keys for ``model``, all or nothing.

    Each ``<name>.lora_down.weight`` / ``<name>.lora_up.weight`` pair becomes ``<prefix>.<module path>.lora_A.weight``
    / ``.lora_B.weight``, so that ``scaling * lora_B @ lora_A`` is the original merge delta ``alpha / rank * up @ down``
    (a factor of 1 without ``alpha``; an ``nn.Embedding``'s pair becomes ``lora_embedding_A = up.T`` and
    ``lora_embedding_B = down.T``, PEFT's transposed layout; a convolution's ``lora_A`` has ``lora_down`` at each kernel
    position); an adapter weight (``set_adapters(name, w)``) or ``fuse_lora(lora_scale=w)``
    then plays the role of the original ``multiplier``. Where that factor lives depends on ``return_metadata``:

    - ``False``: folded into the two matrices, so the tensors stand alone (PEFT's default ``lora_alpha = rank``,
      scaling 1), e.g. to save the LoRA in the diffusers format without adapter metadata;
    - ``True``: the matrices keep the file's exact values and the factor goes into the returned `LoraConfig` values
      (``lora_alpha``/``alpha_pattern`` and ``r``/``rank_pattern``, patterns anchored to whole module paths). This is
      what loading does: fused in float32, the delta is then computed from the same numbers as the original's.

    Args:
        state_dict (`Dict[str, torch.Tensor]`): The original LoRA tensors.
        model (`torch.nn.Module`): The `RuyiTransformer3DModel` the LoRA is for (module names are resolved on it).
        prefix (`str`, *optional*, defaults to `"transformer"`): Prefix of the returned keys (`None` for none).
        return_metadata (`bool`, defaults to `False`): Keep alpha apart and also return the `LoraConfig` values.

    Returns:
        `Dict[str, torch.Tensor]` (PEFT/diffusers LoRA tensors, in the dtype of the file), or `(state_dict,
        lora_config_kwargs)` with ``return_metadata=True``.

    Raises:
        `ValueError`: listing every key that cannot be used: text-encoder entries (Ruyi has no text encoder), names
            that match no Linear/Conv2d/Embedding module, malformed keys, modules without both `lora_down` and
            `lora_up`, shapes that do not fit the module (a convolution's LoRA is 1x1 whatever its kernel: the
            original's merge adds the 1x1 delta to every kernel position, which `lora_A` does with `lora_down` at every
            position; it fails on larger LoRA kernels).
    """
    module_map = {_flat_original_name(name): path for name, path in original_lora_module_map(model).items()}
    modules = _lora_target_modules(model)

    grouped: Dict[str, Dict[str, torch.Tensor]] = {}
    names: Dict[str, str] = {}  # module path -> the file's name for it (two spellings of one module are refused)
    malformed, text_encoder, unknown, twice = [], [], [], []
    for key, value in state_dict.items():
        name, _, element = str(key).partition(".")
        if ORIGINAL_LORA_TEXT_ENCODER_PREFIX in name:  # as the original's merge tells them apart
            text_encoder.append(key)
        elif element not in _ORIGINAL_LORA_ELEMENTS:
            malformed.append(key)
        elif _flat_original_name(name) not in module_map:
            unknown.append(key)
        elif names.setdefault(module_map[_flat_original_name(name)], name) != name:
            twice.append(key)
        else:
            grouped.setdefault(name, {})[element] = value

    incomplete, bad_shapes, zero_alpha, bad_values, empty = [], [], [], [], []
    converted: Dict[str, torch.Tensor] = {}
    ranks: Dict[str, int] = {}
    alphas: Dict[str, float] = {}
    key_prefix = f"{prefix}." if prefix else ""
    for name, elements in sorted(grouped.items()):
        if "lora_down.weight" not in elements or "lora_up.weight" not in elements:
            missing = [e for e in ("lora_down.weight", "lora_up.weight") if e not in elements]
            incomplete.append(f"{name} (missing {', '.join(missing)})")
            continue
        path = module_map[_flat_original_name(name)]
        module = modules[path]
        down, up = elements["lora_down.weight"], elements["lora_up.weight"]
        alpha = elements.get("alpha")
        problem = _lora_tensor_problem({"lora_down": down, "lora_up": up})
        if problem is None and alpha is not None:
            # An integer alpha is what the original's `LoRANetwork` saves for an integer `alpha` (its default 1).
            if not isinstance(alpha, torch.Tensor) or alpha.dtype == torch.bool or alpha.is_complex():
                problem = f"alpha is {getattr(alpha, 'dtype', type(alpha).__name__)}, not a real number"
            elif alpha.numel() != 1:
                problem = f"alpha holds {alpha.numel()} values, not one"
            else:
                problem = _lora_tensor_problem({"alpha": alpha.double()})
        if problem is not None:
            bad_values.append(f"{name}: {problem}")
            continue
        rank = down.shape[0]
        if rank == 0 and up.ndim >= 2 and up.shape[1] == 0:
            # An empty product: the original adds a zero delta (its alpha would divide by the rank: it fails with
            # one). There is nothing to load, and PEFT has no rank-0 layer.
            empty.append(name)
            continue
        if isinstance(module, torch.nn.Conv2d):
            # Whatever the kernel: the original's merge adds its 1x1 delta to every kernel position.
            expected_down = (rank, module.in_channels, 1, 1)
            expected_up = (module.out_channels, rank, 1, 1)
        elif isinstance(module, torch.nn.Embedding):  # its weight is (num_embeddings, embedding_dim)
            expected_down = (rank, module.embedding_dim)
            expected_up = (module.num_embeddings, rank)
        else:
            expected_down = (rank, module.in_features)
            expected_up = (module.out_features, rank)
        if tuple(down.shape) != expected_down or tuple(up.shape) != expected_up:
            bad_shapes.append(
                f"{name}: lora_down {tuple(down.shape)}, lora_up {tuple(up.shape)}; {path} needs {expected_down} "
                f"and {expected_up}"
            )
            continue
        # The original divides `alpha.item()` by the rank; without alpha its factor is 1, i.e. alpha = rank.
        alpha_value = float(alpha.float().item()) if alpha is not None else float(rank)
        if alpha_value == 0.0:
            zero_alpha.append(name)
        ranks[path], alphas[path] = rank, alpha_value
        if return_metadata:  # the file's values; still copied below, so the adapter never shares the caller's tensors
            scale_down, scale_up = 1.0, 1.0
        else:
            scale_down, scale_up = _lora_alpha_scales(alpha_value / rank)
        if isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) != (1, 1):
            # PEFT's `lora_A` has the layer's kernel: `down` at every position sums the patch before projecting it,
            # i.e. applies the original's broadcast delta `(up @ down)[..., None, None]`, in the adapter and when fused.
            down = down.expand(-1, -1, *module.kernel_size).contiguous()
        down, up = (down.float() * scale_down).to(down.dtype), (up.float() * scale_up).to(up.dtype)
        if isinstance(module, torch.nn.Embedding):
            # PEFT's Embedding delta is `(lora_embedding_B @ lora_embedding_A).T`, A (rank, num_embeddings) and B
            # (embedding_dim, rank): the original's `up @ down` with A = up.T, B = down.T.
            converted[f"{key_prefix}{path}.lora_embedding_A"] = up.T.contiguous()
            converted[f"{key_prefix}{path}.lora_embedding_B"] = down.T.contiguous()
        else:
            converted[f"{key_prefix}{path}.lora_A.weight"] = down
            converted[f"{key_prefix}{path}.lora_B.weight"] = up

    raise_lora_problems(
        "Cannot load this original-format Ruyi LoRA",
        [
            ("text-encoder entries (Ruyi has no text encoder to apply them to)", sorted(text_encoder)),
            ("names that match no Linear/Conv2d/Embedding module of the transformer", sorted(unknown)),
            ("keys that are not `lora_unet_<module>.{lora_down.weight,lora_up.weight,alpha}`", sorted(malformed)),
            ("modules named twice, in two spellings", sorted(twice)),
            ("modules without both lora_down and lora_up", incomplete),
            ("tensors of the wrong shape", bad_shapes),
            ("tensors that are not finite floating-point values", bad_values),
        ],
    )
    if not converted:
        if empty:
            raise ValueError(
                f"Every module of this original-format Ruyi LoRA has rank 0, so it changes nothing: {empty}"
            )
        raise ValueError("The original-format Ruyi LoRA holds no `lora_down`/`lora_up` weights.")
    from diffusers.utils import logging as diffusers_logging

    if zero_alpha:
        diffusers_logging.get_logger(__name__).warning(
            f"These LoRA modules have alpha=0, so (as in the original merge) they change nothing: {zero_alpha}"
        )
    if empty:
        diffusers_logging.get_logger(__name__).warning(
            f"These LoRA modules have rank 0, so (as in the original merge) they change nothing and are skipped: {empty}"
        )
    if not return_metadata:
        return converted
    return converted, _lora_config_kwargs(ranks, alphas)


def _lora_config_kwargs(ranks: Dict[str, int], alphas: Dict[str, float]) -> Dict[str, Any]:
    # `LoraConfig` values for per-module ranks and alphas: the most common value is the default, the others go into
    # the patterns. PEFT matches a pattern key `k` as the regex `(.*\.)?(k)$`; `^` + the escaped path makes it match
    # that module only (as diffusers does for ranks), never a module whose path merely ends with it.
    def default_and_pattern(values: Dict[str, Any]):
        default = collections.Counter(values.values()).most_common(1)[0][0]  # ties: the first seen
        return default, {"^" + re.escape(path): value for path, value in values.items() if value != default}

    r, rank_pattern = default_and_pattern(ranks)
    lora_alpha, alpha_pattern = default_and_pattern(alphas)
    return {
        "r": r,
        "lora_alpha": lora_alpha,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        # A regex string is matched against whole module paths (a list would also match longer paths ending in one).
        "target_modules": "|".join(re.escape(path) for path in sorted(ranks)),
    }


def check_lora_metadata(
    metadata: Dict[str, Any], state_dict: Dict[str, torch.Tensor], prefix: str, action: str = "load this LoRA"
) -> None:
    """The `LoraConfig` values a PEFT LoRA file carries must fit its tensors: finite alphas, positive integer ranks,
    and the rank each adapted module's tensors have (PEFT would build layers of the config's rank and fail to copy
    the tensors into them, with a long state-dict error). ``prefix`` starts the keys of both dicts; ``action`` says
    what the error refuses to do."""
    from peft.utils.other import get_pattern_key

    config = {key[len(prefix) + 1 :]: value for key, value in metadata.items() if key.startswith(f"{prefix}.")}
    problems = []

    def number(name: str, value: Any, rank: bool) -> bool:
        if rank:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            problems.append(f"{name}={value!r} is not {'a positive integer' if rank else 'a finite number'}")
        return ok

    ranks_ok = "r" not in config or number("r", config["r"], rank=True)
    if "lora_alpha" in config:
        number("lora_alpha", config["lora_alpha"], rank=False)
    rank_pattern = config.get("rank_pattern") or {}
    for name, pattern in (("rank_pattern", rank_pattern), ("alpha_pattern", config.get("alpha_pattern") or {})):
        is_rank = name == "rank_pattern"
        if not isinstance(pattern, dict):
            problems.append(f"{name} is not a mapping")
            ranks_ok = ranks_ok and not is_rank
            continue
        for key, value in pattern.items():
            ok = number(f"{name}[{key!r}]", value, rank=is_rank)
            ranks_ok = ranks_ok and (ok or not is_rank)
    if ranks_ok and "r" in config:
        wrong = []
        for key, down in state_dict.items():
            if not key.endswith((".lora_A.weight", ".lora_embedding_A")) or down.ndim < 2:
                continue
            path = key[len(prefix) + 1 :].rsplit(".lora_", 1)[0]
            expected = rank_pattern.get(get_pattern_key(rank_pattern.keys(), path), config["r"])
            if down.shape[0] != expected:
                wrong.append(f"{path} (rank {down.shape[0]}, config {expected})")
        if wrong:
            problems.append(f"tensors of another rank than the config's `r` / `rank_pattern`: {sorted(wrong)}")
    # Layers PEFT would build from these flags but whose tensors the file lacks stay on the meta device, and every
    # forward fails.
    if config.get("use_dora"):
        problems.append("use_dora=True (DoRA LoRAs are not supported for Ruyi)")
    if config.get("lora_bias") and not any(key.endswith(".lora_B.bias") for key in state_dict):
        problems.append("lora_bias=True, but there are no `lora_B.bias` tensors")
    if problems:
        raise ValueError(f"Cannot {action}: its LoRA config (the file's metadata) " + "; ".join(problems) + ".")


# ----------------------------------------------------------------------------------------------------------------
# LoRA (PEFT -> original kohya-style files)
# ----------------------------------------------------------------------------------------------------------------

# Keys a diffusers/PEFT LoRA may hold that the original format has no place for, and why.
_NOT_EXPORTABLE_LORA_KEYS = {
    "lora_B.bias": "a LoRA bias (`lora_bias=True`)",
    "lora_magnitude_vector": "DoRA",
}

# The modules of `RuyiTransformer3DModel` an original-format LoRA can adapt: its Linear layers, by path (full match;
# the same in the original model, and each resolved by the original `merge_lora`'s name search; a test checks both
# against the models). A name outside it would make the original's merge fail half-way, some weights already changed;
# the layer count is not known here, so a block index past it (or a long skip on a block without one) is not caught.
RUYI_LORA_MODULE_PATHS = re.compile(
    r"blocks\.(0|[1-9]\d*)\.(attn1|attn2|attn_clip)\.(to_q|to_k|to_v|to_out\.0)"
    r"|blocks\.(0|[1-9]\d*)\.(ff\.net\.0\.proj|ff\.net\.2|gate_clip\.proj|norm1\.linear|skip_linear)"
    r"|clip_projection\.(kv_proj|attn\.out_proj)|norm_out\.linear|proj_out|text_embedder\.linear_[12]"
    r"|time_extra_emb\.(extra_embedder|timestep_embedder)\.linear_[12]|time_extra_emb\.pooler\.[qkvc]_proj"
)
# Its Embedding, whose weight the original merges the same way (`up @ down`, of PEFT's transposed A and B).
RUYI_LORA_EMBEDDING_PATHS = re.compile(r"time_extra_emb\.style_embedder")
# Its convolution (the 2x2 patch embedding), to which the original adds one 1x1 delta at every kernel position: PEFT's
# `lora_A` (rank, in, 2, 2) is written as `lora_down` (rank, in, 1, 1) when it is the same at every position.
RUYI_LORA_CONV_PATHS = re.compile(r"pos_embed\.proj")
# A module's two keys after its path: a Linear's, and an Embedding's (PEFT keeps those as parameters).
_LINEAR_LORA_ELEMENTS = ("lora_A.weight", "lora_B.weight")
_EMBEDDING_LORA_ELEMENTS = ("lora_embedding_A", "lora_embedding_B")
# Why a path may not be one of those: the state dict of a wrapped model, or fused projections.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "base_model.model.")
_FUSED_PROJECTIONS = re.compile(r".*\.(to_qkv|to_kv)")
# `init_lora_weights` values that leave the base weights as they are. The others (PiSSA, OLoRA, CorDA, LoftQ, ...)
# change them when the adapter is made, so the adapter alone, merged onto the published weights, is not the model.
_BASE_PRESERVING_LORA_INITS = (True, False, "gaussian", "eva", "orthogonal", "mica")


def convert_lora_state_dict_to_original(
    state_dict: Dict[str, torch.Tensor],
    metadata: Optional[Union[Dict[str, Any], "LoraConfig"]] = None,
    prefix: Optional[str] = "transformer",
) -> Dict[str, torch.Tensor]:
    """Converts a diffusers/PEFT LoRA of the transformer into the original Ruyi format, all or nothing.

    The inverse of `convert_original_lora_state_dict`, for the original `predict_i2v.py` (`lora_path`) and its ComfyUI
    nodes ("Load LoRA"). Each ``<module>.lora_A.weight`` / ``.lora_B.weight`` pair becomes
    ``lora_unet__<original module path, "." -> "_">.lora_down.weight`` / ``.lora_up.weight`` (the same tensors) plus
    ``.alpha``, chosen so that the original merge ``W += multiplier * alpha / rank * up @ down`` adds PEFT's delta
    ``scaling * lora_B @ lora_A``: ``alpha`` is ``lora_alpha`` (``lora_alpha * sqrt(rank)`` with ``use_rslora``),
    per module from the config's ``alpha_pattern`` as PEFT resolves it, or the rank when there is no config (diffusers
    then loads the file with scaling 1). The style embedding's Embedding adapter (``lora_embedding_A`` /
    ``lora_embedding_B``, whose delta is ``(B @ A).T``) becomes ``lora_up = A.T`` / ``lora_down = B.T``. The patch
    convolution's adapter (``pos_embed.proj``) is written when its ``lora_A`` is the same at every kernel position, as
    after loading an original file: the original adds its 1x1 delta at every position. No model is needed: module
    paths are checked against the architecture's Linear layers (`RUYI_LORA_MODULE_PATHS`), its Embedding
    (`RUYI_LORA_EMBEDDING_PATHS`) and its convolution (`RUYI_LORA_CONV_PATHS`), not against a checkpoint's layer
    count. (diffusers' `convert_state_dict_to_kohya` writes ``alpha = rank`` whatever the config, and other module
    names.)

    Args:
        state_dict (`Dict[str, torch.Tensor]`):
            The adapter's tensors, e.g. `peft.get_peft_model_state_dict(pipe.transformer)` or the first value of
            `RuyiImageToVideoPipeline.lora_state_dict(path, return_lora_metadata=True)`; with ``prefix.`` on every key
            or on none.
        metadata (`Dict[str, Any]` or `peft.LoraConfig`, *optional*):
            The adapter's `LoraConfig` (or its values, ``peft_config[name].to_dict()``, or the second value of
            `lora_state_dict(..., return_lora_metadata=True)`, with or without ``prefix.`` on its keys).
        prefix (`str`, *optional*, defaults to `"transformer"`): The component prefix of the keys (`None` for none).

    Returns:
        `Dict[str, torch.Tensor]`: ``lora_down``/``lora_up`` in the dtype of the input, ``alpha`` as a float32 scalar.

    Raises:
        `TypeError`: when ``state_dict`` is not a mapping or ``metadata`` neither a mapping nor a `LoraConfig`.
        `ValueError`: listing every key that the original format cannot express (keys of other components, modules
            that are not a Linear of Ruyi's transformer, its style embedding or its patch convolution, a patch
            convolution's adapter that differs between kernel positions, LoRA biases, PEFT's LoRA variants (DoRA,
            aLoRA, ...), malformed keys, modules without both `lora_A` and `lora_B`, tensors whose shapes do not pair
            up, values that are not finite), a config that does not fit the tensors, or an `init_lora_weights` that
            changed the base weights.
    """
    from peft import LoraConfig

    if not isinstance(state_dict, collections.abc.Mapping):
        raise TypeError(f"`state_dict` must be a dict of LoRA tensors, got {type(state_dict).__name__}.")
    if isinstance(metadata, LoraConfig):
        metadata = metadata.to_dict()
    elif metadata is not None and not isinstance(metadata, collections.abc.Mapping):
        raise TypeError(
            f"`metadata` must be a `LoraConfig`, a dict of its values or None, got {type(metadata).__name__}."
        )
    key_prefix = f"{prefix}." if prefix else ""
    if key_prefix and not any(str(key).startswith(key_prefix) for key in state_dict):
        state_dict = {key_prefix + str(key): value for key, value in state_dict.items()}
    config = dict(metadata or {})
    if key_prefix and any(str(key).startswith(key_prefix) for key in config):
        config = {key[len(key_prefix) :]: value for key, value in config.items() if key.startswith(key_prefix)}
    lora_config = None
    if config:
        try:  # as diffusers turns a file's metadata into the adapter's config
            lora_config = LoraConfig(**config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"The LoRA config (metadata) is not a valid `LoraConfig`: {e}") from None

    foreign, malformed, unsupported, not_ruyi = [], [], [], []
    pairs: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        key = str(key)
        if not key.startswith(key_prefix):
            foreign.append(key)
            continue
        path, _, element = key[len(key_prefix) :].rpartition(".lora_")
        element = "lora_" + element
        reason = _NOT_EXPORTABLE_LORA_KEYS.get(element)
        if reason is not None:
            unsupported.append(f"{key} ({reason})")
        elif not path or element not in _LINEAR_LORA_ELEMENTS + _EMBEDDING_LORA_ELEMENTS:
            malformed.append(key)
        elif not (
            RUYI_LORA_EMBEDDING_PATHS.fullmatch(path)
            if element in _EMBEDDING_LORA_ELEMENTS
            else RUYI_LORA_MODULE_PATHS.fullmatch(path) or RUYI_LORA_CONV_PATHS.fullmatch(path)
        ):
            not_ruyi.append(path)
        else:
            pairs.setdefault(path, {})[element] = value
    if lora_config is not None:
        # PEFT's LoRA variants (DoRA, aLoRA, BD-LoRA, KaSA, ...) compute another delta than `lora_B @ lora_A`.
        variants = [
            f"{field.name}={getattr(lora_config, field.name)!r}"
            for field in dataclasses.fields(lora_config)
            if field.metadata.get("is_lora_variant") and getattr(lora_config, field.name) not in (None, False)
        ]
        if getattr(lora_config, "use_qalora", False):
            variants.append("use_qalora=True")
        if variants:
            unsupported.append(f"a LoRA variant, which merges another delta than the original's: {variants}")
        if lora_config.lora_bias:
            unsupported.append("the config's lora_bias=True (a LoRA bias)")
        init = lora_config.init_lora_weights
        if not any(
            init is value or (isinstance(init, str) and init == value) for value in _BASE_PRESERVING_LORA_INITS
        ):
            unsupported.append(
                f"the config's init_lora_weights={init!r}, which changed the base weights when the adapter was made "
                "(the original merges onto the published ones): convert the adapter first with PEFT's "
                "`save_pretrained(..., path_initial_model_for_weight_conversion=...)`"
            )

    incomplete, bad_shapes, bad_values = [], [], []
    for path, tensors in sorted(pairs.items()):
        elements = _EMBEDDING_LORA_ELEMENTS if RUYI_LORA_EMBEDDING_PATHS.fullmatch(path) else _LINEAR_LORA_ELEMENTS
        if set(tensors) != set(elements):
            incomplete.append(path)
            continue
        down, up = (tensors[element] for element in elements)
        problem = _lora_tensor_problem({"lora_A": down, "lora_B": up})
        if problem is not None:
            bad_values.append(f"{path}: {problem}")
            continue
        # A Linear's A (rank, in) and B (out, rank); an Embedding's A (rank, num_embeddings), B (embedding_dim, rank);
        # a convolution's A (rank, in, kh, kw) and B (out, rank, 1, 1).
        if RUYI_LORA_CONV_PATHS.fullmatch(path):
            if not (down.ndim == up.ndim == 4 and down.shape[0] == up.shape[1] and tuple(up.shape[2:]) == (1, 1)):
                shapes = "a convolution's are (rank, in, kh, kw) and (out, rank, 1, 1)"
                bad_shapes.append(f"{path}: lora_A {tuple(down.shape)}, lora_B {tuple(up.shape)} ({shapes})")
            elif not torch.equal(down, down[..., :1, :1].expand_as(down)):
                # e.g. trained with PEFT: its delta differs between kernel positions, the original's cannot.
                unsupported.append(
                    f"{path} (its lora_A differs between the {tuple(down.shape[2:])} kernel positions; the original "
                    "format holds one 1x1 delta that it adds at every position)"
                )
        elif not down.ndim == up.ndim == 2 or down.shape[0] != up.shape[1]:
            if elements == _EMBEDDING_LORA_ELEMENTS:
                shapes = "an Embedding's are (rank, num_embeddings) and (embedding_dim, rank)"
            else:
                shapes = "a Linear's are (rank, in) and (out, rank)"
            bad_shapes.append(f"{path}: lora_A {tuple(down.shape)}, lora_B {tuple(up.shape)} ({shapes})")

    # Why a module is not one of Ruyi's, where that can be told.
    hints = []
    if any(path.startswith(_WRAPPER_PREFIXES) for path in not_ruyi):
        hints.append("take the state dict of the unwrapped model: no `_orig_mod.`, `module.` or `base_model.model.`")
    if any(_FUSED_PROJECTIONS.fullmatch(path) for path in not_ruyi):
        hints.append("the original has no fused projections: call `unfuse_qkv_projections()` before adding LoRAs")
    hint = f" ({'; '.join(hints)})" if hints else ""
    action = "write this LoRA in the original format"
    raise_lora_problems(
        f"Cannot {action}",
        [
            (f"keys of components other than `{prefix}` (Ruyi's LoRAs are the transformer's)", foreign),
            (
                f"modules that are not a Linear layer (or the patch convolution `pos_embed.proj`, or, for "
                f"`lora_embedding_A/B`, the style embedding) of Ruyi's transformer{hint}",
                sorted(set(not_ruyi)),
            ),
            ("what the original format cannot hold", unsupported),
            ("keys that are not `<module>.lora_A.weight` / `<module>.lora_B.weight`", sorted(malformed)),
            ("modules without both lora_A and lora_B", incomplete),
            ("tensors of the wrong shape", bad_shapes),
            ("tensors that are not finite floating-point values", bad_values),
        ],
    )
    if not pairs:
        raise ValueError("The LoRA state dict holds no `lora_A`/`lora_B` weights.")
    if config:
        # The ranks and alphas must be the ones PEFT would build (and has built) the adapter with.
        tensors = {f"lora.{path}.{element}": value for path, pair in pairs.items() for element, value in pair.items()}
        check_lora_metadata({f"lora.{key}": value for key, value in config.items()}, tensors, "lora", action)

    from peft.utils.other import get_pattern_key  # PEFT's own rule for which pattern applies to a module

    converted: Dict[str, torch.Tensor] = {}
    for path, tensors in sorted(pairs.items()):
        if "lora_embedding_A" in tensors:  # the original's `up @ down` is PEFT's `(B @ A).T`: up = A.T, down = B.T
            down, up = tensors["lora_embedding_B"].T.contiguous(), tensors["lora_embedding_A"].T.contiguous()
        else:
            down, up = tensors["lora_A.weight"], tensors["lora_B.weight"]
            if down.ndim == 4:  # the same at every kernel position (checked above): one position is the 1x1 kernel
                down = down[..., :1, :1].contiguous()
        rank = down.shape[0]
        if lora_config is None:
            alpha = float(rank)  # diffusers loads a file without a config with scaling 1
        else:
            patterns = lora_config.alpha_pattern or {}
            alpha = float(patterns.get(get_pattern_key(patterns.keys(), path), lora_config.lora_alpha))
            if lora_config.use_rslora:  # PEFT scales by alpha / sqrt(rank), the original by alpha / rank
                alpha *= math.sqrt(rank)
        name = f"{ORIGINAL_LORA_PREFIX}__{_original_module_path(path).replace('.', '_')}"
        converted[f"{name}.lora_down.weight"] = down
        converted[f"{name}.lora_up.weight"] = up
        converted[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return converted
