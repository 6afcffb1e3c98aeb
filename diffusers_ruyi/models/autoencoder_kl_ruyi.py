"""`AutoencoderKLRuyiCausal3D`: the causal 3D video VAE of Ruyi-Mini-7B (8x spatial, 4x temporal, 16 latent channels).

The network is a Magvit-style VAE (the ``AutoencoderKLMagvit`` of the original Ruyi code, in its
``cache_compression_vae`` mode). Its numerics depend on how frames are grouped, so this port reproduces the
original's grouping exactly:

* **Encoding** runs on independent chunks of ``num_sample_frames_batch_size`` (8) frames. Inside a chunk every 3D
  convolution pads time with one zero frame on each side (not causally), and group norms pool statistics over the
  chunk's frames. A single frame (an image) is encoded alone the same way. No state crosses chunk boundaries.
* **Decoding** runs on chunks of ``num_latent_frames_batch_size`` (2) latent frames. Every temporal convolution is
  causal: the first chunk replicates its first frame as padding, later chunks are prefixed with the last frames the
  same convolution saw in the previous chunk (the *causal cache*, `RuyiCausalCache`). Each spatio-temporal upsampler
  doubles the chunk's frames with trilinear interpolation. A single latent frame is decoded alone with zero temporal
  padding and no temporal upsampling (one image out).

The cache is explicit: it is created per decode call (and per tile), passed down as ``causal_cache`` and cleared
before the call returns.
"""

import math
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

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

from ..loaders.original_checkpoint import (
    HUB_KWARGS,
    convert_vae_config,
    convert_vae_state_dict,
    is_original_vae_config,
    load_converted_state_dict,
    local_folder,
    read_safetensors,
    weights_file,
)


logger = logging.get_logger(__name__)

_DOWN_BLOCK_TYPES = ("SpatialDownBlock3D", "SpatialTemporalDownBlock3D")
_UP_BLOCK_TYPES = ("SpatialUpBlock3D", "SpatialTemporalUpBlock3D")


# Keyword arguments of `from_pretrained` that locate files (forwarded to `load_config` / the hub download).
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

    def forward(self, hidden_states: torch.Tensor, causal_cache: Optional[RuyiCausalCache] = None) -> torch.Tensor:
        if causal_cache is None:
            padding = (self.temporal_context // 2, self.padding[1], self.padding[2])
            return F.conv3d(hidden_states, self.weight, self.bias, self.stride, padding)

        if self.stride[0] != 1:
            raise ValueError("Causal (cached) mode only supports temporal stride 1.")
        previous = causal_cache.read()
        if previous is None:
            previous = hidden_states[:, :, :1].expand(-1, -1, self.temporal_context, -1, -1)
        hidden_states = torch.cat([previous.to(hidden_states.dtype), hidden_states], dim=2)
        # Clone: a slice would keep the whole concatenated chunk alive until the next chunk.
        causal_cache.write(hidden_states[:, :, -self.temporal_context :].clone())
        return F.conv3d(hidden_states, self.weight, self.bias, self.stride, self.padding)


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
        shortcut = self.shortcut(hidden_states)
        hidden_states = _silu_(self.norm1(hidden_states), self.nonlinearity)
        hidden_states = self.conv1(hidden_states, causal_cache)
        hidden_states = _silu_(self.norm2(hidden_states), self.nonlinearity)
        hidden_states = self.conv2(hidden_states, causal_cache)
        return hidden_states + shortcut


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

    def forward(self, hidden_states: torch.Tensor, causal_cache: Optional[RuyiCausalCache] = None) -> torch.Tensor:
        hidden_states = F.interpolate(hidden_states, scale_factor=(1, 2, 2), mode="nearest")
        hidden_states = self.conv(hidden_states, causal_cache)
        # A lone latent frame (no cache) decodes to a single image: the original skips the temporal doubling there.
        if self.temporal and causal_cache is not None:
            hidden_states = F.interpolate(hidden_states, scale_factor=(2, 1, 1), mode="trilinear")
        return hidden_states


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
        self.convs = nn.ModuleList(
            RuyiResidualBlock3D(in_channels if i == 0 else out_channels, out_channels, act_fn, norm_num_groups, 1e-6)
            for i in range(num_layers)
        )
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
        self.convs = nn.ModuleList(
            RuyiResidualBlock3D(in_channels if i == 0 else out_channels, out_channels, act_fn, norm_num_groups, 1e-6)
            for i in range(num_layers)
        )
        self.upsampler = RuyiUpsampler3D(out_channels, temporal_upsample) if add_upsample else None

    def forward(self, hidden_states: torch.Tensor, causal_cache: Optional[RuyiCausalCache] = None) -> torch.Tensor:
        for conv in self.convs:
            hidden_states = conv(hidden_states, causal_cache)
        if self.upsampler is not None:
            hidden_states = self.upsampler(hidden_states, causal_cache)
        return hidden_states


class RuyiMidBlock3D(nn.Module):
    """Residual blocks interleaved with per-frame spatial self-attention (diffusers' `Attention`, one frame at a time)."""

    def __init__(
        self,
        channels: int,
        num_layers: int,
        act_fn: str,
        norm_num_groups: int,
        add_attention: bool,
        num_attention_heads: int,
    ):
        super().__init__()
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
        return frames.reshape(batch_size, num_frames, channels, height, width).permute(0, 2, 1, 3, 4).contiguous()

    def forward(self, hidden_states: torch.Tensor, causal_cache: Optional[RuyiCausalCache] = None) -> torch.Tensor:
        hidden_states = self.convs[0](hidden_states, causal_cache)
        for i, conv in enumerate(self.convs[1:]):
            if i < len(self.attentions):
                hidden_states = self._attend_per_frame(self.attentions[i], hidden_states)
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
            channels, layers_per_block, act_fn, norm_num_groups, mid_block_add_attention, mid_block_num_attention_heads
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
    """Maps one chunk of latents to frames. ``causal_cache=None`` selects the lone-latent-frame (image) path."""

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

    def forward(self, hidden_states: torch.Tensor, causal_cache: Optional[RuyiCausalCache] = None) -> torch.Tensor:
        hidden_states = self.conv_in(hidden_states, causal_cache)
        hidden_states = self.mid_block(hidden_states, causal_cache)
        for block in self.up_blocks:
            hidden_states = block(hidden_states, causal_cache)
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


class AutoencoderKLRuyiCausal3D(ModelMixin, AutoencoderMixin, ConfigMixin):
    r"""
    The causal 3D VAE of Ruyi-Mini-7B: videos ``(B, 3, F, H, W)`` in ``[-1, 1]`` to latents ``(B, 16, F / 4, H / 8,
    W / 8)`` and back.

    It loads the original ``vae/`` folder of ``IamCreateAI/Ruyi-Mini-7B`` directly (see `from_pretrained`) and
    reproduces the original's numerics, including its frame chunking (see the module docstring). Defaults are the
    Ruyi-Mini-7B VAE.

    Valid frame counts: encode takes ``1`` or a multiple of ``num_sample_frames_batch_size`` (8: 8, 16, ..., 120)
    frames; decode takes ``1`` or a multiple of ``num_latent_frames_batch_size`` (2) latent frames and returns ``1``
    or ``4 * latent_frames`` frames.

    Parameters:
        in_channels (`int`, defaults to 3): Channels of the input video.
        out_channels (`int`, defaults to 3): Channels of the decoded video.
        latent_channels (`int`, defaults to 16): Channels of the latent space.
        block_out_channels (`Tuple[int]`, defaults to `(128, 256, 512, 512)`): Width of each encoder/decoder stage.
        down_block_types (`Tuple[str]`): Encoder stages, each `"SpatialDownBlock3D"` (2x spatial) or
            `"SpatialTemporalDownBlock3D"` (2x spatial and temporal); the last stage does not downsample.
        up_block_types (`Tuple[str]`): Decoder stages, `"SpatialUpBlock3D"` or `"SpatialTemporalUpBlock3D"`.
        layers_per_block (`int`, defaults to 2): Residual blocks per encoder stage (decoder stages have one more) and
            in the mid blocks.
        act_fn (`str`, defaults to `"silu"`): Activation function.
        norm_num_groups (`int`, defaults to 32): Groups of every group norm.
        mid_block_add_attention (`bool`, defaults to `True`): Per-frame spatial self-attention in the mid blocks.
        mid_block_num_attention_heads (`int`, defaults to 1): Heads of that attention.
        scaling_factor (`float`, defaults to 0.7125): Latents are multiplied by this before the transformer and
            divided by it before `decode`.
        num_sample_frames_batch_size (`int`, defaults to 8): Frames per encoder chunk. Changes the numerics (group
            norm statistics, temporal padding at chunk edges): keep the checkpoint's value.
        num_latent_frames_batch_size (`int`, defaults to 2): Latent frames per decoder chunk; same remark.
        force_upcast (`bool`, defaults to `True`): The original always ran this VAE in float32 (``upcast_vae``);
            pipelines should do the same for half-precision models.
    """

    _supports_gradient_checkpointing = True
    _skip_keys = ["causal_cache"]
    _group_offload_block_modules = ["quant_conv", "post_quant_conv", "encoder", "decoder"]

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
            "SpatialDownBlock3D",
        ),
        up_block_types: Tuple[str, ...] = (
            "SpatialUpBlock3D",
            "SpatialTemporalUpBlock3D",
            "SpatialTemporalUpBlock3D",
            "SpatialUpBlock3D",
        ),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        mid_block_num_attention_heads: int = 1,
        scaling_factor: float = 0.7125,
        num_sample_frames_batch_size: int = 8,
        num_latent_frames_batch_size: int = 2,
        force_upcast: bool = True,
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
        )
        self.quant_conv = nn.Conv3d(2 * latent_channels, 2 * latent_channels, kernel_size=1)
        self.post_quant_conv = nn.Conv3d(latent_channels, latent_channels, kernel_size=1)

        self.spatial_compression_ratio = 2 ** (len(block_out_channels) - 1)
        self.temporal_compression_ratio = 2 ** sum(t == "SpatialTemporalDownBlock3D" for t in down_block_types[:-1])
        decoder_temporal_ratio = 2 ** sum(t == "SpatialTemporalUpBlock3D" for t in up_block_types[:-1])
        if decoder_temporal_ratio != self.temporal_compression_ratio:
            raise ValueError("Encoder and decoder must have the same number of temporal (SpatialTemporal*) stages.")
        if num_sample_frames_batch_size % self.temporal_compression_ratio != 0:
            raise ValueError(
                f"`num_sample_frames_batch_size` ({num_sample_frames_batch_size}) must be a multiple of the temporal "
                f"compression ratio ({self.temporal_compression_ratio})."
            )

        self.use_slicing = False
        self.use_tiling = False
        # Tiles are square by default; 256 px tiles keep decode memory at 512x512 well under a third of untiled.
        self.tile_sample_min_height = 256
        self.tile_sample_min_width = 256
        self.tile_overlap_factor = 0.25

    # ------------------------------------------------------------------------------------------------------------
    # Tiling configuration
    # ------------------------------------------------------------------------------------------------------------

    def enable_tiling(
        self,
        tile_sample_min_height: Optional[int] = None,
        tile_sample_min_width: Optional[int] = None,
        tile_overlap_factor: Optional[float] = None,
    ) -> None:
        r"""
        Enables spatial tiling: encode/decode overlapping tiles one at a time (each with its own frame loop and
        causal cache), accumulating them with linear blending ramps into one preallocated output. The tiler uses as
        few equal tiles as satisfy the size and overlap limits below, spread evenly. Inputs no larger than one tile
        are not tiled. Tiling approximates: each tile computes its own group-norm statistics and sees less context.

        Args:
            tile_sample_min_height (`int`, *optional*, defaults to 256):
                Largest tile height in pixels; a multiple of `spatial_compression_ratio` (8).
            tile_sample_min_width (`int`, *optional*, defaults to 256):
                Largest tile width in pixels; a multiple of `spatial_compression_ratio` (8).
            tile_overlap_factor (`float`, *optional*, defaults to 0.25):
                Smallest overlap between neighbouring tiles as a fraction of the largest tile, in `(0, 0.5]`.
        """
        height = tile_sample_min_height or self.tile_sample_min_height
        width = tile_sample_min_width or self.tile_sample_min_width
        overlap = self.tile_overlap_factor if tile_overlap_factor is None else tile_overlap_factor
        ratio = self.spatial_compression_ratio
        if height % ratio or width % ratio or height < 2 * ratio or width < 2 * ratio:
            raise ValueError(
                f"Tile sizes must be multiples of {ratio} and at least {2 * ratio}, got {height}x{width}."
            )
        if not 0 < overlap <= 0.5:
            raise ValueError(f"`tile_overlap_factor` must be in (0, 0.5], got {overlap}.")
        self.use_tiling = True
        self.tile_sample_min_height = height
        self.tile_sample_min_width = width
        self.tile_overlap_factor = overlap

    def _latent_tile_geometry(self) -> Tuple[int, int, int, int]:
        ratio = self.spatial_compression_ratio
        tile_h = self.tile_sample_min_height // ratio
        tile_w = self.tile_sample_min_width // ratio
        overlap_h = max(1, int(tile_h * self.tile_overlap_factor))
        overlap_w = max(1, int(tile_w * self.tile_overlap_factor))
        return tile_h, tile_w, overlap_h, overlap_w

    # ------------------------------------------------------------------------------------------------------------
    # Frame-count rules
    # ------------------------------------------------------------------------------------------------------------

    def num_latent_frames(self, num_frames: int) -> int:
        """Latent frames produced by `encode` for ``num_frames`` video frames (raises if the count is invalid)."""
        chunk = self.config.num_sample_frames_batch_size
        if num_frames != 1 and (num_frames <= 0 or num_frames % chunk != 0):
            raise ValueError(
                f"AutoencoderKLRuyiCausal3D.encode got {num_frames} frames; valid frame counts are 1 (an image) or a "
                f"multiple of num_sample_frames_batch_size={chunk} ({chunk}, {2 * chunk}, {3 * chunk}, ...), "
                "as in the original Ruyi pipeline, which floors video_length to a multiple of 8."
            )
        return 1 if num_frames == 1 else num_frames // self.temporal_compression_ratio

    def num_sample_frames(self, num_latent_frames: int) -> int:
        """Frames produced by `decode` for ``num_latent_frames`` latent frames (raises if the count is invalid)."""
        chunk = self.config.num_latent_frames_batch_size
        if num_latent_frames != 1 and (num_latent_frames <= 0 or num_latent_frames % chunk != 0):
            raise ValueError(
                f"AutoencoderKLRuyiCausal3D.decode got {num_latent_frames} latent frames; valid latent frame counts "
                f"are 1 (decodes to one image) or a multiple of num_latent_frames_batch_size={chunk} ({chunk}, "
                f"{2 * chunk}, ...; decodes to {self.temporal_compression_ratio}x as many frames)."
            )
        return 1 if num_latent_frames == 1 else num_latent_frames * self.temporal_compression_ratio

    # ------------------------------------------------------------------------------------------------------------
    # Encoding
    # ------------------------------------------------------------------------------------------------------------

    def _sample_chunks(self, num_frames: int) -> Iterator[Tuple[int, int]]:
        chunk = 1 if num_frames == 1 else self.config.num_sample_frames_batch_size
        for start in range(0, num_frames, chunk):
            yield start, start + chunk

    def _encode_frames(self, x: torch.Tensor, out: torch.Tensor, weight: Optional[torch.Tensor] = None) -> None:
        """Encodes ``x`` chunk by chunk into ``out`` (moments), adding ``weight * moments`` when blending tiles."""
        ratio = self.temporal_compression_ratio
        for start, end in self._sample_chunks(x.shape[2]):
            moments = self.quant_conv(self.encoder(x[:, :, start:end]))
            latent_start = start // ratio if x.shape[2] > 1 else 0
            target = out[:, :, latent_start : latent_start + moments.shape[2]]
            if weight is None:
                target.copy_(moments)
            else:
                target.add_(moments * weight)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, _, num_frames, height, width = x.shape
        ratio = self.spatial_compression_ratio
        latent_h, latent_w = -(-height // ratio), -(-width // ratio)
        out = x.new_zeros(
            batch_size, 2 * self.config.latent_channels, self.num_latent_frames(num_frames), latent_h, latent_w
        )

        tile_h, tile_w, overlap_h, overlap_w = self._latent_tile_geometry()
        if not self.use_tiling or (latent_h <= tile_h and latent_w <= tile_w):
            self._encode_frames(x, out)
            return out

        rows, cols = _tile_spans(latent_h, tile_h, overlap_h), _tile_spans(latent_w, tile_w, overlap_w)
        weight_sum = x.new_zeros(latent_h, latent_w)
        for i, (top, bottom) in enumerate(rows):
            weight_h = _blend_weights(rows, i, 1, x.device, x.dtype)
            for j, (left, right) in enumerate(cols):
                weight = weight_h[:, None] * _blend_weights(cols, j, 1, x.device, x.dtype)[None, :]
                tile = x[:, :, :, top * ratio : bottom * ratio, left * ratio : right * ratio]
                self._encode_frames(tile, out[:, :, :, top:bottom, left:right], weight)
                weight_sum[top:bottom, left:right] += weight
        return out.div_(weight_sum)

    @apply_forward_hook
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> Union[AutoencoderKLOutput, Tuple[DiagonalGaussianDistribution]]:
        """
        Encodes a batch of videos into latent distributions.

        Args:
            x (`torch.Tensor`): Videos ``(B, C, F, H, W)`` in ``[-1, 1]``; ``F`` is 1 or a multiple of
                ``num_sample_frames_batch_size`` (8).
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return an [`~models.modeling_outputs.AutoencoderKLOutput`] instead of a tuple.

        Returns:
            [`~models.modeling_outputs.AutoencoderKLOutput`] or `tuple`: the posterior, a
            `DiagonalGaussianDistribution` over latents ``(B, latent_channels, 1 or F / 4, H / 8, W / 8)``.
        """
        if x.ndim != 5:
            raise ValueError(f"Expected a video tensor (B, C, F, H, W), got shape {tuple(x.shape)}.")
        self.num_latent_frames(x.shape[2])  # validate before doing any work
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
        """Decodes ``z`` chunk by chunk (causal cache carried across chunks) into ``out``, or adds ``weight * x``."""
        num_latent = z.shape[2]
        if num_latent == 1:
            chunks, causal_cache = [(0, 1)], None
        else:
            step = self.config.num_latent_frames_batch_size
            chunks, causal_cache = [(s, s + step) for s in range(0, num_latent, step)], RuyiCausalCache()
        ratio = self.temporal_compression_ratio if num_latent > 1 else 1
        try:
            for start, end in chunks:
                if causal_cache is not None:
                    causal_cache.begin_chunk()
                frames = self.decoder(self.post_quant_conv(z[:, :, start:end]), causal_cache)
                target = out[:, :, start * ratio : start * ratio + frames.shape[2]]
                if weight is None:
                    target.copy_(frames)
                else:
                    target.add_(frames.mul_(weight))
                del frames
        finally:
            if causal_cache is not None:
                causal_cache.clear()

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        batch_size, _, num_latent, latent_h, latent_w = z.shape
        ratio = self.spatial_compression_ratio
        height, width = latent_h * ratio, latent_w * ratio
        out = z.new_zeros(batch_size, self.config.out_channels, self.num_sample_frames(num_latent), height, width)

        tile_h, tile_w, overlap_h, overlap_w = self._latent_tile_geometry()
        if not self.use_tiling or (latent_h <= tile_h and latent_w <= tile_w):
            self._decode_frames(z, out)
            return out

        rows, cols = _tile_spans(latent_h, tile_h, overlap_h), _tile_spans(latent_w, tile_w, overlap_w)
        weight_sum = z.new_zeros(height, width)
        for i, (top, bottom) in enumerate(rows):
            weight_h = _blend_weights(rows, i, ratio, z.device, z.dtype)
            for j, (left, right) in enumerate(cols):
                weight = weight_h[:, None] * _blend_weights(cols, j, ratio, z.device, z.dtype)[None, :]
                tile_out = out[:, :, :, top * ratio : bottom * ratio, left * ratio : right * ratio]
                self._decode_frames(z[:, :, :, top:bottom, left:right], tile_out, weight)
                weight_sum[top * ratio : bottom * ratio, left * ratio : right * ratio] += weight
        return out.div_(weight_sum)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> Union[DecoderOutput, Tuple[torch.Tensor]]:
        """
        Decodes a batch of latents (already divided by ``scaling_factor``) into videos.

        Args:
            z (`torch.Tensor`): Latents ``(B, latent_channels, L, h, w)``; ``L`` is 1 or a multiple of
                ``num_latent_frames_batch_size`` (2).
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`~models.autoencoders.vae.DecoderOutput`] instead of a tuple.

        Returns:
            [`~models.autoencoders.vae.DecoderOutput`] or `tuple`: videos ``(B, out_channels, 1 or 4 * L, 8 * h,
            8 * w)``, not clamped.
        """
        if z.ndim != 5:
            raise ValueError(f"Expected latents (B, C, F, H, W), got shape {tuple(z.shape)}.")
        self.num_sample_frames(z.shape[2])  # validate before doing any work
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

    # ------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs: Any
    ) -> "AutoencoderKLRuyiCausal3D":
        r"""
        Loads the VAE from a diffusers-format folder/repo or from the ORIGINAL Ruyi ``vae/`` folder.

        The config is read with the same hub arguments (``subfolder``, ``revision``, ``cache_dir``, ...). When its
        ``_class_name`` is the original ``AutoencoderKLMagvit``, the config and the safetensors weights are converted
        in memory (`diffusers_ruyi.loaders.original_checkpoint`) and loaded strictly: missing or unexpected keys raise
        a `ValueError` listing them. Otherwise this is `ModelMixin.from_pretrained`.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): A local folder or a hub repo id.
            dtype (`torch.dtype`, *optional*): Load the weights in this dtype (``torch_dtype`` is accepted too).
            kwargs: Everything `ModelMixin.from_pretrained` accepts; for original checkpoints only the hub arguments,
                ``dtype``/``torch_dtype`` and a single-device ``device_map`` are used.

        Example:

        ```py
        >>> vae = AutoencoderKLRuyiCausal3D.from_pretrained("IamCreateAI/Ruyi-Mini-7B", subfolder="vae")
        ```
        """
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        config = cls.load_config(pretrained_model_name_or_path, **hub_kwargs)
        if not is_original_vae_config(config):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls._from_original(pretrained_model_name_or_path, config, hub_kwargs, kwargs)

    @classmethod
    def _from_original(
        cls, path: Union[str, os.PathLike], config: Dict[str, Any], hub_kwargs: Dict[str, Any], kwargs: Dict[str, Any]
    ) -> "AutoencoderKLRuyiCausal3D":
        dtype, torch_dtype = kwargs.get("dtype"), kwargs.get("torch_dtype")
        if dtype is not None and torch_dtype is not None:
            raise ValueError("Pass only one of `dtype` and `torch_dtype`.")
        dtype = dtype if dtype is not None else torch_dtype
        device_map = kwargs.get("device_map")
        ignored = sorted(k for k in kwargs if k not in (*HUB_KWARGS, "dtype", "torch_dtype", "device_map"))
        if ignored:
            logger.warning(f"Loading an original Ruyi VAE checkpoint: ignoring {ignored}.")

        weights_path = weights_file(local_folder(path, hub_kwargs))

        model = cls.from_config(convert_vae_config(config))
        load_converted_state_dict(model, convert_vae_state_dict(read_safetensors(weights_path)), "VAE")
        model.register_to_config(_name_or_path=str(path))
        if dtype is not None:
            # nn.Module.to: ModelMixin.to warns about `_keep_in_fp32_modules`, which this VAE does not use.
            nn.Module.to(model, dtype)
        if device_map is not None:
            if not isinstance(device_map, (str, torch.device, int)) or device_map in ("auto", "balanced"):
                raise ValueError("Original Ruyi VAE checkpoints only support a single-device `device_map`.")
            model.to(device_map)
        return model.eval()
