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


def test_a_16_bit_png_opened_as_mode_i_by_older_pillow_is_scaled(tmp_path, monkeypatch):
    # Kills `if _is_sixteen_bit(image)` -> `if not ...` in `open_image`: Pillow < 10.3 opens a 16-bit grey PNG as mode
    # "I", and only the opened file's format says it is 16-bit (the upright copy has none). Older Pillow is imitated
    # through its PNG mode table.
    import PIL.PngImagePlugin

    path = tmp_path / "grey16.png"
    PIL.Image.fromarray(np.full((4, 6), 128 * 257, dtype=np.uint16)).save(path)
    monkeypatch.setitem(PIL.PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
    with PIL.Image.open(path) as opened:
        assert (opened.mode, opened.format) == ("I", "PNG")
    got = open_image(str(path), "--image")
    assert got.mode == "RGB" and got.size == (6, 4)
    np.testing.assert_array_equal(np.asarray(got), np.full((4, 6, 3), 128, dtype=np.uint8))


def test_16_bit_values_are_scaled_to_8_bits_not_wrapped():
    # Kills `pixels / 257` -> `pixels * 257` (_images.py): 65535 -> 255, and the values between them are rounded to
    # the nearest 8-bit step. Multiples of 257 (the EXIF test's pixels) give the same bytes either way; these do not.
    from diffusers_ruyi._images import image_to_rgb

    stored = PIL.Image.fromarray(np.array([[0, 1000, 32768, 65535]], dtype=np.uint16))
    assert stored.mode in ("I;16", "I")
    got = np.asarray(image_to_rgb(stored, "image"))
    np.testing.assert_array_equal(got[0, :, 0], [0, 4, 128, 255])
    assert got.shape == (1, 4, 3) and (got == got[..., :1]).all()
