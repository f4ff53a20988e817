"""QuPath GeoJSON: valid, inside the slide, classified, and at the right page-0 place."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from pathlib import Path

import geojson
import numpy as np
import pytest
import shapely
import torch
from shapely.geometry import Polygon, shape

from stages.budget import RunBudget
from stages.cascade import Cascade
from stages.classifier import read_patches
from stages.config import load_assets
from stages.detector import Heatmap
from stages.geojson import GRADES, GRID, feature_id, slide_features, write_geojson
from stages.geometry import Box
from stages.hotspots import Hotspot
from stages.result import SlideResult
from stages.slide import Slide
from training.data.annotations import parse_annotations
from training.data.synthetic import SynthConfig, sample_specs
from training.inspect.qupath import check_run, export_run

SIZE = (4000, 3000)


def example() -> dict:
    heatmap = np.zeros((4, 30, 40), np.float32)
    heatmap[0] = 1.0
    heatmap[:, 5:12, 8:20] = np.array([0.1, 0.2, 0.6, 0.1])[:, None, None]  # a grade-2 blob
    heatmap[:, 20, 30] = (0.2, 0.7, 0.05, 0.05)  # one cell of grade 1
    tissue = np.zeros((60, 80), bool)
    tissue[5:50, 5:70] = True
    tissue[20:30, 20:30] = False  # a hole
    hotspots = [
        (Box(1200.5, 700.25, 58.0, 58.0), 0.9, (0.1, 0.2, 0.6, 0.1)),
        (Box(3980.0, 2990.0, 58.0, 58.0), 0.5, (0.5, 0.3, 0.1, 0.1)),  # crosses the corner
        (Box(100.0, 100.0, 58.0, 58.0), 0.2, (0.8, 0.1, 0.05, 0.05)),
    ]
    grades = np.array([[0.05, 0.15, 0.7, 0.1], [0.6, 0.3, 0.05, 0.05]], np.float32)
    return {
        "hotspots": hotspots,
        "grades": grades,
        "size": SIZE,
        "heatmap": heatmap,
        "heatmap_scale": (100.0, 100.0),
        "tissue": tissue,
        "tissue_scale": (50.0, 50.0),
        "annotations": [(Box(1000.0, 600.0, 400.0, 300.0), 2)],
    }


def rings(feature: dict) -> list[list[list[float]]]:
    geometry = feature["geometry"]
    assert geometry["type"] == "Polygon"
    return geometry["coordinates"]


def test_every_feature_is_a_closed_classified_polygon_inside_the_slide(tmp_path: Path) -> None:
    collection = slide_features(**example())
    path = write_geojson(collection, tmp_path / "slide.geojson")
    loaded = json.loads(path.read_text())
    assert loaded["type"] == "FeatureCollection"
    names = set()
    for feature in loaded["features"]:
        properties = feature["properties"]
        assert properties["objectType"] == "annotation"
        classification = properties["classification"]
        assert classification["name"] and len(classification["color"]) == 3
        assert isinstance(properties["measurements"], dict)
        names.add(classification["name"])
        for ring in rings(feature):
            assert len(ring) >= 4 and ring[0] == ring[-1]  # closed
            xy = np.array(ring)
            assert (xy >= 0).all() and (xy[:, 0] <= SIZE[0]).all() and (xy[:, 1] <= SIZE[1]).all()
    assert names == {
        "Tissue",
        "Heatmap: high-grade >= 0.5",
        "Heatmap: low-grade >= 0.5",
        "Hotspot: high-grade",
        "Hotspot: benign",
        "Hotspot: not graded",
        "Annotation: high-grade",
    }
    tissue = next(f for f in loaded["features"] if f["properties"]["name"] == "Tissue")
    assert len(rings(tissue)) == 2  # the outline and its hole


def test_hotspot_boxes_round_trip_exactly(tmp_path: Path) -> None:
    parts = example()
    path = write_geojson(slide_features(**parts), tmp_path / "slide.geojson")
    features = json.loads(path.read_text())["features"]
    features = [f for f in features if f["properties"]["name"].startswith("Hotspot")]
    assert [f["properties"]["measurements"]["rank"] for f in features] == [1, 2, 3]
    first = np.array(rings(features[0])[0])
    square = parts["hotspots"][0][0]
    assert (first[:, 0].min(), first[:, 1].min(), first[:, 0].max(), first[:, 1].max()) == (
        square.x,
        square.y,
        square.right,
        square.bottom,
    )
    measurements = features[0]["properties"]["measurements"]
    assert measurements["graded"] == 1 and measurements["classifier p2"] == pytest.approx(0.7)
    assert measurements["heatmap p2"] == pytest.approx(0.6)
    corner = np.array(rings(features[1])[0])
    assert corner[:, 0].max() == SIZE[0] and corner[:, 1].max() == SIZE[1]  # clipped
    assert features[2]["properties"]["measurements"]["graded"] == 0


def no_nan(text: str) -> dict:
    """``text`` parsed as strict JSON: NaN and infinities raise."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in the GeoJSON")

    return json.loads(text, parse_constant=refuse)


def test_ids_are_stable_unique_uuids_and_predictions_are_locked(tmp_path: Path) -> None:
    first = write_geojson(slide_features(**example(), filename="a.tif"), tmp_path / "1.geojson")
    again = write_geojson(slide_features(**example(), filename="a.tif"), tmp_path / "2.geojson")
    other = write_geojson(slide_features(**example(), filename="b.tif"), tmp_path / "3.geojson")
    features = no_nan(first.read_text(encoding="utf-8"))["features"]
    ids = [f["id"] for f in features]
    assert all(uuid.UUID(i).version == 5 for i in ids)
    assert len(set(ids)) == len(ids)  # one per object
    # the same slide and objects: the same ids, so that QuPath recognises a re-import
    assert [f["id"] for f in no_nan(again.read_text(encoding="utf-8"))["features"]] == ids
    assert first.read_bytes() == again.read_bytes()
    # another slide: other ids
    assert not set(ids) & {f["id"] for f in no_nan(other.read_text(encoding="utf-8"))["features"]}
    hotspots = [f for f in features if f["properties"]["name"].startswith("Hotspot")]
    assert [f["id"] for f in hotspots] == [
        feature_id("a.tif", "hotspot", str(r)) for r in (1, 2, 3)
    ]
    for feature in features:  # predictions locked; the ground truth can be edited
        annotation = feature["properties"]["name"].startswith("Annotation")
        assert feature["properties"]["isLocked"] is (not annotation), feature["properties"]
    assert sum(f["properties"]["name"].startswith("Annotation") for f in features) == 1


def test_a_heatmap_holding_nan_gives_a_nan_free_file_and_a_logged_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parts = example()
    parts["heatmap"][:, 8, 10] = np.nan  # a cell inside the grade-2 blob
    box_, _, heat = parts["hotspots"][0]
    parts["hotspots"][0] = (box_, float("nan"), (heat[0], heat[1], float("nan"), heat[3]))
    with caplog.at_level("WARNING", "stages.geojson"):
        path = write_geojson(slide_features(**parts, filename="nan.tif"), tmp_path / "nan.geojson")
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    features = no_nan(text)["features"]
    first = next(f for f in features if f["properties"]["measurements"].get("rank") == 1)
    measurements = first["properties"]["measurements"]
    assert "score" not in measurements and "heatmap p2" not in measurements  # left out
    assert measurements["heatmap p1"] == pytest.approx(0.2)  # the finite ones are kept
    assert "nan.tif: Hotspot: high-grade: measurement 'score' is nan" in caplog.text
    assert "nan.tif: Hotspot: high-grade: measurement 'heatmap p2' is nan" in caplog.text
    # the NaN cell is below every level: the grade-2 contour is drawn around it
    names = {f["properties"]["name"] for f in features}
    assert "Heatmap: high-grade >= 0.5" in names


def test_a_saved_result_whose_heatmap_holds_nan_exports_nan_free(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run's saved slide, its heatmap NaN in a cell under a hotspot, through
    ``python -m training.inspect.qupath``'s export."""
    probs = np.zeros((4, 20, 30), np.float32)
    probs[0] = 1.0
    probs[:, 5:10, 5:15] = np.array([0.2, 0.1, 0.6, 0.1])[:, None, None]
    probs[:, 7, 7] = np.nan
    tissue = np.zeros((20, 30), bool)
    tissue[2:18, 2:28] = True
    heatmap = Heatmap(probs, tissue, np.ones_like(tissue), (100.0, 100.0), 4, True, 6)
    hotspots = [Hotspot(Box(720.0, 720.0, 60.0, 60.0), 0.8, tuple(probs[:, 7, 7].tolist()), 0)]
    result = SlideResult(
        "nan.tif", 2, (0.05, 0.1, 0.8, 0.05), "patches", hotspots,
        np.array([[0.1, 0.1, 0.7, 0.1]], np.float32), heatmap, tissue, (100.0, 100.0),
        {"slide": 0.9}, size=(3000, 2000),
    )  # fmt: skip
    result.save(tmp_path)
    with caplog.at_level("WARNING", "stages.geojson"):
        (path,) = export_run(tmp_path)
    features = no_nan(path.read_text(encoding="utf-8"))["features"]
    (hotspot,) = [f for f in features if f["properties"]["name"].startswith("Hotspot")]
    assert not {f"heatmap p{c}" for c in range(4)} & set(hotspot["properties"]["measurements"])
    assert "nan.tif: Hotspot: high-grade: measurement 'heatmap p0' is nan" in caplog.text
    assert any(f["properties"]["name"] == "Heatmap: high-grade >= 0.5" for f in features)


def test_files_are_utf8(tmp_path: Path) -> None:
    collection = slide_features(**example(), filename="µ-slide é.tif")
    collection["features"][0]["properties"]["name"] = "Tissue — µm"
    path = write_geojson(collection, tmp_path / "slide.geojson")
    assert "Tissue — µm".encode() in path.read_bytes()
    assert no_nan(path.read_bytes().decode("utf-8"))["features"][0]["properties"]["name"] == (
        "Tissue — µm"
    )


@pytest.mark.slow
def test_hotspots_and_annotations_land_where_the_slide_has_them(
    tmp_path: Path, assets: Path, generated: Callable[..., Path]
) -> None:
    config = SynthConfig(size_range=(7000, 8000), class_mix=(0.0, 0.0, 1.0, 0.0))
    spec = sample_specs(1, 71, config)[0]
    data = generated(1, 71, "train", config)
    path = data / spec.filename
    cascade = Cascade(load_assets(assets, torch.device("cpu")))
    budget = RunBudget(3600, 1, cascade.config.budget)
    result = cascade.grade_slide(path, None, budget.start_slide(), budget.costs)
    result.save(tmp_path / "run")
    export_run(
        tmp_path / "run",
        data / "train_annotations.csv",
        data / "train_metadata.csv",
    )
    collection = no_nan((tmp_path / "run" / f"{path.stem}.geojson").read_text(encoding="utf-8"))
    features = collection["features"]
    assert len({f["id"] for f in features}) == len(features)
    for feature in features:
        annotation = feature["properties"]["name"].startswith("Annotation")
        assert feature["properties"]["isLocked"] is (not annotation)
    # a graded hotspot's square holds exactly the pixels the classifier graded
    hotspot = next(f for f in features if f["properties"]["measurements"].get("graded") == 1)
    xy = np.array(rings(hotspot)[0])
    page = result.pages["classifier"]
    with Slide(path) as slide:
        square = Box(xy[:, 0].min(), xy[:, 1].min(), np.ptp(xy[:, 0]), np.ptp(xy[:, 1]))
        graded = read_patches(slide, [result.hotspots[0].box.center], page, 128)[0]
        np.testing.assert_array_equal(slide.read_region(square, page), graded)
    # each annotated square is the generator's lesion, with the CSV's y axis flipped back
    squares = [f for f in features if f["properties"]["name"].startswith("Annotation")]
    lesions = [lesion for lesion in spec.lesions if lesion.annotated]
    truth = parse_annotations(data / "train_annotations.csv", data / "train_metadata.csv")
    assert len(squares) == len(truth) == len(lesions) > 0
    for feature, lesion in zip(squares, lesions, strict=True):
        xy = np.array(rings(feature)[0])
        centre = (xy[:, 0].min() + xy[:, 0].max()) / 2, (xy[:, 1].min() + xy[:, 1].max()) / 2
        assert centre == pytest.approx((lesion.cx, lesion.cy), abs=1.0)
        assert feature["properties"]["name"] == f"Annotation: {GRADES[lesion.grade]}"


#: Page-0 px per heatmap cell as a slide gives it: a 4000 px page-0 width over a 37 px page,
#: strided by 2 (not a binary fraction, so the cell centres are not exact in floats).
CELL = 4000 / 37 * 2


def contours_read_back(
    probs: np.ndarray,
    scale: tuple[float, float],
    tmp_path: Path,
    levels: tuple[float, ...] = (0.5,),
    size: tuple[int, int] | None = None,
) -> list[shapely.Geometry]:
    """The heatmap contours of ``(H, W)`` grade-1 probabilities ``probs`` whose cells are
    ``scale`` page-0 px (slide ``size``, default the whole map), as read back from the file
    written."""
    h, w = probs.shape
    size = size or (math.ceil(w * scale[0]), math.ceil(h * scale[1]))
    heatmap = np.stack([1 - probs, probs]).astype(np.float32)
    collection = slide_features(
        [], np.zeros((0, 4)), size, heatmap=heatmap, heatmap_scale=scale, levels=levels
    )
    path = write_geojson(collection, tmp_path / "contours.geojson")
    return [shape(f["geometry"]) for f in no_nan(path.read_text(encoding="utf-8"))["features"]]


def reasons(shapes: list[shapely.Geometry]) -> list[str]:
    return [shapely.is_valid_reason(s) for s in shapes]


def test_a_one_cell_diagonal_spur_is_left_out_and_the_outline_is_valid_as_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Cells as (x, y). The spur (2, 0)–(1, 1)–(0, 2) runs along the outline's diagonal edge:
    the vertex at (1, 1) was a hair off that edge in floats, a sliver that the 6-decimal rounding
    crossed."""
    mask = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 0]], np.float32)
    with caplog.at_level("WARNING", "stages.geojson"):
        (written,) = contours_read_back(mask, (CELL, CELL), tmp_path)
    assert reasons([written]) == ["Valid Geometry"]
    centres = np.array([(0.5, 2.5), (1.5, 2.5), (1.5, 1.5)]) * CELL  # the cells (0, 2), (1, 2)...
    assert written.equals(Polygon(np.round(centres / GRID) * GRID))  # ...and (1, 1); on the grid
    assert "invalid as written" not in caplog.text  # valid as built, not repaired at writing


def test_a_hole_touching_its_shell_is_valid_as_written(tmp_path: Path) -> None:
    mask = np.array(
        [
            [0, 0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 1, 0, 0],
            [0, 0, 1, 0, 1, 1, 0],  # the hole at (3, 2) runs along the shell's
            [0, 0, 1, 1, 0, 1, 1],  # edge (4, 0)–(2, 2) and touches the hole at (4, 3)
            [0, 0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 1, 0, 0],
        ],
        np.float32,
    )
    (written,) = contours_read_back(mask, (CELL, CELL), tmp_path)
    assert reasons([written]) == ["Valid Geometry"]
    assert written.area / CELL**2 == pytest.approx(6.0, rel=1e-4)  # the cell centres' outline


def test_holes_touching_each_other_are_valid_as_written(tmp_path: Path) -> None:
    mask = np.array(
        [
            [0, 0, 0, 0, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 1, 1, 0],
            [0, 1, 1, 0, 1, 1, 0, 0],  # the big hole's edge (3, 2)–(5, 4) runs through
            [0, 1, 1, 0, 0, 1, 1, 0],  # the corner (4, 3) of the hole at (4, 2)
            [0, 1, 1, 0, 1, 1, 0, 0],
            [0, 1, 1, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0, 0, 0],
        ],
        np.float32,
    )
    (written,) = contours_read_back(mask, (234.8, 234.8), tmp_path)
    assert reasons([written]) == ["Valid Geometry"]
    assert written.area / 234.8**2 == pytest.approx(13.0, rel=1e-4)


def test_random_heatmaps_give_valid_polygons_as_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Small random probability maps (touching, nearly touching and one-cell regions, holes) at
    slide-like scales, cut by the slide's edge, outlined at three levels."""
    rng = np.random.default_rng(30)
    shapes = []
    with caplog.at_level("WARNING", "stages.geojson"):
        for _ in range(100):
            probs = rng.random(tuple(rng.integers(3, 12, 2)))
            page0 = rng.integers(5000, 60000, 2)
            scale = tuple(page0 / (page0 // rng.choice([16, 32, 64])) * rng.choice([2, 4, 8]))
            size = tuple(
                int(n * s * rng.uniform(0.9, 1.0))
                for n, s in zip(probs.shape[::-1], scale, strict=True)
            )
            shapes += contours_read_back(probs, scale, tmp_path, (0.3, 0.5, 0.8), size)
    assert len(shapes) > 1000
    assert [r for r in reasons(shapes) if r != "Valid Geometry"] == []
    assert min(s.area for s in shapes) > 0
    assert "invalid as written" not in caplog.text  # valid as built, not repaired at writing


def test_a_polygon_invalid_as_written_is_repaired_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bowtie = geojson.Feature(geometry=geojson.Polygon([[(0, 0), (2, 2), (2, 0), (0, 2), (0, 0)]]))
    flat = geojson.Feature(geometry=geojson.Polygon([[(0, 0), (1, 1), (2, 2), (0, 0)]]))
    with caplog.at_level("WARNING", "stages.geojson"):
        path = write_geojson(geojson.FeatureCollection([bowtie, flat]), tmp_path / "bad.geojson")
    (feature,) = no_nan(path.read_text(encoding="utf-8"))["features"]  # the flat one dropped
    written = shape(feature["geometry"])
    assert written.equals(
        Polygon([(0, 0), (1, 1), (0, 2)]).union(Polygon([(2, 0), (1, 1), (2, 2)]))
    )
    assert "bad.geojson: feature 0 (None) invalid as written, repaired: Self-intersection[1 1]" in (
        caplog.text
    )
    assert "feature 1 (None) invalid as written" in caplog.text


def test_check_run_counts_what_it_reads_back(tmp_path: Path) -> None:
    collection = slide_features(**example())
    write_geojson(collection, tmp_path / "good.geojson")
    bowtie = geojson.Feature(geometry=geojson.Polygon([[(0, 0), (2, 2), (2, 0), (0, 2), (0, 0)]]))
    (tmp_path / "bad.geojson").write_text(geojson.dumps(geojson.FeatureCollection([bowtie])))
    n = len(collection["features"])
    assert check_run(tmp_path) == (2, n + 1, n + 1, 1)
