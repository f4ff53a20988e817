"""What the two stage trainers share: their command line, the Lightning trainer, loaders, weights.

Training uses PyTorch Lightning for what loops otherwise hand-write: checkpoints (``last.ckpt``
and ``best.ckpt``) and ``--resume``, mixed precision on a GPU, multi-GPU / multi-node DDP with
the same command (``--devices N --num-nodes M``), early stopping, CSV logs
(``OUT/logs/version_N/metrics.csv``, one per run) and a progress bar. The same commands run on
a CPU.

A trained stage is written to its output folder as ``<stage>.safetensors`` plus ``<stage>.json``
(:mod:`training.stageio`); the export (:mod:`training.pack.export`) assembles those into
``assets/``. The options (:class:`training.presets.TrainOptions`) and their defaults are the
presets' (:mod:`training.presets`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing as mp
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import lightning.pytorch as pl
import pandas as pd
import segmentation_models_pytorch as smp
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from stages.encoders import load_encoder_checkpoint
from stages.nets import AssetsError
from training.cli import command_parser
from training.data.augment import BatchAugment
from training.presets import TrainOptions

log = logging.getLogger(__name__)

#: A validation loader's share of the training loader's workers: it reads a small fixed set
#: once an epoch, and each worker is a whole process holding prefetched batches in shared memory.
VAL_WORKER_SHARE = 4


def add_options(parser: argparse.ArgumentParser, defaults: TrainOptions) -> None:
    """Add one ``--flag`` per :class:`TrainOptions` field, with ``defaults``."""
    for f in dataclasses.fields(TrainOptions):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help="resume from last.ckpt")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=default, help=f"default {default}")


def options_from(args: argparse.Namespace) -> TrainOptions:
    """The :class:`TrainOptions` of parsed arguments (see :func:`add_options`)."""
    return TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)})


def option_args(options: TrainOptions) -> list[str]:
    """The ``--flag value`` arguments that :func:`options_from` parses back into ``options``
    (every field; a true ``resume`` as the bare ``--resume``)."""
    args: list[str] = []
    for f in dataclasses.fields(TrainOptions):
        flag, value = "--" + f.name.replace("_", "-"), getattr(options, f.name)
        if f.type == "bool":
            args += [flag] if value else []
        else:
            args += [flag, str(value)]
    return args


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


class EpochLog(pl.Callback):
    """One log line per epoch: its validation metrics, the time spent and the ETA (the progress
    bar is for terminals; logs redirected to a file get these lines)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys, self.started = keys, time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:  # after validation: both metrics are in
            return
        done = trainer.current_epoch + 1
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (trainer.max_epochs - done)
        metrics = trainer.callback_metrics
        shown = " ".join(f"{k} {float(metrics[k]):.4f}" for k in self.keys if k in metrics)
        log.info(
            "epoch %d/%d: %s; %.0f s, ETA %.0f s", done, trainer.max_epochs, shown, elapsed, eta
        )


class EpochDraws(Dataset):
    """A dataset whose items are drawn afresh each epoch (seeded by epoch and index). The epoch
    lives in shared memory, so persistent loader workers see it change."""

    def __init__(self) -> None:
        self._epoch = mp.RawValue("i", 0)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.value = value


def _one_thread(worker: int) -> None:
    """A loader worker computes on one thread (the workers are the parallelism). Safe because
    workers are spawned: in a forked child, OpenCV's inherited thread pool deadlocks here."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def val_workers(workers: int) -> int:
    """A validation loader's workers beside a training loader's ``workers``: a
    :data:`VAL_WORKER_SHARE`-th of them, at least one when there are any."""
    return max(1, workers // VAL_WORKER_SHARE) if workers > 0 else 0


def make_loader(
    dataset: Dataset, options: TrainOptions, train: bool, workers: int | None = None
) -> DataLoader:
    """A loader of ``dataset`` in order (its items are random draws already), in batches of
    ``options.batch_size`` (the last partial batch dropped for training), with ``workers``
    persistent workers (default: :meth:`TrainOptions.loader_workers` for training,
    :func:`val_workers` of them otherwise) that prefetch ``options.prefetch`` batches each, into
    pinned memory when training on a GPU. Workers are spawned, not forked (a fork inherits the
    training process's OpenCV and OpenMP thread pools in an unusable state); the dataset travels
    to them pickled, without its open memory maps. They persist because a spawned worker
    imports torch and the training modules afresh: seconds that each epoch would pay again."""
    if workers is None:
        workers = options.loader_workers() if train else val_workers(options.loader_workers())
    extra = {"persistent_workers": True, "prefetch_factor": options.prefetch} if workers else {}
    return DataLoader(
        dataset,
        batch_size=options.batch_size,
        shuffle=False,
        drop_last=train,
        num_workers=workers,
        pin_memory=options.gpu(),
        worker_init_fn=_one_thread if workers else None,
        multiprocessing_context="spawn" if workers else None,
        **extra,
    )


def training_autocast(trainer: pl.Trainer, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``trainer``'s precision on ``device`` (None: float32), for work
    done outside Lightning's steps in the training precision."""
    precision = str(trainer.precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16") and device.type == "cuda":
        return torch.float16
    return None


class StageModule(pl.LightningModule):
    """What both stages' Lightning modules share: AdamW with a cosine schedule over the run's
    epochs; telling the training set which epoch it draws for (its items are seeded by epoch,
    so that every epoch, and every resumed one, sees the same fresh draws); and the batch's
    photometric augmentation and normalisation on the training device
    (:class:`training.data.augment.BatchAugment`, seeded by ``seed``, epoch and rank)."""

    def __init__(
        self,
        lr: float,
        weight_decay: float,
        epochs: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.lr, self.weight_decay, self.epochs, self.seed = lr, weight_decay, epochs, seed
        # a tuple, so that they stay out of the module's state dict
        self._augment = (BatchAugment(mean, std, train=True), BatchAugment(mean, std, train=False))
        self._generator: torch.Generator | None = None

    @classmethod
    def from_options(cls, config: object, options: TrainOptions) -> StageModule:
        """A stage's module (its ``__init__`` takes ``(config, lr, weight_decay, epochs, seed)``)
        for its ``config`` and the training ``options``."""
        return cls(config, options.lr, options.weight_decay, options.epochs, options.seed)

    def on_train_epoch_start(self) -> None:
        self.trainer.train_dataloader.dataset.epoch = self.current_epoch
        self._generator = torch.Generator(device=self.device)
        draw = (self.seed * 1_000_003 + self.current_epoch) * 1009 + self.global_rank
        self._generator.manual_seed(draw % 2**63)

    def inputs(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 loader images → the network's ``(N, 3, H, W)`` float32 input,
        photometrically augmented when ``train``."""
        augment = self._augment[0 if train else 1].to(x.device)
        return augment(x, self._generator if train else None)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        x, *rest = batch
        return (self.inputs(x, self.trainer.training), *rest)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.epochs, 1))
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def stage_parser(prog: str, doc: str | None, defaults: TrainOptions) -> argparse.ArgumentParser:
    """The command line of a stage trainer: ``CACHE OUT [--preset …]`` and every option."""
    parser = command_parser(prog, doc)
    parser.add_argument("cache", type=Path, help="cache folder (python -m training.data.cache)")
    parser.add_argument("out", type=Path, help="output folder of the stage")
    parser.add_argument("--preset", default="tiny", help="preset name or JSON file (its cascade)")
    parser.add_argument("--config", dest="preset", help=argparse.SUPPRESS)  # the old name
    add_options(parser, defaults)
    return parser


def trainer_precision(options: TrainOptions) -> str:
    """Lightning's precision for ``options``: ``auto`` is 16-bit mixed on a GPU, else 32-bit."""
    if options.precision != "auto":
        return options.precision
    return "16-mixed" if options.gpu() else "32-true"


def make_trainer(
    options: TrainOptions,
    out: Path,
    monitor: str,
    mode: str,
    callbacks: Sequence[pl.Callback] = (),
) -> pl.Trainer:
    """A Lightning trainer writing checkpoints and logs under ``out``; it keeps ``best.ckpt`` by
    ``monitor`` (``mode`` ``min`` or ``max``), stops after ``patience`` epochs without gain and
    logs each epoch (:class:`EpochLog`) besides ``callbacks``."""
    best = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        enable_version_counter=False,
    )
    # every epoch, whether or not it was the best (Lightning's save_last follows the best only)
    last = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )
    return pl.Trainer(
        max_epochs=options.epochs,
        accelerator=options.accelerator,
        devices=_devices(options.devices),
        num_nodes=options.num_nodes,
        precision=trainer_precision(options),
        callbacks=[
            best,
            last,
            EarlyStopping(monitor, patience=options.patience, mode=mode, check_finite=False),
            EpochLog(list(dict.fromkeys(["train_loss", "val_loss", monitor]))),
            *callbacks,
        ],
        enable_progress_bar=sys.stderr.isatty(),
        logger=CSVLogger(out, name="logs"),  # a version_N per run: a resume keeps the old logs
        default_root_dir=out,
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
    )


def learning_curves(out: Path) -> pd.DataFrame:
    """One row per epoch of a stage's CSV logs (every run of it, a resume included): the
    epoch's training and validation metrics."""
    runs = sorted(
        (out / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])
    )
    if not runs:
        return pd.DataFrame(columns=["epoch"])
    frame = pd.concat([pd.read_csv(p) for p in runs], ignore_index=True)
    return frame.groupby("epoch").last().reset_index().drop(columns="step", errors="ignore")


def resume_path(options: TrainOptions, out: Path) -> str | None:
    """``last.ckpt`` when resuming and it exists (else a fresh start, logged)."""
    last = out / "checkpoints" / "last.ckpt"
    if not options.resume:
        return None
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    log.warning("--resume: no %s; starting afresh", last)
    return None


def best_state(out: Path) -> dict[str, torch.Tensor]:
    """The network's state dict from ``best.ckpt`` (the module's ``model.`` prefix removed)."""
    path = out / "checkpoints" / "best.ckpt"
    if not path.is_file():
        raise RuntimeError(
            f"{path}: no epoch was validated; is --samples smaller than --batch-size times the "
            "number of devices (a training epoch needs at least one full batch on each)?"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def start_weights(model: torch.nn.Module, options: TrainOptions, encoder: str) -> None:
    """Fill ``model`` (with an ``encoder`` attribute, smp-style) from ``--encoder-weights`` or
    ``--init`` (a state dict of the whole network or of its encoder); leaves it as built
    otherwise."""
    if options.encoder_weights == "imagenet":
        pretrained = smp.encoders.get_encoder(encoder, in_channels=3, weights="imagenet")
        model.encoder.load_state_dict(pretrained.state_dict())
        log.info("encoder %s: ImageNet weights (smp download)", encoder)
    if options.init and getattr(model, "source", "smp") == "timm":
        try:  # a foundation model's checkpoint, in its model card's layout
            load_encoder_checkpoint(model.encoder, Path(options.init))
            log.info("--init %s: the encoder's weights", options.init)
            return
        except AssetsError:
            pass  # a whole classifier's state dict, loaded below
    if options.init:
        path = Path(options.init)
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        for part in (model, model.encoder):  # the whole network, else an encoder's weights
            result = part.load_state_dict(state, strict=False)
            loaded = len(state) - len(result.unexpected_keys)
            if loaded:
                break
        else:
            raise ValueError(f"--init {path}: no key matches the model or its encoder")
        log.info(
            "--init %s: %d tensors loaded, %d of the model's missing",
            path,
            loaded,
            len(result.missing_keys),
        )


def command_line() -> str:
    """The command that is running, as one shell line."""
    return shlex.join(["python", *sys.orig_argv[1:]])
