"""What the ground truth explains of a score (training.evaluate.truth), on hand-made slides:
the oracle rows, the worst-lesion recall by size and grade, the scores by centre."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.decision import DecisionConfig
from stages.geometry import Box
from stages.hotspots import Hotspot
from stages.result import SlideResult
from training.evaluate.truth import (
    centre_table,
    grades_under,
    oracle_centres,
    oracle_grades,
    oracle_grades_class,
    oracle_hotspots_class,
    size_bin,
    worst_lesion_recall,
)

#: Lesions of four slides (page-0 px): a.tif's grade-3 focus lies inside its grade-1 area.
LESIONS = pd.DataFrame(
    [
        # filename, grade, size_um, x, y, bbox_x, bbox_y, bbox_w, bbox_h, worst
        ("a.tif", 3, 100.0, 50.0, 50.0, 0.0, 0.0, 100.0, 100.0, True),
        ("a.tif", 1, 400.0, 150.0, 150.0, 50.0, 50.0, 200.0, 200.0, False),
        ("b.tif", 2, 700.0, 1150.0, 1150.0, 1000.0, 1000.0, 300.0, 300.0, True),
        ("b.tif", 2, 200.0, 2025.0, 2025.0, 2000.0, 2000.0, 50.0, 50.0, True),
        ("c.tif", 1, 1500.0, 500.0, 500.0, 0.0, 0.0, 1000.0, 1000.0, True),
        ("d.tif", 1, 50.0, 10.0, 10.0, 0.0, 0.0, 20.0, 20.0, True),
        ("e.tif", 3, 120.0, 10.0, 10.0, 0.0, 0.0, 20.0, 20.0, True),  # no result: left out
    ],
    columns=["filename", "grade", "size_um", "x", "y", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
             "worst"],
)  # fmt: skip


def result(name: str, centres: list[tuple[float, float]], graded: int) -> SlideResult:
    """A result whose hotspots are 20 px boxes on ``centres``, the first ``graded`` graded."""
    hotspots = [
        Hotspot(Box.centered(x, y, 20.0, 20.0), 0.5, (0.4, 0.3, 0.2, 0.1), rank)
        for rank, (x, y) in enumerate(centres)
    ]
    grades = np.full((graded, 4), 0.25, np.float32)
    return SlideResult(name, 0, (0.25,) * 4, "patches", hotspots=hotspots, grades=grades)


RESULTS = [
    result("a.tif", [(75.0, 75.0), (200.0, 200.0), (500.0, 500.0)], graded=2),
    result("b.tif", [(1100.0, 1100.0), (2010.0, 1990.0), (2010.0, 2010.0)], graded=2),
    result("c.tif", [(500.0, 500.0)], graded=0),
    result("d.tif", [(5.0, 5.0)], graded=1),
]


def slide_lesions(name: str) -> pd.DataFrame:
    return LESIONS[LESIONS["filename"] == name]


def test_grades_under_take_the_highest_grade_whose_box_holds_the_centre() -> None:
    centres = np.array([[75.0, 75.0], [200.0, 200.0], [500.0, 500.0], [100.0, 100.0]])
    # (100, 100) is on a.tif's grade-3 box's right edge (outside) and inside the grade-1 area
    assert grades_under(centres, slide_lesions("a.tif")).tolist() == [3, 1, 0, 1]
    assert grades_under(centres, slide_lesions("z.tif")).tolist() == [0, 0, 0, 0]


def test_oracle_grades_are_one_hot_true_grades_of_the_graded_hotspots_only() -> None:
    a, b = RESULTS[0], RESULTS[1]
    assert oracle_grades(a, slide_lesions("a.tif")).tolist() == [[0, 0, 0, 1], [0, 1, 0, 0]]
    # b's second graded hotspot (2010, 1990) lies above its grade-2 focus: benign
    assert oracle_grades(b, slide_lesions("b.tif")).tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    decision = DecisionConfig()
    assert oracle_grades_class(a, slide_lesions("a.tif"), decision) == 3
    assert oracle_grades_class(b, slide_lesions("b.tif"), decision) == 2
    assert oracle_grades_class(RESULTS[3], slide_lesions("z.tif"), decision) == 0


def test_oracle_hotspots_are_the_lesion_centres_or_else_the_graded_hotspots() -> None:
    assert oracle_centres(RESULTS[0], slide_lesions("a.tif")).tolist() == [[50, 50], [150, 150]]
    # no lesion: the hotspots the cascade graded, not the third one it left
    assert oracle_centres(RESULTS[0], slide_lesions("z.tif")).tolist() == [[75, 75], [200, 200]]
    decision = DecisionConfig()
    invasive = np.array([[0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert oracle_hotspots_class(RESULTS[0], invasive, decision) == 3
    assert oracle_hotspots_class(RESULTS[0], np.eye(4)[[0, 0]], decision) == 0


def test_size_bins_close_the_last_bin_at_1500() -> None:
    got = [size_bin(s) for s in (79.9, 80.0, 149.9, 150.0, 599.0, 600.0, 1500.0, 1500.1)]
    assert got == [None, "80–150 µm", "80–150 µm", "150–300 µm", "300–600 µm", "600–1500 µm",
                   "600–1500 µm", None]  # fmt: skip


def test_worst_lesion_recall_by_size_and_grade_counts_graded_hotspots_only() -> None:
    table = worst_lesion_recall(LESIONS, RESULTS)
    assert table["group"].tolist() == [
        "80–150 µm", "150–300 µm", "300–600 µm", "600–1500 µm", "grade 1", "grade 2", "grade 3",
        "all",
    ]  # fmt: skip
    # hit: a's focus, b's 700 µm area, d's 50 µm focus (in "all" and "grade 1" only);
    # missed: b's 200 µm focus (its hotspot ungraded), c's area (nothing graded)
    assert table["lesions"].tolist() == [1, 1, 0, 2, 2, 2, 1, 5]
    assert table["hit"].tolist() == [1, 0, 0, 1, 1, 1, 1, 3]
    expected = [1.0, 0.0, np.nan, 0.5, 0.5, 0.5, 1.0, 0.6]
    np.testing.assert_array_equal(table["recall"].to_numpy(), expected)


def test_centre_table_scores_written_and_true_labels_with_the_held_out_centre_apart() -> None:
    slides = pd.DataFrame(
        {
            "filename": ["a.tif", "b.tif", "c.tif", "d.tif"],
            "label": [3, 2, 1, 1],
            "written_label": [3, 1, 1, 1],  # b's label written one grade off
            "centre": ["C01", "C01", "C07", "C02"],
        }
    )
    classes = {"m": {"a.tif": 3, "b.tif": 2, "c.tif": 0, "d.tif": 1}, "n": {"a.tif": 2}}
    table = centre_table(slides, classes, ("C07",)).set_index("group")
    assert table.index.tolist() == ["C01", "C02", "C07 (held out)", "seen centres", "all"]
    assert table["slides"].tolist() == [2, 1, 1, 3, 4]
    # costs: written 1 called 2: 0.3; 1 called 0: 0.1; 3 called 2: 0.3
    assert table["m"].tolist() == pytest.approx([0.85, 1.0, 0.9, 0.9, 0.9])
    assert table["m true"].tolist() == pytest.approx([1.0, 1.0, 0.9, 1.0, 0.975])
    np.testing.assert_allclose(table["n"].to_numpy(), [0.7, np.nan, np.nan, 0.7, 0.7])
