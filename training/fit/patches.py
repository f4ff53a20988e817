"""Stage 2's patches and what is measured on them: the patch dataset of both classifier trainers
(:mod:`training.fit.classifier`, :mod:`training.fit.head`), the weighted patch score, the
temperature fit and the logits of a patch set.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar
from torch import nn
from torch.utils.data import DataLoader

from stages.classifier import ClassifierConfig
from stages.metric import ERROR_MATRIX, N_CLASSES
from stages.nets import inference
from training.data.augment import BatchAugment, SampleAugment
from training.data.cache import Cache
from training.fit.common import EpochDraws

#: Weight of the validation loss in ``val_select``: it only breaks ties of the patch score.
LOSS_TIE_BREAK = 1e-6


class PatchSet(EpochDraws):
    """Patches of the cache rows ``rows`` as ``(image (p, p, 3) uint8, class int64)`` (the
    photometric part of augmentation and the normalisation run on the batch, on the training
    device: :class:`training.data.augment.BatchAugment`).

    With ``train``, item ``i`` of epoch ``epoch`` draws a class uniformly and a random patch of
    it (seeded by ``(seed, epoch, i)``), geometrically augmented; otherwise item ``i`` is row
    ``i``, centre-cropped only. The patch arrays are read through the cache's bounded pool of
    memory maps, so open files do not grow with the slides.
    """

    def __init__(
        self,
        cache: Cache,
        rows: pd.DataFrame,
        config: ClassifierConfig,
        samples: int,
        train: bool,
        seed: int,
    ) -> None:
        super().__init__()
        self.cache, self.config, self.train, self.seed = cache, config, train, seed
        self.rows = rows.reset_index(drop=True)
        self.samples = samples
        self.augment = SampleAugment(config.patch, train)
        classes = self.rows["cls"].to_numpy(np.int64)
        self.by_class = [np.flatnonzero(classes == c) for c in range(N_CLASSES)]
        self.present = [c for c in range(N_CLASSES) if len(self.by_class[c])]
        # compact columns: a slide's stem and source once, the rest as arrays
        self._keys = pd.Categorical(self.rows["stem"].astype(str) + "/" + self.rows["source"])
        self._index = self.rows["index"].to_numpy(np.int64)
        self._classes = classes

    def __len__(self) -> int:
        return self.samples if self.train else len(self.rows)

    def image(self, j: int) -> np.ndarray:
        """The cached ``(S, S, 3)`` uint8 crop of row ``j``."""
        stem, source = str(self._keys[j]).rsplit("/", 1)
        return self.cache.item(stem, source, int(self._index[j]))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            members = self.by_class[self.present[int(rng.integers(len(self.present)))]]
            j = int(members[rng.integers(len(members))])
        else:
            j = i
        image, _ = self.augment(self.image(j), None, rng)
        return torch.from_numpy(image), int(self._classes[j])


def patch_score(confusion: np.ndarray) -> float:
    """The competition metric on patches: 1 − mean error-matrix entry, from a 4 × 4 confusion
    matrix (rows true, columns predicted); NaN when it is empty."""
    total = confusion.sum()
    return float(1 - (confusion * ERROR_MATRIX).sum() / total) if total else float("nan")


def balanced_patch_score(confusion: np.ndarray) -> float:
    """The competition metric on patches with every true class weighted alike: 1 − the mean,
    over the classes that have patches, of each class's mean error-matrix entry, from a 4 × 4
    confusion matrix (rows true, columns predicted); NaN when it is empty.

    A slide's class is its worst lesion, so the rare high-grade patches decide slides; in the
    natural mix (two thirds class 0) a model that calls grade 3 grade 2 loses little of
    :func:`patch_score`, and of this a quarter of that grade's share."""
    rows = confusion.sum(1)
    present = rows > 0
    if not present.any():
        return float("nan")
    costs = (confusion * ERROR_MATRIX).sum(1)[present] / rows[present]
    return float(1 - costs.mean())


def patch_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Per-class accuracy (``val_acc_c``, recall of class c), ``val_score``
    (:func:`patch_score`) and ``val_balanced`` (:func:`balanced_patch_score`) of a 4 × 4
    confusion matrix of validation patches."""
    recall = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    metrics = {f"val_acc_{c}": float(recall[c]) for c in range(N_CLASSES)}
    return metrics | {
        "val_score": patch_score(confusion),
        "val_balanced": balanced_patch_score(confusion),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the mean log-loss of ``softmax(logits / T)`` for
    ``(N, C)`` logits and ``(N,)`` integer labels (1.0 without data)."""
    if not len(labels):
        return 1.0
    z = torch.tensor(np.asarray(logits, np.float64))  # a copy: the inputs may be read-only
    y = torch.tensor(np.asarray(labels, np.int64))

    def loss(log_t: float) -> float:
        return float(nn.functional.cross_entropy(z / math.exp(log_t), y))

    result = minimize_scalar(loss, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(result.x))


def selection_score(score: float, loss: float) -> float:
    """``val_select``: a patch score (the trainers pass :func:`balanced_patch_score`), ties
    broken by the validation loss (weighted
    :data:`LOSS_TIE_BREAK`, below one patch's step of the score)."""
    return (score if math.isfinite(score) else 0.0) - LOSS_TIE_BREAK * min(loss, 100.0)


def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """``(N, C)`` float32 logits of every item of ``loader`` (over an evaluation
    :class:`PatchSet`), the network on ``device`` in ``autocast`` (None: float32); only the
    logits come back to the CPU."""
    config = loader.dataset.config
    model.eval().to(device)
    normalise = BatchAugment(config.mean, config.std, train=False).to(device)
    out = []
    with inference(device, autocast):
        for x, _ in loader:
            out.append(model(normalise(x.to(device, non_blocking=True))).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, N_CLASSES), np.float32)
