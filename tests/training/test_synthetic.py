"""Synthetic slides: the competition's file formats, determinism, labels, layouts, sparse canvases.

Slides here are small (1–4k px) so that the module runs in seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from helpers import REAL_TISSUENET as REAL
from helpers import tiff_tags

from stages.geometry import Box
from stages.slide import Slide
from training.data.annotations import parse_annotations
from training.data.synthetic import (
    ANNOTATION_UM,
    BALANCED,
    LESION_TISSUE,
    Artefact,
    Lesion,
    SlideSpec,
    SynthConfig,
    Tissue,
    compose,
    generate_dataset,
    layout_specs,
    pyramid_sizes,
    render_maps,
    sample_specs,
    slide_annotations,
    texture_bank,
    write_dataset,
    write_slide,
    write_sparse_canvas,
)
from training.data.synthetic.__main__ import main

SMALL = SynthConfig(size_range=(3000, 4000))
ONE_HOT = ["filename", "0", "1", "2", "3"]


@pytest.fixture(scope="module")
def train_dir(generated: Callable[..., Path]) -> Path:
    return generated(4, 11, "train", SMALL)


@pytest.fixture(scope="module")
def train_specs() -> list[SlideSpec]:
    return sample_specs(4, 11, SMALL)


def test_pages_are_the_competition_pyramid(train_dir: Path) -> None:
    for name in pd.read_csv(train_dir / "train_metadata.csv")["filename"]:
        pages = tiff_tags(train_dir / name)
        sizes = [(p[256], p[257]) for p in pages]
        assert sizes == pyramid_sizes(*sizes[0])
        assert all(w == w0 // 2 and h == h0 // 2 for (w0, h0), (w, h) in pairwise(sizes))
        assert max(sizes[-1]) <= 512 < max(sizes[-2])  # halved until a page fits one tile
        for i, page in enumerate(pages):
            assert page[259] == tifffile.COMPRESSION.JPEG
            assert page[322] == 512 and page[323] == 512
            assert page.get(254, 0) == (tifffile.FILETYPE.REDUCEDIMAGE if i else 0)  # reduced pages
        slide = Slide(train_dir / name)
        assert [(p.width, p.height) for p in slide.pages] == sizes


def test_resolution_round_trips_through_slide(train_dir: Path) -> None:
    metadata = pd.read_csv(train_dir / "train_metadata.csv")
    for row in metadata.itertuples():
        slide = Slide(train_dir / row.filename)
        assert slide.mpp_source == "tiff-tags"
        assert slide.mpp == pytest.approx(row.resolution, rel=1e-6)
        assert 0.221 <= row.resolution <= 0.272
        assert (slide.width, slide.height) == (row.width, row.height)


def test_train_csvs_have_the_real_columns(train_dir: Path, train_specs: list[SlideSpec]) -> None:
    metadata = pd.read_csv(train_dir / "train_metadata.csv")
    assert list(metadata.columns) == [
        "filename", "width", "height", "resolution", "magnification", "tif_cksum", "tif_size",
    ]  # fmt: skip
    assert list(metadata["filename"]) == [s.filename for s in train_specs]
    assert set(metadata["magnification"]) <= {20, 40}
    for row in metadata.itertuples():
        assert row.tif_size == (train_dir / row.filename).stat().st_size
    labels = pd.read_csv(train_dir / "train_labels.csv")
    assert list(labels.columns) == ONE_HOT
    assert (labels[["0", "1", "2", "3"]].sum(axis=1) == 1).all()
    annotations = pd.read_csv(train_dir / "train_annotations.csv")
    assert list(annotations.columns) == ["annotation_id", "filename", "geometry",
                                         "annotation_class"]  # fmt: skip
    number = r"-?\d+(\.\d+)?(e-?\d+)?"
    polygon = re.compile(rf"POLYGON \(\(({number} {number}, ){{4}}{number} {number}\)\)")
    assert all(polygon.fullmatch(g) for g in annotations["geometry"])
    for filename, group in annotations.groupby("filename", sort=False):
        stem = filename.removesuffix(".tif")
        assert list(group["annotation_id"]) == [f"{stem}_{i}" for i in range(len(group))]


def test_labels_and_annotations_follow_the_lesions(
    train_dir: Path, train_specs: list[SlideSpec]
) -> None:
    labels = pd.read_csv(train_dir / "train_labels.csv").set_index("filename")
    metadata = pd.read_csv(train_dir / "train_metadata.csv").set_index("filename")
    boxes = parse_annotations(train_dir / "train_annotations.csv", metadata.reset_index())
    for spec in train_specs:
        assert spec.label == max((le.grade for le in spec.lesions), default=0)
        assert labels.loc[spec.filename].to_numpy().argmax() == spec.label
        mine = [a for a in boxes if a.filename == spec.filename]
        ours = slide_annotations(spec)
        assert [(a.annotation_id, a.annotation_class) for a in mine] == [
            (a.annotation_id, a.annotation_class) for a in ours
        ]
        for a, b in zip(mine, ours, strict=True):  # equal up to the y flip's rounding
            assert (a.box.x, a.box.y, a.box.w) == pytest.approx((b.box.x, b.box.y, b.box.w))
        assert max(a.annotation_class for a in mine) == spec.label
        for a in mine:
            assert a.box.w == pytest.approx(ANNOTATION_UM / spec.mpp)
            assert a.box.h == pytest.approx(ANNOTATION_UM / spec.mpp)
            assert 0 <= a.box.x and a.box.right <= spec.width  # noqa: SIM300
            assert 0 <= a.box.y and a.box.bottom <= spec.height  # noqa: SIM300


def test_not_every_lesion_is_annotated_and_the_worst_always_is() -> None:
    specs = sample_specs(40, 5)
    lesions = [le for spec in specs for le in spec.lesions if le.grade]
    assert any(not le.annotated for le in lesions)
    assert any(le.annotated for le in lesions)
    for spec in specs:
        worst = [le for le in spec.lesions if le.grade == spec.label]
        assert spec.label == 0 or any(le.annotated for le in worst)
        assert all(le.grade == 0 for le in spec.lesions) or spec.label > 0
    assert {spec.label for spec in specs} == {0, 1, 2, 3}
    assert any(spec.lookalikes for spec in specs if spec.label == 0)
    kinds = {a.kind for spec in specs for a in spec.artefacts}
    assert kinds == {"pen", "fold", "dust", "blur", "stripe"}


def test_class_mix_is_obeyed() -> None:
    assert {s.label for s in sample_specs(12, 1, SynthConfig(class_mix=(1, 0, 0, 0)))} == {0}
    assert {s.label for s in sample_specs(12, 1, SynthConfig(class_mix=(0, 0, 0, 1)))} == {3}


def test_test_split_files(tmp_path: Path) -> None:
    specs = sample_specs(2, 4, SynthConfig(size_range=(1024, 1500)))
    metadata = write_dataset(tmp_path, specs, "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [s.filename for s in specs] + ["test_metadata.csv", "test_labels.csv",
                                       "submission_format.csv"]
    )  # fmt: skip
    frame = pd.read_csv(tmp_path / "test_metadata.csv")
    assert list(frame.columns) == ["filename", "width", "height", "resolution", "magnification"]
    assert frame.equals(metadata.drop(columns="seconds"))
    submission = pd.read_csv(tmp_path / "submission_format.csv")
    assert list(submission.columns) == ONE_HOT
    assert (submission[["0", "1", "2", "3"]] == 0).all().all()
    labels = pd.read_csv(tmp_path / "test_labels.csv")
    assert list(labels[["0", "1", "2", "3"]].to_numpy().argmax(1)) == [s.label for s in specs]


def test_slides_written_in_parallel_are_the_serial_ones(tmp_path: Path) -> None:
    specs = sample_specs(3, 5, SynthConfig(size_range=(1024, 1300)))
    serial = write_dataset(tmp_path / "serial", specs, "train")
    parallel = write_dataset(tmp_path / "parallel", specs, "train", workers=3)
    assert serial.drop(columns="seconds").equals(parallel.drop(columns="seconds"))
    names = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "parallel").iterdir())
    for name in names:  # the TIFs (checksums in the metadata) and every CSV, byte for byte
        assert (tmp_path / "serial" / name).read_bytes() == (
            tmp_path / "parallel" / name
        ).read_bytes()


def test_same_seed_same_slide_other_seed_other_slide(tmp_path: Path) -> None:
    config = SynthConfig(size_range=(1500, 2000))
    first, again, other = (
        sample_specs(1, 7, config),
        sample_specs(1, 7, config),
        sample_specs(1, 8, config),
    )
    assert first == again and first != other
    pixels = []
    for name, spec in (("a.tif", first[0]), ("b.tif", again[0]), ("c.tif", other[0])):
        write_slide(tmp_path / name, spec)
        pixels.append(Slide(tmp_path / name).read_page(0))
    assert np.array_equal(pixels[0], pixels[1])
    assert pixels[0].shape != pixels[2].shape or not np.array_equal(pixels[0], pixels[2])
    maps = render_maps(first[0]), render_maps(again[0])
    assert np.array_equal(maps[0].labels, maps[1].labels)


def test_csvs_are_deterministic(tmp_path: Path) -> None:
    config = SynthConfig(size_range=(1024, 1200))
    for out in ("a", "b"):
        generate_dataset(tmp_path / out, 2, seed=3, split="train", config=config)
    for name in ("train_metadata.csv", "train_labels.csv", "train_annotations.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def _pages(tile: np.ndarray, factor: int) -> np.ndarray:
    """(h // factor, w // factor, 3) float64 means of ``factor`` x ``factor`` blocks: what a
    pyramid page ``log2(factor)`` makes of a texture tile (libvips' 2 x 2 box shrinks)."""
    n = tile.shape[0] // factor
    blocks = tile[: n * factor, : n * factor].astype(np.float64)
    return blocks.reshape(n, factor, n, factor, 3).mean((1, 3))


def _laplacian(grey: np.ndarray) -> float:
    """Mean absolute Laplacian of a grey image: the energy of its finest detail."""
    return float(np.abs(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F)).mean())


@pytest.mark.parametrize("seed", [2, 3])
def test_grades_look_alike_at_4_um_and_differ_at_half_a_micron(seed: int) -> None:
    spec = sample_specs(1, seed)[0]
    bank = texture_bank(spec)
    assert len({bank[t].shape for t in BALANCED}) == 1  # one tile, one shared cell layout
    # page 4 (16 x 16 blocks, 3.5-4.4 µm/px): one mean colour, one contrast, one fine detail.
    # Equalised in construction up to the passes' residue; measured: means within 0.01 grey
    # level, stds within 0.4 %, Laplacian energies within 1.2 % (seeds 2, 3, any block phase).
    low = {t: _pages(np.roll(bank[t], (5, 11), (0, 1)), 16) for t in BALANCED}
    means = np.array([low[t].reshape(-1, 3).mean(0) for t in BALANCED])
    stds = np.array([low[t].reshape(-1, 3).std(0) for t in BALANCED])
    assert np.ptp(means, axis=0).max() < 0.25
    assert (np.ptp(stds, axis=0) / stds.mean(0)).max() < 0.01
    laplacians = np.array([_laplacian(low[t].mean(2)) for t in BALANCED])
    assert np.ptp(laplacians) / laplacians.mean() < 0.03
    # still suspicious: darker than normal epithelium (measured 23-32 grey levels per channel)
    epithelium = 0.4 * _pages(bank[Tissue.EPI_BASAL], 16).reshape(-1, 3).mean(0) + 0.6 * _pages(
        bank[Tissue.EPI_UPPER], 16
    ).reshape(-1, 3).mean(0)
    assert (epithelium - means.mean(0) > 15).all()
    # page 1 (2 x 2 blocks, ~0.5 µm/px): HSIL's clumped chromatin has the most fine detail
    # (measured 1.33-1.44 x LSIL's or INVASIVE's); the darkest 2 % of pixels order the grades:
    # INVASIVE's rims and nucleoli beat LSIL's smudgy nuclei, HSIL's clumps beat both (gaps
    # measured 5.4-7.7 grey levels).
    high = {t: _pages(bank[t], 2).mean(2) for t in BALANCED}
    fine = {t: _laplacian(high[t]) for t in BALANCED}
    assert fine[Tissue.HSIL] > 1.25 * max(fine[Tissue.LSIL], fine[Tissue.INVASIVE])
    darkest = {t: float(np.percentile(high[t], 2)) for t in BALANCED}
    assert darkest[Tissue.LSIL] - darkest[Tissue.INVASIVE] > 3
    assert darkest[Tissue.INVASIVE] - darkest[Tissue.HSIL] > 3


def test_textures_are_seamless() -> None:
    bank = texture_bank(sample_specs(1, 2)[0])
    for tissue, tile in bank.items():
        grey = tile.mean(2)
        inner = np.abs(np.diff(grey, axis=1)).mean()
        seam = np.abs(grey[:, 0] - grey[:, -1]).mean()
        assert seam < 1.5 * inner + 1, tissue.name


def test_lesions_change_the_label_map() -> None:
    spec = sample_specs(1, 5, SynthConfig(class_mix=(0, 0, 1, 0), size_range=(6000, 6000)))[0]
    labels = render_maps(spec).labels
    assert (labels == Tissue.HSIL).any()
    benign = replace(spec, lesions=tuple(le for le in spec.lesions if le.grade == 0))
    assert not np.isin(render_maps(benign).labels, [Tissue.LSIL, Tissue.HSIL]).any()


def test_lesion_footprint_does_not_depend_on_the_grade() -> None:
    spec = sample_specs(1, 5, SynthConfig(class_mix=(0, 0, 1, 0), size_range=(6000, 6000)))[0]
    painted = []
    for grade in (1, 2, 3):
        lesions = tuple(replace(le, grade=grade) if le.grade else le for le in spec.lesions)
        labels = render_maps(replace(spec, lesions=lesions)).labels
        others = [t for g, t in LESION_TISSUE.items() if g != grade]
        assert not np.isin(labels, others).any()
        painted.append(labels == LESION_TISSUE[grade])
    assert painted[0].sum() > 1000  # map pixels, about 2 µm each
    assert np.array_equal(painted[0], painted[1]) and np.array_equal(painted[0], painted[2])


def test_layout_reproduces_the_real_slides() -> None:
    metadata = pd.read_csv(REAL / "train_metadata.csv")
    real = parse_annotations(REAL / "train_annotations.csv", metadata)
    labels = pd.read_csv(REAL / "train_labels.csv").set_index("filename")
    specs = layout_specs(REAL / "train_metadata.csv", REAL / "train_annotations.csv", scale=8)
    assert [s.filename for s in specs] == list(metadata["filename"])
    for spec, row in zip(specs, metadata.itertuples(), strict=True):
        assert (spec.width, spec.height) == (round(row.width / 8), round(row.height / 8))
        assert spec.mpp == pytest.approx(row.resolution * 8)
        assert spec.magnification == row.magnification
        assert labels.loc[spec.filename].to_numpy().argmax() == spec.label
        mine = [a for a in real if a.filename == spec.filename]
        ours = slide_annotations(spec)
        assert [a.annotation_class for a in ours] == [a.annotation_class for a in mine]
        for a, b in zip(ours, mine, strict=True):
            got, want = (a.box.x, a.box.y, a.box.w), (b.box.x / 8, b.box.y / 8, b.box.w / 8)
            assert got == pytest.approx(want, abs=1e-6)


def test_cli_layout_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metadata = pd.read_csv(REAL / "train_metadata.csv")
    small = metadata[metadata["filename"].isin(["C12_B058_S12.tif", "C20_B007_S20_pyr.tif"])]
    small.to_csv(tmp_path / "meta.csv", index=False)
    out = tmp_path / "out"
    args = [str(out), "--layout", str(tmp_path / "meta.csv"),
            str(REAL / "train_annotations.csv"), "--scale", "8", "--benchmark"]  # fmt: skip
    assert main(args) == 0
    assert "Mpx/s" in capsys.readouterr().out
    written = pd.read_csv(out / "train_metadata.csv")
    assert list(written["width"]) == [round(w / 8) for w in small["width"]]
    boxes = parse_annotations(out / "train_annotations.csv", written)
    real = [
        a
        for a in parse_annotations(REAL / "train_annotations.csv", metadata)
        if a.filename in set(small["filename"])
    ]
    assert [a.annotation_id for a in boxes] == [a.annotation_id for a in real]
    for a, b in zip(boxes, real, strict=True):
        assert a.box.x == pytest.approx(b.box.x / 8, abs=1e-6)
        assert a.box.bottom == pytest.approx(b.box.bottom / 8, abs=1e-6)


def test_cli_random_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = [str(out), "--slides", "2", "--seed", "9", "--split", "test", "--size-range", "1024",
            "1300", "--class-mix", "0,1,1,0"]  # fmt: skip
    assert main(args) == 0
    assert f"wrote 2 test slides to {out}" in capsys.readouterr().out
    labels = pd.read_csv(out / "test_labels.csv")
    assert set(labels[["0", "1", "2", "3"]].to_numpy().argmax(1)) <= {1, 2}
    with pytest.raises(SystemExit):
        main([str(out), "--class-mix", "1,2"])
    with pytest.raises(SystemExit):
        main([str(out)])  # neither --slides nor --layout


def test_sparse_canvas_reads_like_a_slide(tmp_path: Path) -> None:
    spec = sample_specs(1, 6, SynthConfig(size_range=(2048, 2048)))[0]
    origin = (100_000, 50_123)
    path = write_sparse_canvas(tmp_path / "huge.tif", 271_950, 294_038, spec.mpp, spec, origin)
    assert path.stat().st_size < 8_000_000  # 80 gigapixels in a few MB
    slide = Slide(path)
    assert [(p.width, p.height) for p in slide.pages] == pyramid_sizes(271_950, 294_038)
    assert slide.mpp == pytest.approx(spec.mpp, rel=1e-6)
    tissue = slide.read_region(Box(origin[0], origin[1], 2048, 2048), 0).astype(int)
    expected = np.ndarray((2048, 2048, 3), np.uint8, compose(spec).write_to_memory())
    assert np.abs(tissue - expected).mean() < 3  # JPEG-close to the rendered tissue
    glass = slide.read_region(Box(5_000, 250_000, 1000, 700), 0).reshape(-1, 3)
    assert glass.min() >= 200 and glass.std(0).max() < 2  # flat glass far away
    low = slide.read_region(Box(origin[0], origin[1], 2048, 2048), 4)
    assert low.shape == (128, 128, 3)
    assert np.abs(low.mean((0, 1)) - expected.mean((0, 1))).max() < 4


def test_cli_sparse_canvas_dataset(tmp_path: Path) -> None:
    args = [str(tmp_path), "--slides", "1", "--seed", "2", "--size-range", "1024", "1024",
            "--sparse-canvas", "90000", "70000"]  # fmt: skip
    assert main(args) == 0
    metadata = pd.read_csv(tmp_path / "train_metadata.csv")
    assert (metadata["width"][0], metadata["height"][0]) == (90000, 70000)
    boxes = parse_annotations(tmp_path / "train_annotations.csv", metadata)
    slide = Slide(tmp_path / metadata["filename"][0])
    assert (slide.width, slide.height) == (90000, 70000)
    for a in boxes:  # the annotated squares hold tissue, not glass
        assert slide.read_region(a.box, 2).mean() < 235


def test_bad_descriptions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end with \.tif"):
        SlideSpec("a.png", 10, 10, 0.25, 40, 0)
    with pytest.raises(ValueError, match="magnification"):
        SlideSpec("a.tif", 10, 10, 0.25, 10, 0)
    with pytest.raises(ValueError, match="class_mix"):
        SynthConfig(class_mix=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown artefact kind"):
        Artefact("smudge", ((0.0, 0.0),), 10.0)
    with pytest.raises(ValueError, match="bad lesion"):
        Lesion(0.0, 0.0, 4, 100.0, True)
    with pytest.raises(ValueError, match="split must be one of"):
        write_dataset(tmp_path, [], "valid")
    spec = SlideSpec("a.tif", 1000, 1000, 0.25, 40, 0)
    with pytest.raises(ValueError, match="does not fit"):
        write_sparse_canvas(tmp_path / "c.tif", 1500, 1500, 0.25, spec, (800, 0))
