"""Reading a built cache: its index tables (:class:`Cache`) and one slide's arrays
(:class:`CachedSlide`), through the cache's :class:`~training.data.cache.pool.ArrayPool`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stages.cascade import locate_hotspots
from stages.config import CascadeConfig
from stages.detector import Heatmap, predict_heatmap
from stages.geometry import Box
from stages.hotspots import Hotspot
from stages.slide import Page
from training.data.cache.config import DONE, PATCHES, SETTINGS, SLIDES, SQUARES, paste
from training.data.cache.pool import ArrayPool


@dataclass(frozen=True)
class Cache:
    """A built cache: its folder, settings and index tables (slides, patches, squares), and the
    pool its arrays are read through."""

    root: Path
    settings: dict
    slides: pd.DataFrame
    patches: pd.DataFrame
    squares: pd.DataFrame
    pool: ArrayPool = field(default_factory=ArrayPool, compare=False, repr=False)

    @classmethod
    def open(cls, root: Path, max_open: int = 64) -> Cache:
        """Open the cache at ``root`` (at most ``max_open`` arrays mapped at a time); ValueError
        when it is not one."""
        if not (root / SLIDES).is_file():
            raise ValueError(f"{root}: no {SLIDES}; build it with python -m training.data.cache")

        def table(name: str, columns: list[str]) -> pd.DataFrame:
            path = root / name
            if path.is_file():
                return pd.read_csv(path, keep_default_na=False)
            return pd.DataFrame(columns=columns)

        return cls(
            root,
            json.loads((root / SETTINGS).read_text()),
            table(SLIDES, []),
            table(PATCHES, ["filename", "stem", "source", "index", "kind", "cls", "fold"]),
            table(SQUARES, ["filename", "stem", "annotation_id", "cls", "x", "y", "w", "h"]),
            ArrayPool(max_open),
        )

    def boxes(self, filename: str, min_class: int = 0) -> list[Box]:
        """Page-0 boxes of the annotation squares of ``filename`` of class ≥ ``min_class``."""
        rows = self.squares[(self.squares["filename"] == filename)]
        rows = rows[rows["cls"].astype(int) >= min_class]
        return [Box(r.x, r.y, r.w, r.h) for r in rows.itertuples(index=False)]

    def item(self, stem: str, name: str, index: int) -> np.ndarray:
        """Item ``index`` of the cached array ``name`` of slide ``stem`` (``patches``, ``hard``):
        one ``(S, S, 3)`` uint8 crop, read through the pool without a map."""
        return self.pool.item(self.root / stem / f"{name}.npy", index)

    def array(self, stem: str, name: str) -> np.ndarray:
        """A cached array of slide ``stem`` (``detector-i``, ``tissue-i``, ``target-i`` of
        fragment ``i``, ``cells``, ``mask``, ``patches``, ``hard``), memory-mapped through the
        pool."""
        return self.pool.get(self.root / stem / f"{name}.npy")

    def fragments(self, stem: str) -> list[tuple[int, int, int, int]]:
        """Detector-page ``(left, top, width, height)`` of the cached fragments of ``stem``,
        largest first (fragment ``i`` is the ``i``-th)."""
        row = json.loads((self.root / stem / DONE).read_text())
        return [tuple(int(v) for v in box) for box in row["boxes"]]

    def compose(
        self,
        stem: str,
        kind: str,
        region: tuple[int, int, int, int],
        boxes: Sequence[tuple[int, int, int, int]],
    ) -> np.ndarray:
        """The detector-page ``region`` ``(left, top, width, height)`` of the ``kind`` arrays
        (``detector``, ``tissue``, ``target``) of the fragments at ``boxes``
        (:meth:`fragments`), glass (white, False or 0) between them."""
        left, top, width, height = region
        fill = 255 if kind == "detector" else 0
        shape = (height, width, 3) if kind == "detector" else (height, width)
        out = np.full(shape, fill, bool if kind == "tissue" else np.uint8)
        for i, (x, y, w, h) in enumerate(boxes):
            if x < left + width and left < x + w and y < top + height and top < y + h:
                paste(out, self.array(stem, f"{kind}-{i}"), left - x, top - y)
        return out

    def mosaic(self, stem: str, kind: str) -> np.ndarray:
        """The fragments' ``kind`` arrays on their union box (``left``, ``top``, ``width``,
        ``height`` of ``slides.csv``; 1 × 1 glass without tissue): for figures of small
        slides."""
        boxes = self.fragments(stem)
        if not boxes:
            return self.compose(stem, kind, (0, 0, 1, 1), boxes)
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
        return self.compose(stem, kind, (x0, y0, x1 - x0, y1 - y0), boxes)

    def row(self, filename: str) -> pd.Series:
        """The ``slides.csv`` row of ``filename``."""
        return self.slides.set_index("filename").loc[filename]


class CachedSlide:
    """A cached slide read like :class:`stages.slide.Slide` on its detector page (what
    :func:`stages.detector.predict_heatmap` and :func:`stages.cascade.locate_hotspots` use):
    ``pages`` holds the detector and classifier pages, ``read_region`` serves the cached
    fragments, white elsewhere (glass)."""

    def __init__(self, cache: Cache, filename: str) -> None:
        row = cache.row(filename)
        self.path = Path(filename)
        self.mpp = float(row["mpp"])
        self.detector_page = int(row["detector_page"])
        self.classifier_page = int(row["classifier_page"])
        det_scale = (float(row["detector_sx"]), float(row["detector_sy"]))
        cls_scale = (float(row["classifier_sx"]), float(row["classifier_sy"]))
        width, height = int(row["detector_page_width"]), int(row["detector_page_height"])
        self.pages = {
            self.detector_page: Page(self.detector_page, -1, None, width, height, det_scale),
            self.classifier_page: Page(
                self.classifier_page,
                -1,
                None,
                round(width * det_scale[0] / cls_scale[0]),
                round(height * det_scale[1] / cls_scale[1]),
                cls_scale,
            ),
        }
        self.cache, self.stem = cache, str(row["stem"])
        self.fragments = cache.fragments(self.stem)
        self.mask = np.array(cache.array(self.stem, "mask"))
        self.mask_scale = (float(row["mask_sx"]), float(row["mask_sy"]))

    def hotspots(
        self,
        model: torch.nn.Module,
        cascade: CascadeConfig,
        device: torch.device,
        autocast: torch.dtype | None = None,
    ) -> tuple[Heatmap, list[Hotspot]]:
        """The cascade's heatmap and hotspots of this slide, computed on the cached page by the
        cascade's own functions (no budget: the whole tissue), the network in ``autocast``."""
        heatmap = predict_heatmap(
            model,
            self,
            self.detector_page,
            self.mask,
            self.mask_scale,
            cascade.detector,
            device,
            autocast=autocast,
        )
        return heatmap, locate_hotspots(self, heatmap, cascade, self.classifier_page)

    def read_region(self, box: Box, page: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 pixels of page-0 ``box`` on the detector page."""
        if page != self.detector_page:
            raise ValueError(f"{self.path}: only the detector page {self.detector_page} is cached")
        region = box.to_page(self.pages[page].scale)
        return self.cache.compose(self.stem, "detector", region, self.fragments)
