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
slide, so every ring is closed and inside ``[0, width] × [0, height]``. Every polygon is valid
as written (shapely / JTS ``isValid``, so that QuPath's areas and boolean operations hold): an
outline is made valid in the coordinates that are written, snapped to :data:`GRID`, which
``geojson``'s rounding (6 decimals) leaves exactly as it is, and :func:`write_geojson` reads the
text back, repairs a polygon still invalid and logs it. Rounding the page-0 floats instead broke
outlines: a one-cell diagonal spur traced by ``CHAIN_APPROX_SIMPLE`` leaves a vertex on an edge
that is a hair off it in floats, which ``buffer(0)`` kept as a valid sliver and the 6-decimal
rounding then turned into a self-intersection.

For QuPath's importer (``qupath-core``, ``io/QuPathTypeAdapters.java``) every feature also has
an ``id``, a UUID stable for the same slide and object (uuid5 of the filename, the kind and the
rank or level: :func:`feature_id`), so that importing a file again replaces its objects instead
of duplicating them; the predicted objects (tissue, heatmap contours, hotspots) are written with
``properties.isLocked`` true so that they cannot be moved by accident, the ground-truth
annotations with false. JSON has no NaN: a measurement that is not finite is left out of the
file and logged with the slide and the value. Files are written as UTF-8.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import geojson
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape

from stages.geometry import Box

if TYPE_CHECKING:
    from stages.result import SlideResult

log = logging.getLogger(__name__)

GRADES = ("benign", "low-grade", "high-grade", "invasive")
#: RGB colour per grade (QuPath's class colours).
GRADE_COLOURS = ((60, 160, 60), (235, 200, 0), (250, 120, 0), (210, 30, 30))
NOT_GRADED = (150, 150, 150)
TISSUE_COLOUR = (90, 90, 200)
#: Heatmap probability levels drawn as contours, by default.
DEFAULT_LEVELS = (0.5,)
#: The namespace of the features' uuid5 ids.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "tissuenet-cascade/geojson")
#: The grid (page-0 px) outlines are snapped to: a power of two of 6 decimals, so exact in
#: binary and left as it is by ``geojson``'s rounding to 6 decimals (1/128 would be cut).
GRID = 2.0**-6


def feature_id(filename: str, kind: str, key: str) -> str:
    """The UUID of one object of a slide: the same ``filename``, ``kind`` (``tissue``,
    ``heatmap``, ``hotspot``, ``annotation``) and ``key`` (its rank, level or index) give the
    same id in every file written."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{filename}\n{kind}\n{key}"))


def _finite(measurements: dict[str, float], filename: str, name: str) -> dict[str, float]:
    """``measurements`` as floats without the values that are not finite (JSON has no NaN),
    each one left out logged with the slide and the value."""
    kept = {}
    for key, value in measurements.items():
        value = float(value)
        if math.isfinite(value):
            kept[key] = value
        else:
            slide = filename or "(slide)"
            log.warning(
                "%s: %s: measurement %r is %s, left out of the GeoJSON", slide, name, key, value
            )
    return kept


def _feature(
    shape: Polygon,
    name: str,
    colour: tuple[int, int, int],
    measurements: dict[str, float],
    id_: str,
    locked: bool,
    filename: str = "",
) -> geojson.Feature:
    return geojson.Feature(
        id=id_,
        geometry=mapping(shape),
        properties={
            "objectType": "annotation",
            "name": name,
            "classification": {"name": name, "color": list(colour)},
            "isLocked": locked,
            "measurements": _finite(measurements, filename, name),
        },
    )


def as_written(shape: shapely.Geometry, frame: Polygon | None = None) -> list[Polygon]:
    """The polygons (page-0 px) of ``shape`` made valid as they are written: repaired (rings
    unioned, holes taken out: ``make_valid``'s ``structure`` method, which keeps no lines),
    clipped to ``frame`` if given, then snapped to :data:`GRID` (snap-rounding, whose output is
    valid), the empty ones dropped."""
    shape = shapely.make_valid(shape, method="structure", keep_collapsed=False)
    if frame is not None:
        shape = shape.intersection(frame)  # before snapping: clipping makes new vertices
    snapped = shapely.set_precision(shape, GRID)
    return [p for p in shapely.get_parts(snapped) if isinstance(p, Polygon) and p.area > 0]


def _outlines(mask: np.ndarray, scale: tuple[float, float], frame: Polygon) -> list[Polygon]:
    """Polygons (page-0 px) of the regions of ``(H, W)`` bool ``mask`` whose pixels are
    ``scale`` page-0 px: rings through the centres of their boundary pixels (a region one pixel
    wide is drawn as its pixels' square), holes kept, clipped to ``frame``, valid as written
    (:func:`as_written`)."""
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
    for i, (ring,) in shells.items():  # a ring may touch itself or its holes: as_written
        polygons.extend(as_written(Polygon(ring, holes.get(i, [])), frame))
    return polygons


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
    filename: str = "",
) -> geojson.FeatureCollection:
    """The FeatureCollection of one slide (module doc); ``filename`` names the slide in the
    features' ids and in the log.

    ``hotspots``: ``(box, detector score, heatmap class probabilities)`` best first, page-0
    boxes; ``grades``: ``(k, 4)`` classifier probabilities of the first k; ``size``: page-0
    ``(width, height)``; ``heatmap``: ``(C, H, W)`` class probabilities, ``heatmap_scale`` page-0
    px per cell; ``tissue``: ``(h, w)`` bool, ``tissue_scale`` page-0 px per pixel;
    ``annotations``: ``(page-0 box, grade)`` pairs.
    """
    frame = box(0, 0, size[0], size[1])
    features = []

    def add(shape: Polygon, name: str, colour: tuple, values: dict, kind: str, key: str) -> None:
        locked = kind != "annotation"  # predictions are locked, the ground truth is not
        id_ = feature_id(filename, kind, key)
        features.append(_feature(shape, name, colour, values, id_, locked, filename))

    if tissue is not None:
        for i, shape in enumerate(_outlines(tissue, tissue_scale, frame)):
            add(shape, "Tissue", TISSUE_COLOUR, {"area_px": shape.area}, "tissue", str(i))
    if heatmap is not None:
        for grade in range(1, heatmap.shape[0]):
            for level in levels:
                name = f"Heatmap: {GRADES[grade]} >= {level:g}"
                shapes = _outlines(heatmap[grade] >= level, heatmap_scale, frame)  # NaN: False
                for i, shape in enumerate(shapes):
                    key = f"{grade}/{level:g}/{i}"
                    add(shape, name, GRADE_COLOURS[grade], {"level": level}, "heatmap", key)
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
        add(shape.intersection(frame), name, colour, measurements, "hotspot", str(rank + 1))
    for i, (square, grade) in enumerate(annotations):
        shape = box(square.x, square.y, square.right, square.bottom).intersection(frame)
        if not shape.is_empty:
            name = f"Annotation: {GRADES[grade]}"
            add(shape, name, GRADE_COLOURS[grade], {}, "annotation", str(i))
    return geojson.FeatureCollection(features)


def invalid_features(collection: dict) -> list[tuple[int, str]]:
    """``(index, shapely's reason)`` of each feature of the GeoJSON ``collection`` (as read
    back from its text) whose polygon or multipolygon is not valid."""
    invalid = []
    for i, feature in enumerate(collection["features"]):
        geometry = feature.get("geometry")
        if geometry and geometry["type"] in ("Polygon", "MultiPolygon"):
            reason = shapely.is_valid_reason(shape(geometry))
            if reason != "Valid Geometry":
                invalid.append((i, reason))
    return invalid


def write_geojson(collection: geojson.FeatureCollection, path: Path) -> Path:
    """Write ``collection`` to ``path`` as UTF-8 (validated first: ValueError naming the
    problems; JSON without NaN, which :func:`slide_features` leaves out). The text is read back
    and a polygon invalid in it is replaced by its :func:`as_written` repair (a feature left
    with none is dropped), each one logged with the file, the feature and shapely's reason."""
    if not collection.is_valid:
        raise ValueError(f"invalid GeoJSON for {path.name}: {collection.errors()}")
    text = geojson.dumps(collection, ensure_ascii=False)
    written = json.loads(text)
    invalid = invalid_features(written)
    for i, reason in invalid:
        feature = written["features"][i]
        name = feature.get("properties", {}).get("name")
        log.warning("%s: feature %d (%s) invalid as written, repaired: %s", path, i, name, reason)
        parts = as_written(shape(feature["geometry"]))
        feature["geometry"] = mapping(MultiPolygon(parts)) if parts else None
    if invalid:
        written["features"] = [f for f in written["features"] if f["geometry"] is not None]
        text = json.dumps(written, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
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
        filename=result.filename,
    )
