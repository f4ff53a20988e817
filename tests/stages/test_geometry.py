from __future__ import annotations

import math

import pytest

from stages.geometry import Box, nearest_index, page_scale, to_page0


def test_page_scale_uses_real_sizes() -> None:
    # 3001 px halved with floor is 1500: the scale is not exactly 2.
    assert page_scale((3001, 2001), (1500, 1000)) == (3001 / 1500, 2001 / 1000)
    assert page_scale((3072, 2048), (384, 256)) == (8.0, 8.0)


def test_page_scale_rejects_empty_pages() -> None:
    with pytest.raises(ValueError, match="positive"):
        page_scale((100, 100), (0, 10))


def test_point_to_page0() -> None:
    scale = (16.25, 15.9)
    assert to_page0(10, 20, scale) == (162.5, 318.0)


def test_box_to_page_exact() -> None:
    scale = (4.0, 4.0)
    assert Box(100, 200, 400, 300).to_page(scale) == (25, 50, 100, 75)
    # origin rounds to the nearest pixel, the size independently
    assert Box(101.9, 198.1, 399, 301).to_page(scale) == (25, 50, 100, 75)
    # a box built as n * scale is exactly n page pixels whatever the scale
    sx, sy = 3001 / 1500, 2001 / 1000
    assert Box(17 * sx, 5 * sy, 256 * sx, 256 * sy).to_page((sx, sy)) == (17, 5, 256, 256)
    # never smaller than one pixel
    assert Box(0, 0, 1, 1).to_page((32.0, 32.0)) == (0, 0, 1, 1)


def test_box_centered_and_properties() -> None:
    box = Box.centered(500, 300, 200, 100)
    assert (box.x, box.y, box.right, box.bottom) == (400, 250, 600, 350)
    assert box.center == (500, 300)
    with pytest.raises(ValueError, match="positive size"):
        Box(0, 0, 0, 5)


def test_nearest_index_log_space() -> None:
    mpps = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert nearest_index(mpps, 4.0) == 4
    assert nearest_index(mpps, 5.0) == 4  # log(5/4)=0.22 < log(8/5)=0.47
    assert nearest_index(mpps, 6.0) == 5  # log(6/4)=0.41 > log(8/6)=0.29
    assert nearest_index(mpps, math.sqrt(32)) == 4  # geometric midpoint: tie -> lower index
    assert nearest_index(mpps, 100.0) == 5
    assert nearest_index(mpps, 0.01) == 0
    with pytest.raises(ValueError):
        nearest_index([], 1.0)
