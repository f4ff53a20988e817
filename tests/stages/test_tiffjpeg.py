"""YCbCr JPEG tiles in TIFFs tagged RGB (Bio-Formats OME-TIFF): detected and converted."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import pyvips
from helpers import DATA, write_tiff

from stages.slide import Slide
from stages.tiffjpeg import jpeg_is_ycbcr, ycbcr_mislabelled, ycbcr_to_rgb
from stages.tissue import mask_for_slide
from training.data.convert import convert


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def frame(ids: bytes) -> bytes:
    """A baseline SOF0 with 3 components of the given ids, 8 x 8 px."""
    components = b"".join(bytes([i, 0x11, 0]) for i in ids)
    return segment(0xC0, bytes([8, 0, 8, 0, 8, 3]) + components)


SOI = b"\xff\xd8"
JFIF = segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0")


def adobe(transform: int) -> bytes:
    return segment(0xEE, b"Adobe\0\x64\0\0\0\0" + bytes([transform]))


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (SOI + JFIF + frame(b"\x01\x02\x03"), True),  # JFIF is YCbCr
        (SOI + adobe(1) + frame(b"RGB"), True),  # Adobe transform 1: YCbCr
        (SOI + adobe(0) + frame(b"\x01\x02\x03"), False),  # Adobe transform 0: RGB as is
        (SOI + frame(b"RGB"), False),  # component ids R, G, B
        (SOI + frame(b"\x01\x02\x03"), True),  # no marker, ids 1-3: YCbCr
        (SOI + JFIF, None),  # no frame header
    ],
)
def test_jpeg_colour_space_guess(stream: bytes, expected: bool | None) -> None:
    assert jpeg_is_ycbcr(stream) is expected


def test_real_ome_tiff_is_detected_and_read_as_h_and_e() -> None:
    path = DATA / "OS-1-detail.ome.tif"
    assert ycbcr_mislabelled(path)
    slide = Slide(path)
    assert slide.ycbcr_tagged_rgb
    red, green, blue = slide.read_page(0).reshape(-1, 3).mean(axis=0)
    assert red > green + 10 and blue > green + 30  # pink-purple H&E, not green
    mask, _ = mask_for_slide(slide)
    assert mask.mean() > 0.9  # the crop is tissue throughout


@pytest.mark.parametrize("name", ["cmu_small_region.svs", "tcga-cr-7395-01a-01-ts1.svs"])
def test_correctly_tagged_files_are_left_alone(name: str) -> None:
    assert not ycbcr_mislabelled(DATA / name)


def test_libvips_written_and_odd_files_are_left_alone(tmp_path: Path) -> None:
    pixels = np.full((600, 700, 3), (200, 120, 180), np.uint8)
    assert not ycbcr_mislabelled(write_tiff(tmp_path / "vips.tif", pixels))
    (tmp_path / "text.tif").write_text("not a tiff")
    assert not ycbcr_mislabelled(tmp_path / "text.tif")
    (tmp_path / "short.tif").write_bytes(b"II*\x00\xff\xff\xff\x7f")
    assert not ycbcr_mislabelled(tmp_path / "short.tif")


def test_ycbcr_to_rgb_exact_on_grey_and_primaries() -> None:
    # (Y, Cb, Cr): neutral grey stays grey; Cr = 255 pushes red up by 1.402 * 127
    ycc = np.array([[[128, 128, 128], [100, 128, 255]]], np.uint8)
    rgb = ycbcr_to_rgb(pyvips.Image.new_from_array(ycc).copy(interpretation="srgb"))
    out = np.asarray(rgb.numpy())
    assert out.tolist() == [[[128, 128, 128], [255, 9, 100]]]  # 100 + 178.1 clips to 255


def test_conversion_writes_true_colours(tmp_path: Path) -> None:
    slide = Slide(convert(DATA / "OS-1-detail.ome.tif", tmp_path / "out.tif"))
    assert not slide.ycbcr_tagged_rgb  # libvips writes YCbCr tagged as such
    red, green, blue = slide.read_page(0).reshape(-1, 3).mean(axis=0)
    assert red > green + 10 and blue > green + 30
