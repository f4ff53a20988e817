"""One slide through the cascade: tissue → heatmap → hotspots → graded patches → least-cost class.

:meth:`Cascade.grade_slide` returns a :class:`SlideResult` that ``main.py`` (through
:mod:`stages.runtime`) and the inspection notebooks both use. A stage that fails does not lose
the slide: the error is recorded and the decision is made from what the earlier stages gave
(heatmap without patches, or the prior without either).

::

    page ~16 µm/px          page ~4 µm/px                       page ~0.5 µm/px
    ┌──────────┐  tissue   ┌──────────────┐  top-k peaks   ┌──────────────────┐
    │  tissue  │──windows─▶│ detector net │──────────────▶│ patch classifier │─┐
    │   mask   │           │ heatmap CxHxW│  (NMS, budget) │   (N, 4) grades  │ │
    └──────────┘           └──────┬───────┘                └──────────────────┘ │
                                  └── heatmap probs at hotspots ──▶ decision ◀──┘
                                       (cost-aware: argmin expected competition cost)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stages.budget import CostModel, SlideBudget
from stages.classifier import grade, read_patches
from stages.config import Assets, CascadeConfig
from stages.decision import Decision, decide_slide
from stages.detector import Heatmap, predict_heatmap, tissue_windows
from stages.geometry import Box
from stages.hotspots import Hotspot, select_hotspots
from stages.slide import Slide
from stages.tissue import mask_for_slide

log = logging.getLogger(__name__)


@dataclass
class SlideResult:
    """What the cascade made of one slide.

    ``cls``/``probs``/``source`` are the decision (``source`` "patches", "heatmap", "prior", or
    "fallback" when the slide could not be read at all). ``tissue`` is ``(h, w)`` bool with
    ``tissue_scale`` page-0 px per pixel; ``heatmap`` see :class:`stages.detector.Heatmap`;
    ``grades`` ``(k, 4)`` float32 are the classifier's probabilities for ``hotspots[:k]``;
    ``seconds`` per stage; ``pages`` the pyramid pages used; ``errors`` one line per failure.
    """

    filename: str
    cls: int
    probs: tuple[float, ...]
    source: str
    hotspots: list[Hotspot] = field(default_factory=list)
    grades: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    heatmap: Heatmap | None = None
    tissue: np.ndarray | None = None
    tissue_scale: tuple[float, float] = (1.0, 1.0)
    seconds: dict[str, float] = field(default_factory=dict)
    pages: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Why the result is degraded: stage errors, and a detector pass cut short."""
        cut = self.heatmap is not None and not self.heatmap.complete
        return [*self.errors, *(["detector stopped by the time budget"] if cut else [])]

    @property
    def degraded(self) -> bool:
        """True when a stage failed or the budget cut the detector short."""
        return bool(self.problems())

    def summary(self) -> dict:
        """JSON-friendly summary (no arrays)."""
        return {
            "filename": self.filename,
            "class": self.cls,
            "probs": list(self.probs),
            "source": self.source,
            "hotspots": len(self.hotspots),
            "graded": len(self.grades),
            "seconds": self.seconds,
            "pages": self.pages,
            "errors": self.errors,
            "degraded": self.degraded,
        }

    def save(self, directory: Path) -> Path:
        """Write ``<stem>.npz`` (heatmap, tissue, hotspots, grades) and ``<stem>.json``."""
        directory.mkdir(parents=True, exist_ok=True)
        stem = Path(self.filename).stem
        arrays: dict[str, np.ndarray] = {
            "hotspot_boxes": np.array(
                [(h.box.x, h.box.y, h.box.w, h.box.h) for h in self.hotspots], np.float64
            ).reshape(-1, 4),
            "hotspot_scores": np.array([h.score for h in self.hotspots], np.float32),
            "hotspot_heat_probs": np.array(
                [h.heat_probs for h in self.hotspots], np.float32
            ).reshape(-1, len(self.probs)),
            "grades": self.grades,
            "probs": np.array(self.probs, np.float64),
        }
        if self.tissue is not None:
            arrays |= {"tissue": self.tissue, "tissue_scale": np.array(self.tissue_scale)}
        if self.heatmap is not None:
            arrays |= {
                "heatmap": self.heatmap.probs,
                "heatmap_tissue": self.heatmap.tissue,
                "heatmap_visited": self.heatmap.visited,
                "heatmap_scale": np.array(self.heatmap.scale),
                "heatmap_page_complete_windows": np.array(
                    [self.heatmap.page, self.heatmap.complete, self.heatmap.windows]
                ),
            }
        path = directory / f"{stem}.npz"
        np.savez_compressed(path, **arrays)
        (directory / f"{stem}.json").write_text(json.dumps(self.summary(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> SlideResult:
        """The result :meth:`save` wrote as ``path`` (``<stem>.npz``, with ``<stem>.json``)."""
        summary = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as saved:
            arrays = {name: saved[name] for name in saved.files}
        hotspots = [
            Hotspot(Box(*map(float, box)), float(score), tuple(map(float, probs)), rank)
            for rank, (box, score, probs) in enumerate(
                zip(
                    arrays["hotspot_boxes"],
                    arrays["hotspot_scores"],
                    arrays["hotspot_heat_probs"],
                    strict=True,
                )
            )
        ]
        heatmap = None
        if "heatmap" in arrays:
            page, complete, windows = arrays["heatmap_page_complete_windows"]
            heatmap = Heatmap(
                probs=arrays["heatmap"],
                tissue=arrays["heatmap_tissue"],
                visited=arrays["heatmap_visited"],
                scale=tuple(map(float, arrays["heatmap_scale"])),
                page=int(page),
                complete=bool(complete),
                windows=int(windows),
            )
        return cls(
            filename=summary["filename"],
            cls=summary["class"],
            probs=tuple(summary["probs"]),
            source=summary["source"],
            hotspots=hotspots,
            grades=arrays["grades"],
            heatmap=heatmap,
            tissue=arrays.get("tissue"),
            tissue_scale=tuple(map(float, arrays.get("tissue_scale", (1.0, 1.0)))),
            seconds=summary["seconds"],
            pages=summary["pages"],
            errors=summary["errors"],
        )


def fallback_result(filename: str, decision: Decision, error: str) -> SlideResult:
    """Result for a slide that could not be graded at all: the prior's least-cost class."""
    return SlideResult(filename, decision.cls, decision.probs, "fallback", errors=[error])


def detect(
    slide: Slide,
    mask: np.ndarray,
    mask_scale: tuple[float, float],
    model: torch.nn.Module,
    config: CascadeConfig,
    device: torch.device,
    budget: SlideBudget,
    costs: CostModel,
) -> Heatmap:
    """Stage 1 on ``slide``: the detector over the tissue windows of the page the budget affords
    (the page nearest ``detector.target_mpp``, or coarser), stopped at the slide's deadline;
    records its measured cost in ``costs``. ``mask``: tissue, ``mask_scale`` page-0 px/pixel."""
    cfg = config.detector
    base = slide.page_for_mpp(cfg.target_mpp)
    info = slide.pages[base]
    n_windows = len(
        tissue_windows(info.size, info.scale, mask, mask_scale, cfg.window, cfg.overlap)
    )
    pixels = n_windows * cfg.window**2
    page = budget.choose_detector_page(base, len(slide.pages), costs.detector_seconds(pixels))
    start = time.perf_counter()
    heatmap = predict_heatmap(
        model,
        slide,
        page,
        mask,
        mask_scale,
        cfg,
        device,
        should_stop=lambda: budget.time_left() <= 0,
    )
    if heatmap.windows:  # measured in the unit estimated above: pixels of the windows run
        costs.observe_detector(heatmap.windows * cfg.window**2, time.perf_counter() - start)
    return heatmap


def locate_hotspots(
    slide: Slide, heatmap: Heatmap, config: CascadeConfig, classifier_page: int
) -> list[Hotspot]:
    """The top ``budget.max_k`` hotspots of ``heatmap`` (tissue cells the detector saw), as
    page-0 boxes of one classifier patch on ``classifier_page``, best first."""
    sx, sy = slide.pages[classifier_page].scale
    patch = (config.classifier.patch * sx, config.classifier.patch * sy)
    return select_hotspots(
        heatmap.probs,
        heatmap.tissue & heatmap.visited,
        heatmap.scale,
        slide.mpp,
        patch,
        config.hotspots,
        k=config.budget.max_k,
    )


class Cascade:
    """The loaded networks and config, grading one slide at a time."""

    def __init__(self, assets: Assets) -> None:
        self.assets = assets
        self.config = assets.config

    def grade_slide(
        self, path: Path, mpp: float | None, budget: SlideBudget, costs: CostModel
    ) -> SlideResult:
        """Grade the slide at ``path`` within ``budget``; ``mpp`` from the metadata, if any.

        Raises :class:`stages.slide.SlideError` only when the slide cannot be opened or its
        tissue page cannot be read; later stages' failures are recorded in ``errors``.
        """
        cfg = self.config
        seconds: dict[str, float] = {}
        errors: list[str] = []
        t0 = time.perf_counter()
        with Slide(path, mpp=mpp, default_mpp=cfg.default_mpp) as slide:
            mask, mask_page = mask_for_slide(slide, cfg.tissue)
            mask_scale = slide.pages[mask_page].scale
            seconds["tissue"] = time.perf_counter() - t0
            pages = {"tissue": mask_page}

            classifier_page = slide.page_for_mpp(cfg.classifier.target_mpp)
            heatmap = None
            hotspots: list[Hotspot] = []
            if mask.any():
                t1 = time.perf_counter()
                try:
                    heatmap = detect(
                        slide,
                        mask,
                        mask_scale,
                        self.assets.detector,
                        cfg,
                        self.assets.device,
                        budget,
                        costs,
                    )
                    pages["detector"] = heatmap.page
                    hotspots = locate_hotspots(slide, heatmap, cfg, classifier_page)
                except Exception as exc:  # a stage failure costs the stage, not the slide
                    errors.append(_describe("detector", exc))
                    log.exception("%s: detector failed", path.name)
                seconds["detector"] = time.perf_counter() - t1

            t2 = time.perf_counter()
            grades = np.zeros((0, cfg.classifier.classes), np.float32)
            if hotspots:
                pages["classifier"] = classifier_page
                try:
                    grades = self._grade(slide, hotspots, classifier_page, budget, costs)
                except Exception as exc:
                    errors.append(_describe("classifier", exc))
                    log.exception("%s: classifier failed", path.name)
            seconds["classifier"] = time.perf_counter() - t2

        heat_probs = np.array([h.heat_probs for h in hotspots], np.float64).reshape(-1, 4)
        decision = decide_slide(grades, heat_probs, cfg.decision)
        seconds["total"] = time.perf_counter() - t0
        return SlideResult(
            filename=path.name,
            cls=decision.cls,
            probs=decision.probs,
            source=decision.source,
            hotspots=hotspots,
            grades=grades,
            heatmap=heatmap,
            tissue=mask,
            tissue_scale=mask_scale,
            seconds=seconds,
            pages=pages,
            errors=errors,
        )

    def _grade(
        self,
        slide: Slide,
        hotspots: list[Hotspot],
        page: int,
        budget: SlideBudget,
        costs: CostModel,
    ) -> np.ndarray:
        """Grade hotspots in order, batch by batch, while the budget grants them."""
        graded: list[np.ndarray] = []
        done = 0
        while done < len(hotspots):
            n = min(budget.expand_next(done, costs.patch.value), len(hotspots) - done)
            if n <= 0:
                break
            start = time.perf_counter()
            centers = [h.box.center for h in hotspots[done : done + n]]
            patches = read_patches(slide, centers, page, self.config.classifier.patch)
            graded.append(
                grade(self.assets.classifier, patches, self.config.classifier, self.assets.device)
            )
            costs.observe_patches(n, time.perf_counter() - start)
            done += n
        if not graded:
            return np.zeros((0, self.config.classifier.classes), np.float32)
        return np.concatenate(graded)


def _describe(stage: str, exc: BaseException) -> str:
    return f"{stage}: {type(exc).__name__}: {exc}"
