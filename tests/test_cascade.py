"""One slide through the cascade in-process: budget-driven choices and stage failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FakeClock

from stages.budget import RunBudget
from stages.cascade import Cascade, SlideResult
from stages.config import load_assets
from stages.slide import SlideError


@pytest.fixture(scope="module")
def cascade(assets: Path) -> Cascade:
    return Cascade(load_assets(assets, torch.device("cpu")))


def test_generous_budget_uses_the_configured_pages(cascade: Cascade, slide_path: Path) -> None:
    budget = RunBudget(3600, 1, cascade.config.budget)
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    assert result.pages["detector"] == 4  # 0.22–0.27 µm/px × 16 is nearest 4 µm/px
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


def test_small_allotment_moves_the_detector_to_a_coarser_page(
    cascade: Cascade, slide_path: Path
) -> None:
    clock = FakeClock(0.0)  # frozen: every measured cost is 0, only the estimates matter
    budget = RunBudget(2.0, 1, cascade.config.budget, clock=clock)
    budget.costs.detector.update(100.0)  # pretend the detector costs 100 s per megapixel
    result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
    assert result.pages["detector"] > 4


def test_expired_budget_stops_the_detector_and_grades_min_k_only(
    cascade: Cascade, slide_path: Path
) -> None:
    clock = FakeClock(0.0)
    budget = RunBudget(1000.0, 2, cascade.config.budget, clock=clock)
    slide_budget = budget.start_slide()
    clock.now = slide_budget.deadline  # the slide's share is already spent
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
