"""Speed and memory features for Ruyi as free `apply_*` / `remove_*` functions, like diffusers' hooks: TeaCache,
Enhance-A-Video, long-skip offloading and the original's fp8 modes."""

from .enhance_a_video import (
    RuyiEnhanceAVideoConfig,
    apply_ruyi_enhance_a_video,
    enhance_a_video_score,
    is_ruyi_enhance_a_video_enabled,
    remove_ruyi_enhance_a_video,
)
from .fp8 import FP8_MODES, RUYI_FP8_MIN_NUMEL, apply_fp8_mode, select_fp8_modules
from .skip_offload import RuyiSkipOffloadConfig, apply_ruyi_skip_offload, remove_ruyi_skip_offload
from .teacache import (
    RUYI_TEACACHE_COEFFICIENTS,
    RuyiTeaCacheConfig,
    apply_ruyi_teacache,
    get_ruyi_teacache_skipped_steps,
    remove_ruyi_teacache,
)


__all__ = [
    "FP8_MODES",
    "RUYI_FP8_MIN_NUMEL",
    "RUYI_TEACACHE_COEFFICIENTS",
    "RuyiEnhanceAVideoConfig",
    "RuyiSkipOffloadConfig",
    "RuyiTeaCacheConfig",
    "apply_fp8_mode",
    "apply_ruyi_enhance_a_video",
    "apply_ruyi_skip_offload",
    "apply_ruyi_teacache",
    "enhance_a_video_score",
    "get_ruyi_teacache_skipped_steps",
    "is_ruyi_enhance_a_video_enabled",
    "remove_ruyi_enhance_a_video",
    "remove_ruyi_skip_offload",
    "remove_ruyi_teacache",
    "select_fp8_modules",
]
