"""One reader for pyramidal slides (TissueNet TIFs, JPEG SVS, OME-TIFF) on top of pyvips.

Pages are the slide's pyramid levels, full resolution first, discovered from the file: every TIFF
page (``n-pages``) or OME SubIFD whose aspect matches page 0 is a level; SVS label, macro and
other odd-shaped pages are skipped. A file whose coarsest page is too large to read whole (a
conversion that wrote no pyramid) gets the levels it lacks below that page, halved as a pyramid
would be and shrunk from it as they are read, block by block, in bounded memory. Coordinates follow
:mod:`stages.geometry` (page-0 pixels). Every pixel array returned is RGB ``uint8`` of shape
``(H, W, 3)``.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyvips

from stages.geometry import Box, nearest_index, page_scale
from stages.tiffjpeg import ycbcr_mislabelled, ycbcr_to_rgb

log = logging.getLogger(__name__)

#: Largest page (in pixels) that :meth:`Slide.read_page` reads whole: 64 Mpx is 192 MB of RGB.
DEFAULT_MAX_PAGE_PIXELS = 64_000_000
#: Side in pixels of the tiles of TissueNet files: the levels a file lacks are halved until one
#: fits in it (as libvips' ``pyramid=True`` writes them), and :meth:`Slide.sample_page` samples
#: blocks of this size.
TILE = 512
#: Source pixels a side of the blocks a level the file lacks is shrunk from, one at a time.
BLOCK = 4096
#: Page pixels read through one opening of a file's page, for the levels it lacks, before it is
#: reopened (libvips keeps the tiles decoded through an opening: this bounds their memory).
SOURCE_CACHE_PIXELS = 32_000_000
#: µm/pixel outside this range is treated as a missing or broken resolution tag.
PLAUSIBLE_MPP = (0.05, 100.0)

_APERIO_MPP = re.compile(r"\bMPP\s*=\s*([0-9.]+)")
_OME_MPP = re.compile(r'PhysicalSizeX="([0-9.eE+-]+)"')


class SlideError(Exception):
    """A slide cannot be opened, has no usable pyramid, or a read failed."""


@dataclass
class ReadStats:
    """What a slide's pixel reads cost so far: ``seconds`` spent in them and ``pixels`` decoded
    (pixels of the file's pages: those a level the file lacks is shrunk from; glass padding
    outside the page excluded)."""

    seconds: float = 0.0
    pixels: int = 0

    def add(self, seconds: float, pixels: int) -> None:
        self.seconds += seconds
        self.pixels += pixels


@dataclass(frozen=True)
class Page:
    """One pyramid level: its real size and where it lives in the file.

    A level the file lacks has ``source``, the index of the file's page it is shrunk from (its
    coarsest), whose ``tiff_page`` and ``subifd`` it shares: each of its pixels is the mean of
    ``shrink`` × ``shrink`` pixels of that page (a power of two; its size is that page's divided
    by ``shrink``, rounded down, as a pyramid's halvings round).
    """

    index: int  # pyramid level, 0 = full resolution
    tiff_page: int  # page number in the file
    subifd: int | None  # OME-TIFF SubIFD number, None for plain pages
    width: int
    height: int
    scale: tuple[float, float]  # page-0 pixels per page pixel (sx, sy)
    source: int | None = None  # a level the file lacks: the page it is shrunk from
    shrink: int = 1  # pixels of ``source`` per pixel of this page, a side

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


def plausible_mpp(mpp: float | None) -> bool:
    """True for a finite µm/pixel inside :data:`PLAUSIBLE_MPP`."""
    return mpp is not None and math.isfinite(mpp) and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def mpp_from_header(image: pyvips.Image) -> tuple[float | None, str]:
    """Page-0 µm/pixel from a TIFF header, with its source, or ``(None, "none")``.

    Order: the TIFF resolution tags (libvips keeps them in pixels per mm; a file without them
    reads as 1 px/mm, which is rejected), then an Aperio ``MPP = …`` description, then OME-XML
    ``PhysicalSizeX`` (assumed µm). The ``magnification`` of TissueNet metadata is never used.
    """
    fields = set(image.get_fields())
    if "resolution-unit" in fields and image.xres > 1.0:
        mpp = 1000.0 / image.xres
        if plausible_mpp(mpp):
            return mpp, "tiff-tags"
    if "image-description" in fields:
        description = image.get("image-description")
        for pattern, source in ((_APERIO_MPP, "aperio-description"), (_OME_MPP, "ome-xml")):
            match = pattern.search(description)
            if match:
                try:
                    mpp = float(match.group(1))
                except ValueError:
                    continue
                if plausible_mpp(mpp):
                    return mpp, source
    return None, "none"


def to_rgb_uint8(image: pyvips.Image) -> pyvips.Image:
    """Normalise bands and format: grey → RGB, grey+alpha / RGBA → flattened on white, CMYK → sRGB,
    16-bit → 8-bit. Works from ``image.bands``; never assumes three."""
    if image.interpretation == "cmyk":
        image = image.colourspace("srgb")
    if image.format in ("ushort", "short"):
        image = (image >> 8).cast("uchar")
    elif image.format != "uchar":
        image = image.cast("uchar")
    if image.bands in (2, 4):
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.bands == 1:
        image = image.bandjoin([image, image])
    elif image.bands > 3:
        image = image.extract_band(0, n=3)
    return image.cast("uchar") if image.format != "uchar" else image


def _load(path: Path, page: int, subifd: int | None, fresh: bool = False) -> pyvips.Image:
    kwargs = {"page": page, "access": "random", "fail_on": "error"}
    if fresh:  # a new opening, not libvips' cached one
        kwargs["revalidate"] = True
    if subifd is not None:
        kwargs["subifd"] = subifd
    return pyvips.Image.tiffload(str(path), **kwargs)


def _is_level(page0: tuple[int, int], size: tuple[int, int]) -> bool:
    """True when a page's aspect matches page 0 within a pixel of rounding (a pyramid level)."""
    (w0, h0), (w, h) = page0, size
    if w >= w0 and h >= h0:
        return False
    sy = h0 / h
    return abs(w0 / sy - w) <= 1.5 + 0.01 * w


class Slide:
    """An open pyramidal slide holding lazily opened pyvips pages; ``close()`` or ``with`` ends it.

    ``mpp`` (page-0 µm/pixel) comes from the ``mpp`` argument (the metadata's ``resolution``) when
    given and plausible, else from the file (:func:`mpp_from_header`), else from ``default_mpp``
    with a logged warning, else :class:`SlideError`.

    When the file's coarsest page has more than ``max_page_pixels`` (it cannot be read whole:
    the file has no overview), the pages go on below it with the levels a pyramid would have,
    each half the previous one, until one fits a :data:`TILE` × :data:`TILE` tile; those levels
    (``Page.source`` set) are shrunk from that page as they are read (:meth:`read_page`,
    :meth:`read_region`).
    """

    def __init__(
        self,
        path: str | Path,
        mpp: float | None = None,
        default_mpp: float | None = None,
        max_page_pixels: int = DEFAULT_MAX_PAGE_PIXELS,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SlideError(f"{self.path.name}: no such file")
        if self.path.stat().st_size == 0:
            raise SlideError(f"{self.path.name}: empty file")
        try:
            first = _load(self.path, 0, None)
        except pyvips.Error as exc:
            raise SlideError(
                f"{self.path.name}: not a readable TIFF ({vips_error_text(exc)})"
            ) from exc
        self.pages = self._discover_pages(first)
        self.pages += _lacking_levels(self.pages[-1], (first.width, first.height), max_page_pixels)
        self.ycbcr_tagged_rgb = ycbcr_mislabelled(self.path)
        if self.ycbcr_tagged_rgb:
            log.warning("%s: JPEG tiles hold YCbCr but are tagged RGB; converting", self.path.name)
        self._images: dict[int, pyvips.Image] = {}
        self._regions: dict[int, pyvips.Region] = {}
        self._sources: dict[int, tuple[pyvips.Image, int]] = {}  # opening, pixels read through it
        self.reads = ReadStats()
        self.mpp, self.mpp_source = self._resolve_mpp(first, mpp, default_mpp)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the pyvips handles (the file is closed when libvips releases them)."""
        self._regions.clear()
        self._images.clear()
        self._sources.clear()

    def __repr__(self) -> str:
        return (
            f"Slide({self.path.name!r}, {self.width}x{self.height}, "
            f"{len(self.pages)} pages, mpp={self.mpp:.4f} from {self.mpp_source})"
        )

    # -- discovery --------------------------------------------------------------------------

    def _discover_pages(self, first: pyvips.Image) -> tuple[Page, ...]:
        fields = set(first.get_fields())
        n_pages = first.get("n-pages") if "n-pages" in fields else 1
        n_subifds = first.get("n-subifds") if "n-subifds" in fields else 0
        page0 = (first.width, first.height)
        candidates: list[tuple[int, int | None, int, int]] = []
        if n_subifds:  # OME-TIFF pyramid: levels live in page 0's SubIFDs
            for s in range(n_subifds):
                candidates.append((0, s, *self._header_size(0, s)))
        else:
            for p in range(1, n_pages):
                candidates.append((p, None, *self._header_size(p, None)))
        levels = [(0, None, *page0)]
        levels += [c for c in candidates if c[2] > 0 and _is_level(page0, (c[2], c[3]))]
        levels.sort(key=lambda c: -c[2] * c[3])
        return tuple(
            Page(i, p, s, w, h, page_scale(page0, (w, h))) for i, (p, s, w, h) in enumerate(levels)
        )

    def _header_size(self, page: int, subifd: int | None) -> tuple[int, int]:
        try:
            image = _load(self.path, page, subifd)
        except pyvips.Error as exc:
            log.warning(
                "%s: skipping unreadable page %d (%s)", self.path.name, page, vips_error_text(exc)
            )
            return (0, 0)
        return (image.width, image.height)

    def _resolve_mpp(
        self, first: pyvips.Image, mpp: float | None, default_mpp: float | None
    ) -> tuple[float, str]:
        if mpp is not None and plausible_mpp(mpp):
            return float(mpp), "metadata"
        if mpp is not None:
            log.warning("%s: ignoring implausible resolution %r", self.path.name, mpp)
        found, source = mpp_from_header(first)
        if found is not None:
            return found, source
        if default_mpp is not None:
            log.warning(
                "%s: no resolution in metadata or file; using default %.4f µm/px",
                self.path.name,
                default_mpp,
            )
            return float(default_mpp), "default"
        raise SlideError(f"{self.path.name}: no µm/pixel in metadata or TIFF tags")

    # -- geometry ---------------------------------------------------------------------------

    @property
    def width(self) -> int:
        return self.pages[0].width

    @property
    def height(self) -> int:
        return self.pages[0].height

    def page_mpp(self, page: int) -> float:
        """µm/pixel of ``page`` (mean of its x and y scale times page-0 µm/pixel)."""
        sx, sy = self.pages[page].scale
        return self.mpp * (sx + sy) / 2

    def page_for_mpp(self, target_mpp: float) -> int:
        """Index of the page whose µm/pixel is nearest ``target_mpp`` (log distance)."""
        return nearest_index([self.page_mpp(p.index) for p in self.pages], target_mpp)

    # -- pixels -----------------------------------------------------------------------------

    def _page(self, page: int) -> Page:
        if not 0 <= page < len(self.pages):
            raise SlideError(f"{self.path.name}: page {page} out of range 0..{len(self.pages) - 1}")
        return self.pages[page]

    def _open(self, info: Page, fresh: bool = False) -> pyvips.Image:
        """The file's page ``info`` as RGB uint8, lazy (``fresh``: a new opening, with its own
        tile cache, not libvips' cached one)."""
        try:
            image = to_rgb_uint8(_load(self.path, info.tiff_page, info.subifd, fresh))
            return ycbcr_to_rgb(image) if self.ycbcr_tagged_rgb else image
        except pyvips.Error as exc:
            raise SlideError(
                f"{self.path.name}: page {info.index}: {vips_error_text(exc)}"
            ) from exc

    def image(self, page: int) -> pyvips.Image:
        """The pyvips image of the file's ``page`` as RGB uint8 (lazy; opened once and cached).
        A level the file lacks has none: it is read through :meth:`read_page` and
        :meth:`read_region`."""
        info = self._page(page)
        if info.source is not None:
            raise SlideError(
                f"{self.path.name}: page {page} is not in the file (shrunk from page "
                f"{info.source} as it is read)"
            )
        if page not in self._images:
            image = self._open(info)
            # A strip (untiled) page, such as an SVS thumbnail, reads only top to bottom; keep
            # small ones in memory so that regions can be fetched in any order.
            if "tile-width" not in image.get_fields() and info.width * info.height <= (
                DEFAULT_MAX_PAGE_PIXELS
            ):
                try:
                    image = image.copy_memory()
                except pyvips.Error as exc:
                    raise SlideError(
                        f"{self.path.name}: page {page}: {vips_error_text(exc)}"
                    ) from exc
            self._images[page] = image
        return self._images[page]

    def read_page(self, page: int, max_pixels: int = DEFAULT_MAX_PAGE_PIXELS) -> np.ndarray:
        """Whole ``page`` as ``(H, W, 3)`` uint8. Refuses pages above ``max_pixels``. A level
        the file lacks decodes all of its source page, a block at a time."""
        info = self._page(page)
        if info.width * info.height > max_pixels:
            raise SlideError(
                f"{self.path.name}: refusing to read page {page} whole "
                f"({info.width}x{info.height} px > cap of {max_pixels} px); read regions instead"
            )
        start = time.perf_counter()
        if info.source is not None:
            pixels = self._read_shrunk(info, 0, 0, info.width, info.height)
        else:
            image = self.image(page)
            try:
                data = image.write_to_memory()
            except pyvips.Error as exc:
                raise SlideError(f"{self.path.name}: page {page}: {vips_error_text(exc)}") from exc
            pixels = np.frombuffer(data, dtype=np.uint8).reshape(info.height, info.width, 3)
        self.reads.add(time.perf_counter() - start, info.width * info.height * info.shrink**2)
        return pixels

    def read_region(self, box: Box, page: int) -> np.ndarray:
        """Pixels of page-0 ``box`` read at ``page``: ``(h, w, 3)`` uint8, h/w per ``Box.to_page``.

        Parts outside the page are white (255), as glass.
        """
        info = self._page(page)
        left, top, width, height = box.to_page(info.scale)
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, info.width), min(top + height, info.height)
        if x1 <= x0 or y1 <= y0:
            return out
        start = time.perf_counter()
        if info.source is not None:
            patch = self._read_shrunk(info, x0, y0, x1 - x0, y1 - y0)
        else:
            if page not in self._regions:
                self._regions[page] = pyvips.Region.new(self.image(page))
            try:
                data = self._regions[page].fetch(x0, y0, x1 - x0, y1 - y0)
            except pyvips.Error as exc:
                raise SlideError(
                    f"{self.path.name}: page {page} read failed: {vips_error_text(exc)}"
                ) from exc
            patch = np.frombuffer(data, dtype=np.uint8).reshape(y1 - y0, x1 - x0, 3)
        self.reads.add(time.perf_counter() - start, (x1 - x0) * (y1 - y0) * info.shrink**2)
        out[y0 - top : y1 - top, x0 - left : x1 - left] = patch
        return out

    def sample_page(self, page: int, step: int) -> np.ndarray:
        """A cheap stand-in for the file's ``page`` seen whole, decoding one :data:`TILE`-px
        block in ``step`` × ``step``: ``(ceil(rows / step), ceil(columns / step), 3)`` uint8 of
        the page's ``TILE`` × ``TILE`` blocks (the last row and column partial), where pixel
        ``(i, j)`` is the mean colour of block ``(min(i · step + step // 2, rows - 1), min(j ·
        step + step // 2, columns - 1))``, the middle one of the ``step`` × ``step`` blocks it
        stands for (or the last one where they are cut short by the page's edge)."""
        info = self._page(page)
        if info.source is not None:
            raise SlideError(f"{self.path.name}: page {page} is not in the file; sample its source")
        if step < 1:
            raise ValueError(f"sample_page needs a step >= 1, got {step}")
        columns, rows = math.ceil(info.width / TILE), math.ceil(info.height / TILE)
        xs = [min(j * step + step // 2, columns - 1) for j in range(math.ceil(columns / step))]
        ys = [min(i * step + step // 2, rows - 1) for i in range(math.ceil(rows / step))]
        out = np.empty((len(ys), len(xs), 3), np.uint8)
        start, decoded = time.perf_counter(), 0
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                w, h = min(TILE, info.width - x * TILE), min(TILE, info.height - y * TILE)
                block = self._fetch(info, x * TILE, y * TILE, w, h)
                out[i, j] = np.round(cv2.mean(block)[:3])
                decoded += w * h
        seconds = time.perf_counter() - start
        self.reads.add(seconds, decoded)
        log.info(
            "%s: page %d sampled, one %d-px block in %d x %d (%d blocks) in %.2f s",
            self.path.name, page, TILE, step, step, len(xs) * len(ys), seconds,
        )  # fmt: skip
        return out

    def _read_shrunk(self, info: Page, left: int, top: int, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 pixels at ``(left, top)`` of ``info``, a level the file
        lacks (inside it): its source's pixels under them shrunk (box means), block by block of
        at most :data:`BLOCK` × :data:`BLOCK` source pixels."""
        k = info.shrink
        cells = max(1, BLOCK // k)  # page pixels a block gives, a side
        out = np.empty((height, width, 3), np.uint8)
        for y0 in range(top, top + height, cells):
            for x0 in range(left, left + width, cells):
                w, h = min(cells, left + width - x0), min(cells, top + height - y0)
                block = self._fetch(self.pages[info.source], x0 * k, y0 * k, w * k, h * k, k)
                out[y0 - top : y0 - top + h, x0 - left : x0 - left + w] = block
        return out

    def _fetch(
        self, info: Page, left: int, top: int, width: int, height: int, shrink: int = 1
    ) -> np.ndarray:
        """Pixels ``(left, top, width, height)`` of the file's page ``info`` (inside it) shrunk
        ``shrink`` times (a divisor of width and height): ``(height / shrink, width / shrink, 3)``
        uint8. Read through an opening of the page of its own, reopened once the reads through it
        have covered :data:`SOURCE_CACHE_PIXELS`: libvips keeps every tile a page's reads
        decoded, up to three rows of them (over 1 GB on a 271,950 px wide page)."""
        image, covered = self._sources.get(info.index, (None, 0))
        if image is None or covered + width * height > SOURCE_CACHE_PIXELS:
            image, covered = self._open(info, fresh=True), 0
        self._sources[info.index] = (image, covered + width * height)
        try:
            part = image.crop(left, top, width, height)
            data = (part.shrink(shrink, shrink) if shrink > 1 else part).write_to_memory()
        except pyvips.Error as exc:
            raise SlideError(
                f"{self.path.name}: page {info.index} read failed: {vips_error_text(exc)}"
            ) from exc
        return np.frombuffer(data, dtype=np.uint8).reshape(height // shrink, width // shrink, 3)


def _lacking_levels(
    coarsest: Page, page0: tuple[int, int], max_page_pixels: int
) -> tuple[Page, ...]:
    """The levels below the file's ``coarsest`` page when it has more than ``max_page_pixels``:
    halved (rounded down) until one fits a :data:`TILE` × :data:`TILE` tile (or is a pixel
    thin); none otherwise."""
    if coarsest.width * coarsest.height <= max_page_pixels:
        return ()
    levels: list[Page] = []
    shrink, (width, height) = 1, coarsest.size
    while (width > TILE or height > TILE) and min(width, height) >= 2:
        shrink *= 2
        width, height = coarsest.width // shrink, coarsest.height // shrink
        levels.append(
            Page(coarsest.index + len(levels) + 1, coarsest.tiff_page, coarsest.subifd, width,
                 height, page_scale(page0, (width, height)), coarsest.index, shrink)
        )  # fmt: skip
    return tuple(levels)


def vips_error_text(exc: Exception) -> str:
    """A pyvips error (message plus libvips detail, several lines) on one line."""
    text = " / ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text[:300] or type(exc).__name__
