"""TissueNet annotation CSVs: WKT squares with a flipped y axis, read and written exactly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import REAL_TISSUENET as REAL

from stages.geometry import Box
from training.data.annotations import (
    COLUMNS,
    Y_FLIPS,
    Annotation,
    annotations_frame,
    format_annotation,
    parse_annotations,
    parse_geometry,
)


@pytest.fixture(scope="module")
def metadata() -> pd.DataFrame:
    return pd.read_csv(REAL / "train_metadata.csv").set_index("filename", drop=False)


def test_every_real_row_is_a_300um_square_inside_its_slide(metadata: pd.DataFrame) -> None:
    annotations = parse_annotations(REAL / "train_annotations.csv", metadata)
    assert len(annotations) == len(pd.read_csv(REAL / "train_annotations.csv"))
    for a in annotations:
        width, height, mpp = metadata.loc[a.filename, ["width", "height", "resolution"]]
        side = 300 / mpp
        assert a.box.w == pytest.approx(side, rel=1e-9), a.annotation_id
        assert a.box.h == pytest.approx(side, rel=1e-9), a.annotation_id
        assert a.box.x >= 0, a.annotation_id
        assert a.box.right <= width, a.annotation_id
        assert a.box.y >= 0, a.annotation_id
        assert a.box.bottom <= height, a.annotation_id
        assert a.annotation_class in (0, 1, 2, 3)


def test_the_y_axis_is_flipped(metadata: pd.DataFrame) -> None:
    # first row: POLYGON ((14771.83 54427.83, 14771.83 55732.17, 16076.17 55732.17, ...)),
    # slide height 71424: the box's top row is 71424 - 55732.17
    first = parse_annotations(REAL / "train_annotations.csv", metadata)[0]
    assert first.annotation_id == "C12_B127_S12_0"
    assert first.box.x == 14771.82998602344
    assert first.box.y == 71424 - 55732.17001397656
    assert first.box.bottom == pytest.approx(71424 - 54427.82998602344, abs=1e-9)


def test_slide_label_is_the_highest_annotation_class(metadata: pd.DataFrame) -> None:
    annotations = parse_annotations(REAL / "train_annotations.csv", metadata)
    labels = pd.read_csv(REAL / "train_labels.csv").set_index("filename")
    highest: dict[str, int] = {}
    for a in annotations:
        highest[a.filename] = max(highest.get(a.filename, 0), a.annotation_class)
    assert highest  # every slide of the subset has boxes
    for filename, cls in highest.items():
        assert labels.loc[filename, ["0", "1", "2", "3"]].to_numpy().argmax() == cls


def test_formatting_reproduces_the_real_rows(metadata: pd.DataFrame) -> None:
    raw = pd.read_csv(REAL / "train_annotations.csv")
    annotations = parse_annotations(REAL / "train_annotations.csv", metadata)
    # the first row is in the file's usual form and comes back character for character
    height = int(metadata.loc[raw.filename[0], "height"])
    assert format_annotation(annotations[0].box, height) == raw.geometry[0]
    # every row (some have another vertex order or float noise) comes back as the same square
    for a, wkt in zip(annotations, raw.geometry, strict=True):
        height = int(metadata.loc[a.filename, "height"])
        again = parse_geometry(format_annotation(a.box, height), height)
        reference = parse_geometry(wkt, height)
        for got, want in zip(
            (again.x, again.y, again.w, again.h),
            (reference.x, reference.y, reference.w, reference.h),
            strict=True,
        ):
            assert got == pytest.approx(want, abs=1e-6)


def test_format_then_parse_is_exact() -> None:
    box = Box(1024.5, 2048.25, 1304.25, 1304.25)
    wkt = format_annotation(box, height=10000)
    assert wkt == (
        "POLYGON ((1024.5 6647.5, 1024.5 7951.75, 2328.75 7951.75, 2328.75 6647.5, 1024.5 6647.5))"
    )
    assert parse_geometry(wkt, 10000) == box


def test_frame_round_trip(tmp_path: Path) -> None:
    annotations = [
        Annotation("a_0", "a.tif", Box(10.0, 20.0, 1200.5, 1200.5), 2),
        Annotation("a_1", "a.tif", Box(3000.25, 40.0, 1200.5, 1200.5), 0),
    ]
    frame = annotations_frame(annotations, {"a.tif": 5000})
    assert list(frame.columns) == list(COLUMNS)
    frame.to_csv(tmp_path / "ann.csv", index=False)
    metadata = pd.DataFrame({"filename": ["a.tif"], "height": [5000]})
    assert parse_annotations(tmp_path / "ann.csv", metadata) == annotations


def test_heights_replace_the_metadata_height_of_the_slides_they_hold() -> None:
    assert Y_FLIPS == ("metadata", "tif")
    metadata = pd.DataFrame({"filename": ["a.tif", "b.tif"], "height": [5000, 7000]})
    boxes = {"a.tif": Box(10.0, 20.0, 1200.5, 1200.5), "b.tif": Box(30.0, 40.0, 1200.5, 1200.5)}
    annotations = [Annotation(f"{n[0]}_0", n, box, 1) for n, box in boxes.items()]
    frame = annotations_frame(annotations, {"a.tif": 5000, "b.tif": 7000})
    assert parse_annotations(frame, metadata, {}) == parse_annotations(frame, metadata)
    # a.tif's TIF is 5120 px high (padded): its squares undone with that height move down 120 px
    a, b = parse_annotations(frame, metadata, {"a.tif": 5120, "c.tif": 9000})
    assert (a.box.x, a.box.y, a.box.w, a.box.h) == (10.0, 140.0, 1200.5, 1200.5)
    assert b == annotations[1]  # not in heights: the metadata height
    with pytest.raises(ValueError, match=r"b\.tif not in metadata"):
        parse_annotations(frame, metadata.iloc[:1], {"b.tif": 7000})


def test_bad_input_names_the_problem(tmp_path: Path) -> None:
    metadata = pd.DataFrame({"filename": ["a.tif"], "height": [100]})
    path = tmp_path / "ann.csv"
    pd.DataFrame([("x_0", "b.tif", "POLYGON ((0 0, 0 1, 1 1, 1 0, 0 0))", 1)],
                 columns=list(COLUMNS)).to_csv(path, index=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"x_0: b\.tif not in metadata"):
        parse_annotations(path, metadata)
    pd.DataFrame([("x_0", "a.tif", "POLYGON ((0 0, 0 1", 1)], columns=list(COLUMNS)).to_csv(
        path, index=False
    )
    with pytest.raises(ValueError, match="x_0: not a WKT geometry"):
        parse_annotations(path, metadata)
    pd.DataFrame([("x_0", "a.tif", "POINT (1 2)", 1)], columns=list(COLUMNS)).to_csv(
        path, index=False
    )
    with pytest.raises(ValueError, match="expected a POLYGON, got Point"):
        parse_annotations(path, metadata)
    pd.DataFrame({"filename": ["a.tif"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="missing column"):
        parse_annotations(path, metadata)
