"""Training targets and sampling positions, as pure functions of arrays and page-0 boxes.

Coordinates follow :mod:`stages.geometry`: boxes and points in page-0 pixels (x right, y down);
a page pixel ``(u, v)`` covers page-0 ``[u·sx, (u+1)·sx) × [v·sy, (v+1)·sy)``. Arrays cut from a
page carry the ``offset`` ``(left, top)`` of their pixel (0, 0) in that page's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from stages.geometry import Box
from training.data.annotations import Annotation

#: Target value of pixels that take no part in the detector's loss (unannotated lesion tissue).
IGNORE = 255


def box_pixels(
    box: Box, scale: tuple[float, float], offset: tuple[int, int], shape: tuple[int, int]
) -> tuple[slice, slice]:
    """Row and column slices of an ``(H, W)`` array cut from a page of ``scale`` at ``offset``
    holding the pixels whose centres lie in ``box`` (``[x, right) × [y, bottom)``), clipped."""
    (sx, sy), (left, top) = scale, offset

    def span(start: float, stop: float, step: float, origin: int, size: int) -> slice:
        first = math.ceil(start / step - 0.5) - origin
        last = math.ceil(stop / step - 0.5) - origin
        return slice(min(max(first, 0), size), min(max(last, 0), size))

    return span(box.y, box.bottom, sy, top, shape[0]), span(box.x, box.right, sx, left, shape[1])


def detector_target(
    tissue: np.ndarray,
    scale: tuple[float, float],
    offset: tuple[int, int],
    annotations: Sequence[Annotation],
    label: int,
) -> np.ndarray:
    """``(H, W)`` uint8 class map for the detector on the grid of ``tissue`` (``(H, W)`` bool).

    Glass is 0 (background, no lesion). Tissue is 0 on a label-0 slide and :data:`IGNORE` on a
    lesion slide (annotations mark some lesions, not all); the tissue inside each annotation
    square takes the square's class, the most severe one where squares overlap. What the mask
    calls glass inside a lesion square is :data:`IGNORE` too: the square says lesion there, the
    mask may have missed faint tissue, so neither "lesion" nor "no lesion" is taught.
    """
    target = np.zeros(tissue.shape, np.uint8)
    if label:
        target[tissue] = IGNORE
    for annotation in sorted(annotations, key=lambda a: a.annotation_class):  # severest last
        rows, cols = box_pixels(annotation.box, scale, offset, tissue.shape)
        inside, covered = target[rows, cols], tissue[rows, cols]
        inside[covered] = annotation.annotation_class
        if annotation.annotation_class:
            inside[~covered] = IGNORE
    return target


def jittered_centres(
    rng: np.random.Generator, box: Box, n: int, patch: tuple[float, float], spread: float = 1.0
) -> np.ndarray:
    """``(n, 2)`` float64 page-0 centres of ``patch``-sized (page-0 ``(w, h)``) patches inside
    ``box``: uniform over the box shrunk by half a patch, that range scaled by ``spread`` about
    the box's centre (in (0, 1]; its centre when the patch is larger)."""
    cx, cy = box.center
    half_x = spread * max(box.w - patch[0], 0.0) / 2
    half_y = spread * max(box.h - patch[1], 0.0) / 2
    return np.stack(
        [cx + rng.uniform(-half_x, half_x, n), cy + rng.uniform(-half_y, half_y, n)], axis=1
    )


def tissue_points(
    rng: np.random.Generator, mask: np.ndarray, scale: tuple[float, float], n: int
) -> np.ndarray:
    """``(n, 2)`` float64 page-0 points uniform over the tissue of ``mask`` (``(h, w)`` bool,
    ``scale`` page-0 px per pixel); ``(0, 2)`` when the mask has no tissue."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return np.zeros((0, 2))
    pick = rng.integers(0, len(rows), n)
    x = (cols[pick] + rng.random(n)) * scale[0]
    y = (rows[pick] + rng.random(n)) * scale[1]
    return np.stack([x, y], axis=1)


def hits(boxes: Sequence[Box], centres: np.ndarray) -> np.ndarray:
    """``(len(boxes),)`` bool: which boxes hold at least one of the ``(k, 2)`` page-0 centres."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    return np.array(
        [
            bool(
                np.any(
                    (centres[:, 0] >= b.x)
                    & (centres[:, 0] < b.right)
                    & (centres[:, 1] >= b.y)
                    & (centres[:, 1] < b.bottom)
                )
            )
            for b in boxes
        ],
        dtype=bool,
    )


def recall_at_k(
    squares: Sequence[Sequence[Box]], hotspots: Sequence[np.ndarray], ks: Sequence[int]
) -> dict[int, float]:
    """Share of all ``squares`` (per slide) hit by the top-k hotspot centres of their slide
    (``(m, 2)`` page-0, best first), for each k; NaN when there are no squares."""
    total = sum(len(s) for s in squares)
    out = {}
    for k in ks:
        hit = sum(
            int(hits(boxes, centres[:k]).sum())
            for boxes, centres in zip(squares, hotspots, strict=True)
        )
        out[k] = hit / total if total else float("nan")
    return out
