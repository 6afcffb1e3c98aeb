"""The hook configs and `apply_*` functions check their arguments when they are built or called: a `TypeError` (bad
type) or `ValueError` (bad value) naming the argument, never a failure in the middle of a run or a silently ignored
setting."""

import math

import numpy as np
import pytest
import torch
from _helpers import tiny_transformer, transformer_inputs
from diffusers import FasterCacheConfig, FirstBlockCacheConfig, PyramidAttentionBroadcastConfig

from diffusers_ruyi.hooks import (
    RUYI_TEACACHE_COEFFICIENTS,
    RuyiEnhanceAVideoConfig,
    RuyiSkipOffloadConfig,
    RuyiTeaCacheConfig,
    apply_fp8_mode,
    apply_ruyi_enhance_a_video,
    apply_ruyi_skip_offload,
    apply_ruyi_teacache,
    is_ruyi_enhance_a_video_enabled,
    select_fp8_modules,
)


def _hooked(model: torch.nn.Module) -> list:
    """Names of the modules of ``model`` that carry a diffusers hook."""
    return [
        name for name, m in model.named_modules() if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks
    ]


# ------------------------------------------------------------------------------------------------------------------
# TeaCache
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"threshold": math.nan}, ValueError, r"`threshold` must be a finite number"),
        ({"threshold": math.inf}, ValueError, r"`threshold` must be a finite number"),
        ({"threshold": "0.1"}, TypeError, r"`threshold` must be a number, got str"),
        ({"threshold": None}, TypeError, r"`threshold` must be a number, got NoneType"),
        ({"threshold": True}, TypeError, r"`threshold` must be a number, got bool"),
        ({"coefficients": ()}, ValueError, r"`coefficients` must hold at least one number"),
        ({"coefficients": []}, ValueError, r"`coefficients` must hold at least one number"),
        ({"coefficients": ("a",)}, TypeError, r"`coefficients\[0\]` must be a number, got str"),
        ({"coefficients": (1.0, math.nan)}, ValueError, r"`coefficients\[1\]` must be a finite number"),
        ({"coefficients": (1.0, -math.inf)}, ValueError, r"`coefficients\[1\]` must be a finite number"),
        ({"coefficients": "123"}, TypeError, r"`coefficients` must be a sequence of numbers"),
        ({"coefficients": 0.5}, TypeError, r"`coefficients` must be a sequence of numbers"),
        ({"coefficients": None}, TypeError, r"`coefficients` must be a sequence of numbers"),
        ({"skip_start_steps": 2.5}, TypeError, r"`skip_start_steps` must be an integer, got float"),
        ({"skip_start_steps": True}, TypeError, r"`skip_start_steps` must be an integer, got bool"),
        ({"skip_start_steps": -1}, ValueError, r"`skip_start_steps` must be >= 0"),
        ({"skip_end_steps": "1"}, TypeError, r"`skip_end_steps` must be an integer, got str"),
        ({"skip_end_steps": -3}, ValueError, r"`skip_end_steps` must be >= 0"),
        ({"num_inference_steps": 2.5}, TypeError, r"`num_inference_steps` must be an integer or None"),
        ({"num_inference_steps": True}, TypeError, r"`num_inference_steps` must be an integer or None"),
        ({"num_inference_steps": 0}, ValueError, r"`num_inference_steps` must be >= 1, got 0"),
        ({"offload_to_cpu": "no"}, TypeError, r"`offload_to_cpu` must be True or False"),
        ({"offload_to_cpu": 0}, TypeError, r"`offload_to_cpu` must be True or False"),
    ],
)
def test_teacache_config_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RuyiTeaCacheConfig(**kwargs)


def test_teacache_config_takes_what_the_original_takes():
    config = RuyiTeaCacheConfig(
        threshold=np.float32(0.1), skip_start_steps=0, skip_end_steps=np.int64(0), coefficients=[2.0, 1]
    )
    assert config.coefficients == (2.0, 1) and isinstance(config.coefficients, tuple)
    assert RuyiTeaCacheConfig().coefficients == RUYI_TEACACHE_COEFFICIENTS
    assert RuyiTeaCacheConfig(threshold=0, num_inference_steps=1).threshold == 0


@pytest.mark.parametrize("config", ["teacache", None, RuyiEnhanceAVideoConfig()], ids=["str", "None", "other config"])
def test_apply_teacache_refuses_other_configs(config):
    model = tiny_transformer()
    with pytest.raises(TypeError, match=r"`config` must be a RuyiTeaCacheConfig"):
        apply_ruyi_teacache(model, config)
    assert _hooked(model) == []


# ------------------------------------------------------------------------------------------------------------------
# Enhance-A-Video
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"weight": math.nan}, ValueError, r"`weight` must be a finite number"),
        ({"weight": math.inf}, ValueError, r"`weight` must be a finite number"),
        ({"weight": "1"}, TypeError, r"`weight` must be a number, got str"),
        ({"weight": False}, TypeError, r"`weight` must be a number, got bool"),
        ({"weight": -100}, ValueError, r"`weight` must be >= 0"),
        ({"weight": -0.5}, ValueError, r"`weight` must be >= 0"),
        ({"skip_start_steps": -2}, ValueError, r"`skip_start_steps` must be >= 0"),
        ({"skip_end_steps": -1}, ValueError, r"`skip_end_steps` must be >= 0"),
        ({"skip_start_steps": 1.5}, TypeError, r"`skip_start_steps` must be an integer"),
        ({"skip_end_steps": "2"}, TypeError, r"`skip_end_steps` must be an integer"),
        ({"num_inference_steps": 2.5}, TypeError, r"`num_inference_steps` must be an integer or None"),
        ({"num_inference_steps": 0}, ValueError, r"`num_inference_steps` must be >= 1"),
    ],
)
def test_enhance_a_video_config_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RuyiEnhanceAVideoConfig(**kwargs)


def test_enhance_a_video_weight_below_minus_one_could_never_enhance():
    # Why negative weights are refused: the scale is mean cross-frame attention (at most 1 / (frames - 1)) times
    # (frames + weight), clamped to >= 1; from weight -1 on it is 1 even for attention entirely across frames.
    from diffusers_ruyi.hooks import enhance_a_video_score

    frames = 4
    # One token, one head: frame i's query matches only frame i - 1's key, so all attention is across frames.
    query = 10 * torch.eye(frames, 8)[None, :, None, :]
    key = 10 * torch.eye(frames, 8).roll(1, dims=1)[None, :, None, :]
    assert enhance_a_video_score(query, key, frames, 0.0) > 1
    assert enhance_a_video_score(query, key, frames, -1.0) == 1
    assert RuyiEnhanceAVideoConfig(weight=0).weight == 0  # 0 is meaningful: the scale is not clamped away


@pytest.mark.parametrize("config", ["x", None, RuyiTeaCacheConfig()], ids=["str", "None", "other config"])
def test_apply_enhance_a_video_refuses_other_configs(config):
    model = tiny_transformer()
    with pytest.raises(TypeError, match=r"`config` must be a RuyiEnhanceAVideoConfig"):
        apply_ruyi_enhance_a_video(model, config)
    assert not is_ruyi_enhance_a_video_enabled(model) and _hooked(model) == []


# ------------------------------------------------------------------------------------------------------------------
# Long-skip offloading
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"group_size": 2.5}, TypeError, r"`group_size` must be an integer, got float"),
        ({"group_size": True}, TypeError, r"`group_size` must be an integer, got bool"),
        ({"group_size": "2"}, TypeError, r"`group_size` must be an integer, got str"),
        ({"offload_device": "bogus"}, ValueError, r"`offload_device` must name a device .* got 'bogus'"),
        ({"offload_device": "meta"}, ValueError, r"`offload_device` cannot be 'meta'"),
        ({"offload_device": torch.device("meta")}, ValueError, r"`offload_device` cannot be 'meta'"),
        ({"offload_device": None}, TypeError, r"`offload_device` must be a str or torch.device, got NoneType"),
        ({"offload_device": 0}, TypeError, r"`offload_device` must be a str or torch.device, got int"),
    ],
)
def test_skip_offload_config_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RuyiSkipOffloadConfig(**kwargs)


def test_skip_offload_config_normalises_the_device():
    assert RuyiSkipOffloadConfig(group_size=np.int64(2), offload_device="cpu").offload_device == torch.device("cpu")
    # Only meta is refused: any other device type is taken as it is (the config does not require it to be present).
    for name in ("cuda:1", "mps", "xpu:0", "hpu"):
        assert RuyiSkipOffloadConfig(offload_device=name).offload_device == torch.device(name)


@pytest.mark.parametrize("config", ["x", 5, RuyiTeaCacheConfig()], ids=["str", "int", "other config"])
def test_apply_skip_offload_refuses_other_configs(config):
    model = tiny_transformer()
    with pytest.raises(TypeError, match=r"`config` must be a RuyiSkipOffloadConfig or None"):
        apply_ruyi_skip_offload(model, config)
    assert model._skip_offload_config is None
    apply_ruyi_skip_offload(model, None)  # None still means the default config
    assert model._skip_offload_config == RuyiSkipOffloadConfig()


def test_apply_skip_offload_keeps_a_checked_copy_and_needs_the_device():
    # The caches copy and re-check their configs; so does skip offload: later edits of the caller's object (a bad
    # group size, meta) would otherwise fail after the first blocks ran, and so would a device this machine lacks.
    model = tiny_transformer()
    config = RuyiSkipOffloadConfig(group_size=2)
    apply_ruyi_skip_offload(model, config)
    config.group_size = "two"
    assert model._skip_offload_config == RuyiSkipOffloadConfig(group_size=2)
    with pytest.raises(TypeError, match="`group_size` must be an integer"):
        apply_ruyi_skip_offload(model, config)
    config.group_size, config.offload_device = 1, "meta"
    with pytest.raises(ValueError, match="`offload_device` cannot be 'meta'"):
        apply_ruyi_skip_offload(model, config)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^`offload_device` 'cuda' is not available here: "):
            apply_ruyi_skip_offload(model, RuyiSkipOffloadConfig(offload_device="cuda"))
    assert model._skip_offload_config == RuyiSkipOffloadConfig(group_size=2)


# ------------------------------------------------------------------------------------------------------------------
# fp8
# ------------------------------------------------------------------------------------------------------------------


def _two_linears() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (("extreme",), {"fp8_dtype": "float8_e4m3fn"}, TypeError, r"`fp8_dtype` must be a torch.dtype"),
        (("extreme",), {"compute_dtype": "bfloat16"}, TypeError, r"`compute_dtype` must be a torch.dtype"),
        (("extreme",), {"compute_dtype": torch.int64}, ValueError, r"`compute_dtype` must be a floating dtype"),
        (("extreme",), {"compute_dtype": torch.float8_e4m3fn}, ValueError, r"`compute_dtype` must be a floating"),
        (("lite",), {"min_numel": 2.5}, TypeError, r"`min_numel` must be an integer"),
        (("lite",), {"min_numel": -1}, ValueError, r"`min_numel` must be >= 0"),
        (("extreme",), {"non_blocking": "yes"}, TypeError, r"`non_blocking` must be True or False"),
        ((3,), {}, TypeError, r"`mode` must be a str"),
    ],
)
def test_apply_fp8_mode_refuses_bad_arguments_before_changing_a_layer(args, kwargs, error, match):
    model = _two_linears()
    with pytest.raises(error, match=match):
        apply_fp8_mode(model, *args, **kwargs)
    assert _hooked(model) == [] and all(p.dtype == torch.float32 for p in model.parameters())


def test_apply_fp8_mode_refuses_layers_already_cast_before_changing_any():
    # The second layer is cast already: diffusers would refuse it only after the first was converted.
    from diffusers.hooks.layerwise_casting import apply_layerwise_casting_hook

    model = _two_linears()
    apply_layerwise_casting_hook(model[1], torch.float8_e5m2, torch.float32, False)
    with pytest.raises(ValueError, match=r"1 of the layers fp8 mode 'extreme' selects already have layerwise casting"):
        apply_fp8_mode(model, "extreme", torch.float8_e4m3fn)
    assert model[0].weight.dtype == torch.float32 and _hooked(model) == ["1"]


def test_fp8_selection_refuses_a_model_that_is_not_a_module():
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module, got str"):
        apply_fp8_mode("transformer", "lite")
    with pytest.raises(TypeError, match=r"`min_numel` must be an integer, got str"):
        select_fp8_modules(_two_linears(), "lite", min_numel="1")


# ------------------------------------------------------------------------------------------------------------------
# diffusers' caches through `enable_cache`
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", ["teacache", None, 0.1, FirstBlockCacheConfig], ids=["str", "None", "float", "a class, not an instance"]
)
def test_enable_cache_refuses_what_is_not_a_config(config):
    model = tiny_transformer()
    with pytest.raises(TypeError, match=r"`config` must be a cache config instance"):
        model.enable_cache(config)
    assert not model.is_cache_enabled and _hooked(model) == []


@torch.no_grad()
def test_current_timestep_hook_leaves_a_bad_timestep_to_the_models_check():
    # The timestep hook of Pyramid Attention Broadcast / FasterCache runs before the forward: it must not fail on its
    # own with a bare conversion error.
    model = tiny_transformer()
    model.enable_cache(PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2))
    with pytest.raises(TypeError, match=r"`timestep` must be a torch.Tensor or a number, got str"):
        model(**transformer_inputs(), timestep="500")
    assert model(**transformer_inputs(), timestep=500.0).sample.shape[0] == 2
    model.disable_cache()


# ------------------------------------------------------------------------------------------------------------------
# Configs changed after they were made, and diffusers' cache configs
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, field, value, error, match",
    [
        (RuyiTeaCacheConfig, "threshold", "0.1", TypeError, "`threshold` must be a number"),
        (RuyiTeaCacheConfig, "coefficients", "abc", TypeError, "`coefficients` must be a sequence of numbers"),
        (RuyiEnhanceAVideoConfig, "weight", -100.0, ValueError, "`weight` must be >= 0"),
    ],
)
def test_a_config_changed_after_it_was_made_is_checked_when_applied(make, field, value, error, match):
    model = tiny_transformer()
    config = make()
    setattr(config, field, value)
    with pytest.raises(error, match=match):
        model.enable_cache(config) if make is RuyiTeaCacheConfig else apply_ruyi_enhance_a_video(model, config)
    assert _hooked(model) == []


def test_an_applied_config_is_a_copy():
    model = tiny_transformer()
    config = RuyiTeaCacheConfig(threshold=0.1)
    model.enable_cache(config)
    config.threshold = 5.0  # after the fact: the hooks keep what was applied
    assert {hook.config.threshold for hook in _teacache_hooks(model)} == {0.1}
    model.disable_cache()


def _teacache_hooks(model):
    hooks = []
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            hooks += [h for h in registry.hooks.values() if hasattr(h, "config")]
    return hooks


@pytest.mark.parametrize(
    "config, error, match",
    [
        (FirstBlockCacheConfig(threshold=-1.0), ValueError, r"`FirstBlockCacheConfig.threshold` must be a finite"),
        (FirstBlockCacheConfig(threshold=math.nan), ValueError, r"`FirstBlockCacheConfig.threshold` must be a finite"),
        (FirstBlockCacheConfig(threshold="abc"), TypeError, r"`FirstBlockCacheConfig.threshold` must be a number"),
        (
            PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=0),
            ValueError,
            r"`PyramidAttentionBroadcastConfig.spatial_attention_block_skip_range` must be >= 1",
        ),
        (
            FasterCacheConfig(unconditional_batch_skip_range=0),
            ValueError,
            r"`FasterCacheConfig.unconditional_batch_skip_range` must be >= 1",
        ),
    ],
)
def test_diffusers_cache_configs_are_checked_before_any_hook(config, error, match):
    model = tiny_transformer()
    with pytest.raises(error, match=match):
        model.enable_cache(config)
    assert _hooked(model) == []
