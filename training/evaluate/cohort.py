"""A labelled run seen as a cohort (the cohort review notebook): errors, budgets, stage 2's say.

Everything here reads what ``main.py --save-heatmaps`` wrote (:class:`stages.result.SlideResult`
files) and runs no network:

* :func:`cohort_table`: one row per slide with its true class, the cascade's class, the class the
  heatmap alone gives (stage 2 off) and the cost of each error;
* :func:`budget_sweep`: the score and the estimated seconds per slide if only the first k hotspots
  had been graded (the cascade grades hotspots best first and the decision pools them, so the
  first k of a run's grades are what a ``budget.max_k = k`` run grades; seconds are the run's own
  minus the patches not graded, at the run's measured seconds per patch);
* :func:`stage2_changes`: the slides where stage 2 changed stage 1's answer, better or worse;
* :func:`recall_by_class`: hotspot recall@k of the annotated squares of each class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stages.decision import DecisionConfig, decide_slide
from stages.geometry import Box
from stages.hotspots import heat_evidence
from stages.metric import ERROR_MATRIX, score
from stages.result import SlideResult
from stages.submission import classes_by_filename, read_table
from training.data.targets import recall_at_k


def load_run(run: Path) -> list[SlideResult]:
    """Every result saved in ``run``, in file-name order."""
    return [SlideResult.load(p) for p in sorted(run.glob("*.npz"))]


def heat_only_class(result: SlideResult, decision: DecisionConfig) -> int:
    """The class the decision gives from the result's heatmap hotspots alone."""
    return decide_slide([], heat_evidence(result.hotspots), decision).cls


def cohort_table(
    results: Sequence[SlideResult], labels: Path, decision: DecisionConfig
) -> pd.DataFrame:
    """Per slide: ``true``, ``cascade``, ``stage1`` (heatmap only), ``cost`` and ``stage1_cost``
    (the competition's error costs), ``source`` and ``graded``; worst error first."""
    truth = classes_by_filename(read_table(labels))
    rows = []
    for r in results:
        true, stage1 = truth[r.filename], heat_only_class(r, decision)
        rows.append(
            {
                "slide": r.filename,
                "true": true,
                "cascade": r.cls,
                "stage1": stage1,
                "cost": float(ERROR_MATRIX[true, r.cls]),
                "stage1_cost": float(ERROR_MATRIX[true, stage1]),
                "source": r.source,
                "graded": len(r.grades),
            }
        )
    frame = pd.DataFrame(rows)
    return frame.sort_values("cost", ascending=False, kind="stable").reset_index(drop=True)


def budget_sweep(
    results: Sequence[SlideResult], table: pd.DataFrame, decision: DecisionConfig, ks: Sequence[int]
) -> pd.DataFrame:
    """Per k: the score of the decisions from the first k hotspots (grades and heatmap), and the
    estimated mean seconds per slide (module doc)."""
    truth = dict(zip(table["slide"], table["true"], strict=True))
    y_true = np.array([truth[r.filename] for r in results])
    graded = sum(len(r.grades) for r in results)
    per_patch = sum(r.seconds.get("classifier", 0.0) for r in results) / max(graded, 1)
    total = np.array([r.seconds.get("total", 0.0) for r in results])
    rows = []
    for k in ks:
        classes = [
            decide_slide(r.grades[:k], heat_evidence(r.hotspots[:k]), decision).cls for r in results
        ]
        skipped = np.array([max(len(r.grades) - k, 0) for r in results])
        rows.append(
            {
                "k": k,
                "score": score(y_true, classes),
                "seconds": float(np.mean(total - skipped * per_patch)),
            }
        )
    return pd.DataFrame(rows)


def stage2_changes(table: pd.DataFrame) -> pd.DataFrame:
    """The slides where the cascade's class differs from stage 1's, with ``effect`` better or
    worse (by the error cost), best first."""
    changed = table[table["cascade"] != table["stage1"]].copy()
    changed["effect"] = np.where(changed["cost"] < changed["stage1_cost"], "better", "worse")
    changed.loc[changed["cost"] == changed["stage1_cost"], "effect"] = "same cost"
    gain = changed["stage1_cost"] - changed["cost"]
    return changed.assign(gain=gain).sort_values("gain", ascending=False).reset_index(drop=True)


def recall_by_class(
    squares: Sequence[Sequence[tuple[Box, int]]],
    results: Sequence[SlideResult],
    ks: Sequence[int],
) -> pd.DataFrame:
    """Hotspot recall@k of the annotated squares of each lesion class (rows: class 1–3, and
    all); ``squares`` per slide: (page-0 box, class), in the order of ``results``."""
    centres = [np.array([h.box.center for h in r.hotspots]).reshape(-1, 2) for r in results]
    rows = []
    for name, wanted in (("class 1", {1}), ("class 2", {2}), ("class 3", {3}), ("all", {1, 2, 3})):
        boxes = [[b for b, c in slide if c in wanted] for slide in squares]
        recall = recall_at_k(boxes, centres, list(ks))
        rows.append(
            {"squares": name, "n": sum(map(len, boxes)), **{f"@{k}": recall[k] for k in ks}}
        )
    return pd.DataFrame(rows)
