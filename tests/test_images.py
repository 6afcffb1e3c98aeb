"""Reading image files: EXIF orientation for 8- and 16-bit images."""

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest

from diffusers_ruyi._images import open_image


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_images_are_turned_upright_per_their_exif_orientation(tmp_path, mode, orientation):
    # The 16-bit path rebuilt the image without its EXIF, so a 16-bit phone scan stayed sideways.
    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 256, (20, 40), dtype=np.uint8)
    stored = PIL.Image.fromarray(pixels.astype(np.uint16) * 257 if mode == "I;16" else pixels)
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"{orientation}.png"
    stored.save(path, exif=exif)
    PIL.Image.fromarray(pixels).save(tmp_path / "reference.png", exif=exif)
    expected = PIL.ImageOps.exif_transpose(PIL.Image.open(tmp_path / "reference.png")).convert("RGB")
    got = open_image(str(path), "--image")
    assert got.mode == "RGB" and got.size == expected.size
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_16_bit_values_are_scaled_to_8_bits_not_wrapped():
    # Kills `pixels / 257` -> `pixels * 257` (_images.py): 65535 -> 255, and the values between them are rounded to
    # the nearest 8-bit step. Multiples of 257 (the EXIF test's pixels) give the same bytes either way; these do not.
    from diffusers_ruyi._images import image_to_rgb

    stored = PIL.Image.fromarray(np.array([[0, 1000, 32768, 65535]], dtype=np.uint16))
    assert stored.mode in ("I;16", "I")
    got = np.asarray(image_to_rgb(stored, "image"))
    np.testing.assert_array_equal(got[0, :, 0], [0, 4, 128, 255])
    assert got.shape == (1, 4, 3) and (got == got[..., :1]).all()
