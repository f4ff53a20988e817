"""Score the shipped cascade on held-out generated slides, beside its baselines.

``python -m training.evaluate --test DIR [--train-set DIR] [--assets assets] [--out DIR]``

``--test`` is a test-layout folder (``submission_format.csv``, ``test_labels.csv``, TIFs) whose
slides no step of training saw. ``main.py`` grades it exactly as the runtime would (its own
process, ``--save-heatmaps``); from the same run come, side by side:

* the cascade's weighted class score and confusion matrix;
* the detector-only score (stage 2 off): the decision from the heatmap hotspots alone, with the
  shipped heatmap-only weight and temper;
* the always-1 score.

``--train-set`` is a train-layout folder (annotations) of held-out slides: the cascade's
hotspots there give the recall@k of the annotated lesion squares (a square is hit when a
hotspot centre lies in it), for k up to ``budget.max_k``. Figures go to ``OUT/evaluation.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from stages.config import load_config
from stages.decision import decide_slide
from stages.hotspots import heat_evidence
from stages.metric import confusion_matrix, format_confusion, score
from stages.result import SlideResult
from stages.submission import classes_by_filename, classes_from_onehot, read_table
from training.cli import command_parser, setup_logging
from training.data.dataset import read_training_set
from training.data.targets import recall_at_k
from training.fit.decision import run_cascade
from training.process import run_main

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def detector_only_classes(results: list[SlideResult], assets: Path) -> np.ndarray:
    """``(N,)`` classes the shipped decision gives from each result's heatmap hotspots alone."""
    decision = load_config(assets).decision
    return np.array([decide_slide([], heat_evidence(r.hotspots), decision).cls for r in results])


def heldout_scores(test: Path, assets: Path, out: Path, device: str) -> dict:
    """Run main.py on the test folder and score it, with the baselines (module doc)."""
    status, seconds, peak_mb = run_main(test, out, assets, device)
    if status != 0:
        raise RuntimeError(f"main.py exited with {status}; see {out / 'log.txt'}")
    labels = read_table(test / "test_labels.csv")
    truth = classes_by_filename(labels)
    submission = read_table(out / "submission.csv")
    names = list(submission["filename"])
    y_true = np.array([truth[n] for n in names])
    cascade = classes_from_onehot(submission)
    results = [SlideResult.load(out / "maps" / f"{Path(n).stem}.npz") for n in names]
    heat_only = detector_only_classes(results, assets)
    return {
        "slides": len(names),
        "labels": np.bincount(y_true, minlength=4).tolist(),
        "seconds": seconds,
        "peak_mb": peak_mb,
        "score_cascade": score(y_true, cascade),
        "score_detector_only": score(y_true, heat_only),
        "score_always_1": score(y_true, np.ones_like(y_true)),
        "confusion_cascade": confusion_matrix(y_true, cascade).tolist(),
        "confusion_detector_only": confusion_matrix(y_true, heat_only).tolist(),
        "graded_per_slide": float(np.mean([len(r.grades) for r in results])),
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


def report(figures: dict) -> str:
    """The figures as the text the command prints."""
    lines = [
        f"held-out test set: {figures['slides']} slides, classes 0-3 {figures['labels']}, "
        f"main.py {figures['seconds']:.0f} s, peak {figures['peak_mb']:.0f} MB, "
        f"{figures['graded_per_slide']:.1f} patches graded per slide",
        "",
        f"{'':<28}{'score':>8}",
        f"{'cascade':<28}{figures['score_cascade']:>8.4f}",
        f"{'detector only (stage 2 off)':<28}{figures['score_detector_only']:>8.4f}",
        f"{'always 1':<28}{figures['score_always_1']:>8.4f}",
        "",
        "confusion, cascade (rows true, columns predicted):",
        format_confusion(np.array(figures["confusion_cascade"])),
        "confusion, detector only:",
        format_confusion(np.array(figures["confusion_detector_only"])),
    ]
    if "recall" in figures:
        ks = "  ".join(f"@{k} {v:.3f}" for k, v in figures["recall"].items())
        by_class = ", ".join(
            f"class {c} {v:.3f}" for c, v in figures["recall_max_k_by_class"].items()
        )
        lines += [
            "",
            f"hotspot recall of {figures['recall_squares']} annotated lesion squares on "
            f"{figures['recall_slides']} held-out train-layout slides: {ks}",
            f"recall@max_k by class: {by_class}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.evaluate", __doc__)
    parser.add_argument("--test", type=Path, required=True, help="held-out test-layout folder")
    parser.add_argument("--train-set", type=Path, help="held-out train-layout folder (recall)")
    parser.add_argument("--assets", type=Path, default=REPO / "assets")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "evaluation")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    setup_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    figures = heldout_scores(args.test, args.assets, args.out, args.device)
    if args.train_set is not None:
        figures |= recall_scores(args.train_set, args.assets, args.out, args.device)
    (args.out / "evaluation.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(report(figures))
    return 0
