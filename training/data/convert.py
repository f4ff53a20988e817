"""Convert a native whole-slide image into the TissueNet competition format.

``python -m training.data.convert SRC DST.tif [--mpp X]`` (or :func:`convert`) writes level 0 of
``SRC`` as a pyramidal TIFF like the competition's: JPEG Q75, 512 × 512 tiles, every page half the
previous one until a page fits one tile, µm/pixel in the resolution tags, and no image
description (libvips would otherwise copy an Aperio description, and readers would then take the
output for an SVS).

Readers: JPEG SVS, OME-TIFF and other TIFFs libvips can decode go through pyvips alone. Slides
libvips cannot decode (JPEG 2000 SVS, detected by a failed first-tile decode) or open
(``.ndpi``, ``.mrxs``, ``.vms``, ``.scn``, ``.bif`` …) go through OpenSlide, an optional extra:
``pip install openslide-python openslide-bin``.
"""

from __future__ import annotations

import argparse
import logging
import struct
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyvips

from stages.slide import (
    PLAUSIBLE_MPP,
    mpp_from_header,
    plausible_mpp,
    to_rgb_uint8,
    vips_error_text,
)
from stages.tiffjpeg import ycbcr_mislabelled, ycbcr_to_rgb

log = logging.getLogger(__name__)

TILE_SIZE = 512
JPEG_QUALITY = 75
#: Classic TIFF offsets are 32-bit. JPEG Q75 stays below 1 byte/px even on noise (0.72 measured,
#: pyramid included), so a pyramid (4/3 of page 0) from up to 3 Gpx fits 4 GiB; larger slides are
#: written as BigTIFF (libvips reads both).
BIGTIFF_ABOVE_PIXELS = 3 * 2**30
#: Suffixes of slide formats that only OpenSlide reads (not TIFFs libvips can decode).
OPENSLIDE_SUFFIXES = frozenset({".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide"})
OPENSLIDE_EXTRA = "pip install openslide-python openslide-bin"
#: Rows of level 0 held in memory at a time on the OpenSlide path (memory: rows × width × 4 B).
STRIP_ROWS = 256
#: Width of one OpenSlide ``read_region`` call within a strip.
READ_COLUMNS = 4096

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ConvertError(Exception):
    """A slide cannot be converted: unreadable, no µm/pixel, or a reader is missing."""


def convert(src: str | Path, dst: str | Path, mpp: float | None = None) -> Path:
    """Write ``src``'s level 0 to ``dst`` in the competition format; returns ``dst``.

    ``mpp`` (page-0 µm/pixel) overrides the file's; without it the file must state one.
    ``dst`` appears only when complete (written under a temporary name, then renamed).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConvertError(f"{src}: no such file")
    if mpp is not None and not plausible_mpp(mpp):
        raise ConvertError(f"--mpp {mpp} is not a plausible µm/pixel {PLAUSIBLE_MPP}")
    try:
        with _level0(src) as (image, found_mpp, source):
            if mpp is None and found_mpp is None:
                raise ConvertError(
                    f"{src.name}: the file states no µm/pixel; pass it with --mpp "
                    "(convert(..., mpp=))"
                )
            mpp, source = (mpp, "given") if mpp is not None else (found_mpp, source)
            log.info(
                "%s: %d x %d px at %.4f µm/px (from %s) -> %s",
                src.name,
                image.width,
                image.height,
                mpp,
                source,
                dst,
            )
            _save(image, dst, mpp)
    except pyvips.Error as exc:
        raise ConvertError(f"{src.name}: conversion failed: {vips_error_text(exc)}") from exc
    log.info("%s: done", dst)
    return dst


def _save(image: pyvips.Image, dst: Path, mpp: float) -> None:
    """Pyramidal JPEG TIFF of ``image`` (RGB uint8) with xres = yres = 1000 / mpp px/mm."""
    image = image.copy()  # metadata edits stay off the (cached) source image
    if "image-description" in image.get_fields():
        image.remove("image-description")
    _log_progress(image, dst.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        save_competition_tiff(image, tmp, mpp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def save_competition_tiff(
    image: pyvips.Image, path: str | Path, mpp: float, quality: int = JPEG_QUALITY
) -> None:
    """Write RGB uint8 ``image`` in the competition's format: pyramidal, 512 x 512 JPEG Q75 tiles
    (``quality``: another JPEG quality, as another scanner's), each page half the previous
    (libvips rounds down) until it fits one tile, µm/pixel in the resolution tags (xres = yres =
    1000 / mpp px/mm, stored per cm); BigTIFF when it must be."""
    image.tiffsave(
        str(path),
        pyramid=True,
        bigtiff=image.width * image.height > BIGTIFF_ABOVE_PIXELS,
        **tile_options(mpp, quality),
    )


def tile_options(mpp: float, quality: int = JPEG_QUALITY) -> dict[str, object]:
    """libvips ``tiffsave`` options of one competition page: 512 x 512 JPEG tiles of
    ``quality`` (Q75 by default) and the µm/pixel as resolution tags (libvips takes px/mm and
    stores px/cm)."""
    return {
        "tile": True,
        "tile_width": TILE_SIZE,
        "tile_height": TILE_SIZE,
        "compression": "jpeg",
        "Q": quality,
        "xres": 1000.0 / mpp,
        "yres": 1000.0 / mpp,
        "resunit": "cm",
    }


def _log_progress(image: pyvips.Image, name: str) -> None:
    """Log every tenth of ``image``'s evaluation (libvips "eval" signal)."""
    logged = [-1]

    def on_eval(_image: pyvips.Image, progress: Any) -> None:
        if progress.percent // 10 > logged[0]:
            logged[0] = progress.percent // 10
            log.info("%s: %d%%", name, progress.percent)

    image.set_progress(True)
    image.signal_connect("eval", on_eval)


def _vips_failure(src: Path) -> str | None:
    """Why libvips cannot use ``src`` (TIFF header, or decoding a first tile), else None."""
    try:
        probe = pyvips.Image.tiffload(str(src), page=0, fail_on="error")
        probe.crop(0, 0, min(64, probe.width), min(64, probe.height)).avg()
    except pyvips.Error as exc:
        return vips_error_text(exc)
    return None


@contextmanager
def _level0(src: Path) -> Iterator[tuple[pyvips.Image, float | None, str]]:
    """Level 0 of ``src`` as a lazy RGB uint8 image, with its µm/pixel (or None) and source."""
    if src.suffix.lower() in OPENSLIDE_SUFFIXES:
        reason = f"{src.suffix} is not a TIFF libvips reads"
    else:
        reason = _vips_failure(src)
    if reason is None:
        page0 = pyvips.Image.tiffload(str(src), page=0, access="sequential", fail_on="error")
        rgb = to_rgb_uint8(page0)
        if ycbcr_mislabelled(src):
            log.warning("%s: JPEG tiles hold YCbCr but are tagged RGB; converting", src.name)
            rgb = ycbcr_to_rgb(rgb)
        yield (rgb, *mpp_from_header(page0))
        return
    log.info("%s: libvips cannot read it (%s); trying OpenSlide", src.name, reason)
    with _openslide_level0(src, reason) as opened:
        yield opened


def _import_openslide(src: Path, reason: str) -> Any:
    try:
        import openslide
    except (ImportError, OSError) as exc:  # OSError: openslide-python without the library
        raise ConvertError(
            f"{src.name}: libvips cannot read it ({reason}); this slide needs OpenSlide, "
            f"an optional extra: {OPENSLIDE_EXTRA}"
        ) from exc
    return openslide


@contextmanager
def _openslide_level0(src: Path, reason: str) -> Iterator[tuple[pyvips.Image, float | None, str]]:
    """Level 0 read by OpenSlide as libvips asks for it (see :class:`_PngStream`)."""
    openslide = _import_openslide(src, reason)
    try:
        slide = openslide.OpenSlide(str(src))
    except openslide.OpenSlideError as exc:
        raise ConvertError(f"{src.name}: OpenSlide cannot read it either ({exc})") from exc
    try:
        width, height = slide.dimensions
        stream = _PngStream(width, height, _scanlines(slide, width, height))
        source = pyvips.SourceCustom()
        source.on_read(stream.read)
        image = pyvips.Image.new_from_source(source, "", access="sequential", fail_on="error")
        try:
            yield to_rgb_uint8(image), _openslide_mpp(slide, openslide), "openslide"
        except pyvips.Error as exc:
            if stream.error is None:
                raise
            raise ConvertError(f"{src.name}: OpenSlide read failed: {stream.error}") from exc
    finally:
        slide.close()


def _openslide_mpp(slide: Any, openslide: Any) -> float | None:
    """Level-0 µm/pixel from OpenSlide's ``openslide.mpp-x`` property, None if absent or bad."""
    try:
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
    except (KeyError, ValueError):
        return None
    return mpp if plausible_mpp(mpp) else None


def _scanlines(slide: Any, width: int, height: int) -> Iterator[np.ndarray]:
    """Level 0 of an OpenSlide slide as blocks of PNG scanlines, top to bottom.

    Each block is ``(rows, 1 + 4 * width)`` uint8, rows ≤ :data:`STRIP_ROWS`: a 0 byte (PNG
    filter "none") then the row's RGBA pixels. The buffer is reused: use a block before asking
    for the next.
    """
    block = np.zeros((STRIP_ROWS, 1 + 4 * width), dtype=np.uint8)
    for y in range(0, height, STRIP_ROWS):
        rows = min(STRIP_ROWS, height - y)
        for x in range(0, width, READ_COLUMNS):
            cols = min(READ_COLUMNS, width - x)
            rgba = np.asarray(slide.read_region((x, y), 0, (cols, rows)), dtype=np.uint8)
            block[:rows, 1 + 4 * x : 1 + 4 * (x + cols)] = rgba.reshape(rows, 4 * cols)
        yield block[:rows]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


class _PngStream:
    """``read(size)`` over an 8-bit RGBA PNG encoded on the fly from scanline blocks.

    pyvips-binary has no loader for raw pixels from a stream, and joining temporary strip files
    runs into the open-file limit on large slides, so the OpenSlide path hands level 0 to libvips
    as a PNG stream that is produced only as fast as libvips consumes it: memory stays at one
    block. An exception while producing it ends the stream and is kept in :attr:`error`.
    """

    def __init__(self, width: int, height: int, blocks: Iterator[np.ndarray]) -> None:
        self._chunks = self._encode(width, height, blocks)
        self._buffer = bytearray()
        self.error: Exception | None = None

    @staticmethod
    def _encode(width: int, height: int, blocks: Iterator[np.ndarray]) -> Iterator[bytes]:
        header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
        yield _PNG_SIGNATURE + _png_chunk(b"IHDR", header)
        deflate = zlib.compressobj(level=1)
        for block in blocks:
            for row in block:
                data = deflate.compress(row)
                if data:
                    yield _png_chunk(b"IDAT", data)
        yield _png_chunk(b"IDAT", deflate.flush()) + _png_chunk(b"IEND", b"")

    def read(self, size: int) -> bytes:
        try:
            while len(self._buffer) < size and (chunk := next(self._chunks, None)) is not None:
                self._buffer += chunk
        except Exception as exc:  # surfaced by _openslide_level0 once libvips reports the stop
            self.error = exc
            return b""
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data.convert",
        description="Convert a whole-slide image to the TissueNet format (pyramidal JPEG TIFF).",
    )
    parser.add_argument("src", type=Path, help="source slide (SVS, OME-TIFF, TIFF, NDPI, …)")
    parser.add_argument("dst", type=Path, help="output .tif")
    parser.add_argument("--mpp", type=float, help="page-0 µm/pixel, overriding the file's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips chatter
    try:
        convert(args.src, args.dst, args.mpp)
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
