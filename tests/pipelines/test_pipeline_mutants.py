"""Pipeline behaviours that survived mutation testing (scripts/mutation.py); each test names the mutant it kills."""

import pytest

from diffusers_ruyi.pipelines.controls import _BUCKETS_512, get_bucket_size


def test_bucket_table_is_consistent():
    # Kills a changed bucket such as `1.07: (512, 480)` -> `(512, 481)` (pipelines/controls.py), which the rounding
    # down to 16 hides at most base resolutions (it shows at 528). The original's 512 table: every side a multiple of
    # 32, keyed by its height / width rounded to two decimals, about 512 x 512 pixels, sorted by ratio.
    assert len(_BUCKETS_512) == 40
    for ratio, (height, width) in _BUCKETS_512.items():
        assert height % 32 == 0 and width % 32 == 0, ratio
        assert round(height / width, 2) == ratio
        assert 0.85 * 512**2 <= height * width <= 1.15 * 512**2, ratio
    ratios = list(_BUCKETS_512)
    assert ratios == sorted(ratios)
    assert [h for h, _ in _BUCKETS_512.values()] == sorted(h for h, _ in _BUCKETS_512.values())


@pytest.mark.parametrize("base_resolution", [384, 528, 640, 1024])
def test_bucket_sizes_scale_every_bucket(base_resolution):
    # Every bucket is reachable (its own ratio picks it) and scales as floor16(side * base / 512).
    for ratio, (height, width) in _BUCKETS_512.items():
        expected = (height * base_resolution // 512 // 16 * 16, width * base_resolution // 512 // 16 * 16)
        assert get_bucket_size(round(ratio * 10000), 10000, base_resolution) == expected, ratio


def test_smallest_base_resolution_is_64():
    # Kills `MIN_BASE_RESOLUTION = 64` -> 65 (pipelines/controls.py): 64 is taken (its narrowest bucket is 32 x 128
    # pixels), 63 is refused.
    assert get_bucket_size(256, 1024, 64) == (32, 128)
    with pytest.raises(ValueError, match="`base_resolution` must be an integer >= 64, got 63"):
        get_bucket_size(256, 1024, 63)


@pytest.mark.parametrize("aspect_ratio", ["16:", ":9", "a:9", "16:b", "16:0", "0:9", "16x9", "-16:9", 169, None])
def test_control_names_refuse_malformed_aspect_ratios(aspect_ratio):
    # Kills `and` -> `or` in _aspect_ratio_tag (pipelines/controls.py): both sides must be positive integers.
    from diffusers_ruyi.pipelines.controls import control_name

    assert control_name(2, "left", "16:9") == "p.16x9movie2left"
    with pytest.raises(ValueError, match="`aspect_ratio` must be a tag like"):
        control_name(2, "left", aspect_ratio)
