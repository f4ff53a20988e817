"""What the cache holds (:class:`CacheConfig`), its file names, and the crops both its writer
and its reader cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.data.annotations import Y_FLIPS
from training.data.dataset import SOURCES

SETTINGS = "cache.json"
SLIDES = "slides.csv"
PATCHES = "patches.csv"
SQUARES = "squares.csv"
HARD = "hard.csv"
DONE = "slide.json"


@dataclass(frozen=True)
class CacheConfig:
    """What the cache holds. Counts are per slide (``square_patches`` per annotation square);
    ``crop_factor``: windows and patches are cut this much larger than the networks' inputs, so
    that augmentation (rotation, scale) is centre-cropped without borders; ``min_fragment_um2``:
    tissue components smaller than this are specks and not cached (unless they meet an
    annotation square); ``max_pixels``: the largest detector-page fragment kept (a bigger one is
    refused, naming the slide); ``cell``: side in detector-page pixels of the cells of the
    window index; ``y_flip``: the page-0 height the annotations' flipped y axis is undone with
    (:data:`training.data.annotations.Y_FLIPS`: the metadata's, or the TIF's own);
    ``square_spread``: a square's patches are drawn over this share of the range that keeps
    them inside it, about its centre (an annotation square is centred on its lesion, and a
    small focus fills only its middle: patches at its edge would be normal tissue labelled
    with the lesion's grade); ``source``: where the pixels are read
    (:data:`training.data.dataset.SOURCES`: the TIFs, or DrivenData's light files,
    :mod:`training.data.cache.source`)."""

    square_patches: int = 12
    square_spread: float = 0.4
    benign_patches: int = 32
    hard_negatives: int = 16
    crop_factor: float = 1.25
    min_fragment_um2: float = 100_000.0
    max_pixels: int = 200_000_000
    cell: int = 64
    y_flip: str = "metadata"
    seed: int = 0
    source: str = "tif"

    def __post_init__(self) -> None:
        if min(self.square_patches, self.benign_patches, self.hard_negatives) < 0:
            raise ValueError("patch counts must be >= 0")
        if not 0.0 < self.square_spread <= 1.0:
            raise ValueError(f"square_spread must be in (0, 1], got {self.square_spread}")
        if not 1.0 <= self.crop_factor <= 2.0:
            raise ValueError(f"crop_factor must be in [1, 2], got {self.crop_factor}")
        if not 1 <= self.cell <= 1024 or self.min_fragment_um2 < 0:
            raise ValueError("cell must be in [1, 1024] and min_fragment_um2 >= 0")
        if self.y_flip not in Y_FLIPS:
            raise ValueError(f"y_flip must be one of {Y_FLIPS}, got {self.y_flip!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "light" and self.y_flip == "tif":
            raise ValueError("y_flip 'tif' reads the TIFs' heights; the light files have none")


def crop_size(size: int, factor: float) -> int:
    """``size × factor`` rounded up to an even number of pixels."""
    return 2 * math.ceil(size * factor / 2)


def crop_padded(
    array: np.ndarray, left: int, top: int, width: int, height: int, fill: int
) -> np.ndarray:
    """``(height, width, …)`` uint8 cut of ``array`` at pixel ``(left, top)``, ``fill`` where it
    falls outside the array."""
    out = np.full((height, width, *array.shape[2:]), fill, np.uint8)
    paste(out, array, left, top)
    return out


def paste(out: np.ndarray, array: np.ndarray, left: int, top: int) -> None:
    """Copy into ``out`` the part of ``array`` that ``out`` covers, ``out``'s pixel (0, 0) lying
    at ``array``'s pixel ``(left, top)`` (either may be outside the other)."""
    h, w = array.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + out.shape[1], w), min(top + out.shape[0], h)
    if x1 > x0 and y1 > y0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
