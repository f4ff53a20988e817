"""Fit the slide decision, and the budget's cost guesses, on the real cascade's validation runs.

``python -m training.fit.decision DATA_DIR CACHE DETECTOR_DIR CLASSIFIER_DIR OUT [--folds 4]``

1. The trained stages are assembled into staging assets and the real cascade
   (:class:`stages.cascade.Cascade`) grades the validation slides (the cache's ``--val-fold``,
   never seen by either network) with an unlimited budget, so that ``budget.max_k`` hotspots
   are graded. Each :class:`~stages.result.SlideResult` is saved under ``OUT/results``.
2. :class:`~stages.decision.DecisionConfig` (prior, weights, tempers; and the heatmap-only
   weight and temper, fitted on the same slides with the patches removed) is fitted by
   minimising the slides' log-loss (a proper scoring rule: calibrated slide probabilities make
   the least-expected-cost class the right answer), lightly pulled toward the defaults.
3. The score of that recipe is measured by cross-validation over the validation slides: fitted on
   all folds but one, scored on the one left out; the final fit uses them all.
4. The costs (seconds per graded patch, per detector megapixel…) become the budget's starting
   guesses. They must be the runtime's, a CPU's, whatever device graded the validation slides
   in step 1: they are measured by the cascade as ``main.py`` runs it on a CPU (its ``auto``
   precision, the detector frozen, the networks warmed up) on the first :data:`COST_SLIDES`
   validation slides (:func:`runtime_costs`).

A validation slide whose TIF is not in ``DATA_DIR`` (DrivenData's light files only: a cache
built with ``--source light``) is not graded by the cascade in step 1: its heatmap and hotspots
come from the cached detector page (:meth:`training.data.cache.CachedSlide.hotspots`, the
cascade's own code), and its graded patches are the top ``budget.max_k`` hotspots among the
places whose patch lies inside a usable crop of its squares (:func:`training.fit.crops
.read_from_crops`): the hotspots outside every crop, which the runtime would grade, are not
graded (how many is written as ``crop_hotspots_inside``, the share of the runtime's hotspots the
crops hold). Step 4 then measures the costs on the slides that have TIFs; with none, the
preset's cost guesses stay (logged). ``OUT/crops.csv`` lists such slides' counts.

Writes ``OUT/decision.json`` (the decision and budget configs, the cascade they belong to, the
metrics) for :mod:`training.pack.export`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from stages.budget import RunBudget
from stages.cascade import Cascade, grade_or_fallback
from stages.classifier import PatchClassifier, grade
from stages.config import load_assets
from stages.decision import DecisionConfig, decide, decide_slide, slide_probabilities
from stages.detector import build_detector
from stages.hotspots import heat_evidence
from stages.metric import N_CLASSES, score
from stages.nets import pick_precision
from stages.result import SlideResult
from training.cli import command_parser, setup_logging
from training.data.cache import Cache, CachedSlide
from training.fit.common import command_line
from training.fit.crops import inside, light_items, read_from_crops
from training.stageio import load_stage_model, read_stage, save_stage, stage_cascade, write_assets

log = logging.getLogger(__name__)

#: Strength of the pull toward the default parameters (per parameter, in log units).
RIDGE = 0.01
#: Validation slides the budget's cost guesses are measured on, on the CPU.
COST_SLIDES = 4


@dataclass(frozen=True)
class Evidence:
    """What the cascade gave on one slide: ``grades`` ``(k, 4)`` (graded patches) and ``heat``
    ``(m, 4)`` (heatmap class probabilities at the hotspots), and the true ``label``."""

    filename: str
    grades: np.ndarray
    heat: np.ndarray
    label: int

    @classmethod
    def of(cls, result: SlideResult, label: int) -> Evidence:
        heat = heat_evidence(result.hotspots)
        return cls(result.filename, np.asarray(result.grades, np.float64), heat, label)


def run_cascade(
    assets: Path,
    paths: Sequence[Path],
    mpps: Sequence[float | None],
    out: Path | None,
    device: torch.device,
    precision: str = "float32",
    frozen: bool = False,
) -> tuple[list[SlideResult], dict[str, float]]:
    """Grade ``paths`` with the cascade of ``assets`` (loaded on ``device`` in ``precision``,
    ``frozen`` as :func:`stages.config.load_assets` says; its networks warmed up) and an
    unlimited budget (every slide gets ``budget.max_k`` hotspots graded); save each result under
    ``out`` unless it is None. Returns the results and the measured costs (``patch_s``,
    ``batch_s``, ``detector_mpx_s``, ``hotspots_mcell_s``, ``prepare_s``)."""
    loaded = load_assets(assets, device, precision, frozen)
    cascade = Cascade(loaded)
    cascade.warm_up()  # as the runtime does: the first slide's costs without the first calls'
    budget = RunBudget(1e9, len(paths), loaded.config.budget)
    prior = decide_slide([], [], loaded.config.decision)
    results = []
    for path, mpp in tqdm(list(zip(paths, mpps, strict=True)), desc="cascade", unit="slide"):
        # graded like main.py: a slide that cannot be graded gets the fallback
        result = grade_or_fallback(cascade, path, mpp, budget.start_slide(), budget.costs, prior)
        budget.finish_slide()
        if result.source == "fallback":
            log.error("%s: %s", path.name, "; ".join(result.errors))
        if out is not None:
            result.save(out)
        results.append(result)
    costs = {
        "patch_s": budget.costs.patch.value,
        "batch_s": budget.costs.batch.value,
        "detector_mpx_s": budget.costs.detector.value,
        "hotspots_mcell_s": budget.costs.hotspots.value,
        "prepare_s": budget.costs.prepare.value,
    }
    return results, costs


def runtime_costs(
    assets: Path, paths: Sequence[Path], mpps: Sequence[float | None], slides: int = COST_SLIDES
) -> dict[str, float]:
    """The costs of :func:`run_cascade` as the runtime meets them: the cascade of ``assets`` on
    the CPU in ``main.py``'s default precision (``auto``), its detector frozen, on the first
    ``slides`` of ``paths``."""
    cpu = torch.device("cpu")
    _, costs = run_cascade(assets, paths[:slides], mpps[:slides], None, cpu, "auto", frozen=True)
    return costs


def crop_evidence(
    assets: Path,
    cache: Cache,
    data: Path,
    filenames: Sequence[str],
    labels: dict[str, int],
    device: torch.device,
) -> tuple[list[Evidence], pd.DataFrame]:
    """The evidence of the cached slides ``filenames`` that have light files only (module doc),
    the cascade of ``assets`` on ``device``; and per slide its counts: ``hotspots`` (the
    runtime's), ``inside`` (of those, lying inside a usable crop), ``graded`` (the hotspots
    restricted to the crops, graded) and ``crops``."""
    loaded = load_assets(assets, device)
    config = loaded.config
    items = light_items(data, cache.settings["cache"]["y_flip"])
    evidence, counts = [], []
    for name in tqdm(filenames, desc="crops", unit="slide"):
        try:
            if name not in items:
                raise FileNotFoundError(f"neither its TIF nor its light files are in {data}")
            heatmap, hotspots = CachedSlide(cache, name).hotspots(
                loaded.detector, config, device, loaded.autocast
            )
            page = int(cache.row(name)["classifier_page"])
            graded, patches, rects = read_from_crops(
                items[name], heatmap, config, page, config.classifier.patch, config.budget.max_k
            )
        except Exception as exc:  # an unreadable slide loses its own evidence only
            log.error("%s: left out of the decision fit: %s: %s", name, type(exc).__name__, exc)
            continue
        grades = grade(loaded.classifier, patches, config.classifier, device, loaded.autocast)
        evidence.append(Evidence(name, grades.astype(np.float64), heat_evidence(hotspots),
                                 labels[name]))  # fmt: skip
        counts.append({"filename": name, "label": labels[name], "hotspots": len(hotspots),
                       "inside": inside(hotspots, rects), "graded": len(graded),
                       "crops": len(rects)})  # fmt: skip
    return evidence, pd.DataFrame(counts)


# -- the fit -----------------------------------------------------------------------------------


def _pack(config: DecisionConfig, heat_only: bool) -> np.ndarray:
    prior = np.log(np.asarray(config.prior))
    if heat_only:
        return np.concatenate([prior[1:] - prior[0], np.log(config.heat_only())])
    values = [config.patch_weight, config.heat_weight, config.patch_temper, config.heat_temper]
    return np.concatenate([prior[1:] - prior[0], np.log(values)])


def _unpack(theta: np.ndarray, base: DecisionConfig, heat_only: bool) -> DecisionConfig:
    prior = np.exp(np.concatenate([[0.0], theta[:3]]))
    prior = tuple(float(p) for p in prior / prior.sum())
    values = [float(v) for v in np.exp(np.clip(theta[3:], -8, 8))]
    if heat_only:
        return replace(base, prior=prior, heat_only_weight=values[0], heat_only_temper=values[1])
    return replace(
        base,
        prior=prior,
        patch_weight=values[0],
        heat_weight=values[1],
        patch_temper=values[2],
        heat_temper=values[3],
    )


def probabilities(
    evidence: Sequence[Evidence], config: DecisionConfig, heat_only: bool = False
) -> np.ndarray:
    """``(N, 4)`` slide probabilities under ``config``; ``heat_only`` drops the patches (stage 2
    off)."""
    none = np.zeros((0, N_CLASSES))
    return np.array(
        [slide_probabilities(none if heat_only else e.grades, e.heat, config) for e in evidence]
    )


def decisions(probs: np.ndarray) -> np.ndarray:
    """``(N,)`` least-expected-cost classes of ``(N, 4)`` probabilities."""
    return np.array([decide(p) for p in probs], np.int64)


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true classes."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1))))


def fit_decision(
    evidence: Sequence[Evidence], base: DecisionConfig, heat_only: bool = False
) -> DecisionConfig:
    """``base`` with prior, weights and tempers (only the prior and the heatmap-only pair with
    ``heat_only``) fitted to ``evidence`` by penalised log-loss (see the module doc)."""
    labels = np.array([e.label for e in evidence])
    start = _pack(base, heat_only)

    def objective(theta: np.ndarray) -> float:
        config = _unpack(theta, base, heat_only)
        probs = probabilities(evidence, config, heat_only)
        return log_loss(probs, labels) + RIDGE * float(np.sum((theta - start) ** 2))

    result = minimize(
        objective,
        start,
        method="Nelder-Mead",
        options={"maxiter": 3000, "xatol": 1e-3, "fatol": 1e-6},
    )
    return _unpack(result.x, base, heat_only)


def cross_validate(
    evidence: Sequence[Evidence],
    base: DecisionConfig,
    folds: int,
    seed: int = 0,
    heat_only: bool = False,
    fit: bool = True,
) -> np.ndarray:
    """``(N,)`` out-of-fold decisions: each slide decided by a config fitted on the other folds
    (or ``base`` itself without ``fit``). Folds are stratified by label."""
    labels = np.array([e.label for e in evidence])
    out = np.zeros(len(evidence), np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held in splitter.split(np.zeros(len(labels)), labels):
        config = fit_decision([evidence[i] for i in train], base, heat_only) if fit else base
        out[held] = decisions(probabilities([evidence[i] for i in held], config, heat_only))
    return out


def sweep(
    evidence: Sequence[Evidence], config: DecisionConfig, name: str, values: Sequence[float]
) -> np.ndarray:
    """Scores of ``config`` with parameter ``name`` set to each of ``values`` (on the
    ``evidence`` it was fitted on: shows how flat the optimum is, not a held-out score)."""
    labels = np.array([e.label for e in evidence])
    heat_only = name.startswith("heat_only")
    return np.array(
        [
            score(
                labels, decisions(probabilities(evidence, replace(config, **{name: v}), heat_only))
            )
            for v in values
        ]
    )


def reliability(
    probs: np.ndarray, labels: np.ndarray, bins: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibration of ``(N, 4)`` probabilities, every class pooled: per bin of predicted
    probability, its mean, the observed frequency and the count (``(bins,)`` each)."""
    predicted = probs.ravel()
    observed = (labels[:, None] == np.arange(N_CLASSES)[None, :]).ravel().astype(float)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(predicted, edges) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    mean = np.bincount(index, predicted, bins) / np.maximum(count, 1)
    freq = np.bincount(index, observed, bins) / np.maximum(count, 1)
    return mean, freq, count


def fit_all(evidence: Sequence[Evidence], base: DecisionConfig, folds: int) -> tuple:
    """The final config (fitted on all the evidence) and the metrics of the recipe; the
    cross-validated ones only when every class present has at least two slides."""
    labels = np.array([e.label for e in evidence])
    fitted = fit_decision(evidence, base)
    fitted = fit_decision(evidence, fitted, heat_only=True)
    metrics = {
        "slides": float(len(evidence)),
        "fit_score": score(labels, decisions(probabilities(evidence, fitted))),
        "fit_log_loss": log_loss(probabilities(evidence, fitted), labels),
        "always_1_score": score(labels, np.ones_like(labels)),
    }
    folds = min(folds, int(np.bincount(labels)[np.unique(labels)].min()))
    if folds < 2:
        log.warning("decision: too few slides per class to cross-validate; no CV score")
        return fitted, metrics
    metrics |= {
        "cv_score": score(labels, cross_validate(evidence, base, folds)),
        "cv_score_unfitted": score(labels, cross_validate(evidence, base, folds, fit=False)),
        "cv_score_heat_only": score(labels, cross_validate(evidence, base, folds, heat_only=True)),
    }
    return fitted, metrics


def fit_stage(
    data: Path,
    cache_root: Path,
    detector_dir: Path,
    classifier_dir: Path,
    out: Path,
    folds: int = 4,
    device: str = "cpu",
) -> dict:
    """Steps 1–4 of the module doc; writes ``OUT/decision.json`` and returns its metrics."""
    started = time.perf_counter()
    cache = Cache.open(cache_root)
    detector = read_stage(detector_dir, "detector")
    classifier = read_stage(classifier_dir, "classifier")
    if detector["val_fold"] != classifier["val_fold"]:
        raise ValueError("the detector and the classifier were validated on different folds")
    fold = detector["val_fold"]
    cascade = replace(
        stage_cascade(classifier_dir, "classifier"),
        detector=stage_cascade(detector_dir, "detector").detector,
    )
    rows = cache.slides[cache.slides["fold"] == fold]
    labels = dict(zip(rows["filename"], rows["label"].astype(int), strict=True))
    has_tif = {name: (data / name).is_file() for name in rows["filename"]}
    tifs = [name for name, there in has_tif.items() if there]
    light = [name for name, there in has_tif.items() if not there]
    log.info("decision: %d validation slides graded from their TIFs, %d from their light "
             "files' crops", len(tifs), len(light))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="decision-assets-") as tmp:
        staging = write_assets(
            Path(tmp) / "assets",
            cascade,
            load_stage_model(detector_dir, "detector", build_detector(cascade.detector)),
            load_stage_model(classifier_dir, "classifier", PatchClassifier(cascade.classifier)),
        )
        mpp_of = dict(zip(rows["filename"], rows["mpp"].astype(float), strict=True))
        paths, mpps = [data / f for f in tifs], [mpp_of[f] for f in tifs]
        evidence, costs = [], None
        if tifs:
            results, _ = run_cascade(staging, paths, mpps, out / "results", torch.device(device))
            evidence = [Evidence.of(r, labels[r.filename]) for r in results]
            costs = runtime_costs(staging, paths, mpps)
        if light:
            more, counts = crop_evidence(staging, cache, data, light, labels, torch.device(device))
            evidence += more
            out.mkdir(parents=True, exist_ok=True)
            counts.to_csv(out / "crops.csv", index=False)
    fitted, metrics = fit_all(evidence, cascade.decision, folds)
    metrics |= {"tif_slides": float(len(tifs)), "crop_slides": float(len(light))}
    if light:
        share = counts["inside"].sum() / max(counts["hotspots"].sum(), 1)
        metrics |= {
            "crop_hotspots_inside": float(share),
            "crop_graded_mean": float(counts["graded"].mean()),
        }
    budget = cascade.budget
    if costs is None:
        log.warning("decision: no validation slide has its TIF; the budget keeps the preset's "
                    "cost guesses")  # fmt: skip
    else:
        budget = replace(
            budget,
            prior_patch_s=float(costs["patch_s"]),
            prior_batch_s=float(costs["batch_s"]),
            prior_detector_mpx_s=float(costs["detector_mpx_s"]),
            prior_prepare_s=float(costs["prepare_s"]),
            prior_hotspots_mcell_s=float(costs["hotspots_mcell_s"]),
        )
    final = replace(cascade, decision=fitted, budget=budget)
    cost_dtype = str(pick_precision(torch.device("cpu")) or torch.float32).removeprefix("torch.")
    info = {
        "metrics": metrics | {f"cost_{k}": float(v) for k, v in (costs or {}).items()},
        "costs_measured_on": {
            "device": "cpu",
            "precision": cost_dtype,
            "slides": min(len(tifs), COST_SLIDES),
        }
        if tifs
        else None,
        "data": str(data),
        "command": command_line(),
        "val_fold": fold,
        "labels": labels,
        "seconds": time.perf_counter() - started,
    }
    save_stage(out, "decision", None, final, info)
    log.info("decision: %s", {k: round(v, 4) for k, v in metrics.items()})
    log.info("fitted: %s", dataclasses.asdict(fitted))
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.fit.decision", __doc__)
    parser.add_argument("data", type=Path, help="the training folder (TIFs, light files)")
    parser.add_argument("cache", type=Path)
    parser.add_argument("detector", type=Path, help="output folder of training.fit.detector")
    parser.add_argument("classifier", type=Path, help="output folder of training.fit.classifier")
    parser.add_argument("out", type=Path)
    parser.add_argument("--folds", type=int, default=4, help="cross-validation folds")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    setup_logging()
    fit_stage(
        args.data, args.cache, args.detector, args.classifier, args.out, args.folds, args.device
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
