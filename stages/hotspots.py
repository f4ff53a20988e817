"""Hotspots: the top peaks of the stage-1 heatmap, as page-0 patch boxes for stage 2.

The heatmap is ``(C, H, W)`` float32 class probabilities (channel 0 no lesion, channel c ≥ 1 lesion
grade c; C = 4 on TissueNet) on a grid whose cell ``(r, c)`` covers page-0
``[c·sx, (c+1)·sx) × [r·sy, (r+1)·sy)`` (:mod:`stages.geometry`).

1. :func:`score_map` turns it into one ``(H, W)`` score: ``any_lesion`` = 1 − p0, or ``severity``
   = expected grade Σ c·p_c / (C − 1); both in [0, 1] and 0 outside the tissue mask.
2. :func:`find_peaks`: greedy non-maximum suppression over the map's local maxima (pixels not
   below any of their 8 neighbours), highest score first, ties in row-major order. Each chosen peak
   suppresses every candidate at **Euclidean** distance ≤ ``radius_px`` (heatmap cells). Pixels
   scoring 0 (outside tissue) are never peaks. A plateau wider than the radius may give several.
3. :func:`select_hotspots` maps the peaks to page-0 boxes centred on their cells' centres, with
   the suppression radius ``nms_um`` converted to cells via the mean of ``sx`` and ``sy`` (as
   :meth:`stages.slide.Slide.page_mpp` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import cv2
import numpy as np

from stages.geometry import Box, to_page0

ScoreMode = Literal["any_lesion", "severity"]
SCORE_MODES: tuple[str, ...] = get_args(ScoreMode)


@dataclass(frozen=True)
class HotspotConfig:
    """How hotspots are scored and spaced.

    ``smooth_um``: Gaussian σ (µm) applied to the score map before its peaks are sought: a
    trained detector saturates into flat plateaus over lesions, whose ties would otherwise be
    broken in row-major order (the plateau's top-left corner first); smoothed, each region's
    interior ranks first; ``nms_um``: suppression distance between hotspots in µm (a little more
    than one stage-2 patch; both values were chosen on validation slides, where they found 92 %
    and 97 % of the annotated lesion squares with 16 and 32 hotspots);
    ``min_score``: lowest score a hotspot may have, but for the best ``keep_top`` (so that a slide
    with tissue always gives the decision evidence: a benign slide's best peak, graded benign,
    says so); ``max_candidates``: how many of the highest
    local maxima enter the greedy suppression (bounds the work on a noisy map).
    """

    score: ScoreMode = "any_lesion"
    smooth_um: float = 16.0
    nms_um: float = 150.0
    min_score: float = 0.05
    max_candidates: int = 20_000
    keep_top: int = 1

    def __post_init__(self) -> None:
        if self.score not in SCORE_MODES:
            raise ValueError(f"hotspots.score must be one of {SCORE_MODES}, got {self.score!r}")
        if not (np.isfinite(self.smooth_um) and self.smooth_um >= 0):
            raise ValueError(f"hotspots.smooth_um must be finite and >= 0, got {self.smooth_um}")
        if not (np.isfinite(self.nms_um) and self.nms_um >= 0):
            raise ValueError(f"hotspots.nms_um must be finite and >= 0, got {self.nms_um}")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"hotspots.min_score must be in [0, 1], got {self.min_score}")
        if self.keep_top < 0:
            raise ValueError(f"hotspots.keep_top must be >= 0, got {self.keep_top}")
        if self.max_candidates < 1:
            raise ValueError(f"hotspots.max_candidates must be >= 1, got {self.max_candidates}")


@dataclass(frozen=True)
class Peak:
    """A peak of a score map at heatmap cell ``(row, col)``."""

    row: int
    col: int
    score: float


@dataclass(frozen=True)
class Hotspot:
    """A stage-2 patch to grade: page-0 ``box`` centred on the peak, the peak's ``score``, the
    heatmap's C class probabilities at the peak, and ``rank`` (0 = highest score)."""

    box: Box
    score: float
    heat_probs: tuple[float, ...]
    rank: int


def score_map(heatmap: np.ndarray, mode: str, tissue: np.ndarray | None = None) -> np.ndarray:
    """``(H, W)`` float32 score of a ``(C, H, W)`` heatmap (see module doc), 0 where ``tissue``
    (``(H, W)`` bool, optional) is False."""
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 3 or heat.shape[0] < 2:
        raise ValueError(f"heatmap must be (C, H, W) with C >= 2, got shape {heat.shape}")
    if mode == "any_lesion":
        score = 1.0 - heat[0]
    elif mode == "severity":
        grades = np.arange(heat.shape[0], dtype=np.float32)
        score = np.tensordot(grades, heat, axes=1) / np.float32(heat.shape[0] - 1)
    else:
        raise ValueError(f"score mode must be one of {SCORE_MODES}, got {mode!r}")
    return on_tissue(score, tissue)


def on_tissue(score: np.ndarray, tissue: np.ndarray | None) -> np.ndarray:
    """``(H, W)`` float32 ``score`` set to 0 where ``tissue`` (``(H, W)`` bool, optional) is
    False."""
    if tissue is not None:
        if tissue.shape != score.shape:
            raise ValueError(f"tissue mask shape {tissue.shape} != heatmap grid {score.shape}")
        score = np.where(tissue.astype(bool), score, np.float32(0))
    return score.astype(np.float32, copy=False)


def _local_maxima(score: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels not below any of their 8 neighbours (edges padded with -inf)."""
    h, w = score.shape
    padded = np.pad(score, 1, constant_values=-np.inf)
    neighbours = np.full_like(score, -np.inf)
    for dr in range(3):
        for dc in range(3):
            if (dr, dc) != (1, 1):
                np.maximum(neighbours, padded[dr : dr + h, dc : dc + w], out=neighbours)
    return score >= neighbours


def find_peaks(
    score: np.ndarray,
    k: int,
    radius_px: float,
    min_score: float,
    max_candidates: int | None = None,
    keep_top: int = 0,
) -> list[Peak]:
    """Up to ``k`` peaks of an ``(H, W)`` score map, highest first (see module doc for the rule).

    ``radius_px``: suppression radius in cells (Euclidean, inclusive); peaks score ≥ ``min_score``
    and > 0, except the first ``keep_top``, kept whatever their score (> 0); ``max_candidates``
    keeps only that many of the highest local maxima (None: all).
    """
    score = np.asarray(score)
    if score.ndim != 2:
        raise ValueError(f"score map must be (H, W), got shape {score.shape}")
    if k < 0 or radius_px < 0:
        raise ValueError(f"k and radius_px must be >= 0, got k={k}, radius_px={radius_px}")
    if k == 0 or score.size == 0:
        return []
    if not np.isfinite(score).all():
        raise ValueError("score map holds NaN or infinite values")
    rows, cols = np.nonzero(_local_maxima(score) & (score > 0))
    values = score[rows, cols]
    order = np.argsort(-values, kind="stable")[:max_candidates]  # stable: row-major among ties
    rows, cols, values = rows[order], cols[order], values[order]
    alive = np.ones(len(order), dtype=bool)
    limit = radius_px * radius_px
    peaks: list[Peak] = []
    while len(peaks) < k and alive.any():
        i = int(np.argmax(alive))  # first alive candidate = highest remaining score
        if values[i] < min_score and len(peaks) >= keep_top:
            break  # the rest score lower still
        peaks.append(Peak(int(rows[i]), int(cols[i]), float(values[i])))
        alive &= (rows - rows[i]) ** 2 + (cols - cols[i]) ** 2 > limit
    return peaks


def select_hotspots(
    heatmap: np.ndarray,
    tissue: np.ndarray | None,
    scale: tuple[float, float],
    mpp0: float,
    patch_page0: tuple[float, float],
    config: HotspotConfig,
    k: int,
) -> list[Hotspot]:
    """The top ``k`` hotspots of a ``(C, H, W)`` heatmap as page-0 boxes of size ``patch_page0``
    ``(w, h)``. ``scale``: page-0 pixels per heatmap cell ``(sx, sy)``; ``mpp0``: page-0 µm/px."""
    sx, sy = scale
    if min(sx, sy, mpp0) <= 0:
        raise ValueError(f"scale and mpp0 must be positive, got scale={scale}, mpp0={mpp0}")
    cell_um = mpp0 * (sx + sy) / 2
    score = score_map(heatmap, config.score)
    if config.smooth_um > 0:  # before the tissue mask, whose coarse edge would cut lesions
        score = cv2.GaussianBlur(score, (0, 0), config.smooth_um / cell_um)
    score = on_tissue(score, tissue)
    radius_px = config.nms_um / cell_um
    peaks = find_peaks(
        score, k, radius_px, config.min_score, config.max_candidates, config.keep_top
    )
    return peak_hotspots(peaks, scale, patch_page0, heatmap)


def peak_hotspots(
    peaks: Sequence[Peak],
    scale: tuple[float, float],
    patch_page0: tuple[float, float],
    heatmap: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> list[Hotspot]:
    """``peaks`` (cells of a map with ``scale`` page-0 px per cell) as hotspots in their order:
    page-0 boxes of ``patch_page0`` ``(w, h)`` centred on the cells, ranked 0, 1, …; their
    ``heat_probs`` from the ``(C, H, W)`` ``heatmap`` (NaN without one), their ``score`` the
    peak's, or the ``(H, W)`` ``scores`` at the cell when given."""
    width, height = patch_page0
    hotspots = []
    for rank, peak in enumerate(peaks):
        cx, cy = to_page0(peak.col + 0.5, peak.row + 0.5, scale)
        probs = (
            (float("nan"),) * 4
            if heatmap is None
            else tuple(float(p) for p in heatmap[:, peak.row, peak.col])
        )
        score = peak.score if scores is None else float(scores[peak.row, peak.col])
        hotspots.append(Hotspot(Box.centered(cx, cy, width, height), score, probs, rank))
    return hotspots


def tissue_hotspots(
    tissue: np.ndarray,
    scale: tuple[float, float],
    mpp0: float,
    patch_page0: tuple[float, float],
    nms_um: float,
    k: int,
) -> list[Hotspot]:
    """Up to ``k`` hotspots from the tissue alone, for a slide whose detector pass the budget
    cannot afford: the peaks of the ``(H, W)`` bool ``tissue`` mask's distance to glass (deepest
    inside the tissue first), ``nms_um`` apart, as page-0 boxes of size ``patch_page0``.
    ``scale``: page-0 pixels per mask pixel; ``mpp0``: page-0 µm/px. Their ``score`` is the
    depth relative to the deepest point (in (0, 1]); ``heat_probs`` are NaN (no heatmap)."""
    sx, sy = scale
    if min(sx, sy, mpp0) <= 0:
        raise ValueError(f"scale and mpp0 must be positive, got scale={scale}, mpp0={mpp0}")
    if tissue.ndim != 2:
        raise ValueError(f"tissue must be (H, W), got shape {tissue.shape}")
    if not tissue.any():
        return []
    padded = np.pad(tissue.astype(np.uint8), 1)  # the image's edge counts as glass
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    peaks = find_peaks(depth / depth.max(), k, nms_um / (mpp0 * (sx + sy) / 2), 0.0)
    return peak_hotspots(peaks, scale, patch_page0)


def heat_evidence(hotspots: Sequence[Hotspot]) -> np.ndarray:
    """``(N, C)`` float64 heatmap probabilities of the hotspots that came from a heatmap (those
    of :func:`tissue_hotspots`, NaN, are left out): the decision's heatmap evidence."""
    if not hotspots:
        return np.zeros((0, 4))
    probs = np.array([h.heat_probs for h in hotspots], np.float64)
    return probs[np.isfinite(probs).all(axis=1)]
