"""Huge, mostly glass slides (e.g. 271,950 × 294,038 px) written in seconds as a few MB.

Every glass tile of every page points at one shared JPEG tile; only the tiles that touch the
tissue are encoded.
"""

from __future__ import annotations

import logging
import math
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyvips

from training.data.convert import TILE_SIZE, save_competition_tiff, tile_options
from training.data.synthetic.render import compose
from training.data.synthetic.spec import SlideSpec
from training.data.synthetic.textures import Stain

log = logging.getLogger(__name__)

# -- huge sparse canvases -----------------------------------------------------------------------

_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 16: 8}
_LONG = 4
#: Tags rebuilt per page; every other tag is copied from a libvips-written tile.
_PAGE_TAGS = {254, 256, 257, 324, 325}


def pyramid_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """Page sizes of a libvips pyramid: halved (rounded down) until a page fits one tile."""
    sizes = [(width, height)]
    while sizes[-1][0] > TILE_SIZE or sizes[-1][1] > TILE_SIZE:
        w, h = sizes[-1]
        sizes.append((max(w // 2, 1), max(h // 2, 1)))
    return sizes


def place(spec: SlideSpec, width: int, height: int, x: float, y: float) -> SlideSpec:
    """``spec`` moved to page-0 ``(x, y)`` of a ``width`` x ``height`` slide (same name)."""
    if x < 0 or y < 0 or x + spec.width > width or y + spec.height > height:
        raise ValueError(
            f"{spec.filename}: a {spec.width}x{spec.height} slide at ({x}, {y}) "
            f"does not fit in {width}x{height}"
        )
    return replace(
        spec,
        width=width,
        height=height,
        fragments=tuple(replace(f, cx=f.cx + x, cy=f.cy + y) for f in spec.fragments),
        lesions=tuple(replace(le, cx=le.cx + x, cy=le.cy + y) for le in spec.lesions),
        lookalikes=tuple(replace(la, cx=la.cx + x, cy=la.cy + y) for la in spec.lookalikes),
        artefacts=tuple(
            replace(a, points=tuple((px + x, py + y) for px, py in a.points))
            for a in spec.artefacts
        ),
    )


def _encode(image: pyvips.Image, mpp: float) -> tuple[dict[int, tuple[int, int, bytes]], list]:
    """Tiles of ``image`` as libvips writes them (512 x 512 JPEG Q75, one page): the page's TIFF
    entries (tag → (type, count, value bytes)) and the tiles' bytes in row-major order."""
    data = image.tiffsave_buffer(**tile_options(mpp))
    if data[:4] != b"II*\0":
        raise RuntimeError("libvips wrote an unexpected TIFF flavour (need little-endian classic)")
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    entries = {}
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, kind, n = struct.unpack_from("<HHI", data, at)
        size = _TIFF_TYPE_SIZE[kind] * n
        start = at + 8 if size <= 4 else struct.unpack_from("<I", data, at + 8)[0]
        entries[tag] = (kind, n, bytes(data[start : start + size]))
    offsets = np.frombuffer(entries[324][2], "<u4")
    counts = np.frombuffer(entries[325][2], "<u4")
    tiles = [bytes(data[o : o + c]) for o, c in zip(offsets, counts, strict=True)]
    return entries, tiles


def _ifd(entries: dict[int, tuple[int, int, bytes]], at: int, next_ifd: int) -> bytes:
    """A classic little-endian IFD written at file offset ``at`` (even), values after it."""
    head = 2 + 12 * len(entries) + 4
    body, extra = bytearray(struct.pack("<H", len(entries))), bytearray()
    for tag in sorted(entries):
        kind, n, value = entries[tag]
        if len(value) <= 4:
            body += struct.pack("<HHI", tag, kind, n) + value.ljust(4, b"\0")
        else:
            body += struct.pack("<HHII", tag, kind, n, at + head + len(extra))
            extra += value + b"\0" * (len(value) % 2)
    return bytes(body + struct.pack("<I", next_ifd) + extra)


def _halve(image: pyvips.Image) -> pyvips.Image:
    """The next pyramid page of a small image, in memory: 2 x 2 means, size rounded down."""
    if min(image.width, image.height) < 2:
        return image
    return image.shrink(2, 2).crop(0, 0, image.width // 2, image.height // 2).copy_memory()


def _tissue_levels(spec: SlideSpec, scratch: Path) -> Iterator[pyvips.Image]:
    """``spec`` rendered and written once as a pyramid at ``scratch``, then its pages one after
    the other (page 0 first), halved further once the file's pages run out."""
    save_competition_tiff(compose(spec), scratch, spec.mpp)
    n_pages = pyvips.Image.new_from_file(str(scratch)).get("n-pages")
    for page in range(n_pages):
        patch = pyvips.Image.tiffload(str(scratch), page=page)
        yield patch
    while True:
        patch = _halve(patch)
        yield patch


def _page_entries(
    template: dict[int, tuple[int, int, bytes]],
    level: int,
    width: int,
    height: int,
    offsets: np.ndarray,
    counts: np.ndarray,
) -> dict[int, tuple[int, int, bytes]]:
    """TIFF entries of one pyramid page: ``template``'s, with this page's size and tiles."""
    entries = {t: v for t, v in template.items() if t not in _PAGE_TAGS}
    entries |= {
        256: (_LONG, 1, struct.pack("<I", width)),
        257: (_LONG, 1, struct.pack("<I", height)),
        324: (_LONG, len(offsets), offsets.astype("<u4").tobytes()),
        325: (_LONG, len(counts), counts.astype("<u4").tobytes()),
    }
    if level:
        entries[254] = (_LONG, 1, struct.pack("<I", 1))  # reduced-resolution page
    return entries


def _patch_tiles(
    patch: pyvips.Image,
    x: int,
    y: int,
    across: int,
    down: int,
    glass: list[float],
    mpp: float,
    template: dict[int, tuple[int, int, bytes]],
) -> dict[int, bytes]:
    """JPEG tiles of a page (``across`` x ``down`` tiles) that ``patch`` touches when placed at
    page pixel ``(x, y)`` on glass: page tile index (row-major) → tile bytes."""
    tx0, ty0 = x // TILE_SIZE, y // TILE_SIZE
    tx1 = min(math.ceil((x + patch.width) / TILE_SIZE), across)
    ty1 = min(math.ceil((y + patch.height) / TILE_SIZE), down)
    t = TILE_SIZE
    region = patch.embed(x - tx0 * t, y - ty0 * t, (tx1 - tx0) * t, (ty1 - ty0) * t,
                         extend="background", background=glass)  # fmt: skip
    entries, tiles = _encode(region, mpp)
    if entries[347] != template[347]:
        raise RuntimeError("libvips changed its JPEG tables between two encodings")
    columns = tx1 - tx0
    return {(ty0 + k // columns) * across + tx0 + k % columns: t for k, t in enumerate(tiles)}


def write_sparse_canvas(
    path: str | Path,
    width: int,
    height: int,
    mpp: float,
    tissue: SlideSpec | None = None,
    origin: tuple[int, int] = (0, 0),
    pyramid: bool = True,
) -> Path:
    """A huge, mostly glass slide in the competition's format, written in seconds.

    Same layout as :func:`training.data.convert.save_competition_tiff` (classic TIFF, a page per
    level, 512 x 512 JPEG Q75 tiles), but every all-glass tile of every page points at one
    shared compressed tile; only the tiles that touch ``tissue`` (rendered by :func:`compose`
    into a temporary pyramid, its top-left at page-0 ``origin``) are encoded. The file is a few
    MB plus the tissue. ``pyramid=False`` writes page 0 alone (a conversion that forgot the
    pyramid).
    Returns ``path``.
    """
    path = Path(path)
    if tissue is not None:
        place(tissue, width, height, *origin)  # validates the fit
        if not math.isclose(tissue.mpp, mpp, rel_tol=1e-9):
            raise ValueError(f"{path.name}: tissue mpp {tissue.mpp} differs from {mpp}")
    seed = tissue.seed if tissue is not None else 0
    stain = Stain.sample(np.random.default_rng([seed, 0]))
    glass = [float(v) for v in 255 * np.exp(-np.asarray(stain.glass))]
    blank = (pyvips.Image.black(TILE_SIZE, TILE_SIZE, bands=3) + glass).cast("uchar")
    template, (glass_tile,) = _encode(blank.copy(interpretation="srgb"), mpp)
    blob = bytearray(glass_tile)  # tile data, written right after the 8-byte header
    with tempfile.TemporaryDirectory() as tmp:
        levels = _tissue_levels(tissue, Path(tmp) / "tissue.tif") if tissue is not None else None
        pages = []
        sizes = pyramid_sizes(width, height) if pyramid else [(width, height)]
        for level, (w, h) in enumerate(sizes):
            across, down = math.ceil(w / TILE_SIZE), math.ceil(h / TILE_SIZE)
            offsets = np.full(across * down, 8, np.uint32)
            counts = np.full(across * down, len(glass_tile), np.uint32)
            if levels is not None:
                patch = next(levels)
                tiles = _patch_tiles(patch, origin[0] >> level, origin[1] >> level, across, down,
                                     glass, mpp, template)  # fmt: skip
                for index, tile in tiles.items():
                    offsets[index], counts[index] = 8 + len(blob), len(tile)
                    blob += tile + b"\0" * (len(tile) % 2)  # keep offsets even
            pages.append(_page_entries(template, level, w, h, offsets, counts))
    at = 8 + len(blob)
    ifds = []
    for i, entries in enumerate(pages):
        size = len(_ifd(entries, 0, 0))
        ifds.append(_ifd(entries, at, at + size if i + 1 < len(pages) else 0))
        at += size
    if at >= 2**32:
        raise ValueError(f"{path.name}: {at} bytes do not fit a classic TIFF")
    with path.open("wb") as f:
        f.write(b"II*\0" + struct.pack("<I", 8 + len(blob)) + blob + b"".join(ifds))
    log.info("wrote sparse canvas %s (%dx%d, %d pages, %d bytes)", path.name, width, height,
             len(pages), at)  # fmt: skip
    return path
