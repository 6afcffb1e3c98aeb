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
"""Helpers shared by the Ruyi hooks: per-context state and the denoising-step bookkeeping."""

from typing import Optional, Tuple

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, StateManager


_DEFAULT_CONTEXT = "default"


class RuyiStateManager(StateManager):
    """A diffusers `StateManager` that also works when the model is called outside `cache_context(...)`.

    Inside `model.cache_context(name, ...)` the state is keyed by `name`, as for diffusers' own caches. Outside, a single
    `"default"` state is used instead of raising, so a bare `transformer(...)` call works too.
    """

    def get_state(self):
        try:
            return super().get_state()
        except ValueError:
            if _DEFAULT_CONTEXT not in self._state_cache:
                self._state_cache[_DEFAULT_CONTEXT] = self._state_cls(*self._init_args, **self._init_kwargs)
            return self._state_cache[_DEFAULT_CONTEXT]

    @property
    def context_name(self) -> str:
        """Name of the active cache context, or `"default"`."""
        return _DEFAULT_CONTEXT if self._context is None else self._context.name

    def step_info(self) -> Tuple[Optional[int], Optional[int]]:
        """`(step_index, num_inference_steps)` from the active cache context; `None` where the pipeline gave none."""
        if self._context is None:
            return None, None
        return self._context.step_index, self._context.num_inference_steps


class StepCounterState(BaseState):
    """Counts denoiser calls of one cache context, so hooks know the step when the pipeline does not tell them."""

    def __init__(self) -> None:
        self.call_count = 0

    def reset(self) -> None:
        self.call_count = 0


def resolve_step(
    state: StepCounterState, state_manager: RuyiStateManager, num_inference_steps: Optional[int]
) -> Tuple[int, Optional[int]]:
    """The current step and the number of steps, then advances the call counter.

    The pipeline's `cache_context(..., step_index=i, num_inference_steps=n)` wins; otherwise the step is the number of
    calls made in this context so far (one call per step, as Ruyi batches the guidance branches), wrapping around
    after `num_inference_steps` calls like the original implementation.
    """
    context_step, context_num_steps = state_manager.step_info()
    num_steps = context_num_steps if context_num_steps is not None else num_inference_steps
    step = context_step if context_step is not None else state.call_count
    state.call_count = step + 1
    if num_steps is not None and state.call_count >= num_steps:
        state.call_count = 0
    return step, num_steps


def check_no_context_parallel(block: torch.nn.Module, feature: str) -> None:
    """Raises a `ValueError` when ``block``'s self-attention runs context-parallel (`enable_parallelism`).

    Under context parallelism each rank holds only some of the frames, so a per-rank statistic (TeaCache's distance,
    Enhance-A-Video's cross-frame attention) would differ between ranks and from the single-process run, and ranks
    that decided differently would wait for each other forever in the attention's all-to-all.
    """
    processor = getattr(getattr(block, "attn1", None), "processor", None)
    if getattr(processor, "_parallel_config", None) is not None:
        raise ValueError(
            f"{feature} does not support context parallelism (`enable_parallelism`): its statistics would be computed "
            "per rank, from part of the frames. Remove it, or run the transformer without context parallelism."
        )


def remove_hook_keeping_later_ones(registry: HookRegistry, name: str, recurse: bool = False) -> None:
    """`registry.remove_hook(name)`, after which a hook registered later that replaces the forward (`new_forward`,
    as FasterCache's denoiser hook does) still runs. diffusers 0.42 hands the removed hook's forward to the next
    hook's `forward`, which for such a hook is its own `new_forward` (it calls `original_forward`), so that hook would
    silently stop running."""
    order = getattr(registry, "_hook_order", [])
    following = None
    if name in order and order.index(name) + 1 < len(order):
        following = registry._fn_refs[order.index(name) + 1]
        if following.original_forward is None:  # a plain hook: diffusers' hand-over is right
            following = None
    own_forward = following.forward if following is not None else None
    registry.remove_hook(name, recurse=recurse)
    if following is not None and following.forward is not own_forward:
        following.original_forward, following.forward = following.forward, own_forward


def move_to(tensor: Optional[torch.Tensor], device: Optional[torch.device]) -> Optional[torch.Tensor]:
    """`tensor.to(device)`, passing `None` (tensor or device) through.

    A copy between a CUDA device and the CPU does not block the host: torch puts the CPU side in pinned memory, which
    also copies faster. The values are those of a blocking copy because a tensor parked on the CPU is only read again
    by its copy back to the device, which the stream runs after the first one. Other devices copy blocking (MPS may
    fill the CPU side late).
    """
    if tensor is None or device is None:
        return tensor
    device = torch.device(device)
    return tensor.to(device, non_blocking=tensor.is_cuda or device.type == "cuda")
