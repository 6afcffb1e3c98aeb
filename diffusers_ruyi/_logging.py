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
"""Filters out diffusers warnings that say something false about this package's models."""

import logging


# Ruyi's models keep no module in float32 (their `_keep_in_fp32_modules` is None), yet diffusers 0.42's
# `ModelMixin.to` warns on every dtype cast (`pipe.to(torch.bfloat16)`: once per model) that they have modules "that
# should be kept in float32: []". Only these exact messages are dropped, for these classes only.
_FALSE_FP32_WARNINGS = tuple(
    f"There are modules in {name} that should be kept in float32: []."
    for name in ("RuyiTransformer3DModel", "AutoencoderKLRuyiCausal3D", "RuyiControlEmbeddings")
)


class _DropFalseWarnings(logging.Filter):
    _diffusers_ruyi = True

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_FALSE_FP32_WARNINGS)


def filter_false_diffusers_warnings() -> None:
    """Adds the filter to diffusers' model logger, once (the logger need not exist yet: diffusers gets the same one)."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    if not any(getattr(existing, "_diffusers_ruyi", False) for existing in logger.filters):
        logger.addFilter(_DropFalseWarnings())
