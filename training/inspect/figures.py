"""Figures of the training notebooks: targets, samples, learning curves, heatmaps beside their
annotations, recall@k, patch galleries, confusion matrices, reliability and parameter sweeps.

Cached detector-page fragments are drawn on their union box (:meth:`Cache.mosaic`), in its own
pixels; page-0 boxes are mapped to them with the cache's scale and offset here
(:mod:`stages.geometry` conventions).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from stages.metric import ERROR_MATRIX, N_CLASSES
from stages.nets import to_unit
from training.data.augment import BatchAugment
from training.data.cache import Cache
from training.data.targets import IGNORE
from training.fit.detector import WindowSet
from training.fit.patches import PatchSet
from training.inspect.inspection import GRADE_COLOURS, GRADE_NAMES

#: Colours of target classes 0–3 (transparent for 0) for overlays.
TARGET_CMAP = ListedColormap([(0, 0, 0, 0), *GRADE_COLOURS[1:]])


def _classes(axis: plt.Axes, target: np.ndarray, alpha: float) -> None:
    """A target's lesion classes over an image (benign, glass and ignored pixels clear)."""
    shown = np.where(target == IGNORE, 0, target)
    axis.imshow(shown, cmap=TARGET_CMAP, vmin=0, vmax=3, alpha=alpha, interpolation="nearest")


def _squares(axis: plt.Axes, cache: Cache, filename: str) -> None:
    row = cache.row(filename)
    sx, sy = float(row["detector_sx"]), float(row["detector_sy"])
    left, top = int(row["left"]), int(row["top"])
    squares = cache.squares[cache.squares["filename"] == filename]
    for square in squares.itertuples(index=False):
        axis.add_patch(
            Rectangle(
                (square.x / sx - left, square.y / sy - top),
                square.w / sx,
                square.h / sy,
                fill=False,
                lw=1.5,
                ec=GRADE_COLOURS[int(square.cls)],
            )
        )


def plot_targets(cache: Cache, filename: str) -> Figure:
    """A cached slide's detector page with its annotation squares, the detector target (class
    colours) and what the loss ignores (grey). 1 × 3 panels."""
    stem = str(cache.row(filename)["stem"])
    image, target = cache.mosaic(stem, "detector"), cache.mosaic(stem, "target")
    figure, axes = plt.subplots(1, 3, figsize=(16, 5.5), constrained_layout=True)
    axes[0].imshow(image)
    _squares(axes[0], cache, filename)
    axes[0].set_title(f"{filename}: detector page, annotation squares")
    axes[1].imshow(image)
    _classes(axes[1], target, 0.7)
    axes[1].set_title("target: class per pixel (benign and glass clear)")
    axes[2].imshow(image)
    axes[2].imshow(
        target == IGNORE,
        cmap=ListedColormap([(0, 0, 0, 0), (0.3, 0.3, 0.3, 0.8)]),
        interpolation="nearest",
    )
    axes[2].set_title(f"ignored: {np.mean(target == IGNORE):.0%} of the crop")
    for axis in axes:
        axis.set_axis_off()
    return figure


def training_windows(windows: WindowSet, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` items of a training :class:`~training.fit.detector.WindowSet` as the
    network sees them, but in uint8: ``(n, w, w, 3)`` windows after both parts of the
    augmentation (per sample, then the batch's colour jitter, seeded by ``seed``) and their
    ``(n, w, w)`` targets."""
    images, targets = zip(*(windows.sample(i) for i in range(n)), strict=True)
    unit = to_unit(torch.from_numpy(np.stack(images))).contiguous()
    BatchAugment(train=True).jitter(unit, torch.Generator().manual_seed(seed))
    shown = (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return shown, np.stack(targets)


def plot_windows(images: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> Figure:
    """Detector training windows (augmented, uint8 RGB) with their targets overlaid."""
    n = len(images)
    figure, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
    for axis, image, target in zip(axes[0], images, targets, strict=True):
        axis.imshow(image)
        _classes(axis, target, 0.5)
        shown = sorted(int(c) for c in np.unique(target) if c != IGNORE)
        axis.set_title(f"classes {shown}", fontsize=9)
        axis.set_axis_off()
    return figure


def plot_gallery(images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 8) -> Figure:
    """A grid of uint8 RGB images with titles."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.3 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, image, title in zip(axes.ravel(), images, titles, strict=False):
        axis.imshow(image)
        axis.set_title(title, fontsize=8)
    return figure


def plot_curves(curves: pd.DataFrame, groups: Sequence[Sequence[str]]) -> Figure:
    """Learning curves: one panel per group of metric columns, against the epoch."""
    figure, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.6), squeeze=False)
    for axis, keys in zip(axes[0], groups, strict=True):
        for key in keys:
            if key in curves:
                axis.plot(curves["epoch"], curves[key], marker="o", label=key)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    return figure


def plot_heatmap_beside_annotations(
    cache: Cache, filename: str, heat: np.ndarray, hotspots: Sequence[tuple[float, float]]
) -> Figure:
    """A validation slide: its cached detector page with the annotation squares, and the
    heatmap's lesion probability ``heat`` (``(H, W)``, covering the whole detector page) with the
    hotspot centres (page-0, numbered by rank)."""
    row = cache.row(filename)
    stem = str(row["stem"])
    image = cache.mosaic(stem, "detector")
    sx, sy = float(row["detector_sx"]), float(row["detector_sy"])
    left, top = int(row["left"]), int(row["top"])
    page_w, page_h = int(row["detector_page_width"]), int(row["detector_page_height"])
    figure, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    axes[0].imshow(image)
    _squares(axes[0], cache, filename)
    axes[0].set_title(f"{filename}: annotation squares (label {int(row['label'])})")
    shown = axes[1].imshow(
        heat, vmin=0, vmax=1, cmap="magma", extent=(-left, page_w - left, page_h - top, -top)
    )
    axes[1].set_xlim(0, image.shape[1])
    axes[1].set_ylim(image.shape[0], 0)
    for rank, (x, y) in enumerate(hotspots):
        axes[1].plot(x / sx - left, y / sy - top, "c+", ms=8)
        axes[1].text(x / sx - left, y / sy - top, str(rank), color="cyan", fontsize=7)
    axes[1].set_title("1 − p(no lesion) and the hotspots, by rank")
    figure.colorbar(shown, ax=axes[1], shrink=0.8)
    for axis in axes:
        axis.set_axis_off()
    return figure


def plot_recall(recall: dict[int, float]) -> Figure:
    """Hotspot recall of the annotated lesion squares against k."""
    figure, axis = plt.subplots(figsize=(5, 3.5))
    ks = sorted(recall)
    axis.plot(ks, [recall[k] for k in ks], marker="o")
    axis.set_xscale("log", base=2)
    axis.set_xticks(ks, [str(k) for k in ks])
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("k (hotspots)")
    axis.set_ylabel("recall of lesion squares")
    axis.grid(alpha=0.3)
    return figure


def plot_confusion(matrix: np.ndarray, title: str) -> Figure:
    """A 4 × 4 confusion matrix (rows true, columns predicted), counts written in the cells."""
    matrix = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(4.2, 3.8))
    axis.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        axis.text(
            j,
            i,
            str(int(value)),
            ha="center",
            va="center",
            color="white" if value > matrix.max() / 2 else "black",
        )
    axis.set_xticks(range(N_CLASSES))
    axis.set_yticks(range(N_CLASSES))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    return figure


def worst_misgraded(logits: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` patches of highest expected competition cost under their predicted
    probabilities (softmax of ``(N, 4)`` logits), worst first; only misgraded ones."""
    z = logits - logits.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    cost = (probs * ERROR_MATRIX[labels]).sum(1)
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    return wrong[np.argsort(-cost[wrong], kind="stable")][:n]


def plot_reliability(mean: np.ndarray, freq: np.ndarray, count: np.ndarray) -> Figure:
    """Reliability diagram: observed frequency against mean predicted probability per bin."""
    figure, axis = plt.subplots(figsize=(4.5, 4))
    used = count > 0
    axis.plot([0, 1], [0, 1], "k:", lw=1)
    axis.plot(mean[used], freq[used], marker="o")
    for x, y, c in zip(mean[used], freq[used], count[used], strict=True):
        axis.annotate(str(int(c)), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlabel("predicted probability")
    axis.set_ylabel("observed frequency")
    axis.set_title("slide probabilities, all classes")
    return figure


def plot_sweeps(sweeps: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> Figure:
    """Score against each parameter: ``name → (values, scores, fitted value)``."""
    n = len(sweeps)
    figure, axes = plt.subplots(1, n, figsize=(3.4 * n, 3), squeeze=False)
    for axis, (name, (values, scores, fitted)) in zip(axes[0], sweeps.items(), strict=True):
        axis.plot(values, scores, marker=".")
        axis.axvline(fitted, color="tab:red", ls="--", lw=1)
        axis.set_xscale("log")
        axis.set_title(name, fontsize=9)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("score")
    return figure


def plot_patch_gallery(patches: PatchSet, rows: Sequence[int]) -> Figure:
    """The cached patches of ``rows`` of a :class:`~training.fit.patches.PatchSet`, titled
    with their kind and class."""
    table = patches.rows
    return plot_gallery(
        [patches.image(j) for j in rows],
        [f"{table.at[j, 'kind']} · {GRADE_NAMES[int(table.at[j, 'cls'])]}" for j in rows],
    )
