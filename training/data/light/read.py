"""A training slide read from its light files (:class:`LightSlide`), as the cache reads a TIF.

The pages are those of the slide's pyramid (page-0 size from the metadata, each page half the
previous one, rounded down): page :data:`~.layout.PAGE` is the downsampled image (its real size,
so its scale is the metadata size over it, about :data:`~.layout.FACTOR`), the pages below it
are shrunk from it as :class:`stages.slide.Slide` shrinks the levels a TIF lacks, and the finer
pages are read inside the annotation squares only, from their crops (cut to the page's grid and
box-averaged to it: a pyramid's halvings). Tissue masks, detector fragments and targets thus come
from the downsampled image by the TIF path's own code, and the classifier's patches from the
crops at the classifier's µm/px.

Bad files are named in the log: a downsampled image that is missing, unreadable, not RGB or not
the metadata's size / 32 (within a pixel) stops the slide (:class:`stages.slide.SlideError`); a
crop that is missing, truncated, not RGB or not its square's size, or whose square reaches past
the slide, loses that square's patches only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyvips

from stages.geometry import Box, page_scale
from stages.slide import Page, ReadStats, Slide, SlideError, plausible_mpp, vips_error_text
from training.data.annotations import Annotation
from training.data.light.layout import (
    FACTOR,
    PAGE,
    downsampled_path,
    downsampled_size,
    outside,
    region_path,
    region_rect,
)

log = logging.getLogger(__name__)

#: Side in pixels a page is halved down to (as the TIFs' pyramids: until one fits a tile).
TILE = 512


def load_jpeg(path: Path) -> pyvips.Image:
    """The RGB JPEG at ``path`` decoded into memory (uchar, 3 bands); ValueError naming the file
    when it is missing, unreadable or truncated, or not 3-band."""
    if not path.is_file():
        raise ValueError(f"{path}: missing")
    try:
        image = pyvips.Image.new_from_file(str(path), access="sequential", fail_on="truncated")
        if image.bands != 3 or image.format != "uchar":
            raise ValueError(
                f"{path}: not an RGB image ({image.bands} band(s) of {image.format}, "
                f"{image.interpretation})"
            )
        return image.copy_memory()
    except pyvips.Error as exc:
        raise ValueError(f"{path}: unreadable or truncated JPEG ({vips_error_text(exc)})") from exc


def decode_jpeg(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels of the RGB JPEG at ``path`` (ValueError as :func:`load_jpeg`)."""
    image = load_jpeg(path)
    return np.frombuffer(image.write_to_memory(), np.uint8).reshape(image.height, image.width, 3)


@dataclass(frozen=True)
class Region:
    """One annotation square's crop: the square (page-0 ``box``), the crop's page-0 pixel
    ``(left, top)`` and its ``(H, W, 3)`` uint8 ``pixels``."""

    box: Box
    left: int
    top: int
    pixels: np.ndarray

    @property
    def rect(self) -> tuple[int, int, int, int]:
        """The crop's page-0 ``(left, top, width, height)``."""
        h, w = self.pixels.shape[:2]
        return self.left, self.top, w, h

    def covers(self, x0: int, y0: int, x1: int, y1: int, slack: int) -> bool:
        """True when page-0 ``[x0, x1) × [y0, y1)`` lies in the crop but for ``slack`` px."""
        h, w = self.pixels.shape[:2]
        return (
            x0 >= self.left - slack
            and y0 >= self.top - slack
            and x1 <= self.left + w + slack
            and y1 <= self.top + h + slack
        )

    def cut(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Page-0 ``[x0, x1) × [y0, y1)`` of the crop, its edge pixels repeated where it
        reaches past the crop."""
        h, w = self.pixels.shape[:2]
        top, bottom = y0 - self.top, y1 - self.top  # crop pixels
        left, right = x0 - self.left, x1 - self.left
        inner = self.pixels[max(top, 0) : min(bottom, h), max(left, 0) : min(right, w)]
        pad = (max(-top, 0), max(bottom - h, 0), max(-left, 0), max(right - w, 0))
        if not any(pad):
            return inner
        return cv2.copyMakeBorder(inner, *pad, cv2.BORDER_REPLICATE)


def load_regions(
    data: Path, filename: str, size: tuple[int, int], annotations: Sequence[Annotation]
) -> dict[str, Region]:
    """The usable crops of ``annotations`` of slide ``filename`` (page-0 ``size``) in the
    training folder ``data``, by annotation id. A square reaching past the slide, or whose crop
    is missing, unreadable, truncated, not RGB or not the square's size (within a pixel), is
    left out with a warning naming the file."""
    regions = {}
    for annotation in annotations:
        path = data / region_path(annotation.annotation_id)
        left, top, width, height = region_rect(annotation.box)
        try:
            if outside(annotation.box, size):
                raise ValueError(
                    f"{path}: its square reaches past the {size[0]}x{size[1]} px slide"
                )
            pixels = decode_jpeg(path)
            h, w = pixels.shape[:2]
            if abs(w - width) > 1 or abs(h - height) > 1:
                raise ValueError(f"{path}: {w}x{h} px, its square is {width}x{height} px")
        except ValueError as exc:
            log.warning(
                "%s; square %s of %s skipped (no classifier patches from it)",
                exc, annotation.annotation_id, filename,
            )  # fmt: skip
            continue
        regions[annotation.annotation_id] = Region(
            annotation.box, max(left, 0), max(top, 0), pixels
        )
    return regions


def light_pages(size: tuple[int, int], image: tuple[int, int]) -> tuple[Page, ...]:
    """The pages of a page-0 ``size`` slide whose downsampled image is ``image`` px (both
    ``(width, height)``): pages ``0 … PAGE - 1`` of the pyramid's sizes (read from the crops),
    page :data:`PAGE` the image, then its halvings (shrunk from it) until one fits a
    :data:`TILE` × :data:`TILE` tile."""
    width, height = size
    pages = [
        Page(k, -1, None, width >> k, height >> k, page_scale(size, (width >> k, height >> k)))
        for k in range(PAGE)
    ]
    pages.append(Page(PAGE, 0, None, *image, page_scale(size, image)))
    shrink, (w, h) = 1, image
    while (w > TILE or h > TILE) and min(w, h) >= 2:
        shrink *= 2
        w, h = image[0] // shrink, image[1] // shrink
        pages.append(Page(len(pages), 0, None, w, h, page_scale(size, (w, h)), PAGE, shrink))
    return tuple(pages)


class LightSlide(Slide):
    """A training slide read from its light files, with :class:`stages.slide.Slide`'s pages,
    page choice and reads (module doc): ``read_page`` and ``read_region`` serve page
    :data:`PAGE` and the coarser ones from the downsampled image, and ``read_region`` the finer
    ones from the crops (a region outside every usable crop raises SlideError).

    ``mpp`` (page-0 µm/pixel) is the metadata's when plausible, else ``default_mpp`` (logged),
    else SlideError: the JPEGs carry none. ``crops`` holds the usable crops by annotation id
    (:func:`load_regions`).
    """

    def __init__(
        self,
        data: Path,
        filename: str,
        size: tuple[int, int],
        annotations: Sequence[Annotation],
        mpp: float | None = None,
        default_mpp: float | None = None,
    ) -> None:
        self.path = data / downsampled_path(filename)
        try:
            image = load_jpeg(self.path)
        except ValueError as exc:
            raise SlideError(str(exc)) from exc
        w, h = image.width, image.height
        if abs(w - size[0] / FACTOR) >= 1 or abs(h - size[1] / FACTOR) >= 1:
            expected = "x".join(map(str, downsampled_size(*size)))
            raise SlideError(
                f"{self.path}: {w}x{h} px, not the metadata's {size[0]}x{size[1]} px / "
                f"{FACTOR} ({expected} px)"
            )
        if plausible_mpp(mpp):
            self.mpp, self.mpp_source = float(mpp), "metadata"
        elif default_mpp is not None:
            log.warning("%s: no resolution in the metadata; using default %.4f µm/px",
                        filename, default_mpp)  # fmt: skip
            self.mpp, self.mpp_source = float(default_mpp), "default"
        else:
            raise SlideError(f"{filename}: no µm/pixel in the metadata")
        self.pages = light_pages(size, (w, h))
        self.ycbcr_tagged_rgb = False
        self._image = image
        self._images: dict[int, pyvips.Image] = {}
        self._regions: dict[int, pyvips.Region] = {}
        self._sources: dict[int, tuple[pyvips.Image, int]] = {}
        self.reads = ReadStats()
        self.crops = load_regions(data, filename, size, annotations)

    def _open(self, info: Page, fresh: bool = False) -> pyvips.Image:
        """The downsampled image, for page :data:`PAGE` (the pages shrunk from it included)."""
        if info.index != PAGE:
            raise SlideError(
                f"{self.path.name}: page {info.index} is not in the light files (the "
                f"downsampled image is page {PAGE}; finer pages lie in the crops only)"
            )
        return self._image

    def read_region(self, box: Box, page: int) -> np.ndarray:
        """Pixels of page-0 ``box`` read at ``page``, ``(h, w, 3)`` uint8 as
        :meth:`Slide.read_region`; a page ``k`` finer than :data:`PAGE` from the crop holding
        the box, as the pyramid's halvings make it: page pixel ``(u, v)`` the mean of page-0
        ``[u·2^k, (u+1)·2^k) × [v·2^k, (v+1)·2^k)`` (up to ``2^(k+1)`` page-0 px past the
        crop's edge repeat it)."""
        info = self._page(page)
        if page >= PAGE:
            return super().read_region(box, page)
        left, top, width, height = box.to_page(info.scale)
        k = 1 << page
        x0, y0, x1, y1 = left * k, top * k, (left + width) * k, (top + height) * k
        region = next((r for r in self.crops.values() if r.covers(x0, y0, x1, y1, 2 * k)), None)
        if region is None:
            raise SlideError(
                f"{self.path.name}: page-{page} region {(left, top, width, height)} lies in no "
                "usable annotated-region crop (the light files hold full resolution inside the "
                "annotation squares only)"
            )
        pixels = region.cut(x0, y0, x1, y1)
        if k > 1:
            pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
        return pixels
