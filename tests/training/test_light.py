"""DrivenData's light files (32× downsampled JPEGs and annotated-region crops): their names and
sizes, the generator's ``--light``, the slide read from them, the cache built from them against
the one built from the TIFs, and bad files named and skipped."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pyvips
import torch
from helpers import REAL_TISSUENET, TEST_RECIPE, TRAIN_MIX, run_main

from stages.classifier import read_patches
from stages.detector import Heatmap, build_detector
from stages.geometry import Box
from stages.hotspots import Hotspot
from stages.slide import Slide
from training.data.annotations import format_annotation, parse_annotations
from training.data.cache import Cache, CacheConfig, build_cache, crop_size
from training.data.dataset import TrainSlide, assign_folds, read_training_set
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
from training.evaluate.light import folder_bytes, light_folders
from training.evaluate.light import markdown as price_markdown
from training.evaluate.light import row as price_row
from training.fit import decision
from training.fit.crops import BENIGN_SCORE, crop_cells, crop_hotspots, inside
from training.fit.hard_negatives import mine_hard_negatives
from training.pipeline import tifs_to_download, train
from training.presets import TrainOptions
from training.stageio import save_stage

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


def test_a_light_cache_reads_a_slides_tif_where_the_folder_has_it(
    tifs: Path, light: Path, tmp_path: Path
) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(light, mixed)
    benign = next(s.filename for s in read_training_set(light, source="light") if s.label == 0)
    (mixed / benign).symlink_to(tifs / benign)
    rows = build_cache(mixed, tmp_path / "mixed-cache", TEST_RECIPE, LIGHT, folds=2)
    assert dict(zip(rows["filename"], rows["read"], strict=True)) == {
        name: "tif" if name == benign else "light" for name in rows["filename"]
    }
    build_cache(tifs, tmp_path / "tif-cache", TEST_RECIPE, SMALL, folds=2)
    stem = benign.removesuffix(".tif")
    ours, theirs = (
        Cache.open(tmp_path / c).array(stem, "patches") for c in ("mixed-cache", "tif-cache")
    )
    np.testing.assert_array_equal(ours, theirs)  # its benign patches from all its tissue


# -- hard negatives and the decision from the crops ---------------------------------------------


def test_crop_cells_are_those_whose_footprint_lies_in_a_crop() -> None:
    # 4 x 6 cells of 10 page-0 px; centres at 5, 15, … A 20 x 10 footprint fits in the crop
    # (10, 0, 30, 20) for centres x in [20, 30], y in [5, 15]: columns 2, rows 0 and 1.
    cells = crop_cells((4, 6), (10.0, 10.0), [(10, 0, 30, 20)], (20.0, 10.0))
    expected = np.zeros((4, 6), bool)
    expected[0:2, 2] = True
    np.testing.assert_array_equal(cells, expected)
    # a second crop adds its own cells; a crop smaller than the footprint adds none
    both = crop_cells((4, 6), (10.0, 10.0), [(10, 0, 30, 20), (40, 20, 30, 20), (0, 30, 5, 5)],
                      (20.0, 10.0))  # fmt: skip
    expected[2:4, 5] = True
    np.testing.assert_array_equal(both, expected)


def test_the_benign_parts_of_crops_are_the_detectors_surest_places_nms_apart() -> None:
    p0 = np.full((4, 8), 0.5)
    p0[1, 2], p0[0, 5], p0[1, 7], p0[0, 6] = 0.97, 0.95, 0.99, 0.85
    probs = np.stack([p0, *[(1 - p0) / 3] * 3]).astype(np.float32)
    seen = np.ones((4, 8), bool)
    heatmap = Heatmap(probs, seen, seen, (10.0, 10.0), 5, True, 1)
    hotspots = dataclasses.replace(TEST_RECIPE.hotspots, nms_um=150.0)
    config = dataclasses.replace(TEST_RECIPE, hotspots=hotspots)
    crop = [(10, 0, 60, 20)]  # a 20 x 10 footprint fits at columns 2-5, rows 0-1: not (1, 7)

    def places(mpp0: float, rects: list = crop) -> list[tuple[tuple[float, float], float]]:
        found = crop_hotspots(heatmap, rects, mpp0, (20.0, 10.0), (20.0, 10.0), config, 8, True)
        return [(h.box.center, round(h.score, 6)) for h in found]

    # 150 µm is half a cell at 30 µm/px: both places, the surest (lesion score 0.03) first
    assert places(30.0) == [((25.0, 15.0), 0.03), ((55.0, 5.0), 0.05)]
    assert places(4.0) == [((25.0, 15.0), 0.03)]  # 3.75 cells apart at most: one suppressed
    # a place scoring above the bound is never benign: (0, 6) scores 0.15, in a wider crop
    assert places(30.0, [(10, 0, 70, 20)]) == places(30.0) and BENIGN_SCORE == 0.1


def test_hotspots_inside_crops_are_counted_by_their_whole_box() -> None:
    spots = [
        Hotspot(Box(x, 0.0, 10.0, 10.0), 1.0, (0.25,) * 4, i) for i, x in enumerate((0, 5, 20))
    ]
    assert inside(spots, [(0, 0, 15, 10)]) == 2  # the third reaches past x = 15
    assert inside(spots, [(0, 0, 15, 10), (20, 0, 10, 10)]) == 3
    assert inside(spots, []) == 0


def test_the_tifs_to_download_are_the_trained_benign_slides_then_the_validation_folds() -> None:
    labels = [0, 0, 2, 1, 0, 2, 3, 0, 2]
    slides = [
        TrainSlide(f"s{i}.tif", Path(f"s{i}.tif"), c, 0.25, (), None) for i, c in enumerate(labels)
    ]
    fold_of = {s.filename: int(s.filename[1]) % 2 for s in slides}  # even: fold 0
    # fold 1's benign slides: s1, s7; fold 0 holds s0 (0), s2 (2), s4 (0), s6 (3), s8 (2)
    order = ["s1.tif", "s7.tif", "s0.tif", "s2.tif", "s6.tif", "s4.tif", "s8.tif", "s3.tif",
             "s5.tif"]  # fmt: skip
    assert tifs_to_download(slides, fold_of, 0, 20) == order
    assert tifs_to_download(slides, fold_of, 0, 3) == order[:3]


def test_light_hard_negatives_are_the_detectors_best_places_inside_benign_crops(
    tifs: Path, light: Path, tmp_path: Path
) -> None:
    cache_root = tmp_path / "cache"
    build_cache(light, cache_root, TEST_RECIPE, LIGHT, folds=2)
    torch.manual_seed(0)
    model = build_detector(TEST_RECIPE.detector)
    save_stage(
        tmp_path / "detector", "detector", model, TEST_RECIPE, {"metrics": {}, "command": "test"}
    )
    n = mine_hard_negatives(cache_root, light, tmp_path / "detector", per_slide=5)
    cache = Cache.open(cache_root)
    hard = cache.patches.query("source == 'hard'")
    (benign,) = cache.slides.query("label == 0")["filename"]
    mined = hard[hard["kind"] == "hard"]
    assert len(mined) == 5 and set(mined["filename"]) == {benign} and len(hard) == n
    parts = hard[hard["kind"] == "benign_part"]  # the lesion slide's surest benign places
    assert set(parts["filename"]) <= {benign} ^ set(cache.slides["filename"])
    assert (parts["score"] <= BENIGN_SCORE).all() and (hard["cls"] == 0).all()
    stem = cache.row(benign)["stem"]
    assert json.loads((cache_root / stem / "hard.json").read_text())["read"] == "crops"
    item = next(s for s in read_training_set(light, source="light") if s.filename == benign)
    size = crop_size(TEST_RECIPE.classifier.patch, LIGHT.crop_factor)
    page = int(cache.row(benign)["classifier_page"])
    stored = np.asarray(cache.array(stem, "hard"))
    with (
        LightSlide(light, benign, item.size, item.annotations, item.mpp) as slide,
        Slide(tifs / benign, mpp=item.mpp) as tif,
    ):
        sx, sy = slide.pages[page].scale
        rects = [r.rect for r in slide.crops.values()]
        centres = mined[["x", "y"]].to_numpy()
        boxes = [Hotspot(Box.centered(x, y, size * sx, size * sy), 0.0, (0.0,) * 4, 0)
                 for x, y in centres]  # fmt: skip
        assert inside(boxes, rects) == len(boxes)  # every cut lies inside a crop
        # the detector's ranking, restricted to the crops: scores best first, spaced apart
        assert list(mined["score"]) == sorted(mined["score"], reverse=True)
        # the stored cuts are the TIF's pixels at those places, but for the JPEGs' re-encoding
        theirs = read_patches(tif, [tuple(c) for c in centres], page, size).astype(int)
        assert stored.shape == theirs.shape and np.abs(stored - theirs).mean() < 4


# -- the pipeline ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_light_only_folder_trains_the_cascade_whose_assets_grade_tifs(
    light: Path, tifs: Path, generated: Callable[..., Path], tmp_path: Path
) -> None:
    """Cache, detector, hard negatives, classifier and decision from the light files alone; the
    assets then grade a folder of TIFs with main.py, every slide from its patches."""
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"cascade": dataclasses.asdict(TEST_RECIPE), "training": {}}))
    fast = TrainOptions(epochs=1, batch_size=8, samples=16, workers=0, patience=10)
    work, assets = tmp_path / "work", tmp_path / "assets"
    train(work, assets, data=light, preset=str(preset), folds=2, detector_options=fast,
          classifier_options=fast, device="cpu", source="light")  # fmt: skip
    cache = Cache.open(work / "cache")
    (benign,) = cache.slides.query("label == 0")["stem"]
    assert json.loads((work / "cache" / benign / "hard.json").read_text())["read"] == "crops"
    info = json.loads((work / "decision" / "decision.json").read_text())
    metrics = info["metrics"]
    assert (metrics["tif_slides"], metrics["crop_slides"]) == (0, 1)
    assert metrics["crop_graded_mean"] > 0 and info["costs_measured_on"] is None
    counts = pd.read_csv(work / "decision" / "crops.csv")
    assert counts["graded"].iloc[0] == metrics["crop_graded_mean"]
    # the same stages, fitted on a mixed folder: the validation slide's TIF is graded by the
    # cascade itself, and the costs are measured on it
    mixed = tmp_path / "mixed"
    shutil.copytree(light, mixed)
    (val,) = cache.slides.query(f"fold == {info['val_fold']}")["filename"]
    (mixed / val).symlink_to(tifs / val)
    again = decision.fit_stage(mixed, work / "cache", work / "detector", work / "classifier",
                               tmp_path / "decision", folds=2)  # fmt: skip
    assert (again["tif_slides"], again["crop_slides"]) == (1, 0)
    measured = json.loads((tmp_path / "decision" / "decision.json").read_text())
    assert measured["costs_measured_on"]["slides"] == 1
    # a validation slide whose crops are all missing keeps its heatmap's evidence, graded none
    bare = tmp_path / "bare"
    shutil.copytree(light, bare)
    for annotation in next(
        s for s in read_training_set(light, source="light") if s.filename == val
    ).annotations:
        (bare / region_path(annotation.annotation_id)).unlink()
    decision.fit_stage(bare, work / "cache", work / "detector", work / "classifier",
                       tmp_path / "bare-decision", folds=2)  # fmt: skip
    counts = pd.read_csv(tmp_path / "bare-decision" / "crops.csv")
    assert counts[["graded", "crops"]].values.tolist() == [[0, 0]] and counts["hotspots"][0] > 0
    # the light-trained assets grade TIFs
    test = generated(2, 5, "test", TRAIN_MIX)
    code, log = run_main(test, tmp_path / "submission.csv", assets)
    assert code == 0, log
    written = pd.read_csv(tmp_path / "submission.csv")
    expected = pd.read_csv(test / "submission_format.csv")
    assert list(written["filename"]) == list(expected["filename"])
    assert log.count(" from patches, ") == 2, log  # no slide fell back to the prior


# -- the price table ---------------------------------------------------------------------------


def test_the_price_compares_the_tif_folder_with_light_and_mixed_copies(
    generated: Callable[..., Path], tmp_path: Path
) -> None:
    tifs = generated(4, 24, "train", TRAIN_MIX)
    folders = light_folders(tifs, tmp_path, share=0.25)
    light, mixed = folders["light-only"], folders["mixed"]
    assert not list(light.glob("*.tif"))
    (linked,) = mixed.glob("*.tif")  # ceil(0.25 × 4) = 1: the one --list-tifs names first
    assert linked.is_symlink() and linked.resolve() == (tifs / linked.name).resolve()
    slides = read_training_set(light, source="light")  # the pipeline's folds: tiny's 4, seed 1000
    assert [linked.name] == tifs_to_download(slides, assign_folds(slides, 4, 1000), 0, 1)
    assert folder_bytes(mixed) == folder_bytes(light) + linked.stat().st_size
    assert folder_bytes(light) < sum(p.stat().st_size for p in tifs.glob("*.tif"))


def test_a_price_row_holds_the_scores_recall_by_size_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "a.tif").write_bytes(b"x" * 1_500_000)
    figures = {
        "scores": {k: {"written": 0.5, "true": 0.625} for k in
                   ("cascade", "detector_only", "always_1", "oracle_hotspots", "oracle_grades")},
        "worst_lesion_recall": [{"group": "80–150 µm", "recall": 0.5},
                                {"group": "grade 2", "recall": 1.0}],
        "recall": {"4": 0.25, "32": 0.75},
        "slides": 3,
    }  # fmt: skip
    row = price_row("mixed", tmp_path, figures)
    assert row == {
        "training": "mixed",
        "download (MB)": 1.5,
        "score": "0.5000 / 0.6250",
        "detector only": "0.5000 / 0.6250",
        "oracle hotspots": "0.5000 / 0.6250",
        "oracle grades": "0.5000 / 0.6250",
        "recall 80–150 µm": "0.500",
        "recall@4": "0.250",
        "recall@32": "0.750",
    }
    table = price_markdown([row], tmp_path, 3).splitlines()
    assert table[2].startswith("| training | download (MB) | score |")
    assert table[4] == "| mixed | 1.5 | " + " | ".join(list(row.values())[2:]) + " |"
