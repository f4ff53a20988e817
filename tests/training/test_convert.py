"""training.data.convert on real slides: competition layout, µm/pixel, pixels, clear errors."""

from __future__ import annotations

import itertools
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import tifffile
from helpers import DATA, REPO, tiff_tags, write_tiff
from PIL import Image

from stages.slide import Slide
from training.data import convert as convert_module
from training.data.convert import OPENSLIDE_EXTRA, ConvertError, convert, main

CMU = DATA / "cmu_small_region.svs"
OS1 = DATA / "OS-1-detail.ome.tif"
J2K = DATA / "tcga-cr-7395-01a-01-ts1.svs"

# TIFF tags read from the output file itself.
IMAGE_WIDTH, IMAGE_LENGTH, COMPRESSION, IMAGE_DESCRIPTION = 256, 257, 259, 270
X_RESOLUTION, RESOLUTION_UNIT, TILE_WIDTH, TILE_LENGTH = 282, 296, 322, 323
JPEG, CENTIMETRE = tifffile.COMPRESSION.JPEG, tifffile.RESUNIT.CENTIMETER


@pytest.mark.parametrize(
    ("src", "sizes", "mpp"),
    [
        # 2220 x 2967 halved with floor until a page fits one 512 tile
        (CMU, [(2220, 2967), (1110, 1483), (555, 741), (277, 370)], 0.499),
        # OME-TIFF tags: 4403.40 px/mm → 1000 / 4403.40 = 0.227097 µm/px
        (OS1, [(1101, 1101), (550, 550), (275, 275)], 0.22710),
    ],
    ids=["svs", "ome-tiff"],
)
def test_converts_to_competition_format(
    tmp_path: Path, src: Path, sizes: list[tuple[int, int]], mpp: float
) -> None:
    dst = convert(src, tmp_path / "out.tif")
    assert dst == tmp_path / "out.tif"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]  # no temporary file left

    slide = Slide(dst)
    assert [p.size for p in slide.pages] == sizes
    assert [p.tiff_page for p in slide.pages] == list(range(len(sizes)))
    for (w, h), (w2, h2) in itertools.pairwise(sizes):
        assert (w2, h2) == (w // 2, h // 2)
    assert max(sizes[-1]) < 512 < max(sizes[-2])
    assert slide.mpp == pytest.approx(mpp, abs=1e-5)
    assert slide.mpp_source == "tiff-tags"

    image = slide.image(0)
    assert "image-description" not in image.get_fields()
    assert (image.get("tile-width"), image.get("tile-height")) == (512, 512)
    pages = tiff_tags(dst)
    assert [(t[IMAGE_WIDTH], t[IMAGE_LENGTH]) for t in pages] == sizes
    for tags in pages:
        assert IMAGE_DESCRIPTION not in tags
        assert (tags[COMPRESSION], tags[TILE_WIDTH], tags[TILE_LENGTH]) == (JPEG, 512, 512)
        assert tags[RESOLUTION_UNIT] == CENTIMETRE
        # µm/px in the tags: pixels per centimetre, 10,000 / µm/px
        numerator, denominator = tags[X_RESOLUTION]
        assert 1e4 / (numerator / denominator) == pytest.approx(mpp, abs=1e-5)

    # JPEG Q75 of H&E: measured mean |difference| 3.3 (svs) and 4.8 (ome-tiff) grey levels
    source = Slide(src).read_page(0).astype(np.int16)
    assert np.abs(slide.read_page(0).astype(np.int16) - source).mean() < 6.0


@pytest.fixture
def no_openslide(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import openslide`` fails, as on a machine without the optional extra (the test
    environment has it: requirements-dev.txt includes requirements-openslide.txt)."""
    monkeypatch.setitem(sys.modules, "openslide", None)


def test_the_test_environment_has_openslide() -> None:
    """The OpenSlide path runs for real in CI, not skipped (make setup installs the extra)."""
    import openslide

    assert openslide.__library_version__


@pytest.mark.usefixtures("no_openslide")
def test_jpeg2000_svs_needs_openslide(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="JPEG2000") as error:
        convert(J2K, tmp_path / "out.tif")
    assert OPENSLIDE_EXTRA in str(error.value)
    assert J2K.name in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_jpeg2000_svs_converts_with_openslide(tmp_path: Path) -> None:
    slide = Slide(convert(J2K, tmp_path / "out.tif", mpp=0.25))
    assert [p.size for p in slide.pages] == [(4443, 3567), (2221, 1783), (1110, 891), (555, 445),
                                             (277, 222)]  # fmt: skip
    assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.25), "tiff-tags")
    assert slide.read_page(2).mean() < 230  # tissue, not an empty page


@pytest.mark.usefixtures("no_openslide")
def test_openslide_only_suffix_needs_openslide(tmp_path: Path) -> None:
    src = tmp_path / "scan.ndpi"
    src.write_bytes(b"not read by libvips")
    with pytest.raises(ConvertError, match=r"\.ndpi is not a TIFF libvips reads") as error:
        convert(src, tmp_path / "out.tif")
    assert OPENSLIDE_EXTRA in str(error.value)


def test_missing_mpp_asks_for_it_and_mpp_fills_it(tmp_path: Path, gradient_rgb: np.ndarray) -> None:
    src = write_tiff(tmp_path / "nores.tif", gradient_rgb, mpp=None)
    with pytest.raises(ConvertError, match=r"nores\.tif: the file states no µm/pixel; pass it"):
        convert(src, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()
    slide = Slide(convert(src, tmp_path / "out.tif", mpp=0.5))
    assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.5, rel=1e-6), "tiff-tags")


def test_a_corrupt_tile_fails_cleanly(tmp_path: Path, gradient_rgb: np.ndarray) -> None:
    src = write_tiff(tmp_path / "corrupt.tif", gradient_rgb, pyramid=False)
    data = bytearray(src.read_bytes())  # tile data in the middle, first tile and IFD intact
    data[len(data) // 4 : 3 * len(data) // 4] = bytes(len(data) // 2)
    src.write_bytes(bytes(data))
    with pytest.raises(ConvertError, match=r"corrupt\.tif: conversion failed: .*decompress error"):
        convert(src, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()
    assert not (tmp_path / ".out.tif.part").exists()


def test_mpp_option_overrides_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(CMU), str(tmp_path / "out.tif"), "--mpp", "0.25"]) == 0
    assert Slide(tmp_path / "out.tif").mpp == pytest.approx(0.25, rel=1e-6)
    assert main([str(CMU), str(tmp_path / "bad.tif"), "--mpp", "0"]) == 2
    assert "--mpp 0.0 is not a plausible µm/pixel" in capsys.readouterr().err
    assert not (tmp_path / "bad.tif").exists()


def test_errors_exit_non_zero_with_the_reason(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.data.convert",
            str(tmp_path / "none.svs"),
            str(tmp_path / "out.tif"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'none.svs'}: no such file"


# -- the OpenSlide path, with a stand-in for openslide-python --------------------------------


def fake_level0(width: int = 700, height: int = 300) -> np.ndarray:
    """(height, width, 4) uint8 RGBA: smooth ramps, fully transparent top-left 100 x 50 block."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgba = np.stack(
        [xx * 255 // width, yy * 255 // height, np.full_like(xx, 128), np.full_like(xx, 255)],
        axis=-1,
    ).astype(np.uint8)
    rgba[:50, :100] = 0  # OpenSlide returns (0, 0, 0, 0) where nothing was scanned
    return rgba


class FakeOpenSlideError(Exception):
    pass


class FakeOpenSlide:
    """What training.data.convert uses of ``openslide.OpenSlide``, serving ``fake_level0()``."""

    pixels: ClassVar[np.ndarray] = fake_level0()
    properties: ClassVar[dict[str, str]] = {"openslide.mpp-x": "0.2431"}
    fail_at_row: ClassVar[int | None] = None
    requests: ClassVar[list[tuple[int, int, int, int]]] = []

    def __init__(self, path: str) -> None:
        self.dimensions = (self.pixels.shape[1], self.pixels.shape[0])

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        (x, y), (w, h) = location, size
        assert level == 0
        if self.fail_at_row is not None and y >= self.fail_at_row:
            raise FakeOpenSlideError(f"cannot read tile at y={y}")
        self.requests.append((x, y, w, h))
        return Image.fromarray(self.pixels[y : y + h, x : x + w], "RGBA")

    def close(self) -> None:
        pass


@pytest.fixture
def fake_openslide(monkeypatch: pytest.MonkeyPatch) -> type[FakeOpenSlide]:
    module = types.ModuleType("openslide")
    module.OpenSlide = FakeOpenSlide
    module.OpenSlideError = FakeOpenSlideError
    module.PROPERTY_NAME_MPP_X = "openslide.mpp-x"
    monkeypatch.setitem(sys.modules, "openslide", module)
    monkeypatch.setattr(FakeOpenSlide, "requests", [])
    # small strips and reads, so that 700 x 300 px takes several, the last ones partial
    monkeypatch.setattr(convert_module, "STRIP_ROWS", 64)
    monkeypatch.setattr(convert_module, "READ_COLUMNS", 256)
    return FakeOpenSlide


def test_openslide_path_streams_level0_in_strips(
    tmp_path: Path, fake_openslide: type[FakeOpenSlide]
) -> None:
    slide = Slide(convert(J2K, tmp_path / "out.tif"))  # JPEG 2000: libvips cannot decode it
    assert [p.size for p in slide.pages] == [(700, 300), (350, 150)]
    assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.2431, rel=1e-6), "tiff-tags")
    # every pixel read once, in 64-row strips of reads at most 256 px wide
    assert sorted(fake_openslide.requests) == [
        (x, y, min(256, 700 - x), min(64, 300 - y))
        for x in range(0, 700, 256)
        for y in range(0, 300, 64)
    ]
    pixels = slide.read_page(0).astype(np.int16)
    expected = fake_level0()[..., :3].astype(np.int16)
    expected[:50, :100] = 255  # transparent → white glass
    assert np.abs(pixels - expected).mean() < 1.0  # JPEG Q75 of smooth ramps
    assert pixels[5:45, 5:95].min() >= 250


def test_openslide_path_errors(
    tmp_path: Path, fake_openslide: type[FakeOpenSlide], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_openslide, "properties", {})
    with pytest.raises(ConvertError, match="states no µm/pixel; pass it with --mpp"):
        convert(J2K, tmp_path / "out.tif")
    monkeypatch.setattr(fake_openslide, "fail_at_row", 128)
    with pytest.raises(ConvertError, match="OpenSlide read failed: cannot read tile at y=128"):
        convert(J2K, tmp_path / "out.tif", mpp=0.25)
    assert list(tmp_path.iterdir()) == []
