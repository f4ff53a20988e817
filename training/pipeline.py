"""``make train``: data → cache → detector → hard negatives → classifier → decision → assets.

``python -m training.pipeline WORK ASSETS [--slides 128] [--seed 1000] [--data DIR] …``

Each step is the command a user would run by hand (see the README); this runs them in order,
seeded, and prints the time of each. Without ``--data`` it first generates ``--slides``
synthetic training slides (seed ``--seed``) into ``WORK/data``; with ``--data`` it trains on that
folder (the real TissueNet training layout, or any folder in it). Generation and the cache
resume where they stopped; the training steps run afresh (``--resume`` continues them from
their last checkpoints).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from training.cli import command_parser, setup_logging
from training.data.cache import CacheConfig, build_cache
from training.data.dataset import METADATA
from training.data.hard_negatives import mine_hard_negatives
from training.data.synthetic import SynthConfig, generate_dataset
from training.fit import classifier, detector
from training.fit.common import TrainOptions
from training.fit.decision import fit_stage
from training.pack.export import PRESETS, export, load_recipe

log = logging.getLogger(__name__)


def train(
    work: Path,
    assets: Path,
    data: Path | None = None,
    slides: int = 128,
    seed: int = 1000,
    recipe: str = "tiny",
    folds: int = 4,
    detector_options: TrainOptions = detector.DEFAULTS,
    classifier_options: TrainOptions = classifier.DEFAULTS,
    size_range: tuple[int, int] = SynthConfig().size_range,
) -> dict[str, float]:
    """Run every step; returns the seconds of each (and ``total``)."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str) -> None:
        seconds[name] = time.perf_counter() - started - sum(seconds.values())
        log.info("step %s done in %.0f s", name, seconds[name])

    if data is None:
        data = work / "data"
        if not (data / METADATA).is_file():
            generate_dataset(data, slides, seed, "train", SynthConfig(size_range=size_range))
        description = f"synthetic: training.data.synthetic --seed {seed} --slides {slides}"
    else:
        description = str(data)
    step("data")
    cascade = load_recipe(recipe)
    build_cache(data, work / "cache", cascade, CacheConfig(seed=seed), folds)
    step("cache")
    detector.train_detector(
        work / "cache", work / "detector", cascade, replace(detector_options, seed=seed)
    )
    step("detector")
    mine_hard_negatives(work / "cache", data, work / "detector")
    step("hard_negatives")
    classifier.train_classifier(
        work / "cache", work / "classifier", cascade, replace(classifier_options, seed=seed)
    )
    step("classifier")
    fit_stage(data, work / "cache", work / "detector", work / "classifier", work / "decision")
    step("decision")
    note = f"trained by make train on {description}"
    export(work, assets, note, description)
    step("export")
    seconds["total"] = time.perf_counter() - started
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.pipeline", __doc__)
    parser.add_argument("work", type=Path, help="folder for the data, cache and stage outputs")
    parser.add_argument("assets", type=Path, help="where the trained assets go")
    parser.add_argument("--data", type=Path, default=None, help="a training folder to use")
    parser.add_argument("--slides", type=int, default=128, help="synthetic slides to generate")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--config", default="tiny", help=f"{sorted(PRESETS)} or a JSON file")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--detector-epochs", type=int, default=detector.DEFAULTS.epochs)
    parser.add_argument("--detector-samples", type=int, default=detector.DEFAULTS.samples)
    parser.add_argument("--classifier-epochs", type=int, default=classifier.DEFAULTS.epochs)
    parser.add_argument("--classifier-samples", type=int, default=classifier.DEFAULTS.samples)
    parser.add_argument("--size-range", type=int, nargs=2, default=SynthConfig().size_range)
    parser.add_argument("--workers", type=int, default=-1, help="data loaders (-1: auto)")
    args = parser.parse_args(argv)
    setup_logging()
    seconds = train(
        args.work,
        args.assets,
        args.data,
        args.slides,
        args.seed,
        args.config,
        args.folds,
        replace(
            detector.DEFAULTS,
            epochs=args.detector_epochs,
            samples=args.detector_samples,
            workers=args.workers,
        ),
        replace(
            classifier.DEFAULTS,
            epochs=args.classifier_epochs,
            samples=args.classifier_samples,
            workers=args.workers,
        ),
        tuple(args.size_range),
    )
    for name, value in seconds.items():
        print(f"{name:>15}: {value / 60:6.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
