"""Stage 2 on a frozen encoder: features computed once per cached patch, a head trained on them.

``python -m training.fit.classifier CACHE OUT --preset PRESET --train-blocks 0 [--init FILE]``
(:func:`training.fit.classifier.train_classifier` comes here when no encoder block is trained).

The way pathology foundation models are used: the encoder never trains, so each cached patch
(centre crop, :mod:`training.data.cache`) goes through it once, on the training device in the
precision the runtime's inference uses there (:func:`stages.nets.pick_precision`: float16 on a
GPU, bfloat16 on a CPU that computes it natively, else float32), read by all the training
loader's workers (:meth:`training.presets.TrainOptions.loader_workers`). Its ``(D,)``
features are stored in the cache as float16, ``CACHE/features/<key>.npy`` (rows in
``patches.csv`` order) with ``<key>.json``: half the disk and memory of float32, and as fine as
what a GPU's encoder computes them in; the head trains on them cast to float32. The key hashes
the classifier's config and its start weights, so another encoder or checkpoint gets its own
file and a rerun reuses it (whichever device computed it: the JSON names device and dtype). The
head (dropout and linear, or the MLP of ``head_hidden``) then trains on those features in plain
torch: class-balanced draws as :class:`training.fit.patches.PatchSet`'s, AdamW with a cosine
schedule, the epoch of best ``val_select`` kept, the temperature fitted on the validation
patches. Augmentation is not applied: a feature is computed from one view of its patch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from stages.classifier import PatchClassifier
from stages.config import CascadeConfig
from stages.metric import N_CLASSES, confusion_matrix
from stages.nets import inference, pick_precision
from training.data.augment import BatchAugment
from training.data.cache import Cache
from training.fit.common import command_line, make_loader, start_weights
from training.fit.patches import PatchSet, fit_temperature, patch_metrics, selection_score
from training.presets import TrainOptions
from training.stageio import save_stage

log = logging.getLogger(__name__)

FEATURES = "features"


def feature_key(cascade: CascadeConfig, options: TrainOptions) -> str:
    """16 hex digits naming the features of this encoder, input and start weights."""
    stage2 = cascade.classifier
    fields = {k: v for k, v in dataclasses.asdict(stage2).items() if k not in ("temperature",)}
    weights = ""
    if options.init:
        digest = hashlib.sha256()
        with open(options.init, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        weights = digest.hexdigest()
    text = json.dumps([fields, weights, options.encoder_weights], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_features(
    cache: Cache,
    model: PatchClassifier,
    cascade: CascadeConfig,
    options: TrainOptions,
    device: torch.device,
) -> np.ndarray:
    """``(rows, D)`` float16 features of every cached patch (``cache.patches`` order), computed
    once in eval mode (centre crops) on ``device`` in its inference precision
    (:func:`stages.nets.pick_precision`), the patches read by every loader worker of
    ``options``, and kept in ``CACHE/features``."""
    key = feature_key(cascade, options)
    folder = cache.root / FEATURES
    path, meta = folder / f"{key}.npy", folder / f"{key}.json"
    rows = cache.patches
    if path.is_file() and meta.is_file():
        features = np.load(path, mmap_mode="r")
        if len(features) == len(rows):
            log.info("features %s: %d patches × %d, cached", path, *features.shape)
            return np.asarray(features)
    folder.mkdir(parents=True, exist_ok=True)
    stage2 = cascade.classifier
    data = PatchSet(cache, rows, stage2, 0, False, options.seed)
    normalise = BatchAugment(stage2.mean, stage2.std, train=False).to(device)
    model.eval().to(device)
    autocast = pick_precision(device)
    out = np.zeros((len(rows), model.features_dim), np.float16)
    start, first = time.perf_counter(), 0
    # a single pass, but the whole of the work: all the training loader's workers
    loader = make_loader(data, options, train=False, workers=options.loader_workers())
    with inference(device, autocast):
        for x, _ in tqdm(loader, desc="features", unit="batch", mininterval=10):
            f = model.features(normalise(x.to(device, non_blocking=True))).half().cpu().numpy()
            out[first : first + len(f)] = f
            first += len(f)
    seconds = time.perf_counter() - start
    tmp = folder / f".{key}.tmp.npy"
    np.save(tmp, out)
    os.replace(tmp, path)
    info = {
        "encoder": stage2.encoder,
        "rows": len(rows),
        "dim": int(out.shape[1]),
        "device": str(device),
        "dtype": str(autocast or torch.float32).removeprefix("torch."),
    }
    meta.write_text(json.dumps(info | {"seconds": seconds, "init": options.init}) + "\n")
    log.info("features of %d patches in %.0f s (%.1f ms each) -> %s", len(rows), seconds,
             1000 * seconds / max(len(rows), 1), path)  # fmt: skip
    return out


def balanced_draws(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` row indices: a class drawn uniformly among those present, then a row of it."""
    groups = [np.flatnonzero(labels == c) for c in range(N_CLASSES)]
    groups = [g for g in groups if len(g)]
    classes = rng.integers(len(groups), size=n)
    return np.array([groups[c][rng.integers(len(groups[c]))] for c in classes], np.int64)


def train_head(
    cache_root: Path, out: Path, cascade: CascadeConfig, options: TrainOptions
) -> dict[str, float]:
    """Train ``cascade``'s classifier head on its frozen encoder's cached features; write the
    stage to ``out`` as :func:`training.fit.classifier.train_classifier` does; its metrics."""
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if options.accelerator == "cpu":
        device = torch.device("cpu")
    cache = Cache.open(cache_root)
    model = PatchClassifier(cascade.classifier)
    start_weights(model, options, cascade.classifier.encoder)
    for layer in model.head.modules():  # the head always starts afresh (a whole --init has one)
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    features = torch.from_numpy(
        cached_features(cache, model, cascade, options, device).astype(np.float32)
    )
    labels = cache.patches["cls"].to_numpy(np.int64)
    val = cache.patches["fold"].to_numpy() == options.val_fold
    train_x, train_y = features[~val], labels[~val]
    val_x, val_y = features[val].to(device), torch.from_numpy(labels[val])
    head = model.head[2:].to(device)
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=options.lr, weight_decay=options.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
    loss_fn = nn.CrossEntropyLoss()
    best, best_state, history = -math.inf, None, []
    for epoch in range(options.epochs):
        head.train()
        order = balanced_draws(train_y, options.samples, rng)
        for first in range(0, len(order) - options.batch_size + 1, options.batch_size):
            rows = order[first : first + options.batch_size]
            x = train_x[rows].to(device)
            y = torch.from_numpy(train_y[rows]).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(head(x), y).backward()
            optimizer.step()
        schedule.step()
        head.eval()
        with torch.inference_mode():
            logits = head(val_x).float().cpu()
        val_loss = float(loss_fn(logits, val_y)) if len(val_y) else math.nan
        metrics = patch_metrics(confusion_matrix(val_y.numpy(), logits.argmax(1).numpy()))
        select = selection_score(metrics["val_balanced"], val_loss)
        history.append({"epoch": epoch, "val_loss": val_loss, **metrics})
        log.info("head epoch %d/%d: val_score %.4f, val_balanced %.4f, val_loss %.4f",
                 epoch + 1, options.epochs, metrics["val_score"], metrics["val_balanced"],
                 val_loss)  # fmt: skip
        if select > best:
            best = select
            best_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    head.eval()
    with torch.inference_mode():
        logits = head(val_x).float().cpu().numpy()
    temperature = fit_temperature(logits, val_y.numpy())
    matrix = confusion_matrix(val_y.numpy(), logits.argmax(1))
    metrics = patch_metrics(matrix) | {"temperature": temperature}
    config = replace(cascade.classifier, temperature=temperature)
    info = {
        "metrics": metrics,
        "confusion": matrix.tolist(),
        "history": history,
        "data": str(cache_root),
        "command": command_line(),
        "val_fold": options.val_fold,
        "options": dataclasses.asdict(options),
        "frozen_encoder": True,
        "seconds": time.perf_counter() - started,
    }
    save_stage(out, "classifier", model.cpu(), replace(cascade, classifier=config), info)
    log.info("head on frozen %s: %s", config.encoder, {k: round(v, 4) for k, v in metrics.items()})
    return metrics
