"""Slide reader on TIFFs written here: pages, µm/pixel, page choice, mapping, bands, reads."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import write_tiff

from stages.geometry import Box
from stages.slide import Slide, SlideError


@pytest.fixture
def pyramid(tmp_path: Path, gradient_rgb: np.ndarray) -> Path:
    return write_tiff(tmp_path / "pyramid.tif", gradient_rgb, mpp=0.25)


def test_pages_have_real_sizes(pyramid: Path) -> None:
    slide = Slide(pyramid)
    assert [(p.width, p.height) for p in slide.pages] == [
        (3001, 2001),
        (1500, 1000),
        (750, 500),
        (375, 250),
    ]
    assert [p.tiff_page for p in slide.pages] == [0, 1, 2, 3]
    assert slide.pages[1].scale == (3001 / 1500, 2001 / 1000)
    assert slide.pages[3].scale == (3001 / 375, 2001 / 250)


def test_mpp_from_tags_then_metadata_override(pyramid: Path) -> None:
    slide = Slide(pyramid)
    assert slide.mpp == pytest.approx(0.25, rel=1e-6)
    assert slide.mpp_source == "tiff-tags"
    override = Slide(pyramid, mpp=0.2271)
    assert (override.mpp, override.mpp_source) == (0.2271, "metadata")
    # an implausible metadata value falls back to the file
    assert Slide(pyramid, mpp=float("nan")).mpp_source == "tiff-tags"


def test_missing_resolution_is_an_error_unless_a_default_is_given(
    tmp_path: Path, gradient_rgb: np.ndarray
) -> None:
    path = write_tiff(tmp_path / "nores.tif", gradient_rgb, mpp=None)
    with pytest.raises(SlideError, match="no µm/pixel"):
        Slide(path)
    slide = Slide(path, default_mpp=0.25)
    assert (slide.mpp, slide.mpp_source) == (0.25, "default")


def test_page_for_mpp_exact(pyramid: Path) -> None:
    slide = Slide(pyramid, mpp=0.25)
    # page µm/px: 0.25 * mean scale; page 3 is 0.25 * (3001/375 + 2001/250) / 2 = 2.0019
    assert slide.page_mpp(0) == 0.25
    assert slide.page_mpp(3) == pytest.approx(0.25 * (3001 / 375 + 2001 / 250) / 2)
    assert [slide.page_for_mpp(t) for t in (0.1, 0.25, 0.5, 0.7, 1.0, 1.5, 4.0, 64.0)] == [
        0,
        0,
        1,
        1,
        2,
        3,
        3,
        3,
    ]


def test_padded_page0_maps_with_real_sizes(tmp_path: Path) -> None:
    # Metadata would say 3001 x 2001; the file's page 0 is padded to 3072 x 2048 (multiple of 256).
    pixels = np.full((2048, 3072, 3), 255, np.uint8)
    pixels[:2001, :3001] = 200
    slide = Slide(write_tiff(tmp_path / "padded.tif", pixels, mpp=0.25))
    assert (slide.width, slide.height) == (3072, 2048)
    assert [p.scale for p in slide.pages] == [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0), (8.0, 8.0)]
    # a page-0 box maps to page 2 exactly; the padding is white
    region = slide.read_region(Box(2800, 1800, 272, 248), page=2)
    assert region.shape == (62, 68, 3)
    assert region[:5, :5].mean() == pytest.approx(200, abs=3)
    assert region[-5:, -5:].min() >= 250


def test_single_page_tiff(tmp_path: Path, gradient_rgb: np.ndarray) -> None:
    slide = Slide(write_tiff(tmp_path / "flat.tif", gradient_rgb, mpp=0.5, pyramid=False))
    assert len(slide.pages) == 1
    assert slide.page_for_mpp(8.0) == 0
    assert slide.read_page(0).shape == (2001, 3001, 3)


def test_read_region_content_and_white_padding(pyramid: Path, gradient_rgb: np.ndarray) -> None:
    slide = Slide(pyramid)
    region = slide.read_region(Box(-100, -50, 400, 300), page=0)
    assert region.shape == (300, 400, 3)
    assert region.dtype == np.uint8
    assert (region[:50] == 255).all() and (region[:, :100] == 255).all()
    inside = region[50:, 100:].astype(int)
    expected = gradient_rgb[:250, :300].astype(int)
    assert np.abs(inside - expected).mean() < 3  # JPEG Q75
    # fully outside: all white, no read
    assert (slide.read_region(Box(5000, 5000, 64, 64), page=1) == 255).all()


def test_read_region_at_lower_page_matches_page0(pyramid: Path) -> None:
    slide = Slide(pyramid)
    sx, sy = slide.pages[2].scale
    region = slide.read_region(Box(1000, 600, 100 * sx, 50 * sy), page=2)
    assert region.shape == (50, 100, 3)
    # red channel ramps with page-0 x: 255 * x / 3000 at the centre of the box
    cx = 1000 + 50 * sx
    assert region[:, 50, 0].mean() == pytest.approx(255 * cx / 3000, abs=4)


def test_read_page_refuses_above_cap(pyramid: Path) -> None:
    slide = Slide(pyramid)
    with pytest.raises(SlideError, match="refusing to read page 0 whole"):
        slide.read_page(0, max_pixels=1_000_000)
    assert slide.read_page(2, max_pixels=1_000_000).shape == (500, 750, 3)
    with pytest.raises(SlideError, match="out of range"):
        slide.read_page(9)


def test_grey_and_rgba_become_rgb(tmp_path: Path) -> None:
    grey = np.full((600, 800), 90, np.uint8)
    slide = Slide(write_tiff(tmp_path / "grey.tif", grey, mpp=0.25))
    page = slide.read_page(0)
    assert page.shape == (600, 800, 3)
    assert (page == 90).all()

    rgba = np.zeros((600, 800, 4), np.uint8)
    rgba[..., :3] = (200, 100, 150)
    rgba[:, :400, 3] = 255  # left half opaque, right half transparent
    slide = Slide(write_tiff(tmp_path / "rgba.tif", rgba, mpp=0.25))
    page = slide.read_page(0)
    assert page.shape == (600, 800, 3)
    assert tuple(page[10, 10]) == (200, 100, 150)
    assert tuple(page[10, 700]) == (255, 255, 255)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.tif", b"", "empty file"),
        ("text.tif", b"this is not a slide\n" * 10, "not a readable TIFF"),
    ],
)
def test_unreadable_files_raise_slide_error(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SlideError, match=message):
        Slide(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="no such file"):
        Slide(tmp_path / "absent.tif")


def truncated_keeping_the_directory(data: bytes, keep: float) -> bytes:
    """The first ``keep`` share of a single-page little-endian TIFF, with its directory (IFD,
    written by libvips after the pixels) moved to the end of what is kept: a file cut short in
    its pixels whose header and directory still read, as a scanner's file with the directory
    first would be when cut short."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        (page,) = tif.pages
        ifd, n = page.offset, len(page.tags)
        # (entry, offset, size) of the values too large for their entry
        external = [
            (tag.offset, tag.valueoffset, tag.valuebytecount)
            for tag in page.tags
            if tag.valuebytecount > 4
        ]
    cut = int(len(data) * keep) & ~1
    assert cut < min(ifd, *(at for _, at, _ in external)), "the cut must fall in the pixels"
    out = bytearray(data[:cut])
    moved = len(out)
    out += data[ifd : ifd + 2 + 12 * n + 4]
    struct.pack_into("<I", out, moved + 2 + 12 * n, 0)  # no next page
    for entry, at, size in external:
        struct.pack_into("<I", out, moved + (entry - ifd) + 8, len(out))
        out += data[at : at + size] + b"\0" * (size % 2)
    struct.pack_into("<I", out, 4, moved)
    return bytes(out)


def test_truncated_tiff_fails_on_read_not_silently(
    tmp_path: Path, gradient_rgb: np.ndarray
) -> None:
    whole = write_tiff(tmp_path / "whole.tif", gradient_rgb, pyramid=False).read_bytes()
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(truncated_keeping_the_directory(whole, keep=0.4))
    slide = Slide(truncated)  # the header and the directory read: opening succeeds
    assert [p.size for p in slide.pages] == [(3001, 2001)]
    with pytest.raises(SlideError, match=r"truncated\.tif: page 0: .*bad seek"):
        slide.read_page(0)  # the pixels past the cut do not: the read fails loudly


def _box_means(pixels: np.ndarray, k: int, size: tuple[int, int]) -> np.ndarray:
    """``(h, w, 3)`` int means of ``pixels``' ``k`` × ``k`` blocks, ``size = (w, h)`` of them."""
    w, h = size
    return pixels[: h * k, : w * k].astype(np.int64).reshape(h, k, w, k, 3).mean(axis=(1, 3))


def test_a_single_page_over_the_cap_gets_the_levels_it_lacks(
    tmp_path: Path, gradient_rgb: np.ndarray
) -> None:
    path = write_tiff(tmp_path / "flat.tif", gradient_rgb, mpp=0.25, pyramid=False)
    slide = Slide(path, max_page_pixels=1_000_000)  # page 0 has 6 Mpx: no overview in the file
    # the pages a pyramid of it has (test_pages_have_real_sizes), shrunk from page 0
    assert [(p.size, p.tiff_page, p.source, p.shrink) for p in slide.pages] == [
        ((3001, 2001), 0, None, 1),
        ((1500, 1000), 0, 0, 2),
        ((750, 500), 0, 0, 4),
        ((375, 250), 0, 0, 8),
    ]
    assert slide.pages[3].scale == (3001 / 375, 2001 / 250)
    assert slide.page_for_mpp(2.0) == 3
    page0 = slide.read_page(0)
    before = slide.reads.pixels
    page3 = slide.read_page(3)
    assert slide.reads.pixels - before == 375 * 250 * 64  # the source pixels decoded
    assert np.abs(page3 - _box_means(page0, 8, (375, 250))).max() <= 1  # libvips' rounding
    # a region across the bottom-right corner: the page's pixels, white outside
    sx, sy = slide.pages[1].scale
    region = slide.read_region(Box(2900, 1900, 100 * sx, 80 * sy), 1)
    assert region.shape == (80, 100, 3)
    inside = _box_means(page0[1900:2000, 2900:3000], 2, (50, 50))
    assert np.abs(region[:50, :50] - inside).max() <= 1
    assert (region[50:] == 255).all() and (region[:, 50:] == 255).all()
    with pytest.raises(SlideError, match="page 2 is not in the file"):
        slide.image(2)
    # under the default cap (64 Mpx) the file's one page is the slide's (test_single_page_tiff)
    assert len(Slide(path).pages) == 1


def test_sample_page_decodes_one_block_in_step_squared(
    tmp_path: Path, gradient_rgb: np.ndarray
) -> None:
    slide = Slide(write_tiff(tmp_path / "flat.tif", gradient_rgb, mpp=0.25, pyramid=False))
    page0 = slide.read_page(0)
    before = slide.reads.pixels
    sample = slide.sample_page(0, 2)
    # 6 x 4 blocks of 512 px (the last ones 441 and 465 px): blocks 1, 3, 5 of rows 1 and 3
    assert sample.shape == (2, 3, 3)
    for i, y in enumerate((1, 3)):
        for j, x in enumerate((1, 3, 5)):
            block = page0[y * 512 : (y + 1) * 512, x * 512 : (x + 1) * 512]
            np.testing.assert_array_equal(sample[i, j], np.round(block.mean(axis=(0, 1))))
    assert slide.reads.pixels - before == (512 + 512 + 441) * (512 + 465)
    assert slide.sample_page(0, 9).shape == (1, 1, 3)  # one block: (min(4, 5), min(4, 3))
    np.testing.assert_array_equal(
        slide.sample_page(0, 9)[0, 0], np.round(page0[1536:, 2048:2560].mean(axis=(0, 1)))
    )
