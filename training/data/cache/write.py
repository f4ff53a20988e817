"""Decode each training slide once into an on-disk cache, so that epochs never read a TIFF.

``python -m training.data.cache DATA_DIR CACHE_DIR [--folds 4] [--by-centre]
[--preset NAME|FILE.json]``

Per slide, in ``CACHE_DIR/<stem>/`` (written to temporary names, then renamed; ``slide.json``
last, so a slide with ``slide.json`` is complete and a rerun resumes after it):

* the detector page (the page nearest ``detector.target_mpp``, chosen as the cascade chooses it)
  is cached **per tissue fragment**: the tissue mask's 8-connected components of at least
  ``min_fragment_um2`` (smaller specks dropped, unless they meet an annotation square), each box
  grown by half a training crop and merged with the boxes it overlaps. Fragment ``i`` is
  ``detector-i.npy`` ``(H, W, 3)`` uint8, ``tissue-i.npy`` ``(H, W)`` bool and ``target-i.npy``
  ``(H, W)`` uint8 (:func:`training.data.targets.detector_target`) on one grid; ``slide.json``
  holds the boxes (detector-page ``left, top, width, height``). A 66 × 71 mm canvas with 2 %
  tissue thus costs its fragments, not its glass;
* ``cells.npy`` ``(n, 3)`` uint16: ``(fragment, row, column)`` of the ``cell`` × ``cell`` cells of
  the fragments that hold tissue, the compact index training windows are drawn from;
* ``mask.npy``: the cascade's tissue mask (:func:`stages.tissue.mask_for_slide`);
* ``patches.npy`` ``(N, S, S, 3)`` uint8 on the classifier page, ``S = crop_factor × patch``:
  jittered inside each annotation square (its class) and, on label-0 slides, on random tissue
  (class 0); ``patches.csv`` says which is which (kind, class, page-0 centre);
* ``hard.npy`` / ``hard.csv``: hard negatives, added later by
  :mod:`training.fit.hard_negatives`.

``slides.csv`` (one row per cached slide, with its fold, fragments, bytes on disk and seconds) and
``patches.csv`` (every patch) index the cache; ``cache.json`` holds the settings (the y-flip
convention of the annotations among them), and a rerun with other settings is refused. A slide
that cannot be read is skipped and named in the log; the others go on.

Arrays are read through an :class:`ArrayPool` of at most ``max_open`` open files (fragment
crops memory-mapped, patches read one at a time), so a training process keeps a bounded number
of files open whatever the number of slides.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from stages.cascade import locate_hotspots
from stages.classifier import read_patches
from stages.config import CascadeConfig
from stages.detector import Heatmap, predict_heatmap
from stages.geometry import Box
from stages.hotspots import Hotspot
from stages.slide import Page, Slide
from stages.tissue import mask_for_slide
from training.cli import command_parser, setup_logging
from training.data.annotations import Y_FLIPS
from training.data.dataset import TrainSlide, assign_folds, read_training_set
from training.data.targets import detector_target, jittered_centres, tissue_points
from training.presets import load_preset

log = logging.getLogger(__name__)

SETTINGS = "cache.json"
SLIDES = "slides.csv"
PATCHES = "patches.csv"
SQUARES = "squares.csv"
HARD = "hard.csv"
DONE = "slide.json"


@dataclass(frozen=True)
class CacheConfig:
    """What the cache holds. Counts are per slide (``square_patches`` per annotation square);
    ``crop_factor``: windows and patches are cut this much larger than the networks' inputs, so
    that augmentation (rotation, scale) is centre-cropped without borders; ``min_fragment_um2``:
    tissue components smaller than this are specks and not cached (unless they meet an
    annotation square); ``max_pixels``: the largest detector-page fragment kept (a bigger one is
    refused, naming the slide); ``cell``: side in detector-page pixels of the cells of the
    window index; ``y_flip``: the page-0 height the annotations' flipped y axis is undone with
    (:data:`training.data.annotations.Y_FLIPS`: the metadata's, or the TIF's own)."""

    square_patches: int = 12
    benign_patches: int = 32
    hard_negatives: int = 16
    crop_factor: float = 1.25
    min_fragment_um2: float = 100_000.0
    max_pixels: int = 200_000_000
    cell: int = 64
    y_flip: str = "metadata"
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.square_patches, self.benign_patches, self.hard_negatives) < 0:
            raise ValueError("patch counts must be >= 0")
        if not 1.0 <= self.crop_factor <= 2.0:
            raise ValueError(f"crop_factor must be in [1, 2], got {self.crop_factor}")
        if not 1 <= self.cell <= 1024 or self.min_fragment_um2 < 0:
            raise ValueError("cell must be in [1, 1024] and min_fragment_um2 >= 0")
        if self.y_flip not in Y_FLIPS:
            raise ValueError(f"y_flip must be one of {Y_FLIPS}, got {self.y_flip!r}")


def crop_size(size: int, factor: float) -> int:
    """``size × factor`` rounded up to an even number of pixels."""
    return 2 * math.ceil(size * factor / 2)


def crop_padded(
    array: np.ndarray, left: int, top: int, width: int, height: int, fill: int
) -> np.ndarray:
    """``(height, width, …)`` uint8 cut of ``array`` at pixel ``(left, top)``, ``fill`` where it
    falls outside the array."""
    out = np.full((height, width, *array.shape[2:]), fill, np.uint8)
    paste(out, array, left, top)
    return out


def paste(out: np.ndarray, array: np.ndarray, left: int, top: int) -> None:
    """Copy into ``out`` the part of ``array`` that ``out`` covers, ``out``'s pixel (0, 0) lying
    at ``array``'s pixel ``(left, top)`` (either may be outside the other)."""
    h, w = array.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + out.shape[1], w), min(top + out.shape[0], h)
    if x1 > x0 and y1 > y0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def tissue_fragments(
    mask: np.ndarray,
    mask_scale: tuple[float, float],
    mpp: float,
    min_um2: float,
    keep: Sequence[Box] = (),
) -> list[Box]:
    """Page-0 bounding boxes of the 8-connected tissue components of ``mask`` (``(h, w)`` bool,
    ``mask_scale`` page-0 px per pixel, ``mpp`` µm per page-0 px) of at least ``min_um2`` µm²,
    largest first. Smaller components (specks, debris) are dropped unless their box meets one
    of the page-0 boxes ``keep`` (the annotation squares)."""
    if not mask.any():
        return []
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    pixel_um2 = mask_scale[0] * mask_scale[1] * mpp**2
    sx, sy = mask_scale
    fragments = []
    for label in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[label])
        box = Box(x * sx, y * sy, w * sx, h * sy)
        meets = any(
            b.x < box.right and box.x < b.right and b.y < box.bottom and box.y < b.bottom
            for b in keep
        )
        if area * pixel_um2 >= min_um2 or meets:
            fragments.append((area, box))
    return [box for _, box in sorted(fragments, key=lambda f: -f[0])]


def fragment_boxes(
    boxes: Sequence[Box], scale: tuple[float, float], margin: int, page_size: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Detector-page ``(left, top, width, height)`` of page-0 ``boxes`` on a page of ``scale``
    and ``page_size`` ``(width, height)``: each grown by ``margin`` px, clipped to the page, and
    merged with every box it overlaps (until none overlap); largest first."""
    rects = []
    for box in boxes:
        left, top, width, height = box.to_page(scale)
        x0, y0 = max(left - margin, 0), max(top - margin, 0)
        x1 = min(left + width + margin, page_size[0])
        y1 = min(top + height + margin, page_size[1])
        if x1 > x0 and y1 > y0:
            rects.append((x0, y0, x1, y1))
    merged = True
    while merged:
        merged = False
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                a, b = rects[i], rects[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    rects[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del rects[j]
                    merged = True
                    break
            if merged:
                break
    out = [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in rects]
    return sorted(out, key=lambda r: (-r[2] * r[3], r[1], r[0]))


def tissue_cells(tissue: np.ndarray, cell: int, fragment: int) -> np.ndarray:
    """``(n, 3)`` uint16 ``(fragment, row, column)`` of the ``cell`` × ``cell`` cells of
    ``tissue`` (``(H, W)`` bool, one fragment's grid) that hold tissue, row-major."""
    h, w = tissue.shape
    rows, cols = math.ceil(h / cell), math.ceil(w / cell)
    padded = np.zeros((rows * cell, cols * cell), bool)
    padded[:h, :w] = tissue
    occupied = padded.reshape(rows, cell, cols, cell).any(axis=(1, 3))
    r, c = np.nonzero(occupied)
    if max(rows, cols, fragment + 1) > np.iinfo(np.uint16).max:
        raise ValueError(f"{rows}x{cols} cells of fragment {fragment} overflow uint16")
    return np.stack([np.full_like(r, fragment), r, c], axis=1).astype(np.uint16)


def resample_mask(
    mask: np.ndarray,
    mask_scale: tuple[float, float],
    scale: tuple[float, float],
    offset: tuple[int, int],
    shape: tuple[int, int],
) -> np.ndarray:
    """``mask`` (``mask_scale`` page-0 px per pixel) on the grid of an ``shape`` array cut from a
    page of ``scale`` at ``offset``: each pixel takes the mask pixel under its centre."""
    rows = ((np.arange(shape[0]) + offset[1] + 0.5) * scale[1] / mask_scale[1]).astype(int)
    cols = ((np.arange(shape[1]) + offset[0] + 0.5) * scale[0] / mask_scale[0]).astype(int)
    rows = np.clip(rows, 0, mask.shape[0] - 1)
    cols = np.clip(cols, 0, mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def cache_slide(
    item: TrainSlide, fold: int, out: Path, cascade: CascadeConfig, config: CacheConfig
) -> dict:
    """Decode one slide into ``out/<stem>/`` (see the module doc); returns its index row.

    Raises what the reader raises for an unreadable slide (:class:`stages.slide.SlideError`).
    """
    started = time.perf_counter()
    folder = out / item.stem
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.npy"):  # an interrupted earlier attempt
        stale.unlink()
    rng = np.random.default_rng([config.seed, *item.stem.encode()])
    margin = crop_size(cascade.detector.window, config.crop_factor) // 2
    with Slide(item.path, mpp=item.mpp, default_mpp=cascade.default_mpp) as slide:
        mask, mask_page = mask_for_slide(slide, cascade.tissue)
        mask_scale = slide.pages[mask_page].scale
        det_page = slide.page_for_mpp(cascade.detector.target_mpp)
        info = slide.pages[det_page]
        squares = [a.box for a in item.annotations]
        fragments = tissue_fragments(mask, mask_scale, slide.mpp, config.min_fragment_um2, squares)
        boxes = fragment_boxes(fragments, info.scale, margin, info.size)
        for _, _, width, height in boxes:
            if width * height > config.max_pixels:
                raise ValueError(
                    f"{item.filename}: a tissue fragment of {width}x{height} px on page "
                    f"{det_page} exceeds max_pixels={config.max_pixels}"
                )
        sx, sy = info.scale
        cells = []
        for i, (left, top, width, height) in enumerate(boxes):
            image = slide.read_region(Box(left * sx, top * sy, width * sx, height * sy), det_page)
            tissue = resample_mask(mask, mask_scale, info.scale, (left, top), image.shape[:2])
            target = detector_target(tissue, info.scale, (left, top), item.annotations, item.label)
            _save(folder / f"detector-{i}.npy", image)
            _save(folder / f"tissue-{i}.npy", tissue)
            _save(folder / f"target-{i}.npy", target)
            cells.append(tissue_cells(tissue, config.cell, i))
            del image, tissue, target

        cls_page = slide.page_for_mpp(cascade.classifier.target_mpp)
        csx, csy = slide.pages[cls_page].scale
        size = crop_size(cascade.classifier.patch, config.crop_factor)
        patch = (cascade.classifier.patch * csx, cascade.classifier.patch * csy)
        rows, centres = [], []
        for a in item.annotations:
            points = jittered_centres(rng, a.box, config.square_patches, patch)
            centres.append(points)
            rows += [("square", a.annotation_class, a.annotation_id)] * len(points)
        if item.label == 0:
            points = tissue_points(rng, mask, mask_scale, config.benign_patches)
            centres.append(points)
            rows += [("benign", 0, "")] * len(points)
        centres_xy = np.concatenate(centres) if centres else np.zeros((0, 2))
        patches = read_patches(slide, [tuple(c) for c in centres_xy], cls_page, size)
        mpp = slide.mpp
        n_pages = len(slide.pages)
        cls_info = slide.pages[cls_page]

    _save(folder / "cells.npy", np.concatenate(cells) if cells else np.zeros((0, 3), np.uint16))
    _save(folder / "mask.npy", mask)
    _save(folder / "patches.npy", patches)
    table = pd.DataFrame(rows, columns=["kind", "cls", "annotation_id"])
    table["x"], table["y"] = centres_xy[:, 0], centres_xy[:, 1]
    table.insert(0, "index", np.arange(len(table)))
    table.to_csv(folder / PATCHES, index=False)
    squares_frame = pd.DataFrame(
        [
            (a.annotation_id, a.annotation_class, a.box.x, a.box.y, a.box.w, a.box.h)
            for a in item.annotations
        ],
        columns=["annotation_id", "cls", "x", "y", "w", "h"],
    )
    squares_frame.to_csv(folder / SQUARES, index=False)
    union = (
        (min(b[0] for b in boxes), min(b[1] for b in boxes),
         max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes))
        if boxes else (0, 0, 0, 0)
    )  # fmt: skip
    row = {
        "filename": item.filename,
        "stem": item.stem,
        "label": item.label,
        "fold": fold,
        "centre": item.centre or "",
        "mpp": mpp,
        "pages": n_pages,
        "mask_page": mask_page,
        "mask_sx": mask_scale[0],
        "mask_sy": mask_scale[1],
        "detector_page": det_page,
        "detector_sx": sx,
        "detector_sy": sy,
        "detector_page_width": info.width,
        "detector_page_height": info.height,
        "left": union[0],
        "top": union[1],
        "width": union[2] - union[0],
        "height": union[3] - union[1],
        "fragments": len(boxes),
        "fragment_pixels": sum(b[2] * b[3] for b in boxes),
        "tissue_cells": int(sum(len(c) for c in cells)),
        "classifier_page": cls_page,
        "classifier_sx": cls_info.scale[0],
        "classifier_sy": cls_info.scale[1],
        "squares": len(item.annotations),
        "patches": len(table),
        "bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        "seconds": round(time.perf_counter() - started, 3),
        "boxes": [list(b) for b in boxes],
    }
    (folder / DONE).write_text(json.dumps(row, indent=1) + "\n")
    return row


def _settings(cascade: CascadeConfig, config: CacheConfig) -> dict:
    return {
        "cache": dataclasses.asdict(config),
        "tissue": dataclasses.asdict(cascade.tissue),
        "detector": {k: getattr(cascade.detector, k) for k in ("target_mpp", "window")},
        "classifier": {k: getattr(cascade.classifier, k) for k in ("target_mpp", "patch")},
        "default_mpp": cascade.default_mpp,
    }


#: Caches ``(slide, fold)`` pairs into a folder with the given settings, yielding each slide
#: with None when it is done or with the exception that stopped it (:func:`cache_serially`; the
#: Ray pool of :mod:`training.cluster.cache` is the other).
CacheRunner = Callable[
    [list[tuple[TrainSlide, int]], Path, CascadeConfig, CacheConfig],
    Iterator[tuple[TrainSlide, BaseException | None]],
]


def cache_serially(
    todo: list[tuple[TrainSlide, int]], out: Path, cascade: CascadeConfig, config: CacheConfig
) -> Iterator[tuple[TrainSlide, BaseException | None]]:
    """The single-machine :data:`CacheRunner`: :func:`cache_slide` on each slide in turn."""
    for item, fold in tqdm(todo, desc="cache", unit="slide"):
        try:
            cache_slide(item, fold, out, cascade, config)
        except Exception as exc:  # one unreadable slide never stops the others
            yield item, exc
        else:
            yield item, None


def build_cache(
    data: Path,
    out: Path,
    cascade: CascadeConfig,
    config: CacheConfig = CacheConfig(),
    folds: int = 4,
    by_centre: bool = False,
    runner: CacheRunner = cache_serially,
) -> pd.DataFrame:
    """Cache every slide of the training folder ``data`` into ``out`` (resuming after the slides
    already done) with ``runner``, write the index tables and return ``slides.csv`` as a
    frame."""
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(_settings(cascade, config)))  # tuples as lists
    path = out / SETTINGS
    if path.is_file() and json.loads(path.read_text()) != settings:
        raise ValueError(f"{path}: the cache was built with other settings; use a new folder")
    path.write_text(json.dumps(settings, indent=1) + "\n")
    slides = read_training_set(data, config.y_flip)
    fold_of = assign_folds(slides, folds, config.seed, by_centre)
    todo = [(s, fold_of[s.filename]) for s in slides if not (out / s.stem / DONE).is_file()]
    if len(todo) < len(slides):
        log.info("%s: %d of %d slides cached already", out, len(slides) - len(todo), len(slides))
    failed = []
    for item, error in runner(todo, out, cascade, config):
        if error is not None:
            failed.append(item.filename)
            log.error(
                "%s: skipped, cannot be cached: %s: %s", item.filename, type(error).__name__, error
            )
    if failed:
        log.warning("%d slide(s) skipped: %s", len(failed), ", ".join(failed))
    return write_index(out, fold_of)


def write_index(out: Path, fold_of: dict[str, int] | None = None) -> pd.DataFrame:
    """Rebuild ``slides.csv`` and ``patches.csv`` from the per-slide files (``fold_of`` updates
    the folds); returns the slides frame."""
    rows, tables = [], {PATCHES: [], SQUARES: []}
    for done in sorted(out.glob(f"*/{DONE}")):
        row = json.loads(done.read_text())
        row.pop("boxes", None)  # in slide.json only (Cache.fragments)
        if fold_of is not None and row["filename"] in fold_of:
            row["fold"] = fold_of[row["filename"]]
        rows.append(row)
        for name, source, index in (
            (PATCHES, "patches", PATCHES),
            (HARD, "hard", PATCHES),
            (SQUARES, "", SQUARES),
        ):
            if (done.parent / name).is_file():
                table = pd.read_csv(done.parent / name, keep_default_na=False)
                if source:
                    table.insert(0, "source", source)
                table.insert(0, "stem", row["stem"])
                table.insert(0, "filename", row["filename"])
                table["fold"] = row["fold"]
                tables[index].append(table)
    slides = pd.DataFrame(rows)
    slides.to_csv(out / SLIDES, index=False)
    for name, parts in tables.items():
        if parts:
            pd.concat(parts, ignore_index=True).to_csv(out / name, index=False)
    log.info("%s: %d slides, %d patches", out, len(slides), sum(map(len, tables[PATCHES])))
    return slides


#: ``.npy`` header readers by format version (``np.save`` writes 1.0, or 2.0 for huge headers).
HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class ArrayPool:
    """``.npy`` arrays by path, at most ``max_open`` open at a time, the least recently used
    closed first, so the pool bounds the open files of a process whatever the number of slides.
    Pickled empty (for loader workers).

    * :meth:`get` memory-maps a whole array (one file descriptor while the map lives; an array a
      caller still holds stays valid, its map closing when the last reference goes): for crops of
      the detector's fragment arrays.
    * :meth:`item` reads one item along the first axis with ``pread`` into a fresh array: for
      the classifier's patches, drawn one at a time from every slide. Nothing stays mapped, so
      the pages read count in the system's page cache, not in the process's resident set.
    """

    def __init__(self, max_open: int = 64) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open = max_open
        self._open: OrderedDict[tuple[Path, str], Any] = OrderedDict()

    def _remember(self, key: tuple[Path, str], value: Any) -> None:
        self._open[key] = value
        while len(self._open) > self.max_open:
            (_, kind), old = self._open.popitem(last=False)
            if kind == "file":
                old[0].close()

    def get(self, path: Path) -> np.ndarray:
        """The array of ``path``, memory-mapped read-only."""
        array = self._open.pop((path, "map"), None)
        if array is None:
            array = np.load(path, mmap_mode="r")
        self._remember((path, "map"), array)
        return array

    def item(self, path: Path, index: int) -> np.ndarray:
        """Item ``index`` (along the first axis) of the C-ordered array of ``path``, read."""
        entry = self._open.pop((path, "file"), None)
        if entry is None:
            handle = path.open("rb")
            try:
                version = np.lib.format.read_magic(handle)
                header = HEADER_READERS.get(version)
                if header is None:
                    raise ValueError(f"{path}: .npy format {version} is not read by items")
                shape, fortran, dtype = header(handle)
            except BaseException:
                handle.close()
                raise
            if fortran or not shape:
                handle.close()
                raise ValueError(f"{path}: item reads need a C-ordered array of rank >= 1")
            entry = (handle, handle.tell(), shape, dtype)
        self._remember((path, "file"), entry)
        handle, offset, shape, dtype = entry
        if not 0 <= index < shape[0]:
            raise IndexError(f"{path}: item {index} of {shape[0]}")
        out = np.empty(shape[1:], dtype)  # read straight into the array handed back
        if os.preadv(handle.fileno(), [out], offset + index * out.nbytes) != out.nbytes:
            raise ValueError(f"{path}: truncated at item {index}")
        return out

    def __len__(self) -> int:
        return len(self._open)

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open, "_open": OrderedDict()}


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The cache command's arguments (``DATA OUT`` and its settings), for :func:`from_arguments`."""
    parser.add_argument("data", type=Path, help="training folder (train_*.csv and the TIFs)")
    parser.add_argument("out", type=Path, help="cache folder (resumed when it exists)")
    parser.add_argument("--preset", default="tiny", help="preset name or JSON file (its cascade)")
    parser.add_argument("--config", dest="preset", help=argparse.SUPPRESS)  # the old name
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--by-centre", action="store_true", help="group folds by centre (Cxx_)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--square-patches", type=int, default=CacheConfig.square_patches)
    parser.add_argument("--benign-patches", type=int, default=CacheConfig.benign_patches)
    parser.add_argument(
        "--y-flip",
        choices=Y_FLIPS,
        default=CacheConfig.y_flip,
        help="page-0 height that undoes the annotations' flipped y: the metadata's or the TIF's "
        "own (python -m training.data.check DATA says which the data supports)",
    )
    parser.add_argument(
        "--min-fragment-um2",
        type=float,
        default=CacheConfig.min_fragment_um2,
        help="tissue components smaller than this (µm²) are specks, not cached",
    )


def from_arguments(args: argparse.Namespace, runner: CacheRunner = cache_serially) -> int:
    """Build the cache that :func:`add_arguments`' ``args`` describe with ``runner``; prints the
    slides per fold and label."""
    config = CacheConfig(
        square_patches=args.square_patches,
        benign_patches=args.benign_patches,
        min_fragment_um2=args.min_fragment_um2,
        y_flip=args.y_flip,
        seed=args.seed,
    )
    cascade = load_preset(args.preset).cascade
    slides = build_cache(args.data, args.out, cascade, config, args.folds, args.by_centre, runner)
    counts = slides.groupby(["fold", "label"]).size().unstack(fill_value=0)
    print(f"cached {len(slides)} slides in {args.out}; slides per fold and label:\n{counts}")
    if len(slides):
        mb = slides["bytes"] / 1e6
        print(f"disk per slide: median {mb.median():.1f} MB, max {mb.max():.1f} MB, "
              f"total {mb.sum() / 1e3:.2f} GB")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.data.cache", __doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    return from_arguments(args)


if __name__ == "__main__":
    raise SystemExit(main())
