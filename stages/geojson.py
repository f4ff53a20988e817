"""A slide's result as GeoJSON for QuPath: hotspots, heatmap contours, tissue, annotations.

Coordinates are page-0 pixels, x right, y down (:mod:`stages.geometry`), which is what QuPath
expects of a GeoJSON file dropped on the slide. Every feature follows QuPath's conventions:
``properties.objectType`` (``"annotation"``), ``properties.classification`` (``name`` and RGB
``color``; QuPath colours its class by it) and ``properties.measurements`` (name → number).

* **Hotspots**: one square per hotspot (the stage-2 patch), classified ``Hotspot: <grade>`` by
  the classifier's most probable grade when it was graded, ``Hotspot: not graded`` when the
  budget left it unexpanded; measurements: rank, detector score, heatmap class probabilities and
  the classifier's probabilities.
* **Heatmap contours**: for each lesion grade c ≥ 1 and level, the outline of the heatmap cells
  whose probability of grade c is at least that level (``Heatmap: <grade> ≥ <level>``).
* **Tissue**: the tissue mask's outline (``Tissue``).
* **Annotations** (given by the caller: the runtime knows none): ``Annotation: <grade>``.

Geometry is built with shapely and serialised with ``geojson``; polygons are clipped to the
slide, so every ring is closed and inside ``[0, width] × [0, height]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import geojson
import numpy as np
from shapely.geometry import Polygon, box, mapping

from stages.geometry import Box

if TYPE_CHECKING:
    from stages.cascade import SlideResult

GRADES = ("benign", "low-grade", "high-grade", "invasive")
#: RGB colour per grade (QuPath's class colours).
GRADE_COLOURS = ((60, 160, 60), (235, 200, 0), (250, 120, 0), (210, 30, 30))
NOT_GRADED = (150, 150, 150)
TISSUE_COLOUR = (90, 90, 200)
#: Heatmap probability levels drawn as contours, by default.
DEFAULT_LEVELS = (0.5,)


def _feature(
    shape: Polygon, name: str, colour: tuple[int, int, int], measurements: dict[str, float]
) -> geojson.Feature:
    return geojson.Feature(
        geometry=mapping(shape),
        properties={
            "objectType": "annotation",
            "name": name,
            "classification": {"name": name, "color": list(colour)},
            "measurements": {k: float(v) for k, v in measurements.items()},
        },
    )


def _outlines(mask: np.ndarray, scale: tuple[float, float], frame: Polygon) -> list[Polygon]:
    """Polygons (page-0 px) of the regions of ``(H, W)`` bool ``mask`` whose pixels are
    ``scale`` page-0 px: rings through the centres of their boundary pixels (a region one pixel
    wide is drawn as its pixels' square), holes kept, clipped to ``frame``."""
    if not mask.any():
        return []
    contours, hierarchy = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    sx, sy = scale
    shells: dict[int, list] = {}
    holes: dict[int, list] = {}
    for i, contour in enumerate(contours):
        points = contour.reshape(-1, 2).astype(np.float64)
        if len(points) < 3:  # a line or a point: a pixel-wide region, drawn as its cells
            (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
            points = np.array([(x0, y0), (x1 + 1, y0), (x1 + 1, y1 + 1), (x0, y1 + 1)]) - 0.5
        ring = [((x + 0.5) * sx, (y + 0.5) * sy) for x, y in points]
        parent = hierarchy[0][i][3]
        (holes.setdefault(parent, []) if parent >= 0 else shells.setdefault(i, [])).append(ring)
    polygons = []
    for i, (ring,) in shells.items():
        shape = Polygon(ring, holes.get(i, [])).buffer(0)  # buffer(0) repairs self-touching
        shape = shape.intersection(frame)
        if not shape.is_empty:
            polygons.extend(getattr(shape, "geoms", [shape]))
    return [p for p in polygons if isinstance(p, Polygon) and p.area > 0]


def slide_features(
    hotspots: Sequence[tuple[Box, float, Sequence[float]]],
    grades: np.ndarray,
    size: tuple[int, int],
    heatmap: np.ndarray | None = None,
    heatmap_scale: tuple[float, float] = (1.0, 1.0),
    tissue: np.ndarray | None = None,
    tissue_scale: tuple[float, float] = (1.0, 1.0),
    levels: Sequence[float] = DEFAULT_LEVELS,
    annotations: Sequence[tuple[Box, int]] = (),
) -> geojson.FeatureCollection:
    """The FeatureCollection of one slide (module doc).

    ``hotspots``: ``(box, detector score, heatmap class probabilities)`` best first, page-0
    boxes; ``grades``: ``(k, 4)`` classifier probabilities of the first k; ``size``: page-0
    ``(width, height)``; ``heatmap``: ``(C, H, W)`` class probabilities, ``heatmap_scale`` page-0
    px per cell; ``tissue``: ``(h, w)`` bool, ``tissue_scale`` page-0 px per pixel;
    ``annotations``: ``(page-0 box, grade)`` pairs.
    """
    frame = box(0, 0, size[0], size[1])
    features = []
    if tissue is not None:
        for shape in _outlines(tissue, tissue_scale, frame):
            features.append(_feature(shape, "Tissue", TISSUE_COLOUR, {"area_px": shape.area}))
    if heatmap is not None:
        for grade in range(1, heatmap.shape[0]):
            for level in levels:
                name = f"Heatmap: {GRADES[grade]} >= {level:g}"
                for shape in _outlines(heatmap[grade] >= level, heatmap_scale, frame):
                    features.append(_feature(shape, name, GRADE_COLOURS[grade], {"level": level}))
    for rank, (square, score, heat) in enumerate(hotspots):
        shape = box(square.x, square.y, square.right, square.bottom)
        measurements = {"rank": rank + 1, "score": score}
        measurements |= {f"heatmap p{c}": p for c, p in enumerate(heat)}
        if rank < len(grades):
            grade = int(np.argmax(grades[rank]))
            name, colour = f"Hotspot: {GRADES[grade]}", GRADE_COLOURS[grade]
            measurements |= {f"classifier p{c}": p for c, p in enumerate(grades[rank])}
            measurements["graded"] = 1
        else:
            name, colour = "Hotspot: not graded", NOT_GRADED
            measurements["graded"] = 0
        features.append(_feature(shape.intersection(frame), name, colour, measurements))
    for square, grade in annotations:
        shape = box(square.x, square.y, square.right, square.bottom).intersection(frame)
        if not shape.is_empty:
            features.append(
                _feature(shape, f"Annotation: {GRADES[grade]}", GRADE_COLOURS[grade], {})
            )
    return geojson.FeatureCollection(features)


def write_geojson(collection: geojson.FeatureCollection, path: Path) -> Path:
    """Write ``collection`` to ``path`` (validated first: ValueError naming the problems)."""
    if not collection.is_valid:
        raise ValueError(f"invalid GeoJSON for {path.name}: {collection.errors()}")
    path.write_text(geojson.dumps(collection) + "\n")
    return path


def result_features(
    result: SlideResult,
    levels: Sequence[float] = DEFAULT_LEVELS,
    annotations: Sequence[tuple[Box, int]] = (),
) -> geojson.FeatureCollection:
    """:func:`slide_features` of a cascade result (its ``size`` must be known); heatmap contours
    cover only the tissue cells the detector saw."""
    if min(result.size) <= 0:
        raise ValueError(f"{result.filename}: the slide's size is unknown")
    heatmap = result.heatmap
    return slide_features(
        [(h.box, h.score, h.heat_probs) for h in result.hotspots],
        result.grades,
        result.size,
        heatmap=None if heatmap is None else heatmap.probs * (heatmap.tissue & heatmap.visited),
        heatmap_scale=(1.0, 1.0) if heatmap is None else heatmap.scale,
        tissue=result.tissue,
        tissue_scale=result.tissue_scale,
        levels=levels,
        annotations=annotations,
    )
