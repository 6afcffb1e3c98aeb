"""Motion / camera / aspect-ratio controls of Ruyi and the resolution buckets used to pick a video size.

Ruyi has no text encoder: the "prompts" are precomputed embeddings, one set per control combination, shipped in the
original checkpoint as ``embeddings.safetensors`` (keys ``{p|n}.{name}.{emb1|mask1|emb2|mask2}``).
[`RuyiControlEmbeddings`] holds them as a model component so that they save and load with the pipeline.
"""

import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import logging


logger = logging.get_logger(__name__)

MOTION_VALUES = ("1", "2", "3", "4", "auto")
CAMERA_DIRECTIONS = ("static", "left", "right", "up", "down", "auto")
# The tags of the published embeddings file (`p.16x9movie...`, `p.9x16movie...`); any "W:H" tag a file holds works.
ASPECT_RATIOS = ("16:9", "9:16")
DEFAULT_POSITIVE = "p.default"
DEFAULT_NEGATIVE = "n.default"
_FIELDS = ("emb1", "mask1", "emb2", "mask2")
# The smallest `base_resolution` taken: its narrowest buckets are 32 px on the short side.
MIN_BASE_RESOLUTION = 64
# The largest base resolution: its widest buckets are twice as long (1024 px at 512), so at most `MAX_FRAME_SIZE`.
MAX_BASE_RESOLUTION = 2048

# Height/width buckets (in pixels) at a base resolution of 512, keyed by height / width. They are the buckets the
# model was trained on; `get_bucket_size` rescales them to other base resolutions as the original script does.
_BUCKETS_512 = {
    0.25: (256, 1024), 0.26: (256, 992), 0.27: (256, 960), 0.28: (256, 928), 0.32: (288, 896), 0.33: (288, 864),
    0.35: (288, 832), 0.4: (320, 800), 0.42: (320, 768), 0.48: (352, 736), 0.5: (352, 704), 0.52: (352, 672),
    0.57: (384, 672), 0.6: (384, 640), 0.68: (416, 608), 0.72: (416, 576), 0.78: (448, 576), 0.82: (448, 544),
    0.88: (480, 544), 0.94: (480, 512), 1.0: (512, 512), 1.07: (512, 480), 1.13: (544, 480), 1.21: (544, 448),
    1.29: (576, 448), 1.38: (576, 416), 1.46: (608, 416), 1.67: (640, 384), 1.75: (672, 384), 2.0: (704, 352),
    2.09: (736, 352), 2.4: (768, 320), 2.5: (800, 320), 2.89: (832, 288), 3.0: (864, 288), 3.11: (896, 288),
    3.62: (928, 256), 3.75: (960, 256), 3.88: (992, 256), 4.0: (1024, 256),
}  # fmt: skip


def check_controls_left_at_default(
    motions: Sequence[Union[int, str]], cameras: Sequence[str], aspect_ratios: Sequence[str] = ("16:9",)
) -> None:
    """Custom embeddings replace the controls: raises a `ValueError` naming every control (of every segment) set
    away from its default, which they would make the call ignore."""
    changed = []
    for name, values, default in (
        ("motion", motions, "auto"),
        ("camera_direction", cameras, "auto"),
        ("aspect_ratio", aspect_ratios, "16:9"),
    ):
        changed += [f"{name}={value!r}" for value in dict.fromkeys(values) if value != default]
    if changed:
        raise ValueError(
            f"Custom embeddings replace the controls, so {', '.join(changed)} would be ignored: leave them at their "
            "defaults, or drop the embeddings."
        )


def check_base_resolution(base_resolution) -> None:
    """`base_resolution`: an integer (Python or NumPy) from `MIN_BASE_RESOLUTION` to `MAX_BASE_RESOLUTION`."""
    expected = f"an integer from {MIN_BASE_RESOLUTION} to {MAX_BASE_RESOLUTION}"
    if isinstance(base_resolution, bool) or not isinstance(base_resolution, numbers.Integral):
        raise TypeError(
            f"`base_resolution` must be {expected}, got {type(base_resolution).__name__} {base_resolution!r}."
        )
    if not MIN_BASE_RESOLUTION <= base_resolution <= MAX_BASE_RESOLUTION:
        raise ValueError(f"`base_resolution` must be {expected}, got {base_resolution!r}.")


def get_bucket_size(image_height: int, image_width: int, base_resolution: int = 512) -> Tuple[int, int]:
    """Picks the (height, width) bucket closest to the image's aspect ratio, scaled to ``base_resolution``.

    The result is rounded down to a multiple of 16, as the transformer (patch 2) on 8x VAE latents requires.

    Args:
        image_height (`int`): Height of the input image in pixels.
        image_width (`int`): Width of the input image in pixels.
        base_resolution (`int`, defaults to 512):
            The video has about ``base_resolution ** 2`` pixels; 384 to 896 work well.

    Returns:
        `Tuple[int, int]`: ``(height, width)`` in pixels.
    """
    check_base_resolution(base_resolution)
    for name, value in (("image_height", image_height), ("image_width", image_width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
            raise ValueError(f"`{name}` must be a positive number (the image's size in pixels), got {value!r}.")
    ratio = image_height / image_width
    closest = min(_BUCKETS_512, key=lambda r: abs(r - ratio))
    height, width = (x / 512 * base_resolution for x in _BUCKETS_512[closest])
    return int(height / 16) * 16, int(width / 16) * 16


def normalize_motion(motion: Union[int, str]) -> str:
    """Returns the motion amplitude as the key part used in the embeddings file ("auto" is stored as "0")."""
    allowed = "1, 2, 3, 4 or 'auto' (int or str)"
    if isinstance(motion, bool) or not isinstance(motion, (numbers.Integral, str)):
        raise TypeError(f"`motion` must be one of {allowed}, got {type(motion).__name__} {motion!r}.")
    if str(motion) not in MOTION_VALUES:
        raise ValueError(f"`motion` must be one of {allowed}, got {motion!r}.")
    return "0" if str(motion) == "auto" else str(int(motion) if isinstance(motion, numbers.Integral) else motion)


def _aspect_ratio_tag(aspect_ratio: str) -> str:
    """``"16:9"`` -> ``"16x9"``, the tag used in the embeddings file's names."""
    if not isinstance(aspect_ratio, str):
        raise TypeError(f"`aspect_ratio` must be a string like 'W:H', got {type(aspect_ratio).__name__}.")
    width, sep, height = aspect_ratio.partition(":")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise ValueError(
            f"`aspect_ratio` must be a tag like {' or '.join(repr(a) for a in ASPECT_RATIOS)} ('W:H' with positive "
            f"integers), got {aspect_ratio!r}."
        )
    return f"{int(width)}x{int(height)}"


def control_name(motion: Union[int, str], camera_direction: str, aspect_ratio: str = "16:9") -> str:
    """The name of the positive embedding for a control combination, e.g. ``p.16x9movie2left``."""
    allowed = list(CAMERA_DIRECTIONS)
    if not isinstance(camera_direction, str):
        raise TypeError(f"`camera_direction` must be one of {allowed}, got {type(camera_direction).__name__}.")
    if camera_direction not in CAMERA_DIRECTIONS:
        raise ValueError(f"`camera_direction` must be one of {allowed}, got {camera_direction!r}.")
    return f"p.{_aspect_ratio_tag(aspect_ratio)}movie{normalize_motion(motion)}{camera_direction}"


def _value_problem(field: str, tensor: torch.Tensor) -> Optional[str]:
    """What is wrong with the values of an ``emb*`` (finite floating point) or ``mask*`` (0/1) tensor, or None."""
    if field.startswith("emb") and not (tensor.is_floating_point() and bool(torch.isfinite(tensor).all())):
        return f"is not finite floating-point embeddings ({tensor.dtype})"
    if field.startswith("mask") and (tensor.is_complex() or not bool(((tensor == 0) | (tensor == 1)).all())):
        return "is not a 0/1 attention mask"
    return None


class RuyiControlEmbeddings(ModelMixin, ConfigMixin):
    r"""
    The precomputed control embeddings that stand in for Ruyi's text encoders.

    Each named entry has two token streams, as HunyuanDiT's two text encoders had: ``emb1`` (``text_len`` x
    ``cross_attention_dim``, fed straight to cross-attention) and ``emb2`` (``text_len_t5`` x
    ``cross_attention_dim_t5``, projected by the transformer's ``text_embedder``), each with a 0/1 mask. They are
    stored stacked, one row per name, so the component saves and loads like any diffusers model.

    Args:
        names (`List[str]`): Entry names, e.g. ``"p.default"``, ``"n.default"``, ``"p.16x9movie2left"``.
        text_len (`int`): Tokens in the first stream.
        cross_attention_dim (`int`): Width of the first stream.
        text_len_t5 (`int`): Tokens in the second stream.
        cross_attention_dim_t5 (`int`): Width of the second stream.
    """

    @register_to_config
    def __init__(
        self,
        names: List[str],
        text_len: int = 77,
        cross_attention_dim: int = 1024,
        text_len_t5: int = 256,
        cross_attention_dim_t5: int = 2048,
    ):
        super().__init__()
        for required in (DEFAULT_POSITIVE, DEFAULT_NEGATIVE):
            if required not in names:
                raise ValueError(f"The control embeddings must contain {required!r}; got names {sorted(names)}.")
        self._index = {name: i for i, name in enumerate(names)}
        n = len(names)
        self.register_buffer("emb1", torch.zeros(n, text_len, cross_attention_dim))
        self.register_buffer("mask1", torch.zeros(n, text_len, dtype=torch.long))
        self.register_buffer("emb2", torch.zeros(n, text_len_t5, cross_attention_dim_t5))
        self.register_buffer("mask2", torch.zeros(n, text_len_t5, dtype=torch.long))

    @classmethod
    def from_flat_dict(cls, flat: Dict[str, torch.Tensor]) -> "RuyiControlEmbeddings":
        """Builds the component from the original ``embeddings.safetensors`` layout (``<name>.<field>`` keys)."""
        grouped: Dict[str, Dict[str, torch.Tensor]] = {}
        unexpected = []
        for key, value in flat.items():
            name, _, field = key.rpartition(".")
            if field not in _FIELDS or not name:
                unexpected.append(key)
                continue
            grouped.setdefault(name, {})[field] = value
        incomplete = {name: sorted(set(_FIELDS) - set(fields)) for name, fields in grouped.items()}
        incomplete = {k: v for k, v in incomplete.items() if v}
        if unexpected or incomplete:
            raise ValueError(
                "The control embeddings file is malformed. "
                f"Unexpected keys: {sorted(unexpected)}; entries missing fields: {incomplete}. "
                f"Every key must be '<name>.<field>' with field in {list(_FIELDS)}."
            )
        bad = []
        for name, fields in grouped.items():
            for field, tensor in fields.items():
                if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0:
                    bad.append(f"{name}.{field} is not a tensor with a batch dimension")
                elif problem := _value_problem(field, tensor):
                    bad.append(f"{name}.{field} {problem}")
        if bad:
            raise ValueError(f"The control embeddings file is malformed: {'; '.join(sorted(bad))}.")
        names = sorted(grouped)
        for required in (DEFAULT_POSITIVE, DEFAULT_NEGATIVE):
            if required not in grouped:
                raise ValueError(
                    f"The control embeddings file has no {required!r} entry (missing key '{required}.emb1')."
                )
        ref = grouped[DEFAULT_POSITIVE]
        model = cls(
            names=names,
            text_len=ref["emb1"].shape[-2],
            cross_attention_dim=ref["emb1"].shape[-1],
            text_len_t5=ref["emb2"].shape[-2],
            cross_attention_dim_t5=ref["emb2"].shape[-1],
        )
        with torch.no_grad():
            for field in _FIELDS:
                buffer = getattr(model, field)
                for name in names:
                    tensor = grouped[name][field]
                    expected = (1, *buffer.shape[1:])
                    if tuple(tensor.shape) != expected:
                        raise ValueError(
                            f"Control embedding '{name}.{field}' has shape {tuple(tensor.shape)}, expected {expected}."
                        )
                    buffer[model._index[name]] = tensor[0].to(buffer.dtype)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        r"""
        [`~diffusers.ModelMixin.from_pretrained`] of a saved component, held to the checks of the original
        `embeddings.safetensors`: safetensors only (`use_safetensors=False` and a pickle-only folder are refused),
        every key present (a missing one is a `ValueError` that lists it, where diffusers would leave zeros), finite
        embeddings and 0/1 masks.
        """
        from ..loaders.model_loading import load_checked_model

        model, info, output_loading_info = load_checked_model(
            super().from_pretrained,
            cls.__name__,
            pretrained_model_name_or_path,
            kwargs,
            allow_unexpected=False,
            model_subfolders=("control_embeddings",),
        )
        what = f"{cls.__name__} ({pretrained_model_name_or_path})"
        problems = [(field, _value_problem(field, getattr(model, field))) for field in _FIELDS]
        bad = [f"{field} {problem}" for field, problem in problems if problem]
        if bad:
            raise ValueError(f"The {what} weights are malformed: {'; '.join(bad)}.")
        return (model, info) if output_loading_info else model

    @property
    def names(self) -> List[str]:
        return list(self.config.names)

    @property
    def aspect_ratios(self) -> List[str]:
        """The aspect-ratio tags the file holds embeddings for, e.g. ``["16:9", "9:16"]``."""
        tags = {name[2:].split("movie")[0] for name in self.names if name.startswith("p.") and "movie" in name}
        return sorted(tag.replace("x", ":") for tag in tags)

    def get(self, name: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(emb1, mask1, emb2, mask2)`` for ``name``, each with a leading batch dimension of 1."""
        if name not in self._index:
            raise KeyError(f"No control embedding named {name!r}; available: {self.names}.")
        i = self._index[name]
        # Copies: an in-place edit by a caller (a step callback) must not change the stored embeddings.
        return tuple(getattr(self, field)[i : i + 1].clone() for field in _FIELDS)

    def get_controls(
        self, motion: Union[int, str] = "auto", camera_direction: str = "auto", aspect_ratio: str = "16:9"
    ) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
        """Positive and negative embeddings for a control combination.

        A combination that the file does not hold (motion, camera or aspect-ratio tag) falls back to ``p.default``
        with a warning, as the original does; `aspect_ratios` lists the tags the file has.

        Returns:
            `Tuple`: ``(positive, negative)``, each ``(emb1, mask1, emb2, mask2)``.
        """
        name = control_name(motion, camera_direction, aspect_ratio)
        if name not in self._index:
            logger.warning(f"The control embeddings have no entry {name!r}; using {DEFAULT_POSITIVE!r} instead.")
            name = DEFAULT_POSITIVE
        return self.get(name), self.get(DEFAULT_NEGATIVE)

    def forward(self, name: Optional[str] = None):  # pragma: no cover - a data container, not a layer
        raise NotImplementedError("RuyiControlEmbeddings is a container; use `get` or `get_controls`.")
