"""`AutoencoderKLRuyiCausal3D`: the causal 3D video VAE of Ruyi-Mini-7B (8x spatial, 4x temporal, 16 latent channels).

The network is the Magvit-style ``AutoencoderKLMagvit`` of the original Ruyi code. Its numerics depend on how frames
are grouped, so this port reproduces the original's grouping exactly, in both of the original's variants
(``compression_mode`` in the config):

* ``"slice"`` (``slice_compression_vae``, the published Ruyi-Mini-7B VAE). **Encoding** runs on independent slices
  of ``num_sample_frames_batch_size`` (8) frames, after the first frame alone when the frame count is odd. Inside a
  slice every 3D convolution pads time with one zero frame on each side and group norms pool statistics over the
  slice's frames. **Decoding** runs on chunks of ``num_latent_frames_batch_size`` (2) latent frames (after the
  first latent frame alone when the count is odd); ``conv_in`` and the mid block of a chunk also see the previous
  and the next chunk as context, and their output is cropped back to the chunk before the up blocks. Convolutions
  pad with zeros and each spatio-temporal upsampler doubles the chunk's frames (trilinear). A lone latent frame
  decodes to one image (no temporal upsampling).
* ``"cache"`` (``cache_compression_vae``). **Encoding** as above (the original runs the same code for both).
  **Decoding** runs on chunks of 2 latent frames (the last one holds what is left, possibly one) with causal temporal
  convolutions: the first chunk replicates its first frame as padding, later chunks are prefixed with the last frames
  the same convolution saw in the previous chunk (the *causal cache*, `RuyiCausalCache`, created per decode call and
  per tile, passed down as ``causal_cache`` and cleared before the call returns); every latent frame gives 4 frames.
  A lone latent frame decodes to one image, as in the slice variant.
"""

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.attention_processor import Attention
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import logging
from diffusers.utils.accelerate_utils import apply_forward_hook

from .._validation import (
    autocast_enabled,
    check_bool,
    check_input_dtype,
    check_int,
    check_real,
    compute_dtype,
)
from ..loaders.model_loading import RuyiModelLoadingMixin


logger = logging.get_logger(__name__)

_DOWN_BLOCK_TYPES = ("SpatialDownBlock3D", "SpatialTemporalDownBlock3D")
_UP_BLOCK_TYPES = ("SpatialUpBlock3D", "SpatialTemporalUpBlock3D")
_MID_BLOCK_ATTENTION_TYPES = ("spatial", "3d")
_COMPRESSION_MODES = ("cache", "slice")


class RuyiCausalCache:
    """The last input frames of every causal convolution, carried from one decoded chunk to the next.

    Convolutions read and write their slot in call order, which is the same for every chunk, so a slot index is
    enough to identify the layer. Call `begin_chunk` before each chunk and `clear` when the video is done.
    """

    def __init__(self) -> None:
        self._features: List[torch.Tensor] = []
        self._slot = 0

    def begin_chunk(self) -> None:
        self._slot = 0

    def read(self) -> Optional[torch.Tensor]:
        return self._features[self._slot] if self._slot < len(self._features) else None

    def write(self, features: torch.Tensor) -> None:
        if self._slot < len(self._features):
            self._features[self._slot] = features
        else:
            self._features.append(features)
        self._slot += 1

    def clear(self) -> None:
        self._features.clear()
        self._slot = 0


class RuyiCausalConv3d(nn.Conv3d):
    """A 3D convolution with two temporal padding modes.

    * ``causal_cache is None``: one zero frame on each side of the chunk (chunk-local, non-causal), which is how the
      original encodes and how it decodes a lone latent frame.
    * ``causal_cache`` given: causal. The input is prefixed with the ``kernel_t - 1`` frames this layer saw last (or
      its own first frame repeated, for the first chunk) and those frames are stored for the next chunk.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: Union[int, Tuple[int, int, int]] = 1,
        spatial_padding: int = 1,
    ):
        stride = stride if isinstance(stride, tuple) else (stride,) * 3
        super().__init__(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=(0, spatial_padding, spatial_padding),
        )
        self.temporal_context = self.kernel_size[0] - 1

    def _conv(self, hidden_states: torch.Tensor, padding: Tuple[int, int, int]) -> torch.Tensor:
        if hidden_states.device.type == "cpu" and hidden_states.dtype == self.weight.dtype == torch.float32:
            # PyTorch sends a CPU conv3d whose batch x channels x frames x height is at most 20480 (a rule made for
            # 2D inputs) to its reference kernel instead of oneDNN: 2-5x slower at the VAE's chunks of a few frames,
            # which the original's longer padded chunks escape. Same convolution, called on oneDNN directly; not under
            # CPU autocast, which only intercepts `F.conv3d` (the convolution must run in the autocast dtype), and not
            # on the channels-last tensors after the mid-block attention: there `F.conv3d` picks the original's kernel,
            # and its round-off with it (the medium published pipeline 3.4e-5 from the original's, against 7.9e-5).
            if (
                torch.backends.mkldnn.is_available()
                and torch.backends.mkldnn.enabled
                and not torch.is_autocast_enabled("cpu")
                and hidden_states.is_contiguous()
            ):
                return torch.mkldnn_convolution(
                    hidden_states, self.weight, self.bias, padding, self.stride, self.dilation, self.groups
                )
        return F.conv3d(hidden_states, self.weight, self.bias, self.stride, padding)

    def forward(self, hidden_states: torch.Tensor, causal_cache: Optional[RuyiCausalCache] = None) -> torch.Tensor:
        if causal_cache is None:
            return self._conv(hidden_states, (self.temporal_context // 2, self.padding[1], self.padding[2]))

        if self.stride[0] != 1:
            raise ValueError("Causal (cached) mode only supports temporal stride 1.")
        previous = causal_cache.read()
        if previous is None:
            previous = hidden_states[:, :, :1].expand(-1, -1, self.temporal_context, -1, -1)
        channels_last = not hidden_states.is_contiguous() and hidden_states.is_contiguous(
            memory_format=torch.channels_last_3d
        )
        hidden_states = torch.cat([previous.to(hidden_states.dtype), hidden_states], dim=2)
        if channels_last:
            # The original pads (or prefixes) in the input's layout, and the convolution's kernel depends on it: a
            # channels-last input (after the mid-block attention, see `_ORIGINAL_LAYOUT`) stays channels last.
            hidden_states = hidden_states.contiguous(memory_format=torch.channels_last_3d)
        # Clone: a slice would keep the whole concatenated chunk alive until the next chunk.
        causal_cache.write(hidden_states[:, :, -self.temporal_context :].clone())
        return self._conv(hidden_states, self.padding)


def _silu_(hidden_states: torch.Tensor, activation: nn.Module) -> torch.Tensor:
    # In-place SiLU on a fresh normalisation output saves one activation-sized buffer at inference.
    if isinstance(activation, nn.SiLU) and not (torch.is_grad_enabled() and hidden_states.requires_grad):
        return F.silu(hidden_states, inplace=True)
    return activation(hidden_states)


class RuyiResidualBlock3D(nn.Module):
    """GroupNorm -> act -> causal conv, twice, plus a (1x1x1 conv) shortcut. Group norms pool over the chunk's frames."""

    def __init__(self, in_channels: int, out_channels: int, act_fn: str, norm_num_groups: int, norm_eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels, eps=norm_eps)
        self.conv1 = RuyiCausalConv3d(in_channels, out_channels)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.conv2 = RuyiCausalConv3d(out_channels, out_channels)
        self.nonlinearity = get_activation(act_fn)
        self.shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, causal_cache: Optional[RuyiCausalCache] = None) -> torch.Tensor:
        residual = _silu_(self.norm1(hidden_states), self.nonlinearity)
        residual = self.conv1(residual, causal_cache)
        residual = _silu_(self.norm2(residual), self.nonlinearity)
        residual = self.conv2(residual, causal_cache)
        # The shortcut last, so that its 1x1x1 convolution's output (as large as the block's) is not held through
        # both convolutions; at inference the sum goes into the second convolution's fresh output instead of another
        # block-sized buffer. Same order, same bits; a mixed-dtype sum (under autocast) keeps its promotion.
        shortcut = self.shortcut(hidden_states)
        if (torch.is_grad_enabled() and (residual.requires_grad or shortcut.requires_grad)) or (
            residual.dtype != shortcut.dtype
        ):
            return residual + shortcut
        return residual.add_(shortcut)


class RuyiDownsampler3D(nn.Module):
    """Stride-2 conv (spatial, or spatio-temporal), after padding one zero row/column at the bottom/right."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.conv = RuyiCausalConv3d(channels, channels, stride=(2 if temporal else 1, 2, 2), spatial_padding=0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(hidden_states, (0, 1, 0, 1)))


class RuyiUpsampler3D(nn.Module):
    """Nearest 2x spatial upsampling and a conv; the spatio-temporal variant then doubles frames (trilinear)."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.conv = RuyiCausalConv3d(channels, channels)
        self.temporal = temporal

    def forward(
        self,
        hidden_states: torch.Tensor,
        causal_cache: Optional[RuyiCausalCache] = None,
        temporal_upsample: bool = True,
    ) -> torch.Tensor:
        hidden_states = F.interpolate(hidden_states, scale_factor=(1, 2, 2), mode="nearest")
        hidden_states = self.conv(hidden_states, causal_cache)
        # A lone latent frame decodes to a single image: the original skips the temporal doubling there.
        if self.temporal and temporal_upsample:
            hidden_states = F.interpolate(hidden_states, scale_factor=(2, 1, 1), mode="trilinear")
        return hidden_states


def _residual_stack(
    in_channels: int, out_channels: int, num_layers: int, act_fn: str, norm_num_groups: int
) -> nn.ModuleList:
    return nn.ModuleList(
        RuyiResidualBlock3D(in_channels if i == 0 else out_channels, out_channels, act_fn, norm_num_groups, 1e-6)
        for i in range(num_layers)
    )


class RuyiDownBlock3D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        act_fn: str,
        norm_num_groups: int,
        add_downsample: bool,
        temporal_downsample: bool,
    ):
        super().__init__()
        self.convs = _residual_stack(in_channels, out_channels, num_layers, act_fn, norm_num_groups)
        self.downsampler = RuyiDownsampler3D(out_channels, temporal_downsample) if add_downsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            hidden_states = conv(hidden_states)
        if self.downsampler is not None:
            hidden_states = self.downsampler(hidden_states)
        return hidden_states


class RuyiUpBlock3D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        act_fn: str,
        norm_num_groups: int,
        add_upsample: bool,
        temporal_upsample: bool,
    ):
        super().__init__()
        self.convs = _residual_stack(in_channels, out_channels, num_layers, act_fn, norm_num_groups)
        self.upsampler = RuyiUpsampler3D(out_channels, temporal_upsample) if add_upsample else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        causal_cache: Optional[RuyiCausalCache] = None,
        temporal_upsample: bool = True,
    ) -> torch.Tensor:
        for conv in self.convs:
            hidden_states = conv(hidden_states, causal_cache)
        if self.upsampler is not None:
            hidden_states = self.upsampler(hidden_states, causal_cache, temporal_upsample)
        return hidden_states


class RuyiMidBlock3D(nn.Module):
    """Residual blocks interleaved with self-attention (diffusers' `Attention`): per frame (``attention_type="spatial"``)
    or over all the frames of the chunk at once (``"3d"``, tokens ``t x h x w``, one group norm over them all)."""

    def __init__(
        self,
        channels: int,
        num_layers: int,
        act_fn: str,
        norm_num_groups: int,
        add_attention: bool,
        num_attention_heads: int,
        attention_type: str = "spatial",
    ):
        super().__init__()
        if attention_type not in _MID_BLOCK_ATTENTION_TYPES:
            raise ValueError(
                f"Unsupported mid-block attention type {attention_type!r}; use {_MID_BLOCK_ATTENTION_TYPES}."
            )
        self.attention_type = attention_type
        self.convs = nn.ModuleList(
            RuyiResidualBlock3D(channels, channels, act_fn, norm_num_groups, 1e-6) for _ in range(num_layers)
        )
        self.attentions = nn.ModuleList()
        if add_attention:
            for _ in range(num_layers - 1):
                self.attentions.append(
                    Attention(
                        channels,
                        heads=num_attention_heads,
                        dim_head=channels // num_attention_heads,
                        bias=True,
                        upcast_softmax=True,
                        norm_num_groups=norm_num_groups,
                        eps=1e-6,
                        residual_connection=True,
                        _from_deprecated_attn_block=True,
                    )
                )

    @staticmethod
    def _attend_per_frame(attention: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, channels, num_frames, height, width = hidden_states.shape
        frames = hidden_states.permute(0, 2, 1, 3, 4).reshape(batch_size * num_frames, channels, height, width)
        frames = attention(frames)
        return _hand_on(frames.reshape(batch_size, num_frames, channels, height, width).permute(0, 2, 1, 3, 4))

    @staticmethod
    def _attend_volume(attention: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
        # `Attention` flattens a 4D input's last two dims into tokens, so (t * h, w) gives the t-h-w token order and
        # its group norm pools over every frame, as the original `Attention3D`; both reshapes are views.
        batch_size, channels, num_frames, height, width = hidden_states.shape
        volume = attention(hidden_states.reshape(batch_size, channels, num_frames * height, width))
        return _hand_on(volume.reshape(batch_size, channels, num_frames, height, width))

    def forward(self, hidden_states: torch.Tensor, causal_cache: Optional[RuyiCausalCache] = None) -> torch.Tensor:
        attend = self._attend_volume if self.attention_type == "3d" else self._attend_per_frame
        hidden_states = self.convs[0](hidden_states, causal_cache)
        for i, conv in enumerate(self.convs[1:]):
            if i < len(self.attentions):
                hidden_states = attend(self.attentions[i], hidden_states)
            hidden_states = conv(hidden_states, causal_cache)
        return hidden_states


class RuyiEncoder3D(nn.Module):
    """Maps one chunk of frames ``(B, C, T, H, W)`` to ``2 * latent_channels`` moments (before ``quant_conv``)."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        block_out_channels: Sequence[int],
        down_block_types: Sequence[str],
        layers_per_block: int,
        act_fn: str,
        norm_num_groups: int,
        mid_block_add_attention: bool,
        mid_block_num_attention_heads: int,
        mid_block_attention_type: str = "spatial",
    ):
        super().__init__()
        self.conv_in = RuyiCausalConv3d(in_channels, block_out_channels[0])
        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            self.down_blocks.append(
                RuyiDownBlock3D(
                    channels,
                    block_out_channels[i],
                    layers_per_block,
                    act_fn,
                    norm_num_groups,
                    add_downsample=i < len(down_block_types) - 1,
                    temporal_downsample=block_type == "SpatialTemporalDownBlock3D",
                )
            )
            channels = block_out_channels[i]
        self.mid_block = RuyiMidBlock3D(
            channels,
            layers_per_block,
            act_fn,
            norm_num_groups,
            mid_block_add_attention,
            mid_block_num_attention_heads,
            mid_block_attention_type,
        )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = RuyiCausalConv3d(channels, 2 * latent_channels)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(hidden_states)
        checkpointing = torch.is_grad_enabled() and self.gradient_checkpointing
        for block in [*self.down_blocks, self.mid_block]:
            if checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states)
            else:
                hidden_states = block(hidden_states)
        hidden_states = _silu_(self.conv_norm_out(hidden_states), self.conv_act)
        return self.conv_out(hidden_states)


class RuyiDecoder3D(nn.Module):
    """Maps one chunk of latents (after ``post_quant_conv``) to frames."""

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        up_block_types: Sequence[str],
        layers_per_block: int,
        act_fn: str,
        norm_num_groups: int,
        mid_block_add_attention: bool,
        mid_block_num_attention_heads: int,
        mid_block_attention_type: str = "spatial",
    ):
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = RuyiCausalConv3d(latent_channels, reversed_channels[0])
        self.mid_block = RuyiMidBlock3D(
            reversed_channels[0],
            layers_per_block,
            act_fn,
            norm_num_groups,
            mid_block_add_attention,
            mid_block_num_attention_heads,
            mid_block_attention_type,
        )
        self.up_blocks = nn.ModuleList()
        channels = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            self.up_blocks.append(
                RuyiUpBlock3D(
                    channels,
                    reversed_channels[i],
                    layers_per_block + 1,
                    act_fn,
                    norm_num_groups,
                    add_upsample=i < len(up_block_types) - 1,
                    temporal_upsample=block_type == "SpatialTemporalUpBlock3D",
                )
            )
            channels = reversed_channels[i]
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = RuyiCausalConv3d(channels, out_channels)
        self.gradient_checkpointing = False
        self._warned_cache_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        causal_cache: Optional[RuyiCausalCache] = None,
        temporal_upsample: bool = True,
        keep_frames: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states (`torch.Tensor`): Latent frames ``(B, C, L, h, w)``.
            causal_cache (`RuyiCausalCache`, *optional*): Causal temporal padding carried across chunks (cache
                variant); without it every convolution pads time with one zero frame on each side.
            temporal_upsample (`bool`, defaults to `True`): Double the frames in each spatio-temporal upsampler;
                `False` decodes a lone latent frame to one image.
            keep_frames (`Tuple[int, int]`, *optional*): ``(start, end)``: the frames of ``hidden_states`` that are
                decoded; the others are context for ``conv_in`` and the mid block only (slice variant).
        """
        checkpointing = torch.is_grad_enabled() and self.gradient_checkpointing
        if checkpointing and causal_cache is not None:
            # A recomputation in the backward pass would read the causal cache as the last chunk left it.
            if not self._warned_cache_checkpointing:
                logger.warning(
                    "Gradient checkpointing skips the decoder of the cache VAE variant: its causal cache carries "
                    "activations from chunk to chunk, which a recomputation would not see as they were."
                )
                self._warned_cache_checkpointing = True
            checkpointing = False
        hidden_states = self.conv_in(hidden_states, causal_cache)
        if checkpointing:
            hidden_states = self._gradient_checkpointing_func(self.mid_block, hidden_states, None)
        else:
            hidden_states = self.mid_block(hidden_states, causal_cache)
        if keep_frames is not None:
            hidden_states = hidden_states[:, :, keep_frames[0] : keep_frames[1]]
        for block in self.up_blocks:
            if checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, None, temporal_upsample)
            else:
                hidden_states = block(hidden_states, causal_cache, temporal_upsample)
        hidden_states = _silu_(self.conv_norm_out(hidden_states), self.conv_act)
        return self.conv_out(hidden_states, causal_cache)


def _tile_spans(size: int, max_tile: int, min_overlap: int) -> List[Tuple[int, int]]:
    """Equal, evenly spread ``[start, end)`` spans covering ``size``: as few tiles of at most ``max_tile`` as allow an
    overlap of at least ``min_overlap`` between neighbours (so no thin leftover tile at the border)."""
    if size <= max_tile:
        return [(0, size)]
    count = math.ceil((size - min_overlap) / (max_tile - min_overlap))
    length = math.ceil((size + (count - 1) * min_overlap) / count)
    return [(s, s + length) for s in (round(k * (size - length) / (count - 1)) for k in range(count))]


def _blend_weights(spans: List[Tuple[int, int]], index: int, scale: int, device, dtype) -> torch.Tensor:
    """1D linear blending ramp of span ``index`` (in units multiplied by ``scale``), strictly positive.

    The ramp rises over the overlap with the previous span and falls over the overlap with the next one; for two
    overlapping tiles the two ramps sum to exactly one, so this is a linear cross-fade.
    """
    start, end = spans[index][0] * scale, spans[index][1] * scale
    position = torch.arange(start, end, device=device, dtype=torch.float32)
    weight = torch.ones_like(position)
    if index > 0:
        overlap = spans[index - 1][1] * scale - start
        weight = torch.minimum(weight, (position - start + 1) / (overlap + 1))
    if index < len(spans) - 1:
        overlap = end - spans[index + 1][0] * scale
        weight = torch.minimum(weight, (end - position) / (overlap + 1))
    return weight.to(dtype)


# The memory layout the mid-block attention hands on: the original's, in every dtype. The original's attention
# returns a channels-last view of its tokens, and the group norms and convolutions after it pick their kernels by that
# layout and keep it where oneDNN runs (always in bfloat16; in float32, at the smallest sizes, PyTorch's reference
# convolution returns a contiguous tensor, in the original as here). In bfloat16 that decides the numbers: with it, the VAE and so the pipeline give the original's
# bfloat16 output bit for bit (on the same torch build); with a contiguous tensor the encoder was 2e-3 apart. In
# float32 it decides the round-off: the channels-last group norm accumulates differently, and on a deep decoder of
# large values the original's float32 decode was 1.6e-4 from its own float64 run. A contiguous float32 decode had a
# seventh of that round-off, and so was 1.8e-4 from the original; channels last, it is 1.5e-5 (`parity_sweep.py
# --vae`, seed 61007), and as close or closer on most other cases (the convolutions then run as `F.conv3d` picks).
_ORIGINAL_LAYOUT = torch.channels_last_3d


def _hand_on(hidden_states: torch.Tensor) -> torch.Tensor:
    """The mid-block attention's output `(b, c, t, h, w)` in `_ORIGINAL_LAYOUT`: exactly the original's view of
    `(b, t, h, w, c)` tokens, its strides included (kernels also read the strides of size-1 dims, so a view that only
    looks channels last is not enough)."""
    batch_size, channels, num_frames, height, width = hidden_states.shape
    tokens = hidden_states.new_empty(batch_size, num_frames, height, width, channels)
    return tokens.permute(0, 4, 1, 2, 3).copy_(hidden_states)


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same values, so that an output computed from one serves for the other. False
    where there are no values to compare (meta and fake tensors, tensor subclasses, tracing by `torch.compile`): the
    caller then computes, as it would for different values. Also False where autograd tracks either: a reused output
    would carry the gradient of both to the first one."""
    if a.shape != b.shape or a.device.type == "meta" or torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return False
    if type(a) is not torch.Tensor or type(b) is not torch.Tensor:
        return False
    return torch.equal(a, b)


def _store(target: torch.Tensor, values: torch.Tensor, weight: Optional[torch.Tensor]) -> None:
    """Writes ``values`` into ``target``, or adds ``weight * values`` when blending tiles (``values`` is scratch)."""
    if weight is None:
        target.copy_(values)
    else:
        target.add_(values.mul_(weight))


def _blend_into(a_strip: torch.Tensor, b: torch.Tensor, dim: int, extent: int) -> None:
    """The original's ``blend_v`` (``dim=-2``) / ``blend_h`` (``dim=-1``), in place on ``b``: its first ``n`` rows
    (columns) fade linearly from the last ``n`` of ``a`` (weight ``1 - k / n``) to its own (``k / n``), where ``n`` is
    the smallest of ``extent`` and both sizes. ``a_strip`` may be only the last ``extent`` rows (columns) of ``a``."""
    n = min(a_strip.shape[dim], b.shape[dim], extent)
    if n == 0:
        return
    # Weights as the original's Python scalars become: computed in float64, applied in float32; rounding each product
    # to the tensor dtype as its per-row scalar products did keeps bfloat16 identical too.
    own = torch.arange(n, dtype=torch.float64) / n
    shape = (n, 1) if dim == -2 else (n,)
    w_b = own.to(device=b.device, dtype=torch.float32).reshape(shape)
    w_a = (1 - own).to(device=b.device, dtype=torch.float32).reshape(shape)
    a_part = a_strip.narrow(dim, a_strip.shape[dim] - n, n)
    b_part = b.narrow(dim, 0, n)
    b_part.copy_((a_part * w_a).to(b.dtype) + (b_part * w_b).to(b.dtype))


_warned_amx_bfloat16 = False


def _check_original_tiling_types(size: Any, overlap: Any) -> None:
    check_int("tile_sample_min_size", size)
    check_real("tile_overlap_factor", overlap)


def _warn_once_on_amx_bfloat16(tensor: torch.Tensor, layer: nn.Module) -> None:
    """torch's oneDNN bfloat16 3D convolution on CPUs with AMX returns wrong values (or NaN) at random for some shapes
    (torch 2.13 and 2.14; docs/pipeline.md, known issues): says so once per process when `layer` is about to compute
    in bfloat16 there (its dtype, its layerwise-casting dtype, or CPU autocast's), unless oneDNN's instruction set is
    capped below AMX (read by oneDNN at its first convolution)."""
    global _warned_amx_bfloat16
    if _warned_amx_bfloat16 or tensor.device.type != "cpu" or not torch.backends.mkldnn.enabled:
        return
    dtype = compute_dtype(layer)
    if autocast_enabled(tensor) and dtype != torch.float64:
        dtype = torch.get_autocast_dtype("cpu")
    if dtype != torch.bfloat16:
        return
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if cap and "AMX" not in cap and cap not in ("ALL", "DEFAULT"):
        return
    is_amx_supported = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if is_amx_supported is None or not is_amx_supported():
        return
    _warned_amx_bfloat16 = True
    logger.warning(
        "The VAE runs in bfloat16 on a CPU with AMX, where torch's oneDNN 3D convolution can return wrong values or "
        "NaN: start Python with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, or run the VAE in float32."
    )


def _check_tile_size(name: str, value, ratio: int) -> None:
    check_int(name, value)
    if value < 2 * ratio or value % ratio:
        raise ValueError(f"Tile sizes must be multiples of {ratio} and at least {2 * ratio}: got `{name}`={value!r}.")


def _check_size_arguments(height, width, decode) -> None:
    """`num_tiles` / `tiled_output_size` arguments: positive integer sizes and a bool."""
    check_int("height", height, minimum=1)
    check_int("width", width, minimum=1)
    check_bool("decode", decode)


class AutoencoderKLRuyiCausal3D(RuyiModelLoadingMixin, ModelMixin, AutoencoderMixin, ConfigMixin):
    r"""
    The causal 3D VAE of Ruyi-Mini-7B: videos ``(B, 3, F, H, W)`` in ``[-1, 1]`` to latents ``(B, 16, F / 4, H / 8,
    W / 8)`` and back.

    It loads the original ``vae/`` folder of ``IamCreateAI/Ruyi-Mini-7B`` directly (see `from_pretrained`) and
    reproduces the original's numerics, including its frame chunking in both of its variants and its own tiling (see
    the module docstring). The defaults are the published Ruyi-Mini-7B VAE (`vae/config.json` of
    `IamCreateAI/Ruyi-Mini-7B`): the slice variant with 3D mid-block attention and the original's tiling. Checkpoints
    carry their own config; one saved before the variant keys existed loads as what it meant, the cache variant
    without tiling.

    Frame counts: both variants take any count of at least one frame, as the original does; `num_latent_frames` /
    `num_sample_frames` give the sizes (the cache variant decodes ``L > 1`` latent frames to ``4 * L`` frames).

    Parameters:
        in_channels (`int`, defaults to 3): Channels of the input video.
        out_channels (`int`, defaults to 3): Channels of the decoded video.
        latent_channels (`int`, defaults to 16): Channels of the latent space.
        block_out_channels (`Tuple[int]`, defaults to `(128, 256, 512, 512)`): Width of each encoder/decoder stage.
        down_block_types (`Tuple[str]`): Encoder stages, each `"SpatialDownBlock3D"` (2x spatial) or
            `"SpatialTemporalDownBlock3D"` (2x spatial and temporal); the last stage does not downsample. Defaults
            to one spatial stage, then three spatio-temporal ones.
        up_block_types (`Tuple[str]`): Decoder stages, `"SpatialUpBlock3D"` or `"SpatialTemporalUpBlock3D"`
            (defaults: as `down_block_types`).
        layers_per_block (`int`, defaults to 2): Residual blocks per encoder stage (decoder stages have one more) and
            in the mid blocks, which have ``layers_per_block - 1`` attention layers.
        act_fn (`str`, defaults to `"silu"`): Activation function.
        norm_num_groups (`int`, defaults to 32): Groups of every group norm.
        mid_block_add_attention (`bool`, defaults to `True`): Self-attention in the mid blocks.
        mid_block_num_attention_heads (`int`, defaults to 1): Heads of that attention.
        scaling_factor (`float`, defaults to 0.18215): Latents are multiplied by this before the transformer and
            divided by it before `decode`.
        num_sample_frames_batch_size (`int`, defaults to 8): Frames per encoder slice (the original's
            ``mini_batch_encoder``). Changes the numerics: keep the checkpoint's value.
        num_latent_frames_batch_size (`int`, defaults to 2): Latent frames per decoder chunk (``mini_batch_decoder``).
        force_upcast (`bool`, defaults to `True`): Pipelines run the VAE in float32 when it is float16 (diffusers'
            convention); bfloat16 runs as it is, as the original ran the published VAE in the pipeline's dtype.
        mid_block_attention_type (`str`, defaults to `"3d"`): `"spatial"` (per frame) or `"3d"` (over all the
            frames of a chunk, as the published checkpoint).
        compression_mode (`str`, defaults to `"slice"`): `"cache"` (``cache_compression_vae``) or `"slice"`
            (``slice_compression_vae``, the published checkpoint): how frames are chunked, see the module docstring.
        use_tiling (`bool`, defaults to `True`): The original's ``use_tiling``: encode and decode inputs larger than
            ``tile_sample_min_size`` in square tiles with the original's blending (see `enable_original_tiling`).
            `enable_tiling` / `disable_tiling` change this at run time.
        tile_sample_min_size (`int`, defaults to 384): Tile size in pixels of the original's tiling.
        tile_overlap_factor (`float`, defaults to 0.25): Overlap of the original's tiling, as a fraction of a tile.
    """

    _original_model_type = "vae"
    # Configs saved before the variant keys existed are the cache variant without tiling (the defaults, now the
    # published VAE's, would read them as the slice variant).
    _VARIANT_KEYS_BEFORE_THEY_EXISTED = {
        "compression_mode": "cache",
        "mid_block_attention_type": "spatial",
        "use_tiling": False,
    }
    _supports_gradient_checkpointing = True
    # What `device_map="auto"` keeps on one device (a residual block's skip, the mid-block's attention).
    _no_split_modules = ["RuyiResidualBlock3D", "RuyiMidBlock3D"]
    _skip_keys = ["causal_cache"]
    _group_offload_block_modules = ["quant_conv", "post_quant_conv", "encoder", "decoder"]

    @classmethod
    def _complete_saved_config(cls, config: Dict[str, Any]) -> Dict[str, Any]:
        if config.get("_class_name") != cls.__name__ or "compression_mode" in config:
            return config
        return {**cls._VARIANT_KEYS_BEFORE_THEY_EXISTED, **config}

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 16,
        block_out_channels: Tuple[int, ...] = (128, 256, 512, 512),
        down_block_types: Tuple[str, ...] = (
            "SpatialDownBlock3D",
            "SpatialTemporalDownBlock3D",
            "SpatialTemporalDownBlock3D",
            "SpatialTemporalDownBlock3D",
        ),
        up_block_types: Tuple[str, ...] = (
            "SpatialUpBlock3D",
            "SpatialTemporalUpBlock3D",
            "SpatialTemporalUpBlock3D",
            "SpatialTemporalUpBlock3D",
        ),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        mid_block_num_attention_heads: int = 1,
        scaling_factor: float = 0.18215,
        num_sample_frames_batch_size: int = 8,
        num_latent_frames_batch_size: int = 2,
        force_upcast: bool = True,
        mid_block_attention_type: str = "3d",
        compression_mode: str = "slice",
        use_tiling: bool = True,
        tile_sample_min_size: int = 384,
        tile_overlap_factor: float = 0.25,
    ):
        super().__init__()
        if not (len(block_out_channels) == len(down_block_types) == len(up_block_types)):
            raise ValueError(
                "`block_out_channels`, `down_block_types` and `up_block_types` must have the same length."
            )
        unknown = [t for t in down_block_types if t not in _DOWN_BLOCK_TYPES]
        unknown += [t for t in up_block_types if t not in _UP_BLOCK_TYPES]
        if unknown:
            raise ValueError(f"Unsupported block types {unknown}; use {_DOWN_BLOCK_TYPES} / {_UP_BLOCK_TYPES}.")
        if compression_mode not in _COMPRESSION_MODES:
            raise ValueError(f"`compression_mode` must be one of {_COMPRESSION_MODES}, got {compression_mode!r}.")
        check_int("num_sample_frames_batch_size", num_sample_frames_batch_size, minimum=1)
        check_int("num_latent_frames_batch_size", num_latent_frames_batch_size, minimum=1)
        for name, value in (
            ("in_channels", in_channels), ("out_channels", out_channels), ("latent_channels", latent_channels),
            ("layers_per_block", layers_per_block), ("norm_num_groups", norm_num_groups),
            ("mid_block_num_attention_heads", mid_block_num_attention_heads),
        ):  # fmt: skip
            check_int(name, value, minimum=1)
        # A diffusers-format config is not read through the original layout's type checks: a string "false" would
        # switch tiling on, a scaling factor of 0 or NaN fail (or give NaN frames) only after the denoising loop.
        for name, value in (
            ("use_tiling", use_tiling),
            ("force_upcast", force_upcast),
            ("mid_block_add_attention", mid_block_add_attention),
        ):
            check_bool(name, value)
        check_real("scaling_factor", scaling_factor)
        if scaling_factor <= 0:
            raise ValueError(f"`scaling_factor` must be a finite number > 0, got {scaling_factor!r}.")

        self.encoder = RuyiEncoder3D(
            in_channels,
            latent_channels,
            block_out_channels,
            down_block_types,
            layers_per_block,
            act_fn,
            norm_num_groups,
            mid_block_add_attention,
            mid_block_num_attention_heads,
            mid_block_attention_type,
        )
        self.decoder = RuyiDecoder3D(
            latent_channels,
            out_channels,
            block_out_channels,
            up_block_types,
            layers_per_block,
            act_fn,
            norm_num_groups,
            mid_block_add_attention,
            mid_block_num_attention_heads,
            mid_block_attention_type,
        )
        self.quant_conv = nn.Conv3d(2 * latent_channels, 2 * latent_channels, kernel_size=1)
        self.post_quant_conv = nn.Conv3d(latent_channels, latent_channels, kernel_size=1)

        self.spatial_compression_ratio = 2 ** (len(block_out_channels) - 1)
        self._temporal_stages = sum(t == "SpatialTemporalDownBlock3D" for t in down_block_types[:-1])
        self.temporal_compression_ratio = 2**self._temporal_stages
        decoder_temporal_ratio = 2 ** sum(t == "SpatialTemporalUpBlock3D" for t in up_block_types[:-1])
        if decoder_temporal_ratio != self.temporal_compression_ratio:
            raise ValueError("Encoder and decoder must have the same number of temporal (SpatialTemporal*) stages.")
        if compression_mode == "cache" and num_sample_frames_batch_size % self.temporal_compression_ratio != 0:
            raise ValueError(
                f"`num_sample_frames_batch_size` ({num_sample_frames_batch_size}) must be a multiple of the temporal "
                f"compression ratio ({self.temporal_compression_ratio})."
            )

        self.use_slicing = False
        # Tiling: `use_tiling` switches it on; `tiling_mode` says which tiler runs, "original" (the original's square
        # tiles, configured by `tile_sample_min_size`) or "package" (`enable_tiling`'s balanced tiles).
        self.use_tiling = bool(use_tiling)
        self.tiling_mode = "original" if use_tiling else "package"
        # Types only: like the original, which reads the values only when a video is large enough to be tiled, a
        # config may hold ones that could never tile (`num_tiles` refuses them where they would be used).
        _check_original_tiling_types(tile_sample_min_size, tile_overlap_factor)
        self.tile_sample_min_size = tile_sample_min_size
        self._original_tile_overlap_factor = tile_overlap_factor
        # Tiles are square by default; 256 px tiles keep decode memory at 512x512 well under a third of untiled.
        self.tile_sample_min_height = 256
        self.tile_sample_min_width = 256
        self.tile_overlap_factor = 0.25
        # Set only by `enable_tiling`; None: the overlap follows `tile_overlap_factor`.
        self.tile_sample_stride_height = None
        self.tile_sample_stride_width = None

    # ------------------------------------------------------------------------------------------------------------
    # Tiling configuration
    # ------------------------------------------------------------------------------------------------------------

    def enable_tiling(
        self,
        tile_sample_min_height: Optional[int] = None,
        tile_sample_min_width: Optional[int] = None,
        tile_overlap_factor: Optional[float] = None,
        tile_sample_stride_height: Optional[int] = None,
        tile_sample_stride_width: Optional[int] = None,
    ) -> None:
        r"""
        Enables this package's spatial tiling: encode/decode overlapping tiles one at a time (each with its own frame
        loop), accumulating them with linear blending ramps into one preallocated output. The tiler uses as few equal
        tiles as satisfy the size and overlap limits below, spread evenly. Inputs no larger than one tile are not
        tiled. Tiling approximates: each tile computes its own group-norm statistics and sees less context.

        This replaces the original's tiling of a checkpoint whose config says ``use_tiling: true`` (use
        `enable_original_tiling` to go back to it); `disable_tiling` turns off either.

        The overlap is given either as `tile_overlap_factor` or, with diffusers' names (as
        `AutoencoderKLWan.enable_tiling`), per dimension as a stride: `tile - stride` pixels of overlap. A stride is
        the largest step between tiles; the tiler spreads its tiles evenly, so they may step by less.

        Args:
            tile_sample_min_height (`int`, *optional*, defaults to 256):
                Largest tile height in pixels; a multiple of `spatial_compression_ratio` (8), at least twice it.
            tile_sample_min_width (`int`, *optional*, defaults to 256):
                Largest tile width in pixels; a multiple of `spatial_compression_ratio` (8), at least twice it.
            tile_overlap_factor (`float`, *optional*, defaults to 0.25):
                Smallest overlap between neighbouring tiles as a fraction of the largest tile, in `(0, 0.5]`
                (at least one latent); for the dimensions without a stride.
            tile_sample_stride_height (`int`, *optional*):
                Largest vertical step between tiles in pixels: a multiple of 8, at most the tile height. Not
                remembered: a later call without it uses `tile_overlap_factor` again.
            tile_sample_stride_width (`int`, *optional*):
                Largest horizontal step between tiles in pixels, likewise.
        """
        ratio = self.spatial_compression_ratio
        for name, value in (
            ("tile_sample_min_height", tile_sample_min_height),
            ("tile_sample_min_width", tile_sample_min_width),
        ):
            if value is not None:
                _check_tile_size(name, value, ratio)
        check_real("tile_overlap_factor", tile_overlap_factor, allow_none=True)
        height = self.tile_sample_min_height if tile_sample_min_height is None else tile_sample_min_height
        width = self.tile_sample_min_width if tile_sample_min_width is None else tile_sample_min_width
        overlap = self.tile_overlap_factor if tile_overlap_factor is None else tile_overlap_factor
        if not 0 < overlap <= 0.5:
            raise ValueError(f"`tile_overlap_factor` must be in (0, 0.5], got {overlap}.")
        strides = {
            "tile_sample_stride_height": tile_sample_stride_height,
            "tile_sample_stride_width": tile_sample_stride_width,
        }
        if tile_overlap_factor is not None and None not in strides.values():
            raise ValueError(
                "Give `tile_overlap_factor` or both `tile_sample_stride_*`, not both: the strides set the overlap."
            )
        for (name, stride), tile in zip(strides.items(), (height, width)):
            check_int(name, stride, allow_none=True)
            if stride is not None and (stride % ratio or not 0 < stride <= tile):
                raise ValueError(
                    f"`{name}` must be a positive multiple of {ratio} and at most the tile ({tile}), got {stride!r}."
                )
        self.use_tiling = True
        self.tiling_mode = "package"
        self.tile_sample_min_height = height
        self.tile_sample_min_width = width
        self.tile_overlap_factor = overlap
        self.tile_sample_stride_height = tile_sample_stride_height
        self.tile_sample_stride_width = tile_sample_stride_width

    def enable_original_tiling(
        self, tile_sample_min_size: Optional[int] = None, tile_overlap_factor: Optional[float] = None
    ) -> None:
        r"""
        Enables the original's tiling (what ``use_tiling: true`` in the config means): an input wider or taller than
        ``tile_sample_min_size`` pixels (decode: ``tile_sample_min_size // 8`` latents) is cut into square tiles that
        start every ``tile - overlap`` latents; each tile is encoded/decoded whole, its first rows and columns are
        faded linearly into the tile above and to the left (the original's ``blend_v`` / ``blend_h``), it is cropped to
        ``tile - overlap`` and placed. Decoding then decodes the lower-right corner tile once more and blends it in
        with weights rising from 0 at its top/left edges to 1 at the corner, as the original does.

        The original's algorithm at every size, its roundings included. For some sizes (48 px with 0.25, 720 px with
        0.3, for example: `original_tiling_is_aligned` tells) its step between tiles and the size it keeps of each are
        rounded differently, so the tiles drift against their crops: the output can be larger than
        the untiled one, with repeated strips, or shifted, exactly as the original's (a warning says when the size
        changes; `original_tiling_is_aligned` and `tiled_output_size` tell). The package's tiling (`enable_tiling`)
        has no such sizes.

        Values that can never tile (a tile under 8 px, an overlap that leaves no step between tiles) are refused
        here; a config's are read as the original reads them, only for a video larger than a tile (`num_tiles`).

        Args:
            tile_sample_min_size (`int`, *optional*): Tile size in pixels, at least `spatial_compression_ratio` (8);
                defaults to the config's (384).
            tile_overlap_factor (`float`, *optional*): Overlap as a fraction of a tile, in `[0, 1)`; defaults to the
                config's (0.25).
        """
        size = self.config.tile_sample_min_size if tile_sample_min_size is None else tile_sample_min_size
        overlap = self.config.tile_overlap_factor if tile_overlap_factor is None else tile_overlap_factor
        self._check_original_tiling(size, overlap)
        self.use_tiling = True
        self.tiling_mode = "original"
        self.tile_sample_min_size = size
        self._original_tile_overlap_factor = overlap

    def _check_tiling(self) -> None:
        """Re-checks the tiling attributes, which diffusers users also set directly (`vae.tile_sample_min_height =
        ...`), in `num_tiles`, through which `encode` and `decode` decide how to tile before any layer runs: a bad
        value would otherwise give NaN latents from no tile at all, or a division by zero deep in the tiler."""
        if not self.use_tiling:
            return
        if self.tiling_mode not in ("original", "package"):
            raise ValueError(f"`tiling_mode` must be 'original' or 'package', got {self.tiling_mode!r}.")
        if self.tiling_mode == "original":
            # The values are checked in `num_tiles`, where a video is large enough to be tiled.
            _check_original_tiling_types(self.tile_sample_min_size, self._original_tile_overlap_factor)
            return
        ratio = self.spatial_compression_ratio
        tiles = {
            "tile_sample_min_height": self.tile_sample_min_height,
            "tile_sample_min_width": self.tile_sample_min_width,
        }
        for name, value in tiles.items():
            _check_tile_size(name, value, ratio)
        check_real("tile_overlap_factor", self.tile_overlap_factor)
        if not 0 < self.tile_overlap_factor <= 0.5:
            raise ValueError(f"`tile_overlap_factor` must be in (0, 0.5], got {self.tile_overlap_factor}.")
        for name, tile in zip(("tile_sample_stride_height", "tile_sample_stride_width"), tiles.values()):
            stride = getattr(self, name)
            check_int(name, stride, allow_none=True)
            if stride is not None and (stride % ratio or not 0 < stride <= tile):
                raise ValueError(
                    f"`{name}` must be a positive multiple of {ratio} and at most the tile ({tile}), got {stride!r}."
                )

    def _check_original_tiling(self, size: int, overlap: float) -> None:
        _check_original_tiling_types(size, overlap)
        if size < self.spatial_compression_ratio:
            raise ValueError(f"`tile_sample_min_size` must be at least {self.spatial_compression_ratio}, got {size}.")
        if not 0 <= overlap < 1:
            raise ValueError(f"`tile_overlap_factor` must be in [0, 1), got {overlap}.")
        if int(int(size / self.spatial_compression_ratio) * (1 - overlap)) < 1:
            # The original would loop with a step of 0 latents.
            raise ValueError(
                f"`tile_overlap_factor` {overlap} leaves no step between {size} px tiles; use a smaller overlap or "
                "larger tiles."
            )

    def _original_tile_geometry(self, decode: bool) -> Tuple[int, int, int, int]:
        """The original's numbers for encode (pixels in, latents out) or decode (latents in, pixels out): the tile and
        the step between tiles in input units (``tile_*_min_size``, ``overlap_size``), and the blend and the kept size
        in output units (``blend_extent``, ``row_limit``), each rounded down as the original rounds it."""
        size, factor = self.tile_sample_min_size, self._original_tile_overlap_factor
        latent = int(size / self.spatial_compression_ratio)
        tile, out_tile = (latent, size) if decode else (size, latent)
        blend = int(out_tile * factor)
        return tile, int(tile * (1 - factor)), blend, out_tile - blend

    @property
    def original_tile_overlap_factor(self) -> float:
        """The overlap of the original's tiling (`enable_original_tiling`), as a fraction of a tile: what `"original"`
        mode uses in place of `tile_overlap_factor`. It may be set directly, checked when the VAE next tiles."""
        return self._original_tile_overlap_factor

    @original_tile_overlap_factor.setter
    def original_tile_overlap_factor(self, value: float) -> None:
        self._original_tile_overlap_factor = value

    def original_tiling_is_aligned(self) -> bool:
        r"""
        Whether the original's tiling (``tiling_mode == "original"``) keeps outputs at the untiled size: its step
        between tiles, rounded in input units, must equal the size it keeps, rounded in output units, for encode and
        decode. True for the published 384 px tiles with overlap 0.25 (any multiple of 32 px with 0.25). Otherwise
        the original, and so this VAE in that mode, can return larger outputs holding repeated strips, or shifted
        content; the package's tiling (`enable_tiling`) has no such sizes.
        """
        ratio = self.spatial_compression_ratio
        _, enc_step, _, enc_keep = self._original_tile_geometry(decode=False)
        _, dec_step, _, dec_keep = self._original_tile_geometry(decode=True)
        return enc_step == enc_keep * ratio and dec_step * ratio == dec_keep

    def tiled_output_size(self, height: int, width: int, decode: bool = False) -> Tuple[int, int]:
        r"""
        The height and width of what `encode` of a `height` x `width` pixel video (or, with `decode=True`, `decode` of
        `height` x `width` latents) returns with the current tiling. The untiled size (pixels / 8, latents * 8) but for
        the original's tiling at sizes where it is not aligned (see `enable_original_tiling`), as the original.
        """
        _check_size_arguments(height, width, decode)
        ratio = self.spatial_compression_ratio
        if decode:
            untiled = (height * ratio, width * ratio)
            tiled = self.num_tiles(height * ratio, width * ratio, decode=True) > 1
        else:
            untiled = (self._latent_size(height), self._latent_size(width))
            tiled = self.num_tiles(height, width) > 1
        if not tiled or self.tiling_mode != "original":
            return untiled
        if not decode:
            self._check_original_tiles(height, width)
        if self.original_tiling_is_aligned():
            return untiled
        return self._original_tiled_size(height, decode), self._original_tiled_size(width, decode)

    def _check_original_tiles(self, height: int, width: int) -> None:
        """The original's encode tiles end with whatever is left of the video; narrower than 8 px it cannot be
        encoded (the original fails inside a convolution)."""
        _, step, _, _ = self._original_tile_geometry(decode=False)
        for name, length in (("height", height), ("width", width)):
            last = length - (length - 1) // step * step
            if self._latent_size(last) == 0:
                raise ValueError(
                    f"The original's tiling (tile_sample_min_size={self.tile_sample_min_size}, tile_overlap_factor="
                    f"{self._original_tile_overlap_factor}) cuts a {length} px {name} into tiles every {step} px, "
                    f"which leaves a last tile of {last} px, too small to encode (at least "
                    f"{self.spatial_compression_ratio} px). Use `enable_tiling()` or other tile sizes."
                )

    def _original_tiled_size(self, length: int, decode: bool) -> int:
        """The height (width) of the original's tiled output for an input ``length`` high (wide), in output units:
        the sum of what each tile keeps."""
        tile, step, _, keep = self._original_tile_geometry(decode)
        ratio = self.spatial_compression_ratio
        total = 0
        for start in range(0, length, step):
            piece = min(tile, length - start)
            total += min(piece * ratio if decode else self._latent_size(piece), keep)
        return total

    def num_tiles(self, height: int, width: int, decode: bool = False) -> int:
        r"""
        How many spatial tiles an encode (or, with `decode=True`, a decode) of a `height` x `width` pixel video runs
        with the current tiling: 1 when tiling is off or the video fits in one tile. Each tile runs the encoder (or
        decoder) once per chunk of frames. `encode`/`decode` tile exactly when this is above 1, and the pipeline
        sizes its VAE progress bars with it.
        """
        _check_size_arguments(height, width, decode)
        self._check_tiling()
        if not self.use_tiling:
            return 1
        latent_h, latent_w = self._latent_size(height), self._latent_size(width)
        if self.tiling_mode == "original":
            tile, step, _, _ = self._original_tile_geometry(decode)
            if decode:
                height, width = latent_h, latent_w
            if height <= tile and width <= tile:
                return 1
            # Only here, as the original reads them: values that leave no step (or tiles under 8 px) cannot tile.
            self._check_original_tiling(self.tile_sample_min_size, self._original_tile_overlap_factor)
            # Decoding also decodes the lower-right corner tile once more.
            return len(range(0, height, step)) * len(range(0, width, step)) + int(decode)
        tile_h, tile_w, overlap_h, overlap_w = self._latent_tile_geometry()
        if latent_h <= tile_h and latent_w <= tile_w:
            return 1
        return len(_tile_spans(latent_h, tile_h, overlap_h)) * len(_tile_spans(latent_w, tile_w, overlap_w))

    def _latent_tile_geometry(self) -> Tuple[int, int, int, int]:
        """Largest tile height and width, and smallest overlaps, in latents, of this package's tiler."""
        ratio = self.spatial_compression_ratio
        geometry = []
        for tile, stride in (
            (self.tile_sample_min_height, self.tile_sample_stride_height),
            (self.tile_sample_min_width, self.tile_sample_stride_width),
        ):
            tile //= ratio
            geometry.append(
                (tile, max(1, int(tile * self.tile_overlap_factor)) if stride is None else tile - stride // ratio)
            )
        (tile_h, overlap_h), (tile_w, overlap_w) = geometry
        return tile_h, tile_w, overlap_h, overlap_w

    # ------------------------------------------------------------------------------------------------------------
    # Frame-count rules
    # ------------------------------------------------------------------------------------------------------------

    def _lone_first(self, num_frames: int, decode: bool) -> bool:
        """Whether the first (latent) frame is encoded / decoded on its own. Both variants encode it alone when the
        frame count is odd; the slice variant decodes it alone when the latent count is odd, the cache variant only
        when it is the only latent frame (decoded alone it gives one image: no temporal upsampling)."""
        if decode and self.config.compression_mode == "cache":
            return num_frames == 1
        return num_frames % 2 == 1

    def _chunks(self, num_frames: int, step: int, decode: bool) -> List[Tuple[int, int]]:
        """``[start, end)`` of every chunk: the lone first frame if any, then ``step`` frames at a time; the last
        chunk keeps whatever is left (fewer frames)."""
        lone = self._lone_first(num_frames, decode)
        return [(0, 1)] * lone + [(s, min(s + step, num_frames)) for s in range(int(lone), num_frames, step)]

    def _encoder_chunks(self, num_frames: int) -> List[Tuple[int, int, int, int]]:
        """``(frame_start, frame_end, latent_start, latent_end)`` of every slice the encoder runs on its own."""
        chunks, latent = [], 0
        for start, end in self._chunks(num_frames, self.config.num_sample_frames_batch_size, decode=False):
            length = end - start
            for _ in range(self._temporal_stages):
                length = (length - 1) // 2 + 1  # stride-2 conv, one zero frame of padding on each side
            chunks.append((start, end, latent, latent + length))
            latent += length
        return chunks

    def num_latent_frames(self, num_frames: int) -> int:
        r"""
        The number of latent frames `encode` produces for ``num_frames`` video frames.

        Both variants encode the first frame alone when ``num_frames`` is odd, then independent slices of
        ``num_sample_frames_batch_size`` (8) frames, the last slice with whatever is left; a slice of ``n`` frames
        gives ``ceil(n / temporal_compression_ratio)`` latent frames. So with Ruyi's 4x, 8 frames give 2, 9 and 12
        give 3, 13 gives 4 and 17 gives 5, as in the original.

        Args:
            num_frames (`int`): Video frames, at least 1.

        Returns:
            `int`: The latent frame count.

        Raises:
            `TypeError` or `ValueError`: ``num_frames`` is not an integer, or is below 1.
        """
        check_int("num_frames", num_frames)
        num_frames = int(num_frames)  # a NumPy integer counts as Python's
        if num_frames < 1:
            # The original fails here too (it concatenates no slices).
            raise ValueError(f"AutoencoderKLRuyiCausal3D.encode needs at least one frame, got {num_frames}.")
        return self._encoder_chunks(num_frames)[-1][3]

    def num_sample_frames(self, num_latent_frames: int) -> int:
        r"""
        The number of video frames `decode` produces for ``num_latent_frames`` latent frames.

        A lone latent frame decodes to one image. Otherwise every latent frame gives
        ``temporal_compression_ratio`` (4) frames, except the first one of an odd count in the slice variant, which
        is decoded alone to one image: the cache variant gives ``4 * L`` frames (3 -> 12, 5 -> 20), the slice variant
        ``4 * L - 3`` for odd ``L`` (3 -> 9). The cache variant's last chunk may hold fewer than
        ``num_latent_frames_batch_size`` (2) latent frames, as in the original.

        Args:
            num_latent_frames (`int`): Latent frames, at least 1.

        Returns:
            `int`: The decoded frame count.

        Raises:
            `TypeError` or `ValueError`: ``num_latent_frames`` is not an integer, or is below 1.
        """
        check_int("num_latent_frames", num_latent_frames)
        num_latent_frames = int(num_latent_frames)
        if num_latent_frames < 1:
            raise ValueError(
                f"AutoencoderKLRuyiCausal3D.decode needs at least one latent frame, got {num_latent_frames}."
            )
        lone = self._lone_first(num_latent_frames, decode=True)
        return int(lone) + (num_latent_frames - lone) * self.temporal_compression_ratio

    def _latent_size(self, pixels: int) -> int:
        # Each downsampler pads one row/column at the end and convolves with stride 2: floor(size / 2).
        for _ in range(len(self.config.block_out_channels) - 1):
            pixels //= 2
        return pixels

    def _moments_shape(self, x: torch.Tensor) -> Tuple[int, ...]:
        batch_size, _, num_frames, height, width = x.shape
        latent_frames = self.num_latent_frames(num_frames)
        return (
            batch_size,
            2 * self.config.latent_channels,
            latent_frames,
            self._latent_size(height),
            self._latent_size(width),
        )

    def _video_shape(self, z: torch.Tensor) -> Tuple[int, ...]:
        batch_size, _, num_latent, height, width = z.shape
        ratio = self.spatial_compression_ratio
        return batch_size, self.config.out_channels, self.num_sample_frames(num_latent), height * ratio, width * ratio

    def _new_output(self, like: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
        """An uninitialised encode/decode output. With mid-block attention the original's encoder and decoder carry its
        channels-last layout to their outputs, and what consumes them (the pipeline's `smooth_output`, a second
        encode) picks its kernels by layout: see `_ORIGINAL_LAYOUT`."""
        layout = _ORIGINAL_LAYOUT if self.config.mid_block_add_attention else torch.contiguous_format
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)

    def _tile_like_original(
        self,
        source: torch.Tensor,
        tile: int,
        step: int,
        run,
        out: torch.Tensor,
        overlap: int,
        keep: int,
    ) -> None:
        """The original's tiling loop, streamed: square ``tile``s of ``source`` every ``step`` (input units) go through
        ``run``; each result is faded into the tile above and the one to its left over ``overlap`` (output units),
        cropped to ``keep`` and written into ``out``. Only the strips that later tiles blend with are kept, not every
        tile as in the original."""
        height, width = source.shape[-2:]
        above: Dict[int, torch.Tensor] = {}
        out_top = 0
        for top in range(0, height, step):
            below: Dict[int, torch.Tensor] = {}
            left_strip = None
            out_left = 0
            for column, left in enumerate(range(0, width, step)):
                result = run(source[..., top : top + tile, left : left + tile])
                if overlap:
                    if column in above:
                        _blend_into(above.pop(column), result, -2, overlap)
                    if left_strip is not None:
                        _blend_into(left_strip, result, -1, overlap)
                kept = result[..., :keep, :keep]
                rows, columns = kept.shape[-2:]
                out[..., out_top : out_top + rows, out_left : out_left + columns].copy_(kept)
                out_left += columns
                if overlap:
                    # Copies, so that only the strips stay alive, not the tiles.
                    left_strip = result[..., -overlap:].clone()
                    if top + step < height:
                        below[column] = result[..., -overlap:, :].clone()
                del result, kept
            out_top += rows
            above = below
        if (out_top, out_left) != tuple(out.shape[-2:]):
            raise RuntimeError(f"Tiling covered {out_top}x{out_left} of {tuple(out.shape[-2:])}.")

    # ------------------------------------------------------------------------------------------------------------
    # Input checks
    # ------------------------------------------------------------------------------------------------------------

    def _check_input(self, tensor, name: str, channels_key: str, min_size: int, first_layer: nn.Module) -> None:
        """Refuses what `encode` (``x``, pixels) or `decode` (``z``, latents) cannot take, before any work: not a
        floating-point 5D tensor, another channel count than the config's ``channels_key``, an empty batch, a height
        or width below ``min_size``, or a dtype that ``first_layer`` cannot compute with. Shapes and dtypes only."""
        layout = "(B, C, F, H, W)"
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor {layout}, got {type(tensor).__name__}.")
        if not tensor.is_floating_point():
            raise TypeError(f"`{name}` must be a floating-point tensor, got {tensor.dtype}.")
        if tensor.ndim != 5:
            raise ValueError(f"`{name}` must be a 5D tensor {layout}, got shape {tuple(tensor.shape)}.")
        batch_size, channels, _, height, width = tensor.shape
        expected = self.config[channels_key]
        if channels != expected:
            raise ValueError(
                f"`{name}` must have {channels_key}={expected} channels (dim 1), got {channels} (shape "
                f"{tuple(tensor.shape)})."
            )
        if batch_size < 1:
            raise ValueError(f"`{name}` must hold at least one sample, got batch size {batch_size}.")
        if height < min_size or width < min_size:
            unit = "pixels" if min_size > 1 else "latents"
            # Each of the encoder's downsamplers halves the size (rounding down) and needs 2 rows and columns.
            reason = f" (the encoder downsamples {min_size}x)" if min_size > 1 else ""
            raise ValueError(
                f"`{name}` must be at least {min_size}x{min_size} {unit}{reason}, got {height}x{width} (H x W)."
            )
        check_input_dtype(name, tensor, compute_dtype(first_layer), "VAE")

    # ------------------------------------------------------------------------------------------------------------
    # Encoding
    # ------------------------------------------------------------------------------------------------------------

    def _encode_frames(self, x: torch.Tensor, out: torch.Tensor, weight: Optional[torch.Tensor] = None) -> None:
        """Encodes ``x`` slice by slice into ``out`` (moments), adding ``weight * moments`` when blending tiles.

        Slices are encoded independently, so a slice equal to the one before it has the same moments: they are reused,
        not recomputed. The pipeline's conditioning videos are mostly such runs (every frame after the start frames
        is masked to a constant), so at 120 frames this encodes 2 of their 15 slices."""
        previous, moments = None, None
        for start, end, latent_start, latent_end in self._encoder_chunks(x.shape[2]):
            frames = x[:, :, start:end]
            if previous is None or not same_values(previous, frames):
                moments = self.quant_conv(self.encoder(frames))
            previous = frames
            # `_store` scales its values in place when blending tiles: give it a copy of moments that may be reused.
            _store(out[:, :, latent_start:latent_end], moments if weight is None else moments.clone(), weight)

    def _encode_untiled(self, x: torch.Tensor) -> torch.Tensor:
        out = self._new_output(x, self._moments_shape(x))
        self._encode_frames(x, out)
        return out

    def _encode_original_tiled(self, x: torch.Tensor) -> torch.Tensor:
        tile, step, blend, keep = self._original_tile_geometry(decode=False)
        untiled = self._moments_shape(x)
        shape = untiled[:-2] + self.tiled_output_size(*x.shape[-2:])  # also refuses a last tile too small to encode
        self._warn_if_resized(shape, untiled, "encode")
        out = self._new_output(x, shape)
        self._tile_like_original(x, tile, step, self._encode_untiled, out, blend, keep)
        return out

    def _warn_if_resized(self, shape: Tuple[int, ...], untiled: Tuple[int, ...], operation: str) -> None:
        if shape != untiled:
            logger.warning(
                f"The original's tiling at tile_sample_min_size={self.tile_sample_min_size} and tile_overlap_factor="
                f"{self._original_tile_overlap_factor} makes this {operation} {shape[-2]}x{shape[-1]} instead of "
                f"{untiled[-2]}x{untiled[-1]} (its tiles drift against its crops), as the original does; use "
                "`enable_tiling()` or an aligned size (a multiple of 32 px with overlap 0.25) to keep the size."
            )

    def _package_tiled(self, source: torch.Tensor, out: torch.Tensor, run, decode: bool) -> torch.Tensor:
        """The package's tiling of encode and decode alike: overlapping tiles of the latent grid, each
        ``run(source_tile, out_tile, weight)`` adding its weighted result into the zeroed ``out``, which is then
        divided by the summed weights (a linear cross-fade). The pixel side is scaled by the compression ratio."""
        ratio = self.spatial_compression_ratio
        source_scale, out_scale = (1, ratio) if decode else (ratio, 1)
        tile_h, tile_w, overlap_h, overlap_w = self._latent_tile_geometry()
        rows = _tile_spans(out.shape[-2] // out_scale, tile_h, overlap_h)
        cols = _tile_spans(out.shape[-1] // out_scale, tile_w, overlap_w)
        weight_sum = out.new_zeros(out.shape[-2:])
        s, o = source_scale, out_scale
        # An encoded side that is no multiple of the ratio has pixels beyond its last whole latent (71 px: 8 latents
        # from 64 px, and 7 more rows that the untiled encoder also reads): the last tile reaches the true edge.
        height, width = source.shape[-2:]
        for i, (top, bottom) in enumerate(rows):
            weight_h = _blend_weights(rows, i, o, out.device, out.dtype)
            last_row = height if not decode and i == len(rows) - 1 else bottom * s
            for j, (left, right) in enumerate(cols):
                weight = weight_h[:, None] * _blend_weights(cols, j, o, out.device, out.dtype)[None, :]
                last_col = width if not decode and j == len(cols) - 1 else right * s
                tile = source[..., top * s : last_row, left * s : last_col]
                run(tile, out[..., top * o : bottom * o, left * o : right * o], weight)
                weight_sum[top * o : bottom * o, left * o : right * o] += weight
        return out.div_(weight_sum)

    def _encode_package_tiled(self, x: torch.Tensor) -> torch.Tensor:
        out = self._new_output(x, self._moments_shape(x)).zero_()
        return self._package_tiled(x, out, self._encode_frames, decode=False)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_tiles(x.shape[-2], x.shape[-1]) == 1:
            return self._encode_untiled(x)
        return self._encode_original_tiled(x) if self.tiling_mode == "original" else self._encode_package_tiled(x)

    @apply_forward_hook
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> Union[AutoencoderKLOutput, Tuple[DiagonalGaussianDistribution]]:
        """
        Encodes a batch of videos into latent distributions.

        Args:
            x (`torch.Tensor`): Videos ``(B, C, F, H, W)`` in ``[-1, 1]``, ``C = in_channels``, ``H`` and ``W`` at
                least ``spatial_compression_ratio`` (8; other sizes are floored to a multiple of it, with a warning,
                as in the original), in the VAE's dtype (any floating dtype under
                `torch.autocast`); any ``F >= 1`` (see `num_latent_frames`). Anything else raises a `TypeError` or
                `ValueError` before any work.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return an [`~models.modeling_outputs.AutoencoderKLOutput`] instead of a tuple.

        Returns:
            [`~models.modeling_outputs.AutoencoderKLOutput`] or `tuple`: the posterior, a
            `DiagonalGaussianDistribution` over latents ``(B, latent_channels, num_latent_frames(F), H / 8, W / 8)``.
        """
        self._check_input(x, "x", "in_channels", self.spatial_compression_ratio, self.encoder.conv_in)
        self.num_latent_frames(x.shape[2])  # validate before doing any work
        ratio = self.spatial_compression_ratio
        height, width = x.shape[-2:]
        said = self.__dict__.setdefault("_floored_sizes_said", set())
        if (height % ratio or width % ratio) and (height, width) not in said:
            # The downsamplers floor odd sizes, as the original's do: say so (once per size, as a training loop would
            # repeat it) rather than shrink the video silently.
            said.add((height, width))
            logger.warning(
                f"AutoencoderKLRuyiCausal3D.encode got frames of {height}x{width}, not multiples of {ratio}: the "
                f"latents are {self._latent_size(height)}x{self._latent_size(width)}, so decoding them gives "
                f"{self._latent_size(height) * ratio}x{self._latent_size(width) * ratio} frames (as in the original VAE)."
            )
        _warn_once_on_amx_bfloat16(x, self.encoder.conv_in)
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(x_slice) for x_slice in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    # ------------------------------------------------------------------------------------------------------------
    # Decoding
    # ------------------------------------------------------------------------------------------------------------

    def _decode_frames(self, z: torch.Tensor, out: torch.Tensor, weight: Optional[torch.Tensor] = None) -> None:
        """Decodes ``z`` chunk by chunk into ``out``, or adds ``weight * frames`` when blending tiles."""
        if self.config.compression_mode == "slice":
            self._decode_slices(z, out, weight)
        else:
            self._decode_cached(z, out, weight)

    def _decode_slices(self, z: torch.Tensor, out: torch.Tensor, weight: Optional[torch.Tensor]) -> None:
        # post_quant_conv is pointwise and every latent frame is also context of its neighbours: run it once.
        z = self.post_quant_conv(z)
        chunks = self._chunks(z.shape[2], self.config.num_latent_frames_batch_size, decode=True)
        lone = self._lone_first(z.shape[2], decode=True)
        position = 0
        for index, (start, end) in enumerate(chunks):
            if lone and index == 0:
                frames = self.decoder(z[:, :, :1], temporal_upsample=False)
            else:
                # The previous and the next chunk (not the lone first frame) are context for conv_in and the mid block;
                # they are contiguous in `z`, so the window is a view, not a concatenation.
                context_start = chunks[index - 1][0] if index > int(lone) else start
                context_end = chunks[index + 1][1] if index + 1 < len(chunks) else end
                window = z[:, :, context_start:context_end]
                frames = self.decoder(window, keep_frames=(start - context_start, end - context_start))
            _store(out[:, :, position : position + frames.shape[2]], frames, weight)
            position += frames.shape[2]
            del frames

    def _decode_cached(self, z: torch.Tensor, out: torch.Tensor, weight: Optional[torch.Tensor]) -> None:
        # A lone latent frame is one image: chunk-local zero padding, no cache. Otherwise chunks of
        # `num_latent_frames_batch_size`, the last one possibly shorter, carry the causal cache from one to the next.
        num_latent = z.shape[2]
        chunks = self._chunks(num_latent, self.config.num_latent_frames_batch_size, decode=True)
        causal_cache = None if num_latent == 1 else RuyiCausalCache()
        ratio = self.temporal_compression_ratio if num_latent > 1 else 1
        try:
            for start, end in chunks:
                if causal_cache is not None:
                    causal_cache.begin_chunk()
                latents = self.post_quant_conv(z[:, :, start:end])
                frames = self.decoder(latents, causal_cache, temporal_upsample=causal_cache is not None)
                _store(out[:, :, start * ratio : start * ratio + frames.shape[2]], frames, weight)
                del frames
        finally:
            if causal_cache is not None:
                causal_cache.clear()

    def _decode_untiled(self, z: torch.Tensor) -> torch.Tensor:
        out = self._new_output(z, self._video_shape(z))
        self._decode_frames(z, out)
        return out

    def _decode_original_tiled(self, z: torch.Tensor) -> torch.Tensor:
        tile, step, blend, keep = self._original_tile_geometry(decode=True)
        untiled = self._video_shape(z)
        shape = untiled[:-2] + self.tiled_output_size(*z.shape[-2:], decode=True)
        self._warn_if_resized(shape, untiled, "decode")
        out = self._new_output(z, shape)
        self._tile_like_original(z, tile, step, self._decode_untiled, out, blend, keep)
        # The original decodes the lower-right corner tile once more and fades it in towards the corner.
        corner = self._decode_untiled(z[..., -tile:, -tile:])
        height, width = corner.shape[-2:]
        weights = torch.minimum(torch.linspace(0, 1, width)[None, :], torch.linspace(0, 1, height)[:, None])
        weights = weights.to(out.device)
        area = out[..., -height:, -width:]
        area.copy_(weights * corner + (1 - weights) * area)
        return out

    def _decode_package_tiled(self, z: torch.Tensor) -> torch.Tensor:
        out = self._new_output(z, self._video_shape(z)).zero_()
        return self._package_tiled(z, out, self._decode_frames, decode=True)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        ratio = self.spatial_compression_ratio
        if self.num_tiles(z.shape[-2] * ratio, z.shape[-1] * ratio, decode=True) == 1:
            return self._decode_untiled(z)
        return self._decode_original_tiled(z) if self.tiling_mode == "original" else self._decode_package_tiled(z)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> Union[DecoderOutput, Tuple[torch.Tensor]]:
        """
        Decodes a batch of latents (already divided by ``scaling_factor``) into videos.

        Args:
            z (`torch.Tensor`): Latents ``(B, latent_channels, L, h, w)`` in the VAE's dtype (any floating dtype
                under `torch.autocast`); any ``L >= 1`` (see `num_sample_frames`). Anything else raises a
                `TypeError` or `ValueError` before any work.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`~models.autoencoders.vae.DecoderOutput`] instead of a tuple.

        Returns:
            [`~models.autoencoders.vae.DecoderOutput`] or `tuple`: videos ``(B, out_channels, num_sample_frames(L),
            8 * h, 8 * w)``, not clamped.
        """
        self._check_input(z, "z", "latent_channels", 1, self.post_quant_conv)
        self.num_sample_frames(z.shape[2])  # validate before doing any work
        _warn_once_on_amx_bfloat16(z, self.post_quant_conv)
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(z_slice) for z_slice in z.split(1)])
        else:
            decoded = self._decode(z)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> Union[DecoderOutput, Tuple[torch.Tensor]]:
        r"""
        Encodes and decodes ``sample``.

        Args:
            sample (`torch.Tensor`): Videos ``(B, C, F, H, W)``.
            sample_posterior (`bool`, *optional*, defaults to `False`): Sample the posterior instead of its mode.
            return_dict (`bool`, *optional*, defaults to `True`): Return a `DecoderOutput` instead of a tuple.
            generator (`torch.Generator`, *optional*): Generator for posterior sampling.
        """
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)
