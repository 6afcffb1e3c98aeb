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
"""PIL images to the RGB the model reads, for the pipeline and the CLI (no torch: the CLI checks before importing it).

Pillow's ``convert("RGB")`` clips the pixels of a 16-bit grayscale image (what Pillow opens a 16-bit grayscale PNG
as: mode ``I;16``, or ``I`` before Pillow 10.3) at 255: the picture becomes a white frame, without a word. They are
scaled to 8 bits here instead; other 32-bit integer and float images, whose range nothing says, are refused.
"""

from typing import Optional

import numpy as np
import PIL.Image
import PIL.ImageOps


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
UNSCALED_MODES = {"I": "32-bit integer", "F": "32-bit float"}


def _is_sixteen_bit(image: PIL.Image.Image) -> bool:
    # Pillow before 10.3 opens a 16-bit grayscale PNG as mode "I": for a PNG file, that is what "I" means.
    return image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and getattr(image, "format", None) == "PNG")


def image_mode_problem(image: PIL.Image.Image, name: str) -> Optional[str]:
    """Why ``image`` cannot be read as a picture (None when it can)."""
    if image.mode in UNSCALED_MODES and not _is_sixteen_bit(image):
        return (
            f"`{name}` is a {UNSCALED_MODES[image.mode]} image (PIL mode {image.mode!r}), whose value range is "
            "unknown; convert it to an 8-bit RGB image first."
        )
    return None


def image_to_rgb(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    """``image`` as 8-bit RGB; 16-bit grayscale scaled to 8 bits (not clipped).

    Raises:
        `ValueError`: a 32-bit integer or float image (modes ``"I"``, ``"F"``).
    """
    problem = image_mode_problem(image, name)
    if problem:
        raise ValueError(problem)
    if _is_sixteen_bit(image):
        pixels = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
        return PIL.Image.fromarray(np.round(pixels / 257).astype(np.uint8)).convert("RGB")  # 65535 -> 255
    return image.convert("RGB")


def checked_image_to_rgb(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    """An image given as an argument, as 8-bit RGB (`image_to_rgb`); an empty one (0 pixels on a side) is refused too.

    Raises:
        `ValueError`: an empty image, or a 32-bit integer or float one.
    """
    if not image.width or not image.height:
        raise ValueError(f"`{name}` is an empty image ({image.width}x{image.height}).")
    return image_to_rgb(image, name)


def open_image(path: str, name: str) -> PIL.Image.Image:
    """An image file as 8-bit RGB, turned upright per its EXIF orientation (as `diffusers.utils.load_image`)."""
    with PIL.Image.open(path) as image:
        image.load()
        if _is_sixteen_bit(image):  # decided on the file's own format, which a transposed copy no longer carries
            # The 8-bit copy has no EXIF: its orientation is read first and applied to the copy.
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            image = image_to_rgb(image, name)
            if orientation in _ORIENTATION_TRANSPOSE:
                image = image.transpose(_ORIENTATION_TRANSPOSE[orientation])
        else:
            image = PIL.ImageOps.exif_transpose(image)
    return image_to_rgb(image, name)


_EXIF_ORIENTATION = 0x0112
# EXIF orientations 2-8 and the transpose that turns each upright (1 is upright already).
_ORIENTATION_TRANSPOSE = {
    2: PIL.Image.Transpose.FLIP_LEFT_RIGHT,
    3: PIL.Image.Transpose.ROTATE_180,
    4: PIL.Image.Transpose.FLIP_TOP_BOTTOM,
    5: PIL.Image.Transpose.TRANSPOSE,
    6: PIL.Image.Transpose.ROTATE_270,
    7: PIL.Image.Transpose.TRANSVERSE,
    8: PIL.Image.Transpose.ROTATE_90,
}
