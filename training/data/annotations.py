"""Read and write TissueNet ``train_annotations.csv`` rows.

The real file has columns ``annotation_id, filename, geometry, annotation_class``; ``geometry`` is
a WKT ``POLYGON`` of an axis-aligned 300 µm square in page-0 pixels with the y axis **flipped**
(origin at the bottom of page 0: ``row = height - y``). Which ``height`` is a convention
(:data:`Y_FLIPS`): the metadata's (the default) or the TIF's own page-0 height, which differs when
the file's page 0 is padded past the metadata size (``python -m training.data.check`` measures
which one the squares' tissue coverage supports). Everything returned here is in the project's
convention (:mod:`stages.geometry`: y down).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import shapely

from stages.geometry import Box

COLUMNS = ("annotation_id", "filename", "geometry", "annotation_class")
#: The page-0 height the flipped y axis is undone with: the metadata's, or the TIF's own.
Y_FLIPS = ("metadata", "tif")


@dataclass(frozen=True)
class Annotation:
    """One annotated square: its page-0 box (y down) and its class (0–3)."""

    annotation_id: str
    filename: str
    box: Box
    annotation_class: int


def _metadata_heights(metadata: pd.DataFrame | str | Path) -> dict[str, int]:
    frame = metadata if isinstance(metadata, pd.DataFrame) else pd.read_csv(metadata)
    missing = {"filename", "height"} - set(frame.columns)
    if missing:
        raise ValueError(f"metadata lacks column(s) {sorted(missing)}")
    return dict(zip(frame["filename"], frame["height"].astype(int), strict=True))


def parse_geometry(wkt: str, height: int) -> Box:
    """Page-0 box (y down) of one WKT polygon given in flipped-y page-0 pixels."""
    try:
        polygon = shapely.from_wkt(wkt)
    except shapely.errors.ShapelyError as exc:
        raise ValueError(f"not a WKT geometry: {wkt[:60]!r} ({exc})") from exc
    if polygon.geom_type != "Polygon" or polygon.is_empty:
        raise ValueError(f"expected a POLYGON, got {polygon.geom_type}: {wkt[:60]!r}")
    x0, y0, x1, y1 = polygon.bounds
    return Box(x0, height - y1, x1 - x0, y1 - y0)


def parse_annotations(
    annotations: str | Path | pd.DataFrame,
    metadata: pd.DataFrame | str | Path,
    heights: dict[str, int] | None = None,
) -> list[Annotation]:
    """All rows of an annotations CSV (or its frame) as :class:`Annotation` (boxes in page-0 px,
    y down).

    ``metadata`` (a frame or a ``*_metadata.csv`` path) lists the slides and gives each one's
    page-0 height, with which the y flip is undone; a row whose slide it lacks is an error.
    ``heights`` (filename → page-0 px, e.g. the TIFs' own heights) replaces the metadata's height
    for the slides it holds; the others keep the metadata's.
    """
    frame = annotations if isinstance(annotations, pd.DataFrame) else pd.read_csv(annotations)
    source = "annotations" if isinstance(annotations, pd.DataFrame) else str(annotations)
    missing = set(COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{source}: missing column(s) {sorted(missing)}")
    listed = _metadata_heights(metadata)
    flip = listed | {name: int(h) for name, h in (heights or {}).items() if name in listed}
    annotations = []
    for row in frame.itertuples(index=False):
        if row.filename not in listed:
            raise ValueError(f"{source}: {row.annotation_id}: {row.filename} not in metadata")
        try:
            box = parse_geometry(row.geometry, flip[row.filename])
        except ValueError as exc:
            raise ValueError(f"{source}: {row.annotation_id}: {exc}") from exc
        annotations.append(
            Annotation(str(row.annotation_id), row.filename, box, int(row.annotation_class))
        )
    return annotations


def format_annotation(box: Box, height: int) -> str:
    """WKT of a page-0 box (y down) in the real file's form, y flipped to ``height - y``:
    ``POLYGON ((x0 y0, x0 y1, x1 y1, x1 y0, x0 y0))`` with ``y0 < y1``, floats as ``repr``."""
    x0, x1 = float(box.x), float(box.right)
    y0, y1 = float(height - box.bottom), float(height - box.y)
    corners = ((x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0))
    return "POLYGON ((" + ", ".join(f"{x!r} {y!r}" for x, y in corners) + "))"


def annotations_frame(annotations: list[Annotation], heights: dict[str, int]) -> pd.DataFrame:
    """Rows of ``train_annotations.csv`` (columns :data:`COLUMNS`) for ``annotations``."""
    rows = [
        (
            a.annotation_id,
            a.filename,
            format_annotation(a.box, heights[a.filename]),
            a.annotation_class,
        )
        for a in annotations
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))
