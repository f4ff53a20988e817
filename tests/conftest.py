"""Shared test helpers: small TIFFs written with pyvips in the competition's layout."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pyvips

from training.pack.export import TINY

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
#: Real TissueNet CSVs (62 training slides, the 1,527-row test format); see data/PROVENANCE.md.
REAL_TISSUENET = DATA / "tissuenet"

#: The tiny preset, smaller still, for training tests: 128-px detector windows, 64-px patches,
#: no dropout (so that a resumed run can match an uninterrupted one exactly).
TEST_RECIPE = replace(
    TINY,
    detector=replace(TINY.detector, window=128, overlap=32),
    classifier=replace(TINY.classifier, patch=64, dropout=0.0),
)

logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips is chatty at INFO


def write_tiff(
    path: Path,
    pixels: np.ndarray,
    mpp: float | None = 0.25,
    pyramid: bool = True,
    tile: int = 512,
) -> Path:
    """Write ``pixels`` ((H, W) or (H, W, B) uint8) as a tiled JPEG/LZW TIFF, pyramidal by default.

    JPEG for 3-band images (the competition's format), LZW otherwise (JPEG cannot hold alpha).
    ``mpp=None`` writes no resolution tags.
    """
    image = pyvips.Image.new_from_array(pixels)
    if pixels.ndim == 3:
        image = image.copy(interpretation="srgb" if pixels.shape[2] >= 3 else "b-w")
    kwargs: dict = {"tile": True, "tile_width": tile, "tile_height": tile, "pyramid": pyramid}
    kwargs |= {"compression": "jpeg", "Q": 75} if image.bands == 3 else {"compression": "lzw"}
    if mpp is not None:
        kwargs |= {"xres": 1000.0 / mpp, "yres": 1000.0 / mpp, "resunit": "cm"}
    image.tiffsave(str(path), **kwargs)
    return path


@pytest.fixture
def gradient_rgb() -> np.ndarray:
    """(2001, 3001, 3) uint8: red ramps with x, green with y, blue constant 128."""
    yy, xx = np.mgrid[0:2001, 0:3001]
    return np.stack(
        [(xx * 255 // 3000), (yy * 255 // 2000), np.full_like(xx, 128)], axis=-1
    ).astype(np.uint8)
