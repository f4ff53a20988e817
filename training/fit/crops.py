"""Stage 2's input where only DrivenData's light files hold full resolution: inside the
annotated-region crops (:mod:`training.data.light`).

A slide without its TIF has full-resolution pixels inside its annotation squares only, so the
steps that grade what the detector sends stage 2 (hard negatives, the decision fit) take the
detector's hotspots **restricted to the crops**: the cascade's own hotspot selection
(:func:`stages.hotspots.select_hotspots`: smoothing, peaks, spacing, ranking) run on the heatmap
with every cell whose patch would reach past a usable crop masked out (:func:`crop_cells`). On a
benign slide these are the places of its (class-0) squares the detector finds most lesion-like;
on a lesion slide the squares are where the annotators marked the lesions.

A lesion square holds benign tissue too (stroma, normal epithelium around the lesion), which the
light files show only there: :func:`crop_hotspots` with ``benign`` takes the places of the crops
the detector is surest are benign (lesion score at most :data:`BENIGN_SCORE`), as class-0 patches
that teach stage 2 the tissue it meets beside the lesions; the detector learned benign tissue
from the whole of every label-0 slide's downsampled image.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from stages.classifier import read_patches
from stages.config import CascadeConfig
from stages.detector import Heatmap
from stages.hotspots import (
    Hotspot,
    find_peaks,
    on_tissue,
    peak_hotspots,
    score_map,
    select_hotspots,
)
from training.data.cache.source import SOURCES
from training.data.dataset import TrainSlide, read_training_set

#: A crop's page-0 rectangle: ``(left, top, width, height)``.
Rect = tuple[float, float, float, float]
#: Highest detector lesion score (:func:`stages.hotspots.score_map`) of a place of a lesion
#: square taken as benign (:func:`crop_hotspots`' ``benign``).
BENIGN_SCORE = 0.1


def crop_cells(
    shape: tuple[int, int],
    scale: tuple[float, float],
    rects: Iterable[Rect],
    footprint: tuple[float, float],
) -> np.ndarray:
    """``(H, W)`` bool over a heatmap of ``shape`` ``(H, W)`` cells (``scale``: page-0 px per
    cell ``(sx, sy)``): True where a page-0 ``footprint`` ``(w, h)`` centred on the cell's centre
    lies inside one of the page-0 ``rects``."""
    height, width = shape
    sx, sy = scale
    fw, fh = footprint
    cx = (np.arange(width) + 0.5) * sx
    cy = (np.arange(height) + 0.5) * sy
    inside = np.zeros(shape, bool)
    for left, top, w, h in rects:
        cols = (cx - fw / 2 >= left) & (cx + fw / 2 <= left + w)
        rows = (cy - fh / 2 >= top) & (cy + fh / 2 <= top + h)
        inside |= rows[:, None] & cols[None, :]
    return inside


def crop_hotspots(
    heatmap: Heatmap,
    rects: Iterable[Rect],
    mpp0: float,
    patch_page0: tuple[float, float],
    footprint: tuple[float, float],
    config: CascadeConfig,
    k: int,
    benign: bool = False,
) -> list[Hotspot]:
    """The top ``k`` hotspots of ``heatmap`` among the tissue cells it saw whose ``footprint``
    (page-0 ``(w, h)``: the pixels that will be read) lies inside a page-0 crop of ``rects``,
    as page-0 boxes of ``patch_page0``, best first; ``mpp0``: page-0 µm/px. With ``benign``,
    the ``k`` places among them the detector is surest are benign instead (lesion score at most
    :data:`BENIGN_SCORE`, lowest first, ``hotspots.nms_um`` apart; ``score`` the lesion score)."""
    allowed = heatmap.tissue & heatmap.visited
    allowed &= crop_cells(allowed.shape, heatmap.scale, rects, footprint)
    if benign:
        return _benign_places(heatmap, allowed, mpp0, patch_page0, config, k)
    if not allowed.any():
        return []
    return select_hotspots(
        heatmap.probs, allowed, heatmap.scale, mpp0, patch_page0, config.hotspots, k
    )


def _benign_places(
    heatmap: Heatmap,
    allowed: np.ndarray,
    mpp0: float,
    patch_page0: tuple[float, float],
    config: CascadeConfig,
    k: int,
) -> list[Hotspot]:
    """:func:`crop_hotspots`'s ``benign`` places among the ``allowed`` ``(H, W)`` cells."""
    score = score_map(heatmap.probs, config.hotspots.score)
    allowed = allowed & (score <= BENIGN_SCORE)
    if not allowed.any():
        return []
    sx, sy = heatmap.scale
    radius = config.hotspots.nms_um / (mpp0 * (sx + sy) / 2)
    # sure-benign places score 1 - lesion score (> 0): the surest first
    peaks = find_peaks(on_tissue(1.0 - score + 1e-6, allowed), k, radius, 0.0)
    return peak_hotspots(peaks, heatmap.scale, patch_page0, heatmap.probs, score)


def light_items(data: Path, y_flip: str) -> dict[str, TrainSlide]:
    """The slides of the training folder ``data`` that have light files, by filename (their
    annotations placed with ``y_flip``, as the cache placed them)."""
    return {s.filename: s for s in read_training_set(data, y_flip, "light")}


def read_from_crops(
    item: TrainSlide,
    heatmap: Heatmap,
    cascade: CascadeConfig,
    page: int,
    size: int,
    k: int,
    benign: bool = False,
) -> tuple[list[Hotspot], np.ndarray, list[Rect]]:
    """The top ``k`` hotspots of ``heatmap`` (with ``benign``, its ``k`` surest benign places:
    :func:`crop_hotspots`) whose ``size`` × ``size`` px cut of the classifier ``page`` lies inside
    a usable crop of ``item``'s light files, those cuts ``(n, size, size, 3)`` uint8 (module
    doc), and the usable crops' page-0 rectangles."""
    with SOURCES["light"].open(item, cascade.default_mpp) as slide:
        sx, sy = slide.pages[page].scale
        patch = (cascade.classifier.patch * sx, cascade.classifier.patch * sy)
        rects = [region.rect for region in slide.crops.values()]
        hotspots = crop_hotspots(heatmap, rects, slide.mpp, patch, (size * sx, size * sy),
                                 cascade, k, benign)  # fmt: skip
        centres = [h.box.center for h in hotspots]
        return hotspots, read_patches(slide, centres, page, size), rects


def inside(hotspots: Iterable[Hotspot], rects: Iterable[Rect]) -> int:
    """How many of ``hotspots``' page-0 boxes lie inside one of the page-0 ``rects``."""
    rects = list(rects)
    return sum(
        any(
            h.box.x >= left and h.box.y >= top
            and h.box.right <= left + w and h.box.bottom <= top + hh
            for left, top, w, hh in rects
        )
        for h in hotspots
    )  # fmt: skip
