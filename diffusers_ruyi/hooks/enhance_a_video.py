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
"""Enhance-A-Video for [`RuyiTransformer3DModel`], as in the original Ruyi implementation.

[Enhance-A-Video](https://huggingface.co/papers/2502.07508) scales the output of every self-attention by a
"cross-frame intensity": for each spatial token and head, the softmax attention between the frames is computed from the
(QK-normed, not yet rotated) queries and keys; the mean of its off-diagonal entries times `num_frames + weight`,
clamped to at least 1, multiplies the attention output.

A hook on the transformer reads the number of frames from the input and decides, step by step, whether the call is
enhanced; every block's self-attention shares one run state (`attn1._ruyi_enhance_a_video`), which Ruyi's attention
processor reads to compute the score from its normalised queries and keys and to rescale its output. One state object
for all the blocks (not a hook per layer) keeps `compile_repeated_blocks` at one graph for all of them.
"""

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook

from .._validation import check_int, check_real, diffusers_hook
from ._common import (
    RuyiStateManager,
    StepCounterState,
    check_no_context_parallel,
    remove_hook_keeping_later_ones,
    resolve_step,
)


_EAV_ROOT_HOOK = "ruyi_enhance_a_video_root_hook"


@dataclass
class RuyiEnhanceAVideoConfig:
    r"""
    Configuration of Enhance-A-Video for [`RuyiTransformer3DModel`] (`apply_ruyi_enhance_a_video(transformer, config)`).

    The defaults are those of the original Ruyi `predict_i2v.py`.

    Args:
        weight (`float`, defaults to `1.0`):
            Enhancement strength added to the number of (latent) frames in the scale: a finite number >= 0. The
            original recommends values below 10, and below 5 for short or low-resolution videos.
        skip_start_steps (`int`, defaults to `0`): The first steps without enhancement, >= 0.
        skip_end_steps (`int`, defaults to `0`): The last steps without enhancement, >= 0.
        num_inference_steps (`int`, *optional*):
            Number of denoising steps (>= 1). Only needed with `skip_end_steps > 0` when the pipeline does not pass
            `num_inference_steps` to `cache_context` (`RuyiImageToVideoPipeline` does).

    Every argument is checked here: a wrong type raises a `TypeError`, a value out of range a `ValueError`.
    """

    weight: float = 1.0
    skip_start_steps: int = 0
    skip_end_steps: int = 0
    num_inference_steps: Optional[int] = None

    def __post_init__(self):
        check_real("weight", self.weight)
        if self.weight < 0:
            # The scale is clamped to >= 1 and the mean cross-frame attention is at most 1 / (frames - 1), so a
            # negative weight only pulls the scale towards that clamp, and from -1 on it is always 1: no enhancement.
            raise ValueError(
                f"`weight` must be >= 0, got {self.weight!r}: a negative weight can only weaken the scale towards its "
                "floor of 1 (from -1 on it never enhances); remove Enhance-A-Video to turn it off."
            )
        check_int("skip_start_steps", self.skip_start_steps, minimum=0)
        check_int("skip_end_steps", self.skip_end_steps, minimum=0)
        check_int("num_inference_steps", self.num_inference_steps, minimum=1, allow_none=True)


def enhance_a_video_score(
    query: torch.Tensor, key: torch.Tensor, num_frames: int, weight: float
) -> Optional[torch.Tensor]:
    """The Enhance-A-Video scale of one self-attention.

    Args:
        query (`torch.Tensor`): QK-normed queries `(batch, frames * tokens, heads, head_dim)`, frame-major.
        key (`torch.Tensor`): QK-normed keys, same shape.
        num_frames (`int`): Number of (latent) frames.
        weight (`float`): Enhancement weight.

    Returns:
        `torch.Tensor` or `None`: A float32 scalar >= 1, or `None` for a single frame (there is no cross-frame
        attention; the original would produce NaN there).
    """
    if num_frames < 2:
        return None
    batch_size, seq_len, heads, head_dim = query.shape
    tokens = seq_len // num_frames

    def per_token(x: torch.Tensor) -> torch.Tensor:
        # (B, T*S, N, C) -> (B*S, N, T, C): the frames of one spatial token and head.
        x = x.reshape(batch_size, num_frames, tokens, heads, head_dim).permute(0, 2, 3, 1, 4)
        return x.reshape(batch_size * tokens, heads, num_frames, head_dim)

    scores = (per_token(query) * head_dim**-0.5) @ per_token(key).transpose(-2, -1)
    probs = scores.to(torch.float32).softmax(dim=-1).reshape(-1, num_frames, num_frames)
    off_diagonal = ~torch.eye(num_frames, dtype=torch.bool, device=probs.device)
    mean_cross_frame = (probs * off_diagonal).sum(dim=(1, 2)) / (num_frames * num_frames - num_frames)
    return (mean_cross_frame.mean() * (num_frames + weight)).clamp(min=1)


class EnhanceAVideoRuntime:
    """The run state every enhanced self-attention reads (`attn1._ruyi_enhance_a_video`): whether this call is enhanced,
    the number of latent frames and the weight. Set by [`RuyiEnhanceAVideoRootHook`] before each transformer call."""

    def __init__(self, weight: float) -> None:
        self.active = False
        self.num_frames = 1
        self.weight = weight


class RuyiEnhanceAVideoRootHook(ModelHook):
    """On the transformer: reads the number of frames and decides whether this step is enhanced."""

    _is_stateful = True

    def __init__(
        self, state_manager: RuyiStateManager, config: RuyiEnhanceAVideoConfig, runtime: EnhanceAVideoRuntime
    ) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.config = config
        self.runtime = runtime

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        for block in module.blocks[:1]:  # also when parallelism was enabled after the hooks
            check_no_context_parallel(block, "Enhance-A-Video")
        # The transformer's first argument: the latents (batch, channels, frames, height, width).
        hidden_states = args[0] if args else kwargs["hidden_states"]
        step, num_steps = resolve_step(
            self.state_manager.get_state(), self.state_manager, self.config.num_inference_steps
        )
        if num_steps is None and self.config.skip_end_steps > 0:
            raise ValueError(
                "Enhance-A-Video with `skip_end_steps > 0` needs the number of denoising steps: set "
                "`RuyiEnhanceAVideoConfig(num_inference_steps=...)` or call the transformer inside "
                "`cache_context(name, num_inference_steps=...)`."
            )
        last = num_steps - self.config.skip_end_steps if num_steps is not None else float("inf")
        self.runtime.num_frames = hidden_states.shape[2]
        self.runtime.active = self.config.skip_start_steps <= step < last and self.runtime.num_frames > 1
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output):
        self.runtime.active = False
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self.runtime.active = False
        return module


def apply_ruyi_enhance_a_video(module: torch.nn.Module, config: RuyiEnhanceAVideoConfig) -> None:
    r"""
    Applies Enhance-A-Video to a [`RuyiTransformer3DModel`]; [`remove_ruyi_enhance_a_video`] takes it off again.

    Args:
        module (`torch.nn.Module`): The transformer; each of its `blocks` needs a self-attention `attn1` whose
            processor applies the score (`RuyiAttnProcessor` does; a processor of your own must read
            `attn._ruyi_enhance_a_video` the same way).
        config ([`RuyiEnhanceAVideoConfig`]): The settings.

    Example:

    ```py
    >>> from diffusers_ruyi.hooks import RuyiEnhanceAVideoConfig, apply_ruyi_enhance_a_video, remove_ruyi_enhance_a_video

    >>> apply_ruyi_enhance_a_video(pipe.transformer, RuyiEnhanceAVideoConfig(weight=1.0))
    >>> video = pipe(image).frames[0]
    >>> remove_ruyi_enhance_a_video(pipe.transformer)
    ```
    """
    if not isinstance(config, RuyiEnhanceAVideoConfig):
        raise TypeError(f"`config` must be a RuyiEnhanceAVideoConfig, got {type(config).__name__}.")
    # A copy, checked again: a field set after construction is validated too, and later changes do not reach the hooks.
    config = dataclasses.replace(config)
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ValueError("Enhance-A-Video needs a Ruyi transformer with `blocks` (a ModuleList).")
    for block in blocks[:1]:
        check_no_context_parallel(block, "Enhance-A-Video")
    if is_ruyi_enhance_a_video_enabled(module):
        raise ValueError("Enhance-A-Video is already applied; call `remove_ruyi_enhance_a_video` first.")
    attentions = [getattr(block, "attn1", None) for block in blocks]
    if not all(hasattr(attention, "processor") for attention in attentions):
        raise ValueError("Enhance-A-Video needs every block to have a self-attention `attn1` with a processor.")
    runtime = EnhanceAVideoRuntime(config.weight)
    state_manager = RuyiStateManager(StepCounterState)
    for attention in attentions:
        attention._ruyi_enhance_a_video = runtime
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(RuyiEnhanceAVideoRootHook(state_manager, config, runtime), _EAV_ROOT_HOOK)
    registry.invalidate_child_registries_cache()


def remove_ruyi_enhance_a_video(module: torch.nn.Module) -> None:
    """Removes the hooks added by [`apply_ruyi_enhance_a_video`]."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    remove_hook_keeping_later_ones(registry, _EAV_ROOT_HOOK)
    registry.invalidate_child_registries_cache()
    for block in getattr(module, "blocks", []):
        attention = getattr(block, "attn1", None)
        if attention is not None and hasattr(attention, "_ruyi_enhance_a_video"):
            del attention._ruyi_enhance_a_video


def is_ruyi_enhance_a_video_enabled(module: torch.nn.Module) -> bool:
    """Whether [`apply_ruyi_enhance_a_video`] hooks are attached to `module`."""
    return diffusers_hook(module, _EAV_ROOT_HOOK) is not None
