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
"""diffusers' own caches on [`RuyiTransformer3DModel`]: the defaults they cannot find alone, and a check that they apply.

* FasterCache and Pyramid Attention Broadcast need a `current_timestep_callback`. Unless one is given, a hook on the
  transformer remembers the timestep of the call in progress and answers it.
* FasterCache splits the inputs that carry the unconditional and the conditional batch; the model names them in
  `_cfg_batched_input_names` (the pipeline batches `[unconditional, conditional]`, the order FasterCache expects).
* A cache that finds no layer to hook (e.g. `TextKVCacheConfig`, written for another architecture) would silently do
  nothing; it is removed again and a `ValueError` says so.
"""

import dataclasses
import numbers
from typing import Any, Optional, Set, Tuple

import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    HookRegistry,
    ModelHook,
    PyramidAttentionBroadcastConfig,
)

from .._validation import check_int, check_real
from ._common import remove_hook_keeping_later_ones


_CURRENT_TIMESTEP_HOOK = "ruyi_current_timestep_hook"


class CurrentTimestepHook(ModelHook):
    """On the transformer: remembers the timestep of the call in progress (the first sample's)."""

    def __init__(self) -> None:
        super().__init__()
        self.timestep: Optional[float] = None

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        # The transformer's second argument; one host sync per call rather than one per hooked layer.
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        if torch.is_tensor(timestep):
            self.timestep = float(timestep.reshape(-1)[0])
        elif isinstance(timestep, numbers.Real) and not isinstance(timestep, bool):
            self.timestep = float(timestep)
        else:
            self.timestep = None  # not a timestep: the transformer's forward refuses it with a TypeError
        return args, kwargs

    def current_timestep(self) -> float:
        if self.timestep is None:
            raise RuntimeError("The current timestep is only known while the transformer runs.")
        return self.timestep


def check_cache_config(config: Any) -> None:
    """`enable_cache`'s `config` must be a config object (diffusers' cache configs are dataclasses); diffusers itself
    refuses the ones it does not know."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(
            "`config` must be a cache config instance (RuyiTeaCacheConfig, or diffusers' FirstBlockCacheConfig, "
            f"FasterCacheConfig, ...), got {type(config).__name__}."
        )
    # SeaCache reads a flow-matching sigma in [0, 1] from each step's cache context; a DDPM schedule has none, and
    # without it diffusers runs it "fail-open": every block computed, only a log line says so.
    if type(config).__name__ == "SeaCacheConfig":  # by name: diffusers releases before SeaCache have no such class
        raise ValueError(
            "SeaCacheConfig needs each step's flow-matching sigma in [0, 1], which Ruyi's DDPM (v-prediction) "
            "schedule does not have; it would cache nothing. Use RuyiTeaCacheConfig, FirstBlockCacheConfig or "
            "MagCacheConfig."
        )
    # diffusers checks none of these: a bad one fails inside the first denoising step, or caches nothing at all.
    if isinstance(config, FirstBlockCacheConfig):
        check_real("FirstBlockCacheConfig.threshold", config.threshold, low=0.0)
    for field in dataclasses.fields(config):
        if field.name.endswith("_block_skip_range") or field.name == "unconditional_batch_skip_range":
            check_int(f"{type(config).__name__}.{field.name}", getattr(config, field.name), minimum=1, allow_none=True)


def fill_cache_defaults(module: torch.nn.Module, config: Any) -> Tuple[Any, Optional[CurrentTimestepHook]]:
    """A copy of `config` with the Ruyi defaults filled in, and the timestep hook to register after the cache's own."""
    timestep_hook = None
    changes = {}
    if isinstance(config, (FasterCacheConfig, PyramidAttentionBroadcastConfig)):
        if config.current_timestep_callback is None:
            timestep_hook = CurrentTimestepHook()
            changes["current_timestep_callback"] = timestep_hook.current_timestep
    if isinstance(config, FasterCacheConfig):
        default = FasterCacheConfig._unconditional_conditional_input_kwargs_identifiers
        if tuple(config._unconditional_conditional_input_kwargs_identifiers) == tuple(default):
            changes["_unconditional_conditional_input_kwargs_identifiers"] = list(module._cfg_batched_input_names)
    return (dataclasses.replace(config, **changes) if changes else config), timestep_hook


def register_current_timestep_hook(module: torch.nn.Module, hook: CurrentTimestepHook) -> None:
    # Registered last, so it runs before the cache's own hook on the transformer asks for the timestep.
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, _CURRENT_TIMESTEP_HOOK)


def remove_current_timestep_hook(module: torch.nn.Module) -> None:
    remove_hook_keeping_later_ones(HookRegistry.check_if_exists_or_initialize(module), _CURRENT_TIMESTEP_HOOK)


def hooked_layers(module: torch.nn.Module) -> Set[Tuple[str, str]]:
    """`(layer name, hook name)` of every diffusers hook below `module` (not on `module` itself)."""
    found = set()
    for name, submodule in module.named_modules():
        registry = getattr(submodule, "_diffusers_hook", None)
        if name and registry is not None:
            found.update((name, hook_name) for hook_name in registry.hooks)
    return found
