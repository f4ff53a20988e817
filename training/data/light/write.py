"""Writing a slide's light files from its TIF (:func:`write_light_files`), the URL columns that
name them (:func:`add_urls`), and the light files of a whole training folder
(:func:`light_folder`).

Both files are plain baseline RGB JPEGs without metadata. The downsampled image is made from the
coarsest page of the TIF that is at most 32× (page 5 of a competition pyramid: 32 × 32 means of
page 0), resized to the real files' rounded size (:func:`.layout.downsampled_size`) where they
differ; page 0 is never decoded for it. A crop reads the tiles of page 0 under its square only.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyvips

from stages.slide import Slide
from training.data.annotations import Annotation, parse_annotations
from training.data.convert import JPEG_QUALITY
from training.data.dataset import ANNOTATIONS, LABELS, METADATA
from training.data.light.layout import (
    FACTOR,
    JPG_URLS,
    REGION_URLS,
    TIF_URLS,
    downsampled_path,
    downsampled_size,
    region_path,
    region_rect,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LightOptions:
    """The light files a generated folder gets: JPEG ``quality`` of the downsampled images and
    crops (DrivenData's is not published; 75 is libvips' and Pillow's default, and the TIFs'),
    and whether the TIFs stay beside them (``tifs``; False: a light-only folder)."""

    quality: int = JPEG_QUALITY
    tifs: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {self.quality}")


def _save_jpeg(image: pyvips.Image, path: Path, quality: int) -> Path:
    """``image`` as a baseline JPEG of ``quality`` at ``path`` (a temporary name until complete);
    returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        image.jpegsave(str(partial), Q=quality, interlace=False, keep="none")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _downsampled(slide: Slide, size: tuple[int, int]) -> pyvips.Image:
    """The lazy downsampled image of ``slide`` (page-0 ``size`` of the metadata): its coarsest
    file page at most :data:`FACTOR` × (within a halving's rounding) cut to the metadata's
    extent and resized to :func:`downsampled_size` where that differs."""
    page = max(p.index for p in slide.pages if p.source is None and p.scale[0] < 1.5 * FACTOR)
    image, (sx, sy) = slide.image(page), slide.pages[page].scale
    width = min(image.width, round(size[0] / sx))
    height = min(image.height, round(size[1] / sy))
    image = image.crop(0, 0, width, height)
    target = downsampled_size(*size)
    if (width, height) != target:
        image = image.resize(target[0] / width, vscale=target[1] / height)
    return image


def write_light_files(
    tif: Path,
    out: Path,
    filename: str,
    size: tuple[int, int],
    mpp: float | None,
    annotations: Sequence[Annotation],
    quality: int = JPEG_QUALITY,
) -> list[Path]:
    """Write the light files of slide ``filename`` (its TIF at ``tif``, page-0 ``size``
    ``(width, height)`` and µm/px ``mpp`` of the metadata) into the training folder ``out``:
    the downsampled image and the crop of each of ``annotations`` (page-0 boxes, y down) at
    JPEG ``quality``. A square reaching past the slide is cropped to the slide's part of it;
    one wholly outside gets no crop (logged). Returns the paths written."""
    paths = []
    with Slide(tif, mpp=mpp) as slide:
        paths.append(
            _save_jpeg(_downsampled(slide, size), out / downsampled_path(filename), quality)
        )
        page0 = slide.image(0)
        width, height = min(size[0], page0.width), min(size[1], page0.height)
        for annotation in annotations:
            left, top, w, h = region_rect(annotation.box)
            x0, y0 = max(left, 0), max(top, 0)
            x1, y1 = min(left + w, width), min(top + h, height)
            if x1 <= x0 or y1 <= y0:
                log.warning("%s: square %s lies outside the slide; no crop",
                            filename, annotation.annotation_id)  # fmt: skip
                continue
            crop = page0.crop(x0, y0, x1 - x0, y1 - y0)
            paths.append(_save_jpeg(crop, out / region_path(annotation.annotation_id), quality))
    log.info("%s: %d light files written", filename, len(paths))
    return paths


def add_urls(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """``table`` with the real CSVs' URL columns holding the files' paths relative to the
    training folder: for ``kind`` ``"metadata"`` (a ``*_metadata.csv``), each slide's TIF and
    downsampled image (``{us,eu,asia}_tif_url``, ``…_jpg_url``); for ``"annotations"``, each
    square's crop (``{us,eu,asia}_jpeg_url``)."""
    out = table.copy()
    if kind == "metadata":
        jpgs = [downsampled_path(name) for name in table["filename"]]
        for tif_column, jpg_column in zip(TIF_URLS, JPG_URLS, strict=True):
            out[tif_column] = table["filename"]
            out[jpg_column] = jpgs
    elif kind == "annotations":
        crops = [region_path(str(a)) for a in table["annotation_id"]]
        for column in REGION_URLS:
            out[column] = crops
    else:
        raise ValueError(f"kind must be 'metadata' or 'annotations', got {kind!r}")
    return out


def light_folder(data: Path, out: Path, quality: int = JPEG_QUALITY) -> pd.DataFrame:
    """Write into ``out`` the light files of the TIFs of the training folder ``data`` and its
    CSVs with the URL columns (:func:`add_urls`); ``out`` may be ``data`` itself (the light
    files then lie beside the TIFs). The squares are placed with the metadata's height (its
    y flip). A slide whose TIF is absent or unreadable is skipped, named in the log. Returns
    one row per slide written: ``filename``, ``tif_bytes``, ``light_bytes``."""
    metadata = pd.read_csv(data / METADATA)
    annotations = pd.read_csv(data / ANNOTATIONS)
    squares: dict[str, list[Annotation]] = {}
    for annotation in parse_annotations(annotations, metadata):
        squares.setdefault(annotation.filename, []).append(annotation)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in metadata.itertuples(index=False):
        tif = data / row.filename
        try:
            paths = write_light_files(
                tif, out, row.filename, (int(row.width), int(row.height)),
                float(row.resolution), squares.get(row.filename, []), quality,
            )  # fmt: skip
        except Exception as exc:  # one unreadable TIF never stops the others
            log.error("%s: skipped, no light files: %s: %s", tif, type(exc).__name__, exc)
            continue
        light = sum(p.stat().st_size for p in paths)
        rows.append((row.filename, tif.stat().st_size, light))
    add_urls(metadata, "metadata").to_csv(out / METADATA, index=False)
    add_urls(annotations, "annotations").to_csv(out / ANNOTATIONS, index=False)
    if out.resolve() != data.resolve():
        shutil.copyfile(data / LABELS, out / LABELS)
    return pd.DataFrame(rows, columns=["filename", "tif_bytes", "light_bytes"])
