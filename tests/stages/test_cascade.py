"""One slide through the cascade in-process: budget-driven choices and stage failures."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FakeClock

import stages.cascade
from stages.budget import RunBudget, SlideBudget
from stages.cascade import READ_AHEAD_BYTES, Cascade, heatmap_cells
from stages.config import load_assets
from stages.result import SlideResult
from stages.slide import Slide, SlideError
from training.data.synthetic import SynthConfig, sample_specs, write_sparse_canvas


@pytest.fixture(scope="module")
def cascade(assets: Path) -> Cascade:
    return Cascade(load_assets(assets, torch.device("cpu")))


def test_generous_budget_uses_the_configured_pages(cascade: Cascade, slide_path: Path) -> None:
    budget = RunBudget(3600, 1, cascade.config.budget)
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    assert result.pages["detector"] == 5  # 0.22–0.27 µm/px × 32 is nearest 8 µm/px
    assert result.pages["classifier"] == 1
    assert result.source == "patches" and not result.degraded
    assert len(result.grades) == len(result.hotspots) <= cascade.config.budget.max_k
    assert result.grades.shape[1] == 4
    assert sum(result.probs) == pytest.approx(1.0)
    # hotspots are centred in tissue cells the detector saw, in decreasing score
    heatmap = result.heatmap
    assert heatmap is not None and result.hotspots
    seen = heatmap.tissue & heatmap.visited
    assert 0 < seen.sum() < seen.size  # the test can fail: not every cell qualifies
    sx, sy = heatmap.scale
    for hotspot in result.hotspots:
        cx, cy = hotspot.box.center
        assert seen[int(cy // sy), int(cx // sx)], hotspot
    scores = [h.score for h in result.hotspots]
    assert scores == sorted(scores, reverse=True)


def _frozen_run(cascade: Cascade, limit_s: float, slides: int = 1) -> tuple[RunBudget, FakeClock]:
    """A run on a frozen clock (every measured cost is 0, only the estimates matter), with no
    reserve and no slack."""
    clock = FakeClock(0.0)
    config = replace(cascade.config.budget, reserve_s=0.0, slack=0.0)
    return RunBudget(limit_s, slides, config, clock=clock), clock


def _base_mpx(cascade: Cascade, slide_path: Path) -> float:
    """Megapixels of the detector's batches of tissue windows on the slide's base page (a part
    batch counted whole: it runs padded)."""
    prepared = cascade.prepare(slide_path, None)
    prepared.close()
    det = cascade.config.detector
    return math.ceil(len(prepared.corners) / det.batch_size) * det.batch_size * det.window**2 / 1e6


def test_small_allotment_keeps_the_last_page_while_it_fits_the_time_left(
    cascade: Cascade, slide_path: Path
) -> None:
    budget, _ = _frozen_run(cascade, 2.0)  # 2 s: the detector may use 1 s (fraction 0.5)
    # estimated 1.7 s on page 5, the slide's coarsest: over the detector's share, within the
    # 2 s left less the 0.2 s kept for min_k patches (and a few ms for its hotspots), so the
    # pass runs there (escalation between pages: tests/stages/test_budget.py)
    prepared = cascade.prepare(slide_path, None)
    prepared.close()
    assert (prepared.detector_page, len(prepared.slide.pages)) == (5, 6)
    budget.costs.detector.update(1.7 / _base_mpx(cascade, slide_path))
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    assert result.pages["detector"] == 5 and result.heatmap is not None
    assert result.source == "patches"


def test_the_detector_keeps_time_for_the_hotspots_of_its_heatmap(
    cascade: Cascade, slide_path: Path
) -> None:
    budget, _ = _frozen_run(cascade, 4.0, slides=2)  # 2 s a slide
    budget.costs.detector.update(1.0 / _base_mpx(cascade, slide_path))  # 1 s: fits the 2 s left
    prepared = cascade.prepare(slide_path, None)
    prepared.close()
    cells = heatmap_cells(prepared.slide, prepared.detector_page, cascade.config.detector.stride)
    info = prepared.slide.pages[prepared.detector_page]
    assert cells == math.ceil(info.width / 4) * math.ceil(info.height / 4)
    # … but not with the 1.5 s its heatmap's hotspots are estimated to take after it
    budget.costs.hotspots.update(1.5 / (cells / 1e6))
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    assert result.heatmap is None and result.source == "patches"  # the cheaper path
    budget.costs.hotspots.value = 0.5 / (cells / 1e6)  # 1 s + 0.5 s fits: the pass runs …
    budget.finish_slide()
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    assert result.heatmap is not None and result.heatmap.probs[0].size == cells
    assert budget.costs.hotspots.count == 2  # … and its hotspots' cost is measured


def test_the_detector_keeps_time_for_min_k_patches_at_their_peak_cost(
    cascade: Cascade, slide_path: Path
) -> None:
    assert cascade.config.budget.kept_patches == 4
    mpx = _base_mpx(cascade, slide_path)

    def detects(patch: tuple[float, float], batch: tuple[float, float]) -> bool:
        """Whether the detector runs in a 2 s slide, estimated at 1 s, with the patches' reads
        and the batch's run at these (average, peak) seconds."""
        budget, _ = _frozen_run(cascade, 2.0)
        costs = budget.costs
        costs.detector.update(1.0 / mpx)  # 1 s: the detector's share of the 2 s
        (costs.patch.value, costs.patch.peak), (costs.batch.value, costs.batch.peak) = patch, batch
        result = cascade.grade_slide(slide_path, None, budget.start_slide(), costs)
        assert result.source == "patches"  # with or without the detector, patches graded
        return result.heatmap is not None

    # patches at 0.01 s on average leave room, but a batch at their recent peak, 0.3 s a read,
    # would not: 1 s + 4 × 0.3 s > 2 s (a batch cannot be stopped part way) …
    assert not detects((0.01, 0.3), (0.0, 0.0))
    # … nor would 4 reads at 0.2 s and the batch's run at 0.3 s: 1 s + 1.1 s > 2 s …
    assert not detects((0.01, 0.2), (0.0, 0.3))
    assert detects((0.01, 0.2), (0.0, 0.1))  # … but with the run at 0.1 s, 1 s + 0.9 s fits


def test_patches_are_granted_at_their_peak_cost(
    cascade: Cascade, slide_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget, clock = _frozen_run(cascade, 2.0, slides=2)  # 1 s a slide
    costs = budget.costs
    costs.detector.update(1e-6)  # the detector's pass is estimated free
    costs.patch.value, costs.patch.peak, costs.batch.value, costs.batch.peak = (
        0.01,
        0.125,
        0.01,
        0.25,
    )
    read, grade = stages.cascade.read_patches, stages.cascade.grade

    def slow_read(slide: object, centers: list, *args: object, **kw: object) -> np.ndarray:
        clock.advance(0.125 * len(centers))  # each patch takes 0.125 s of the run's clock to read …
        return read(slide, centers, *args, **kw)

    def slow_grade(model: torch.nn.Module, *args: object, **kw: int) -> np.ndarray:
        clock.advance(0.25)  # … and each batch 0.25 s to grade, whatever its number of patches
        return grade(model, *args, **kw)

    monkeypatch.setattr(stages.cascade, "read_patches", slow_read)
    monkeypatch.setattr(stages.cascade, "grade", slow_grade)
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    assert result.heatmap is not None and len(result.hotspots) > 5
    # (1 s − 0.25 s) ÷ 0.125 s: 6 patches in one batch, the slide's second spent (at the average
    # costs, a first batch of 8 would have been granted: 1.25 s); then no batch fits
    assert len(result.grades) == 6 and clock.now == pytest.approx(1.0)


def test_slow_reads_stop_the_batch_once_its_run_no_longer_fits(
    cascade: Cascade, slide_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold disk: each patch read takes 0.25 s of the slide's 1 s, where 0.01 s was expected.
    The batch of 8 granted stops reading after 3 patches (0.25 s left, under the batch's 0.3 s
    run) and grades those; without the stop, its reads alone would take 2 s."""
    budget, clock = _frozen_run(cascade, 2.0, slides=2)  # 1 s a slide
    costs = budget.costs
    costs.detector.update(1e-6)
    costs.patch.value, costs.patch.peak, costs.batch.value, costs.batch.peak = 0.01, 0.01, 0.3, 0.3
    classifier_page = Slide(slide_path).page_for_mpp(cascade.config.classifier.target_mpp)
    read_region = Slide.read_region

    def cold(self: Slide, box: object, page: int) -> np.ndarray:
        if page == classifier_page:
            clock.advance(0.25)
        return read_region(self, box, page)

    monkeypatch.setattr(Slide, "read_region", cold)
    # the costs stay as set: the reads' measurements (in real time, fast) would not see the fake
    # clock's 0.25 s
    monkeypatch.setattr(costs, "observe_patches", lambda *args: None)
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    assert len(result.hotspots) > 8 and cascade.patch_batch == 8
    assert len(result.grades) == 3 and clock.now == pytest.approx(0.75)


def test_no_time_for_any_detector_pass_takes_the_cheaper_path(
    cascade: Cascade, slide_path: Path
) -> None:
    budget, _ = _frozen_run(cascade, 2.0)
    budget.costs.detector.update(1e6)  # no page's pass fits the 2 s left
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    assert result.heatmap is None and "detector" not in result.pages
    # hotspots from the tissue alone, min_k of them graded: the decision from the patches
    assert len(result.hotspots) == cascade.config.budget.min_k == len(result.grades)
    assert all(np.isnan(h.heat_probs).all() for h in result.hotspots)
    assert result.source == "patches" and not result.degraded
    mask, (sx, sy) = result.tissue, result.tissue_scale
    for hotspot in result.hotspots:
        cx, cy = hotspot.box.center
        assert mask[int(cy // sy), int(cx // sx)], hotspot


def test_expired_budget_stops_the_detector_before_its_first_batch(
    cascade: Cascade, slide_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(0.0)
    budget = RunBudget(1000.0, 2, cascade.config.budget, clock=clock)
    slide_budget = budget.start_slide()
    clock.now = slide_budget.deadline  # the slide's share is already spent
    # the page chosen as if the estimate fitted: the pass itself then stops at the deadline
    monkeypatch.setattr(SlideBudget, "choose_detector_page", lambda self, base, *_, **__: base)
    result = cascade.grade_slide(slide_path, None, slide_budget, budget.costs)
    assert result.heatmap is not None and not result.heatmap.complete
    assert "detector stopped by the time budget" in result.problems()
    assert result.hotspots == [] and result.source == "prior"


def test_a_failing_classifier_costs_the_stage_not_the_slide(
    cascade: Cascade, slide_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr("stages.cascade.grade", broken)
    budget = RunBudget(3600, 1, cascade.config.budget)
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    assert result.source == "heatmap" and result.hotspots
    assert result.errors == ["classifier: RuntimeError: CUDA out of memory (simulated)"]
    assert result.degraded


def test_unreadable_slide_raises_slide_error(cascade: Cascade, tmp_path: Path) -> None:
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00garbage")
    budget = RunBudget(3600, 1, cascade.config.budget)
    with pytest.raises(SlideError, match=r"bad\.tif"):
        cascade.grade_slide(path, None, budget.start_slide(), budget.costs)


def test_saved_result_loads_back_equal(cascade: Cascade, slide_path: Path, tmp_path: Path) -> None:
    budget = RunBudget(3600, 1, cascade.config.budget)
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    loaded = SlideResult.load(result.save(tmp_path))
    assert loaded.summary() == result.summary()
    assert loaded.hotspots == result.hotspots
    np.testing.assert_array_equal(loaded.grades, result.grades)
    np.testing.assert_array_equal(loaded.tissue, result.tissue)
    assert loaded.tissue_scale == result.tissue_scale
    assert result.heatmap is not None and loaded.heatmap is not None
    for name in ("probs", "tissue", "visited"):
        np.testing.assert_array_equal(getattr(loaded.heatmap, name), getattr(result.heatmap, name))
    assert (loaded.heatmap.scale, loaded.heatmap.page, loaded.heatmap.complete) == (
        result.heatmap.scale,
        result.heatmap.page,
        result.heatmap.complete,
    )


def test_windows_are_read_ahead_only_as_far_as_the_detector_can_use_them(
    cascade: Cascade,
) -> None:
    costs = RunBudget(1.0, 1, cascade.config.budget).costs
    window = cascade.config.detector.window
    costs.detector.update(0.01 / (window**2 / 1e6))  # 10 ms a window
    fraction = cascade.config.budget.detector_fraction
    # the detector's share of 1.01 s pays for ⌊101 × fraction⌋ windows of 3 × window² bytes
    assert cascade.read_ahead_bytes(1.01, costs) == int(101 * fraction) * 3 * window**2
    assert cascade.read_ahead_bytes(0.0, costs) == 0
    assert cascade.read_ahead_bytes(1e6, costs) == READ_AHEAD_BYTES  # capped


@pytest.fixture(scope="module")
def flat_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A 9,000 x 9,000 px TIFF of one page (81 Mpx: over the tissue mask's cap of 64 Mpx, as a
    conversion that forgot the pyramid writes it), glass with a 4,000 px piece of tissue holding
    two grade-3 lesions; and its µm/pixel."""
    spec = sample_specs(1, 5, SynthConfig(size_range=(4000, 4000)))[0]
    assert [lesion.grade for lesion in spec.lesions] == [3, 3]
    path = tmp_path_factory.mktemp("flat") / "flat.tif"
    write_sparse_canvas(path, 9000, 9000, spec.mpp, spec, (2500, 2500), pyramid=False)
    return path, spec.mpp


def test_a_single_page_over_the_cap_is_graded_on_the_levels_it_lacks(
    cascade: Cascade, flat_slide: tuple[Path, float]
) -> None:
    path, mpp = flat_slide
    budget = RunBudget(3600, 1, cascade.config.budget)
    prepared = cascade.prepare(path, mpp)
    # page 0 and its halvings to 281 px (8.4 µm/px), read by shrinking page 0
    assert [p.size[0] for p in prepared.slide.pages] == [9000, 4500, 2250, 1125, 562, 281]
    assert prepared.mask_page == prepared.detector_page == 5  # TINY: tissue 32, detector 8 µm/px
    assert prepared.mask_reads.pixels == (281 * 32) ** 2  # page 0 decoded once for the mask
    result = cascade.grade_slide(path, mpp, budget.start_slide(), budget.costs, prepared)
    assert result.source == "patches" and not result.degraded
    assert result.pages == {"tissue": 5, "detector_base": 5, "detector": 5, "classifier": 1}
    assert result.tissue is not None and result.tissue.any()
    assert result.heatmap is not None and result.heatmap.windows > 0
    assert len(result.grades) == len(result.hotspots) > 0
    # the mask's decoding is charged to the slide and measured for the next ones
    assert result.seconds["decode"] > 0 and result.decoded_mpx > (281 * 32) ** 2 / 1e6
    assert budget.costs.decode.count == 1


def test_the_tissue_decodes_what_its_share_of_the_slide_pays_for(cascade: Cascade) -> None:
    costs = RunBudget(1.0, 1, cascade.config.budget).costs
    costs.decode.update(0.01)  # 100 Mpx a second
    assert cascade.config.budget.tissue_fraction == 0.25
    assert cascade.tissue_pixels(100.0, costs) == pytest.approx(2.5e9)  # 25 s of 100 s


def test_a_short_budget_samples_a_page_too_costly_to_shrink(
    cascade: Cascade, flat_slide: tuple[Path, float], caplog: pytest.LogCaptureFixture
) -> None:
    """The slide's 100 s pay for 20 Mpx at 1.25 s a megapixel, not the 81 Mpx of page 0: one
    512-px block in 3 x 3 is decoded for the mask (6 x 6 of 18 x 18 blocks), and the slide is
    still graded."""
    path, mpp = flat_slide
    budget, _ = _frozen_run(cascade, 100.0)
    budget.costs.decode.update(1.25)
    with caplog.at_level(logging.INFO, logger="stages.slide"):
        result = cascade.grade_slide(path, mpp, budget.start_slide(), budget.costs)
    assert "flat.tif: page 0 sampled, one 512-px block in 3 x 3 (36 blocks)" in caplog.text
    assert result.source == "patches" and result.tissue is not None and result.tissue.any()
    assert budget.costs.decode.count == 2  # the sample's 36 blocks measured too
