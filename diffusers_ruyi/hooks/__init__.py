"""Speed and memory features for Ruyi: TeaCache, Enhance-A-Video and the original's fp8 modes, as diffusers hooks."""

from .enhance_a_video import (
    RuyiEnhanceAVideoConfig,
    apply_ruyi_enhance_a_video,
    enhance_a_video_score,
    is_ruyi_enhance_a_video_enabled,
    remove_ruyi_enhance_a_video,
)
from .fp8 import FP8_MODES, RUYI_FP8_MIN_NUMEL, apply_fp8_mode, select_fp8_modules
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
    "RuyiTeaCacheConfig",
    "apply_fp8_mode",
    "apply_ruyi_enhance_a_video",
    "apply_ruyi_teacache",
    "enhance_a_video_score",
    "get_ruyi_teacache_skipped_steps",
    "is_ruyi_enhance_a_video_enabled",
    "remove_ruyi_enhance_a_video",
    "remove_ruyi_teacache",
    "select_fp8_modules",
]
