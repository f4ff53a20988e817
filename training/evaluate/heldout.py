"""The shipped cascade on held-out generated slides: its run, its baselines, its hotspot recall.

:func:`heldout_classes`: ``main.py`` grades a test-layout folder (``submission_format.csv``,
``test_labels.csv``, TIFs) whose slides no step of training saw, exactly as the runtime would
(its own process, ``--save-heatmaps``); from the same run come the classes of the cascade, of the
detector alone (stage 2 off: the decision from the heatmap hotspots, with the shipped
heatmap-only weight and temper) and of always answering 1.

:func:`recall_scores`: the cascade's hotspots on a train-layout folder (annotations) of held-out
slides give the recall@k of the annotated lesion squares (a square is hit when a hotspot centre
lies in it), for k up to ``budget.max_k``.

``python -m training.evaluate`` (:mod:`training.evaluate.explain`) scores them, beside the
exhaustive and oracle rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stages.config import load_config
from stages.decision import decide_slide
from stages.hotspots import heat_evidence
from stages.result import SlideResult
from stages.submission import classes_by_filename, classes_from_onehot, read_table
from training.data.dataset import read_training_set
from training.data.targets import recall_at_k
from training.fit.decision import run_cascade
from training.process import run_main

log = logging.getLogger(__name__)


def detector_only_classes(results: list[SlideResult], assets: Path) -> np.ndarray:
    """``(N,)`` classes the shipped decision gives from each result's heatmap hotspots alone."""
    decision = load_config(assets).decision
    return np.array([decide_slide([], heat_evidence(r.hotspots), decision).cls for r in results])


def run_results(run: Path, names: Sequence[str]) -> list[SlideResult]:
    """The :class:`SlideResult` of each of the slides ``names`` (in order) that a run saved into
    ``run/maps`` (``main.py --save-heatmaps``, or an exhaustive run)."""
    return [SlideResult.load(run / "maps" / f"{Path(name).stem}.npz") for name in names]


def heldout_classes(test: Path, assets: Path, out: Path, device: str) -> dict:
    """Run main.py on the test folder into ``out``: its measurements, ``filenames`` (the
    submission's order), the written ``labels`` counts and ``classes`` (method → one class per
    filename) of the cascade, the detector alone and always 1 (module doc)."""
    status, seconds, peak_mb = run_main(test, out, assets, device)
    if status != 0:
        raise RuntimeError(f"main.py exited with {status}; see {out / 'log.txt'}")
    truth = classes_by_filename(read_table(test / "test_labels.csv"))
    submission = read_table(out / "submission.csv")
    names = list(submission["filename"])
    results = run_results(out, names)
    cascade = classes_from_onehot(submission)
    return {
        "slides": len(names),
        "labels": np.bincount([truth[n] for n in names], minlength=4).tolist(),
        "seconds": seconds,
        "peak_mb": peak_mb,
        "graded_per_slide": float(np.mean([len(r.grades) for r in results])),
        "filenames": names,
        "classes": {
            "cascade": cascade.tolist(),
            "detector_only": detector_only_classes(results, assets).tolist(),
            "always_1": [1] * len(names),
        },
    }


def recall_scores(train_set: Path, assets: Path, out: Path, device: str) -> dict:
    """Hotspot recall@k of the annotated lesion squares of a held-out train-layout folder."""
    slides = read_training_set(train_set)
    results, _ = run_cascade(
        assets,
        [s.path for s in slides],
        [s.mpp for s in slides],
        out / "recall",
        torch.device(device),
    )
    squares = [[a.box for a in s.annotations if a.annotation_class >= 1] for s in slides]
    centres = [np.array([h.box.center for h in r.hotspots]).reshape(-1, 2) for r in results]
    max_k = load_config(assets).budget.max_k
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, max_k) if k <= max_k})
    recall = recall_at_k(squares, centres, ks)
    by_class = {
        c: recall_at_k(
            [[a.box for a in s.annotations if a.annotation_class == c] for s in slides],
            centres,
            [max_k],
        )[max_k]
        for c in (1, 2, 3)
    }
    return {
        "recall_slides": len(slides),
        "recall_squares": sum(len(s) for s in squares),
        "recall": {str(k): v for k, v in recall.items()},
        "recall_max_k_by_class": {str(c): v for c, v in by_class.items()},
    }
