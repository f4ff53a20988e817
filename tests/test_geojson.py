"""QuPath GeoJSON: valid, inside the slide, classified, and at the right page-0 place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.budget import RunBudget
from stages.cascade import Cascade
from stages.classifier import read_patches
from stages.config import load_assets
from stages.geojson import GRADES, slide_features, write_geojson
from stages.geometry import Box
from stages.slide import Slide
from training.data.annotations import parse_annotations
from training.data.synthetic import SynthConfig, generate_dataset, sample_specs
from training.evaluate.qupath import export_run

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


@pytest.mark.slow
def test_hotspots_and_annotations_land_where_the_slide_has_them(
    tmp_path: Path, assets: Path
) -> None:
    config = SynthConfig(size_range=(7000, 8000), class_mix=(0.0, 0.0, 1.0, 0.0))
    spec = sample_specs(1, 71, config)[0]
    generate_dataset(tmp_path / "data", 1, seed=71, split="train", config=config)
    path = tmp_path / "data" / spec.filename
    cascade = Cascade(load_assets(assets, torch.device("cpu")))
    budget = RunBudget(3600, 1, cascade.config.budget)
    result = cascade.grade_slide(path, None, budget.start_slide(), budget.costs)
    result.save(tmp_path / "run")
    export_run(
        tmp_path / "run",
        tmp_path / "data" / "train_annotations.csv",
        tmp_path / "data" / "train_metadata.csv",
    )
    collection = json.loads((tmp_path / "run" / f"{path.stem}.geojson").read_text())
    features = collection["features"]
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
    truth = parse_annotations(
        tmp_path / "data" / "train_annotations.csv", tmp_path / "data" / "train_metadata.csv"
    )
    assert len(squares) == len(truth) == len(lesions) > 0
    for feature, lesion in zip(squares, lesions, strict=True):
        xy = np.array(rings(feature)[0])
        centre = (xy[:, 0].min() + xy[:, 0].max()) / 2, (xy[:, 1].min() + xy[:, 1].max()) / 2
        assert centre == pytest.approx((lesion.cx, lesion.cy), abs=1.0)
        assert feature["properties"]["name"] == f"Annotation: {GRADES[lesion.grade]}"
