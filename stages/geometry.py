"""The project's one coordinate convention, and the pure maths that maps between pages.

Convention (used everywhere, stated only here):

* Every box and point that leaves a module is in **page-0 pixels** of the slide: x grows to the
  right, y grows down, the origin is the top-left corner of page 0. Values are floats because a
  page's downsample is rarely an exact power of two.
* A pyramid page ``p`` has its own integer pixel grid. Its scale is
  ``(page0_width / page_width, page0_height / page_height)`` computed from the *real* page sizes
  read from the file, never from ``2 ** p`` (TissueNet pages are halved with rounding and page 0
  may be padded past the metadata size).
* Page-``p`` pixel ``(u, v)`` covers page-0 ``[u * sx, (u + 1) * sx) x [v * sy, (v + 1) * sy)``.

The only convention that differs is the TissueNet annotation file, whose polygons have the y axis
flipped (origin at the bottom); ``training.data.annotations`` converts it on read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """Axis-aligned rectangle in page-0 pixels: top-left ``(x, y)``, size ``(w, h)``, floats."""

    x: float
    y: float
    w: float
    h: float

    def __post_init__(self) -> None:
        if not (self.w > 0 and self.h > 0):
            raise ValueError(f"Box needs a positive size, got w={self.w}, h={self.h}")

    @classmethod
    def centered(cls, cx: float, cy: float, w: float, h: float) -> Box:
        """Box of size ``(w, h)`` centred on page-0 point ``(cx, cy)``."""
        return cls(cx - w / 2, cy - h / 2, w, h)

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)

    def to_page(self, scale: tuple[float, float]) -> tuple[int, int, int, int]:
        """Integer ``(left, top, width, height)`` of this box on a page of the given scale.

        The origin is rounded to the nearest page pixel and the size is rounded independently, so
        a box built as ``n * scale`` page-0 pixels is always exactly ``n`` page pixels.
        """
        sx, sy = scale
        return (
            round(self.x / sx),
            round(self.y / sy),
            max(1, round(self.w / sx)),
            max(1, round(self.h / sy)),
        )


def page_scale(page0_size: tuple[int, int], page_size: tuple[int, int]) -> tuple[float, float]:
    """Page-0 pixels per page pixel, ``(sx, sy)``, from the two pages' real ``(width, height)``."""
    (w0, h0), (w, h) = page0_size, page_size
    if min(w0, h0, w, h) <= 0:
        raise ValueError(f"page sizes must be positive, got {page0_size} and {page_size}")
    return (w0 / w, h0 / h)


def to_page0(u: float, v: float, scale: tuple[float, float]) -> tuple[float, float]:
    """Map a page point ``(u, v)`` (page pixel units, may be fractional) to page-0 pixels."""
    return (u * scale[0], v * scale[1])


def nearest_index(values: Sequence[float], target: float) -> int:
    """Index of the value nearest ``target`` in log space (ties go to the lower index).

    Used to pick the pyramid page whose µm/pixel is nearest a target: in log space a page at
    half the target resolution and one at double it are equally far.
    """
    if not values:
        raise ValueError("no values to choose from")
    if target <= 0 or any(v <= 0 for v in values):
        raise ValueError("values and target must be positive")
    distances = [abs(math.log(v / target)) for v in values]
    best = min(distances)
    return next(i for i, d in enumerate(distances) if d - best <= 1e-12)
