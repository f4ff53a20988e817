"""DrivenData's light files (32× downsampled JPEGs and annotated-region crops): their names and
sizes, the generator's ``--light``, the slide read from them, the cache built from them against
the one built from the TIFs, and bad files named and skipped."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pyvips
from helpers import REAL_TISSUENET, TEST_RECIPE, TRAIN_MIX

from stages.geometry import Box
from stages.slide import Slide
from training.data.annotations import format_annotation, parse_annotations
from training.data.cache import Cache, CacheConfig, build_cache
from training.data.dataset import read_training_set
from training.data.light import (
    JPG_URLS,
    REGION_URLS,
    TIF_URLS,
    downsampled_path,
    downsampled_size,
    region_path,
    region_rect,
)
from training.data.light.read import LightSlide, Region, light_pages
from training.data.light.write import LightOptions, light_folder
from training.data.synthetic import SynthConfig, sample_specs, slide_annotations, write_dataset
from training.fit import classifier, detector
from training.pipeline import MissingTifsError, train
from training.presets import TrainOptions

SMALL = CacheConfig(square_patches=3, benign_patches=6)
LIGHT = CacheConfig(square_patches=3, benign_patches=6, source="light")
#: Two slides of 8,500–9,500 px (so that their TIFs have page 5, as the real ones all do): seed 0
#: gives a class-2 slide with 3 squares and a class-0 slide with 4.
BIG = SynthConfig(size_range=(8500, 9500), class_mix=(0.5, 0.0, 0.5, 0.0))


@pytest.fixture(scope="module")
def tifs(generated: Callable[..., Path]) -> Path:
    return generated(2, 0, "train", BIG)


@pytest.fixture(scope="module")
def light(tifs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A light-only copy of :func:`tifs` (no TIF)."""
    out = tmp_path_factory.mktemp("light") / "data"
    light_folder(tifs, out)
    return out


# -- names and sizes ----------------------------------------------------------------------------


def test_light_files_are_named_and_sized_as_the_real_ones() -> None:
    assert downsampled_size(271_950, 294_038) == (8498, 9189)  # the real canvases' JPEGs
    assert downsampled_size(130_560, 71_424) == (4080, 2232)
    assert downsampled_size(48, 16) == (2, 1)  # halves round up
    assert downsampled_path("C12_B127_S12.tif") == "downsampled_images/C12_B127_S12.jpg"
    assert region_path("C12_B127_S12_0") == "annotated_regions/C12_B127_S12_0.jpeg"
    first = parse_annotations(
        REAL_TISSUENET / "train_annotations.csv", REAL_TISSUENET / "train_metadata.csv"
    )[0]
    assert first.annotation_id == "C12_B127_S12_0"
    assert region_rect(first.box) == (14772, 71424 - 55732, 1304, 1304)


def test_the_light_files_place_squares_with_the_metadatas_height_only() -> None:
    with pytest.raises(ValueError, match="the light files have none"):
        CacheConfig(source="light", y_flip="tif")
    with pytest.raises(ValueError, match="source must be one of"):
        CacheConfig(source="jpeg")


def test_light_pages_are_the_pyramids_with_the_jpeg_as_page_5() -> None:
    pages = light_pages((20000, 9000), (625, 281))
    assert [p.size for p in pages] == [
        (20000, 9000), (10000, 4500), (5000, 2250), (2500, 1125), (1250, 562), (625, 281),
        (312, 140),
    ]  # fmt: skip
    assert pages[5].scale == (32.0, 9000 / 281) and pages[5].source is None
    assert (pages[6].source, pages[6].shrink) == (5, 2)
    assert pages[1].scale == (2.0, 2.0) and pages[4].scale == (16.0, 9000 / 562)


def test_a_region_cut_past_its_crop_repeats_the_edge() -> None:
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    region = Region(Box(10, 20, 5, 4), 10, 20, pixels)
    assert region.covers(9, 19, 16, 25, 1) and not region.covers(8, 20, 12, 22, 1)
    cut = region.cut(9, 20, 12, 22)
    np.testing.assert_array_equal(cut[:, 0], pixels[:2, 0])
    np.testing.assert_array_equal(cut[:, 1:], pixels[:2, :2])


# -- the generator --------------------------------------------------------------------------------


def _is_baseline_rgb_jpeg(path: Path) -> bool:
    data = path.read_bytes()
    image = pyvips.Image.new_from_file(str(path))
    return b"\xff\xc0" in data and b"\xff\xc2" not in data and image.bands == 3


def test_the_generator_writes_the_light_files_beside_or_instead_of_the_tifs(
    tmp_path: Path,
) -> None:
    specs = sample_specs(1, 3, SynthConfig(size_range=(1500, 2000)), "train")
    both = write_dataset(tmp_path / "both", specs, "train", light=LightOptions(quality=80))
    only = write_dataset(tmp_path / "only", specs, "train", light=LightOptions(tifs=False))
    spec, squares = specs[0], slide_annotations(specs[0])
    assert squares
    for folder in ("both", "only"):
        data = tmp_path / folder
        jpg = data / downsampled_path(spec.filename)
        assert _is_baseline_rgb_jpeg(jpg)
        image = pyvips.Image.new_from_file(str(jpg))
        assert (image.width, image.height) == downsampled_size(spec.width, spec.height)
        for square in squares:
            crop = data / region_path(square.annotation_id)
            assert _is_baseline_rgb_jpeg(crop)
            image = pyvips.Image.new_from_file(str(crop))
            assert (image.width, image.height) == region_rect(square.box)[2:]
        metadata = pd.read_csv(data / "train_metadata.csv")
        assert list(metadata[list(JPG_URLS)].iloc[0]) == [downsampled_path(spec.filename)] * 3
        assert list(metadata[list(TIF_URLS)].iloc[0]) == [spec.filename] * 3
        annotations = pd.read_csv(data / "train_annotations.csv")
        assert list(annotations[REGION_URLS[0]]) == [region_path(a.annotation_id) for a in squares]
    assert (tmp_path / "both" / spec.filename).is_file()
    files = sorted(p.name for p in (tmp_path / "only").iterdir() if p.is_file())
    assert files == ["train_annotations.csv", "train_labels.csv", "train_metadata.csv"]
    assert only["tif_size"].tolist() == both["tif_size"].tolist()  # the TIF it was made from


# -- the slide read from them ---------------------------------------------------------------------


def test_a_crop_gives_the_patch_of_the_tif_region_it_came_from(tifs: Path, light: Path) -> None:
    for item in read_training_set(light, source="light"):
        with (
            Slide(tifs / item.filename, mpp=item.mpp) as tif,
            LightSlide(light, item.filename, item.size, item.annotations, item.mpp) as slide,
        ):
            assert [p.index for p in slide.pages] == [p.index for p in tif.pages]
            page = slide.page_for_mpp(TEST_RECIPE.classifier.target_mpp)
            assert page == tif.page_for_mpp(TEST_RECIPE.classifier.target_mpp) == 1
            for annotation in item.annotations:
                square = annotation.box
                for level in (0, page):
                    side = 160 * 2**level
                    box = Box(square.x + 20, square.bottom - side - 20, side, side)
                    ours = slide.read_region(box, level).astype(int)
                    theirs = tif.read_region(box, level).astype(int)
                    assert ours.shape == theirs.shape == (160, 160, 3)
                    assert np.abs(ours - theirs).mean() < 4  # JPEG's re-encoding only


def test_the_light_cache_has_the_tif_caches_structure_and_targets(
    tifs: Path, light: Path, tmp_path: Path
) -> None:
    by_tif = build_cache(tifs, tmp_path / "tif", TEST_RECIPE, SMALL, folds=2)
    by_light = build_cache(light, tmp_path / "light", TEST_RECIPE, LIGHT, folds=2)
    assert list(by_light.columns) == list(by_tif.columns) and len(by_tif) == 2
    same = ["filename", "label", "fold", "pages", "mask_page", "detector_page", "classifier_page",
            "classifier_sx", "classifier_sy", "fragments", "squares", "patches"]  # fmt: skip
    pd.testing.assert_frame_equal(by_light[same], by_tif[same])
    tif_cache, light_cache = Cache.open(tmp_path / "tif"), Cache.open(tmp_path / "light")
    columns = ["filename", "kind", "cls", "annotation_id"]
    pd.testing.assert_frame_equal(light_cache.patches[columns], tif_cache.patches[columns])
    for stem in by_tif["stem"]:
        theirs, ours = (c.array(stem, "patches") for c in (tif_cache, light_cache))
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        for i, (a, b) in enumerate(
            zip(tif_cache.fragments(stem), light_cache.fragments(stem), strict=True)
        ):
            assert max(abs(p - q) for p, q in zip(a, b, strict=True)) <= 1  # sizes round
            t, lt = (np.asarray(c.array(stem, f"target-{i}")) for c in (tif_cache, light_cache))
            h, w = min(t.shape[0], lt.shape[0]), min(t.shape[1], lt.shape[1])
            assert (t[:h, :w] == lt[:h, :w]).mean() > 0.95
    settings = tmp_path / "tif" / "cache.json"  # a cache written before the source existed
    old = json.loads(settings.read_text())
    del old["cache"]["source"]
    settings.write_text(json.dumps(old))
    build_cache(tifs, tmp_path / "tif", TEST_RECIPE, SMALL, folds=2)  # resumes, no refusal


# -- bad files ---------------------------------------------------------------------------------


def test_bad_light_files_are_named_and_lose_their_square_or_slide_only(
    generated: Callable[..., Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    light_folder(generated(4, 24, "train", TRAIN_MIX), data)
    slides = read_training_set(data, source="light")
    first, second, third, fourth = slides
    assert [len(s.annotations) for s in slides] == [3, 3, 2, 2]
    missing, truncated, good_first = (a.annotation_id for a in first.annotations)
    grey, off, good_second = (a.annotation_id for a in second.annotations)
    (data / region_path(missing)).unlink()
    path = data / region_path(truncated)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    path = data / region_path(grey)
    pyvips.Image.new_from_file(str(path)).colourspace("b-w").jpegsave(str(path))
    table = pd.read_csv(data / "train_annotations.csv")
    box = second.annotations[1].box
    moved = Box(second.size[0] - box.w / 2, box.y, box.w, box.h)  # half past the right edge
    table.loc[table["annotation_id"] == off, "geometry"] = format_annotation(moved, second.size[1])
    table.to_csv(data / "train_annotations.csv", index=False)
    jpg = data / downsampled_path(third.filename)
    pyvips.Image.new_from_file(str(jpg)).crop(0, 0, 50, 40).jpegsave(str(jpg))

    with caplog.at_level(logging.WARNING):
        cached = build_cache(data, tmp_path / "cache", TEST_RECIPE, LIGHT, folds=2)
    messages = [r.getMessage() for r in caplog.records]

    def logged(path: Path, words: str) -> bool:
        return any(str(path) in m and words in m for m in messages)

    assert logged(data / region_path(missing), "missing")
    assert logged(data / region_path(truncated), "truncated")
    assert logged(data / region_path(grey), "not an RGB image")
    assert logged(data / region_path(off), "reaches past")
    assert logged(jpg, "not the metadata's")
    assert third.filename in next(m for m in messages if str(jpg) in m)  # the slide is named
    assert sorted(cached["filename"]) == sorted(s.filename for s in (first, second, fourth))
    patches = Cache.open(tmp_path / "cache").patches.query("kind == 'square'")
    kept = {good_first, good_second, *(a.annotation_id for a in fourth.annotations)}
    assert set(patches["annotation_id"]) == kept
    assert (patches.groupby("annotation_id").size() == LIGHT.square_patches).all()
    squares = Cache.open(tmp_path / "cache").squares  # the detector keeps every square
    assert len(squares) == sum(len(s.annotations) for s in (first, second, fourth))


# -- the pipeline ----------------------------------------------------------------------------------


def test_the_pipeline_from_light_files_without_tifs_stops_first(
    light: Path, tmp_path: Path
) -> None:
    with pytest.raises(MissingTifsError, match="2 of 2 slides have light files but no TIF"):
        train(tmp_path / "work", tmp_path / "assets", data=light, source="light")
    assert not (tmp_path / "work" / "cache").exists()


@pytest.mark.slow
def test_a_light_only_folder_trains_both_stages(light: Path, tmp_path: Path) -> None:
    build_cache(light, tmp_path / "cache", TEST_RECIPE, LIGHT, folds=2)
    fast = TrainOptions(epochs=1, batch_size=8, samples=16, workers=0, patience=10)
    detector.train_detector(tmp_path / "cache", tmp_path / "detector", TEST_RECIPE, fast)
    classifier.train_classifier(tmp_path / "cache", tmp_path / "classifier", TEST_RECIPE, fast)
    for stage in ("detector", "classifier"):
        info = json.loads((tmp_path / stage / f"{stage}.json").read_text())
        assert (tmp_path / stage / f"{stage}.safetensors").is_file() and info["val_fold"] in (0, 1)
