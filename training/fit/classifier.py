"""Train stage 2, the patch classifier, on the cached classifier-page patches.

``python -m training.fit.classifier CACHE OUT [--preset tiny] [--epochs 10] [--val-fold 0] …``

Patches (:mod:`training.data.cache`): jittered inside annotation squares (the square's class),
random tissue of label-0 slides (class 0) and hard negatives, the detector's top hotspots on
label-0 slides (class 0, :mod:`training.fit.hard_negatives`). Each is cut ``crop_factor``
larger, augmented and centre-cropped (:mod:`training.data.augment`).

Loss: plain cross-entropy on class-balanced draws (each training item picks a class uniformly,
then a patch of it). The error matrix is ordinal, but it is applied once, where it decides: the
slide decision takes the class of least expected cost under calibrated probabilities. Weighting
the patch loss by the matrix as well would count the costs twice and skew the probabilities the
decision needs; class balance only keeps the rare classes from being drowned by class 0. The
temperature that calibrates the probabilities is fitted afterwards on the validation patches
(natural class mix) by minimising their log-loss.

Logged per epoch (``OUT/logs``): losses, per-class accuracy, the weighted patch score (the
competition metric on patches), the same with every class weighted alike and the confusion
matrix (``OUT/confusion.json``). The weights kept are the epoch of best ``val_select``: the
class-balanced patch score (:func:`training.fit.patches.balanced_patch_score`: in the natural
mix, two thirds class 0, an epoch that calls grade 3 grade 2 would look best), ties broken by
the validation loss. Writes
``OUT/classifier.safetensors``, ``OUT/classifier.json`` and ``OUT/validation.npz`` (logits,
labels and the patches' cache rows, for the notebook's worst-misgraded gallery).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from stages.classifier import ClassifierConfig, PatchClassifier
from stages.config import CascadeConfig
from stages.metric import N_CLASSES, confusion_matrix
from stages.nets import pick_precision
from training.cli import setup_logging
from training.data.cache import Cache
from training.fit.common import (
    StageModule,
    best_state,
    command_line,
    make_loader,
    make_trainer,
    options_from,
    resume_path,
    stage_parser,
    start_weights,
)
from training.fit.head import train_head
from training.fit.patches import (
    PatchSet,
    fit_temperature,
    patch_metrics,
    predict_logits,
    selection_score,
)
from training.presets import PRESETS, TrainOptions, load_preset
from training.stageio import save_stage

log = logging.getLogger(__name__)

#: The trainer's defaults: the ``tiny`` preset's.
DEFAULTS = PRESETS["tiny"].classifier


class ClassifierModule(StageModule):
    """The patch classifier with its loss and validation confusion matrix."""

    def __init__(
        self, config: ClassifierConfig, lr: float, weight_decay: float, epochs: int, seed: int = 0
    ):
        super().__init__(lr, weight_decay, epochs, config.mean, config.std, seed)
        self.config = config
        self.model = PatchClassifier(config)
        self.loss = nn.CrossEntropyLoss()
        self.confusion = torch.zeros(N_CLASSES, N_CLASSES)
        self._loss_sum = torch.zeros(2)
        self.confusion_file: Path | None = None
        self.frozen: list[nn.Module] = []  # encoder parts that do not train (kept in eval mode)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()  # the epoch's draws and augmentation seed
        for part in self.frozen:
            part.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self.model(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False, sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.confusion = torch.zeros(N_CLASSES, N_CLASSES)
        self._loss_sum = torch.zeros(2)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        loss = self.loss(logits, y)
        self.log("val_loss", loss, on_epoch=True, sync_dist=True)
        self._loss_sum += torch.tensor([float(loss) * len(y), len(y)])
        pred = logits.argmax(1)
        self.confusion += torch.from_numpy(
            confusion_matrix(y.cpu().numpy(), pred.cpu().numpy())
        ).float()

    def on_validation_epoch_end(self) -> None:
        matrix = self.trainer.strategy.reduce(self.confusion.to(self.device), reduce_op="sum")
        matrix = matrix.cpu().numpy()
        loss_sum, count = self.trainer.strategy.reduce(
            self._loss_sum.to(self.device), reduce_op="sum"
        ).tolist()
        metrics = patch_metrics(matrix)
        metrics["val_select"] = selection_score(metrics["val_balanced"], loss_sum / max(count, 1))
        self.log_dict(metrics)
        if self.confusion_file is not None and self.trainer.is_global_zero:
            self.confusion_file.write_text(json.dumps(matrix.astype(int).tolist()) + "\n")


def freeze_encoder(encoder: nn.Module, blocks: int) -> list[nn.Module]:
    """Stop gradients in ``encoder`` except in its last ``blocks`` blocks (the ``blocks`` of a
    timm model, or of the timm model that an smp ``tu-`` encoder wraps, with the norms after
    them; else its top-level children); -1: all train. Returns the frozen modules (to keep in
    eval mode: their batch-norm statistics stay as they began)."""
    if blocks < 0:
        return []
    core = getattr(encoder, "model", encoder)
    units = list(core.blocks) if hasattr(core, "blocks") else list(core.children())
    train = units[len(units) - blocks :] if blocks else []
    if hasattr(core, "blocks") and blocks:
        train += [getattr(core, n) for n in ("norm", "fc_norm") if hasattr(core, n)]
    encoder.requires_grad_(False)
    for unit in train:
        unit.requires_grad_(True)
    frozen = [m for m in encoder.modules() if not any(p.requires_grad for p in m.parameters())]
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    log.info(
        "encoder: the last %d of %d blocks train (%d parameters)", blocks, len(units), trainable
    )
    return frozen


def training_patches(cache: Cache, config: ClassifierConfig, options: TrainOptions) -> PatchSet:
    """The classifier's training patches: ``options.samples`` class-balanced draws an epoch from
    the cache's patches outside fold ``options.val_fold``."""
    rows = cache.patches[cache.patches["fold"] != options.val_fold]
    return PatchSet(cache, rows, config, options.samples, True, options.seed)


def train_classifier(
    cache_root: Path,
    out: Path,
    cascade: CascadeConfig,
    options: TrainOptions = DEFAULTS,
    callbacks: Sequence[pl.Callback] = (),
) -> dict:
    """Train the classifier of ``cascade`` on the cache, fit its temperature on the validation
    patches and write the stage to ``out``; returns its validation metrics. With
    ``options.train_blocks`` 0 only the head trains, on cached features (:mod:`.head`); with
    N > 0 the encoder's last N blocks and the head (:func:`freeze_encoder`)."""
    if options.train_blocks == 0:
        return train_head(cache_root, out, cascade, options)
    started = time.perf_counter()
    pl.seed_everything(options.seed, workers=True, verbose=False)
    cache = Cache.open(cache_root)
    config = replace(cascade.classifier)
    train = training_patches(cache, config, options)
    val_rows = cache.patches[cache.patches["fold"] == options.val_fold]
    val = PatchSet(cache, val_rows, config, 0, False, options.seed)
    counts = {
        name: data.rows.groupby(["kind", "cls"]).size().to_dict()
        for name, data in (("train", train), ("val", val))
    }
    log.info("classifier patches (kind, class): %s", counts)
    module = ClassifierModule.from_options(config, options)
    start_weights(module.model, options, config.encoder)
    module.frozen = freeze_encoder(module.model.encoder, options.train_blocks)
    out.mkdir(parents=True, exist_ok=True)
    module.confusion_file = out / "confusion.json"
    trainer = make_trainer(options, out, "val_select", "max", callbacks)
    val_loader = make_loader(val, options, train=False)
    trainer.fit(
        module,
        make_loader(train, options, train=True),
        val_loader,
        ckpt_path=resume_path(options, out),
    )
    metrics: dict = {}
    if trainer.is_global_zero:
        model = PatchClassifier(config)
        model.load_state_dict(best_state(out))
        # on the fit's device (Lightning hands the module back on the CPU), in the inference
        # precision the runtime would use there
        device = trainer.strategy.root_device
        logits = predict_logits(model, val_loader, device, pick_precision(device))
        model.cpu()
        labels = val.rows["cls"].to_numpy(np.int64)
        temperature = fit_temperature(logits, labels)
        config = replace(config, temperature=temperature)
        matrix = confusion_matrix(labels, logits.argmax(1))
        metrics = patch_metrics(matrix) | {"temperature": temperature}
        np.savez_compressed(
            out / "validation.npz",
            logits=logits,
            labels=labels,
            stems=val.rows["stem"].to_numpy(str),
            sources=val.rows["source"].to_numpy(str),
            indices=val.rows["index"].to_numpy(np.int64),
            kinds=val.rows["kind"].to_numpy(str),
        )
        info = {
            "metrics": metrics,
            "confusion": matrix.tolist(),
            "data": str(cache_root),
            "command": command_line(),
            "val_fold": options.val_fold,
            "options": dataclasses.asdict(options),
            "seconds": time.perf_counter() - started,
        }
        save_stage(out, "classifier", model, replace(cascade, classifier=config), info)
        log.info(
            "classifier: %s; confusion %s",
            {k: round(v, 4) for k, v in metrics.items()},
            matrix.tolist(),
        )
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("training.fit.classifier", __doc__, DEFAULTS)
    args = parser.parse_args(argv)
    setup_logging()
    train_classifier(args.cache, args.out, load_preset(args.preset).cascade, options_from(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
