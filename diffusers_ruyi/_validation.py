"""Argument checks shared by the models, the hooks and the long-video planner: a bad type is a `TypeError`, a bad value
a `ValueError`, each naming the argument, raised before any work is done. Python-level only (no tensor values are
read), and torch is imported only by `check_tensor`: the CLI plans long videos before it imports torch."""

import math
import numbers
from typing import Optional


def check_int(
    name: str, value, minimum: Optional[int] = None, allow_none: bool = False, maximum: Optional[int] = None
) -> None:
    """An integer (Python or NumPy, not a bool), at least ``minimum`` and at most ``maximum`` when given; ``None``
    where ``allow_none``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an integer or None" if allow_none else "an integer"
        raise TypeError(f"`{name}` must be {kind}, got {type(value).__name__} {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum:,}, got {value!r}.")


def check_frame_size(name: str, value) -> None:
    """A frame's height or width in pixels: a positive multiple of 16 (8x VAE latents in patches of 2), a Python int."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a positive multiple of 16, got {type(value).__name__} {value!r}.")
    if value <= 0 or value % 16:
        raise ValueError(f"`{name}` must be a positive multiple of 16, got {value!r}.")


def check_real(
    name: str,
    value,
    allow_none: bool = False,
    low: float = -math.inf,
    high: float = math.inf,
    meaning: str = "",
) -> None:
    """A finite real number (Python or NumPy int or float, not a bool) in ``[low, high]``; ``None`` where
    ``allow_none``. ``meaning`` follows the bounds in the message (what they mean for the argument)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number or None" if allow_none else "a number"
        raise TypeError(f"`{name}` must be {kind}, got {type(value).__name__} {value!r}.")
    if not (math.isfinite(value) and low <= value <= high):
        if math.isfinite(low) and math.isfinite(high):
            bounds = f" in [{low:g}, {high:g}]"
        elif math.isfinite(low):
            bounds = f" >= {low:g}"
        else:
            bounds = f" <= {high:g}" if math.isfinite(high) else ""
        raise ValueError(f"`{name}` must be a finite number{bounds}{meaning}, got {value!r}.")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {type(value).__name__} {value!r}.")


def check_tensor(name: str, value) -> None:
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
