"""The benchmark's parts: mode assets, repeated sets, the exhaustive baseline, the floors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stages.cascade import Cascade
from stages.config import load_assets, load_config
from stages.detector import tissue_windows
from stages.submission import read_table
from training.bench.exhaustive import grade_exhaustively, sample_evenly, top_tiles
from training.bench.floors import compute_floor, network_flops
from training.bench.modes import ASSET_SETS, Mode, mode_assets, modes
from training.bench.publish import PAGE_HEADER, replace_block, write_docs
from training.bench.sets import repeat_set
from training.data.synthetic import SynthConfig


def test_mode_assets_change_only_the_budget_and_link_the_weights(
    assets: Path, tmp_path: Path
) -> None:
    assert mode_assets(assets, Mode("cascade k=32"), tmp_path) == assets  # nothing to change
    variant = mode_assets(assets, Mode("detector only", max_k=2, stage2=False), tmp_path)
    shipped, config = load_config(assets), load_config(variant)
    assert (config.budget.max_k, config.budget.min_k, config.budget.stage2) == (2, 2, False)
    assert config.detector == shipped.detector and config.decision == shipped.decision
    assert (variant / shipped.detector.weights).resolve() == (
        assets / shipped.detector.weights
    ).resolve()


def test_modes_name_their_asset_sets_and_slide_sets() -> None:
    chosen = modes()
    assert len({m.name for m in chosen}) == len(chosen)
    assert {m.assets for m in chosen} == {"shipped", *ASSET_SETS}
    for mode in chosen:  # every other asset set is timed against its own exhaustive baseline
        if mode.assets != "shipped":
            assert any(m.exhaustive and m.assets == mode.assets for m in chosen), mode.name
    fm = [m for m in chosen if m.assets == "vit-g14" and not m.exhaustive]
    assert [m.max_k for m in fm] == [8, 16, 32] and {m.min_score for m in fm} == {0.0}


def test_mode_assets_set_min_score_and_keep_the_rest(assets: Path, tmp_path: Path) -> None:
    variant = mode_assets(assets, Mode("k", min_score=0.0), tmp_path)
    shipped, config = load_config(assets), load_config(variant)
    assert config.hotspots == replace(shipped.hotspots, min_score=0.0)
    assert config.budget == shipped.budget and config.classifier == shipped.classifier


def test_repeat_set_lists_the_slides_over_and_over_with_their_labels(
    tmp_path: Path, generated: Callable[..., Path]
) -> None:
    source = generated(3, 61, config=SynthConfig(size_range=(3000, 3000)))
    target = repeat_set(source, tmp_path / "repeated", 7)
    fmt = read_table(target / "submission_format.csv")
    labels = read_table(target / "test_labels.csv").set_index("filename")
    original = read_table(source / "test_labels.csv").set_index("filename")
    assert len(fmt) == 7 and fmt["filename"].is_unique
    for name in fmt["filename"]:
        base = name.split("_", 1)[1]
        assert (target / name).resolve() == (source / base).resolve()
        assert labels.loc[name].tolist() == original.loc[base].tolist()
    assert (fmt[["0", "1", "2", "3"]] == 0).all().all()
    metadata = pd.read_csv(target / "test_metadata.csv")
    assert list(metadata["filename"]) == list(fmt["filename"])


def test_replace_block_rewrites_only_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- benchmark:start -->\nold\n<!-- benchmark:end -->\nb\n")
    replace_block(readme, "new table")
    expected = "a\n<!-- benchmark:start -->\nnew table\n<!-- benchmark:end -->\nb\n"
    assert readme.read_text() == expected
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- benchmark:start -->"):
        replace_block(readme, "x")


def test_the_docs_page_is_created_once_then_only_its_block_rewritten(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "benchmarks.md"
    write_docs(page, "first table")
    block = "<!-- benchmark:start -->\n{}\n<!-- benchmark:end -->\n"
    assert page.read_text() == PAGE_HEADER + block.format("first table")
    page.write_text("# Ours\n\n" + block.format("first table") + "\nprose kept\n")
    write_docs(page, "second table")
    assert page.read_text() == "# Ours\n\n" + block.format("second table") + "\nprose kept\n"


def test_exhaustive_grades_every_tissue_tile_once(
    assets: Path, generated: Callable[..., Path]
) -> None:
    path = next(generated(1, 62, config=SynthConfig(size_range=(5000, 6000))).glob("*.tif"))
    cascade = Cascade(load_assets(assets, torch.device("cpu")))
    result = grade_exhaustively(cascade, path, None)
    prepared = cascade.prepare(path, None)
    try:
        slide = prepared.slide
        page = slide.page_for_mpp(cascade.config.classifier.target_mpp)
        info = slide.pages[page]
        patch = cascade.config.classifier.patch
        tiles = tissue_windows(
            info.size, info.scale, prepared.mask, slide.pages[prepared.mask_page].scale, patch, 0
        )
    finally:
        prepared.close()
    assert len(result.grades) == len(tiles) > 0
    assert result.pages["classifier"] == page
    # every tile decoded once: the tiles' pixels inside the page, plus the tissue page
    inside = sum(min(patch, info.width - x) * min(patch, info.height - y) for x, y in tiles)
    tissue_page = slide.pages[prepared.mask_page]
    tissue_pixels = tissue_page.width * tissue_page.height
    assert result.decoded_mpx * 1e6 == pytest.approx(inside + tissue_pixels)
    np.testing.assert_allclose(result.grades.sum(axis=1), 1.0, rtol=1e-5)
    # a sample of the tiles: that many graded, the slide's tile count recorded for the estimate
    sampled = grade_exhaustively(cascade, path, None, sample_tiles=3)
    assert len(sampled.grades) == 3
    assert (sampled.seconds["tiles"], sampled.seconds["tiles_graded"]) == (len(tiles), 3)
    np.testing.assert_allclose(
        sampled.grades, result.grades[sample_evenly(len(tiles), 3)], atol=1e-5
    )


def test_sample_evenly_spreads_the_indices_over_the_list() -> None:
    assert sample_evenly(10, 3).tolist() == [0, 4, 9]  # 0, 4.5 (rounded to even), 9
    assert sample_evenly(5, None).tolist() == [0, 1, 2, 3, 4]
    assert sample_evenly(2, 8).tolist() == [0, 1]


def test_top_tiles_rank_by_lesion_probability_ties_in_tile_order() -> None:
    grades = np.array([[0.9, 0.1, 0, 0], [0.2, 0.8, 0, 0], [0.9, 0, 0.1, 0], [0.5, 0, 0, 0.5]])
    np.testing.assert_array_equal(top_tiles(grades, 3), grades[[1, 3, 0]])


def test_compute_floor_counts_the_networks_arithmetic(assets: Path) -> None:
    loaded = load_assets(assets, torch.device("cpu"))
    window, patch = network_flops(loaded)
    assert window > 0 and patch > 0
    # a detector window (256² px) costs more than a classifier patch (128² px) of the same net
    assert window > patch
    assert compute_floor(10, 4, (window, patch), gflops=100.0) == pytest.approx(
        (10 * window + 4 * patch) / 100e9
    )
