"""Checks of a generated training folder against the generator's ground truth.

On a folder of ``python -m training.data.synthetic`` (its specs rebuilt by
:func:`folder_specs`): :func:`square_coverage` measures, in the label map, what each annotated
square holds (its own class's tissue, another class's lesion, glass). :func:`resolution_check`
asks whether the grade of an annotated lesion square can be read at low resolution (page
nearest 4 µm/px, stage 1's) or only at high resolution (128 px windows of the page nearest
0.5 µm/px, stage 2's): a random forest on generic colour / gradient / texture statistics,
cross-validated by slide.

``python -m training.data.check`` runs them on a generated folder.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from stages.geometry import Box
from stages.slide import Slide
from training.data.annotations import parse_annotations
from training.data.synthetic.cohort import sample_specs
from training.data.synthetic.maps import render_maps
from training.data.synthetic.sampling import SynthConfig
from training.data.synthetic.spec import LESION_TISSUE, SlideSpec, Tissue, slide_annotations

log = logging.getLogger(__name__)

LESION_TISSUES = tuple(LESION_TISSUE.values())
#: The CLI also scores the squares with less than this share under blur or artefacts.
CLEAN_SHARE = 0.02


def square_coverage(spec: SlideSpec) -> pd.DataFrame:
    """What each annotated square of ``spec`` holds in its label map (:func:`render_maps`).

    One row per annotation (:func:`slide_annotations` order), columns ``annotation_id``,
    ``filename``, ``class`` and four shares of the square's area (label-map pixels whose centre
    lies in the page-0 square), floats in [0, 1]: ``own`` (class 1/2/3: LSIL/HSIL/INVASIVE;
    class 0: any tissue that is not a lesion), ``other`` (a lesion type of another class),
    ``tissue`` (anything but glass) and ``artefact`` (under an out-of-focus patch or an
    artefact overlay: pen, fold, dust, stripe).
    """
    maps = render_maps(spec)
    labels, zoom = maps.labels, maps.zoom
    spoilt_map = (maps.blur > 0) | (maps.art_alpha > 0)

    def centres_in(lo: float, hi: float, n: int) -> slice:  # map pixels centred in [lo, hi)
        return slice(*(min(max(int(np.ceil(v / zoom - 0.5)), 0), n) for v in (lo, hi)))

    rows = []
    for annotation in slide_annotations(spec):
        box, grade = annotation.box, annotation.annotation_class
        rows_, cols = (
            centres_in(box.y, box.bottom, labels.shape[0]),
            centres_in(box.x, box.right, labels.shape[1]),
        )
        window, spoilt = labels[rows_, cols], spoilt_map[rows_, cols]
        lesion = np.isin(window, LESION_TISSUES)
        tissue = window != Tissue.GLASS
        if grade == 0:
            own, other = tissue & ~lesion, lesion
        else:
            own = window == LESION_TISSUE[grade]
            other = lesion & ~own
        size = max(window.size, 1)
        rows.append({
            "annotation_id": annotation.annotation_id, "filename": annotation.filename,
            "class": grade, "own": own.sum() / size, "other": other.sum() / size,
            "tissue": tissue.sum() / size, "artefact": spoilt.sum() / size,
        })  # fmt: skip
    columns = ["annotation_id", "filename", "class", "own", "other", "tissue", "artefact"]
    return pd.DataFrame(rows, columns=columns)


def coverage_summary(coverage: pd.DataFrame) -> pd.DataFrame:
    """Per class (index): ``squares``, ``own_min``, ``own_median``, ``tissue_median`` and
    ``with_other`` (squares whose ``other`` share is above 0) of a :func:`square_coverage`
    table."""
    groups = coverage.groupby("class")
    return pd.DataFrame({
        "squares": groups.size(), "own_min": groups["own"].min(),
        "own_median": groups["own"].median(), "tissue_median": groups["tissue"].median(),
        "with_other": groups["other"].apply(lambda s: int((s > 0).sum())),
    })  # fmt: skip


def _glcm_features(grey: np.ndarray, levels: int = 8) -> list[float]:
    """Contrast, homogeneity, energy and correlation of the grey-level co-occurrence matrix
    (``levels`` levels over the image's own range; offsets one pixel right and down, pooled)."""
    lo, hi = np.percentile(grey, (1, 99))
    q = np.clip((grey - lo) / max(hi - lo, 1e-6) * levels, 0, levels - 1).astype(np.int64)
    pairs = np.concatenate([
        (q[:, :-1] * levels + q[:, 1:]).ravel(), (q[:-1, :] * levels + q[1:, :]).ravel(),
    ])  # fmt: skip
    p = np.bincount(pairs, minlength=levels * levels).reshape(levels, levels).astype(float)
    p = (p + p.T) / max(2 * p.sum(), 1.0)
    i, j = np.mgrid[:levels, :levels]
    mu = (i * p).sum()
    var = ((i - mu) ** 2 * p).sum()
    correlation = ((i - mu) * (j - mu) * p).sum() / var if var > 1e-9 else 1.0
    return [
        float(((i - j) ** 2 * p).sum()),
        float((p / (1 + np.abs(i - j))).sum()),
        float((p**2).sum()),
        float(correlation),
    ]


def image_features(rgb: np.ndarray) -> np.ndarray:
    """(32,) float64 generic statistics of an (h, w, 3) uint8 RGB image: per channel mean, std
    and 5/25/50/75/95th percentiles; grey-level gradient magnitude (Sobel) mean, std, median and
    90th percentile; mean absolute Laplacian at full and half size; grey-level co-occurrence
    contrast, homogeneity, energy and correlation; grey std."""
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    colour = [pixels.mean(0), pixels.std(0), *np.percentile(pixels, (5, 25, 50, 75, 95), axis=0)]
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    half = cv2.resize(grey, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    texture = [
        gradient.mean(), gradient.std(), *np.percentile(gradient, (50, 90)),
        np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean(),
        np.abs(cv2.Laplacian(half, cv2.CV_32F)).mean(),
        *_glcm_features(grey), grey.std(),
    ]  # fmt: skip
    return np.concatenate([np.concatenate(colour), np.asarray(texture, dtype=np.float64)])


@dataclass(frozen=True)
class ResolutionScores:
    """Cross-validated accuracy of grading lesion squares (classes 1–3) from generic features.

    ``low``: one square read at the page nearest ``low_mpp``; ``high``: the mean class
    probabilities of its windows at the page nearest ``high_mpp``; ``high_window``: the windows
    graded one by one. ``majority``: the accuracy of always answering the most common class.
    """

    low: float
    high: float
    high_window: float
    majority: float
    squares: int
    slides: int


#: High-resolution windows are centred within this share of the square's side of its centre:
#: the annotation square is centred on its lesion, as stage 2's patch is on a hotspot, and a
#: small focus (or a thin grade-1 band) fills only the middle of the square.
WINDOW_JITTER = 0.05


def centre_windows(
    slide: Slide, box: Box, page: int, size: int, count: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """``count`` windows of ``size`` px of page ``page`` near the centre of page-0 ``box``
    (each centre moved by up to :data:`WINDOW_JITTER` of the side, x and y apart)."""
    square = slide.read_region(box, page)
    h, w = square.shape[:2]
    if h < size or w < size:
        return [cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)]
    ys = np.round((h - size) / 2 + rng.uniform(-WINDOW_JITTER, WINDOW_JITTER, count) * h)
    xs = np.round((w - size) / 2 + rng.uniform(-WINDOW_JITTER, WINDOW_JITTER, count) * w)
    ys, xs = (np.clip(v, 0, n - size).astype(int) for v, n in ((ys, h), (xs, w)))
    return [square[y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)]


def resolution_check(
    data_dir: str | Path,
    low_mpp: float = 4.0,
    high_mpp: float = 0.5,
    window_px: int = 128,
    windows: int = 4,
    folds: int = 5,
    seed: int = 0,
    annotation_ids: Collection[str] | None = None,
) -> ResolutionScores:
    """Can lesion squares of a train folder be graded at ``low_mpp`` or only at ``high_mpp``?

    Reads every annotated square of class 1–3 (``train_annotations.csv``, boxes in page-0 px;
    only those of ``annotation_ids`` when given) whole at the page nearest ``low_mpp`` and as
    ``windows`` windows of ``window_px`` px near its centre (:func:`centre_windows`) at the page
    nearest ``high_mpp``, describes each with :func:`image_features` and scores a random forest
    (300 trees) with ``folds``-fold cross-validation grouped by slide.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GroupKFold, cross_val_predict

    data_dir = Path(data_dir)
    metadata = pd.read_csv(data_dir / "train_metadata.csv")
    annotations = parse_annotations(data_dir / "train_annotations.csv", metadata)
    lesions = [
        a for a in annotations if a.annotation_class in LESION_TISSUE
        and (annotation_ids is None or a.annotation_id in annotation_ids)
    ]  # fmt: skip
    rng = np.random.default_rng(seed)
    low, high, y, groups, window_square = [], [], [], [], []
    resolution = dict(zip(metadata["filename"], metadata["resolution"], strict=True))
    for filename in dict.fromkeys(a.filename for a in lesions):
        with Slide(data_dir / filename, mpp=resolution[filename]) as slide:
            low_page, high_page = slide.page_for_mpp(low_mpp), slide.page_for_mpp(high_mpp)
            for a in (a for a in lesions if a.filename == filename):
                low.append(image_features(slide.read_region(a.box, low_page)))
                for crop in centre_windows(slide, a.box, high_page, window_px, windows, rng):
                    high.append(image_features(crop))
                    window_square.append(len(y))
                y.append(a.annotation_class)
                groups.append(filename)
    y_arr, groups_arr, owner = np.asarray(y), np.asarray(groups), np.asarray(window_square)
    n_folds = min(folds, len(set(groups)))
    if n_folds < 2 or len(set(y)) < 2:
        raise ValueError(f"{data_dir}: need lesion squares of 2+ classes on 2+ slides")

    def forest() -> RandomForestClassifier:
        return RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=-1)

    cv = GroupKFold(n_splits=n_folds)
    low_pred = cross_val_predict(forest(), np.asarray(low), y_arr, groups=groups_arr, cv=cv)
    proba = cross_val_predict(forest(), np.asarray(high), y_arr[owner], groups=groups_arr[owner],
                              cv=cv, method="predict_proba")  # fmt: skip
    classes = np.unique(y_arr)
    window_pred = classes[proba.argmax(1)]
    square_proba = np.zeros((len(y_arr), len(classes)))
    np.add.at(square_proba, owner, proba)
    scores = ResolutionScores(
        low=float((low_pred == y_arr).mean()),
        high=float((classes[square_proba.argmax(1)] == y_arr).mean()),
        high_window=float((window_pred == y_arr[owner]).mean()),
        majority=float(np.bincount(y_arr).max() / len(y_arr)),
        squares=len(y_arr),
        slides=len(set(groups)),
    )
    log.info("%s: %s", data_dir.name, scores)
    return scores


def folder_specs(
    data_dir: str | Path, seed: int, slides: int, config: SynthConfig
) -> list[SlideSpec]:
    """The specs of a folder written by ``python -m training.data.synthetic`` (regenerated from
    ``seed``, ``slides`` and ``config``), checked against its ``train_metadata.csv`` (names,
    sizes) and ``train_annotations.csv`` (ids, classes, boxes)."""
    data_dir = Path(data_dir)
    metadata = pd.read_csv(data_dir / "train_metadata.csv")
    specs = sample_specs(slides, seed, config)
    written = list(zip(metadata["filename"], metadata["width"], metadata["height"], strict=True))
    ours = [(s.filename, s.width, s.height) for s in specs]
    if written == ours:
        boxes = parse_annotations(data_dir / "train_annotations.csv", metadata)
        expected = [a for spec in specs for a in slide_annotations(spec)]
        same = len(boxes) == len(expected) and all(
            (a.annotation_id, a.annotation_class) == (b.annotation_id, b.annotation_class)
            and np.allclose((a.box.x, a.box.y, a.box.w), (b.box.x, b.box.y, b.box.w), atol=1e-3)
            for a, b in zip(boxes, expected, strict=False)
        )
        if same:
            return specs
    raise ValueError(
        f"{data_dir}: the folder does not match seed {seed}, {slides} slides, cohort "
        f"{'default' if config.realism is None else 'realistic'}, class mix "
        f"{config.class_mix}, size range {config.size_range} (pass the generator's options)"
    )
