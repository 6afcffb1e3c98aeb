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


# The largest frame side in pixels, over 3x the largest Ruyi makes (720p: 1280), so that a mistyped size is refused
# here, not by the allocator after the models have run.
MAX_FRAME_SIZE = 4096


def check_frame_size(name: str, value) -> None:
    """A frame's height or width in pixels: a positive multiple of 16 (8x VAE latents in patches of 2) of at most
    `MAX_FRAME_SIZE`, a Python int."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a positive multiple of 16, got {type(value).__name__} {value!r}.")
    if value > MAX_FRAME_SIZE:  # first: a size above it is refused whatever its multiple
        raise ValueError(f"`{name}` must be at most {MAX_FRAME_SIZE} (Ruyi makes 360p to 720p videos), got {value!r}.")
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


def check_device_available(name: str, device) -> None:
    """``device`` (a `torch.device`) exists on this machine: an absent one (CUDA without a GPU, an index past the
    last) is a `ValueError` naming ``name`` here, not an error from inside torch after work was done."""
    import torch

    try:
        torch.empty(0, device=device)
    except Exception as error:  # each backend raises its own (RuntimeError, AssertionError, ModuleNotFoundError, ...)
        raise ValueError(f"`{name}` {str(device)!r} is not available here: {error}") from None


def check_bool(name: str, value) -> None:
    """True or False (a NumPy bool counts as Python's)."""
    if not isinstance(value, bool) and type(value).__module__ + "." + type(value).__name__ != "numpy.bool":
        raise TypeError(f"`{name}` must be True or False, got {type(value).__name__} {value!r}.")


def check_tensor(name: str, value) -> None:
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")


def check_attention_kwargs(attention_kwargs) -> None:
    """`attention_kwargs` of the pipeline and the transformer: None or a dict whose only key is a finite ``"scale"``
    (the LoRA scale); any other key, a typo of it, would be ignored without a word."""
    if attention_kwargs is not None and not isinstance(attention_kwargs, dict):
        raise TypeError(f"`attention_kwargs` must be a dict or None, got {type(attention_kwargs).__name__}.")
    if attention_kwargs:
        unknown = sorted(map(repr, set(attention_kwargs) - {"scale"}))
        if unknown:
            raise ValueError(f"`attention_kwargs` takes only 'scale' (the LoRA scale), got {', '.join(unknown)}.")
        check_real("attention_kwargs['scale']", attention_kwargs["scale"])


def diffusers_hook(module, name: str):
    """The diffusers hook ``name`` registered on ``module`` itself (not below it), or None."""
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(name) if registry is not None else None


def compute_dtype(layer):
    """The dtype ``layer`` computes in: its layerwise-casting hook's (`enable_layerwise_casting`), else its weight's."""
    hook = diffusers_hook(layer, "layerwise_casting")
    return hook.compute_dtype if hook is not None else layer.weight.dtype


def check_casting_hooks_fit(model, dtype, name: str) -> None:
    """Refuses a model cast with `.to(dtype)` after `apply_fp8_mode` / `enable_layerwise_casting`: the cast reaches
    every weight, but the hooks keep up-casting their layers to the old compute dtype, so the layers' outputs and the
    rest of the model no longer meet (torch fails in a matrix product, naming neither)."""
    for module in model.modules():  # the hooks share one compute dtype: the first one found tells
        hook = diffusers_hook(module, "layerwise_casting")
        if hook is None:
            continue
        if hook.compute_dtype != dtype:
            raise TypeError(
                f"The {name}'s layers stored in {hook.storage_dtype} (`apply_fp8_mode` or `enable_layerwise_casting`) "
                f"compute in {hook.compute_dtype}, but the rest of it is in {dtype}: it was cast after the storage "
                f"was set, which the layers' hooks do not follow. Cast it back (`.to({hook.compute_dtype})`), or "
                "reload it and set the storage after choosing the dtype."
            )
        return


def autocast_enabled(tensor) -> bool:
    import torch

    device_type = tensor.device.type
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def autocast_reconciles(tensor, dtype) -> bool:
    """Whether `torch.autocast` is on for ``tensor``'s device and casts both it and weights of ``dtype`` (it leaves
    float64 alone), so that a dtype other than the layer's still runs."""
    import torch

    return autocast_enabled(tensor) and torch.float64 not in (tensor.dtype, dtype)


def check_input_dtype(name: str, tensor, dtype, model: str) -> None:
    """``tensor`` must be floating point and in ``dtype``, the dtype the ``model`` computes in (its layerwise-casting
    dtype when it has one, which its `.dtype` does not say), unless autocast casts both."""
    import torch

    if not tensor.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got {tensor.dtype}.")
    if autocast_enabled(tensor) and tensor.device.type == "cpu":
        cast = torch.get_autocast_dtype("cpu")
        if dtype in (torch.float16, torch.bfloat16) and dtype != cast:
            # The layers' outputs come out in `cast`; the norms, whose weights are in `dtype`, then fail deep inside.
            raise TypeError(
                f"The {model} computes in {dtype} but `torch.autocast` casts to {cast}: on the CPU the two half "
                f'precisions do not mix. Use `torch.autocast("cpu", dtype={dtype})`, or the {model} in float32.'
            )
    if tensor.dtype != dtype and not autocast_reconciles(tensor, dtype):
        if autocast_enabled(tensor):
            hint = "`torch.autocast` does not cast float64"
        else:
            hint = "run it under `torch.autocast` to mix dtypes"
        raise TypeError(
            f"`{name}` is {tensor.dtype} but the {model} computes in {dtype}: pass `{name}.to({dtype})` ({hint})."
        )


def is_fp8_dtype(dtype) -> bool:
    """Whether ``dtype`` is one of the float8 formats `apply_fp8_mode` stores weights in."""
    import torch

    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def _dry_run(scheduler, steps: int) -> Optional[str]:
    import copy

    import torch

    dry = copy.deepcopy(scheduler)
    try:
        with torch.random.fork_rng(devices=[]):
            dry.set_timesteps(steps, device="cpu")
            # Shaped like Ruyi's latents (batch, channels, frames, height, width): DDPM reads `sample.shape[1]`.
            sample = torch.zeros(1, 1, 1, 1, 1)
            for t in dry.timesteps:
                model_input = dry.scale_model_input(sample, t)
                sample = dry.step(torch.zeros_like(model_input), t, sample, return_dict=False)[0]
    except (IndexError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    except Exception:  # another scheduler API: not this check's to judge
        return None
    return None if bool(torch.isfinite(sample).all()) else "its last steps return NaN"


def schedule_problem(scheduler, steps: int) -> Optional[str]:
    """Why ``scheduler`` cannot run a schedule of ``steps`` steps (None when it can), found by running every step on a
    copy of it with a one-element zero sample (milliseconds; the global random state is left as it was). Ruyi's
    scheduler config (`timestep_spacing="leading"`, `steps_offset=1`) takes DDIM and PNDM past their last training
    timestep at 1,000 steps and DPM++ at 999 and 1,000: an IndexError mid-run, or NaN at the end. A scheduler whose
    `step` takes other arguments, or that fails this stand-in run at a few steps too (so the count is not what
    fails), is not judged."""
    problem = _dry_run(scheduler, steps)
    if problem is None:
        return None
    controls = [n for n in (25, 10, 4) if n != steps]
    return problem if any(_dry_run(scheduler, n) is None for n in controls) else None
