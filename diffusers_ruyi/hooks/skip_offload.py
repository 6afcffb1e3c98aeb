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
"""Long-skip offloading for [`RuyiTransformer3DModel`]: the original's `gpu_offload_steps`.

The first half of Ruyi's blocks hand their outputs to the second half through U-Net-like long skips; at full size up to
`num_layers / 2 - 1` activations wait on the device. With offloading they wait on another device (the CPU) instead and
come back just before the block that merges them. Outputs are unchanged.
"""

import dataclasses
import weakref
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch

from .._validation import check_device_available, check_int
from ._common import move_to


@dataclass
class RuyiSkipOffloadConfig:
    r"""
    Where and how the long-skip activations wait (see [`apply_ruyi_skip_offload`]).

    Args:
        group_size (`int`, defaults to 1):
            Activations are moved in groups of this size as they are produced, and a group is brought back when the
            blocks need it. 1 keeps at most one activation on the device; larger groups make fewer, bigger transfers
            and keep up to `group_size` on the device. The original offered 10, 7, 5 and 1.
        offload_device (`str` or `torch.device`, defaults to `"cpu"`): Where the activations wait; not `"meta"`,
            which keeps no data.

    Both are checked here: a wrong type raises a `TypeError`, a bad value a `ValueError`.
    """

    group_size: int = 1
    offload_device: Union[str, torch.device] = "cpu"

    def __post_init__(self):
        check_int("group_size", self.group_size)
        if self.group_size < 1:
            raise ValueError(
                f"`group_size` must be >= 1, got {self.group_size}; use `remove_ruyi_skip_offload` to turn it off."
            )
        if not isinstance(self.offload_device, (str, torch.device)):
            raise TypeError(
                f"`offload_device` must be a str or torch.device, got {type(self.offload_device).__name__}."
            )
        try:
            device = torch.device(self.offload_device)
        except RuntimeError as error:
            raise ValueError(
                f"`offload_device` must name a device such as 'cpu' or 'cuda:0', got {self.offload_device!r}."
            ) from error
        if device.type == "meta":
            # A meta tensor holds no data: the activations could not come back.
            raise ValueError("`offload_device` cannot be 'meta': activations parked there could not be brought back.")
        self.offload_device = device


class LongSkipStack:
    """Last-in-first-out store of the long-skip activations of one forward, optionally parked on another device.

    With a config, the activations are moved to `offload_device` in groups of `group_size` as they are pushed, and a
    whole group comes back when the device-side list runs empty (the original's `gpu_offload_steps` /
    `hidden_cache_size`). A tensor pushed again unchanged (blocks skipped by a cache pass their input through) reuses
    the copy already made instead of transferring it again.
    """

    def __init__(self, config: Optional[RuyiSkipOffloadConfig] = None):
        self.config = config
        self._on_device: List[torch.Tensor] = []
        self._offloaded: List[List[torch.Tensor]] = []
        self._last_offload: Optional[Tuple[weakref.ref, torch.Tensor]] = None
        self._last_onload: Optional[Tuple[weakref.ref, torch.Tensor]] = None

    def push(self, tensor: torch.Tensor) -> None:
        self._on_device.append(tensor)
        if self.config is not None and len(self._on_device) >= self.config.group_size:
            device = self.config.offload_device
            self._offloaded.append([self._move(t, device, "_last_offload") for t in self._on_device])
            self._on_device = []

    def pop(self, device: torch.device) -> torch.Tensor:
        if not self._on_device and self._offloaded:
            self._on_device = [self._move(t, device, "_last_onload") for t in self._offloaded.pop()]
        return self._on_device.pop()

    def _move(self, tensor: torch.Tensor, device: torch.device, memo: str) -> torch.Tensor:
        last = getattr(self, memo)
        if last is not None and last[0]() is tensor:
            return last[1]
        moved = move_to(tensor, device)
        # The source is held weakly so that the memo never keeps an activation alive on the device.
        setattr(self, memo, (weakref.ref(tensor), moved))
        return moved


def apply_ruyi_skip_offload(module: torch.nn.Module, config: Optional[RuyiSkipOffloadConfig] = None) -> None:
    r"""
    Keeps the long-skip activations of a [`RuyiTransformer3DModel`] on `config.offload_device` while they wait for their
    block. Outputs are unchanged; device memory drops by up to `num_layers / 2 - 1` activations at the cost of
    transfers. [`remove_ruyi_skip_offload`] turns it off.

    Args:
        module (`torch.nn.Module`): The transformer.
        config ([`RuyiSkipOffloadConfig`], *optional*): The settings; one activation at a time to the CPU by default.
            A checked copy is kept (later edits of `config` have no effect), and an `offload_device` this machine
            does not have (`cuda` without a GPU) is a `ValueError` here.

    Example:

    ```py
    >>> from diffusers_ruyi.hooks import RuyiSkipOffloadConfig, apply_ruyi_skip_offload

    >>> apply_ruyi_skip_offload(pipe.transformer, RuyiSkipOffloadConfig(group_size=5))  # original gpu_offload_steps=5
    ```
    """
    if config is not None and not isinstance(config, RuyiSkipOffloadConfig):
        raise TypeError(f"`config` must be a RuyiSkipOffloadConfig or None, got {type(config).__name__}.")
    if not hasattr(module, "_skip_offload_config"):
        raise ValueError(f"Long-skip offloading needs a RuyiTransformer3DModel, got {type(module).__name__}.")
    # A checked copy, as the caches take theirs: editing the caller's object afterwards changes nothing unchecked.
    config = dataclasses.replace(config) if config is not None else RuyiSkipOffloadConfig()
    check_device_available("offload_device", config.offload_device)  # here, not after the first blocks ran
    module._skip_offload_config = config


def remove_ruyi_skip_offload(module: torch.nn.Module) -> None:
    """Keeps the long-skip activations on the compute device again (the default)."""
    if hasattr(module, "_skip_offload_config"):
        module._skip_offload_config = None
