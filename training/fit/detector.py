"""Train stage 1, the detector: an smp segmentation network on windows of the detector page.

``python -m training.fit.detector CACHE OUT [--preset tiny] [--epochs 10] [--val-fold 0] …``

Windows come from the cache (:mod:`training.data.cache`), never from a TIFF. Each training
window is drawn afresh: with probability ``--on-spot`` it is centred near an annotation square
of a training slide (jittered by up to a third of a window), otherwise uniformly on the slide's
cached tissue (its compact cell index); it is cut ``crop_factor`` larger, geometrically augmented
and centre-cropped in the loader (:class:`training.data.augment.SampleAugment`), then stain- and
colour-augmented and normalised as a batch on the training device
(:class:`training.data.augment.BatchAugment`).

Loss: cross-entropy that skips :data:`~training.data.targets.IGNORE` pixels (unannotated lesion
tissue, and what the mask calls glass inside a lesion square), plus multiclass Dice with the
same ignore index. Logged per epoch (``OUT/logs``): the losses, Dice per class and for "any
lesion" on fixed validation windows, and hotspot recall@k: the share of the annotated lesion
squares of a fixed subset of validation slides (``--recall-slides``) hit by the top-k hotspots
that the cascade's own code (:func:`stages.detector.predict_heatmap`,
:func:`stages.cascade.locate_hotspots`) finds on them, computed once (rank 0) in the training
precision. The checkpoint kept is the epoch of best ``val_select``: the mean of recall@k over
k = 1, 2, 4 … ``max_k``, ties broken by the validation Dice of "any lesion" (never the loss,
which glass and benign pixels dominate). Writes ``OUT/detector.safetensors`` and
``OUT/detector.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import lightning.pytorch as pl
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from stages.config import CascadeConfig
from stages.detector import DetectorConfig, build_detector
from training.cli import setup_logging
from training.data.augment import SampleAugment
from training.data.cache import Cache, CachedSlide, crop_padded, crop_size
from training.data.targets import IGNORE, recall_at_k
from training.fit.common import (
    EpochDraws,
    StageModule,
    best_state,
    command_line,
    make_loader,
    make_trainer,
    options_from,
    resume_path,
    stage_parser,
    start_weights,
    training_autocast,
)
from training.presets import PRESETS, TrainOptions, load_preset
from training.stageio import save_stage

log = logging.getLogger(__name__)

#: k of the logged hotspot recall@k (capped at the cascade's ``budget.max_k``).
RECALL_KS = (1, 2, 4, 8, 16, 32)
#: Validation slides (with lesion squares) whose hotspot recall is computed each epoch.
RECALL_SLIDES = 16
#: Weight of the "any lesion" Dice in ``val_select``: below one recall step, so it breaks ties.
DICE_TIE_BREAK = 1e-3
#: The trainer's defaults: the ``tiny`` preset's.
DEFAULTS = PRESETS["tiny"].detector

#: A window centre: ``(fragment, x, y)`` in that fragment's detector-page pixels (fragment -1:
#: a slide without cached tissue).
Spot = tuple[int, float, float]


class _IndexedSlide(NamedTuple):
    """What a :class:`WindowSet` keeps of one slide: its cache stem, ``(n, 3)`` uint16 tissue
    cells, the annotation squares' centres and a fallback centre."""

    stem: str
    cells: np.ndarray
    spots: tuple[Spot, ...]
    middle: tuple[int, int]


class WindowSet(EpochDraws):
    """Detector windows of ``filenames`` as ``(image (w, w, 3) uint8, target (w, w) uint8)``
    tensors (the photometric part of augmentation and the normalisation run on the batch, on the
    training device: :class:`training.data.augment.BatchAugment`; so does the targets' cast to
    the loss's int64, :meth:`DetectorModule.on_after_batch_transfer`: through the loader's
    shared memory and to the device they travel as one byte a pixel, not eight).

    With ``train``, item ``i`` of epoch ``epoch`` is a fresh random window (seeded by
    ``(seed, epoch, i)``), geometrically augmented; otherwise windows are fixed: every annotation
    square of each slide plus ``per_slide`` random tissue windows, centre-cropped only.

    Memory per slide is its compact index: the fragment boxes, the annotation-square centres and
    the tissue cells of :mod:`training.data.cache` (6 bytes a cell); pixels are read through the
    cache's bounded pool of memory maps, so neither memory nor open files grow with the slides.
    Random windows are uniform over tissue: a cell drawn uniformly, a pixel uniformly in it, kept
    when it is tissue (up to :data:`TRIES` tries, then the cell's centre).
    """

    TRIES = 32

    def __init__(
        self,
        cache: Cache,
        filenames: list[str],
        config: DetectorConfig,
        samples: int,
        on_spot: float,
        train: bool,
        seed: int,
        per_slide: int = 4,
    ) -> None:
        super().__init__()
        self.cache, self.config, self.train, self.seed = cache, config, train, seed
        self.size = crop_size(config.window, cache.settings["cache"]["crop_factor"])
        self.cell = int(cache.settings["cache"]["cell"])
        self.augment = SampleAugment(config.window, train)
        self.on_spot = on_spot
        self.slides = [self._slide(f) for f in filenames]
        self.samples = samples
        if not train:
            rng = np.random.default_rng(seed)
            self.fixed = [
                (s, spot)
                for s, slide in enumerate(self.slides)
                for spot in [*slide.spots, *self._tissue_centres(rng, slide, per_slide)]
            ]

    def _slide(self, filename: str) -> _IndexedSlide:
        row = self.cache.row(filename)
        stem = str(row["stem"])
        scale = (float(row["detector_sx"]), float(row["detector_sy"]))
        fragments = np.array(self.cache.fragments(stem), np.int32).reshape(-1, 4)
        spots = []
        for box in self.cache.boxes(filename):
            x, y = box.center[0] / scale[0], box.center[1] / scale[1]
            inside = np.flatnonzero(
                (fragments[:, 0] <= x) & (x < fragments[:, 0] + fragments[:, 2])
                & (fragments[:, 1] <= y) & (y < fragments[:, 1] + fragments[:, 3])
            )  # fmt: skip
            if len(inside):
                f = int(inside[0])
                spots.append((f, x - fragments[f, 0], y - fragments[f, 1]))
        cells = np.array(self.cache.array(stem, "cells"), np.uint16)
        return _IndexedSlide(stem, cells, tuple(spots), (row["width"] // 2, row["height"] // 2))

    def _tissue_centres(self, rng: np.random.Generator, slide: _IndexedSlide, n: int) -> list:
        return [self._tissue_centre(rng, slide) for _ in range(n)]

    def _tissue_centre(self, rng: np.random.Generator, slide: _IndexedSlide) -> Spot:
        """A point uniform over the slide's cached tissue: ``(fragment, x, y)`` in that
        fragment's pixels (the middle of the slide's fragments' span when it has none)."""
        if not len(slide.cells):
            return (-1, float(slide.middle[0]), float(slide.middle[1]))
        cell = self.cell
        for _ in range(self.TRIES):
            f, r, c = (int(v) for v in slide.cells[rng.integers(len(slide.cells))])
            y, x = r * cell + int(rng.integers(cell)), c * cell + int(rng.integers(cell))
            tissue = self.cache.array(slide.stem, f"tissue-{f}")
            if y < tissue.shape[0] and x < tissue.shape[1] and tissue[y, x]:
                return (f, x + 0.5, y + 0.5)
        return (f, (c + 0.5) * cell, (r + 0.5) * cell)

    def __len__(self) -> int:
        return self.samples if self.train else len(self.fixed)

    def _cut(self, slide: _IndexedSlide, spot: Spot, kind: str, fill: int) -> np.ndarray:
        f, cx, cy = spot
        size = self.size
        if f < 0:  # a slide without cached tissue: glass
            return np.full((size, size, 3) if kind == "detector" else (size, size), fill, np.uint8)
        array = self.cache.array(slide.stem, f"{kind}-{f}")
        return crop_padded(array, round(cx - size / 2), round(cy - size / 2), size, size, fill)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i`` as the network's input before photometric augmentation and normalisation:
        ``(w, w, 3)`` uint8 window and ``(w, w)`` uint8 target."""
        rng = None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            slide = self.slides[int(rng.integers(len(self.slides)))]
            if slide.spots and rng.random() < self.on_spot:
                f, cx, cy = slide.spots[int(rng.integers(len(slide.spots)))]
                jitter = self.config.window / 3
                spot = (f, cx + rng.uniform(-jitter, jitter), cy + rng.uniform(-jitter, jitter))
            else:
                spot = self._tissue_centre(rng, slide)
        else:
            s, spot = self.fixed[i]
            slide = self.slides[s]
        image = self._cut(slide, spot, "detector", 255)
        target = self._cut(slide, spot, "target", 0)
        return self.augment(image, target, rng)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.sample(i)
        return torch.from_numpy(image), torch.from_numpy(target)


class DetectorModule(StageModule):
    """The detector network with its losses and per-class Dice."""

    def __init__(
        self, config: DetectorConfig, lr: float, weight_decay: float, epochs: int, seed: int = 0
    ):
        super().__init__(lr, weight_decay, epochs, config.mean, config.std, seed)
        self.config = config
        self.model = build_detector(config)
        self.ce = nn.CrossEntropyLoss(ignore_index=IGNORE)
        self.dice = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=IGNORE)
        self._counts = torch.zeros(3, config.classes + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        x, y = super().on_after_batch_transfer(batch, dataloader_idx)
        return x, y.long()  # uint8 in the loader (classes and IGNORE), int64 for the losses

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Logits at the targets' full resolution (a network with ``output_stride`` > 1 is
        upsampled bilinearly, for the loss only; inference never upsamples), CE and Dice."""
        x, y = batch
        logits = self.model(x)
        if logits.shape[-2:] != y.shape[-2:]:
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        ce, dice = self.ce(logits, y), self.dice(logits, y)
        return logits, ce, dice

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        _, ce, dice = self._loss(batch)
        metrics = {"train_loss": ce + dice, "train_ce": ce, "train_dice_loss": dice}
        self.log_dict(metrics, on_epoch=True, on_step=False, sync_dist=True)
        return ce + dice

    def on_validation_epoch_start(self) -> None:
        self._counts = torch.zeros(3, self.config.classes + 1)

    def validation_step(self, batch, batch_idx: int) -> None:
        logits, ce, dice = self._loss(batch)
        self.log("val_loss", ce + dice, on_epoch=True, sync_dist=True)
        y = batch[1]
        valid = y != IGNORE
        pred = logits.argmax(1)
        pairs = [(pred == c, y == c) for c in range(self.config.classes)] + [(pred > 0, y > 0)]
        for c, (p, t) in enumerate(pairs):
            p, t = p & valid, t & valid
            self._counts[:, c] += torch.stack([(p & t).sum(), p.sum(), t.sum()]).float().cpu()

    def dice_scores(self) -> list[float]:
        """Dice per class and for "any lesion" (last) of this validation epoch, summed over the
        ranks."""
        counts = self.trainer.strategy.reduce(self._counts.to(self.device), reduce_op="sum").cpu()
        inter, pred, true = counts
        return (2 * inter / (pred + true).clamp(min=1)).tolist()


def recall_subset(cache: Cache, filenames: Sequence[str], n: int, seed: int) -> list[str]:
    """Up to ``n`` of ``filenames`` that have lesion squares, a fixed choice for a seed (ordered
    by a hash of seed and name), so every epoch's recall is measured on the same slides."""
    with_lesions = [f for f in filenames if cache.boxes(f, min_class=1)]

    def key(name: str) -> str:
        return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()

    return sorted(sorted(with_lesions, key=key)[:n])


def hotspot_recall(
    model: nn.Module,
    cache: Cache,
    filenames: list[str],
    cascade: CascadeConfig,
    device: torch.device,
    ks: tuple[int, ...] = RECALL_KS,
    autocast: torch.dtype | None = None,
) -> dict[int, float]:
    """Recall@k of the lesion squares of ``filenames`` by the cascade's hotspots (module doc),
    the network in ``autocast``."""
    squares, centres = [], []
    for filename in filenames:
        slide = CachedSlide(cache, filename)
        _, hotspots = slide.hotspots(model, cascade, device, autocast)
        squares.append(cache.boxes(filename, min_class=1))
        centres.append(np.array([h.box.center for h in hotspots]).reshape(-1, 2))
    return recall_at_k(squares, centres, [k for k in ks if k <= cascade.budget.max_k])


def selection_score(recall: dict[int, float], dice_lesion: float) -> float:
    """``val_select``: the mean recall@k (0 when there are no lesion squares to find) plus
    :data:`DICE_TIE_BREAK` × the "any lesion" Dice."""
    values = [v for v in recall.values() if math.isfinite(v)]
    return (float(np.mean(values)) if values else 0.0) + DICE_TIE_BREAK * dice_lesion


class HotspotRecall(pl.Callback):
    """After each validation epoch: ``val_dice_*``, ``val_recall@k`` and ``val_select``. The
    recall is computed once, on rank 0, in the training precision, and broadcast."""

    def __init__(self, cache: Cache, filenames: list[str], cascade: CascadeConfig) -> None:
        self.cache, self.filenames = cache, filenames
        batch = cascade.detector.batch_size
        self.cascade = cascade
        self.gpu_cascade = replace(
            cascade, detector=replace(cascade.detector, batch_size=max(batch, 32))
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        dice = module.dice_scores()
        names = [f"val_dice_{c}" for c in range(module.config.classes)] + ["val_dice_lesion"]
        recall: dict[int, float] = {}
        if trainer.is_global_zero:
            device = module.device
            cascade = self.gpu_cascade if device.type == "cuda" else self.cascade
            recall = hotspot_recall(
                module.model,
                self.cache,
                self.filenames,
                cascade,
                device,
                autocast=training_autocast(trainer, device),
            )
            module.model.train(module.training)
        recall = trainer.strategy.broadcast(recall, src=0)
        metrics = dict(zip(names, dice, strict=True))
        metrics |= {f"val_recall@{k}": v for k, v in recall.items()}
        metrics["val_select"] = selection_score(recall, dice[-1])
        module.log_dict(metrics, sync_dist=False)  # the same values on every rank


def training_windows(
    cache: Cache, config: DetectorConfig, options: TrainOptions, on_spot: float = 0.7
) -> WindowSet:
    """The detector's training windows: ``options.samples`` fresh draws an epoch from the slides
    outside fold ``options.val_fold``, ``on_spot`` of them near an annotation square."""
    files = cache.slides.query("fold != @options.val_fold")["filename"].tolist()
    return WindowSet(cache, files, config, options.samples, on_spot, True, options.seed)


def train_detector(
    cache_root: Path,
    out: Path,
    cascade: CascadeConfig,
    options: TrainOptions = DEFAULTS,
    on_spot: float = 0.7,
    callbacks: Sequence[pl.Callback] = (),
    recall_slides: int = RECALL_SLIDES,
) -> dict:
    """Train the detector of ``cascade`` on the cache; write the stage to ``out``; return its
    validation metrics (the best epoch's, by ``val_select``: module doc)."""
    started = time.perf_counter()
    pl.seed_everything(options.seed, workers=True, verbose=False)
    cache = Cache.open(cache_root)
    config = replace(cascade.detector)
    train = training_windows(cache, config, options, on_spot)
    val_files = cache.slides.query("fold == @options.val_fold")["filename"].tolist()
    recall_files = recall_subset(cache, val_files, recall_slides, options.seed)
    log.info(
        "detector: %d training slides, %d validation slides (fold %d), hotspot recall on %d",
        len(train.slides),
        len(val_files),
        options.val_fold,
        len(recall_files),
    )
    val = WindowSet(cache, val_files, config, 0, on_spot, False, options.seed + 1)
    module = DetectorModule.from_options(config, options)
    start_weights(module.model, options, config.encoder)
    recall = HotspotRecall(cache, recall_files, cascade)
    trainer = make_trainer(options, out, "val_select", "max", [recall, *callbacks])
    val_loader = make_loader(val, options, train=False)
    trainer.fit(
        module,
        make_loader(train, options, train=True),
        val_loader,
        ckpt_path=resume_path(options, out),
    )
    # the exported weights are the best epoch's: its validation metrics are the stage's
    (metrics,) = trainer.validate(module, val_loader, ckpt_path="best", verbose=False)
    metrics = {k: float(v) for k, v in metrics.items()}
    if trainer.is_global_zero:
        model = build_detector(config)
        model.load_state_dict(best_state(out))
        info = {
            "metrics": metrics,
            "data": str(cache_root),
            "command": command_line(),
            "val_fold": options.val_fold,
            "recall_slides": recall_files,
            "options": dataclasses.asdict(options),
            "seconds": time.perf_counter() - started,
        }
        save_stage(out, "detector", model, replace(cascade, detector=config), info)
        log.info("detector: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("training.fit.detector", __doc__, DEFAULTS)
    parser.add_argument("--on-spot", type=float, default=0.7, help="share of on-spot windows")
    parser.add_argument(
        "--recall-slides",
        type=int,
        default=RECALL_SLIDES,
        help="validation slides whose hotspot recall is measured each epoch",
    )
    args = parser.parse_args(argv)
    setup_logging()
    train_detector(
        args.cache,
        args.out,
        load_preset(args.preset).cascade,
        options_from(args),
        args.on_spot,
        recall_slides=args.recall_slides,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
