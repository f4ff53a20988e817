"""Slide on real files: an Aperio SVS, an OME-TIFF and a JPEG 2000 SVS libvips cannot decode."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA

from stages.geometry import Box
from stages.slide import Page, Slide, SlideError

CMU = DATA / "cmu_small_region.svs"
OS1 = DATA / "OS-1-detail.ome.tif"
J2K = DATA / "tcga-cr-7395-01a-01-ts1.svs"


@pytest.fixture
def cmu(tmp_path: Path) -> Path:
    """A private copy of the SVS. libvips caches an opened page by file name, and the SVS
    thumbnail is a strip page that can only be read forwards once read to its end (see
    ``test_svs_thumbnail_reads_again_after_a_whole_read``): one test's reads must not decide
    whether another's succeed."""
    return Path(shutil.copy(CMU, tmp_path))


def test_svs_pages_skip_label_and_macro(cmu: Path) -> None:
    # file pages: 2220x2967 level 0, 574x768 thumbnail, 387x463 label, 1280x431 macro
    slide = Slide(cmu)
    assert slide.pages == (
        Page(0, 0, None, 2220, 2967, (1.0, 1.0)),
        Page(1, 1, None, 574, 768, (2220 / 574, 2967 / 768)),
    )
    assert (slide.width, slide.height) == (2220, 2967)


def test_svs_mpp_from_aperio_description(cmu: Path) -> None:
    slide = Slide(cmu)
    assert (slide.mpp, slide.mpp_source) == (0.499, "aperio-description")
    assert slide.page_mpp(1) == pytest.approx(0.499 * (2220 / 574 + 2967 / 768) / 2)  # 1.92885
    assert [slide.page_for_mpp(t) for t in (0.25, 0.5, 1.0, 2.0, 8.0)] == [0, 0, 1, 1, 1]
    assert (Slide(cmu, mpp=0.25).mpp, Slide(cmu, mpp=0.25).mpp_source) == (0.25, "metadata")


def test_svs_read_page_shapes(cmu: Path) -> None:
    slide = Slide(cmu)
    for page, shape in ((0, (2967, 2220, 3)), (1, (768, 574, 3))):
        pixels = slide.read_page(page)
        assert (pixels.shape, pixels.dtype) == (shape, np.uint8)
    with pytest.raises(SlideError, match="refusing to read page 0 whole"):
        slide.read_page(0, max_pixels=2220 * 2967 - 1)
    with pytest.raises(SlideError, match=r"page 2 out of range 0\.\.1"):
        slide.read_page(2)


def test_svs_region_across_the_bottom_edge_is_white_outside(cmu: Path) -> None:
    # tissue reaches the bottom edge around x = 1000..1400; the box hangs 100 px below page 0
    slide = Slide(cmu)
    box = Box(1000, 2867, 400, 200)
    region = slide.read_region(box, 0)
    assert (region.shape, region.dtype) == ((200, 400, 3), np.uint8)
    np.testing.assert_array_equal(region[:100], slide.read_page(0)[2867:, 1000:1400])
    assert (region[100:] == 255).all()
    assert (region[:100].min(axis=2) < 200).mean() > 0.5  # mostly stained tissue

    # page 1: round(1000 / 3.8676) = 259, round(2867 / 3.8633) = 742, 103 x 52 px
    assert box.to_page(slide.pages[1].scale) == (259, 742, 103, 52)
    region = slide.read_region(box, 1)
    assert region.shape == (52, 103, 3)
    assert (region[26:] == 255).all()
    assert (region[:26].min(axis=2) < 200).mean() > 0.5


def test_svs_thumbnail_reads_again_after_a_whole_read(cmu: Path) -> None:
    slide = Slide(cmu)
    thumbnail = slide.read_page(1)
    np.testing.assert_array_equal(slide.read_region(Box(0, 0, 400, 400), 1), thumbnail[:104, :103])


def test_region_outside_the_slide_is_all_white(cmu: Path) -> None:
    region = Slide(cmu).read_region(Box(-500, -500, 300, 200), 0)
    assert region.shape == (200, 300, 3)
    assert (region == 255).all()


def test_ome_tiff_single_page_and_mpp_from_tags() -> None:
    slide = Slide(OS1)
    assert slide.pages == (Page(0, 0, None, 1101, 1101, (1.0, 1.0)),)
    # XResolution 44033.999 px/cm → 4403.40 px/mm → 1000 / 4403.40 = 0.227097 µm/px
    assert slide.mpp == pytest.approx(0.22710, abs=1e-5)
    assert slide.mpp_source == "tiff-tags"
    pixels = slide.read_page(0)
    assert (pixels.shape, pixels.dtype) == ((1101, 1101, 3), np.uint8)
    region = slide.read_region(Box(1001, -50, 200, 150), 0)  # over the top-right corner
    assert region.shape == (150, 200, 3)
    np.testing.assert_array_equal(region[50:, :100], pixels[:100, 1001:])
    assert (region[:50] == 255).all() and (region[:, 100:] == 255).all()
    assert region[50:, :100].mean() < 200  # tumour tissue, not glass


def test_jpeg2000_svs_opens_but_cannot_be_decoded() -> None:
    with pytest.raises(SlideError, match="no µm/pixel in metadata or TIFF tags"):
        Slide(J2K)
    slide = Slide(J2K, default_mpp=0.25)
    assert (slide.mpp, slide.mpp_source) == (0.25, "default")
    # file pages: 4443x3567 (J2K), 956x768 thumbnail (JPEG), 2221x1783 (J2K); sorted by size
    assert slide.pages == (
        Page(0, 0, None, 4443, 3567, (1.0, 1.0)),
        Page(1, 2, None, 2221, 1783, (4443 / 2221, 3567 / 1783)),
        Page(2, 1, None, 956, 768, (4443 / 956, 3567 / 768)),
    )
    for page in (0, 1):
        with pytest.raises(SlideError, match=f"page {page}"):
            slide.read_region(Box(0, 0, 512, 512), page)
        with pytest.raises(SlideError, match=f"page {page}"):
            slide.read_page(page)
    assert slide.read_page(2).shape == (768, 956, 3)  # the JPEG thumbnail decodes
