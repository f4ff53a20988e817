"""Slide decision: graded patches + heatmap hotspots → slide class probabilities → least-cost class.

The slide label is the most severe lesion present, so each source of evidence is read as the
distribution of a **maximum**. Classes 0..3 (benign, low-grade, high-grade, invasive).

1. Max-grade CDF of one source (graded patches, or heatmap hotspots) with items ``p_i`` (N, 4)::

       F_i(c) = Σ_{t ≤ c} p_i(t),        F_s(c) = Π_i F_i(c) ** w_s        (c = 0, 1, 2)

   ``w_s`` (``*_temper``) tempers the product: 1 treats the items as independent, < 1 lets
   overlapping, correlated items count for less. ``P_s(max = c) = F_s(c) − F_s(c − 1)``.
2. Cumulative-logit pooling of the sources, starting from the class prior ``π`` (CDF ``F_π``)::

       logit F(c) = logit F_π(c) + Σ_s a_s · logit clip(F_s(c), ε, 1 − ε)

   with ``F(3) = 1`` and ``P(c) = F(c) − F(c − 1)``. Every term is non-decreasing in c (weights
   ≥ 0), so F is a valid CDF and P sums to 1. A source with no items, or at ``F_s = ½``, has no
   say; a confident source overrules the prior, and a confidently benign patch source can veto an
   uncertain heatmap. Adding a patch to a non-empty source only lowers ``F_patch``, hence ``F``:
   the result moves up in stochastic order and ``P(3) = 1 − F(2)`` never drops (a first patch
   does the same whenever its tempered ``F_i(c) ** w ≤ ½``, e.g. a confident grade-3 patch, and
   the heatmap-only weight and temper are the heatmap's own).
3. So with no graded patches the heatmap hotspots decide (with the prior, and their own weight
   and temper ``heat_only_*`` when set), and with neither the result is the prior itself.
   :func:`decide` picks the class of least expected competition cost
   ``Σ_t P(t) · ERROR_MATRIX[t, c]`` (not the most probable one).

The prior, weights ``a_*`` and tempers ``w_*`` are fitted on labelled slides
(:mod:`training.fit.decision`); a weight on the prior would be redundant, as any such weighting
is another prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from stages.metric import ERROR_MATRIX, N_CLASSES

#: Slide counts of classes 0..3 among the 1,015 labelled TissueNet training slides.
LABEL_COUNTS = (270, 288, 238, 219)
DEFAULT_PRIOR = tuple(n / sum(LABEL_COUNTS) for n in LABEL_COUNTS)
#: Expected costs this close count as a tie (the lower class wins).
TIE_TOLERANCE = 1e-12

Source = Literal["patches", "heatmap", "prior"]


@dataclass(frozen=True)
class DecisionConfig:
    """Parameters of the slide decision (see the module doc for the formula).

    ``prior``: class prior π (positive, sums to 1), the answer without evidence; ``*_weight``:
    pooling weights a (≥ 0, 0 = no say); ``*_temper``: tempers w of each source's max-grade
    product (> 0); ``heat_only_*``: the heatmap's weight and temper when no patch was graded
    (stage 2 off, failed or out of time; None: the same as with patches), fitted on their own
    because alone the heatmap has to carry the evidence the patches would; ``eps``: clip ε of
    each source's CDF before the logit, so none is ever certain.
    """

    prior: tuple[float, ...] = DEFAULT_PRIOR
    patch_weight: float = 1.0
    heat_weight: float = 0.5
    patch_temper: float = 1.0
    heat_temper: float = 1.0
    heat_only_weight: float | None = None
    heat_only_temper: float | None = None
    eps: float = 1e-4

    def __post_init__(self) -> None:
        prior = np.asarray(self.prior, dtype=np.float64)
        if prior.shape != (N_CLASSES,) or not (np.isfinite(prior).all() and (prior > 0).all()):
            raise ValueError(
                f"decision.prior must be {N_CLASSES} positive numbers, got {self.prior}"
            )
        if abs(prior.sum() - 1.0) > 1e-6:
            raise ValueError(f"decision.prior must sum to 1, got {prior.sum()}")
        for name in ("patch_weight", "heat_weight", "heat_only_weight"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise ValueError(f"decision.{name} must be finite and >= 0, got {value}")
        for name in ("patch_temper", "heat_temper", "heat_only_temper"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"decision.{name} must be finite and > 0, got {value}")
        if not 0 < self.eps < 0.5:
            raise ValueError(f"decision.eps must be in (0, 0.5), got {self.eps}")

    def heat_only(self) -> tuple[float, float]:
        """The heatmap's weight and temper when no patch was graded: ``heat_only_*``, or the
        heatmap's own where those are None."""
        weight, temper = self.heat_only_weight, self.heat_only_temper
        return (
            self.heat_weight if weight is None else weight,
            self.heat_temper if temper is None else temper,
        )


@dataclass(frozen=True)
class Decision:
    """A slide's class probabilities (4 floats), chosen class, and which evidence decided it."""

    probs: tuple[float, ...]
    cls: int
    source: Source


def expected_costs(probs: np.ndarray) -> np.ndarray:
    """Expected cost of predicting each class, ``Σ_t p(t) · ERROR_MATRIX[t, c]``, float64, same
    shape as ``probs`` ((4,) or (N, 4))."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim not in (1, 2) or p.shape[-1] != N_CLASSES:
        raise ValueError(f"probs must be ({N_CLASSES},) or (N, {N_CLASSES}), got {p.shape}")
    return p @ ERROR_MATRIX


def decide(probs: np.ndarray) -> int:
    """Class of least expected cost for one ``(4,)`` distribution; ties go to the lower class."""
    costs = expected_costs(probs)
    if costs.ndim != 1:
        raise ValueError(f"decide takes one ({N_CLASSES},) distribution, got {costs.shape}")
    return int(np.flatnonzero(costs <= costs.min() + TIE_TOLERANCE)[0])


def _as_probs(values: np.ndarray, name: str) -> np.ndarray:
    """``(N, 4)`` float64 rows of probabilities; an empty input gives ``(0, 4)``."""
    p = np.asarray(values, dtype=np.float64)
    if p.size == 0:
        return np.zeros((0, N_CLASSES))
    if p.ndim != 2 or p.shape[1] != N_CLASSES:
        raise ValueError(f"{name} must be (N, {N_CLASSES}), got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or np.abs(p.sum(axis=1) - 1).max() > 1e-3:
        raise ValueError(f"{name} rows must be probabilities (finite, >= 0, summing to 1)")
    return p


def max_grade_cdf(probs: np.ndarray, temper: float) -> np.ndarray:
    """``(3,)`` float64 ``F_s(c) = Π_i F_i(c) ** temper`` for c = 0, 1, 2 of ``(N, 4)`` item
    probabilities (rows of probabilities, N ≥ 1): the CDF of the items' maximum grade."""
    cdf = np.clip(np.cumsum(np.asarray(probs, dtype=np.float64), axis=1)[:, :-1], 0.0, 1.0)
    return np.prod(cdf**temper, axis=0)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def slide_probabilities(
    patch_probs: np.ndarray, heat_probs: np.ndarray, config: DecisionConfig
) -> np.ndarray:
    """``(4,)`` float64 probabilities of the slide's most severe class from graded patches
    ``(N, 4)`` and heatmap hotspots ``(M, 4)`` (either may be empty); see the module doc."""
    patches, heat = _as_probs(patch_probs, "patch_probs"), _as_probs(heat_probs, "heat_probs")
    prior = np.asarray(config.prior, dtype=np.float64)
    prior /= prior.sum()
    logits = _logit(np.cumsum(prior)[:-1])
    heat_weight, heat_temper = (
        config.heat_only() if not len(patches) else (config.heat_weight, config.heat_temper)
    )
    for items, temper, weight in (
        (patches, config.patch_temper, config.patch_weight),
        (heat, heat_temper, heat_weight),
    ):
        if len(items):
            cdf = np.clip(max_grade_cdf(items, temper), config.eps, 1 - config.eps)
            logits += weight * _logit(cdf)
    cdf = 1.0 / (1.0 + np.exp(-logits))
    return np.diff(cdf, prepend=0.0, append=1.0)


def decide_slide(
    patch_probs: np.ndarray, heat_probs: np.ndarray, config: DecisionConfig
) -> Decision:
    """:func:`slide_probabilities` and its least-cost class; ``source`` says what was used."""
    probs = slide_probabilities(patch_probs, heat_probs, config)
    source: Source = "patches" if len(patch_probs) else "heatmap" if len(heat_probs) else "prior"
    return Decision(tuple(float(p) for p in probs), decide(probs), source)
