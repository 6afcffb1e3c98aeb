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
"""The Ruyi-Mini-7B denoiser: a HunyuanDiT-style video transformer with CLIP image conditioning.

Numerically equivalent to ``HunyuanTransformer3DModel`` of the original Ruyi code as Ruyi configures it
(``basic_block_type="basic"``, ``time_position_encoding=True``, ``after_norm=False``). Parameter names follow the
original checkpoint, so converting the original weights is (almost) the identity, see
``diffusers_ruyi.loaders.original_checkpoint``.
"""

import functools
import math
import numbers
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.activations import GEGLU, GELU
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import (
    HunyuanCombinedTimestepTextSizeStyleEmbedding,
    HunyuanDiTAttentionPool,
    PatchEmbed,
    PixArtAlphaTextProjection,
    apply_rotary_emb,
    get_2d_rotary_pos_embed_from_grid,
    get_2d_sincos_pos_embed,
)
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous, FP32LayerNorm
from diffusers.models.transformers.hunyuan_transformer_2d import AdaLayerNormShift
from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid
from diffusers.utils import logging
from diffusers.utils.torch_utils import maybe_allow_in_graph
from torch import nn

from .._validation import (
    autocast_enabled,
    check_attention_kwargs,
    check_casting_hooks_fit,
    check_input_dtype,
    check_int,
    check_real,
    check_tensor,
    compute_dtype,
    is_fp8_dtype,
)
from ..hooks.diffusers_caches import (
    check_cache_config,
    fill_cache_defaults,
    hooked_layers,
    register_current_timestep_hook,
    remove_current_timestep_hook,
)
from ..hooks.enhance_a_video import enhance_a_video_score
from ..hooks.skip_offload import LongSkipStack, RuyiSkipOffloadConfig
from ..hooks.teacache import RuyiTeaCacheConfig, apply_ruyi_teacache, remove_ruyi_teacache
from ..loaders.model_loading import RuyiModelLoadingMixin
from ..loaders.original_checkpoint import ORIGINAL_UNUSED_KEYS


logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

# Context parallelism: the video tokens are split once, before the first block, along the (frame-major) sequence, and
# every block gets the matching rows of the per-token RoPE table and the per-frame encoding, so each rank must hold
# whole frames (the context-parallel degree has to divide the number of latent frames).
_RUYI_CP_PLAN = {
    "blocks.0": {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
    },
    "blocks.*": {
        "image_rotary_emb": (
            ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
            ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
        ),
        "temporal_embedding": ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
    },
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}


# Ruyi's own (the original's PositionalEncoding): diffusers' sin/cos helpers concatenate instead of interleaving.
def _temporal_sincos_embedding(num_frames: int, dim: int, device: torch.device) -> torch.Tensor:
    """Transformer-style sin/cos encoding of the frame index, shape ``(num_frames, dim)``, in float32."""
    position = torch.arange(num_frames, device=device).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, device=device) * (-math.log(10000.0) / dim))
    angles = position * inv_freq
    # Interleave: even channels carry sin, odd channels carry cos.
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]


# The forward inputs that may be None (the others must be tensors).
_OPTIONAL_FORWARD_INPUTS = ("inpaint_latents", "clip_encoder_hidden_states", "clip_attention_mask")


# Adapted from diffusers.models.embeddings.get_2d_rotary_pos_embed (diffusers 0.31): its grid, which later versions
# changed, is what Ruyi was trained with; the table itself comes from diffusers' get_2d_rotary_pos_embed_from_grid.
class RuyiRotaryPosEmbed(nn.Module):
    r"""
    HunyuanDiT's 2D rotary embedding of the patch grid, the same for every frame, as the original Ruyi pipeline built it.

    The positions are the crop region of the `height/p x width/p` grid inside a `base_size / p` square
    ([`get_resize_crop_region_for_grid`]), sampled without the end point as diffusers 0.31 did; newer versions sample
    `linspace(start, stop * (n - 1) / n, n)`, which differs whenever the region does not start at 0 (every non-square
    Ruyi size).

    Args:
        attention_head_dim (`int`): Channels per head (a multiple of 4).
        patch_size (`int`): Spatial patch size.
        base_size (`int`, defaults to 64): The reference latent size: 512 pixels with an 8x VAE, whatever the model.
        cache_size (`int`, defaults to 8): How many (grid size, device) tables are kept.
    """

    def __init__(self, attention_head_dim: int, patch_size: int, base_size: int = 512 // 8, cache_size: int = 8):
        super().__init__()
        self.attention_head_dim = attention_head_dim
        self.patch_size = patch_size
        self.base_size = base_size // patch_size
        self.cache_size = cache_size
        self._cache: Dict[Tuple[int, int, str], Tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _positions(start: int, stop: int, num: int) -> torch.Tensor:
        # `np.linspace(start, stop, num, endpoint=False, dtype=np.float32)`, as diffusers 0.31; the float64 step is
        # computed on the CPU only, so devices without float64 are fine.
        step = (stop - start) / num
        return (start + torch.arange(num, dtype=torch.float64) * step).to(torch.float32)

    def frame_embedding(
        self, latent_height: int, latent_width: int, device: Optional[torch.device] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The float32 `(cos, sin)` tables of one frame, each `(height/p * width/p, head_dim)`; cached."""
        grid_height, grid_width = latent_height // self.patch_size, latent_width // self.patch_size
        key = (grid_height, grid_width, str(device))
        cached = self._cache.get(key)
        if cached is not None:
            return cached

        (top, left), (bottom, right) = get_resize_crop_region_for_grid((grid_height, grid_width), self.base_size)
        rows = self._positions(top, bottom, grid_height)
        cols = self._positions(left, right, grid_width)
        grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=0).reshape(2, 1, grid_height, grid_width)
        cos, sin = get_2d_rotary_pos_embed_from_grid(self.attention_head_dim, grid, use_real=True)
        rope = (cos.to(device), sin.to(device))

        if len(self._cache) >= self.cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = rope
        return rope

    def forward(self, hidden_states: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """`(cos, sin)` for every token of `hidden_states` `(batch, channels, frames, height, width)`, frame-major."""
        _, _, num_frames, height, width = hidden_states.shape
        cos, sin = self.frame_embedding(height, width, hidden_states.device)
        return cos.repeat(num_frames, 1), sin.repeat(num_frames, 1)


# ----------------------------------------------------------------------------------------------------------------
# Memory-lean elementwise steps (inference)
# ----------------------------------------------------------------------------------------------------------------

# At most this many elements per chunk in the chunked elementwise steps below: 64 MB per float32 temporary.
_CHUNK_ELEMENTS = 2**24


def _eager_inference(tensor: torch.Tensor) -> bool:
    """Whether an elementwise step over `tensor` may use preallocated outputs and in-place ops: no gradient is
    recorded for it, and the code runs eagerly (a compiled graph fuses the step into one kernel anyway)."""
    return not (torch.is_grad_enabled() and tensor.requires_grad) and not torch.compiler.is_compiling()


def _lean(tensor: torch.Tensor) -> bool:
    """Whether an elementwise step over `tensor` may run in chunks: eager inference on a tensor larger than one
    chunk."""
    return _eager_inference(tensor) and tensor.numel() > _CHUNK_ELEMENTS


def _chunk_tokens(tensor: torch.Tensor) -> int:
    """Tokens per chunk: the fewest chunks within the budget (at least one token each), of equal length (a short
    last chunk would leave the first one nearly as large as the whole tensor, and the lean step's output on top of
    it)."""
    tokens = tensor.shape[1]
    most = max(1, _CHUNK_ELEMENTS // (tensor.numel() // tokens))
    num_chunks = -(-tokens // most)
    return -(-tokens // num_chunks)


def _token_slices(tensor: torch.Tensor) -> Iterator[slice]:
    """Slices of the tokens (dim 1) of a `(batch, tokens, ...)` tensor for an elementwise step: chunks within the
    budget when it may run in chunks (`_lean`), else one slice of all tokens."""
    step = _chunk_tokens(tensor) if _lean(tensor) else tensor.shape[1]
    return (slice(start, start + step) for start in range(0, tensor.shape[1], step))


def _output_like(tensor: torch.Tensor) -> torch.Tensor:
    """An uninitialised output of `tensor`'s shape and dtype, contiguous as the plain steps' outputs are
    (`empty_like` would keep a transposed input's layout, e.g. the patch embedding's of a single frame, and the next
    matrix product would then round differently)."""
    return tensor.new_empty(tensor.shape)


def _map_token_chunks(fn, tensor: torch.Tensor) -> torch.Tensor:
    """`fn(tensor)` for a `(batch, tokens, ...)` tensor, computed chunk by chunk of tokens into one contiguous output
    of `tensor`'s shape and dtype.

    `fn` computes in float32 and rounds its result to the input's dtype. Each chunk is handed to it in float32 (an
    exact conversion), so it returns the float32 result and the copy into the output does the one rounding: no pass
    over the tensor beyond the plain step's.
    """
    out = _output_like(tensor)
    for rows in _token_slices(tensor):
        out[:, rows] = fn(tensor[:, rows].float())
    return out


def _mixed_precision_is_fast(x: torch.Tensor) -> bool:
    """Whether elementwise kernels may read `x` in its half precision and compute in float32 directly (CUDA), rather
    than after a float32 copy as diffusers makes (the CPU's mixed-dtype kernels are not vectorised: slower)."""
    return x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)


def _rotate_rows_into(
    out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, neg_sin_even: torch.Tensor, sin_odd: torch.Tensor
) -> None:
    """`out = x * cos + rotate_pairs(x) * sin`, computed as diffusers' `apply_rotary_emb` computes it (float32, one
    rounding to `out`'s dtype) in fewer passes over `x`. `rotate_pairs` maps each pair `(x0, x1)` to `(-x1, x0)`;
    `x1 * -sin` is `-x1 * sin` exactly (IEEE rounding is symmetric), so the negated table stands in for the negated
    copy of `x`, and the two halves are multiplied into one buffer instead of being stacked first."""
    wide = torch.promote_types(torch.float32, cos.dtype)
    converted = x.dtype != wide and not _mixed_precision_is_fast(x)
    if converted:
        x = x.to(wide)
    rotated = torch.empty(x.shape, dtype=wide, device=x.device)
    pairs, rotated_pairs = x.unflatten(-1, (-1, 2)), rotated.unflatten(-1, (-1, 2))
    torch.mul(pairs[..., 1], neg_sin_even, out=rotated_pairs[..., 0])
    torch.mul(pairs[..., 0], sin_odd, out=rotated_pairs[..., 1])
    if out.dtype == wide:
        torch.mul(x, cos, out=out)
        out.add_(rotated)
    else:  # one rounding, by the add's store into `out`; a converted copy is ours to overwrite
        torch.add(x.mul_(cos) if converted else x * cos, rotated, out=out)


def apply_rotary_emb_lean(x: torch.Tensor, rotary_emb: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """diffusers' `apply_rotary_emb` for `(batch, tokens, heads, head_dim)` inputs, with the same numbers
    (elementwise) in fewer passes over the tensor at inference (4 instead of 8 kernels; 2x faster in float32 on the
    CPU), and chunk by chunk of tokens for large tensors: without its three float32 temporaries of the whole tensor,
    which were 4.7 GB of the self-attention's 11 GB peak at 768x768x120."""
    if not _eager_inference(x):
        return apply_rotary_emb(x, rotary_emb, sequence_dim=1)
    cos, sin = (table.to(x.device) for table in rotary_emb)
    sin_pairs = sin.unflatten(-1, (-1, 2))
    # (tokens, 1, ...): broadcast over the heads.
    cos, neg_sin_even, sin_odd = cos[:, None], -sin_pairs[:, None, :, 0], sin_pairs[:, None, :, 1]
    out = _output_like(x)
    for rows in _token_slices(x):
        _rotate_rows_into(out[:, rows], x[:, rows], cos[rows], neg_sin_even[rows], sin_odd[rows])
    return out


class RuyiFP32LayerNorm(FP32LayerNorm):
    """diffusers' `FP32LayerNorm` (a LayerNorm computed in float32), chunk by chunk of tokens at inference: the same
    numbers (each row is normalized on its own), without two float32 copies of the whole input."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 3 or not _lean(inputs):
            return super().forward(inputs)
        return _map_token_chunks(super().forward, inputs)


# The dtypes whose rounding of the temporal tables the model can reproduce (`temporal_embedding_dtype`).
TEMPORAL_TABLE_DTYPES = (None, "bfloat16", "float16")
# What diffusers' `FeedForward` builds (it fails obscurely on any other name); the published model's is
# "gelu-approximate".
FEED_FORWARD_ACTIVATIONS = ("gelu", "gelu-approximate", "geglu", "geglu-approximate", "swiglu", "linear-silu")


class RuyiGELU(GELU):
    """diffusers' `GELU` (projection, then the activation) with the activation applied in place: the same numbers (the
    same kernel; autograd handles the in-place op), and at inference no second copy of the feed-forward's inner tensor,
    the block's widest (4.36x the model width).

    Made from the `GELU` that diffusers' `FeedForward` built, taking over its projection and approximation.
    """

    def __init__(self, gelu: GELU):
        nn.Module.__init__(self)  # not `GELU.__init__`, which would build and initialise a second projection
        self.proj = gelu.proj
        self.approximate = gelu.approximate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.gelu_(self.proj(hidden_states), approximate=self.approximate)


def _feed_forward_in_chunks(ff: nn.Module, hidden_states: torch.Tensor, dim: int, chunk_size: int) -> torch.Tensor:
    """`ff(hidden_states)`, computed `chunk_size` rows of `dim` at a time (the last chunk may be shorter); at inference
    the chunks are written into one output instead of concatenated, so the peak is one chunk's inner tensor."""
    chunks = hidden_states.split(chunk_size, dim=dim)
    if len(chunks) == 1:
        return ff(hidden_states)
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return torch.cat([ff(chunk) for chunk in chunks], dim=dim)
    out, start = None, 0
    for chunk in chunks:
        result = ff(chunk)
        if out is None:
            shape = list(result.shape)
            shape[dim] = hidden_states.shape[dim]
            out = result.new_empty(shape)
        out.narrow(dim, start, chunk.shape[dim]).copy_(result)
        start += chunk.shape[dim]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------


class RuyiAttnProcessor:
    """Attention with LayerNorm QK-norm and HunyuanDiT 2D RoPE, dispatched through `dispatch_attention_fn`.

    RoPE rotates the queries always and the keys only in self-attention (the keys of the text and CLIP
    cross-attentions carry no positions), exactly as HunyuanDiT does.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "RuyiAttention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        # A cross-attention called without a context attends to `hidden_states` (original behaviour for the CLIP
        # branch when no image features are given); it still skips RoPE on the keys.
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.fused_projections and not attn.is_cross_attention:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        elif attn.fused_projections:
            query = attn.to_q(hidden_states)
            key, value = attn.to_kv(context).chunk(2, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key = attn.to_k(context)
            value = attn.to_v(context)

        # (batch, seq, heads, head_dim): the layout `dispatch_attention_fn` expects.
        query = attn.norm_q(query.unflatten(2, (attn.heads, -1)))
        key = attn.norm_k(key.unflatten(2, (attn.heads, -1)))
        value = value.unflatten(2, (attn.heads, -1))
        # Enhance-A-Video (`apply_ruyi_enhance_a_video`): its score comes from the normalised, not yet rotated,
        # queries and keys, and scales the output. One run state shared by every block, so compiled blocks share
        # one graph.
        enhance = getattr(attn, "_ruyi_enhance_a_video", None)
        score = None
        if enhance is not None and enhance.active:
            score = enhance_a_video_score(query, key, enhance.num_frames, enhance.weight)

        if image_rotary_emb is not None:
            query = apply_rotary_emb_lean(query, image_rotary_emb)
            if not attn.is_cross_attention:
                key = apply_rotary_emb_lean(key, image_rotary_emb)

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            # Context parallelism only splits the video tokens, never a text/CLIP context; a cross-attention without
            # a context attends over the (split) video tokens, so it is parallel too.
            parallel_config=self._parallel_config if encoder_hidden_states is None else None,
        )
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states if score is None else hidden_states * score


class RuyiAttention(nn.Module, AttentionModuleMixin):
    """Multi-head attention with per-head LayerNorm on queries and keys (HunyuanDiT's QK-norm).

    Args:
        query_dim (`int`): Channels of the queries (and of the output).
        heads (`int`): Number of attention heads.
        dim_head (`int`): Channels per head.
        cross_attention_dim (`int`, *optional*): Channels of the context; `None` makes it a self-attention.
        bias (`bool`, defaults to `True`): Whether the projections have a bias.
        eps (`float`, defaults to `1e-6`): Epsilon of the QK LayerNorms.
        processor (`RuyiAttnProcessor`, *optional*): The attention processor; a new `RuyiAttnProcessor` by default.
    """

    _default_processor_cls = RuyiAttnProcessor
    _available_processors = [RuyiAttnProcessor]

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: Optional[int] = None,
        bias: bool = True,
        eps: float = 1e-6,
        processor: Optional[RuyiAttnProcessor] = None,
    ):
        super().__init__()
        self.heads = heads
        self.inner_dim = heads * dim_head
        self.use_bias = bias
        self.is_cross_attention = cross_attention_dim is not None
        kv_dim = cross_attention_dim if cross_attention_dim is not None else query_dim

        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = nn.Linear(kv_dim, self.inner_dim, bias=bias)
        self.to_v = nn.Linear(kv_dim, self.inner_dim, bias=bias)
        self.norm_q = nn.LayerNorm(dim_head, eps=eps)
        self.norm_k = nn.LayerNorm(dim_head, eps=eps)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, query_dim, bias=bias), nn.Dropout(0.0)])

        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def lora_projections(self) -> List[str]:
        """The names of ``to_q``/``to_k``/``to_v`` that carry LoRA adapters, merged or not. A fused projection
        (`fuse_projections`) is a copy of their weights at fusing time: it would leave unmerged adapters out, and
        keep merged ones after `unfuse_lora`, `disable_lora` or `unload_lora_weights`."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        # (`delete_adapters` leaves empty PEFT wrappers behind: those carry nothing.)
        return [
            name
            for name in ("to_q", "to_k", "to_v")
            if isinstance(getattr(self, name), BaseTunerLayer) and getattr(getattr(self, name), "lora_A", None)
        ]

    def fuse_projections(self) -> None:
        r"""diffusers' [`~models.attention.AttentionModuleMixin.fuse_projections`], refused while LoRA adapters sit
        on the projections it fuses (`fuse_lora()` then `unload_lora_weights()` first, to fuse them in for good)."""
        if not self.fused_projections and self.lora_projections():
            raise ValueError(
                f"Cannot fuse the QKV projections: {self.lora_projections()} carry LoRA adapters, which the fused "
                "projection would copy once and no longer follow. Call `fuse_lora()` then `unload_lora_weights()` "
                "first (the LoRA stays merged in the weights), or `unload_lora_weights()` alone to drop it."
            )
        super().fuse_projections()

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        **kwargs,
    ) -> torch.Tensor:
        return self.processor(self, hidden_states, encoder_hidden_states, image_rotary_emb, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Transformer block
# ----------------------------------------------------------------------------------------------------------------


class RuyiClipGate(GEGLU):
    """GELU-gated projection applied to the CLIP cross-attention output before it joins the residual stream.

    diffusers' `GEGLU` after a LayerNorm whose epsilon is the channel count: the original passes `dim` where LayerNorm
    expects `eps`. That is part of the trained model's math, so it is kept.
    """

    def __init__(self, dim: int):
        super().__init__(dim, dim)
        self.norm = RuyiFP32LayerNorm(dim, eps=float(dim), elementwise_affine=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(hidden_states))


@maybe_allow_in_graph
class RuyiTransformerBlock(nn.Module):
    """One Ruyi DiT block: temporal encoding, self-attention, text and CLIP cross-attention, feed-forward.

    Args:
        dim (`int`): Channels of the video tokens.
        num_attention_heads (`int`): Number of heads in every attention.
        cross_attention_dim (`int`): Channels of the text and (resampled) CLIP tokens.
        ff_inner_dim (`int`): Hidden size of the feed-forward network.
        activation_fn (`str`, defaults to `"gelu-approximate"`): Activation of the feed-forward network.
        skip (`bool`, defaults to `False`): Whether the block merges a long skip connection from an earlier block.
        norm_eps (`float`, defaults to `1e-6`): Epsilon of the LayerNorms.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        cross_attention_dim: int,
        ff_inner_dim: int,
        activation_fn: str = "gelu-approximate",
        skip: bool = False,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        head_dim = dim // num_attention_heads

        self.norm1 = AdaLayerNormShift(dim, eps=norm_eps)
        self.norm1.norm = RuyiFP32LayerNorm(dim, eps=norm_eps, elementwise_affine=True)
        self.attn1 = RuyiAttention(dim, heads=num_attention_heads, dim_head=head_dim)

        self.norm2 = RuyiFP32LayerNorm(dim, eps=norm_eps, elementwise_affine=True)
        self.attn2 = RuyiAttention(
            dim, heads=num_attention_heads, dim_head=head_dim, cross_attention_dim=cross_attention_dim
        )

        self.norm_clip = RuyiFP32LayerNorm(dim, eps=norm_eps, elementwise_affine=True)
        self.attn_clip = RuyiAttention(
            dim, heads=num_attention_heads, dim_head=head_dim, cross_attention_dim=cross_attention_dim
        )
        self.gate_clip = RuyiClipGate(dim)
        self.norm_clip_out = RuyiFP32LayerNorm(dim, eps=norm_eps, elementwise_affine=True)

        self.norm3 = RuyiFP32LayerNorm(dim, eps=norm_eps, elementwise_affine=True)
        self.ff = FeedForward(dim, activation_fn=activation_fn, inner_dim=ff_inner_dim, bias=True)
        if type(self.ff.net[0]) is GELU:  # the published "gelu-approximate": same parameters, a leaner activation
            self.ff.net[0] = RuyiGELU(self.ff.net[0])

        if skip:
            self.skip_norm = RuyiFP32LayerNorm(2 * dim, eps=norm_eps, elementwise_affine=True)
            self.skip_linear = nn.Linear(2 * dim, dim)
        else:
            self.skip_norm = None
            self.skip_linear = None

        # Feed-forward chunking (`set_chunk_feed_forward`), off by default.
        self._chunk_size: Optional[int] = None
        self._chunk_dim = 0

    def set_chunk_feed_forward(self, chunk_size: Optional[int], dim: int = 0) -> None:
        """Runs the feed-forward `chunk_size` rows of `dim` (0: batch, 1: tokens) at a time; `None` turns it off. See
        [`RuyiTransformer3DModel.enable_forward_chunking`]."""
        self._chunk_size = chunk_size
        self._chunk_dim = dim

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        clip_encoder_hidden_states: Optional[torch.Tensor] = None,
        temporal_embedding: Optional[torch.Tensor] = None,
        skip: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Runs the block.

        Args:
            hidden_states (`torch.Tensor`): Video tokens `(batch, frames * height * width, dim)`, frame-major.
            encoder_hidden_states (`torch.Tensor`): Text tokens `(batch, text_tokens, cross_attention_dim)`.
            temb (`torch.Tensor`): Conditioning vector `(batch, dim)`.
            image_rotary_emb (`Tuple[torch.Tensor, torch.Tensor]`, *optional*):
                RoPE `(cos, sin)`, each `(frames * height * width, head_dim)`.
            clip_encoder_hidden_states (`torch.Tensor`, *optional*): Resampled CLIP tokens.
            temporal_embedding (`torch.Tensor`, *optional*):
                `(frames, dim)` encoding added per frame; `None` for single-frame inputs (as the original).
            skip (`torch.Tensor`, *optional*): Long-skip input; required exactly when the block has `skip_linear`.

        Returns:
            `torch.Tensor`: The updated video tokens, same shape as `hidden_states`.
        """
        if self.skip_linear is not None:
            if skip is None:
                raise ValueError("This block merges a long skip connection, but `skip` is None.")
            hidden_states = self.skip_linear(self.skip_norm(torch.cat([hidden_states, skip], dim=-1)))

        if temporal_embedding is not None:
            batch_size, seq_len, dim = hidden_states.shape
            num_frames = temporal_embedding.shape[0]
            hidden_states = hidden_states.view(batch_size, num_frames, seq_len // num_frames, dim)
            hidden_states = (hidden_states + temporal_embedding[:, None, :]).view(batch_size, seq_len, dim)

        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states, temb), image_rotary_emb=image_rotary_emb)
        hidden_states = hidden_states + self.attn2(
            self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states, image_rotary_emb=image_rotary_emb
        )
        # One expression, so that no name keeps the CLIP attention's output alive during the feed-forward.
        hidden_states = hidden_states + self.norm_clip_out(
            self.gate_clip(
                self.attn_clip(
                    self.norm_clip(hidden_states),
                    encoder_hidden_states=clip_encoder_hidden_states,
                    image_rotary_emb=image_rotary_emb,
                )
            )
        )
        if self._chunk_size is None:
            hidden_states = hidden_states + self.ff(self.norm3(hidden_states))
        else:
            hidden_states = hidden_states + _feed_forward_in_chunks(
                self.ff, self.norm3(hidden_states), self._chunk_dim, self._chunk_size
            )
        return hidden_states


# ----------------------------------------------------------------------------------------------------------------
# Conditioning embeddings
# ----------------------------------------------------------------------------------------------------------------


# Adapted from diffusers.models.embeddings.HunyuanDiTAttentionPool: the forward calls the Linear layers, so LoRA and
# fp8/layerwise-casting hooks reach them.
class RuyiTextAttentionPool(HunyuanDiTAttentionPool):
    """HunyuanDiT's T5 pooler (the token mean attends over all tokens), calling its `nn.Linear` children.

    Adapted from `diffusers.models.embeddings.HunyuanDiTAttentionPool`, whose forward hands the projection weights to
    `F.multi_head_attention_forward`: LoRA layers and fp8/layerwise-casting hooks only take effect when the `Linear`
    modules are called. Same parameters, same math.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = torch.cat([hidden_states.mean(dim=1, keepdim=True), hidden_states], dim=1)
        hidden_states = hidden_states + self.positional_embedding.to(hidden_states.dtype)
        query = self.q_proj(hidden_states[:, :1]).unflatten(2, (self.num_heads, -1)).transpose(1, 2)
        key = self.k_proj(hidden_states).unflatten(2, (self.num_heads, -1)).transpose(1, 2)
        value = self.v_proj(hidden_states).unflatten(2, (self.num_heads, -1)).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(query, key, value)
        return self.c_proj(pooled.transpose(1, 2).flatten(2)).squeeze(1)


class RuyiResamplerAttention(nn.Module):
    """Multi-head attention with the parameter layout of `nn.MultiheadAttention` (`in_proj_*`, `out_proj`), on
    sequence-first inputs `(L, B, C)` as the original's.

    Keeps the original checkpoint keys and computes what the original's `nn.MultiheadAttention` call computes, in its
    order and memory layouts: the three input projections of the sequence-first tensors, the query scaled by
    `1 / sqrt(head_dim)`, a batched product, a softmax and a batched product (the original asks for the attention
    weights, so it does not fuse them), then `out_proj` on the `(L * B, C)` rows. In float32 SDPA would agree to
    round-off, but in bfloat16 every layout and rounding step shows, and this way the model stays bit for bit the
    original's. `out_proj` is called as a module, so that LoRA layers on it apply. It runs once per forward pass on
    `n_query` tokens: a fused kernel would save nothing.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        num_queries, batch, embed_dim = query.shape
        w_q, w_k, w_v = self.in_proj_weight.to(query.dtype).chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.to(query.dtype).chunk(3)

        def heads(x: torch.Tensor) -> torch.Tensor:  # (L, B, H * D) -> (B * H, L, D)
            return x.view(x.shape[0], batch * self.num_heads, -1).transpose(0, 1)

        query = heads(F.linear(query, w_q, b_q))
        key = heads(F.linear(key, w_k, b_k))
        value = heads(F.linear(value, w_v, b_v))
        weights = torch.bmm(query * math.sqrt(1.0 / query.shape[-1]), key.transpose(-2, -1)).softmax(dim=-1)
        hidden_states = torch.bmm(weights, value).transpose(0, 1).contiguous().view(num_queries * batch, embed_dim)
        return self.out_proj(hidden_states).view(num_queries, batch, -1)


class RuyiImageResampler(nn.Module):
    """Perceiver resampler: `n_query` learned queries attend once over the CLIP patch tokens.

    Args:
        num_queries (`int`): Number of output tokens; a perfect square.
        embed_dim (`int`): Output channels (the cross-attention width).
        num_heads (`int`): Number of attention heads.
        kv_dim (`int`): Channels of the CLIP tokens; projected to `embed_dim` without bias when they differ.
    """

    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int):
        super().__init__()
        grid_size = int(math.isqrt(num_queries))
        # A frozen parameter (not a buffer) because the original checkpoint stores it under `pos_embed`. Made in the
        # default dtype like every other weight, so a model built under a bf16 default runs in bf16 throughout.
        pos_embed = get_2d_sincos_pos_embed(embed_dim, grid_size, base_size=grid_size)
        self.pos_embed = nn.Parameter(pos_embed.float().to(torch.get_default_dtype()), requires_grad=False)
        self.query = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = RuyiResamplerAttention(embed_dim, num_heads)
        self.ln_q = nn.LayerNorm(embed_dim)
        self.ln_kv = nn.LayerNorm(embed_dim)

    def _key_positions(self, num_tokens: int) -> torch.Tensor:
        # The learned grid is resized (bicubic) to the CLIP patch grid; Ruyi's 16 queries meet 16x16 CLIP patches.
        source = math.isqrt(self.pos_embed.shape[0])
        target = math.isqrt(num_tokens)
        if source == target:
            return self.pos_embed
        grid = self.pos_embed.float().reshape(1, source, source, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(target, target), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).flatten(0, 2).to(self.pos_embed.dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        key_positions = self._key_positions(hidden_states.shape[1])
        # Sequence first, as the original: (B, L, C) -> (L, B, C); see `RuyiResamplerAttention` for why.
        hidden_states = self.ln_kv(self.kv_proj(hidden_states)).permute(1, 0, 2)
        query = self.ln_q(self.query).unsqueeze(1).repeat(1, hidden_states.shape[1], 1) + self.pos_embed.unsqueeze(1)
        output = self.attn(query, hidden_states + key_positions.unsqueeze(1), hidden_states)
        return output.permute(1, 0, 2)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def _attention_kwargs_checked(forward):
    """Checks `attention_kwargs` before `_lora_scaled` scales the LoRA layers with its "scale" (and drops any other
    key without a word)."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        check_attention_kwargs(kwargs.get("attention_kwargs"))
        return forward(self, *args, **kwargs)

    return wrapper


def _lora_scaled(forward):
    """diffusers' `apply_lora_scale("attention_kwargs")`, undone by restoring every LoRA layer's scalings as they were.
    diffusers divides them back (rounding) and, for a scale of 0, resets them to the adapters' `alpha / r`: a weight
    given with `set_adapters` was lost, and `unfuse_lora` of a fused adapter then took out another delta than it put
    in."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        attention_kwargs = kwargs.get("attention_kwargs")
        scale = 1.0
        if attention_kwargs is not None:
            kwargs["attention_kwargs"] = attention_kwargs = dict(attention_kwargs)  # the caller's dict is left as is
            scale = attention_kwargs.pop("scale", 1.0)
        tuners = sys.modules.get("peft.tuners.tuners_utils")  # no LoRA layer exists before peft is imported
        layers = (
            []
            if scale == 1.0 or tuners is None
            else [m for m in self.modules() if isinstance(m, tuners.BaseTunerLayer)]
        )
        # After `enable_lora_hotswap` the scalings are tensors that `scale_layer` changes in place: saved as copies
        # and put back in place (a compiled graph holds those very tensors).
        saved = [
            {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in layer.scaling.items()} for layer in layers
        ]
        for layer in layers:
            layer.scale_layer(scale)
        try:
            return forward(self, *args, **kwargs)
        finally:
            for layer, scaling in zip(layers, saved):
                for key, value in scaling.items():
                    current = layer.scaling.get(key)
                    if isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor):
                        current.copy_(value)
                    else:
                        layer.scaling[key] = value

    return wrapper


class RuyiTransformer3DModel(
    RuyiModelLoadingMixin, ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin
):
    r"""
    The Ruyi-Mini-7B image-to-video denoiser (HunyuanDiT blocks over space-time tokens, CLIP image conditioning).

    The input latents are concatenated with the inpainting latents (mask + masked video), patchified per frame and run
    through `num_layers` blocks with U-Net-like long skips (block `i > num_layers // 2` merges the output of block
    `num_layers - 1 - i`). Each block adds a sin/cos frame-index encoding, applies self-attention with 2D RoPE over
    space, cross-attention to the two text streams, gated cross-attention to resampled CLIP image tokens and a
    feed-forward network. The output has `out_channels` channels, the noise prediction followed by the learned sigma.

    The defaults are the published Ruyi-Mini-7B transformer (`transformer/config.json` of `IamCreateAI/Ruyi-Mini-7B`):
    16 heads x 176 = 2816 channels, 40 layers, MLP ratio 4.3637 (12288 hidden channels), CLIP tokens of 1024 channels
    and text streams of 77 x 1024 and 256 x 2048 as in HunyuanDiT: 7,186,781,312 parameters. Checkpoints always carry
    their own config.

    Args:
        num_attention_heads (`int`, defaults to 16): Number of attention heads.
        attention_head_dim (`int`, defaults to 176): Channels per head (a multiple of 4, for 2D RoPE).
        in_channels (`int`, defaults to 48): Channels of `hidden_states` plus `inpaint_latents`.
        out_channels (`int`, defaults to 32): Output channels (the prediction followed by the learned sigma).
        patch_size (`int`, defaults to 2): Spatial patch size.
        n_query (`int`, defaults to 16): Number of resampled CLIP tokens (a perfect square).
        projection_dim (`int`, defaults to 1024): Channels of the CLIP image tokens fed to the resampler.
        activation_fn (`str`, defaults to `"gelu-approximate"`): Feed-forward activation.
        sample_size (`int`, defaults to 128): Kept from the original config (a latent height/width); nothing reads
            it: there are no learned positions, and the pipeline takes the size from the image.
        num_layers (`int`, defaults to 40): Number of blocks: 1 or even, because of the long skips.
        mlp_ratio (`float`, defaults to 4.3637): Feed-forward hidden size as a multiple of the model width.
        cross_attention_dim (`int`, defaults to 1024): Channels of the first text stream and of the CLIP tokens.
        cross_attention_dim_t5 (`int`, defaults to 2048): Channels of the second (T5) text stream.
        pooled_projection_dim (`int`, defaults to 1024): Size of the pooled T5 vector in the conditioning MLP.
        text_len (`int`, defaults to 77): Tokens of the first text stream.
        text_len_t5 (`int`, defaults to 256): Tokens of the second text stream.
        temporal_embedding_dtype (`str`, *optional*): The dtype (`"bfloat16"` or `"float16"`) an original checkpoint
            stored its fixed temporal tables (`t_embed.pe`) in, set by `from_pretrained` when it finds them. The
            original adds the stored, rounded values, so the table is rounded the same way; in a bfloat16 run that
            changes nothing, in float32 it keeps parity with the original (about 1.5e-3 otherwise). `None`: exact.
    """

    _original_model_type = "transformer"
    # A model saved after `fuse_qkv_projections()` also holds its fused copies of to_q/to_k/to_v, which load unfused.
    _keys_to_ignore_on_load_unexpected = ORIGINAL_UNUSED_KEYS["transformer"] + [r"\.attn\w*\.to_q?kv\.(weight|bias)$"]
    _supports_gradient_checkpointing = True
    _no_split_modules = ["RuyiTransformerBlock"]
    _repeated_blocks = ["RuyiTransformerBlock"]
    # The inputs that hold the unconditional and the conditional batch, concatenated in that order, under
    # classifier-free guidance (FasterCache splits them to compute the conditional half only).
    _cfg_batched_input_names = (
        "hidden_states",
        "timestep",
        "encoder_hidden_states",
        "text_embedding_mask",
        "encoder_hidden_states_t5",
        "text_embedding_mask_t5",
        "image_meta_size",
        "style",
        "inpaint_latents",
        "clip_encoder_hidden_states",
        "clip_attention_mask",
    )
    _cp_plan = _RUYI_CP_PLAN
    # Small, precision-sensitive or hook-unfriendly modules stay in the model dtype under layerwise casting; the
    # default patterns already cover `pos_embed`, every `norm*` and `proj_out`.
    _skip_layerwise_casting_patterns = ["pos_embed", "time_extra_emb", "text_embedder", "clip_projection", "norm"]
    # `_keep_in_fp32_modules` stays None (an empty list would make diffusers refuse `low_cpu_mem_usage=False`): nothing
    # is forced to float32, as the original runs every weight in the compute dtype and upcasts only inside its FP32
    # LayerNorms / SiLUs, which these modules reproduce.

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 176,
        in_channels: int = 48,
        out_channels: int = 32,
        patch_size: int = 2,
        n_query: int = 16,
        projection_dim: int = 1024,
        activation_fn: str = "gelu-approximate",
        sample_size: int = 128,
        num_layers: int = 40,
        mlp_ratio: float = 4.3637,
        cross_attention_dim: int = 1024,
        cross_attention_dim_t5: int = 2048,
        pooled_projection_dim: int = 1024,
        text_len: int = 77,
        text_len_t5: int = 256,
        temporal_embedding_dtype: Optional[str] = None,
    ):
        super().__init__()
        # Types and ranges first: a bad one would fail deep inside a layer's constructor (a division by zero, a
        # negative dimension, diffusers' unknown-activation UnboundLocalError).
        for name, value in (
            ("num_attention_heads", num_attention_heads), ("attention_head_dim", attention_head_dim),
            ("in_channels", in_channels), ("out_channels", out_channels), ("patch_size", patch_size),
            ("n_query", n_query), ("projection_dim", projection_dim), ("sample_size", sample_size),
            ("num_layers", num_layers), ("cross_attention_dim", cross_attention_dim),
            ("cross_attention_dim_t5", cross_attention_dim_t5), ("pooled_projection_dim", pooled_projection_dim),
            ("text_len", text_len), ("text_len_t5", text_len_t5),
        ):  # fmt: skip
            check_int(name, value, minimum=1)
        check_real("mlp_ratio", mlp_ratio, low=0.0)
        if mlp_ratio * num_attention_heads * attention_head_dim < 1:
            raise ValueError(f"`mlp_ratio` must give a feed-forward width >= 1, got {mlp_ratio!r}.")
        if temporal_embedding_dtype not in TEMPORAL_TABLE_DTYPES:
            raise ValueError(
                f"`temporal_embedding_dtype` must be one of {TEMPORAL_TABLE_DTYPES}, got {temporal_embedding_dtype!r}."
            )
        if activation_fn not in FEED_FORWARD_ACTIVATIONS:
            raise ValueError(f"`activation_fn` must be one of {FEED_FORWARD_ACTIVATIONS}, got {activation_fn!r}.")
        if num_layers != 1 and (num_layers < 2 or num_layers % 2 != 0):
            # The original's rule: blocks 0 .. L/2-2 push, blocks L/2+1 .. L-1 pop; with an odd L >= 3 they would pop
            # one more than was pushed. One block has no skip at all.
            raise ValueError(
                f"`num_layers` must be 1 or an even number (long skips pair the blocks), got {num_layers}."
            )
        if attention_head_dim % 4 != 0:
            raise ValueError(f"`attention_head_dim` must be a multiple of 4 for 2D RoPE, got {attention_head_dim}.")
        if math.isqrt(n_query) ** 2 != n_query:
            raise ValueError(f"`n_query` must be a perfect square (the resampler uses a square grid), got {n_query}.")
        if cross_attention_dim % num_attention_heads != 0:
            raise ValueError(
                f"`cross_attention_dim` ({cross_attention_dim}) must be divisible by `num_attention_heads` "
                f"({num_attention_heads}): the CLIP resampler attends with that many heads."
            )
        if cross_attention_dim_t5 % 8 != 0:
            raise ValueError(
                f"`cross_attention_dim_t5` must be divisible by 8 (pooler heads), got {cross_attention_dim_t5}."
            )

        inner_dim = num_attention_heads * attention_head_dim
        self.inner_dim = inner_dim

        self.text_embedder = PixArtAlphaTextProjection(
            in_features=cross_attention_dim_t5,
            hidden_size=cross_attention_dim_t5 * 4,
            out_features=cross_attention_dim,
            act_fn="silu_fp32",
        )
        # Replaces the embeddings of masked-out text tokens.
        self.text_embedding_padding = nn.Parameter(torch.randn(text_len + text_len_t5, cross_attention_dim))

        # Applied to every frame on its own (frames are folded into the batch); no learned positions.
        self.pos_embed = PatchEmbed(
            patch_size=patch_size, in_channels=in_channels, embed_dim=inner_dim, pos_embed_type=None
        )
        self.rope = RuyiRotaryPosEmbed(attention_head_dim, patch_size)
        self.time_extra_emb = HunyuanCombinedTimestepTextSizeStyleEmbedding(
            inner_dim,
            pooled_projection_dim=pooled_projection_dim,
            seq_len=text_len_t5,
            cross_attention_dim=cross_attention_dim_t5,
        )
        # Same parameters as diffusers' pooler, but calling its Linear layers (see `RuyiTextAttentionPool`).
        self.time_extra_emb.pooler = RuyiTextAttentionPool(
            text_len_t5, cross_attention_dim_t5, num_heads=8, output_dim=pooled_projection_dim
        )

        self.blocks = nn.ModuleList(
            [
                RuyiTransformerBlock(
                    dim=inner_dim,
                    num_attention_heads=num_attention_heads,
                    cross_attention_dim=cross_attention_dim,
                    ff_inner_dim=int(inner_dim * mlp_ratio),
                    activation_fn=activation_fn,
                    skip=index > num_layers // 2,
                )
                for index in range(num_layers)
            ]
        )

        # Replaces the resampled CLIP tokens of samples whose `clip_attention_mask` is 0.
        self.clip_padding = nn.Parameter(torch.randn(n_query, cross_attention_dim) * 0.02)
        self.clip_projection = RuyiImageResampler(
            n_query, embed_dim=cross_attention_dim, num_heads=num_attention_heads, kv_dim=projection_dim
        )

        self.norm_out = AdaLayerNormContinuous(inner_dim, inner_dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(inner_dim, patch_size * patch_size * out_channels, bias=True)

        self.gradient_checkpointing = False
        # Set by `diffusers_ruyi.hooks.apply_ruyi_skip_offload`.
        self._skip_offload_config: Optional[RuyiSkipOffloadConfig] = None

    # ------------------------------------------------------------------------------------------------------------
    # Speed and memory
    # ------------------------------------------------------------------------------------------------------------

    def enable_forward_chunking(self, chunk_size: Optional[int] = None, dim: int = 0) -> None:
        r"""
        Runs every block's feed-forward network in chunks ([feed-forward
        chunking](https://huggingface.co/blog/reformer#2-chunked-feed-forward-layers)), as diffusers' models do: its
        inner tensor, the widest of the block (4.36x the model width), then only exists one chunk at a time. Lowers
        the transformer's peak memory at some cost in speed; the outputs are the same up to the matrix-product
        kernels chosen for the smaller products.

        Args:
            chunk_size (`int`, *optional*):
                Rows of `dim` per chunk (the last chunk may be shorter). Defaults to 1: one sample (`dim=0`) or one
                token (`dim=1`) at a time; for tokens, a few thousand keep the products large.
            dim (`int`, defaults to 0):
                0 chunks over the batch (the classifier-free-guidance pair), 1 over the video tokens.

        Example:

        ```py
        >>> pipe.transformer.enable_forward_chunking(chunk_size=4096, dim=1)
        ```
        """
        if dim not in (0, 1):
            raise ValueError(f"`dim` must be 0 (batch) or 1 (tokens), got {dim!r}.")
        chunk_size = 1 if chunk_size is None else chunk_size
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk_size!r}.")
        for block in self.blocks:
            block.set_chunk_feed_forward(chunk_size, dim)

    def disable_forward_chunking(self) -> None:
        """Runs every block's feed-forward network in one piece again (the default)."""
        for block in self.blocks:
            block.set_chunk_feed_forward(None)

    def fuse_qkv_projections(self) -> None:
        r"""
        diffusers' [`~models.attention.AttentionMixin.fuse_qkv_projections`]: every attention computes its queries,
        keys and values (cross-attentions: keys and values) with one matrix multiplication. Refused, before anything
        is fused, while LoRA adapters sit on those projections, merged or not: the fused projections copy the weights
        once, so they would leave unmerged adapters out and keep merged ones after `unfuse_lora`, `disable_lora` or
        `unload_lora_weights`. Fuse the LoRA in for good first (`fuse_lora()` then `unload_lora_weights()`). Refused
        too for projections stored in fp8 (`apply_fp8_mode`): fuse before applying it.
        """
        adapted = [
            f"{name}.{projection}"
            for name, module in self.named_modules()
            if isinstance(module, RuyiAttention) and not module.fused_projections
            for projection in module.lora_projections()
        ]
        if adapted:
            raise ValueError(
                f"Cannot fuse the QKV projections: {len(adapted)} of them carry LoRA adapters (e.g. {adapted[:3]}), "
                "which the fused projections would copy once and no longer follow. Call `fuse_lora()` then "
                "`unload_lora_weights()` first (the LoRA stays merged in the weights), or `unload_lora_weights()` "
                "alone to drop it."
            )
        stored = [
            f"{name}.{projection}"
            for name, module in self.named_modules()
            if isinstance(module, RuyiAttention) and not module.fused_projections
            for projection in ("to_q", "to_k", "to_v")
            if is_fp8_dtype(getattr(getattr(module, projection, None), "weight", torch.empty(0)).dtype)
        ]
        if stored:  # concatenating fp8 weights fails deep inside torch, and the fused layer would have no fp8 hook
            raise ValueError(
                f"Cannot fuse the QKV projections: {len(stored)} of them are stored in fp8 (`apply_fp8_mode` or "
                f"`enable_layerwise_casting`, e.g. {stored[:3]}). Fuse them before applying the fp8 mode."
            )
        super().fuse_qkv_projections()

    def enable_layerwise_casting(self, *args, **kwargs) -> None:
        r"""[`~diffusers.ModelMixin.enable_layerwise_casting`]; the next call checks that the model's dtype is the
        compute dtype the hooks up-cast to."""
        self.__dict__.pop("_casting_hooks_checked", None)
        super().enable_layerwise_casting(*args, **kwargs)

    def load_lora_adapter(self, pretrained_model_name_or_path_or_dict, prefix="transformer", hotswap=False, **kwargs):
        r"""
        [`~loaders.peft.PeftAdapterMixin.load_lora_adapter`], held to the rules of the pipeline's `load_lora_weights`
        (which checks them before loading): an adapter on a `to_q`/`to_k`/`to_v` that `fuse_qkv_projections()`
        replaced (it would never run) or on a layer stored in fp8 (`apply_fp8_mode`: it would be made in fp8) is
        removed again and refused with a `ValueError`.
        """
        from peft.tuners.tuners_utils import BaseTunerLayer

        before = set(getattr(self, "peft_config", None) or {})
        try:
            super().load_lora_adapter(pretrained_model_name_or_path_or_dict, prefix=prefix, hotswap=hotswap, **kwargs)
        except Exception:
            if not hotswap:
                self._remove_partial_adapters(before)
            raise
        added = sorted(set(getattr(self, "peft_config", None) or {}) - before)
        if not added:
            return
        fused = [
            f"{name}.{projection}"
            for name, module in self.named_modules()
            if isinstance(module, RuyiAttention) and module.fused_projections
            for projection in module.lora_projections()
        ]
        stored = [
            name
            for name, module in self.named_modules()
            if isinstance(module, BaseTunerLayer)
            and any(adapter in getattr(module, "lora_A", {}) for adapter in added)
            and is_fp8_dtype(module.get_base_layer().weight.dtype)
        ]
        if fused or stored:
            self._remove_partial_adapters(before)
            what = (
                f"projections that `fuse_qkv_projections()` replaced ({fused[:3]}), whose adapters would never run"
                if fused
                else f"layers stored in fp8 ({stored[:3]}), where the adapters would be made in fp8"
            )
            raise ValueError(
                f"The LoRA adapts {what}. It was not loaded: load LoRAs before fusing the projections or applying "
                "the fp8 mode."
            )

    def _remove_partial_adapters(self, keep: set) -> None:
        # Every adapter the model did not have before goes again; with none before, the PEFT wrappers too, so the
        # model is as it was. PEFT wraps layer after layer: a load that fails part-way (diffusers cleans up only when
        # the model already had adapters) left the layers wrapped so far with the new adapter active, with
        # uninitialised weights under `low_cpu_mem_usage`, and with no entry in `peft_config`.
        from peft.tuners.tuners_utils import BaseTunerLayer

        stray = {
            name
            for module in self.modules()
            if isinstance(module, BaseTunerLayer)
            for table in ("lora_A", "lora_embedding_A")
            for name in getattr(module, table, {})
            if name not in keep
        }
        stray |= set(getattr(self, "peft_config", None) or {}) - keep
        if not stray:
            return
        if keep:
            self.delete_adapters(sorted(stray))
        else:
            self.unload_lora()

    def enable_cache(self, config) -> None:
        r"""
        Enables a caching technique: Ruyi's TeaCache or one of diffusers' caches.

        `RuyiTeaCacheConfig` applies the original Ruyi TeaCache; every other config goes to
        [`~diffusers.models.cache_utils.CacheMixin.enable_cache`], with what this model can tell filled in: a
        `current_timestep_callback` for FasterCache and Pyramid Attention Broadcast (the timestep of the call in
        progress) and FasterCache's classifier-free-guidance inputs (`_cfg_batched_input_names`). A cache that finds
        nothing to hook in this model raises a `ValueError` instead of silently doing nothing.

        Args:
            config ([`~diffusers_ruyi.hooks.RuyiTeaCacheConfig`] or a diffusers cache config): The cache to enable.

        Example:

        ```py
        >>> from diffusers import FasterCacheConfig
        >>> from diffusers_ruyi.hooks import RuyiTeaCacheConfig

        >>> pipe.transformer.enable_cache(RuyiTeaCacheConfig(threshold=0.10, skip_start_steps=3, skip_end_steps=1))
        >>> pipe.transformer.disable_cache()
        >>> pipe.transformer.enable_cache(FasterCacheConfig())
        ```
        """
        check_cache_config(config)
        if isinstance(config, RuyiTeaCacheConfig):
            if self.is_cache_enabled:
                raise ValueError(
                    f"Caching has already been enabled with {type(self._cache_config)}. To apply a new caching "
                    "technique, please disable the existing one first."
                )
            apply_ruyi_teacache(self, config)
            self._cache_config = config
            return

        config, timestep_hook = fill_cache_defaults(self, config)
        hooked_before = hooked_layers(self)
        super().enable_cache(config)
        if timestep_hook is not None:
            register_current_timestep_hook(self, timestep_hook)
        if not hooked_layers(self) - hooked_before:
            self.disable_cache()
            raise ValueError(
                f"{type(config).__name__} found no layer of {type(self).__name__} to apply to, so it would do nothing; "
                "it was not enabled."
            )

    def disable_cache(self) -> None:
        """Removes the cache enabled with [`enable_cache`] (TeaCache or a diffusers cache)."""
        if isinstance(self._cache_config, RuyiTeaCacheConfig):
            remove_ruyi_teacache(self)
            self._cache_config = None
            return
        super().disable_cache()
        remove_current_timestep_hook(self)

    # ------------------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------------------

    def _check_inputs(
        self,
        hidden_states: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        batched: Dict[str, Optional[torch.Tensor]],
        image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        """Refuses inputs the model cannot take, naming the argument, before any work: types, ranks, batch sizes and
        the sizes the config fixes. Reads shapes and dtypes only (no values: no device sync, nothing for
        `torch.compile` to break on)."""
        config = self.config
        check_tensor("hidden_states", hidden_states)
        if hidden_states.ndim != 5:
            raise ValueError(
                f"`hidden_states` must be 5D (batch, channels, frames, height, width), got shape "
                f"{tuple(hidden_states.shape)}."
            )
        batch_size, channels, num_frames, height, width = hidden_states.shape
        if batch_size < 1 or num_frames < 1 or height < config.patch_size or width < config.patch_size:
            raise ValueError(
                f"`hidden_states` must hold at least one sample of at least one frame of {config.patch_size}x"
                f"{config.patch_size} latents, got shape {tuple(hidden_states.shape)}."
            )
        for name, tensor in batched.items():
            if tensor is not None or name not in _OPTIONAL_FORWARD_INPUTS:
                check_tensor(name, tensor)
        # The inputs that meet a weight as they come (the masks, sizes and style ids are indices or are embedded).
        dtype = compute_dtype(self.pos_embed.proj)
        if not autocast_enabled(hidden_states) and self.__dict__.get("_casting_hooks_checked") != dtype:
            # Once per model dtype (a cast changes it) and storage change (`enable_layerwise_casting` and
            # `apply_fp8_mode` forget it): the walk over every module costs milliseconds.
            check_casting_hooks_fit(self, dtype, "transformer")
            self.__dict__["_casting_hooks_checked"] = dtype
        check_input_dtype("hidden_states", hidden_states, dtype, "transformer")
        for name in (
            "inpaint_latents",
            "encoder_hidden_states",
            "encoder_hidden_states_t5",
            "clip_encoder_hidden_states",
        ):
            if batched[name] is not None:
                check_input_dtype(name, batched[name], dtype, "transformer")
        inpaint_latents = batched["inpaint_latents"]
        if inpaint_latents is not None:
            if inpaint_latents.ndim != 5 or inpaint_latents.shape[2:] != hidden_states.shape[2:]:
                frames_height_width = ", ".join(map(str, hidden_states.shape[2:]))
                raise ValueError(
                    f"`inpaint_latents` must have shape (batch, channels, {frames_height_width}) like `hidden_states`, "
                    f"got {tuple(inpaint_latents.shape)}."
                )
            channels += inpaint_latents.shape[1]
        if channels != config.in_channels:
            raise ValueError(
                f"`hidden_states` + `inpaint_latents` have {channels} channels, but the model expects "
                f"in_channels={config.in_channels}."
            )
        if height % config.patch_size or width % config.patch_size:
            raise ValueError(
                f"The latent height and width of `hidden_states` ({height}x{width}) must be divisible by "
                f"patch_size={config.patch_size}."
            )
        if not isinstance(timestep, torch.Tensor):
            if isinstance(timestep, bool) or not isinstance(timestep, numbers.Real):
                raise TypeError(f"`timestep` must be a torch.Tensor or a number, got {type(timestep).__name__}.")
        elif timestep.ndim > 1 or (timestep.ndim == 1 and timestep.shape[0] not in (1, batch_size)):
            raise ValueError(
                f"`timestep` must be a scalar or have shape ({batch_size},) to match `hidden_states`, got "
                f"{tuple(timestep.shape)}."
            )

        # Every other input: its shape after the batch dimension, as (label, size): a size None is any size, a label
        # None shows the size alone.
        for name, dims in (
            (
                "encoder_hidden_states",
                (("text_len", config.text_len), ("cross_attention_dim", config.cross_attention_dim)),
            ),
            ("text_embedding_mask", (("text_len", config.text_len),)),
            (
                "encoder_hidden_states_t5",
                (("text_len_t5", config.text_len_t5), ("cross_attention_dim_t5", config.cross_attention_dim_t5)),
            ),
            ("text_embedding_mask_t5", (("text_len_t5", config.text_len_t5),)),
            ("image_meta_size", ((None, 6),)),
            ("style", ()),
            ("clip_encoder_hidden_states", (("tokens", None), ("projection_dim", config.projection_dim))),
            ("clip_attention_mask", (("n_query", config.n_query),)),
        ):
            tensor = batched[name]
            if tensor is None:
                continue
            if tensor.ndim != 1 + len(dims) or any(
                size is not None and got != size for got, (_, size) in zip(tensor.shape[1:], dims)
            ):
                expected = ", ".join(
                    ["batch"]
                    + [
                        label if size is None else str(size) if label is None else f"{label}={size}"
                        for label, size in dims
                    ]
                )
                raise ValueError(f"`{name}` must have shape ({expected}), got {tuple(tensor.shape)}.")
        for name, tensor in batched.items():
            if tensor is not None and tensor.shape[0] != batch_size:
                raise ValueError(
                    f"`{name}` has batch size {tensor.shape[0]}, but `hidden_states` has batch size {batch_size}."
                )
        style = batched["style"]
        if style.dtype not in (torch.int32, torch.int64):
            # An index into the style embedding; its values (0 for Ruyi) are not checked: that would need a sync.
            raise TypeError(f"`style` must be an int64 (or int32) tensor of style ids, got {style.dtype}.")
        clip_encoder_hidden_states = batched["clip_encoder_hidden_states"]
        inner_dim = config.num_attention_heads * config.attention_head_dim
        if clip_encoder_hidden_states is None and config.cross_attention_dim != inner_dim:
            # Without CLIP tokens the CLIP cross-attention reads the video tokens, whose width must then be the one
            # its keys take (the original fails here with a shape error).
            raise ValueError(
                f"`clip_encoder_hidden_states` is required: without it the CLIP attention attends to the video tokens "
                f"(width {inner_dim}), but its keys take cross_attention_dim={config.cross_attention_dim}."
            )
        if clip_encoder_hidden_states is not None:
            num_tokens = clip_encoder_hidden_states.shape[1]
            if num_tokens == 0 or math.isqrt(num_tokens) ** 2 != num_tokens:
                raise ValueError(
                    f"`clip_encoder_hidden_states` must hold a square grid of patch tokens (no class token), got "
                    f"{num_tokens} tokens."
                )
        if image_rotary_emb is not None:
            self._check_rotary_embedding(
                image_rotary_emb, num_frames, (height // config.patch_size) * (width // config.patch_size)
            )

    def _check_rotary_embedding(self, image_rotary_emb, num_frames: int, num_patches: int) -> None:
        is_pair = isinstance(image_rotary_emb, (tuple, list)) and len(image_rotary_emb) == 2
        if not is_pair or not all(isinstance(table, torch.Tensor) for table in image_rotary_emb):
            if isinstance(image_rotary_emb, (tuple, list)):
                got = "(" + ", ".join(type(table).__name__ for table in image_rotary_emb) + ")"
            else:
                got = type(image_rotary_emb).__name__
            raise TypeError(f"`image_rotary_emb` must be a (cos, sin) pair of tensors or None, got {got}.")
        head_dim = self.config.attention_head_dim
        cos, sin = image_rotary_emb
        for name, table in (("cos", cos), ("sin", sin)):
            if (
                table.ndim != 2
                or table.shape[0] not in (num_patches, num_frames * num_patches)
                or table.shape[1] != head_dim
            ):
                raise ValueError(
                    f"`image_rotary_emb` {name} must have shape ({num_patches}, {head_dim}) (one frame) or "
                    f"({num_frames * num_patches}, {head_dim}) (all frames), got {tuple(table.shape)}."
                )
        if cos.shape != sin.shape:
            raise ValueError(
                f"`image_rotary_emb` cos and sin must have the same shape, got {tuple(cos.shape)} and "
                f"{tuple(sin.shape)}."
            )

    def _expand_rotary_embedding(
        self,
        image_rotary_emb: Tuple[torch.Tensor, torch.Tensor],
        num_frames: int,
        num_patches: int,
        device: torch.device,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        cos, sin = image_rotary_emb  # shapes checked by `_check_rotary_embedding`
        if cos.shape[0] == num_patches:
            # Every frame shares the spatial table (tokens are frame-major).
            cos, sin = cos.repeat(num_frames, 1), sin.repeat(num_frames, 1)
        return cos.to(device), sin.to(device)

    @_attention_kwargs_checked
    @_lora_scaled
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: torch.Tensor,
        text_embedding_mask: torch.Tensor,
        encoder_hidden_states_t5: torch.Tensor,
        text_embedding_mask_t5: torch.Tensor,
        image_meta_size: torch.Tensor,
        style: torch.Tensor,
        inpaint_latents: Optional[torch.Tensor],
        clip_encoder_hidden_states: Optional[torch.Tensor] = None,
        clip_attention_mask: Optional[torch.Tensor] = None,
        image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        attention_kwargs: Optional[Dict[str, Any]] = None,
        return_dict: bool = True,
    ) -> Union[Transformer2DModelOutput, Tuple[torch.Tensor]]:
        """The denoiser forward pass.

        Args:
            hidden_states (`torch.Tensor`): Noisy latents `(batch, channels, frames, height, width)`.
            timestep (`torch.Tensor` or `float`): Diffusion timesteps `(batch,)` (or a scalar), in the latents'
                dtype; a plain number is made a tensor in that dtype.
            encoder_hidden_states (`torch.Tensor`): First text stream `(batch, text_len, cross_attention_dim)`.
            text_embedding_mask (`torch.Tensor`): `(batch, text_len)`, 1 for real tokens and 0 for padding.
            encoder_hidden_states_t5 (`torch.Tensor`):
                Second text stream `(batch, text_len_t5, cross_attention_dim_t5)`.
            text_embedding_mask_t5 (`torch.Tensor`): `(batch, text_len_t5)`, 1 for real tokens and 0 for padding.
            image_meta_size (`torch.Tensor`): `(batch, 6)`: original height/width, target height/width, crop top/left.
            style (`torch.Tensor`): `(batch,)` int64 (or int32) style ids; Ruyi always uses 0, the only id its
                style embedding has (the values are not checked: that would need a device sync).
            inpaint_latents (`torch.Tensor`): Mask and masked-video latents, concatenated to `hidden_states` along
                channels; `None` only if `hidden_states` already has `in_channels` channels.
            clip_encoder_hidden_states (`torch.Tensor`, *optional*): CLIP patch tokens `(batch, tokens,
                projection_dim)`, a square grid without the class token. When `None`, the CLIP cross-attention
                attends to the video tokens themselves, as the original does; that needs `cross_attention_dim` equal
                to the model width (`num_attention_heads * attention_head_dim`), which the published model's 1024
                is not, so there it is refused.
            clip_attention_mask (`torch.Tensor`, *optional*): `(batch, n_query)`; where 0 the resampled CLIP tokens
                are replaced by the learned `clip_padding`. `None` keeps them all.
            image_rotary_emb (`Tuple[torch.Tensor, torch.Tensor]`, *optional*): `(cos, sin)` for one frame
                `(height/p * width/p, attention_head_dim)` or for all frames `(frames * height/p * width/p,
                attention_head_dim)`. Computed by `self.rope` when `None`.
            attention_kwargs (`dict`, *optional*): Only `"scale"` is read: the LoRA scale (PEFT backend).
            return_dict (`bool`, defaults to `True`): Return a `Transformer2DModelOutput` instead of a tuple.

        Inputs of another type, rank, batch size or config-fixed size, empty ones, floating-point inputs in another
        dtype than the model computes in (outside `torch.autocast`) and `attention_kwargs` other than a finite
        `"scale"` raise a `TypeError` / `ValueError` naming the argument before any layer runs.

        Returns:
            [`~models.modeling_outputs.Transformer2DModelOutput`] or `tuple`: `sample` of shape `(batch,
            out_channels, frames, height, width)`: the prediction followed by the learned sigma channels.
        """
        self._check_inputs(
            hidden_states,
            timestep,
            {
                "encoder_hidden_states": encoder_hidden_states,
                "text_embedding_mask": text_embedding_mask,
                "encoder_hidden_states_t5": encoder_hidden_states_t5,
                "text_embedding_mask_t5": text_embedding_mask_t5,
                "image_meta_size": image_meta_size,
                "style": style,
                "inpaint_latents": inpaint_latents,
                "clip_encoder_hidden_states": clip_encoder_hidden_states,
                "clip_attention_mask": clip_attention_mask,
            },
            image_rotary_emb,
        )
        batch_size, _, num_frames, height, width = hidden_states.shape
        patch_size = self.config.patch_size
        grid_height, grid_width = height // patch_size, width // patch_size
        device = hidden_states.device

        if inpaint_latents is not None:
            hidden_states = torch.cat([hidden_states, inpaint_latents], dim=1)
        if not isinstance(timestep, torch.Tensor):
            # A plain number, as diffusers' UNets take it: in the latents' dtype, as the pipeline passes timesteps.
            timestep = torch.tensor(timestep, dtype=hidden_states.dtype, device=device)
        timestep = timestep.reshape(-1).expand(batch_size)

        if image_rotary_emb is None:
            image_rotary_emb = self.rope(hidden_states)
        else:
            image_rotary_emb = self._expand_rotary_embedding(
                image_rotary_emb, num_frames, grid_height * grid_width, device
            )

        # Patchify every frame: (B, C, F, H, W) -> (B * F, C, H, W) -> (B, F * h * w, D), frame-major.
        hidden_states = self.pos_embed(hidden_states.transpose(1, 2).flatten(0, 1))
        hidden_states = hidden_states.unflatten(0, (batch_size, num_frames)).flatten(1, 2)
        temb = self.time_extra_emb(
            timestep, encoder_hidden_states_t5, image_meta_size, style, hidden_dtype=hidden_states.dtype
        )

        # Both text streams, with learned embeddings in place of padded tokens.
        encoder_hidden_states = torch.cat([encoder_hidden_states, self.text_embedder(encoder_hidden_states_t5)], dim=1)
        text_mask = torch.cat([text_embedding_mask, text_embedding_mask_t5], dim=-1).unsqueeze(2).bool()
        encoder_hidden_states = torch.where(text_mask, encoder_hidden_states, self.text_embedding_padding)

        if clip_encoder_hidden_states is not None:
            clip_encoder_hidden_states = self.clip_projection(clip_encoder_hidden_states)
            if clip_attention_mask is not None:
                clip_mask = clip_attention_mask.unsqueeze(2).bool()
                clip_encoder_hidden_states = torch.where(clip_mask, clip_encoder_hidden_states, self.clip_padding)

        temporal_embedding = None
        if num_frames != 1:
            temporal_embedding = _temporal_sincos_embedding(num_frames, self.inner_dim, device)
            if self.config.temporal_embedding_dtype is not None:  # the stored tables' rounding (see the docstring)
                temporal_embedding = temporal_embedding.to(getattr(torch, self.config.temporal_embedding_dtype))
            temporal_embedding = temporal_embedding.to(hidden_states.dtype)

        # Long skips: blocks 0 .. L/2-2 push their outputs, blocks L/2+1 .. L-1 pop them (last in, first out).
        half = self.config.num_layers // 2
        skips = LongSkipStack(self._skip_offload_config)
        for index, block in enumerate(self.blocks):
            skip = skips.pop(hidden_states.device) if index > half else None
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                # diffusers' checkpoint function forwards positional arguments only; bind `skip` by keyword.
                hidden_states = self._gradient_checkpointing_func(
                    functools.partial(block, skip=skip),
                    hidden_states,
                    encoder_hidden_states,
                    temb,
                    image_rotary_emb,
                    clip_encoder_hidden_states,
                    temporal_embedding,
                )
            else:
                hidden_states = block(
                    hidden_states,
                    encoder_hidden_states,
                    temb,
                    image_rotary_emb,
                    clip_encoder_hidden_states,
                    temporal_embedding,
                    skip=skip,
                )
            if index < half - 1:
                skips.push(hidden_states)

        hidden_states = self.norm_out(hidden_states, temb.float())
        hidden_states = self.proj_out(hidden_states)

        # Unpatchify: (B, F*h*w, p*p*C) -> (B, C, F, h*p, w*p).
        out_channels = self.config.out_channels
        hidden_states = hidden_states.reshape(
            batch_size, num_frames, grid_height, grid_width, patch_size, patch_size, out_channels
        )
        output = hidden_states.permute(0, 6, 1, 2, 4, 3, 5).reshape(
            batch_size, out_channels, num_frames, height, width
        )

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)


# Block-level caches (FirstBlockCache, MagCache, TeaCache) read a block's arguments and outputs through this metadata.
TransformerBlockRegistry.register(
    RuyiTransformerBlock,
    TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
)
