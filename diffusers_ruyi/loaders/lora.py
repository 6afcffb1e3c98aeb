"""LoRA loading and saving for [`RuyiImageToVideoPipeline`] (diffusers/PEFT files and original Ruyi files)."""

import contextlib
import functools
import math
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading
from diffusers.loaders.lora_base import (
    LORA_WEIGHT_NAME_SAFE,
    LoraBaseMixin,
    _fetch_state_dict,
    _func_optionally_disable_offloading,
)
from diffusers.loaders.lora_pipeline import _LOW_CPU_MEM_USAGE_DEFAULT_LORA
from diffusers.utils import convert_unet_state_dict_to_peft, logging
from diffusers.utils.peft_utils import require_peft_backend
from huggingface_hub.utils import validate_hf_hub_args
from safetensors import SafetensorError
from safetensors.torch import save_file

from .._validation import check_bool, check_real, is_fp8_dtype
from .original_checkpoint import (
    _lora_target_modules,
    _lora_tensor_problem,
    check_local_source,
    check_lora_metadata,
    convert_lora_state_dict_to_original,
    convert_original_lora_state_dict,
    is_original_lora_state_dict,
    raise_lora_problems,
)


if TYPE_CHECKING:
    from peft import LoraConfig


logger = logging.get_logger(__name__)

TRANSFORMER_NAME = "transformer"

# File endings of pickle-based checkpoints, which are never unpickled here.
_PICKLE_EXTENSIONS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Keys of one adapted module in the diffusers/PEFT format (after the module path): a Linear or convolution's, and an
# Embedding's (PEFT keeps those as parameters, not modules).
_PEFT_LORA_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora_B.bias")
_PEFT_EMBEDDING_SUFFIXES = ("lora_embedding_A", "lora_embedding_B")
# Module types PEFT can wrap with LoRA layers.
_PEFT_LORA_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)


def _describe(source: Any, weight_name: Optional[str], subfolder: Optional[str]) -> str:
    parts = [str(source)]
    if subfolder:
        parts.append(f"subfolder={subfolder!r}")
    if weight_name:
        parts.append(f"weight_name={weight_name!r}")
    return ", ".join(parts)


def _check_lora_source(source: str, weight_name: Optional[str], subfolder: Optional[str]) -> None:
    """A LoRA source is a file, a folder or a hub id: a mistyped local path is said to be one (offline, diffusers
    asked for a `weight_name` instead), and a folder of several safetensors files without `weight_name` is refused
    rather than one of them picked with a warning."""
    if os.path.isfile(source):
        return
    if not os.path.isdir(source):
        try:
            if source.endswith((".safetensors", *_PICKLE_EXTENSIONS)):  # a file name, not a hub id `owner/name`
                raise FileNotFoundError(source)
            check_local_source(source)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"The LoRA {source!r} is not an existing file or folder (nor a hub repository id like 'owner/name'); "
                "check the path."
            ) from None
        return
    folder = os.path.join(source, subfolder or "")
    if weight_name is None and os.path.isdir(folder):
        files = sorted(name for name in os.listdir(folder) if name.endswith(".safetensors"))
        if len(files) > 1 and LORA_WEIGHT_NAME_SAFE not in files:
            raise ValueError(
                f"The LoRA folder {folder!r} holds several safetensors files {files}: pass `weight_name` to choose one."
            )


def _check_no_pickle(source: str, weight_name: Optional[str], subfolder: Optional[str]) -> None:
    """Refuses pickle checkpoints up front, with a message that says what to do instead."""
    candidates = [weight_name] if weight_name else []
    if os.path.isfile(source):
        candidates.append(source)
    for name in candidates:
        if not str(name).endswith(".safetensors"):
            kind = "a pickle checkpoint" if str(name).endswith(_PICKLE_EXTENSIONS) else "not a .safetensors file"
            raise ValueError(
                f"{name!r} is {kind}. diffusers-ruyi loads LoRA weights from safetensors files only (pickle files can "
                "run arbitrary code). Convert it once with `safetensors.torch.save_file(torch.load(path, "
                "weights_only=True), 'lora.safetensors')` if you trust it."
            )
    folder = os.path.join(source, subfolder) if subfolder else source
    if weight_name is None and os.path.isdir(folder):
        files = os.listdir(folder)
        if not any(f.endswith(".safetensors") for f in files):
            pickles = sorted(f for f in files if f.endswith(_PICKLE_EXTENSIONS))
            if pickles:
                raise ValueError(
                    f"{folder!r} holds only pickle checkpoints {pickles}; diffusers-ruyi loads LoRA weights from "
                    "safetensors files only."
                )


def _check_no_fused_targets(state_dict: Dict[str, torch.Tensor], transformer: torch.nn.Module, prefix: str) -> None:
    """Refuses adapters on ``to_q``/``to_k``/``to_v`` of attentions whose projections are fused: the fused
    ``to_qkv``/``to_kv`` would run instead, so those adapters would never apply."""
    modules = dict(transformer.named_modules())
    fused = set()
    for key in state_dict:
        path = key[len(prefix) + 1 :].split(".lora_")[0]
        parent, _, name = path.rpartition(".")
        if name in ("to_q", "to_k", "to_v") and getattr(modules.get(parent), "fused_projections", False):
            fused.add(path)
    if fused:
        raise ValueError(
            f"The LoRA adapts {len(fused)} projections that `fuse_qkv_projections()` replaced, e.g. "
            f"{sorted(fused)[:3]}: its adapters there would never run. Call `transformer.unfuse_qkv_projections()` "
            "before loading it (and fuse again after `fuse_lora()` if you want both)."
        )


def _check_no_fp8_targets(state_dict: Dict[str, torch.Tensor], transformer: torch.nn.Module, prefix: str) -> None:
    """Refuses adapters on layers stored in fp8 (`apply_fp8_mode`): PEFT makes an adapter in its layer's weight dtype,
    so its values would be rounded to fp8 and the model would then fail to run or to fuse it."""
    modules = dict(transformer.named_modules())
    stored = set()
    for key in state_dict:
        path = key[len(prefix) + 1 :].split(".lora_")[0]
        if is_fp8_dtype(getattr(getattr(modules.get(path), "weight", None), "dtype", None)):
            stored.add(path)
    if stored:
        raise ValueError(
            f"The LoRA adapts {len(stored)} layers whose weights are stored in fp8 (`apply_fp8_mode` or "
            f"`enable_layerwise_casting`), e.g. {sorted(stored)[:3]}: their adapters would be made in fp8. Load LoRAs "
            "before `apply_fp8_mode` (it leaves their layers in full precision) or layerwise casting, or fuse them "
            "first, as `ruyi-i2v` does."
        )


def _check_peft_lora_state_dict(
    state_dict: Dict[str, torch.Tensor], transformer: torch.nn.Module, prefix: str
) -> Dict[str, torch.Tensor]:
    """Validates a diffusers/PEFT LoRA state dict against ``transformer``; returns it with ``prefix.`` on every key.

    Keys without any prefix (what `peft.get_peft_model_state_dict` returns) get ``prefix.`` added. Raises a
    `ValueError` listing keys of other components, malformed keys, names that match no module PEFT can adapt, and
    modules that do not have both `lora_A` and `lora_B`: nothing is silently skipped.
    """
    if not any(key.startswith(f"{prefix}.") for key in state_dict):
        state_dict = {f"{prefix}.{key}": value for key, value in state_dict.items()}
    foreign = sorted(key for key in state_dict if not key.startswith(f"{prefix}."))
    state_dict = {key[len(prefix) + 1 :]: value for key, value in state_dict.items() if key.startswith(f"{prefix}.")}
    if state_dict and not any("lora_A" in key for key in state_dict):
        # Older diffusers naming (`.lora.down.weight`, `.to_q_lora.up.weight`, ...).
        state_dict = convert_unet_state_dict_to_peft(state_dict)

    modules = _lora_target_modules(transformer, _PEFT_LORA_TYPES)
    malformed, unknown = [], []
    parts: Dict[str, set] = {}
    for key in state_dict:
        suffix = next((s for s in _PEFT_LORA_SUFFIXES + _PEFT_EMBEDDING_SUFFIXES if key.endswith("." + s)), None)
        if suffix is None:
            malformed.append(key)
            continue
        path = key[: -len(suffix) - 1]
        if path not in modules:
            unknown.append(key)
            continue
        if (suffix in _PEFT_EMBEDDING_SUFFIXES) != isinstance(modules[path], torch.nn.Embedding):
            malformed.append(key)  # lora_embedding_* names an Embedding's adapter, lora_A/lora_B any other's
            continue
        parts.setdefault(path, set()).add(suffix.split(".")[0].replace("lora_embedding_", "lora_"))
    incomplete = sorted(path for path, found in parts.items() if found != {"lora_A", "lora_B"})
    bad_values, bad_shapes = [], []
    for path in sorted(set(parts) - set(incomplete)):
        suffixes = _PEFT_LORA_SUFFIXES + _PEFT_EMBEDDING_SUFFIXES
        tensors = {s: state_dict[f"{path}.{s}"] for s in suffixes if f"{path}.{s}" in state_dict}
        problem = _lora_tensor_problem(tensors)
        if problem is not None:
            bad_values.append(f"{path}: {problem}")
            continue
        module = modules[path]
        if isinstance(module, torch.nn.Embedding):  # PEFT's shapes: A (r, num_embeddings), B (embedding_dim, r)
            down = tensors["lora_embedding_A"]
            rank = down.shape[0] if down.ndim == 2 else -1
            expected = {"lora_embedding_A": (rank, module.num_embeddings)}
            expected["lora_embedding_B"] = (module.embedding_dim, rank)
            wrong = [f"{s} {tuple(t.shape)}" for s, t in tensors.items() if tuple(t.shape) != expected[s]]
            if wrong:
                bad_shapes.append(
                    f"{path}: {', '.join(wrong)}; it needs lora_embedding_A (rank, {module.num_embeddings}) and "
                    f"lora_embedding_B ({module.embedding_dim}, rank)"
                )
        elif isinstance(module, torch.nn.Linear):  # PEFT's shapes: A (r, in), B (out, r), bias (out,)
            down = tensors["lora_A.weight"]
            rank = down.shape[0] if down.ndim == 2 else -1
            expected = {"lora_A.weight": (rank, module.in_features), "lora_B.weight": (module.out_features, rank)}
            expected["lora_B.bias"] = (module.out_features,)
            wrong = [f"{s} {tuple(t.shape)}" for s, t in tensors.items() if tuple(t.shape) != expected[s]]
            if wrong:
                bad_shapes.append(
                    f"{path}: {', '.join(wrong)}; it needs lora_A (rank, {module.in_features}) and lora_B "
                    f"({module.out_features}, rank)"
                )

    raise_lora_problems(
        "Cannot load this LoRA",
        [
            (f"keys of components other than `{prefix}` (Ruyi only takes LoRAs for the transformer)", foreign),
            (
                "keys that are not `<module>.{lora_A.weight,lora_B.weight,lora_B.bias}` (an Embedding's: "
                "`<module>.{lora_embedding_A,lora_embedding_B}`)",
                sorted(malformed),
            ),
            ("names that match no Linear/Conv/Embedding module of the transformer", sorted(unknown)),
            ("modules without both lora_A and lora_B", incomplete),
            ("tensors of the wrong shape", bad_shapes),
            ("tensors that are not finite floating-point values", bad_values),
        ],
    )
    if not state_dict:
        raise ValueError("The LoRA state dict is empty.")
    return {f"{prefix}.{key}": value for key, value in state_dict.items()}


def _check_adapter_name(adapter_name: Any) -> None:
    if adapter_name is None:
        return
    if not isinstance(adapter_name, str):
        raise TypeError(f"`adapter_name` must be a str, got {type(adapter_name).__name__}.")
    if not adapter_name or "." in adapter_name:
        raise ValueError(f"`adapter_name` must be a non-empty name without '.', got {adapter_name!r}.")


@contextlib.contextmanager
def _offloading_paused(pipeline: Optional[Any]) -> Iterator[None]:
    # diffusers' own pause around `load_lora_adapter`: accelerate hooks come off, group offloading is re-applied after.
    if pipeline is None:
        yield
        return
    model_offload, sequential_offload, group_offload = _func_optionally_disable_offloading(pipeline)
    try:
        yield
    finally:
        if model_offload:
            pipeline.enable_model_cpu_offload()
        elif sequential_offload:
            pipeline.enable_sequential_cpu_offload()
        elif group_offload:
            for component in pipeline.components.values():
                if isinstance(component, torch.nn.Module):
                    _maybe_remove_and_reapply_group_offloading(component)


def _load_adapter_in_float32(
    transformer: torch.nn.Module, adapter_name: str, state_dict: Dict[str, torch.Tensor], prefix: str
) -> None:
    # PEFT creates adapters in the base layer's dtype, which rounds a bfloat16 model's adapters; upcasting those
    # would keep the rounded values, so the file's tensors are loaded again into the float32 adapter.
    from peft import set_peft_model_state_dict
    from peft.tuners.tuners_utils import cast_adapter_dtype

    cast_adapter_dtype(transformer, adapter_name=adapter_name)
    start = len(prefix) + 1
    set_peft_model_state_dict(transformer, {key[start:]: value for key, value in state_dict.items()}, adapter_name)


def _set_scalings(
    transformer: torch.nn.Module,
    adapter_name: str,
    lora_config: Dict[str, Any],
    state_dict: Dict[str, torch.Tensor],
    prefix: str,
) -> None:
    # PEFT's hot-swap looks the rank/alpha patterns up by parameter name (`<module>.lora_A.<adapter>.weight`), which
    # no module-path pattern matches, so every module would get the default `lora_alpha / r`; and it leaves each
    # layer's `lora_alpha` and the model's `peft_config` at the replaced file's values, which `set_adapters` (and a
    # call at scale 0) scale from. This sets them all from the new file by module path, as adding the adapter does
    # (the scaling in place when compiled: a tensor). The rank is the new tensors' (a padded hot-swap keeps its own).
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import get_pattern_key

    ranks = {
        key[len(prefix) + 1 : -len(".lora_A.weight")]: value.shape[0]
        for key, value in state_dict.items()
        if key.endswith(".lora_A.weight")
    }
    default_rank = lora_config.get("r") or max(ranks.values(), default=1)
    rank_pattern, alpha_pattern = lora_config.get("rank_pattern") or {}, lora_config.get("alpha_pattern") or {}
    default_alpha = lora_config.get("lora_alpha")
    use_rslora = bool(lora_config.get("use_rslora", False))  # PEFT's rank-stabilised scaling: alpha / sqrt(r)

    def norm(rank: int) -> float:
        return math.sqrt(rank) if use_rslora else rank

    for name, module in transformer.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.scaling:
            continue
        rank = ranks.get(name) or rank_pattern.get(get_pattern_key(rank_pattern.keys(), name), default_rank)
        # Without a config, diffusers gives alpha = rank (a scaling of 1).
        alpha = alpha_pattern.get(
            get_pattern_key(alpha_pattern.keys(), name), rank if default_alpha is None else default_alpha
        )
        if isinstance(module.scaling[adapter_name], torch.Tensor):
            module.scaling[adapter_name].fill_(alpha / norm(rank))
        else:
            module.scaling[adapter_name] = alpha / norm(rank)
        layer_rank = module.r[adapter_name]
        module.lora_alpha[adapter_name] = alpha if layer_rank == rank else alpha * norm(layer_rank) / norm(rank)
        module.use_rslora[adapter_name] = use_rslora
    config = getattr(transformer, "peft_config", {}).get(adapter_name)
    if config is not None:
        config.use_rslora = use_rslora
        for field in ("lora_alpha", "alpha_pattern"):
            if field in lora_config:
                setattr(config, field, lora_config[field])


def _on_uncompiled_transformer(method: Callable) -> Callable:
    """Runs a [`~loaders.lora_base.LoraBaseMixin`] method on the model inside a `torch.compile` wrapper: diffusers'
    methods act only on `ModelMixin` components and skipped an `OptimizedModule` without a word (LoRAs loaded into
    it could not be scaled, disabled, fused or removed)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        name = self.transformer_name
        transformer = getattr(self, name, None)
        inner = getattr(transformer, "_orig_mod", None) if isinstance(transformer, torch.nn.Module) else None
        if inner is None:
            return method(self, *args, **kwargs)
        # Not through `DiffusionPipeline.__setattr__`: the pipeline's config keeps naming the component as it was.
        object.__setattr__(self, name, inner)
        try:
            return method(self, *args, **kwargs)
        finally:
            object.__setattr__(self, name, transformer)

    return wrapper


class RuyiLoraLoaderMixin(LoraBaseMixin):
    r"""
    Loads LoRA layers into [`RuyiTransformer3DModel`]. Specific to [`RuyiImageToVideoPipeline`].

    Two file formats are read (safetensors only):

    - the diffusers/PEFT format that [`~RuyiLoraLoaderMixin.save_lora_weights`] and `examples/train_ruyi_lora.py`
      write (`transformer.<module>.lora_A.weight` / `.lora_B.weight`, with the `LoraConfig` in the file's metadata);
    - the original Ruyi/EasyAnimate format (`lora_unet__<module>.lora_down.weight` / `.lora_up.weight` / `.alpha`),
      converted on load so that the adapter reproduces the original `merge_lora` rule
      `W + multiplier * alpha / rank * up @ down` (the adapter weight plays the multiplier).

    Everything else (`set_adapters`, `fuse_lora`, `unfuse_lora`, `unload_lora_weights`, `disable_lora`,
    `delete_adapters`, `get_list_adapters`, ...) comes from [`~loaders.lora_base.LoraBaseMixin`]; these also act on a
    transformer wrapped by `torch.compile` (`pipe.transformer = torch.compile(pipe.transformer)`).
    """

    _lora_loadable_modules = ["transformer"]
    transformer_name = TRANSFORMER_NAME

    @classmethod
    @validate_hf_hub_args
    def lora_state_dict(
        cls,
        pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Dict[str, torch.Tensor]],
        **kwargs,
    ) -> Union[Dict[str, torch.Tensor], Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]]]]:
        r"""
        Returns the LoRA tensors of a file, folder, hub repository or dict, without loading them into a model.

        Original-format files are returned with their own keys (`lora_unet_*`): mapping them onto modules needs the
        transformer, which [`~RuyiLoraLoaderMixin.load_lora_into_transformer`] does.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                A hub repository id, a local folder, a `.safetensors` file, or a state dict.
            weight_name (`str`, *optional*):
                The file inside the folder/repository; defaults to the only `.safetensors` file or
                `pytorch_lora_weights.safetensors`.
            subfolder (`str`, *optional*):
                The sub-folder of the repository/folder holding the file.
            cache_dir, force_download, proxies, local_files_only, token, revision:
                Hub download options, as in [`~DiffusionPipeline.from_pretrained`].
            return_lora_metadata (`bool`, defaults to `False`):
                Also return the adapter metadata (the saved `LoraConfig` values, `None` when absent).

        Returns:
            `Dict[str, torch.Tensor]`, or `(state_dict, metadata)` with `return_lora_metadata=True`.

        Raises:
            `ValueError`: for pickle checkpoints (`.bin`, `.pt`, ...), unreadable/truncated safetensors files, DoRA
                files and empty or non-tensor state dicts.
        """
        cache_dir = kwargs.pop("cache_dir", None)
        force_download = kwargs.pop("force_download", False)
        proxies = kwargs.pop("proxies", None)
        local_files_only = kwargs.pop("local_files_only", None)
        token = kwargs.pop("token", None)
        revision = kwargs.pop("revision", None)
        subfolder = kwargs.pop("subfolder", None)
        weight_name = kwargs.pop("weight_name", None)
        use_safetensors = kwargs.pop("use_safetensors", None)
        return_lora_metadata = kwargs.pop("return_lora_metadata", False)
        if kwargs:
            raise TypeError(f"Unexpected argument(s) for loading LoRA weights: {sorted(kwargs)}.")
        if not isinstance(pretrained_model_name_or_path_or_dict, (str, os.PathLike, dict)):
            raise TypeError(
                "`pretrained_model_name_or_path_or_dict` must be a file, folder or hub id (str or os.PathLike) or a "
                f"state dict, got {type(pretrained_model_name_or_path_or_dict).__name__}."
            )
        if use_safetensors is False:
            raise ValueError(
                "diffusers-ruyi loads LoRA weights from safetensors files only (`use_safetensors=False`)."
            )

        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, dict):
            state_dict, metadata = dict(source), None
        else:
            source = str(source)
            _check_lora_source(source, weight_name, subfolder)
            _check_no_pickle(source, weight_name, subfolder)
            try:
                state_dict, metadata = _fetch_state_dict(
                    pretrained_model_name_or_path_or_dict=source,
                    weight_name=weight_name,
                    use_safetensors=True,
                    local_files_only=local_files_only,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    proxies=proxies,
                    token=token,
                    revision=revision,
                    subfolder=subfolder,
                    user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
                    allow_pickle=False,
                )
            except SafetensorError as e:
                raise ValueError(
                    f"Could not read the LoRA weights ({_describe(source, weight_name, subfolder)}) as a safetensors "
                    f"file; it may be truncated, corrupted or not a safetensors file at all: {e}"
                ) from e

        not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
        if not_tensors:
            raise ValueError(f"LoRA state dict values must be tensors; these are not: {not_tensors}")
        if not state_dict:
            raise ValueError("The LoRA state dict is empty.")
        dora = sorted(k for k in state_dict if "dora_scale" in k or "lora_magnitude_vector" in k)
        if dora:
            raise ValueError(f"DoRA LoRAs are not supported for Ruyi; the file has DoRA keys: {dora[:5]}...")

        return (state_dict, metadata) if return_lora_metadata else state_dict

    @require_peft_backend
    @_on_uncompiled_transformer  # (group offloading is re-applied to the pipeline's components: the model inside)
    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Dict[str, torch.Tensor]],
        adapter_name: Optional[str] = None,
        hotswap: bool = False,
        **kwargs,
    ) -> None:
        r"""
        Loads a LoRA into `self.transformer` as a PEFT adapter and activates it.

        Both the diffusers/PEFT format and the original Ruyi format (`lora_unet_*` keys) are accepted. An original
        LoRA loaded with weight 1 equals the original `merge_lora(..., multiplier=1)`; use `set_adapters(name, w)`
        (or `fuse_lora(lora_scale=w)`) for another multiplier, or `attention_kwargs={"scale": w}` per call.

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                See [`~RuyiLoraLoaderMixin.lora_state_dict`].
            adapter_name (`str`, *optional*):
                The adapter's name (to refer to it in `set_adapters`, `delete_adapters`, ...); `default_{i}` if
                omitted.
            hotswap (`bool`, defaults to `False`):
                Replace the weights of the already loaded adapter `adapter_name` in place (no recompilation with
                `torch.compile`); see [`~loaders.peft.PeftAdapterMixin.load_lora_adapter`].
            low_cpu_mem_usage (`bool`, *optional*):
                Skip the random initialisation of the adapter weights before loading them.
            kwargs:
                The other arguments of [`~RuyiLoraLoaderMixin.lora_state_dict`] (`weight_name`, `subfolder`, ...).

        Raises:
            `ValueError`: when the file cannot be read or any key does not map onto the transformer (the message
                lists the keys); nothing is loaded then.
        """
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", _LOW_CPU_MEM_USAGE_DEFAULT_LORA)
        check_bool("hotswap", hotswap)
        check_bool("low_cpu_mem_usage", low_cpu_mem_usage)
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = pretrained_model_name_or_path_or_dict.copy()

        kwargs["return_lora_metadata"] = True
        state_dict, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        self.load_lora_into_transformer(
            state_dict,
            transformer=getattr(self, self.transformer_name),
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=self,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @_on_uncompiled_transformer
    def set_adapters(
        self,
        adapter_names: Union[List[str], str],
        adapter_weights: Optional[Union[float, Dict, List[float], List[Dict]]] = None,
    ) -> None:
        r"""
        [`~loaders.lora_base.LoraBaseMixin.set_adapters`], with its arguments checked first: `adapter_names` are
        loaded adapters, each named once; each weight is a finite number (`fuse_lora(lora_scale=...)` refuses the
        same: a NaN weight would give a NaN video), `None`, or a dict `{"transformer": number}` (Ruyi has no other
        LoRA component and no per-block weights).
        """
        names = self._checked_adapter_names("adapter_names", adapter_names)
        if len(set(names)) != len(names):
            raise ValueError(f"`adapter_names` names an adapter twice: {names}.")

        def check(value: Any) -> None:
            if isinstance(value, dict):
                unknown = sorted(repr(key) for key in value if key != self.transformer_name)
                if unknown:
                    raise ValueError(
                        f"`adapter_weights` names no LoRA component of the pipeline: {', '.join(unknown)}; use "
                        f"{{{self.transformer_name!r}: weight}} or a number."
                    )
                if value.get(self.transformer_name) is not None:
                    check_real("adapter_weights", value[self.transformer_name])
            elif value is not None:
                check_real("adapter_weights", value)

        if isinstance(adapter_weights, (list, tuple)):
            if len(adapter_weights) != len(names):
                raise ValueError(
                    f"`adapter_weights` has {len(adapter_weights)} entries for {len(names)} adapters; give one each."
                )
            for weight in adapter_weights:
                check(weight)
        else:
            check(adapter_weights)
        if isinstance(adapter_weights, tuple):  # diffusers expands lists only
            adapter_weights = list(adapter_weights)
        # PEFT keeps the names as its active adapters and edits them as a list later.
        return super().set_adapters(adapter_names if isinstance(adapter_names, str) else names, adapter_weights)

    @_on_uncompiled_transformer
    def delete_adapters(self, adapter_names: Union[List[str], str]) -> None:
        r"""[`~loaders.lora_base.LoraBaseMixin.delete_adapters`]; names that are not loaded are refused (PEFT would
        ignore them)."""
        self._checked_adapter_names("adapter_names", adapter_names)
        return super().delete_adapters(adapter_names)

    def _checked_adapter_names(self, argument: str, adapter_names: Any) -> List[str]:
        """``adapter_names`` (one name or a non-empty list of them) as a list, each one loaded."""
        names = [adapter_names] if isinstance(adapter_names, str) else adapter_names
        if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
            raise TypeError(f"`{argument}` must be an adapter name or a list of them, got {adapter_names!r}.")
        if not names:
            raise ValueError(f"`{argument}` is empty; name at least one adapter.")
        loaded = set(getattr(getattr(self, self.transformer_name, None), "peft_config", None) or {})
        unknown = sorted(set(names) - loaded)
        if unknown:
            raise ValueError(f"`{argument}` {unknown} are not loaded; the loaded adapters are {sorted(loaded)}.")
        return list(names)

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict: Dict[str, torch.Tensor],
        transformer: torch.nn.Module,
        adapter_name: Optional[str] = None,
        _pipeline=None,
        low_cpu_mem_usage: bool = False,
        hotswap: bool = False,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> None:
        r"""
        Loads LoRA tensors (either format) into `transformer` as a PEFT adapter.

        Args:
            state_dict (`Dict[str, torch.Tensor]`):
                Original-format keys (`lora_unet_*`), or diffusers/PEFT keys with or without the `transformer.` prefix.
            transformer ([`RuyiTransformer3DModel`]):
                The model to add the adapter to.
            adapter_name (`str`, *optional*):
                The adapter's name; `default_{i}` if omitted.
            low_cpu_mem_usage (`bool`, defaults to `False`):
                Skip the random initialisation of the adapter weights.
            hotswap (`bool`, defaults to `False`):
                Replace an existing adapter's weights in place.
            metadata (`dict`, *optional*):
                The adapter's saved `LoraConfig` values (`lora_alpha`, `r`, patterns...). Ignored for original-format
                LoRAs, whose ranks and alphas come from the file.

        Original-format adapters are kept in float32 whatever the transformer's dtype (except when hot-swapping), so
        that `fuse_lora(lora_scale=w)` gives the weights of the original `merge_lora(..., multiplier=w)` bit for bit.
        """
        _check_adapter_name(adapter_name)
        # A `torch.compile`d transformer: its modules are the wrapped model's, named without `_orig_mod.`.
        transformer = getattr(transformer, "_orig_mod", transformer)
        original = is_original_lora_state_dict(state_dict)
        if original:
            state_dict, lora_config = convert_original_lora_state_dict(
                state_dict, transformer, prefix=cls.transformer_name, return_metadata=True
            )
            # `load_lora_adapter` takes the metadata keyed like the tensors, with the component's prefix.
            metadata = {f"{cls.transformer_name}.{key}": value for key, value in lora_config.items()}
        else:
            state_dict = _check_peft_lora_state_dict(state_dict, transformer, cls.transformer_name)
            prefix = f"{cls.transformer_name}."
            if metadata and not any(key.startswith(prefix) for key in metadata):
                # A file of `transformer.save_lora_adapter()`: tensors and config without the prefix. The tensors got
                # it above; `load_lora_adapter` keeps only the config keys that have it too.
                metadata = {prefix + key: value for key, value in metadata.items()}
            if metadata:
                check_lora_metadata(metadata, state_dict, cls.transformer_name)
            if not metadata and any(key.endswith(_PEFT_EMBEDDING_SUFFIXES) for key in state_dict):
                # diffusers infers the ranks from the `lora_B` keys alone: an Embedding's would be guessed wrong.
                raise ValueError(
                    "Cannot load this LoRA: it adapts Embedding layers (`lora_embedding_A/B`) and carries no LoRA "
                    "config; save it with `transformer_lora_adapter_metadata=peft_config.to_dict()` (or pass the "
                    "metadata) so that their ranks are known."
                )
        _check_no_fused_targets(state_dict, transformer, cls.transformer_name)
        _check_no_fp8_targets(state_dict, transformer, cls.transformer_name)
        if adapter_name is None:
            # The first `default_{i}` not taken (diffusers counts the adapters of one layer only, so LoRAs of other
            # modules got a name already in use).
            taken = set(getattr(transformer, "peft_config", None) or {})
            adapter_name = next(f"default_{i}" for i in range(len(taken) + 1) if f"default_{i}" not in taken)
        # The original merges its LoRAs in float32 (`merge_lora(..., dtype=torch.float32)`): its adapters are kept in
        # float32, with the file's values, so that `fuse_lora` rounds the merged weight once, as the original does.
        # A hot-swap (or `enable_lora_hotswap`'s padded ranks) keeps the dtypes and shapes a compiled model was built on.
        float32_adapter = (
            original and not hotswap and getattr(transformer, "_prepare_lora_hotswap_kwargs", None) is None
        )

        logger.info(f"Loading {cls.transformer_name}.")
        # The upcast must happen while offloading hooks are off (they keep their own copies of the parameters), so
        # this pauses them around both steps instead of letting `load_lora_adapter` pause them around its own.
        with _offloading_paused(_pipeline if float32_adapter else None):
            transformer.load_lora_adapter(
                state_dict,
                prefix=cls.transformer_name,
                network_alphas=None,
                adapter_name=adapter_name,
                metadata=metadata,
                _pipeline=None if float32_adapter else _pipeline,
                low_cpu_mem_usage=low_cpu_mem_usage,
                hotswap=hotswap,
            )
            if float32_adapter:
                _load_adapter_in_float32(transformer, adapter_name, state_dict, prefix=cls.transformer_name)
        if hotswap:
            config = (
                lora_config
                if original
                else {k[len(cls.transformer_name) + 1 :]: v for k, v in (metadata or {}).items()}
            )
            _set_scalings(transformer, adapter_name, config, state_dict, cls.transformer_name)

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: Union[str, os.PathLike],
        transformer_lora_layers: Optional[Dict[str, Union[torch.nn.Module, torch.Tensor]]] = None,
        is_main_process: bool = True,
        weight_name: Optional[str] = None,
        save_function: Optional[Callable] = None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata: Optional[Union[Dict[str, Any], "LoraConfig"]] = None,
        original_format: bool = False,
    ) -> None:
        r"""
        Saves transformer LoRA weights as `save_directory/pytorch_lora_weights.safetensors`, in the diffusers format or
        (`original_format=True`) in the original Ruyi format.

        Args:
            save_directory (`str` or `os.PathLike`):
                The folder to write (created if needed).
            transformer_lora_layers (`Dict[str, torch.Tensor]` or `torch.nn.Module`):
                The adapter's tensors, e.g. `peft.get_peft_model_state_dict(pipe.transformer)`; keys are written with
                the `transformer.` prefix (keys that already have it, as `convert_original_lora_state_dict` gives
                them, are written as they are).
            is_main_process (`bool`, defaults to `True`):
                Whether this process writes the file (kept for API parity; pass `accelerator.is_main_process`).
            weight_name (`str`, *optional*):
                The file name, `pytorch_lora_weights.safetensors` by default.
            save_function (`Callable`, *optional*):
                Replaces `safetensors.torch.save_file` (called as `save_function(state_dict, path)`).
            safe_serialization (`bool`, defaults to `True`):
                Must be `True`: LoRA weights are always written as safetensors.
            transformer_lora_adapter_metadata (`dict` or `peft.LoraConfig`, *optional*):
                The adapter's `LoraConfig` (or it as a dict, `pipe.transformer.peft_config[name].to_dict()`), stored in
                the file's metadata so that loading restores `lora_alpha` (otherwise alpha defaults to the rank).
            original_format (`bool`, defaults to `False`):
                Write the original Ruyi format instead (`lora_unet__<module>.lora_down.weight` / `.lora_up.weight` /
                `.alpha`, see [`~loaders.original_checkpoint.convert_lora_state_dict_to_original`]), which the
                original `predict_i2v.py` and its ComfyUI nodes load; their merge then adds the delta this adapter
                adds. Its alphas come from `transformer_lora_adapter_metadata`, so pass it. The file is written
                whole or not at all, and diffusers-ruyi loads it back like any original-format LoRA.
        """
        if not safe_serialization:
            raise ValueError("diffusers-ruyi writes LoRA weights as safetensors only (`safe_serialization=True`).")
        if not transformer_lora_layers:
            raise ValueError("You must pass `transformer_lora_layers`.")
        if weight_name is not None and not weight_name.endswith(".safetensors"):
            raise ValueError(f"`weight_name` must end with .safetensors, got {weight_name!r}.")
        if transformer_lora_adapter_metadata is not None and not isinstance(transformer_lora_adapter_metadata, dict):
            from peft import LoraConfig

            if not isinstance(transformer_lora_adapter_metadata, LoraConfig):
                raise TypeError(
                    "`transformer_lora_adapter_metadata` must be a dict or a peft.LoraConfig, got "
                    f"{type(transformer_lora_adapter_metadata).__name__}."
                )
            transformer_lora_adapter_metadata = transformer_lora_adapter_metadata.to_dict()
        check_bool("original_format", original_format)
        check_bool("is_main_process", is_main_process)
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"`save_directory` must be a str or os.PathLike, got {type(save_directory).__name__}.")
        if os.path.exists(save_directory) and not os.path.isdir(save_directory):
            # diffusers would log it and write nothing.
            raise ValueError(f"`save_directory` {os.fspath(save_directory)!r} is a file, not a folder.")
        if original_format:
            if isinstance(transformer_lora_layers, torch.nn.Module):
                transformer_lora_layers = transformer_lora_layers.state_dict()
            tensors = convert_lora_state_dict_to_original(
                transformer_lora_layers, transformer_lora_adapter_metadata, prefix=cls.transformer_name
            )
            if not is_main_process:
                return
            if not transformer_lora_adapter_metadata:
                logger.warning(
                    "No `transformer_lora_adapter_metadata`: the original-format file gets alpha = rank (scaling 1), "
                    "not the adapter's lora_alpha / r. Pass `pipe.transformer.peft_config[name].to_dict()`."
                )
            os.makedirs(save_directory, exist_ok=True)
            path = os.path.join(save_directory, weight_name or LORA_WEIGHT_NAME_SAFE)
            # Written beside its final name (same file system, so the rename is atomic), with the same extension.
            partial = path[: -len(".safetensors")] + ".partial.safetensors"
            tensors = {key: value.detach().contiguous() for key, value in tensors.items()}
            try:
                if save_function is None:
                    save_file(tensors, partial, {"format": "pt"})
                else:
                    save_function(tensors, partial)
                os.replace(partial, path)
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
            logger.info(f"LoRA weights (original Ruyi format) saved in {path}")
            return
        if not is_main_process:  # diffusers' writer would save anyway
            return
        prefix = f"{cls.transformer_name}."
        if isinstance(transformer_lora_layers, dict):
            unprefixed = sorted(key for key in transformer_lora_layers if not key.startswith(prefix))
            if len(unprefixed) < len(transformer_lora_layers):
                # Already named as in a file (`convert_original_lora_state_dict`, `lora_state_dict`): written as they
                # are, not as `transformer.transformer.`, which no loader would find.
                if unprefixed:
                    raise ValueError(
                        f"`transformer_lora_layers` mixes keys with and without the {prefix!r} prefix (e.g. "
                        f"{unprefixed[0]!r}); give them all one way."
                    )
                transformer_lora_layers = {key[len(prefix) :]: value for key, value in transformer_lora_layers.items()}
            if any(key.startswith("lora_unet_") for key in transformer_lora_layers):
                raise ValueError(
                    "`transformer_lora_layers` holds original-format keys (`lora_unet_...`): convert them with "
                    "`convert_original_lora_state_dict(state_dict, pipe.transformer)` first, or pass "
                    "`original_format=True`."
                )
        metadata = transformer_lora_adapter_metadata
        if metadata and all(key.startswith(prefix) for key in metadata):
            # `lora_state_dict(..., return_lora_metadata=True)` names the config's fields so too.
            transformer_lora_adapter_metadata = {key[len(prefix) :]: value for key, value in metadata.items()}
        if transformer_lora_adapter_metadata:
            # Checked as loading checks it: a config that does not fit the tensors would write a file that does not
            # load back.
            tensors = transformer_lora_layers
            if isinstance(tensors, torch.nn.Module):
                tensors = tensors.state_dict()
            check_lora_metadata(
                {f"{prefix}{key}": value for key, value in transformer_lora_adapter_metadata.items()},
                {f"{prefix}{key}": value for key, value in tensors.items()},
                cls.transformer_name,
                action="save this LoRA",
            )
        cls._save_lora_weights(
            save_directory=save_directory,
            lora_layers={cls.transformer_name: transformer_lora_layers},
            lora_metadata={cls.transformer_name: transformer_lora_adapter_metadata},
            is_main_process=is_main_process,
            weight_name=weight_name or LORA_WEIGHT_NAME_SAFE,
            save_function=save_function,
            safe_serialization=True,
        )

    @_on_uncompiled_transformer
    def fuse_lora(
        self,
        components: List[str] = ["transformer"],
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: Optional[List[str]] = None,
        **kwargs,
    ) -> None:
        r"""
        Merges the active LoRA deltas into the transformer's weights (faster inference; undo with `unfuse_lora`).

        An original-format adapter fused with `lora_scale=w` gives the weights of the original `merge_lora(...,
        multiplier=w)`, in bfloat16 bit for bit (float32 product, one rounding; an Embedding adapter's product is
        PEFT's, float32 round-off apart). `lora_scale` scales every adapter, Embedding adapters included (PEFT's
        `scale_layer` skips those). To merge several LoRAs as the original does, fuse and `unload_lora_weights()` one
        file at a time: loading into fused layers makes PEFT unmerge them.

        Args:
            components (`List[str]`, defaults to `["transformer"]`): The components to fuse.
            lora_scale (`float`, defaults to 1.0): Multiplies the deltas (the original `merge_lora` multiplier).
            safe_fusing (`bool`, defaults to `False`): Check the fused weights for NaNs and refuse if any (nothing
                is left fused then).
            adapter_names (`List[str]`, *optional*): The adapters to fuse; all active ones by default.
        """
        if kwargs:
            raise TypeError(f"Unexpected argument(s) for `fuse_lora`: {sorted(kwargs)}.")
        check_real("lora_scale", lora_scale)
        check_bool("safe_fusing", safe_fusing)
        self._check_components(components)
        if adapter_names is not None:
            self._checked_adapter_names("adapter_names", adapter_names)
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in getattr(self, self.transformer_name).modules() if isinstance(m, BaseTunerLayer)]
        merged_before = [list(layer.merged_adapters) for layer in layers]
        scalings_before = [
            {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in getattr(layer, "scaling", {}).items()}
            for layer in layers
        ]
        # `lora_scale` is applied here as diffusers applies it (PEFT's `scale_layer`: each active adapter's scaling
        # times the scale, kept after the merge so that `unfuse_lora` subtracts the same delta), but to every LoRA
        # layer: `scale_layer` skips Embedding adapters (it looks in `lora_A` only), which fused at scale 1.
        if lora_scale != 1.0:
            for layer in layers:
                for name in layer.active_adapters:
                    if name in getattr(layer, "scaling", {}):
                        layer.scaling[name] *= lora_scale
        try:
            super().fuse_lora(
                components=components,
                lora_scale=1.0,
                safe_fusing=safe_fusing,
                adapter_names=adapter_names,
            )
        except ValueError:
            # PEFT merges layer by layer: those merged before the refused one are unmerged again, so that nothing is
            # left fused (a later `unload_lora_weights` would keep their deltas in the weights for good), and the
            # scalings are put back.
            for layer, before, scalings in zip(layers, merged_before, scalings_before):
                changed = list(layer.merged_adapters) != before
                if changed:
                    layer.unmerge()
                for name, value in scalings.items():
                    if isinstance(value, torch.Tensor):  # (a compiled hot-swap slot: the tensor in place)
                        layer.scaling[name].copy_(value)
                    else:
                        layer.scaling[name] = value
                if changed and before:  # fused again with the scalings they were fused with
                    layer.merge(adapter_names=before)
            raise

    @_on_uncompiled_transformer
    def unfuse_lora(self, components: List[str] = ["transformer"], **kwargs) -> None:
        r"""
        Reverses [`~RuyiLoraLoaderMixin.fuse_lora`]: subtracts the fused LoRA deltas from the transformer's weights.

        Args:
            components (`List[str]`, defaults to `["transformer"]`): The components to unfuse.
        """
        if kwargs:  # diffusers would ignore them: `adapter_names=` unfused every adapter
            raise TypeError(f"Unexpected argument(s) for `unfuse_lora`: {sorted(kwargs)} (it unfuses every adapter).")
        self._check_components(components)
        super().unfuse_lora(components=components)

    @_on_uncompiled_transformer
    def unload_lora_weights(self, *args, **kwargs) -> None:
        r"""[`~loaders.lora_base.LoraBaseMixin.unload_lora_weights`]."""
        return super().unload_lora_weights(*args, **kwargs)

    @_on_uncompiled_transformer
    def disable_lora(self) -> None:
        r"""[`~loaders.lora_base.LoraBaseMixin.disable_lora`]."""
        return super().disable_lora()

    @_on_uncompiled_transformer
    def enable_lora(self) -> None:
        r"""[`~loaders.lora_base.LoraBaseMixin.enable_lora`]."""
        return super().enable_lora()

    @_on_uncompiled_transformer
    def get_active_adapters(self) -> List[str]:
        r"""[`~loaders.lora_base.LoraBaseMixin.get_active_adapters`]."""
        return super().get_active_adapters()

    @_on_uncompiled_transformer
    def get_list_adapters(self) -> Dict[str, List[str]]:
        r"""[`~loaders.lora_base.LoraBaseMixin.get_list_adapters`]."""
        return super().get_list_adapters()

    @_on_uncompiled_transformer
    def set_lora_device(self, *args, **kwargs) -> None:
        r"""[`~loaders.lora_base.LoraBaseMixin.set_lora_device`]."""
        return super().set_lora_device(*args, **kwargs)

    def _check_components(self, components: Any) -> None:
        if not isinstance(components, (list, tuple)) or not all(isinstance(name, str) for name in components):
            raise TypeError(
                f"`components` must be a list of component names such as ['transformer'], got {components!r}."
            )
        unknown = sorted(set(components) - set(self._lora_loadable_modules))
        if unknown:
            raise ValueError(
                f"`components` {unknown} carry no LoRA; the LoRA components are {self._lora_loadable_modules}."
            )
