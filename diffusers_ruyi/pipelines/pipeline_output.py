# Copyright 2026 The diffusers-ruyi authors. Ruyi-Mini-7B is by CreateAI (Apache-2.0).
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

from dataclasses import dataclass
from typing import List, Union

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class RuyiPipelineOutput(BaseOutput):
    r"""
    Output of [`RuyiImageToVideoPipeline`].

    Args:
        frames (`torch.Tensor`, `np.ndarray`, or `List[List[PIL.Image.Image]]`):
            The videos: a list (batch) of lists of PIL frames, a `np.ndarray` of shape `(batch, frames, height,
            width, 3)`, a `torch.Tensor` of shape `(batch, frames, 3, height, width)` with values in [0, 1], or the
            denoised latents `(batch, 16, latent_frames, height // 8, width // 8)` for `output_type="latent"`.
    """

    frames: Union[torch.Tensor, np.ndarray, List[List[PIL.Image.Image]]]
