"""``python -m training.evaluate``: the seconds of the score–time curve, and (slow) the whole
evaluation on three tiny realistic slides, its rows equal to their definitions."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stages.config import load_assets, load_config
from stages.result import SlideResult
from training.bench.runner import fit_exhaustive_decision
from training.data.synthetic.cohort import COHORTS
from training.evaluate.curve import (
    curve_markdown,
    exhaustive_classes,
    plot_curve,
    score_time_curve,
    seconds_per_slide,
)
from training.evaluate.explain import ROWS, grade_at, main
from training.evaluate.heldout import run_results
from training.evaluate.truth import (
    graded_centres,
    oracle_grades_class,
    read_truth,
    worst_lesion_recall,
)


def test_seconds_per_slide_take_the_measured_seconds_never_the_extrapolation() -> None:
    results = [
        SlideResult("a.tif", 0, (1.0, 0, 0, 0), "patches", seconds={"slide": 2.0, "total": 1.5}),
        # a sampled exhaustive slide: "slide" is extrapolated, "measured_s" what it took
        SlideResult("b.tif", 0, (1.0, 0, 0, 0), "patches",
                    seconds={"slide": 90.0, "total": 90.0, "measured_s": 3.0}),
        SlideResult("c.tif", 0, (1.0, 0, 0, 0), "patches", seconds={"total": 4.0}),
    ]  # fmt: skip
    assert seconds_per_slide(results) == 3.0
    assert math.isnan(seconds_per_slide([]))


@pytest.mark.slow
def test_evaluation_rows_and_curve_on_tiny_realistic_slides(
    generated: Callable[..., Path], assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = replace(COHORTS["realistic"], size_range=(3000, 4000))
    test = generated(3, 23, "test", config)
    fit = generated(3, 24, "test", config)
    out = tmp_path / "run"
    argv = ["--test", str(test), "--assets", str(assets), "--out", str(out), "--fit-set", str(fit)]
    assert main(argv) == 0
    figures = json.loads((out / "evaluation.json").read_text())
    assert list(figures["scores"]) == list(ROWS)
    assert all(set(row) == {"written", "true"} for row in figures["scores"].values())
    assert "score against the written labels (the headline" in capsys.readouterr().out

    lesions, slides = read_truth(test)
    names = figures["filenames"]
    results = [SlideResult.load(out / "maps" / f"{Path(n).stem}.npz") for n in names]
    decision = load_config(assets).decision
    expected = [
        oracle_grades_class(r, lesions[lesions["filename"] == r.filename], decision)
        for r in results
    ]
    assert figures["classes"]["oracle_grades"] == expected
    # the oracle hotspots' patches are read and graded as the cascade reads and grades its own
    graded = next(r for r in results if len(r.grades))
    loaded = load_assets(assets, torch.device("cpu"), "auto")
    probs = grade_at(loaded, test / graded.filename, None, graded_centres(graded))
    np.testing.assert_allclose(probs, graded.grades, atol=1e-2)
    recall = pd.DataFrame(figures["worst_lesion_recall"])
    pd.testing.assert_frame_equal(recall, worst_lesion_recall(lesions, results))
    assert [row["group"] for row in figures["by_centre"]][-2:] == ["seen centres", "all"]
    assert figures["by_centre"][-1]["cascade"] == figures["scores"]["cascade"]["written"]

    max_k = load_config(assets).budget.max_k
    true = dict(zip(slides["filename"], slides["label"], strict=True))
    runs = {"cascade": out, "exhaustive": out / "exhaustive"}
    # the exhaustive row's classes: the decision refitted on the fit set's tiles (its run kept)
    refit = fit_exhaustive_decision(out, assets, "cpu", data=fit)
    exhaustive = out / "exhaustive"
    assert figures["classes"]["exhaustive"] == exhaustive_classes(
        exhaustive, names, refit, run_results(exhaustive, names)
    )
    assert refit.decision != load_config(assets).decision
    curve = score_time_curve(
        test, assets, tmp_path / "curve", "cpu", runs, true, refit, (1, max_k), (4,)
    )
    assert curve[["method", "budget"]].values.tolist() == [
        ["cascade", "k=1"], ["cascade", f"k={max_k}"], ["exhaustive", "4 tiles"],
        ["exhaustive", "all tiles"],
    ]  # fmt: skip
    assert curve["score"].tolist()[1] == figures["scores"]["cascade"]["written"]
    assert curve["score"].tolist()[3] == figures["scores"]["exhaustive"]["written"]
    assert curve["graded_per_slide"].tolist()[0] <= 1 and curve["graded_per_slide"][2] <= 4
    assert curve_markdown(curve, 3).splitlines()[2].startswith("| method | budget |")
    assert plot_curve(curve, tmp_path / "curve.png").stat().st_size > 0
