"""Writing the cache: each slide decoded once (:func:`cache_slide`), the slides of a training
folder in folds (:func:`build_cache`), the index tables (:func:`write_index`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.classifier import read_patches
from stages.config import CascadeConfig
from stages.geometry import Box
from stages.tissue import mask_for_slide
from training.data.cache.config import (
    DONE,
    HARD,
    PATCHES,
    SETTINGS,
    SLIDES,
    SQUARES,
    CacheConfig,
    crop_size,
)
from training.data.cache.source import SOURCES
from training.data.dataset import TrainSlide, assign_folds, read_training_set
from training.data.targets import detector_target, jittered_centres

log = logging.getLogger(__name__)


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
    """Decode one slide into ``out/<stem>/`` (see the module doc), read from
    ``config.source`` (:mod:`training.data.cache.source`), or from its TIF where ``config.source``
    is ``light`` and the TIF is there too (whole slides give more than the light files: the
    benign patches of a label-0 slide come from all its tissue); returns its index row, whose
    ``read`` says which.

    Raises what the reader raises for an unreadable slide (:class:`stages.slide.SlideError`).
    """
    started = time.perf_counter()
    folder = out / item.stem
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.npy"):  # an interrupted earlier attempt
        stale.unlink()
    rng = np.random.default_rng([config.seed, *item.stem.encode()])
    margin = crop_size(cascade.detector.window, config.crop_factor) // 2
    read = "tif" if config.source == "light" and item.path.is_file() else config.source
    source = SOURCES[read]
    with source.open(item, cascade.default_mpp) as slide:
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
        patch = source.footprint(
            (cascade.classifier.patch * csx, cascade.classifier.patch * csy),
            (size * csx, size * csy),
        )
        rows, centres = [], []
        for a in source.patch_squares(slide, item):
            points = jittered_centres(
                rng, a.box, config.square_patches, patch, config.square_spread
            )
            centres.append(points)
            rows += [("square", a.annotation_class, a.annotation_id)] * len(points)
        if item.label == 0:
            points = source.benign_centres(
                rng, slide, mask, mask_scale, config.benign_patches, patch
            )
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
        "read": read,
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
    if path.is_file():
        built = json.loads(path.read_text())
        # a cache written before a setting existed was built with its default
        built["cache"] = dataclasses.asdict(CacheConfig()) | built.get("cache", {})
        if built != settings:
            raise ValueError(f"{path}: the cache was built with other settings; use a new folder")
    path.write_text(json.dumps(settings, indent=1) + "\n")
    slides = read_training_set(data, config.y_flip, config.source)
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
