"""What the generator's ground truth explains of a held-out score: the oracle rows, the recall of
each slide's worst lesion and the score by centre (pure functions, no network, no slide read).

A generated folder's ``truth_lesions.csv`` (one row per lesion: ``filename``, ``grade``,
``size_um``, page-0 centre ``x``, ``y`` and box ``bbox_x``, ``bbox_y``, ``bbox_w``, ``bbox_h``,
``worst``, …) and ``truth_slides.csv`` (``filename``, true ``label``, ``written_label``,
``centre``, …) are :mod:`training.data.synthetic.truth_tables`'. Coordinates are page-0 pixels,
x right, y down; a point is inside a box when ``x <= px < x + w`` and ``y <= py < y + h``
(:func:`training.data.targets.hits`).

* *oracle hotspots* (:func:`oracle_centres`, :func:`oracle_hotspots_class`): stage 2 grades
  patches centred on the true lesion centres instead of the detector's hotspots (on a slide
  without a lesion, on the hotspots the cascade graded: there is nothing else to find); the
  decision is the shipped one, with the run's heatmap evidence as the cascade had it. It scores
  stage 2 and the decision given a perfect stage 1.
* *oracle grades* (:func:`oracle_grades`, :func:`oracle_grades_class`): the hotspots the cascade
  graded, each given the one-hot grade of the true lesion under its centre
  (:func:`grades_under`); the same decision with the run's heatmap evidence. It scores stage 1's
  hotspots and the decision given a perfect stage 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stages.decision import DecisionConfig, decide_slide
from stages.geometry import Box
from stages.hotspots import heat_evidence
from stages.metric import N_CLASSES, score
from stages.result import SlideResult
from training.data.targets import hits

LESIONS_CSV = "truth_lesions.csv"
SLIDES_CSV = "truth_slides.csv"
#: Size bins (µm) of :func:`worst_lesion_recall`: [80, 150), [150, 300), [300, 600), [600, 1500].
SIZE_EDGES_UM = (80.0, 150.0, 300.0, 600.0, 1500.0)


def read_truth(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``(lesions, slides)``: the folder's ``truth_lesions.csv`` and ``truth_slides.csv``, or
    None when it has not both (a folder of real slides, or of an older generator)."""
    lesions, slides = folder / LESIONS_CSV, folder / SLIDES_CSV
    if not (lesions.is_file() and slides.is_file()):
        return None
    slides_table = pd.read_csv(slides)
    slides_table["centre"] = slides_table["centre"].fillna("")
    return pd.read_csv(lesions), slides_table


def graded_centres(result: SlideResult) -> np.ndarray:
    """``(k, 2)`` float64 page-0 centres of the hotspots stage 2 graded (the first
    ``len(result.grades)``), best first."""
    graded = result.hotspots[: len(result.grades)]
    return np.array([h.box.center for h in graded], np.float64).reshape(-1, 2)


def lesion_boxes(lesions: pd.DataFrame) -> list[Box]:
    """The page-0 boxes of ``lesions`` (rows of ``truth_lesions.csv``), in row order."""
    cols = ["bbox_x", "bbox_y", "bbox_w", "bbox_h"]
    return [Box(*map(float, row)) for row in lesions[cols].to_numpy()]


def grades_under(centres: np.ndarray, lesions: pd.DataFrame) -> np.ndarray:
    """``(n,)`` int64: for each of the ``(n, 2)`` page-0 ``centres``, the highest grade among
    ``lesions`` (one slide's rows of ``truth_lesions.csv``) whose box holds it; 0 when none does."""
    boxes, grades = lesion_boxes(lesions), lesions["grade"].to_numpy(np.int64)
    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    return np.array([grades[hits(boxes, c[None])].max(initial=0) for c in centres], np.int64)


def oracle_grades(result: SlideResult, lesions: pd.DataFrame) -> np.ndarray:
    """``(k, 4)`` float64 one-hot grades of the hotspots the cascade graded: the true grade under
    each centre (:func:`grades_under`); ``lesions``: the slide's rows of ``truth_lesions.csv``."""
    return np.eye(N_CLASSES)[grades_under(graded_centres(result), lesions)]


def oracle_grades_class(
    result: SlideResult, lesions: pd.DataFrame, decision: DecisionConfig
) -> int:
    """The *oracle grades* class (module doc): the decision on :func:`oracle_grades` and the
    result's heatmap evidence."""
    return decide_slide(
        oracle_grades(result, lesions), heat_evidence(result.hotspots), decision
    ).cls


def oracle_centres(result: SlideResult, lesions: pd.DataFrame) -> np.ndarray:
    """``(n, 2)`` float64 page-0 centres the *oracle hotspots* row grades: the ``x``, ``y`` of
    every one of the slide's ``lesions`` (rows of ``truth_lesions.csv``), in row order; on a
    slide without a lesion, the centres of the hotspots the cascade graded."""
    if len(lesions):
        return lesions[["x", "y"]].to_numpy(np.float64)
    return graded_centres(result)


def oracle_hotspots_class(
    result: SlideResult, patch_probs: np.ndarray, decision: DecisionConfig
) -> int:
    """The *oracle hotspots* class (module doc): the decision on stage 2's ``(n, 4)``
    probabilities of the patches at :func:`oracle_centres` and the result's heatmap evidence."""
    return decide_slide(patch_probs, heat_evidence(result.hotspots), decision).cls


def size_bin(size_um: float) -> str | None:
    """The :data:`SIZE_EDGES_UM` bin of a lesion ``size_um`` across, as ``"80–150 µm"``; None
    outside [80, 1500]."""
    edges = SIZE_EDGES_UM
    if not edges[0] <= size_um <= edges[-1]:
        return None
    i = min(int(np.searchsorted(edges, size_um, side="right")) - 1, len(edges) - 2)
    return f"{edges[i]:g}–{edges[i + 1]:g} µm"


def worst_lesion_recall(lesions: pd.DataFrame, results: Sequence[SlideResult]) -> pd.DataFrame:
    """Recall of the worst lesions (``worst`` True: of the slide's true grade) among the
    hotspots stage 2 graded: a lesion is hit when a graded hotspot's centre lies in its box.

    One row per size bin (:func:`size_bin`), per grade 1–3, and ``all`` (every worst lesion,
    those outside the bins too); columns ``group``, ``lesions``, ``hit``, ``recall`` (NaN where
    there are none). Lesions of slides without a result are left out."""
    by_name = {r.filename: r for r in results}
    worst = lesions[lesions["worst"].astype(bool) & lesions["filename"].isin(by_name)]
    hit = np.array(
        [
            hits([box], graded_centres(by_name[name]))[0]
            for box, name in zip(lesion_boxes(worst), worst["filename"], strict=True)
        ],
        bool,
    ).reshape(-1)
    bins = np.array([size_bin(s) for s in worst["size_um"]], object)
    grades = worst["grade"].to_numpy()
    groups = [
        *((name, bins == name) for name in map(size_bin, SIZE_EDGES_UM[:-1])),
        *((f"grade {g}", grades == g) for g in (1, 2, 3)),
        ("all", np.ones(len(worst), bool)),
    ]
    rows = []
    for name, chosen in groups:
        n, n_hit = int(chosen.sum()), int(hit[chosen].sum())
        rows.append(
            {"group": name, "lesions": n, "hit": n_hit, "recall": n_hit / n if n else np.nan}
        )
    return pd.DataFrame(rows)


def centre_table(
    slides: pd.DataFrame, classes: Mapping[str, Mapping[str, int]], held_out: Sequence[str]
) -> pd.DataFrame:
    """Scores by centre: one row per centre of ``slides`` (``truth_slides.csv``; a held-out
    centre's name followed by ``" (held out)"``), then ``seen centres`` (all but ``held_out``)
    and ``all``. Columns: ``group``, ``slides``, and for each method of ``classes`` (method →
    filename → predicted class) ``<method>`` (against the written labels) and ``<method> true``
    (against the true ones). Slides missing from a method's classes are left out of it."""
    centres = sorted(set(slides["centre"]))
    groups = [
        *((f"{c} (held out)" if c in held_out else c, slides["centre"] == c) for c in centres),
        ("seen centres", ~slides["centre"].isin(held_out)),
        ("all", pd.Series(True, index=slides.index)),
    ]
    rows = []
    for name, chosen in groups:
        part = slides[chosen.to_numpy()]
        row: dict[str, object] = {"group": name, "slides": len(part)}
        for method, predicted in classes.items():
            known = part[part["filename"].isin(predicted)]
            pred = [predicted[f] for f in known["filename"]]
            for column, labels in ((method, "written_label"), (f"{method} true", "label")):
                row[column] = score(known[labels].to_numpy(), pred) if len(known) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
