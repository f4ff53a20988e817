"""The presets: the networks a training run starts from and the training defaults that go with them.

A :class:`Preset` is a cascade config (:class:`stages.config.CascadeConfig`: tissue mask,
detector, classifier, decision and budget settings) plus the training defaults of that config:
the folds and each stage trainer's :class:`TrainOptions`. :data:`PRESETS` holds the two that
ship: ``tiny`` (``make train``'s CPU preset, the tests' and the demo's networks) and
``standard`` (the README's real-data preset for a GPU). Every command that takes a preset says
``--preset NAME|FILE.json`` (:func:`load_preset`); a JSON file is either a cascade config
(``config.json`` of an ``assets/`` folder, or one written by :func:`stages.config.save_config`),
trained with ``tiny``'s defaults, or ``{"cascade": {…}, "training": {"folds": N, "detector":
{…}, "classifier": {…}}}`` (each ``training`` key optional, each missing one ``tiny``'s).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from stages.classifier import ClassifierConfig
from stages.config import CascadeConfig, from_dict
from stages.detector import DetectorConfig
from stages.tissue import TissueConfig

log = logging.getLogger(__name__)

ENCODER_WEIGHTS = ("none", "imagenet")
#: Most loader workers a training process gets by itself: one core read and augmented ~250
#: standard-preset patches/s here (``training.bench.train_speed``), and a ResNet-18 on a
#: current GPU consumes 3,000 or more, so a 16-core one-GPU node needs its 15.
MAX_WORKERS = 16


@dataclass(frozen=True)
class TrainOptions:
    """How a stage is trained. ``samples``: training items drawn per epoch; ``val_fold``: the
    fold held out for validation (the others train); ``encoder_weights``: ``imagenet`` downloads
    smp's pretrained encoder (online users only; never in tests); ``init``: a local state dict
    (safetensors or ``torch.save`` file) to start from; ``accelerator`` / ``devices`` /
    ``num_nodes`` / ``precision`` go to Lightning (``auto`` precision: 16-bit mixed on a GPU,
    32-bit on a CPU); ``workers``: data-loading processes, -1 for auto (:meth:`loader_workers`);
    ``prefetch``: batches each loading process prepares ahead; ``train_blocks``: the
    classifier's encoder blocks trained, counted from its output end (-1 all; 0 none, the
    frozen-encoder head of :mod:`training.fit.head`)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    samples: int = 2048
    val_fold: int = 0
    workers: int = -1
    patience: int = 5
    seed: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    resume: bool = False
    encoder_weights: str = "none"
    init: str = ""
    prefetch: int = 4
    train_blocks: int = -1

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.samples, self.num_nodes, self.prefetch) < 1:
            raise ValueError("epochs, batch_size, samples, num_nodes and prefetch must be >= 1")
        if self.train_blocks < -1:
            raise ValueError("train_blocks must be -1 (all), 0 (frozen) or a block count")
        if self.encoder_weights not in ENCODER_WEIGHTS:
            raise ValueError(f"encoder_weights must be one of {ENCODER_WEIGHTS}")

    def loader_workers(self, cpus: int | None = None, gpus: int | None = None) -> int:
        """The data-loading processes per training process: ``workers`` when set; else, on a
        GPU, the CPUs this process may use (``cpus``, default its affinity) shared among the
        node's training processes (``gpus`` of them, default the devices asked for), one each
        kept for the training process itself, 2 to :data:`MAX_WORKERS`; on a CPU none
        (augmenting in the training process was faster on 2 cores)."""
        if self.workers >= 0:
            return self.workers
        if not self.gpu():
            return 0
        cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
        if gpus is None:
            gpus = int(self.devices) if self.devices.isdigit() else torch.cuda.device_count()
        return min(MAX_WORKERS, max(2, cpus // max(gpus, 1) - 1))

    def gpu(self) -> bool:
        """True when Lightning will train on a GPU (asked for, or ``auto`` and one is there)."""
        return self.accelerator in ("gpu", "cuda") or (
            self.accelerator == "auto" and torch.cuda.is_available()
        )


@dataclass(frozen=True)
class Preset:
    """A cascade config and its training defaults: ``folds`` of the cache, and the options of
    the ``detector`` and ``classifier`` trainers (any option given on a command line overrides
    its default)."""

    cascade: CascadeConfig
    folds: int
    detector: TrainOptions
    classifier: TrainOptions


#: Small networks that grade a real-size slide in under a second on a CPU (training on a CPU,
#: tests, demo): a Segformer detector (1 × 1 projections of the encoder's levels, fused at a
#: quarter of the window: ~2.5× the speed of an FPN of the same width on a CPU) whose output is
#: its quarter-resolution map (never upsampled) on page 5 (~8 µm/px; heatmap cells of ~32 µm),
#: in 128 px windows that follow the tissue closely, and the tissue mask at ~32 µm/px.
TINY = CascadeConfig(
    tissue=TissueConfig(target_mpp=32.0),
    detector=DetectorConfig(
        arch="Segformer",
        encoder="tu-mobilenetv3_small_050",
        decoder_channels=(32,),
        output_stride=4,
        target_mpp=8.0,
        window=128,
        overlap=16,
        batch_size=32,
    ),
    classifier=ClassifierConfig(encoder="tu-mobilenetv3_small_050", patch=128, batch_size=16),
)
#: ResNet-18 networks for real tissue (trained on a GPU; graded in a few seconds a slide on a
#: CPU): an FPN detector at output stride 4 on page 5 (~8 µm/px, 256 px windows of 2 mm; page 4,
#: ``target_mpp`` 4, sees finer detail at 4 × the cost), the classifier on 256 px patches at
#: 0.5 µm/px.
STANDARD = CascadeConfig(
    detector=DetectorConfig(
        arch="FPN",
        decoder_channels=(64, 32),
        output_stride=4,
        target_mpp=8.0,
        window=256,
        overlap=32,
        batch_size=16,
    )
)
#: ``tiny``: the CPU preset of ``make train``, whose training options are also the stage
#: trainers' own defaults (``python -m training.fit.detector`` / ``classifier``).
_TINY = Preset(
    TINY,
    4,
    TrainOptions(epochs=8, batch_size=32, lr=3e-3, samples=2048),
    TrainOptions(epochs=24, batch_size=64, lr=3e-3, samples=4096),
)
#: ``tiny`` and ``standard``, the README's real-data preset for a GPU (5 folds, 40 epochs per
#: stage, the README's samples and batch sizes).
PRESETS = {
    "tiny": _TINY,
    "standard": Preset(
        STANDARD,
        5,
        replace(_TINY.detector, epochs=40, samples=16384, batch_size=32, patience=8),
        replace(_TINY.classifier, epochs=40, samples=65536, batch_size=128, patience=8),
    ),
}


def _options(defaults: TrainOptions, given: dict, where: str) -> TrainOptions:
    """``defaults`` with the fields of ``given`` (a JSON object) in place."""
    unknown = set(given) - {f.name for f in fields(TrainOptions)}
    if unknown:
        raise ValueError(f"{where}: unknown training options {sorted(unknown)}")
    return replace(defaults, **given)


def load_preset(name: str) -> Preset:
    """The preset ``name`` (a :data:`PRESETS` key) or the JSON file of that path (module doc);
    the training defaults a file does not give are ``tiny``'s, and a log line says so."""
    if name in PRESETS:
        return PRESETS[name]
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"--preset {name!r}: neither a preset {sorted(PRESETS)} nor a file")
    data = json.loads(path.read_text())
    tiny = PRESETS["tiny"]
    if "cascade" not in data:  # a cascade config alone
        log.info("preset %s: a cascade config; training defaults (folds, epochs …): tiny's", path)
        return replace(tiny, cascade=from_dict(CascadeConfig, data, str(path)))
    training = data.get("training", {})
    missing = sorted({"folds", "detector", "classifier"} - set(training))
    if missing:
        log.info("preset %s: %s not given: tiny's", path, ", ".join(missing))
    return Preset(
        from_dict(CascadeConfig, data["cascade"], f"{path}: cascade"),
        int(training.get("folds", tiny.folds)),
        _options(tiny.detector, training.get("detector", {}), f"{path}: training.detector"),
        _options(tiny.classifier, training.get("classifier", {}), f"{path}: training.classifier"),
    )
