"""Training throughput on the training device, against the loader's rate: ``make train-speed``.

``python -m training.bench.train_speed OUT [--preset standard] [--data TRAIN] [--steps 300]
[--accelerator auto] [--workers -1] [--publish DIR]``

On the cache of a training folder (``--data``, else ``--slides`` generated slides, seed 1000,
into ``OUT/data``; cached with the preset into ``OUT/cache``; both reused by a rerun), for each
stage with the preset's batch size and loader (:data:`training.presets.PRESETS`,
:func:`training.fit.common.make_loader`: its worker count from the CPUs, persistent workers, a
prefetch factor and pinned memory on a GPU), it measures three rates in samples/s:

* **loader**: the stage's training loader iterated alone for ``--steps`` batches (and per
  worker);
* **device**: the stage's Lightning module trained for ``--steps`` steps on a few batches read
  once and held in memory (the loader's cost taken away): what the device can consume;
* **training**: the stage's own trainer (:func:`training.fit.detector.train_detector`,
  :func:`training.fit.classifier.train_classifier`: one epoch of ``--steps`` steps, then its
  validation and checkpoint) fed by its loader.

The two trained rates are timed over the steps after ``--warmup`` (the device synchronised at
both ends), with the GPU's utilisation (NVML's share of time a kernel ran, sampled every 0.1 s;
needs ``nvidia-ml-py``) and its peak memory. The training rate reaching the device rate means
the GPU is the bound, reaching the loader rate that the loader is. Nothing is asserted: it prints
the table and writes ``OUT/train_speed.md`` and ``OUT/train_speed.csv``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch
from torch.utils.data import Dataset

from training.bench.tables import machine, plain_markdown
from training.cli import command_parser, setup_logging
from training.data.cache import Cache, CacheConfig, build_cache
from training.data.synthetic import sample_specs, write_dataset
from training.fit import classifier, detector
from training.fit.common import (
    EpochDraws,
    StageModule,
    make_loader,
    trainer_precision,
)
from training.presets import PRESETS, Preset, TrainOptions, load_preset

log = logging.getLogger(__name__)

SEED = 1000


@dataclass(frozen=True)
class Stage:
    """One stage: its training set from ``(cache, its config, options)``, its Lightning module
    class and its trainer."""

    training_set: Callable[[Cache, object, TrainOptions], Dataset]
    module: type[StageModule]
    train: Callable[..., dict]


STAGES = {
    "detector": Stage(detector.training_windows, detector.DetectorModule, detector.train_detector),
    "classifier": Stage(
        classifier.training_patches, classifier.ClassifierModule, classifier.train_classifier
    ),
}


class Utilisation:
    """NVML's utilisation of ``device`` (% of time a kernel ran) sampled every ``interval`` s
    in a thread between :meth:`start` and :meth:`stop`; :attr:`mean` is NaN on a CPU or
    without NVML (``nvidia-ml-py``)."""

    def __init__(self, device: torch.device, interval: float = 0.1) -> None:
        self.device, self.interval = device, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception as exc:  # NVML missing or refused: no figure, logged once
            log.warning("no GPU utilisation from NVML: %s", exc)
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self._read()
            if value is None:
                return
            self.samples.append(value)

    def start(self) -> None:
        if self.device.type == "cuda":
            self._thread = threading.Thread(target=self._run, name="nvml", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else math.nan


class StepClock(pl.Callback):
    """Wall time of the training steps after the first ``warmup`` up to the epoch's last, the
    device synchronised at both ends, and the GPU's utilisation in between."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.timed, self.seconds = 0, math.nan
        self.utilisation: Utilisation | None = None
        self._start = 0.0

    @staticmethod
    def _now(module: pl.LightningModule) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup - 1:
            self._start = self._now(module)
            self.utilisation = Utilisation(module.device)
            self.utilisation.start()
        elif batch_idx == trainer.num_training_batches - 1 and self.utilisation is not None:
            self.seconds = self._now(module) - self._start
            self.timed = batch_idx + 1 - self.warmup
            self.utilisation.stop()

    def rate(self, batch_size: int) -> float:
        """Samples per second of the timed steps (NaN when none were timed)."""
        return self.timed * batch_size / self.seconds if self.timed else math.nan

    @property
    def gpu_percent(self) -> float:
        return self.utilisation.mean if self.utilisation is not None else math.nan


class HeldBatches(EpochDraws):
    """``samples`` items cycling over ``items`` held in memory: a dataset that costs nothing
    to read."""

    def __init__(self, items: list, samples: int) -> None:
        super().__init__()
        self.items, self.samples = items, samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int):
        return self.items[i % len(self.items)]


def loader_rate(dataset: Dataset, options: TrainOptions, warmup: int) -> float:
    """Samples per second of the stage's training loader alone, after ``warmup`` batches (the
    workers' start and first reads)."""
    loader = make_loader(dataset, options, train=True)
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    start, count = time.perf_counter(), 0
    for batch in batches:
        count += len(batch[0])
    seconds = time.perf_counter() - start
    del batches, loader  # the persistent workers end here
    return count / seconds


def device_rate(
    stage: Stage, config: object, dataset: Dataset, options: TrainOptions, warmup: int
) -> StepClock:
    """The stage's module trained for ``options.samples / batch_size`` steps on four batches of
    ``dataset`` read once and held in memory (no loader workers): the device's own rate."""
    items = [dataset[i] for i in range(min(4 * options.batch_size, len(dataset)))]
    held = replace(options, workers=0)
    clock = StepClock(warmup)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator=options.accelerator,
        devices=1,
        precision=trainer_precision(options),
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = make_loader(HeldBatches(items, options.samples), held, train=True)
    trainer.fit(stage.module.from_options(config, options), loader)
    return clock


def peak_gpu_mb(device: torch.device) -> float:
    """The most GPU memory torch held since the last reset (NaN on a CPU)."""
    if device.type != "cuda":
        return math.nan
    return torch.cuda.max_memory_allocated(device) / 2**20


def measure(
    cache_root: Path,
    out: Path,
    preset: Preset,
    steps: int,
    warmup: int,
    accelerator: str = "auto",
    workers: int = -1,
) -> pd.DataFrame:
    """The three rates of each stage of ``preset``'s cascade (module doc) with its batch sizes
    and other training options, one row per stage; the trainers' runs go to ``out/runs``."""
    cache, cascade = Cache.open(cache_root), preset.cascade
    rows = []
    for name, stage in STAGES.items():
        defaults = getattr(preset, name)
        options = replace(
            defaults,
            epochs=1,
            samples=steps * defaults.batch_size,
            accelerator=accelerator,
            devices="1",
            workers=workers,
            seed=SEED,
        )
        device = torch.device("cuda" if options.gpu() else "cpu")
        batch = options.batch_size
        config = getattr(cascade, name)
        dataset = stage.training_set(cache, config, options)
        loader = loader_rate(dataset, options, warmup)
        log.info("%s: loader %.0f samples/s", name, loader)
        alone = device_rate(stage, config, dataset, options, warmup)
        log.info("%s: device alone %.0f samples/s", name, alone.rate(batch))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        clock = StepClock(warmup)
        run = out / "runs" / name
        shutil.rmtree(run, ignore_errors=True)
        stage.train(cache_root, run, cascade, options, callbacks=[clock])
        log.info("%s: training %.0f samples/s", name, clock.rate(batch))
        workers_used = options.loader_workers()
        rows.append(
            {
                "stage": name,
                "network": config.encoder,
                "input px": config.window if name == "detector" else config.patch,
                "batch": batch,
                "precision": trainer_precision(options),
                "loader workers": workers_used,
                "loader samples/s": loader,
                "per worker": loader / max(workers_used, 1),
                "device alone samples/s": alone.rate(batch),
                "device alone GPU %": alone.gpu_percent,
                "training samples/s": clock.rate(batch),
                "training GPU %": clock.gpu_percent,
                "training peak GPU MB": peak_gpu_mb(device),
                "timed steps": clock.timed,
            }
        )
    return pd.DataFrame(rows)


def prepare_cache(out: Path, data: Path | None, preset: str, slides: int, workers: int) -> Path:
    """The cache of ``data`` (else of ``slides`` generated training slides) with the preset's
    settings, under ``out``; reused when it is there."""
    if data is None:
        data = out / "data"
        if not (data / "train_metadata.csv").is_file():
            write_dataset(data, sample_specs(slides, SEED), "train", resume=True, workers=workers)
    cache = out / "cache"
    build_cache(data, cache, load_preset(preset).cascade, CacheConfig(seed=SEED), folds=4)
    return cache


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.bench.train_speed", __doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="standard", help=f"{sorted(PRESETS)} or a JSON file")
    parser.add_argument("--config", dest="preset", help=argparse.SUPPRESS)  # the old name
    parser.add_argument("--data", type=Path, default=None, help="a training folder to cache")
    parser.add_argument("--slides", type=int, default=16, help="slides generated without --data")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=30, help="steps not timed")
    parser.add_argument("--accelerator", default="auto", help="Lightning's: auto, gpu, cpu")
    parser.add_argument("--workers", type=int, default=-1, help="loader workers (-1: auto)")
    parser.add_argument("--publish", type=Path, default=None, help="also write the table there")
    args = parser.parse_args(argv)
    setup_logging()
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = prepare_cache(args.out, args.data, args.preset, args.slides, os.cpu_count() or 1)
    table = measure(
        cache,
        args.out,
        load_preset(args.preset),
        args.steps,
        args.warmup,
        args.accelerator,
        args.workers,
    )
    device = "cuda" if TrainOptions(accelerator=args.accelerator).gpu() else "cpu"
    text = (
        f"Training throughput, `{args.preset}` preset, {args.steps} steps a run "
        f"({args.warmup} not timed). Machine: {machine(device)}; Lightning {pl.__version__}.\n\n"
        + plain_markdown(table)
    )
    table.to_csv(args.out / "train_speed.csv", index=False)
    (args.out / "train_speed.md").write_text(text + "\n")
    print(text)
    if args.publish is not None:
        args.publish.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.out / "train_speed.md", args.publish / "train_speed.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
