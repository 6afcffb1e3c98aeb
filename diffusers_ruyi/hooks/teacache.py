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
"""TeaCache for [`RuyiTransformer3DModel`], with the algorithm and defaults of the original Ruyi implementation.

[TeaCache](https://huggingface.co/papers/2411.19108) skips the whole block stack on steps where the timestep-modulated
input of the first block barely changed, and reuses the residual `norm_out(blocks(x)) - x` of the last computed step.
The change is the relative L1 distance of `blocks[0].norm1(x + temporal_encoding, temb)` to its value at the last
computed step, mapped through a polynomial fitted for Ruyi and accumulated over the skipped steps; when the sum reaches
`threshold` the step is computed again.

It is built from diffusers hooks, like diffusers' `FirstBlockCache`: a head hook on `blocks[0]` decides, the other
blocks pass their input through on skipped steps, and a hook on `norm_out` applies or records the residual.
"""

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.hooks.hooks import HookRegistry, ModelHook
from diffusers.utils import logging
from diffusers.utils.torch_utils import unwrap_module

from .._validation import check_bool, check_int, check_real, diffusers_hook
from ._common import RuyiStateManager, StepCounterState, check_no_context_parallel, move_to, resolve_step


logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

_TEACACHE_HEAD_HOOK = "ruyi_teacache_head_hook"
_TEACACHE_BLOCK_HOOK = "ruyi_teacache_block_hook"
_TEACACHE_OUTPUT_HOOK = "ruyi_teacache_output_hook"

# Coefficients (highest power first) of the polynomial that maps the raw relative L1 distance of the modulated input
# to the estimated change of the model output; fitted by the Ruyi authors for Ruyi-Mini-7B.
RUYI_TEACACHE_COEFFICIENTS = (-7.51185620e03, 2.32931511e03, -2.25610663e02, 9.39902237e00, -7.43067848e-02)


@dataclass
class RuyiTeaCacheConfig:
    r"""
    Configuration of TeaCache for [`RuyiTransformer3DModel`] (`transformer.enable_cache(RuyiTeaCacheConfig(...))`).

    The defaults are those of the original Ruyi `predict_i2v.py`.

    Args:
        threshold (`float`, defaults to `0.10`):
            Accumulated (rescaled) relative L1 change of the first block's modulated input below which a step reuses
            the cached residual: a finite number >= 0. Higher skips more steps; the original notes that 0.10 caches
            6-8 of 25 steps and 0.15 caches 10-12. `0.0` can still skip a step whose input barely changed (the fitted
            polynomial is below 0 near 0); `disable_cache()` runs without TeaCache.
        skip_start_steps (`int`, defaults to `3`):
            The first steps that are always computed, >= 0 (0 counts as 1, as in the original).
        skip_end_steps (`int`, defaults to `1`):
            The last steps that are always computed, >= 0 (0 counts as 1, as in the original).
        offload_to_cpu (`bool`, defaults to `True`):
            Keep the cached tensors (modulated input, block input and residual) on the CPU between steps, saving
            device memory at the cost of transfers (the original's `offload_cpu`).
        num_inference_steps (`int`, *optional*):
            Number of denoising steps. Only needed when the pipeline does not pass `num_inference_steps` to
            `cache_context` (`RuyiImageToVideoPipeline` does).
        coefficients (`Tuple[float, ...]`, defaults to the Ruyi fit):
            Polynomial (highest power first) applied to the raw relative L1 distance: at least one finite number.

    Every argument is checked here: a wrong type raises a `TypeError`, a value out of range a `ValueError`.
    """

    threshold: float = 0.10
    skip_start_steps: int = 3
    skip_end_steps: int = 1
    offload_to_cpu: bool = True
    num_inference_steps: Optional[int] = None
    coefficients: Tuple[float, ...] = RUYI_TEACACHE_COEFFICIENTS

    def __post_init__(self):
        check_real("threshold", self.threshold)
        if self.threshold < 0:
            raise ValueError(f"`threshold` must be >= 0, got {self.threshold}.")
        check_int("skip_start_steps", self.skip_start_steps, minimum=0)
        check_int("skip_end_steps", self.skip_end_steps, minimum=0)
        check_bool("offload_to_cpu", self.offload_to_cpu)
        check_int("num_inference_steps", self.num_inference_steps, minimum=1, allow_none=True)
        if isinstance(self.coefficients, (str, bytes)) or not isinstance(self.coefficients, Sequence):
            raise TypeError(
                f"`coefficients` must be a sequence of numbers (highest power first), got "
                f"{type(self.coefficients).__name__}."
            )
        if len(self.coefficients) == 0:
            raise ValueError("`coefficients` must hold at least one number (a constant polynomial), got none.")
        for index, coefficient in enumerate(self.coefficients):
            check_real(f"coefficients[{index}]", coefficient)
        self.coefficients = tuple(self.coefficients)


class RuyiTeaCacheState(StepCounterState):
    """Per cache-context TeaCache state, shared by all hooks of one transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.should_compute = True
        self.accumulated_distance = 0.0
        self.previous_modulated_input: Optional[torch.Tensor] = None
        self.block_input: Optional[torch.Tensor] = None
        self.residual: Optional[torch.Tensor] = None

    def clear_tensors(self) -> None:
        self.previous_modulated_input = None
        self.block_input = None
        self.residual = None

    def reset(self) -> None:
        super().reset()
        self.should_compute = True
        self.accumulated_distance = 0.0
        self.clear_tensors()


class _TeaCacheStats:
    """Which steps were skipped in the latest run of each cache context (kept across `reset_state`)."""

    def __init__(self) -> None:
        self.skipped_steps: Dict[str, List[int]] = {}
        self.computed_steps: Dict[str, List[int]] = {}

    def start(self, name: str) -> None:
        # Re-inserted, so that the dicts' last key is the context that ran last.
        self.skipped_steps.pop(name, None)
        self.computed_steps.pop(name, None)
        self.skipped_steps[name] = []
        self.computed_steps[name] = []

    def record(self, name: str, step: int, skipped: bool) -> None:
        target = self.skipped_steps if skipped else self.computed_steps
        target.setdefault(name, []).append(step)


def _rescale(coefficients: Tuple[float, ...], value: float) -> float:
    result = 0.0
    for coefficient in coefficients:
        result = result * value + coefficient
    return result


class _BlockHook(ModelHook):
    """A hook on a transformer block that reads the block's arguments through diffusers' block registry."""

    _metadata: Optional[TransformerBlockMetadata] = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._metadata = TransformerBlockRegistry.get(unwrap_module(module).__class__)
        return module

    def _argument(self, name: str, args: tuple, kwargs: dict):
        return self._metadata._get_parameter_from_args_kwargs(name, args, kwargs)


class RuyiTeaCacheHeadHook(_BlockHook):
    """On `blocks[0]`: decides whether this step runs the blocks and records the block input when it does."""

    _is_stateful = True

    def __init__(self, state_manager: RuyiStateManager, config: RuyiTeaCacheConfig, stats: _TeaCacheStats) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.config = config
        self.stats = stats

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_states = self._argument("hidden_states", args, kwargs)
        if self._should_compute(module, args, kwargs, hidden_states):
            return self.fn_ref.original_forward(*args, **kwargs)
        return hidden_states

    # The bookkeeping of a step runs outside `torch.compile`'s graphs: traced, its step counters would be guarded
    # values, and a compiled first block would recompile at every step until dynamo's limit.
    @torch.compiler.disable
    def _should_compute(self, module: torch.nn.Module, args: tuple, kwargs: dict, hidden_states: torch.Tensor) -> bool:
        check_no_context_parallel(module, "TeaCache")  # also when parallelism was enabled after the cache
        state: RuyiTeaCacheState = self.state_manager.get_state()
        step, num_steps = resolve_step(state, self.state_manager, self.config.num_inference_steps)
        if num_steps is None:
            raise ValueError(
                "TeaCache needs the number of denoising steps: set `RuyiTeaCacheConfig(num_inference_steps=...)` or "
                "call the transformer inside `cache_context(name, num_inference_steps=...)`."
            )
        if step == 0:
            self.stats.start(self.state_manager.context_name)

        # The original counts calls modulo the number of steps: a sampler with more calls than steps (PNDM) starts
        # its windows over after `num_steps` calls.
        phase = step % num_steps
        state.should_compute = self._decide(module, state, phase, num_steps, args, kwargs, hidden_states)
        self.stats.record(self.state_manager.context_name, step, skipped=not state.should_compute)
        if phase == num_steps - 1:
            # Last step of the run (always computed): free the cached tensors, as the original does.
            state.clear_tensors()
        return state.should_compute

    @torch.compiler.disable
    def _decide(self, module, state, step, num_steps, args, kwargs, hidden_states) -> bool:
        config = self.config
        start = max(1, config.skip_start_steps)
        end = max(1, config.skip_end_steps)
        if step < start - 1 or step >= num_steps - end:
            return True
        modulated = self._modulated_input(module, args, kwargs, hidden_states)
        if step == start - 1:
            # Last warm-up step: it becomes the reference for the distances.
            state.accumulated_distance = 0.0
            self._store(state, modulated, hidden_states)
            return True
        previous = move_to(state.previous_modulated_input, modulated.device)
        distance = ((modulated - previous).abs().mean() / previous.abs().mean()).item()
        state.accumulated_distance += _rescale(config.coefficients, distance)
        if state.accumulated_distance < config.threshold:
            return False
        state.accumulated_distance = 0.0
        self._store(state, modulated, hidden_states)
        return True

    def _modulated_input(self, module, args, kwargs, hidden_states: torch.Tensor) -> torch.Tensor:
        temb = self._argument("temb", args, kwargs)
        temporal_embedding = self._argument("temporal_embedding", args, kwargs)
        inputs = hidden_states
        if temporal_embedding is not None:
            batch_size, seq_len, dim = inputs.shape
            num_frames = temporal_embedding.shape[0]
            inputs = inputs.view(batch_size, num_frames, seq_len // num_frames, dim) + temporal_embedding[:, None, :]
            inputs = inputs.view(batch_size, seq_len, dim)
        return module.norm1(inputs, temb)

    def _store(self, state: RuyiTeaCacheState, modulated: torch.Tensor, block_input: torch.Tensor) -> None:
        device = torch.device("cpu") if self.config.offload_to_cpu else None
        state.previous_modulated_input = move_to(modulated, device)
        state.block_input = move_to(block_input, device)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


class RuyiTeaCacheBlockHook(_BlockHook):
    """On `blocks[1:]`: passes `hidden_states` through on skipped steps."""

    def __init__(self, state_manager: RuyiStateManager) -> None:
        super().__init__()
        self.state_manager = state_manager

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self.state_manager.get_state().should_compute:
            return self.fn_ref.original_forward(*args, **kwargs)
        return self._argument("hidden_states", args, kwargs)


class RuyiTeaCacheOutputHook(ModelHook):
    """On `norm_out`: returns `block input + cached residual` on skipped steps, records a new residual otherwise."""

    def __init__(self, state_manager: RuyiStateManager, config: RuyiTeaCacheConfig) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.config = config

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor, *args, **kwargs):
        state: RuyiTeaCacheState = self.state_manager.get_state()
        if not state.should_compute:
            # The blocks passed their input through, so `hidden_states` is the block input of this step. The sum is
            # laid out as the original's block input, tokens fastest (a transposed view of its patch embedding):
            # for such an input torch's linear in `proj_out` runs unfused (matmul, then bias), which rounds twice in
            # bfloat16, so only this layout gives the original's bits.
            output = hidden_states + move_to(state.residual, hidden_states.device)
            return output.transpose(1, 2).contiguous().transpose(1, 2)
        output = self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        if state.block_input is not None:
            residual = output - move_to(state.block_input, output.device)
            state.residual = move_to(residual, torch.device("cpu") if self.config.offload_to_cpu else None)
            state.block_input = None
        return output


def apply_ruyi_teacache(module: torch.nn.Module, config: RuyiTeaCacheConfig) -> None:
    r"""
    Applies TeaCache to a [`RuyiTransformer3DModel`] (prefer `transformer.enable_cache(config)`).

    Args:
        module (`torch.nn.Module`): The transformer; it needs `blocks` (a `ModuleList`) and `norm_out`.
        config ([`RuyiTeaCacheConfig`]): The TeaCache settings.

    Example:

    ```py
    >>> from diffusers_ruyi.hooks import RuyiTeaCacheConfig

    >>> pipe.transformer.enable_cache(RuyiTeaCacheConfig(threshold=0.10))
    >>> video = pipe(image, num_inference_steps=25).frames[0]
    >>> print(get_ruyi_teacache_skipped_steps(pipe.transformer))
    >>> pipe.transformer.disable_cache()
    ```
    """
    if not isinstance(config, RuyiTeaCacheConfig):
        raise TypeError(f"`config` must be a RuyiTeaCacheConfig, got {type(config).__name__}.")
    # A copy, checked again: a field set after construction is validated too, and later changes do not reach the hooks.
    config = dataclasses.replace(config)
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0 or not hasattr(module, "norm_out"):
        raise ValueError("TeaCache needs a Ruyi transformer with `blocks` (a ModuleList) and `norm_out`.")
    check_no_context_parallel(blocks[0], "TeaCache")
    if diffusers_hook(blocks[0], "group_offloading") is not None:
        # Hooks added later run first: TeaCache would read `blocks[0].norm1` before the offloading hook loads the
        # block (empty weights when offloaded to disk, a device mismatch on an accelerator).
        raise ValueError(
            "TeaCache must be enabled before block-level group offloading (`enable_group_offload(..., "
            'offload_type="block_level")`), as `ruyi-i2v` does: it reads the first block\'s norm before the block '
            "runs, which the offloading hook would not have loaded yet. Enable the cache first, then the offload."
        )
    # One cache at a time, whichever way it was applied: `enable_cache` keeps its record in `_cache_config`.
    enabled = getattr(module, "_cache_config", None)
    if enabled is not None or _has_teacache(module):
        what = type(enabled).__name__ if enabled is not None else "RuyiTeaCacheConfig"
        raise ValueError(
            f"A cache is already enabled ({what}); remove it first (`disable_cache()`) to apply TeaCache."
        )
    state_manager = RuyiStateManager(RuyiTeaCacheState)
    stats = _TeaCacheStats()
    HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(
        RuyiTeaCacheHeadHook(state_manager, config, stats), _TEACACHE_HEAD_HOOK
    )
    for block in blocks[1:]:
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            RuyiTeaCacheBlockHook(state_manager), _TEACACHE_BLOCK_HOOK
        )
    HookRegistry.check_if_exists_or_initialize(module.norm_out).register_hook(
        RuyiTeaCacheOutputHook(state_manager, config), _TEACACHE_OUTPUT_HOOK
    )
    HookRegistry.check_if_exists_or_initialize(module).invalidate_child_registries_cache()
    # On a CacheMixin model it is then the model's cache: `disable_cache()` removes it, `enable_cache` stacks none.
    if hasattr(module, "_cache_config"):
        module._cache_config = config


def _has_teacache(module: torch.nn.Module) -> bool:
    return diffusers_hook(module.blocks[0], _TEACACHE_HEAD_HOOK) is not None


def remove_ruyi_teacache(module: torch.nn.Module) -> None:
    """Removes the hooks added by [`apply_ruyi_teacache`]."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in (_TEACACHE_HEAD_HOOK, _TEACACHE_BLOCK_HOOK, _TEACACHE_OUTPUT_HOOK):
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()
    if isinstance(getattr(module, "_cache_config", None), RuyiTeaCacheConfig):  # `enable_cache`'s record of it
        module._cache_config = None


def get_ruyi_teacache_skipped_steps(module: torch.nn.Module, context: Optional[str] = None) -> List[int]:
    """The steps TeaCache skipped in the latest run of the transformer (the original's `skip_count` is their number).

    Args:
        module (`torch.nn.Module`): The transformer with TeaCache enabled.
        context (`str`, *optional*): Cache-context name (`"cond_uncond"` in `RuyiImageToVideoPipeline`); by default the
            only context, or the most recent one.

    Returns:
        `List[int]`: Indices of the skipped denoising steps.
    """
    hook = _get_head_hook(module)
    if not hook.stats.skipped_steps:
        return []
    if context is None:
        context = list(hook.stats.skipped_steps)[-1]
    return list(hook.stats.skipped_steps.get(context, []))


def ruyi_teacache_call_count(module: torch.nn.Module, context: Optional[str] = None) -> int:
    """The transformer calls of the latest run that TeaCache saw, computed or skipped (more than the steps with
    PNDM, which calls the transformer more than once in some steps); `context` as for
    [`get_ruyi_teacache_skipped_steps`]."""
    stats = _get_head_hook(module).stats
    if not stats.skipped_steps:
        return 0
    context = list(stats.skipped_steps)[-1] if context is None else context
    return len(stats.skipped_steps.get(context, [])) + len(stats.computed_steps.get(context, []))


def _get_head_hook(module: torch.nn.Module) -> RuyiTeaCacheHeadHook:
    blocks = getattr(module, "blocks", None)
    hook = diffusers_hook(blocks[0], _TEACACHE_HEAD_HOOK) if blocks is not None and len(blocks) else None
    if hook is None:
        raise ValueError("TeaCache is not enabled on this model.")
    return hook
