from __future__ import annotations

import numpy as np
import pytest

from stages.geometry import Box
from stages.hotspots import (
    Hotspot,
    HotspotConfig,
    Peak,
    find_peaks,
    heat_evidence,
    score_map,
    select_hotspots,
    tissue_hotspots,
)


def peak_map() -> np.ndarray:
    """(8, 10) float32: peaks 0.875 at (1, 1), 0.75 at (5, 7) and (6, 2) (a tie), 0.25 at
    (7, 9); a slope 0.625, 0.5 right of (1, 1) that holds no local maximum."""
    score = np.zeros((8, 10), np.float32)
    score[1, 1], score[1, 2], score[1, 3] = 0.875, 0.625, 0.5
    score[5, 7] = score[6, 2] = 0.75
    score[7, 9] = 0.25
    return score


def test_find_peaks_exact_order_and_tie_break() -> None:
    peaks = find_peaks(peak_map(), k=10, radius_px=1.5, min_score=0.1)
    # (1, 3) is 2 cells from (1, 1), outside the radius, but it is on a slope: not a peak.
    assert peaks == [Peak(1, 1, 0.875), Peak(5, 7, 0.75), Peak(6, 2, 0.75), Peak(7, 9, 0.25)]


def test_find_peaks_k_and_min_score() -> None:
    assert find_peaks(peak_map(), k=2, radius_px=1.5, min_score=0.1) == [
        Peak(1, 1, 0.875),
        Peak(5, 7, 0.75),
    ]
    # min_score is inclusive
    assert [p.score for p in find_peaks(peak_map(), k=10, radius_px=1.5, min_score=0.75)] == [
        0.875,
        0.75,
        0.75,
    ]
    assert find_peaks(peak_map(), k=0, radius_px=1.5, min_score=0.1) == []
    # keep_top peaks are kept below min_score, the next ones are not
    assert find_peaks(peak_map(), k=10, radius_px=1.5, min_score=0.9, keep_top=2) == [
        Peak(1, 1, 0.875),
        Peak(5, 7, 0.75),
    ]
    assert find_peaks(peak_map(), k=10, radius_px=1.5, min_score=0.9, keep_top=0) == []
    # max_candidates keeps only the highest local maxima
    assert find_peaks(peak_map(), k=10, radius_px=1.5, min_score=0.1, max_candidates=2) == [
        Peak(1, 1, 0.875),
        Peak(5, 7, 0.75),
    ]


@pytest.mark.parametrize(
    ("second", "radius", "kept"),
    [
        ((0, 3), 3.0, False),  # exactly at the radius: suppressed (inclusive)
        ((0, 3), 2.99, True),  # just outside
        ((3, 4), 5.0, False),  # Euclidean: distance 5 on a diagonal
        ((3, 4), 4.99, True),
        ((4, 4), 4.1, True),  # Chebyshev distance 4 would be suppressed, Euclidean is 5.66
    ],
)
def test_suppression_radius_boundary(second: tuple[int, int], radius: float, kept: bool) -> None:
    score = np.zeros((6, 6), np.float32)
    score[0, 0] = 0.75
    score[second] = 0.5
    peaks = find_peaks(score, k=5, radius_px=radius, min_score=0.1)
    assert peaks == [Peak(0, 0, 0.75)] + ([Peak(*second, 0.5)] if kept else [])


def test_plateau_gives_first_pixel_in_row_major_order() -> None:
    score = np.zeros((4, 4), np.float32)
    score[2, 2] = score[2, 3] = 0.5
    assert find_peaks(score, k=3, radius_px=1.0, min_score=0.1) == [Peak(2, 2, 0.5)]
    assert find_peaks(score, k=3, radius_px=0.5, min_score=0.1) == [
        Peak(2, 2, 0.5),
        Peak(2, 3, 0.5),
    ]


def test_empty_maps_have_no_peaks() -> None:
    assert find_peaks(np.zeros((5, 5), np.float32), k=3, radius_px=1, min_score=0.0) == []
    assert find_peaks(np.zeros((0, 0), np.float32), k=3, radius_px=1, min_score=0.1) == []


def test_find_peaks_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        find_peaks(np.zeros((2, 3, 3)), k=1, radius_px=1, min_score=0.1)
    with pytest.raises(ValueError, match="NaN"):
        find_peaks(np.full((3, 3), np.nan), k=1, radius_px=1, min_score=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        find_peaks(np.zeros((3, 3)), k=-1, radius_px=1, min_score=0.1)


def tiny_heatmap() -> np.ndarray:
    """(4, 1, 4) float32: benign, uniform, half benign / half high-grade, invasive."""
    pixels = [(1, 0, 0, 0), (0.25, 0.25, 0.25, 0.25), (0.5, 0, 0.5, 0), (0, 0, 0, 1)]
    return np.array(pixels, np.float32).T[:, None, :]


def test_score_modes_exact() -> None:
    heat = tiny_heatmap()
    any_lesion = score_map(heat, "any_lesion")
    severity = score_map(heat, "severity")
    assert any_lesion.dtype == severity.dtype == np.float32
    assert any_lesion.tolist() == [[0.0, 0.75, 0.5, 1.0]]
    # Σ c·p_c / 3: 0, 1.5 / 3, 1 / 3, 3 / 3
    assert severity.tolist() == [[0.0, 0.5, float(np.float32(1) / np.float32(3)), 1.0]]


def test_score_map_tissue_mask_and_errors() -> None:
    tissue = np.array([[True, False, True, True]])
    assert score_map(tiny_heatmap(), "any_lesion", tissue).tolist() == [[0.0, 0.0, 0.5, 1.0]]
    with pytest.raises(ValueError, match="tissue mask shape"):
        score_map(tiny_heatmap(), "any_lesion", np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="score mode"):
        score_map(tiny_heatmap(), "mean", None)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        score_map(np.zeros((4, 4), np.float32), "any_lesion")


def hotspot_heatmap() -> np.ndarray:
    """(4, 6, 8): benign everywhere but (3, 5) (uniform, score 0.75) and (1, 1) (score 0.5)."""
    heat = np.zeros((4, 6, 8), np.float32)
    heat[0] = 1.0
    heat[:, 3, 5] = 0.25
    heat[:, 1, 1] = (0.5, 0.5, 0.0, 0.0)
    return heat


SCALE = (16.25, 15.9)
MPP0 = 0.25  # one heatmap cell is 0.25 · (16.25 + 15.9) / 2 = 4.01875 µm


def test_select_hotspots_exact_boxes() -> None:
    config = HotspotConfig(smooth_um=0.0, nms_um=10.0, min_score=0.1)
    hotspots = select_hotspots(hotspot_heatmap(), None, SCALE, MPP0, (256.0, 200.0), config, k=5)
    assert len(hotspots) == 2
    first, second = hotspots  # k = 5 asked, 2 available
    # cell (3, 5) has its centre at page-0 (5.5 · 16.25, 3.5 · 15.9) = (89.375, 55.65)
    assert first.box == Box(89.375 - 128.0, 3.5 * 15.9 - 100.0, 256.0, 200.0)
    assert first.box.center == pytest.approx((89.375, 55.65), abs=1e-12)
    assert (first.score, first.heat_probs, first.rank) == (0.75, (0.25, 0.25, 0.25, 0.25), 0)
    assert second.box == Box(1.5 * 16.25 - 128.0, 1.5 * 15.9 - 100.0, 256.0, 200.0)
    assert (second.score, second.heat_probs, second.rank) == (0.5, (0.5, 0.5, 0.0, 0.0), 1)


def test_select_hotspots_nms_in_micrometres() -> None:
    # The peaks are √20 = 4.472 cells apart. 18 µm is 4.479 cells (suppressed), 17.9 µm is 4.454
    # cells (kept); with sx alone instead of the mean scale 18 µm would be 4.431 cells.
    def count(nms_um: float) -> int:
        config = HotspotConfig(smooth_um=0.0, nms_um=nms_um, min_score=0.1)
        return len(select_hotspots(hotspot_heatmap(), None, SCALE, MPP0, (256, 256), config, 5))

    assert count(18.0) == 1
    assert count(17.9) == 2


def test_select_hotspots_tissue_and_severity() -> None:
    tissue = np.ones((6, 8), bool)
    tissue[3, 5] = False
    config = HotspotConfig(score="severity", smooth_um=0.0, nms_um=0.0, min_score=0.1)
    hotspots = select_hotspots(hotspot_heatmap(), tissue, SCALE, MPP0, (256, 256), config, k=5)
    # only (1, 1) is left, its severity (0.5 · 1) / 3
    assert len(hotspots) == 1
    assert hotspots[0].box == Box(1.5 * 16.25 - 128.0, 1.5 * 15.9 - 128.0, 256, 256)
    assert hotspots[0].score == float(np.float32(0.5) / np.float32(3))
    benign = np.zeros((4, 6, 8), np.float32)
    benign[0] = 1.0
    assert select_hotspots(benign, None, SCALE, MPP0, (256, 256), config, k=5) == []
    with pytest.raises(ValueError, match="positive"):
        select_hotspots(benign, None, (0.0, 1.0), MPP0, (256, 256), config, k=5)


def test_smoothing_puts_the_first_hotspot_inside_a_flat_plateau() -> None:
    # A saturated detector: one flat plateau (rows 10..19, columns 20..39) of p(no lesion) 0.25.
    heat = np.zeros((4, 30, 60), np.float32)
    heat[0] = 1.0
    heat[:, 10:20, 20:40] = np.array([0.25, 0.75, 0.0, 0.0], np.float32)[:, None, None]
    cell = (16.0, 16.0)  # page-0 px per cell at 1 µm/px: a cell is 16 µm
    flat = HotspotConfig(smooth_um=0.0, nms_um=1000.0)
    (corner,) = select_hotspots(heat, None, cell, 1.0, (64.0, 64.0), flat, k=1)
    assert corner.box.center == (20.5 * 16, 10.5 * 16)  # ties broken row-major: the corner
    smooth = HotspotConfig(smooth_um=48.0, nms_um=1000.0)  # σ = 3 cells
    (inside,) = select_hotspots(heat, None, cell, 1.0, (64.0, 64.0), smooth, k=1)
    cx, cy = inside.box.center
    assert 26 * 16 <= cx <= 34 * 16 and 13 * 16 <= cy <= 17 * 16  # near the plateau's middle
    assert inside.heat_probs == (0.25, 0.75, 0.0, 0.0)  # the heatmap's own values, unsmoothed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"score": "max"},
        {"nms_um": -1.0},
        {"smooth_um": float("nan")},
        {"min_score": 1.5},
        {"max_candidates": 0},
        {"keep_top": -1},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="hotspots"):
        HotspotConfig(**kwargs)


def test_tissue_hotspots_deepest_first_and_spaced() -> None:
    # two tissue squares on a 10 x 20 mask (page-0 px per mask px: 8; 1 µm/px): a 5 x 5 one
    # (deepest point its centre, depth 3 with the edge as glass) and a 3 x 3 one (depth 2)
    tissue = np.zeros((10, 20), bool)
    tissue[1:6, 1:6] = True
    tissue[2:5, 12:15] = True
    spots = tissue_hotspots(tissue, (8.0, 8.0), 1.0, (16.0, 16.0), nms_um=40.0, k=4)
    assert [h.box.center for h in spots] == [(28.0, 28.0), (108.0, 28.0)]
    assert [h.score for h in spots] == [1.0, pytest.approx(2 / 3)]
    assert [h.rank for h in spots] == [0, 1] and spots[0].box == Box(20.0, 20.0, 16.0, 16.0)
    assert all(np.isnan(h.heat_probs).all() for h in spots)
    assert tissue_hotspots(np.zeros((4, 4), bool), (8.0, 8.0), 1.0, (16.0, 16.0), 40.0, 4) == []
    # the suppression radius: 40 µm = 5 mask px, so the squares' centres (10 px apart) both count
    # while a radius over 10 px keeps only the deepest
    assert len(tissue_hotspots(tissue, (8.0, 8.0), 1.0, (16.0, 16.0), 81.0, 4)) == 1


def test_heat_evidence_leaves_out_tissue_hotspots() -> None:
    box = Box(0.0, 0.0, 1.0, 1.0)
    heat = Hotspot(box, 0.9, (0.1, 0.2, 0.3, 0.4), 0)
    tissue = Hotspot(box, 1.0, (float("nan"),) * 4, 1)
    assert heat_evidence([heat, tissue]).tolist() == [[0.1, 0.2, 0.3, 0.4]]
    assert heat_evidence([tissue]).shape == (0, 4) and heat_evidence([]).shape == (0, 4)
