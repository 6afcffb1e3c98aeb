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
"""The original Ruyi fp8 modes ("lite", "strong", "extreme") as diffusers layerwise casting.

The original converts the selected layers' weights to fp8 and relies on `torch.autocast` to compute in bf16/fp16. Here
the same layers get diffusers' `LayerwiseCastingHook`: stored in fp8, up-cast to `compute_dtype` for their forward.
"""

from typing import List, Optional

import torch
from diffusers.hooks.layerwise_casting import (
    _disable_peft_input_autocast,
    _is_layerwise_casting_active,
    apply_layerwise_casting_hook,
)
from torch import nn

from .._validation import check_bool, check_int, is_fp8_dtype


FP8_MODES = ("none", "lite", "strong", "extreme")

# The original's size rule: a Linear is converted when its weight has more than (lite) / at least (strong) this many
# elements. At the published Ruyi-Mini-7B size this is the feed-forward (lite) plus the square projections (strong).
RUYI_FP8_MIN_NUMEL = 2816**2


def _is_peft_layer(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer  # imported here: peft is slow to import and rarely needed

    return isinstance(module, BaseTunerLayer)


def select_fp8_modules(model: nn.Module, mode: str, min_numel: int = RUYI_FP8_MIN_NUMEL) -> List[str]:
    """Names of the modules the original Ruyi fp8 `mode` converts, in `model.named_modules()` order.

    * `"lite"`: every `nn.Linear` whose weight has more than `min_numel` elements.
    * `"strong"`: every `nn.Linear` whose weight has at least `min_numel` elements.
    * `"extreme"`: every leaf module that owns parameters, except embeddings, plain `nn.LayerNorm` (QK-norm) and 2D
      convolutions (the patch embedding). The float32 LayerNorms (`FP32LayerNorm`) are converted, as in the
      original; they up-cast their weights anyway.
    * `"none"`: nothing.

    No mode selects the CLIP resampler's attention output projection, which the original leaves alone (its
    `nn.MultiheadAttention` out-projection class is neither a plain `nn.Linear` nor a leaf it converts).

    PEFT (LoRA) layers and their sub-layers are never selected.

    Args:
        model (`nn.Module`): The transformer.
        mode (`str`): One of `"none"`, `"lite"`, `"strong"`, `"extreme"`.
        min_numel (`int`, defaults to `2816**2`): The size rule of `"lite"`/`"strong"`.

    Returns:
        `List[str]`: Module names.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(mode, str):
        raise TypeError(f"`mode` must be a str, one of {FP8_MODES}, got {type(mode).__name__}.")
    if mode not in FP8_MODES:
        raise ValueError(f"`mode` must be one of {FP8_MODES}, got {mode!r}.")
    check_int("min_numel", min_numel, minimum=0)
    if mode == "none":
        return []
    peft_prefixes = [name + "." for name, module in model.named_modules() if name and _is_peft_layer(module)]
    selected = []
    for name, module in model.named_modules():
        # The parts of a LoRA-wrapped layer stay as they are (the wrapper and the root are neither plain `Linear`s nor
        # leaves, so the filters below pass them over).
        if any(name.startswith(prefix) for prefix in peft_prefixes):
            continue
        # The original's resampler attention is an `nn.MultiheadAttention`, whose out-projection class is not a plain
        # `nn.Linear` and no leaf it converts: no mode touches it (here it is a plain `nn.Linear`).
        if name.endswith("clip_projection.attn.out_proj"):
            continue
        if mode in ("lite", "strong"):
            if type(module) is not nn.Linear:
                continue
            numel = module.weight.numel()
            if numel > min_numel or (mode == "strong" and numel == min_numel):
                selected.append(name)
        else:
            is_leaf = next(module.children(), None) is None
            has_parameters = next(module.parameters(recurse=False), None) is not None
            if not is_leaf or not has_parameters:
                continue
            if isinstance(module, (nn.Embedding, nn.Conv2d)) or type(module) is nn.LayerNorm:
                continue
            selected.append(name)
    return selected


def apply_fp8_mode(
    model: nn.Module,
    mode: str,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    compute_dtype: Optional[torch.dtype] = None,
    min_numel: int = RUYI_FP8_MIN_NUMEL,
    non_blocking: bool = False,
) -> List[str]:
    r"""
    Stores the layers selected by the original Ruyi fp8 `mode` in `fp8_dtype` with diffusers' layerwise casting.

    | `mode` | layers stored in fp8 | original `fp8_quant_mode` |
    |---|---|---|
    | `"none"` | none | `"none"` |
    | `"lite"` | `nn.Linear` with more than `min_numel` (2816²) weights | `"lite"` |
    | `"strong"` | `nn.Linear` with at least `min_numel` weights | `"strong"` |
    | `"extreme"` | every parameterised leaf except embeddings, QK LayerNorms, Conv2d, resampler out-proj | `"extreme"` |

    The original's `fp8_data_type="auto"` is `torch.float8_e4m3fn` and `"fp8_e5m2"` is `torch.float8_e5m2` (not
    recommended with `"extreme"`). Call this once, on a model in its compute dtype; it cannot be undone (reload the
    model instead), and it does not combine with `enable_layerwise_casting` on the same layers.

    Args:
        model (`nn.Module`): The transformer (a [`RuyiTransformer3DModel`]).
        mode (`str`): `"none"`, `"lite"`, `"strong"` or `"extreme"`.
        fp8_dtype (`torch.dtype`, defaults to `torch.float8_e4m3fn`): Storage dtype.
        compute_dtype (`torch.dtype`, *optional*): Dtype the layers run in; the model's current dtype by default.
        min_numel (`int`, defaults to `2816**2`): Size rule of `"lite"`/`"strong"`.
        non_blocking (`bool`, defaults to `False`): Non-blocking dtype casts.

    Every argument is checked before any layer is changed: a wrong type raises a `TypeError`, a bad value (an unknown
    mode, a non-fp8 `fp8_dtype`, a `compute_dtype` that is not a floating dtype of 16 bits or more, a negative
    `min_numel`) a `ValueError`; so does a selected layer that already has layerwise casting (`enable_layerwise_casting`,
    an earlier fp8 mode).

    Returns:
        `List[str]`: Names of the modules now stored in fp8.

    Example:

    ```py
    >>> from diffusers_ruyi.hooks import apply_fp8_mode

    >>> transformer = RuyiTransformer3DModel.from_pretrained(path, subfolder="transformer", dtype=torch.bfloat16)
    >>> converted = apply_fp8_mode(transformer, "strong", torch.float8_e4m3fn)
    ```
    """
    for name, dtype in (("fp8_dtype", fp8_dtype), ("compute_dtype", compute_dtype)):
        if not isinstance(dtype, torch.dtype) and not (name == "compute_dtype" and dtype is None):
            raise TypeError(f"`{name}` must be a torch.dtype, got {type(dtype).__name__} {dtype!r}.")
    if not is_fp8_dtype(fp8_dtype):
        raise ValueError(f"`fp8_dtype` must be torch.float8_e4m3fn or torch.float8_e5m2, got {fp8_dtype}.")
    if compute_dtype is not None and (not compute_dtype.is_floating_point or compute_dtype.itemsize < 2):
        raise ValueError(
            f"`compute_dtype` must be a floating dtype of at least 16 bits (torch.bfloat16, ...), got {compute_dtype}."
        )
    check_bool("non_blocking", non_blocking)
    names = select_fp8_modules(model, mode, min_numel)
    if not names:
        return names
    if compute_dtype is None:
        compute_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    modules = dict(model.named_modules())
    # diffusers refuses a second casting hook on a layer, but only when it gets there: check them all first, so that
    # no layer is left half converted.
    cast = [name for name in names if _is_layerwise_casting_active(modules[name])]
    if cast:
        raise ValueError(
            f"{len(cast)} of the layers fp8 mode {mode!r} selects already have layerwise casting (e.g. {cast[:3]}): "
            "apply_fp8_mode does not combine with `enable_layerwise_casting` or a second fp8 mode on the same "
            "layers. Reload the model to change its storage."
        )
    for name in names:
        apply_layerwise_casting_hook(modules[name], fp8_dtype, compute_dtype, non_blocking)
    model.__dict__.pop("_casting_hooks_checked", None)  # the Ruyi transformer checks its dtypes at the next call
    _disable_peft_input_autocast(model)
    return names
