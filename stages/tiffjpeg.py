"""JPEG-in-TIFF colour that libvips cannot see: YCbCr data in a file tagged RGB.

Some writers (Bio-Formats' OME-TIFF among them) store JFIF (YCbCr, often 2x2 subsampled) JPEG
tiles with ``PhotometricInterpretation = RGB``. libtiff then decodes them without colour
conversion, so the pixels come out as Y, Cb, Cr and H&E looks green. :func:`ycbcr_mislabelled`
reads the first page's tags and its first tile's JPEG markers (the same guess libjpeg makes) to
detect such files; :func:`ycbcr_to_rgb` converts lazily in libvips.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pyvips

_PHOTOMETRIC, _COMPRESSION, _STRIP_OFFSETS, _TILE_OFFSETS, _JPEG_TABLES = 262, 259, 273, 324, 347
_RGB, _JPEG = 2, 7
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 7: 1, 16: 8}
_INLINE = {1: "B", 3: "H", 4: "I"}
#: Enough of a tile to reach its SOF marker.
_HEAD_BYTES = 65536
#: JFIF YCbCr → RGB (full range): rows give R, G, B from (Y, Cb − 128, Cr − 128).
_YCBCR_TO_RGB = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]]


def _first_ifd_tags(data: bytes) -> tuple[dict[int, tuple[int, int, int]], str] | None:
    """Tags of the first IFD as ``tag → (type, count, value-or-offset)``, and the byte order."""
    if data[:2] not in (b"II", b"MM"):
        return None
    order = "<" if data[:2] == b"II" else ">"
    (magic,) = struct.unpack_from(order + "H", data, 2)
    big = magic == 43
    if magic not in (42, 43):
        return None
    offset = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    head, entry, fmt = (8, 20, "HHQQ") if big else (2, 12, "HHII")
    if offset + head > len(data):
        return None
    (count,) = struct.unpack_from(order + ("Q" if big else "H"), data, offset)
    tags = {}
    for i in range(count):
        at = offset + head + i * entry
        if at + entry > len(data):
            break
        tag, kind, n, value = struct.unpack_from(order + fmt, data, at)
        if n == 1 and kind in _INLINE:  # a single small value sits at the start of the field
            (value,) = struct.unpack_from(order + _INLINE[kind], data, at + (12 if big else 8))
        tags[tag] = (kind, n, value)
    return tags, order


def jpeg_is_ycbcr(stream: bytes) -> bool | None:
    """libjpeg's guess of a 3-component stream's colour space: True YCbCr, False RGB, None
    when the stream has no frame header in the bytes given."""
    jfif, adobe_transform, ids = False, None, None
    at = 2 if stream[:2] == b"\xff\xd8" else 0
    while at + 4 <= len(stream) and stream[at] == 0xFF:
        marker = stream[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        (length,) = struct.unpack_from(">H", stream, at + 2)
        payload = stream[at + 4 : at + 2 + length]
        if marker == 0xE0 and payload[:5] == b"JFIF\0":
            jfif = True
        elif marker == 0xEE and payload[:5] == b"Adobe" and len(payload) >= 12:
            adobe_transform = payload[11]
        elif marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE):
            if payload[5] == 3:
                ids = bytes(payload[6 + 3 * i] for i in range(3))
        elif marker in (0xDA, 0xD9):
            break
        at += 2 + length
    if ids is None:
        return None
    if jfif:
        return True
    if adobe_transform is not None:
        return adobe_transform != 0
    return ids != b"RGB"


def ycbcr_mislabelled(path: str | Path) -> bool:
    """True when the first page is JPEG-compressed, tagged RGB, and its JPEG data is YCbCr.
    A file whose header cannot be followed counts as not mislabelled (libvips judges it)."""
    try:
        return _ycbcr_mislabelled(Path(path))
    except (OSError, struct.error, KeyError, IndexError):
        return False


def _ycbcr_mislabelled(path: Path) -> bool:
    with open(path, "rb") as file:
        data = file.read(_HEAD_BYTES)
        parsed = _first_ifd_tags(data)
        if parsed is None:
            return False
        tags, order = parsed
        if tags.get(_PHOTOMETRIC, (0, 0, 0))[2] != _RGB:
            return False
        if tags.get(_COMPRESSION, (0, 0, 0))[2] != _JPEG:
            return False
        kind, count, value = tags.get(_TILE_OFFSETS) or tags.get(_STRIP_OFFSETS) or (4, 0, 0)
        if count == 0:
            return False
        if count > 1:  # the field holds the offset of the array of offsets
            file.seek(value)
            size = _TYPE_SIZES[kind]
            (value,) = struct.unpack(order + {4: "I", 16: "Q"}[kind], file.read(size))
        file.seek(value)
        tile = file.read(_HEAD_BYTES)
        tables = b""
        if _JPEG_TABLES in tags:
            _, n, offset = tags[_JPEG_TABLES]
            file.seek(offset)
            tables = file.read(min(n, _HEAD_BYTES))
    if tables.endswith(b"\xff\xd9"):  # the tables are a stream of their own: drop its end
        tables = tables[:-2]
    return bool(jpeg_is_ycbcr(tables + tile[2:] if tables else tile))


def ycbcr_to_rgb(image: pyvips.Image) -> pyvips.Image:
    """A 3-band uchar image holding Y, Cb, Cr converted to sRGB uchar (lazy)."""
    rgb = (image.cast("float") - [0, 128, 128]).recomb(_YCBCR_TO_RGB)
    return rgb.cast("uchar").copy(interpretation="srgb")
