"""``make train``: data → cache → detector → hard negatives → classifier → decision → assets.

``python -m training.pipeline WORK ASSETS [--preset tiny|standard|FILE.json] [--data DIR]
[--source tif|light] [--by-centre] [--device D] …``

Each step is the command a user would run by hand (see the README); this runs them in order,
seeded, and prints the time of each. The two trainers run as those commands, each in a child
process (``python -m training.fit.detector …``) that this one waits for: with several devices
Lightning's DDP starts every further rank by running its process's command again, so each rank
re-runs the fit alone, while the steps that are not training (cache, hard negatives, decision,
export) run once, here, each after the step before it has finished and written its files.

Without ``--data`` it first generates ``--slides`` synthetic training slides (seed ``--seed``,
``--cohort``, ``--class-mix``, ``--size-range`` as in ``python -m training.data.synthetic``)
into ``WORK/data``; with ``--data`` it trains on that folder (the real TissueNet training
layout, or any folder in it). ``--preset`` picks the networks and the training defaults that go
with them (:mod:`training.presets`): ``tiny`` is ``make train``'s CPU preset, ``standard`` the
README's real-data preset for a GPU (5 folds, 40 epochs per stage, the README's samples and
batch sizes), a JSON file its cascade config and its training defaults (those it does not give:
``tiny``'s, logged); any option given on the command line overrides its default.
Generation and the cache resume where they stopped; the training steps run afresh
(``--resume`` continues them from their last checkpoints).

``--source light`` builds the cache from DrivenData's light files (:mod:`training.data.light`;
``python -m training.data.cache … --source light``), which generated slides then get beside
their TIFs. The cache and the later steps read a slide's TIF where ``--data`` has it and its
light files where not: the hard negatives (:mod:`training.fit.hard_negatives`) and the decision fit
(:mod:`training.fit.decision`) say how. A light-only folder thus trains the whole cascade; a
*mixed* one (light files everywhere, whole TIFs for a few slides) fits the decision on more of
the runtime's own evidence, and caches a slide from its TIF where it has one.
``--list-tifs N`` prints which N slides' TIFs help most, in order (:func:`tifs_to_download`: the
benign slides the classifier trains on, then the validation fold's), and exits.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from itertools import zip_longest
from pathlib import Path

from training.cli import command_parser, setup_logging
from training.data.cache import CacheConfig, build_cache
from training.data.cache.cli import add_reading_options
from training.data.dataset import METADATA, TrainSlide, assign_folds, read_training_set
from training.data.light.write import LightOptions
from training.data.synthetic import SynthConfig, generate_dataset
from training.data.synthetic.cohort import COHORTS, cohort_name
from training.data.synthetic.options import add_generator_options, config_from_args
from training.fit import classifier, detector
from training.fit.common import option_args
from training.fit.decision import fit_stage
from training.fit.hard_negatives import mine_hard_negatives
from training.pack.export import export
from training.presets import PRESETS, TrainOptions, load_preset

log = logging.getLogger(__name__)

#: Synthetic slides written at once while generating (a process each).
GENERATE_WORKERS = 2


def run_trainer(stage: str, cache: Path, out: Path, preset: str, options: TrainOptions) -> None:
    """Train ``stage`` (``detector`` or ``classifier``) with ``python -m training.fit.<stage>
    CACHE OUT --preset PRESET`` and ``options``, in a child process (module doc); returns once
    it has ended, having written ``OUT/<stage>.json``; raises
    :class:`subprocess.CalledProcessError` when it failed."""
    command = [sys.executable, "-m", f"training.fit.{stage}", str(cache), str(out)]
    command += ["--preset", preset, *option_args(options)]
    log.info("%s: %s", stage, shlex.join(command))
    subprocess.run(command, check=True)


def tifs_to_download(
    slides: list[TrainSlide], fold_of: dict[str, int], val_fold: int, n: int
) -> list[str]:
    """The filenames of up to ``n`` of ``slides`` whose TIFs a light-files training run gains
    most from, in order: the label-0 slides the classifier trains on (``fold_of[name] !=
    val_fold``: their whole tissue gives its benign patches and hard negatives, where the light
    files hold only their class-0 squares), then the validation fold's (the decision is fitted
    on them) taking each label in turn (0, 1, 2, 3, 0, …), then the rest; each group in the
    given order."""
    benign = [s.filename for s in slides if s.label == 0 and fold_of[s.filename] != val_fold]
    val = [s for s in slides if fold_of[s.filename] == val_fold]
    by_label = [[s.filename for s in val if s.label == label] for label in range(4)]
    chosen = benign + [name for row in zip_longest(*by_label) for name in row if name is not None]
    taken = set(chosen)
    return (chosen + [s.filename for s in slides if s.filename not in taken])[:n]


def train(
    work: Path,
    assets: Path,
    data: Path | None = None,
    slides: int = 128,
    seed: int = 1000,
    preset: str = "tiny",
    folds: int = 4,
    detector_options: TrainOptions = detector.DEFAULTS,
    classifier_options: TrainOptions = classifier.DEFAULTS,
    synth: SynthConfig = COHORTS["default"],
    by_centre: bool = False,
    device: str | None = None,
    y_flip: str = CacheConfig.y_flip,
    source: str = CacheConfig.source,
) -> dict[str, float]:
    """Run every step; returns the seconds of each (and ``total``). ``synth``: the cohort of the
    slides generated without ``data`` (:data:`~training.data.synthetic.cohort.COHORTS`; ``make
    train`` passes ``--cohort realistic``). ``preset``: a preset name or JSON file
    (:func:`training.presets.load_preset`; the trainers' ``--preset``). ``source``: where the
    cache reads the slides (module doc). ``device`` runs hard-negative mining and the decision fit
    (the trainers, in their own processes, pick theirs through Lightning's ``accelerator`` and
    ``devices``); None: the GPU when there is one."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str) -> None:
        seconds[name] = time.perf_counter() - started - sum(seconds.values())
        log.info("step %s done in %.0f s", name, seconds[name])

    cache_config = CacheConfig(seed=seed, y_flip=y_flip, source=source)
    if data is None:
        data = work / "data"
        if not (data / METADATA).is_file():
            light = LightOptions() if source == "light" else None
            generate_dataset(data, slides, seed, "train", synth, GENERATE_WORKERS, light)
        description = (
            f"synthetic: training.data.synthetic --seed {seed} --slides {slides}"
            f" --cohort {cohort_name(synth)}"
        )
    else:
        description = str(data)
    if source == "light":
        light = read_training_set(data, y_flip, "light")
        tifs = sum((data / item.filename).is_file() for item in light)
        log.info("%d of %d slides have their TIF too: the cache, the hard negatives and the "
                 "decision fit read those whole, the light files of the others", tifs,
                 len(light))  # fmt: skip
    step("data")
    cascade = load_preset(preset).cascade
    build_cache(data, work / "cache", cascade, cache_config, folds, by_centre)
    step("cache")
    run_trainer(
        "detector", work / "cache", work / "detector", preset, replace(detector_options, seed=seed)
    )
    step("detector")
    mine_hard_negatives(work / "cache", data, work / "detector", device=device)
    step("hard_negatives")
    run_trainer(
        "classifier",
        work / "cache",
        work / "classifier",
        preset,
        replace(classifier_options, seed=seed),
    )
    step("classifier")
    fit_device = device or ("cuda" if detector_options.gpu() else "cpu")
    fit_stage(
        data, work / "cache", work / "detector", work / "classifier", work / "decision",
        folds, fit_device,
    )  # fmt: skip
    step("decision")
    note = f"trained by make train on {description}"
    export(work, assets, note, description)
    step("export")
    seconds["total"] = time.perf_counter() - started
    return seconds


def _options(defaults: TrainOptions, args: argparse.Namespace, stage: str) -> TrainOptions:
    """``defaults`` with the options given on the command line (``--STAGE-epochs`` …,
    ``--workers``, ``--accelerator``, ``--devices``) in place."""
    given = {
        "epochs": getattr(args, f"{stage}_epochs"),
        "samples": getattr(args, f"{stage}_samples"),
        "batch_size": getattr(args, f"{stage}_batch_size"),
        "workers": args.workers,
        "accelerator": args.accelerator,
        "devices": args.devices,
        "encoder_weights": args.encoder_weights,
    }
    return replace(defaults, **{k: v for k, v in given.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.pipeline", __doc__)
    parser.add_argument("work", type=Path, help="folder for the data, cache and stage outputs")
    parser.add_argument("assets", type=Path, help="where the trained assets go")
    parser.add_argument("--data", type=Path, default=None, help="a training folder to use")
    parser.add_argument("--slides", type=int, default=128, help="synthetic slides to generate")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--preset", default="tiny", help=f"{sorted(PRESETS)} or a JSON file")
    parser.add_argument("--config", dest="preset", help=argparse.SUPPRESS)  # the old name
    parser.add_argument("--folds", type=int, default=None, help="default: the preset's")
    parser.add_argument("--by-centre", action="store_true", help="group folds by centre (Cxx_)")
    add_reading_options(parser)
    parser.add_argument(
        "--device", default=None, help="hard negatives and decision fit (default: GPU if any)"
    )
    for stage in ("detector", "classifier"):
        for name, kind in (("epochs", int), ("samples", int), ("batch-size", int)):
            parser.add_argument(f"--{stage}-{name}", type=kind, default=None)
    parser.add_argument("--workers", type=int, default=None, help="data loaders (-1: auto)")
    parser.add_argument("--accelerator", default=None, help="Lightning's (default auto)")
    parser.add_argument("--devices", default=None, help="Lightning's (default auto)")
    parser.add_argument(
        "--encoder-weights", default=None, choices=("none", "imagenet"), help="online users only"
    )
    parser.add_argument(
        "--list-tifs", type=int, metavar="N", help="print the N TIFs worth downloading; exit"
    )
    add_generator_options(parser)
    args = parser.parse_args(argv)
    setup_logging()
    preset = load_preset(args.preset)
    if args.list_tifs is not None:
        if args.data is None:
            parser.error("--list-tifs needs --data")
        slides = read_training_set(args.data, args.y_flip, "light")
        fold_of = assign_folds(slides, args.folds or preset.folds, args.seed, args.by_centre)
        val_fold = _options(preset.detector, args, "detector").val_fold
        print("\n".join(tifs_to_download(slides, fold_of, val_fold, args.list_tifs)))
        return 0
    seconds = train(
        args.work,
        args.assets,
        args.data,
        args.slides,
        args.seed,
        args.preset,
        args.folds or preset.folds,
        _options(preset.detector, args, "detector"),
        _options(preset.classifier, args, "classifier"),
        config_from_args(args),
        args.by_centre,
        args.device,
        args.y_flip,
        args.source,
    )
    for name, value in seconds.items():
        print(f"{name:>15}: {value / 60:6.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
