"""Tissue detection on a low-resolution page: where stained tissue is, without glass, ink or dark
artefacts.

A pixel is tissue when its colour is that of H&E stain: Lab chroma above a threshold (Otsu between
glass and stain, clipped to a fixed range), a Lab hue between haematoxylin purple and eosin pink,
and not dark. Ink (strongly coloured areas of another hue: red, green, blue pen) and dark areas
(black ink, scanner stripes, the black edges of folds), found on the image smoothed to a coarser
scale, are removed together with a margin that takes their faded edges. Morphology then bridges
small gaps, removes thin strands (lint, faded ink edges) and drops components too small to be a
tissue fragment (dust, debris). Every size is in µm and converted with the image's µm/pixel, so one
configuration works at any resolution; the cascade uses it on a page near ``target_mpp``.

Masks are ``(H, W)`` bool arrays on the pixel grid of the image they were computed from; for
:func:`mask_for_slide` that is the returned page's grid, mapped to page-0 pixels with that page's
``scale`` (:mod:`stages.geometry`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from stages.slide import DEFAULT_MAX_PAGE_PIXELS, TILE, Slide, SlideError

log = logging.getLogger(__name__)

#: A page more than this factor finer than the target µm/pixel (the pyramid ran out of levels) is
#: shrunk to the target before the mask is computed; nearer pages are used as they are.
_RESAMPLE_RATIO = math.sqrt(2.0)


@dataclass(frozen=True)
class TissueConfig:
    """How tissue is told from glass and artefacts. Lengths in µm, areas in µm², colours in Lab
    (chroma in CIELAB units, hue angles in degrees) and 8-bit RGB values."""

    target_mpp: float = 16.0  # µm/pixel of the page the mask is computed on
    detail_um: float = 1.0  # Gaussian σ against pixel noise before the per-pixel stain test
    context_um: float = 8.0  # Gaussian σ of the local colour in which ink and dark areas are found
    min_chroma: float = 6.0  # the stain threshold is Otsu's, clipped to [min_chroma, max_chroma]
    max_chroma: float = 12.0
    stain_hue: tuple[float, float] = (-60.0, 12.0)  # Lab hue range of haematoxylin … eosin
    ink_chroma: float = 15.0  # local chroma from which a hue outside stain_hue is ink
    min_value: int = 70  # local brightest channel below which an area is a dark artefact
    artefact_margin_um: float = 32.0  # tissue this close to ink or dark areas is dropped
    close_um: float = 64.0  # gaps narrower than this are bridged
    open_um: float = 32.0  # strands narrower than this are removed
    min_area_um2: float = 20_000.0  # smaller components are dust or debris
    max_page_pixels: int = DEFAULT_MAX_PAGE_PIXELS  # largest page mask_for_slide reads whole
    max_mask_pixels: int = 4_000_000  # above this, a coarser page (a huge canvas's overview)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stain_hue", tuple(float(h) for h in self.stain_hue))
        if not (math.isfinite(self.target_mpp) and self.target_mpp > 0):
            raise ValueError(f"TissueConfig.target_mpp must be positive, got {self.target_mpp}")
        sizes = ("detail_um", "context_um", "artefact_margin_um", "close_um", "open_um")
        for name in (*sizes, "min_area_um2", "ink_chroma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"TissueConfig.{name} must be finite and >= 0, got {value}")
        if not 0 <= self.min_chroma <= self.max_chroma <= 255:
            raise ValueError(
                f"TissueConfig needs 0 <= min_chroma <= max_chroma <= 255, "
                f"got {self.min_chroma}, {self.max_chroma}"
            )
        if len(self.stain_hue) != 2 or not -180 <= self.stain_hue[0] < self.stain_hue[1] <= 180:
            raise ValueError(
                f"TissueConfig.stain_hue must be (low, high) within [-180, 180], "
                f"got {self.stain_hue}"
            )
        if not 0 <= self.min_value <= 255:
            raise ValueError(f"TissueConfig.min_value must be in 0..255, got {self.min_value}")
        if min(self.max_page_pixels, self.max_mask_pixels) <= 0:
            raise ValueError(
                "TissueConfig.max_page_pixels and max_mask_pixels must be > 0, got "
                f"{self.max_page_pixels}, {self.max_mask_pixels}"
            )


def tissue_mask(rgb: np.ndarray, mpp: float, config: TissueConfig | None = None) -> np.ndarray:
    """Tissue in an RGB image: ``(H, W)`` bool on the image's own pixel grid.

    ``rgb`` is ``(H, W, 3)`` uint8 and ``mpp`` its µm/pixel. Glass, ink, dark artefacts and
    components below ``min_area_um2`` are False; an image without tissue gives an all-False mask.
    """
    config = config or TissueConfig()
    _check_image(rgb, mpp)
    detail = _blur(rgb, config.detail_um / mpp)
    chroma, hue = _chroma_hue(detail)
    lit = detail.max(axis=2) >= config.min_value
    stained = lit & (chroma >= _stain_threshold(chroma, lit, config)) & _in_range(hue, config)
    radius = config.close_um / 2 / mpp
    tissue = _erode(_dilate(stained, radius), radius) & ~_artefacts(rgb, mpp, config)
    radius = config.open_um / 2 / mpp
    tissue = _dilate(_erode(tissue, radius), radius)
    return _drop_small(tissue, config.min_area_um2 / mpp**2)


def tissue_fraction(mask: np.ndarray) -> float:
    """Fraction of the mask's pixels that are tissue (0.0 for an empty array)."""
    return float(mask.mean()) if mask.size else 0.0


def mask_for_slide(
    slide: Slide, config: TissueConfig | None = None, max_decoded: float = math.inf
) -> tuple[np.ndarray, int]:
    """Tissue mask of a slide and the page it lies on: ``((H, W) bool, page index)``.

    The page is the one nearest ``target_mpp``, or the next coarser one while a page is above
    ``max_mask_pixels`` (a 66 × 71 mm canvas's 16 µm page has ~20 Mpx, mostly glass; the mask
    costs ~0.13 s a megapixel on one core), and never one above ``max_page_pixels``
    (:class:`SlideError` when every page is). A page much finer than the
    target (a slide with few pages) is shrunk to the target for the computation; the mask is
    returned on that page's pixel grid either way, ``(page.height, page.width)``, mapped to page-0
    pixels with ``slide.pages[index].scale``.

    A level the file lacks (:class:`stages.slide.Slide` shrinks it from the file's coarsest
    page) costs the decoding of that whole page. When that is more than ``max_decoded`` pixels,
    the mask is computed from a cheaper, coarser stand-in instead: one 512-px block in step ×
    step of that page (:meth:`~stages.slide.Slide.sample_page`, the smallest step that decodes
    at most ``max_decoded`` pixels), each block's mean colour standing for its step × step
    neighbours.
    """
    config = config or TissueConfig()
    index = _mask_page(slide, config)
    page = slide.pages[index]
    page_mpp = slide.page_mpp(index)
    source = None if page.source is None else slide.pages[page.source]
    if source is not None and source.width * source.height > max_decoded:
        step = math.ceil(math.sqrt(source.width * source.height / max_decoded))
        sample = slide.sample_page(source.index, step)
        block = step * TILE  # source pixels a sample pixel stands for, a side
        small_mask = tissue_mask(sample, slide.page_mpp(source.index) * block, config)
        rows, cols = (
            np.minimum((np.arange(n) * page.shrink + page.shrink // 2) // block, m - 1)
            for n, m in ((page.height, small_mask.shape[0]), (page.width, small_mask.shape[1]))
        )
        mask = small_mask[rows[:, None], cols]
    elif page_mpp * _RESAMPLE_RATIO >= config.target_mpp:
        mask = tissue_mask(slide.read_page(index, config.max_page_pixels), page_mpp, config)
    else:
        rgb = slide.read_page(index, config.max_page_pixels)
        factor = page_mpp / config.target_mpp
        size = (max(1, round(page.width * factor)), max(1, round(page.height * factor)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        small_mpp = page_mpp * (page.width / size[0] + page.height / size[1]) / 2
        small_mask = tissue_mask(small, small_mpp, config).view(np.uint8)
        mask = cv2.resize(small_mask, page.size, interpolation=cv2.INTER_NEAREST_EXACT) > 0
    log.info(
        "%s: tissue on page %d (%dx%d px at %.2f µm/px): %.1f%%",
        slide.path.name,
        index,
        page.width,
        page.height,
        page_mpp,
        100 * tissue_fraction(mask),
    )
    return mask, index


def _mask_page(slide: Slide, config: TissueConfig) -> int:
    """The page nearest ``target_mpp``, or the next coarser one within ``max_mask_pixels``
    (where the pyramid has one; never above ``max_page_pixels``)."""
    index = slide.page_for_mpp(config.target_mpp)
    cap = min(config.max_mask_pixels, config.max_page_pixels)
    while index + 1 < len(slide.pages) and _pixels(slide, index) > cap:
        index += 1
    if _pixels(slide, index) > config.max_page_pixels:
        page = slide.pages[index]
        raise SlideError(
            f"{slide.path.name}: no page small enough for a tissue mask: the coarsest, page "
            f"{index}, is {page.width}x{page.height} px > cap of {config.max_page_pixels} px"
        )
    return index


def _pixels(slide: Slide, index: int) -> int:
    page = slide.pages[index]
    return page.width * page.height


def _check_image(rgb: np.ndarray, mpp: float) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise TypeError(f"tissue_mask needs a uint8 numpy array, got {getattr(rgb, 'dtype', rgb)}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"tissue_mask needs a non-empty (H, W, 3) RGB image, got {rgb.shape}")
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"tissue_mask needs a positive µm/pixel, got {mpp}")


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of σ pixels; the image itself when σ is below half a pixel."""
    return cv2.GaussianBlur(rgb, (0, 0), sigma) if sigma >= 0.5 else rgb


def _chroma_hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lab chroma and hue angle in degrees (-180..180], both ``(H, W)`` float32."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)  # 8-bit Lab: a and b are offset by 128
    a = lab[..., 1].astype(np.float32) - 128
    b = lab[..., 2].astype(np.float32) - 128
    chroma, hue = cv2.cartToPolar(a, b, angleInDegrees=True)  # hue in [0, 360), ~0.3° accurate
    hue[hue > 180] -= 360
    return chroma, hue


def _in_range(hue: np.ndarray, config: TissueConfig) -> np.ndarray:
    low, high = config.stain_hue
    return (hue >= low) & (hue <= high)


def _stain_threshold(chroma: np.ndarray, lit: np.ndarray, config: TissueConfig) -> float:
    """Otsu's threshold between glass and stain over the lit pixels' chroma, clipped."""
    values = np.clip(chroma[lit], 0, 255).astype(np.uint8)
    if values.size == 0:
        return config.max_chroma
    otsu, _ = cv2.threshold(values.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return float(np.clip(otsu, config.min_chroma, config.max_chroma))


def _artefacts(rgb: np.ndarray, mpp: float, config: TissueConfig) -> np.ndarray:
    """Ink and dark areas of the image seen at ``context_um``, widened by the artefact margin."""
    local = _blur(rgb, config.context_um / mpp)
    chroma, hue = _chroma_hue(local)
    ink = (chroma >= config.ink_chroma) & ~_in_range(hue, config)
    dark = local.max(axis=2) < config.min_value
    return _dilate(ink | dark, config.artefact_margin_um / mpp)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a Euclidean disk of ``radius`` pixels (none below one pixel)."""
    if radius < 1:
        return mask
    distance = cv2.distanceTransform((~mask).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance <= radius


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """Erosion by a Euclidean disk of ``radius`` pixels; outside the image counts as inside."""
    if radius < 1:
        return mask
    distance = cv2.distanceTransform(mask.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance > radius


def _drop_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """The mask without 8-connected components of fewer than ``min_pixels`` pixels."""
    if min_pixels <= 1 or not mask.any():
        return mask
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False  # background
    return keep[labels]
