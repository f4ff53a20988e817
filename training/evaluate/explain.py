"""Held-out evaluation that explains its score: ``python -m training.evaluate``.

``python -m training.evaluate --test DIR [--train-set DIR] [--assets assets] [--out DIR]
[--device cpu] [--curve] [--publish DIR]``

``--test`` is a test-layout folder of held-out slides. Each row below is one class per slide,
scored with the competition's weighted class score:

* ``cascade``, ``detector only`` (stage 2 off), ``always 1``: ``main.py``'s run and its
  baselines (:mod:`training.evaluate.heldout`);
* ``exhaustive``: the same classifier on every tissue tile (:mod:`training.bench.exhaustive`,
  its own process), the class from the decision refitted for tiles, as ``make benchmark`` does
  (:func:`training.bench.runner.fit_exhaustive_decision`: the exhaustive run's top tiles on
  ``--fit-set``, by default 32 realistic slides of seed 3005 generated into ``OUT/fit/data``),
  on the ``budget.max_k`` tiles most likely
  to hold a lesion (the cascade's decision, fitted on 16 patches a slide, reads 32 top tiles of
  hundreds as far more confident than they are);
* ``oracle hotspots`` and ``oracle grades``, when the folder has the generator's
  ``truth_lesions.csv`` and ``truth_slides.csv``: stage 2 and the decision given a perfect
  stage 1, and stage 1's hotspots and the decision given a perfect stage 2
  (:mod:`training.evaluate.truth`).

The headline scores are against the written labels (``test_labels.csv``), as the competition
scores; with the truth, every row is scored against the true labels beside them (the realistic
cohort writes 5 % of its test labels one grade off), and the report adds the cascade's confusion
against the true labels, the recall of each slide's worst lesion among the graded hotspots by
size and grade, and the scores by centre (the held-out centre, C07, apart).

``--train-set``: a train-layout folder of held-out slides, for the hotspot recall@k of its
annotated squares. ``--curve``: the score–time curve (:mod:`training.evaluate.curve`), written
to ``OUT/score_time_curve.md`` and ``.png`` (``--publish DIR`` copies both to ``DIR``). Every
figure goes to ``OUT/evaluation.json``; the report is printed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stages.classifier import grade, read_patches
from stages.config import Assets, load_assets
from stages.metric import confusion_matrix, format_confusion, score
from stages.result import SlideResult
from stages.runtime import METADATA_NAME
from stages.slide import Slide
from stages.submission import classes_by_filename, read_metadata, read_table
from training.bench.modes import Mode
from training.bench.publish import publish
from training.bench.runner import fit_exhaustive_decision, run_mode
from training.cli import command_parser, setup_logging
from training.data.synthetic.cohort import HELD_OUT
from training.evaluate.curve import (
    CURVE_NAME,
    curve_markdown,
    exhaustive_classes,
    plot_curve,
    score_time_curve,
)
from training.evaluate.heldout import heldout_classes, recall_scores, run_results
from training.evaluate.truth import (
    centre_table,
    oracle_centres,
    oracle_grades_class,
    oracle_hotspots_class,
    read_truth,
    worst_lesion_recall,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: The rows of the score table, in order: key → label.
ROWS = {
    "cascade": "cascade",
    "detector_only": "detector only (stage 2 off)",
    "always_1": "always 1",
    "exhaustive": "exhaustive (every tissue tile)",
    "oracle_hotspots": "oracle hotspots (true lesion centres)",
    "oracle_grades": "oracle grades (true grade under each hotspot)",
}
#: The rows the table by centre shows (evaluation.json has them all).
CENTRE_ROWS = ("cascade", "detector_only", "exhaustive")


def grade_at(assets: Assets, path: Path, mpp: float | None, centres: np.ndarray) -> np.ndarray:
    """``(n, 4)`` float32 stage-2 probabilities of the patches centred on the ``(n, 2)`` page-0
    ``centres`` of the slide at ``path``, read from the classifier's page and graded as
    :meth:`stages.cascade.Cascade.grade_slide` reads and grades its hotspots."""
    cfg = assets.config
    if not len(centres):
        return np.zeros((0, cfg.classifier.classes), np.float32)
    with Slide(path, mpp, cfg.default_mpp, cfg.tissue.max_page_pixels) as slide:
        page = slide.page_for_mpp(cfg.classifier.target_mpp)
        patches = read_patches(slide, [tuple(c) for c in centres], page, cfg.classifier.patch)
    return grade(assets.classifier, patches, cfg.classifier, assets.device, assets.autocast)


def oracle_classes(
    test: Path,
    results: Sequence[SlideResult],
    assets_dir: Path,
    device: str,
    lesions: pd.DataFrame,
) -> dict[str, list[int]]:
    """``oracle_hotspots`` and ``oracle_grades`` classes of the slides of ``main.py``'s
    ``results`` on ``test`` (in order; :mod:`training.evaluate.truth`)."""
    assets = load_assets(assets_dir, torch.device(device), "auto")
    decision = assets.config.decision
    metadata = read_metadata(test / METADATA_NAME)
    mpps = dict(zip(metadata["filename"], metadata["resolution"], strict=True))
    hotspots, grades = [], []
    for result in results:
        name = result.filename
        mine = lesions[lesions["filename"] == name]
        mpp = mpps.get(name, float("nan"))
        probs = grade_at(
            assets, test / name, mpp if mpp == mpp else None, oracle_centres(result, mine)
        )
        hotspots.append(oracle_hotspots_class(result, probs, decision))
        grades.append(oracle_grades_class(result, mine, decision))
    return {"oracle_hotspots": hotspots, "oracle_grades": grades}


def score_rows(
    classes: Mapping[str, list[int]], written: list[int], true: list[int] | None
) -> dict[str, dict[str, float]]:
    """Method → ``{"written": score[, "true": score]}`` of each method's classes."""
    rows = {}
    for method, predicted in classes.items():
        rows[method] = {"written": score(written, predicted)}
        if true is not None:
            rows[method]["true"] = score(true, predicted)
    return rows


def evaluate(
    test: Path,
    assets: Path,
    out: Path,
    device: str,
    train_set: Path | None = None,
    curve: bool = False,
    fit_set: Path | None = None,
    exhaustive: bool = True,
) -> dict:
    """Every figure of the module doc: ``main.py`` and the exhaustive baseline (unless not
    ``exhaustive``) on ``test`` (runs under ``out``), the truth's rows and tables when ``test``
    has them, the recall on ``train_set`` if given, the score–time curve with ``curve`` (which
    needs ``exhaustive``)."""
    figures = heldout_classes(test, assets, out, device)
    names = figures["filenames"]
    written_by_name = classes_by_filename(read_table(test / "test_labels.csv"))
    written = [written_by_name[n] for n in names]
    if exhaustive:
        run_mode(test, out / "exhaustive", assets, Mode("exhaustive", exhaustive=True), device)
        refit = fit_exhaustive_decision(out, assets, device, data=fit_set)
        exhaustive_run = out / "exhaustive"
        figures["classes"]["exhaustive"] = exhaustive_classes(
            exhaustive_run, names, refit, run_results(exhaustive_run, names)
        )
    truth = read_truth(test)
    true_by_name, true = None, None
    if truth is not None:
        lesions, slides = truth
        true_by_name = dict(zip(slides["filename"], slides["label"].astype(int), strict=True))
        true = [int(true_by_name[n]) for n in names]
        results = run_results(out, names)
        figures["classes"] |= oracle_classes(test, results, assets, device, lesions)
        by_name = {m: dict(zip(names, c, strict=True)) for m, c in figures["classes"].items()}
        figures |= {
            "true_labels": np.bincount(true, minlength=4).tolist(),
            "labels_written_off": int(sum(w != t for w, t in zip(written, true, strict=True))),
            "worst_lesion_recall": worst_lesion_recall(lesions, results).to_dict("records"),
            "by_centre": centre_table(slides, by_name, HELD_OUT).to_dict("records"),
        }
    figures["scores"] = score_rows(figures["classes"], written, true)
    figures["confusion_cascade"] = confusion_matrix(written, figures["classes"]["cascade"]).tolist()
    figures["confusion_detector_only"] = confusion_matrix(
        written, figures["classes"]["detector_only"]
    ).tolist()
    if true is not None:
        figures["confusion_cascade_true"] = confusion_matrix(
            true, figures["classes"]["cascade"]
        ).tolist()
    if train_set is not None:
        figures |= recall_scores(train_set, assets, out, device)
    if curve:
        runs = {"cascade": out, "exhaustive": out / "exhaustive"}
        points = score_time_curve(test, assets, out / "curve", device, runs, true_by_name, refit)
        (out / f"{CURVE_NAME}.md").write_text(curve_markdown(points, len(names)) + "\n")
        plot_curve(points, out / f"{CURVE_NAME}.png")
        figures["curve"] = points.to_dict("records")
    return figures


def _table(records: list[dict], digits: int = 3) -> str:
    """Records as a plain-text table, floats to ``digits`` decimals."""
    return pd.DataFrame(records).to_string(index=False, float_format=lambda v: f"{v:.{digits}f}")


def _centre_columns(row: dict) -> dict:
    """A row of the table by centre with only the :data:`CENTRE_ROWS` methods' columns."""
    return {k: v for k, v in row.items() if k.split(" ")[0] in ("group", "slides", *CENTRE_ROWS)}


def report(figures: dict) -> str:
    """The figures as the text the command prints."""
    truth = "true_labels" in figures
    lines = [
        f"held-out test set: {figures['slides']} slides, written labels 0-3 {figures['labels']}, "
        f"main.py {figures['seconds']:.0f} s, peak {figures['peak_mb']:.0f} MB, "
        f"{figures['graded_per_slide']:.1f} patches graded per slide",
    ]
    if truth:
        lines.append(
            f"true labels 0-3 {figures['true_labels']}: {figures['labels_written_off']} of "
            f"{figures['slides']} labels written off the truth"
        )
    width = max(map(len, ROWS.values())) + 2
    lines += [
        "",
        "score against the written labels (the headline, as the competition scores)"
        + (" and against the true labels:" if truth else ":"),
        f"{'':<{width}}{'written':>9}" + (f"{'true':>9}" if truth else ""),
    ]
    for key, label in ROWS.items():
        if key in figures["scores"]:
            row = figures["scores"][key]
            true = f"{row['true']:>9.4f}" if "true" in row else ""
            lines.append(f"{label:<{width}}{row['written']:>9.4f}{true}")
    lines += [
        "",
        "confusion, cascade (rows written label, columns predicted):",
        format_confusion(np.array(figures["confusion_cascade"])),
    ]
    if truth:
        lines += [
            "confusion, cascade against the true labels:",
            format_confusion(np.array(figures["confusion_cascade_true"])),
        ]
    lines += [
        "confusion, detector only (rows written label):",
        format_confusion(np.array(figures["confusion_detector_only"])),
    ]
    if truth:
        recall = figures["worst_lesion_recall"]
        lines += [
            "",
            "worst lesion of each slide (of its true grade) hit by a graded hotspot's centre:",
            _table(recall),
            "",
            "score by centre (C07 only in the test split; columns: written labels, '… true': "
            "true labels):",
            _table([_centre_columns(row) for row in figures["by_centre"]]),
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
    if "curve" in figures:
        lines += [
            "",
            "score and seconds per slide (each slide's own seconds; start-up left out) as the "
            "budget grows:",
            _table(figures["curve"]),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.evaluate", __doc__)
    parser.add_argument("--test", type=Path, required=True, help="held-out test-layout folder")
    parser.add_argument("--train-set", type=Path, help="held-out train-layout folder (recall)")
    parser.add_argument("--assets", type=Path, default=REPO / "assets")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "evaluation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--fit-set",
        type=Path,
        help="labelled test-layout folder the exhaustive row's decision is fitted on (default: "
        "32 realistic slides of seed 3005 generated into OUT/fit/data)",
    )
    parser.add_argument("--curve", action="store_true", help="the score-time curve")
    parser.add_argument("--publish", type=Path, help="copy the curve's table and plot here")
    args = parser.parse_args(argv)
    if args.publish is not None and not args.curve:
        parser.error("--publish copies the curve: it needs --curve")
    setup_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    figures = evaluate(
        args.test, args.assets, args.out, args.device, args.train_set, args.curve, args.fit_set
    )
    (args.out / "evaluation.json").write_text(json.dumps(figures, indent=2) + "\n")
    if args.publish is not None:
        publish([args.out / f"{CURVE_NAME}.md", args.out / f"{CURVE_NAME}.png"], args.publish)
    print(report(figures))
    return 0
