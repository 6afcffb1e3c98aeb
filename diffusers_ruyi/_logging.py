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
"""Filters on diffusers' model logger: reports that the package makes itself or that are not the user's doing, and
warnings that say something false about this package's models."""

import contextlib
import logging
from typing import Callable, Iterator


MODELING_LOGGER = "diffusers.models.modeling_utils"


class _DropRecords(logging.Filter):
    def __init__(self, drop: Callable[[str], bool]) -> None:
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record.getMessage())


@contextlib.contextmanager
def modeling_logs_dropped(drop: Callable[[str], bool]) -> Iterator[None]:
    """Drops, while the block runs, the records of diffusers' `modeling_utils` logger whose message ``drop`` accepts:
    reports that the package makes itself, or that are not the user's doing."""
    diffusers_logger = logging.getLogger(MODELING_LOGGER)
    record_filter = _DropRecords(drop)
    diffusers_logger.addFilter(record_filter)
    try:
        yield
    finally:
        diffusers_logger.removeFilter(record_filter)


# Ruyi's models keep no module in float32 (their `_keep_in_fp32_modules` is None), yet diffusers 0.42's
# `ModelMixin.to` warns on every dtype cast (`pipe.to(torch.bfloat16)`: once per model) that they have modules "that
# should be kept in float32: []". Only these exact messages are dropped, for these classes only, for good.
_FALSE_FP32_WARNINGS = tuple(
    f"There are modules in {name} that should be kept in float32: []."
    for name in ("RuyiTransformer3DModel", "AutoencoderKLRuyiCausal3D", "RuyiControlEmbeddings")
)


def _is_false_fp32_warning(message: str) -> bool:
    return message.startswith(_FALSE_FP32_WARNINGS)


class _DropFalseWarnings(_DropRecords):
    _diffusers_ruyi = True  # how `filter_false_diffusers_warnings` finds it again

    def __init__(self) -> None:
        super().__init__(_is_false_fp32_warning)


def filter_false_diffusers_warnings() -> None:
    """Adds the filter to diffusers' model logger, once (the logger need not exist yet: diffusers gets the same one)."""
    logger = logging.getLogger(MODELING_LOGGER)
    if not any(getattr(existing, "_diffusers_ruyi", False) for existing in logger.filters):
        logger.addFilter(_DropFalseWarnings())
