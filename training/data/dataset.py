"""The competition's training layout, read as it is, and slide-level folds.

A training folder holds ``train_metadata.csv`` (filename, width, height, resolution, …; the URL,
checksum and size columns are ignored), ``train_labels.csv`` (one-hot ``filename,0,1,2,3``),
``train_annotations.csv`` (WKT squares with the y axis flipped; :mod:`training.data.annotations`)
and the TIFs, possibly only some of them: users often download part of the ~1 TB, or only
DrivenData's light files (:mod:`training.data.light`: ``downsampled_images/``,
``annotated_regions/``). Generated folders (``python -m training.data.synthetic … --split
train``, ``--light`` or ``--light-only``) have the same layout.

:func:`read_training_set` returns the listed slides whose TIF (or downsampled image) is present
(the absent ones are counted in one warning); :func:`assign_folds` splits them by slide into k
folds, stratified by label and, on request, grouped by the centre encoded in real filenames
(``C06_B111_S21.tif``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyvips
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from stages.slide import vips_error_text
from stages.submission import SubmissionError, classes_by_filename, read_metadata, read_table
from training.data.annotations import Y_FLIPS, Annotation, parse_annotations
from training.data.light.layout import downsampled_path

log = logging.getLogger(__name__)

METADATA = "train_metadata.csv"
LABELS = "train_labels.csv"
ANNOTATIONS = "train_annotations.csv"
#: A real TissueNet filename: centre, block, slide (``C06_B111_S21.tif``).
CENTRE_PATTERN = re.compile(r"^(C\d+)_B\d+_S\d+", re.IGNORECASE)
#: Where a training slide's pixels are read from: its TIF, or DrivenData's light files.
SOURCES = ("tif", "light")


@dataclass(frozen=True)
class TrainSlide:
    """One labelled slide: its TIF (in the training folder, present or not), class (0–3),
    page-0 µm/pixel from the metadata (None when missing or not a number), its annotation
    squares (page-0 px, y down), centre (None when the filename carries none) and page-0
    ``(width, height)`` from the metadata (None without those columns)."""

    filename: str
    path: Path
    label: int
    mpp: float | None
    annotations: tuple[Annotation, ...]
    centre: str | None
    size: tuple[int, int] | None = None

    @property
    def stem(self) -> str:
        return Path(self.filename).stem


def centre_of(filename: str) -> str | None:
    """The centre code of a real TissueNet filename (``"C06"``), None for other names."""
    match = CENTRE_PATTERN.match(filename)
    return match.group(1).upper() if match else None


def tif_page0_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of a TIF's page 0 in pixels, from its header (no pixel is decoded).

    Raises ValueError naming the file when libvips cannot read the header.
    """
    try:
        image = pyvips.Image.tiffload(str(path), page=0)
    except pyvips.Error as exc:
        reason = vips_error_text(exc)
        raise ValueError(f"{Path(path).name}: not a readable TIFF ({reason})") from exc
    return image.width, image.height


def _metadata_sizes(path: Path) -> dict[str, tuple[int, int]]:
    """Filename → page-0 ``(width, height)`` of the metadata rows that give both as numbers."""
    frame = pd.read_csv(path)
    if not {"filename", "width", "height"} <= set(frame.columns):
        return {}
    width, height = (pd.to_numeric(frame[c], errors="coerce") for c in ("width", "height"))
    given = width.notna() & height.notna()
    return {
        str(name): (int(w), int(h))
        for name, w, h in zip(frame["filename"][given], width[given], height[given], strict=True)
    }


def read_training_set(
    data: Path, y_flip: str = "metadata", source: str = "tif"
) -> list[TrainSlide]:
    """The slides of a training folder whose ``source`` is present, in metadata order:
    ``"tif"``, the TIF; ``"light"``, the downsampled image (:mod:`training.data.light`).

    Every slide of ``train_metadata.csv`` must have a row in ``train_labels.csv``; annotation
    rows of slides the metadata does not list are an error (ValueError naming the file). Slides
    listed but absent are skipped with one warning that counts them.

    ``y_flip`` (:data:`training.data.annotations.Y_FLIPS`) is the page-0 height the squares'
    flipped y axis is undone with: ``"metadata"`` (the metadata's ``height``) or ``"tif"`` (each
    present TIF's own page-0 height, read from its header; a TIF whose header cannot be read is
    skipped with a warning naming it). Other values raise ValueError.
    """
    if y_flip not in Y_FLIPS:
        raise ValueError(f"y_flip must be one of {Y_FLIPS}, got {y_flip!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "light" and y_flip == "tif":
        raise ValueError("y_flip 'tif' reads the TIFs' heights; the light files have none")
    try:
        metadata = read_metadata(data / METADATA)
        labels = read_table(data / LABELS)
    except SubmissionError as exc:
        raise ValueError(f"not a training folder: {exc}") from exc
    classes = classes_by_filename(labels)
    unlabelled = sorted(set(metadata["filename"]) - set(classes))
    if unlabelled:
        raise ValueError(
            f"{data / LABELS}: no label for {len(unlabelled)} slide(s), e.g. {unlabelled[:3]}"
        )
    names = [str(name) for name in metadata["filename"]]
    files = {name: name if source == "tif" else downsampled_path(name) for name in names}
    absent = [name for name in names if not (data / files[name]).is_file()]
    sizes = _metadata_sizes(data / METADATA)
    skipped = set(absent)
    heights: dict[str, int] | None = None
    if y_flip == "tif":
        heights = {}
        for name in (name for name in names if name not in skipped):
            try:
                heights[name] = tif_page0_size(data / name)[1]
            except ValueError as exc:
                log.warning("%s; skipped (its squares cannot be placed with the TIF height)", exc)
                skipped.add(name)
    path = data / ANNOTATIONS
    boxes: dict[str, list[Annotation]] = {}
    if path.is_file():
        for annotation in parse_annotations(path, data / METADATA, heights):
            boxes.setdefault(annotation.filename, []).append(annotation)
    else:
        log.warning("%s: missing; training with slide labels only", path)
    slides = []
    for row in metadata.itertuples(index=False):
        name = str(row.filename)
        if name in skipped:
            continue
        mpp = float(row.resolution)
        slides.append(
            TrainSlide(
                filename=name,
                path=data / name,
                label=int(classes[name]),
                mpp=mpp if np.isfinite(mpp) else None,
                annotations=tuple(boxes.get(name, ())),
                centre=centre_of(name),
                size=sizes.get(name),
            )
        )
    if absent:
        log.warning(
            "%d of %d listed slides are not in %s and are skipped (e.g. %s)",
            len(absent),
            len(metadata),
            data,
            ", ".join(files[name] for name in absent[:3]),
        )
    log.info(
        "%s: %d slides, %d annotation squares (y flip: %s height)",
        data,
        len(slides),
        sum(len(s.annotations) for s in slides),
        y_flip,
    )
    return slides


def assign_folds(
    slides: list[TrainSlide], k: int, seed: int = 0, by_centre: bool = False
) -> dict[str, int]:
    """Filename → fold in ``0..k-1``: slides split into ``k`` folds stratified by label.

    ``by_centre`` keeps each centre's slides in one fold (``StratifiedGroupKFold``), so that a
    fold's score shows whether a model learned a centre's stain; it needs centres in the
    filenames (ValueError otherwise). Classes with fewer than ``k`` slides are spread as far as
    they go (scikit-learn warns); when no class has ``k`` slides, the folds are not stratified.
    """
    if k < 2 or k > len(slides):
        raise ValueError(f"need 2 <= k <= {len(slides)} slides, got k={k}")
    labels = np.array([s.label for s in slides])
    order = np.zeros(len(slides))
    if by_centre:
        centres = [s.centre for s in slides]
        if any(c is None for c in centres):
            missing = [s.filename for s in slides if s.centre is None][:3]
            raise ValueError(f"grouping by centre needs Cxx_Byyy_Szz filenames, e.g. not {missing}")
        if len(set(centres)) < k:
            raise ValueError(f"{len(set(centres))} centres cannot fill {k} folds")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(order, labels, groups=centres)
    elif np.bincount(labels).max() < k:  # no class fills the folds: nothing to stratify
        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(order)
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(order, labels)
    folds = {}
    for fold, (_, held) in enumerate(splits):
        folds |= {slides[i].filename: fold for i in held}
    return folds


def folds_frame(slides: list[TrainSlide], folds: dict[str, int]) -> pd.DataFrame:
    """One row per slide: filename, label, centre, fold, annotation squares."""
    return pd.DataFrame(
        {
            "filename": [s.filename for s in slides],
            "label": [s.label for s in slides],
            "centre": [s.centre or "" for s in slides],
            "fold": [folds[s.filename] for s in slides],
            "squares": [len(s.annotations) for s in slides],
        }
    )
