"""The generator's ground truth as tables: every lesion's grade, size and position, per slide
the true worst grade beside the label as written.

``truth_lesions.csv`` (:func:`lesion_truth`) and ``truth_slides.csv`` (:func:`slide_truth`) sit
beside the competition's CSVs of a generated folder; an evaluation can score against the truth
or the written labels, place oracle hotspots on the lesions and grade hotspots by the lesion
under them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from training.data.synthetic.depth import column_corners
from training.data.synthetic.spec import Lesion, SlideSpec

LESION_COLUMNS = [
    "filename", "lesion", "grade", "size_um", "x", "y", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
    "annotated", "worst", "fill", "invasion_um", "centre",
]  # fmt: skip
SLIDE_COLUMNS = [
    "filename", "label", "written_label", "centre", "mpp", "lesions", "annotated_lesions",
    "worst_size_um", "worst_is_smallest", "mimics",
]  # fmt: skip


def lesion_box(lesion: Lesion, spec: SlideSpec) -> tuple[float, float, float, float]:
    """Page-0 ``(x, y, w, h)`` (y down) bounding the lesion, clipped to the slide: the corners
    of a layered lesion's band (:func:`~training.data.synthetic.depth.column_corners`), else
    the square ``size_um`` across centred on it."""
    if lesion.layers is not None:
        corners = column_corners(lesion.cx, lesion.cy, lesion.size_um, lesion.layers, spec.mpp)
    else:
        half = lesion.size_um / 2 / spec.mpp
        corners = np.array(
            [[lesion.cx - half, lesion.cy - half], [lesion.cx + half, lesion.cy + half]]
        )
    x0, y0 = np.maximum(corners.min(0), 0.0)
    x1, y1 = np.minimum(corners.max(0), (spec.width, spec.height))
    return float(x0), float(y0), float(max(x1 - x0, 0.0)), float(max(y1 - y0, 0.0))


def worst_is_smallest(spec: SlideSpec) -> bool:
    """Whether ``spec`` has lesions of 2+ grades and its smallest lesion is of the worst grade."""
    lesions = [le for le in spec.lesions if le.grade]
    if len({le.grade for le in lesions}) < 2:
        return False
    return min(lesions, key=lambda le: le.size_um).grade == spec.label


def lesion_truth(specs: Sequence[SlideSpec]) -> pd.DataFrame:
    """One row per lesion (grade 1–3) of ``specs`` (:data:`LESION_COLUMNS`): ``lesion`` its
    index in ``spec.lesions``, centre ``x``, ``y`` and ``bbox_*`` in page-0 px (y down),
    ``worst`` when its grade is the slide's true label, ``fill`` / ``invasion_um`` from its
    layers (NaN / 0 without), ``centre`` the slide's centre name ("" without)."""
    rows = []
    for spec in specs:
        for index, lesion in enumerate(spec.lesions):
            if not lesion.grade:
                continue
            layers = lesion.layers
            rows.append([
                spec.filename, index, lesion.grade, lesion.size_um, lesion.cx, lesion.cy,
                *lesion_box(lesion, spec), lesion.annotated, lesion.grade == spec.label,
                np.nan if layers is None else layers.fill,
                0.0 if layers is None else layers.invasion_um,
                "" if spec.centre is None else spec.centre.name,
            ])  # fmt: skip
    return pd.DataFrame(rows, columns=LESION_COLUMNS)


def slide_truth(specs: Sequence[SlideSpec]) -> pd.DataFrame:
    """One row per slide (:data:`SLIDE_COLUMNS`): true ``label`` (worst grade), the label as
    written, centre, µm/px, lesion counts, the size of the largest lesion of the worst grade
    (µm; NaN on class 0),
    :func:`worst_is_smallest` and the number of benign mimics."""
    rows = []
    for spec in specs:
        lesions = [le for le in spec.lesions if le.grade]
        worst = [le.size_um for le in lesions if le.grade == spec.label]
        rows.append([
            spec.filename, spec.label, spec.label_as_written,
            "" if spec.centre is None else spec.centre.name, spec.mpp, len(lesions),
            sum(le.annotated for le in lesions), max(worst, default=np.nan),
            worst_is_smallest(spec), len(spec.lookalikes),
        ])  # fmt: skip
    return pd.DataFrame(rows, columns=SLIDE_COLUMNS)
