"""Train stage 1, the detector: an smp segmentation network on windows of the detector page.

``python -m training.fit.detector CACHE OUT [--config tiny] [--epochs 10] [--val-fold 0] …``

Windows come from the cache (:mod:`training.data.cache`), never from a TIFF. Each training
window is drawn afresh: with probability ``--on-spot`` it is centred near an annotation square
of a training slide (jittered by up to a third of a window), otherwise on random tissue; it is
cut ``crop_factor`` larger, augmented and centre-cropped (:mod:`training.data.augment`).

Loss: cross-entropy that skips :data:`~training.data.targets.IGNORE` pixels (unannotated lesion
tissue), plus multiclass Dice with the same ignore index. Logged per epoch (``OUT/logs``): the
losses, Dice per class and for "any lesion" on fixed validation windows, and hotspot recall@k:
the share of the validation slides' annotated lesion squares hit by the top-k hotspots that the
cascade's own code (:func:`stages.detector.predict_heatmap`, :func:`stages.cascade.locate_hotspots`)
finds on them. Writes ``OUT/detector.safetensors`` and ``OUT/detector.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stages.config import CascadeConfig
from stages.detector import DetectorConfig, build_detector
from stages.nets import to_input
from training.cli import setup_logging
from training.data.augment import pipeline
from training.data.cache import Cache, CachedSlide, crop_padded, crop_size
from training.data.targets import IGNORE, recall_at_k
from training.fit.common import (
    StageModule,
    TrainOptions,
    best_state,
    command_line,
    make_trainer,
    options_from,
    resume_path,
    save_stage,
    stage_parser,
    start_weights,
)

log = logging.getLogger(__name__)

#: k of the logged hotspot recall@k (capped at the cascade's ``budget.max_k``).
RECALL_KS = (1, 2, 4, 8, 16, 32)
DEFAULTS = TrainOptions(epochs=8, batch_size=16, lr=3e-3, samples=1024)


class WindowSet(Dataset):
    """Detector windows of ``filenames`` as ``(image (3, w, w) float32, target (w, w) int64)``.

    With ``train``, item ``i`` of epoch ``epoch`` is a fresh random window (seeded by
    ``(seed, epoch, i)``), augmented; otherwise windows are fixed: every annotation square of
    each slide plus ``per_slide`` random tissue windows, centre-cropped only.
    """

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
        self.cache, self.config, self.train, self.seed = cache, config, train, seed
        self.size = crop_size(config.window, cache.settings["cache"]["crop_factor"])
        self.transform = pipeline(config.window, train)
        self.on_spot, self.epoch = on_spot, 0
        self.slides = [self._slide(f) for f in filenames]
        self.samples = samples
        if not train:
            rng = np.random.default_rng(seed)
            self.fixed = [
                (s, (float(cx), float(cy)))
                for s, slide in enumerate(self.slides)
                for cx, cy in [*slide["spots"], *self._random_centres(rng, slide, per_slide)]
            ]

    def _slide(self, filename: str) -> dict:
        row = self.cache.row(filename)
        stem = str(row["stem"])
        left, top = int(row["left"]), int(row["top"])
        scale = (float(row["detector_sx"]), float(row["detector_sy"]))
        squares = self.cache.boxes(filename)
        spots = [(b.center[0] / scale[0] - left, b.center[1] / scale[1] - top) for b in squares]
        return {
            "image": self.cache.array(stem, "detector"),
            "target": self.cache.array(stem, "target"),
            "tissue": np.argwhere(np.asarray(self.cache.array(stem, "tissue"))),
            "spots": spots,
        }

    def _random_centres(self, rng: np.random.Generator, slide: dict, n: int) -> list:
        tissue = slide["tissue"]
        if not len(tissue):
            return [(slide["image"].shape[1] / 2, slide["image"].shape[0] / 2)] * n
        picks = tissue[rng.integers(0, len(tissue), n)]
        return [(float(c) + 0.5, float(r) + 0.5) for r, c in picks]

    def __len__(self) -> int:
        return self.samples if self.train else len(self.fixed)

    def _cut(self, array: np.ndarray, cx: float, cy: float, fill: int) -> np.ndarray:
        size = self.size
        return crop_padded(array, round(cx - size / 2), round(cy - size / 2), size, size, fill)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i`` as the network's input before normalisation: ``(w, w, 3)`` uint8 window and
        ``(w, w)`` uint8 target."""
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            slide = self.slides[int(rng.integers(len(self.slides)))]
            if slide["spots"] and rng.random() < self.on_spot:
                cx, cy = slide["spots"][int(rng.integers(len(slide["spots"])))]
                jitter = self.config.window / 3
                cx, cy = cx + rng.uniform(-jitter, jitter), cy + rng.uniform(-jitter, jitter)
            else:
                ((cx, cy),) = self._random_centres(rng, slide, 1)
            self.transform.set_random_seed(int(rng.integers(2**31)))
        else:
            s, (cx, cy) = self.fixed[i]
            slide = self.slides[s]
        image = self._cut(slide["image"], cx, cy, 255)
        target = self._cut(slide["target"], cx, cy, 0)
        out = self.transform(image=image, mask=target)
        return out["image"], out["mask"]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.sample(i)
        tensor = to_input(image[None], torch.device("cpu"), self.config.mean, self.config.std)
        return tensor[0], torch.from_numpy(target.astype(np.int64))


class DetectorModule(StageModule):
    """The detector network with its losses and per-class Dice."""

    def __init__(self, config: DetectorConfig, lr: float, weight_decay: float, epochs: int):
        super().__init__(lr, weight_decay, epochs)
        self.config = config
        self.model = build_detector(config)
        self.ce = nn.CrossEntropyLoss(ignore_index=IGNORE)
        self.dice = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=IGNORE)
        self._counts = torch.zeros(3, config.classes + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x, y = batch
        logits = self.model(x)
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

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(self._counts.to(self.device), reduce_op="sum").cpu()
        inter, pred, true = counts
        dice = (2 * inter / (pred + true).clamp(min=1)).tolist()
        names = [f"val_dice_{c}" for c in range(self.config.classes)] + ["val_dice_lesion"]
        self.log_dict(dict(zip(names, dice, strict=True)), sync_dist=False)


def hotspot_recall(
    model: nn.Module,
    cache: Cache,
    filenames: list[str],
    cascade: CascadeConfig,
    device: torch.device,
    ks: tuple[int, ...] = RECALL_KS,
) -> dict[int, float]:
    """Recall@k of the lesion squares of ``filenames`` by the cascade's hotspots (module doc)."""
    squares, centres = [], []
    for filename in filenames:
        slide = CachedSlide(cache, filename)
        _, hotspots = slide.hotspots(model, cascade, device)
        squares.append(cache.boxes(filename, min_class=1))
        centres.append(np.array([h.box.center for h in hotspots]).reshape(-1, 2))
    return recall_at_k(squares, centres, [k for k in ks if k <= cascade.budget.max_k])


class HotspotRecall(pl.Callback):
    """Logs ``val_recall@k`` after each validation epoch (rank 0 computes, all log)."""

    def __init__(self, cache: Cache, filenames: list[str], cascade: CascadeConfig) -> None:
        self.cache, self.filenames, self.cascade = cache, filenames, cascade

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        recall = hotspot_recall(
            module.model, self.cache, self.filenames, self.cascade, module.device
        )
        module.model.train(module.training)
        module.log_dict({f"val_recall@{k}": v for k, v in recall.items()}, sync_dist=True)


def train_detector(
    cache_root: Path,
    out: Path,
    cascade: CascadeConfig,
    options: TrainOptions = DEFAULTS,
    on_spot: float = 0.7,
    callbacks: Sequence[pl.Callback] = (),
) -> dict:
    """Train the detector of ``cascade`` on the cache; write the stage to ``out``; return its
    validation metrics (the best epoch's, by validation loss)."""
    started = time.perf_counter()
    pl.seed_everything(options.seed, workers=True, verbose=False)
    cache = Cache.open(cache_root)
    config = replace(cascade.detector)
    train_files = cache.slides.query("fold != @options.val_fold")["filename"].tolist()
    val_files = cache.slides.query("fold == @options.val_fold")["filename"].tolist()
    log.info(
        "detector: %d training slides, %d validation slides (fold %d)",
        len(train_files),
        len(val_files),
        options.val_fold,
    )
    train = WindowSet(cache, train_files, config, options.samples, on_spot, True, options.seed)
    val = WindowSet(cache, val_files, config, 0, on_spot, False, options.seed + 1)
    module = DetectorModule(config, options.lr, options.weight_decay, options.epochs)
    start_weights(module.model, options, config.encoder)
    loader = dict(batch_size=options.batch_size, num_workers=options.loader_workers())
    recall = HotspotRecall(cache, val_files, cascade)
    trainer = make_trainer(options, out, "val_loss", "min", [recall, *callbacks])
    val_loader = DataLoader(val, **loader)
    trainer.fit(
        module,
        DataLoader(train, shuffle=False, drop_last=True, **loader),
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
            "options": dataclasses.asdict(options),
            "seconds": time.perf_counter() - started,
        }
        save_stage(out, "detector", model, replace(cascade, detector=config), info)
        log.info("detector: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    return metrics


def main(argv: list[str] | None = None) -> int:
    from training.pack.export import load_recipe

    parser = stage_parser("training.fit.detector", __doc__, DEFAULTS)
    parser.add_argument("--on-spot", type=float, default=0.7, help="share of on-spot windows")
    args = parser.parse_args(argv)
    setup_logging()
    train_detector(args.cache, args.out, load_recipe(args.config), options_from(args), args.on_spot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
