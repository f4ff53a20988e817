"""Tissue masks on real H&E tiles (pen, line artefact, glass, tissue) and on synthetic pages."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import EOSIN, PURPLE, REFERENCE, REPO, glass, paint_tissue, write_tiff

from stages.slide import Slide, SlideError
from stages.tissue import (
    TissueConfig,
    mask_for_slide,
    tissue_fraction,
    tissue_mask,
)
from training.data.synthetic import write_sparse_canvas

TILES = REFERENCE / "tiles"
#: µm/pixel of the TCGA tiles: red cells in medium-nuclei-score-level0 are ~15 px across
#: (7.5 µm); nuclei in the level-1 tile are half the size of those in the level-0 tiles.
LEVEL0_MPP, LEVEL1_MPP = 0.5, 1.0
#: The cascade's mask resolution (TissueNet page 6) and the synthetic pages' resolution.
MPP = TissueConfig().target_mpp

PENS = {"red": (200, 30, 40), "green": (60, 170, 150), "blue": (40, 60, 160), "black": (20, 20, 25)}


def _tile(name: str) -> np.ndarray:
    bgr = cv2.imread(str(TILES / f"{name}.png"), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read tile {name}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _at_mpp(rgb: np.ndarray, mpp: float, target: float | None) -> tuple[np.ndarray, float]:
    """The image shrunk to ``target`` µm/px as the cascade reads it (None: as it is)."""
    if target is None:
        return rgb, mpp
    h, w = rgb.shape[:2]
    size = (round(w * mpp / target), round(h * mpp / target))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), mpp * w / size[0]


def _disk(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - center[0]) ** 2 + (yy - center[1]) ** 2 <= radius**2


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# -- real tiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [None, 4.0, MPP])
@pytest.mark.parametrize(
    "name", ["no-tissue-red-pen", "no-tissue-green-pen", "no-tissue-line", "almost-white-2"]
)
def test_tiles_without_tissue_give_an_empty_mask(name: str, target: float | None) -> None:
    # Exactly empty: the only stain, a few red-cell specks in a corner of almost-white-2 and the
    # pale fringes of the pen strokes, is far below min_area_um2 (a kept component would cover at
    # least 30 % of these 256 × 256 µm tiles).
    rgb, mpp = _at_mpp(_tile(name), LEVEL0_MPP, target)
    mask = tissue_mask(rgb, mpp)
    assert mask.shape == rgb.shape[:2] and mask.dtype == bool
    assert tissue_fraction(mask) == 0.0


@pytest.mark.parametrize("target", [None, 4.0, MPP])
@pytest.mark.parametrize("name", ["high-nuclei-score-level0", "medium-nuclei-score-level0"])
def test_tissue_tiles_are_tissue_edge_to_edge(name: str, target: float | None) -> None:
    rgb, mpp = _at_mpp(_tile(name), LEVEL0_MPP, target)
    assert tissue_fraction(tissue_mask(rgb, mpp)) == 1.0


@pytest.mark.parametrize("target", [None, 4.0])
def test_pale_fat_is_mostly_tissue_where_its_membranes_resolve(target: float | None) -> None:
    # Adipose tissue is stain only in thin membranes; the closing fills the cells between them.
    # At 16 µm/px its mean colour (chroma ~3) is as pale as glass and it is not found.
    rgb, mpp = _at_mpp(_tile("low-nuclei-score-level0"), LEVEL0_MPP, target)
    assert tissue_fraction(tissue_mask(rgb, mpp)) > 0.9


#: Regions of high-nuclei-score-red-pen-level1, (x0, y0, x1, y1) in its pixels: the two red ink
#: blots over the tissue (top centre), the tissue fold (dark band, left), and plain tissue.
PEN_BLOTS = [(230, 30, 285, 100), (260, 160, 330, 230)]
KEPT = [(0, 235, 200, 270), (300, 290, 512, 370), (0, 300, 200, 512), (0, 0, 150, 200)]


@pytest.mark.parametrize("target", [None, 4.0, MPP])
def test_red_pen_over_tissue_is_dropped_and_the_rest_kept(target: float | None) -> None:
    rgb, mpp = _at_mpp(_tile("high-nuclei-score-red-pen-level1"), LEVEL1_MPP, target)
    mask = tissue_mask(rgb, mpp)
    k = LEVEL1_MPP / mpp

    def region(box: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = (round(v * k) for v in box)
        return mask[y0:y1, x0:x1]

    assert all(not region(box).any() for box in PEN_BLOTS)
    assert all(region(box).all() for box in KEPT)
    assert 0.8 < tissue_fraction(mask) < 0.95  # blots and margins: 10-12 % of the tile


# -- synthetic pages at 16 µm/px ----------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        np.full((120, 150, 3), 255, np.uint8),
        np.zeros((120, 150, 3), np.uint8),
        glass(),
        np.random.default_rng(2).integers(0, 30, (120, 150, 3), dtype=np.uint8),  # noisy black
        np.full((1, 1, 3), 128, np.uint8),
    ],
    ids=["white", "black", "noisy-glass", "noisy-black", "one-grey-pixel"],
)
def test_blank_pages_have_no_tissue(image: np.ndarray) -> None:
    mask = tissue_mask(image, MPP)
    assert mask.shape == image.shape[:2]
    assert not mask.any()


def test_tissue_blob_is_kept_and_dust_removed() -> None:
    img = glass()
    blob = _disk(img.shape[:2], (90, 80), 40)
    paint_tissue(img, blob)
    specks = [(15, 15), (180, 20), (175, 140), (20, 140)]
    for i, (x, y) in enumerate(specks):  # stained debris, grey and black dust: 4 to 9 px
        colour = (EOSIN, PURPLE, (90, 90, 90), (0, 0, 0))[i]
        img[y : y + 3 - i // 2, x : x + 3 - i // 2] = colour
    mask = tissue_mask(img, MPP)
    assert _iou(mask, blob) > 0.95
    assert not mask[~_disk(img.shape[:2], (90, 80), 42)].any()


def test_pale_tissue_beside_strong_stain_is_kept() -> None:
    # On a page without glass, Otsu splits pale from strong stain (at chroma 24 here);
    # max_chroma caps the threshold so that pale tissue stays tissue.
    img = np.empty((160, 200, 3), np.uint8)
    img[:, :60] = (225, 195, 210)  # chroma 13.6
    strong = np.zeros(img.shape[:2], bool)
    strong[:, 60:] = True
    paint_tissue(img, strong)  # chroma ~35
    assert tissue_mask(img, MPP).all()


def test_thin_stained_thread_is_not_tissue() -> None:
    img = glass()
    img[80:82, 10:190] = EOSIN  # lint: 32 µm wide, 2.9 mm long
    assert not tissue_mask(img, MPP).any()


def test_black_stripe_across_tissue_is_excluded() -> None:
    img = glass()
    tissue = np.zeros(img.shape[:2], bool)
    tissue[30:130, 30:170] = True
    paint_tissue(img, tissue)
    img[78:83] = (15, 15, 15)  # a scanner stripe, 80 µm high, across the whole page
    mask = tissue_mask(img, MPP)
    margin = round(TissueConfig().artefact_margin_um / MPP)
    assert not mask[78 - margin : 83 + margin].any()
    assert mask[35:70, 35:165].all() and mask[90:125, 35:165].all()


@pytest.mark.parametrize("colour", PENS.values(), ids=PENS.keys())
def test_pen_stroke_on_glass_is_not_tissue(colour: tuple[int, int, int]) -> None:
    img = glass()
    cv2.line(img, (10, 140), (190, 30), colour, thickness=20)  # a 320 µm marker stroke
    img = cv2.GaussianBlur(img, (0, 0), 1.5)  # ink sits above the focal plane: soft edges
    assert not tissue_mask(img, MPP).any()


@pytest.mark.parametrize("colour", PENS.values(), ids=PENS.keys())
def test_pen_stroke_over_tissue_is_cut_out(colour: tuple[int, int, int]) -> None:
    img = glass()
    tissue = np.zeros(img.shape[:2], bool)
    tissue[20:140, 20:180] = True
    paint_tissue(img, tissue)
    stroke = np.zeros(img.shape[:2], np.uint8)
    cv2.line(stroke, (20, 80), (180, 80), 1, thickness=15)
    img[stroke > 0] = colour
    mask = tissue_mask(cv2.GaussianBlur(img, (0, 0), 1.5), MPP)
    assert not mask[stroke > 0].any()
    assert mask[25:65, 25:175].all() and mask[95:135, 25:175].all()


# -- helpers and configuration ------------------------------------------------------------------


def test_fraction() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True
    assert tissue_fraction(mask) == 12 / 120
    assert tissue_fraction(np.zeros((0, 0), bool)) == 0.0


def test_config_round_trips_through_json_and_rejects_bad_values() -> None:
    config = TissueConfig(target_mpp=8.0, stain_hue=[-55, 10])
    assert config.stain_hue == (-55.0, 10.0)
    assert TissueConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    for bad in (
        {"target_mpp": 0.0},
        {"close_um": -1.0},
        {"min_chroma": 20.0, "max_chroma": 10.0},
        {"stain_hue": (12.0, -60.0)},
        {"min_value": 300},
        {"max_page_pixels": 0},
    ):
        with pytest.raises(ValueError, match="TissueConfig"):
            TissueConfig(**bad)


def test_bad_images_are_refused() -> None:
    with pytest.raises(TypeError, match="uint8"):
        tissue_mask(np.zeros((4, 4, 3), np.float32), MPP)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        tissue_mask(np.zeros((4, 4), np.uint8), MPP)
    with pytest.raises(ValueError, match="µm/pixel"):
        tissue_mask(np.zeros((4, 4, 3), np.uint8), float("nan"))


# -- whole slides -------------------------------------------------------------------------------

SLIDE_MPP = 2.0  # page 0 of the test slides; a full pyramid then has pages at 2, 4, 8, 16 µm/px


def _write_slide(
    path: Path, size: tuple[int, int], disk: tuple[int, int, int], pyramid: bool
) -> Slide:
    """A JPEG-tiled TIFF of glass with one round piece of tissue ``(cx, cy, r)`` in page-0 px."""
    w, h = size
    img = glass((h, w), seed=3)
    paint_tissue(img, _disk((h, w), disk[:2], disk[2]), seed=4)
    return Slide(write_tiff(path, img, mpp=SLIDE_MPP, pyramid=pyramid, tile=256))


def test_mask_for_slide_reads_the_page_nearest_the_target(tmp_path: Path) -> None:
    slide = _write_slide(tmp_path / "s.tif", (2048, 1536), (1000, 700, 400), pyramid=True)
    assert [p.size for p in slide.pages] == [(2048, 1536), (1024, 768), (512, 384), (256, 192)]
    mask, index = mask_for_slide(slide)
    assert index == 3 and mask.shape == (192, 256)
    assert _iou(mask, _disk(mask.shape, (1000 / 8, 700 / 8), 400 / 8)) > 0.95


def test_mask_for_slide_goes_coarser_than_a_page_above_the_cap(tmp_path: Path) -> None:
    slide = _write_slide(tmp_path / "s.tif", (2048, 1536), (1000, 700, 400), pyramid=True)
    mask, index = mask_for_slide(slide, TissueConfig(target_mpp=4.0, max_page_pixels=300_000))
    assert index == 2 and mask.shape == (384, 512)  # page 1 has 786,432 px
    # the soft cap on the mask's page (a canvas's huge overview) moves the same way, no error
    mask, index = mask_for_slide(slide, TissueConfig(target_mpp=4.0, max_mask_pixels=300_000))
    assert index == 2 and mask.shape == (384, 512)
    assert mask_for_slide(slide, TissueConfig(target_mpp=4.0, max_mask_pixels=50_000))[1] == 3
    with pytest.raises(SlideError, match="no page small enough"):
        mask_for_slide(slide, TissueConfig(max_page_pixels=256 * 192 - 1))


def test_mask_for_slide_shrinks_a_fine_single_page(tmp_path: Path) -> None:
    slide = _write_slide(tmp_path / "s.tif", (1024, 768), (500, 380, 300), pyramid=False)
    assert len(slide.pages) == 1
    mask, index = mask_for_slide(slide)  # computed at 16 µm/px, returned on page 0's grid
    assert index == 0 and mask.shape == (768, 1024)
    assert _iou(mask, _disk(mask.shape, (500, 380), 300)) > 0.95
    with pytest.raises(SlideError, match="no page small enough"):
        mask_for_slide(slide, TissueConfig(max_page_pixels=1024 * 768 - 1))


def test_mask_of_a_single_page_over_the_cap_from_the_levels_it_lacks(tmp_path: Path) -> None:
    path = _write_slide(tmp_path / "s.tif", (2048, 1536), (1000, 700, 400), pyramid=False).path
    config = TissueConfig(max_page_pixels=1_000_000)  # page 0 has 3.1 Mpx
    slide = Slide(path, max_page_pixels=config.max_page_pixels)
    assert [(p.size, p.shrink) for p in slide.pages] == [
        ((2048, 1536), 1), ((1024, 768), 2), ((512, 384), 4)
    ]  # fmt: skip
    mask, index = mask_for_slide(slide, config)  # page 2 (8 µm/px): page 0 shrunk 4 times
    assert index == 2 and mask.shape == (384, 512)
    assert _iou(mask, _disk(mask.shape, (1000 / 4, 700 / 4), 400 / 4)) > 0.95
    assert slide.reads.pixels == 2048 * 1536  # page 0 decoded whole, once
    # a budget for a quarter of that: one 512-px block in 2 x 2 (blocks 1 and 3 of rows 1 and 2)
    slide = Slide(path, max_page_pixels=config.max_page_pixels)
    mask, index = mask_for_slide(slide, config, max_decoded=2048 * 1536 / 4)
    assert slide.reads.pixels == 4 * 512 * 512
    # each block's mean stands for 1024 x 1024 px of page 0, 256 x 256 px of page 2: only block
    # (1, 1), inside the disk, is tissue (block (1, 2) holds a sliver of it, too pale on average)
    expected = np.zeros((384, 512), bool)
    expected[:256, :256] = True
    assert index == 2
    np.testing.assert_array_equal(mask, expected)


#: A process finding the tissue of the slide ``argv[1]``: its mask's page and shape, the pixels
#: decoded, and its peak memory in bytes (VmHWM: the maximum resident set of getrusage would
#: count the parent's, which Linux carries over a fork and exec).
_PEAK_SCRIPT = """
import re, sys
from pathlib import Path
from stages.slide import Slide
from stages.tissue import mask_for_slide
slide = Slide(sys.argv[1])
mask, index = mask_for_slide(slide)
peak = int(re.search(r"VmHWM:\\s*(\\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
print(index, *mask.shape, slide.reads.pixels, peak)
"""


def test_a_single_page_too_large_to_read_whole_is_shrunk_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """A conversion that forgot the pyramid: one 30,000 x 30,000 px page of 512-px JPEG tiles
    (2.7 GB decoded; mostly glass, so written in seconds). Its mask comes from page 0 shrunk 64
    times, decoded block by block, in a fraction of that memory."""
    path = write_sparse_canvas(tmp_path / "flat.tif", 30_000, 30_000, 0.25, pyramid=False)
    assert len(Slide(path).pages) == 7  # the file's one page and 6 halvings of it, to 468 px
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    index, height, width, decoded, peak = map(int, done.stdout.split())
    assert (index, height, width) == (6, 468, 468)  # 16 µm/px, the mask's target
    assert decoded == (468 * 64) ** 2  # page 0 (its 29,952 px that page 6 covers), once
    assert peak < 0.6e9, f"peak memory {peak / 1e9:.2f} GB for a page of 2.7 GB"
