"""What the cascade made of one slide (:class:`SlideResult`), and its files: ``<stem>.npz`` (the
arrays: tissue mask, heatmap, hotspots, grades) and ``<stem>.json`` (the summary), as
``main.py --save-heatmaps`` writes them and the inspection tools read them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.decision import Decision
from stages.detector import Heatmap
from stages.geometry import Box
from stages.hotspots import Hotspot


@dataclass
class SlideResult:
    """What the cascade made of one slide.

    ``cls``/``probs``/``source`` are the decision (``source`` "patches", "heatmap", "prior", or
    "fallback" when the slide could not be read at all). ``tissue`` is ``(h, w)`` bool with
    ``tissue_scale`` page-0 px per pixel; ``heatmap`` see :class:`stages.detector.Heatmap`;
    ``grades`` ``(k, 4)`` float32 are the classifier's probabilities for ``hotspots[:k]``;
    ``seconds`` per stage (see :meth:`stages.cascade.Cascade.grade_slide`); ``decoded_mpx`` the
    megapixels of the slide read; ``size`` the slide's page-0 ``(width, height)`` (0s when unknown);
    ``pages`` the pyramid pages used (``detector_base``: the page nearest the detector's
    ``target_mpp``, ``detector`` the one it ran on, absent when it did not run); ``errors`` one
    line per failure.
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
    decoded_mpx: float = 0.0
    size: tuple[int, int] = (0, 0)
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
            "decoded_mpx": self.decoded_mpx,
            "size": list(self.size),
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
            decoded_mpx=summary.get("decoded_mpx", 0.0),
            size=tuple(summary.get("size", (0, 0))),
            pages=summary["pages"],
            errors=summary["errors"],
        )


def fallback_result(filename: str, decision: Decision, error: str) -> SlideResult:
    """Result for a slide that could not be graded at all: the prior's least-cost class."""
    return SlideResult(filename, decision.cls, decision.probs, "fallback", errors=[error])
