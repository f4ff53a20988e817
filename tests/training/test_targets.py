"""Detector targets and sampling positions: exact pixels, ignore regions, hits and recall."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.geometry import Box
from training.data.annotations import Annotation, format_annotation, parse_annotations
from training.data.targets import (
    IGNORE,
    box_pixels,
    detector_target,
    hits,
    jittered_centres,
    recall_at_k,
    tissue_points,
)


def test_a_flipped_square_lands_on_exactly_its_pixels() -> None:
    # A 1000 x 800 px slide; the square x 160..480, rows 240..560 (y down) is written in the
    # real file's flipped form: y = 800 - row, so its WKT spans y 240..560 as well.
    height = 800
    wkt = format_annotation(Box(160.0, 240.0, 320.0, 320.0), height)
    assert wkt == ("POLYGON ((160.0 240.0, 160.0 560.0, 480.0 560.0, 480.0 240.0, 160.0 240.0))")
    # a square near the top (rows 16..336) is near the bottom of the flipped file
    wkt_top = format_annotation(Box(160.0, 16.0, 320.0, 320.0), height)
    assert "464.0" in wkt_top and "784.0" in wkt_top
    rows = pd.DataFrame(
        {
            "annotation_id": ["a"],
            "filename": ["s.tif"],
            "geometry": [wkt_top],
            "annotation_class": [2],
        }
    )
    (annotation,) = parse_annotations(rows, pd.DataFrame({"filename": ["s.tif"], "height": [800]}))
    assert annotation.box == Box(160.0, 16.0, 320.0, 320.0)
    # Detector page at 16 page-0 px per pixel, cut at offset (2, 0): pixel (u, v) covers
    # page-0 x [(u+2)·16, (u+3)·16). Centres inside x [160, 480) are page columns 10..29,
    # i.e. array columns 8..27; rows [16, 336) hold centres of page rows 1..20.
    tissue = np.ones((50, 60), bool)
    target = detector_target(tissue, (16.0, 16.0), (2, 0), [annotation], label=2)
    expected = np.full((50, 60), IGNORE, np.uint8)
    expected[1:21, 8:28] = 2
    np.testing.assert_array_equal(target, expected)


def test_pixel_membership_is_by_centre() -> None:
    # box x [10, 30) on a page of scale 4: centres 2, 6, 10, …; pixels 2..7 (centres 10..26)
    rows, cols = box_pixels(Box(10.0, 10.0, 20.0, 20.0), (4.0, 4.0), (0, 0), (100, 100))
    assert (cols.start, cols.stop) == (2, 7)  # centres 10, 14, 18, 22, 26
    assert (rows.start, rows.stop) == (2, 7)
    # clipped to the array; fully outside gives an empty slice
    rows, cols = box_pixels(Box(-50.0, 390.0, 100.0, 100.0), (4.0, 4.0), (0, 0), (100, 100))
    assert (cols.start, cols.stop) == (0, 12) and (rows.start, rows.stop) == (97, 100)
    rows, _ = box_pixels(Box(0.0, 1000.0, 10.0, 10.0), (4.0, 4.0), (0, 0), (100, 100))
    assert rows.start == rows.stop


def test_ignore_regions_glass_and_overlaps() -> None:
    tissue = np.zeros((10, 10), bool)
    tissue[:, 2:] = True
    squares = [
        Annotation("low", "s", Box(0.0, 0.0, 60.0, 60.0), 1),  # pixels 0..5
        Annotation("high", "s", Box(40.0, 40.0, 40.0, 40.0), 3),  # pixels 4..7
        Annotation("normal", "s", Box(80.0, 0.0, 20.0, 20.0), 0),  # pixels 8..9, rows 0..1
    ]
    target = detector_target(tissue, (10.0, 10.0), (0, 0), squares, label=3)
    assert (target[:6, :2] == IGNORE).all()  # mask-glass inside a lesion square is ignored
    assert (target[6:, :2] == 0).all()  # glass outside the squares is background
    assert (target[0:4, 2:6] == 1).all() and (target[4:6, 2:4] == 1).all()
    assert (target[4:8, 4:8] == 3).all()  # the most severe class wins where squares overlap
    assert (target[0:2, 8:10] == 0).all()  # a class-0 square is benign supervision
    assert (target[8:, 2:] == IGNORE).all()  # unannotated tissue of a lesion slide
    benign = detector_target(tissue, (10.0, 10.0), (0, 0), [squares[2]], label=0)
    assert (benign == 0).all()  # tissue of a label-0 slide is benign


def test_jittered_centres_keep_the_patch_inside_the_square() -> None:
    rng = np.random.default_rng(0)
    box = Box(100.0, 200.0, 300.0, 300.0)
    centres = jittered_centres(rng, box, 500, (100.0, 100.0))
    assert centres.shape == (500, 2)
    assert centres[:, 0].min() >= 150 and centres[:, 0].max() <= 350
    assert centres[:, 1].min() >= 250 and centres[:, 1].max() <= 450
    assert np.ptp(centres[:, 0]) > 150  # spread over the allowed range
    big = jittered_centres(rng, box, 3, (400.0, 400.0))  # larger than the square: its centre
    np.testing.assert_array_equal(big, [[250.0, 350.0]] * 3)
    near = jittered_centres(rng, box, 500, (100.0, 100.0), spread=0.4)  # within ±40 of centre
    assert np.abs(near - [250.0, 350.0]).max() <= 40.0
    assert np.abs(near - [250.0, 350.0]).max() > 35.0


def test_tissue_points_fall_on_tissue() -> None:
    mask = np.zeros((20, 30), bool)
    mask[5:7, 10:12] = True
    points = tissue_points(np.random.default_rng(1), mask, (8.0, 8.0), 200)
    cols, rows = (points[:, 0] // 8).astype(int), (points[:, 1] // 8).astype(int)
    assert mask[rows, cols].all()
    assert tissue_points(np.random.default_rng(1), ~mask & False, (8.0, 8.0), 5).shape == (0, 2)


def test_hits_and_recall_at_k() -> None:
    squares = [[Box(0, 0, 10, 10), Box(100, 100, 10, 10)], [Box(50, 50, 10, 10)]]
    hotspots = [
        np.array([[105.0, 105.0], [5.0, 5.0], [500.0, 500.0]]),  # second square first
        np.array([[0.0, 0.0], [60.0, 55.0]]),  # x = 60 is outside [50, 60)
    ]
    assert hits(squares[0], hotspots[0][:1]).tolist() == [False, True]
    assert recall_at_k(squares, hotspots, [1, 2, 3]) == pytest.approx(
        {1: 1 / 3, 2: 2 / 3, 3: 2 / 3}
    )
    assert np.isnan(recall_at_k([[]], [np.zeros((0, 2))], [1])[1])


def test_a_lesion_square_over_tissue_the_mask_missed_is_ignored() -> None:
    """The mask missed the left half of a lesion square's tissue: there the target neither
    teaches lesion nor "no lesion"; the found half takes the class, glass elsewhere stays 0,
    and a class-0 square over missed tissue keeps its glass as background."""
    tissue = np.zeros((8, 12), bool)
    tissue[:, 4:8] = True  # the mask found columns 4..7 only
    square = Annotation("hsil", "s", Box(0.0, 0.0, 80.0, 80.0), 2)  # columns 0..7, every row
    target = detector_target(tissue, (10.0, 10.0), (0, 0), [square], label=2)
    assert (target[:, 0:4] == IGNORE).all()
    assert (target[:, 4:8] == 2).all()
    assert (target[:, 8:] == 0).all()
    normal = Annotation("normal", "s", Box(0.0, 0.0, 80.0, 80.0), 0)
    benign = detector_target(tissue, (10.0, 10.0), (0, 0), [normal], label=0)
    assert (benign == 0).all()
