"""Synthetic TissueNet slides: pyramidal JPEG TIFFs and the competition's CSVs.

A slide is described by a frozen :class:`SlideSpec` (size, µm/pixel, tissue fragments, lesions,
look-alikes, artefacts; every position in page-0 pixels, y down, every physical size in µm) and
rendered in two scales:

* a low-resolution **label map** (numpy, one label pixel = ``zoom`` page-0 pixels, about 2 µm):
  tissue type per pixel (:class:`Tissue`), a soft tissue alpha, an artefact colour/alpha overlay
  and a blur mask;
* a small bank of seamless **texture tiles**, one per tissue type, drawn cell by cell with OpenCV
  at the slide's µm/pixel (nuclei 5–18 µm) in haematoxylin/eosin optical density.

Page 0 is composed lazily in pyvips (label map zoomed, textures replicated, ``case`` picks a
texture per pixel, blends add the tissue edge, blur patches and artefacts) and streamed to a
pyramidal TIFF (512 × 512 JPEG Q75 tiles, each page half the previous until it fits one tile,
resolution tags in px/cm), so a 20k × 20k slide takes seconds.

Lesion grade (1 low-grade, 2 high-grade, 3 invasive) lives in cellular detail only: nuclear
size, density, shape, chromatin and arrangement. Lesion and look-alike (dense inflammation)
textures are colour-balanced to one mean, a little darker than normal epithelium, so at
4–8 µm/pixel they look alike and only pages 0–1 tell them apart.

Slides come from :func:`sample_specs` (random, class mix configurable, deterministic per seed)
or :func:`layout_specs` (real slides' sizes, resolutions and annotated boxes, optionally scaled
down). :func:`write_sparse_canvas` writes huge mostly-glass slides (e.g. 271,950 × 294,038 px)
in seconds as a few MB: every glass tile points at one shared JPEG tile.

CLI: ``python -m training.synthetic OUT_DIR --slides N --seed S --split {train,test}``
(``--class-mix``, ``--size-range``, ``--layout META ANN --scale F``, ``--sparse-canvas W H``,
``--benchmark``; see ``--help``). The output directory has the competition's files
(``{split}_metadata.csv``, ``{split}_labels.csv``, ``train_annotations.csv`` or
``submission_format.csv`` and ``test_labels.csv``).
"""

from __future__ import annotations

import argparse
import logging
import math
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyvips

from stages.geometry import Box
from training.annotations import Annotation, annotations_frame, parse_annotations
from training.convert import TILE_SIZE, save_competition_tiff, tile_options

log = logging.getLogger(__name__)

#: Side of an annotation square, µm.
ANNOTATION_UM = 300.0
#: Page-0 µm/pixel range of the real scanners.
MPP_RANGE = (0.221, 0.272)
#: Target µm per label-map pixel, and the label map's largest size in pixels.
LABEL_UM = 2.0
MAX_LABEL_PIXELS = 8_000_000
#: Texture tile side, µm (each type adds a few pixels so that the periods do not line up).
TEXTURE_UM = 256.0
SPLITS = ("train", "test")


class Tissue(IntEnum):
    """Label-map values; each has one texture."""

    GLASS = 0
    STROMA = 1
    EPI_BASAL = 2
    EPI_UPPER = 3
    LSIL = 4
    HSIL = 5
    INVASIVE = 6
    INFLAMMATION = 7


EPITHELIAL = (Tissue.EPI_BASAL, Tissue.EPI_UPPER, Tissue.LSIL, Tissue.HSIL, Tissue.INVASIVE)


# -- slide description ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    """An irregular elliptical piece of tissue with an epithelium band along part of its border.

    Centre in page-0 px; sizes in µm; the outline's radius is modulated by harmonics 2..
    (``shape`` holds amplitude, phase pairs); the epithelium covers the outline's parametric
    angles ``[epi_from_deg, epi_from_deg + epi_extent_deg)`` to a depth of ``epi_um``.
    """

    cx: float
    cy: float
    length_um: float
    width_um: float
    angle_deg: float
    shape: tuple[float, ...]
    epi_from_deg: float
    epi_extent_deg: float
    epi_um: float

    def __post_init__(self) -> None:
        if not (self.length_um >= self.width_um > 0 and self.epi_um > 0):
            raise ValueError(f"bad fragment sizes: {self}")
        if len(self.shape) % 2:
            raise ValueError("Fragment.shape holds (amplitude, phase) pairs")


@dataclass(frozen=True)
class Lesion:
    """A lesion of ``grade`` 1–3 centred on page-0 ``(cx, cy)``, ``size_um`` across.

    Grade 0 is a normal-epithelium site: it renders nothing and exists to carry a class-0
    annotation (the real file annotates normal areas too). ``annotated`` sites get one 300 µm
    square in ``train_annotations.csv``.
    """

    cx: float
    cy: float
    grade: int
    size_um: float
    annotated: bool

    def __post_init__(self) -> None:
        if self.grade not in (0, 1, 2, 3) or self.size_um <= 0:
            raise ValueError(f"bad lesion: {self}")


@dataclass(frozen=True)
class LookAlike:
    """A benign look-alike (dense inflammation in the stroma) centred on page-0 ``(cx, cy)``."""

    cx: float
    cy: float
    size_um: float


ARTEFACT_KINDS = ("pen", "fold", "dust", "blur", "stripe")


@dataclass(frozen=True)
class Artefact:
    """A slide artefact drawn along page-0 ``points`` (a polyline; one point = a disc).

    ``pen``: ink stroke; ``fold``: dark band on tissue; ``dust``: speck; ``blur``: out-of-focus
    square ``width_um`` wide; ``stripe``: faint scanner band. ``colour``/``alpha`` (uint8) set the
    overlay; ``blur`` ignores them.
    """

    kind: str
    points: tuple[tuple[float, float], ...]
    width_um: float
    colour: tuple[int, int, int] = (0, 0, 0)
    alpha: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ARTEFACT_KINDS:
            raise ValueError(f"unknown artefact kind {self.kind!r}; expected {ARTEFACT_KINDS}")
        if not self.points or self.width_um <= 0 or not 0 <= self.alpha <= 255:
            raise ValueError(f"bad artefact: {self}")


@dataclass(frozen=True)
class SlideSpec:
    """Everything needed to render one slide; ``seed`` drives textures, stain and outlines."""

    filename: str
    width: int
    height: int
    mpp: float
    magnification: int
    seed: int
    fragments: tuple[Fragment, ...] = ()
    lesions: tuple[Lesion, ...] = ()
    lookalikes: tuple[LookAlike, ...] = ()
    artefacts: tuple[Artefact, ...] = ()

    def __post_init__(self) -> None:
        if not self.filename.endswith(".tif"):
            raise ValueError(f"slide filename must end with .tif: {self.filename!r}")
        if self.width < 1 or self.height < 1 or not self.mpp > 0:
            raise ValueError(
                f"{self.filename}: bad size or mpp ({self.width}x{self.height}, {self.mpp})"
            )
        if self.magnification not in (20, 40):
            raise ValueError(f"{self.filename}: magnification must be 20 or 40")

    @property
    def stem(self) -> str:
        return self.filename[: -len(".tif")]

    @property
    def label(self) -> int:
        """Slide class: the most severe lesion present (0 without lesions)."""
        return max((lesion.grade for lesion in self.lesions), default=0)


def annotation_box(lesion: Lesion, spec: SlideSpec) -> Box:
    """The 300 µm square (page-0 px) centred on ``lesion``, shifted to lie inside the slide."""
    side = ANNOTATION_UM / spec.mpp
    x = min(max(lesion.cx - side / 2, 0.0), max(spec.width - side, 0.0))
    y = min(max(lesion.cy - side / 2, 0.0), max(spec.height - side, 0.0))
    return Box(x, y, side, side)


def slide_annotations(spec: SlideSpec) -> list[Annotation]:
    """Annotations of ``spec``'s annotated sites, ids ``{stem}_{i}``, in lesion order."""
    sites = [lesion for lesion in spec.lesions if lesion.annotated]
    return [
        Annotation(f"{spec.stem}_{i}", spec.filename, annotation_box(site, spec), site.grade)
        for i, site in enumerate(sites)
    ]


# -- outlines -----------------------------------------------------------------------------------


def _radial_outline(
    t: np.ndarray, shape: Sequence[float], a: float, b: float
) -> tuple[np.ndarray, np.ndarray]:
    """Points of an ellipse (semi-axes a, b) at parametric angles t, radius modulated by
    harmonics 2.. with (amplitude, phase) pairs ``shape``."""
    radius = np.ones_like(t)
    for k, (amp, phase) in enumerate(zip(shape[::2], shape[1::2], strict=True), start=2):
        radius += amp * np.cos(k * t + phase)
    radius = np.clip(radius, 0.45, 1.6)
    return a * radius * np.cos(t), b * radius * np.sin(t)


def _random_shape(rng: np.random.Generator, irregular: float, n: int = 4) -> tuple[float, ...]:
    pairs = [
        (irregular / math.sqrt(k) * rng.standard_normal(), rng.uniform(0, 2 * math.pi))
        for k in range(2, 2 + n)
    ]
    return tuple(float(v) for pair in pairs for v in pair)


def fragment_outline(fragment: Fragment, mpp: float, n: int = 256) -> np.ndarray:
    """(n, 2) float64 page-0 (x, y) outline of ``fragment``; vertex i at angle 2πi/n."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    u, v = _radial_outline(t, fragment.shape, fragment.length_um / 2, fragment.width_um / 2)
    c, s = math.cos(math.radians(fragment.angle_deg)), math.sin(math.radians(fragment.angle_deg))
    return np.stack([fragment.cx + (u * c - v * s) / mpp, fragment.cy + (u * s + v * c) / mpp], 1)


def _fragment_point(
    fragment: Fragment, mpp: float, t: float, depth_um: float
) -> tuple[float, float]:
    """Page-0 point at parametric angle ``t`` of ``fragment``'s outline, ``depth_um`` inwards."""
    u, v = _radial_outline(
        np.array([t]), fragment.shape, fragment.length_um / 2, fragment.width_um / 2
    )
    radius = math.hypot(u[0], v[0])
    scale = max(radius - depth_um, 0.0) / radius
    c, s = math.cos(math.radians(fragment.angle_deg)), math.sin(math.radians(fragment.angle_deg))
    x, y = float(u[0]) * scale, float(v[0]) * scale
    return fragment.cx + (x * c - y * s) / mpp, fragment.cy + (x * s + y * c) / mpp


# -- textures -----------------------------------------------------------------------------------

#: Optical density per unit stain (natural-log units), tuned to look like H&E.
HAEMATOXYLIN_OD = (1.05, 1.3, 0.53)
EOSIN_OD = (0.2, 1.2, 0.55)
GLASS_OD = (0.055, 0.065, 0.035)
#: Lesion and look-alike textures get this fraction of normal epithelium's mean colour.
SUSPICIOUS_DARKNESS = 0.85
SCANNER_NOISE = 2.5  # grey levels, standard deviation


@dataclass(frozen=True)
class CellStyle:
    """How one tissue type's cells look; lengths in µm, stains in optical density units.

    ``jitter`` is positional disorder (fraction of spacing), ``angle_sd_deg`` the spread of
    nuclear orientation around the texture's axis (180 = no polarity), ``halo`` the radius of a
    perinuclear clearing relative to the nucleus (koilocytes) and ``clearing`` how much eosin
    it removes, ``fibres`` the contrast of a stromal fibre background (0 = plain cytoplasm).
    """

    spacing_um: float
    jitter: float
    nucleus_um: float
    size_cv: float
    aspect: float
    angle_sd_deg: float
    irregular: float
    stain: float
    stain_cv: float = 0.08
    chromatin: float = 0.15
    cytoplasm: float = 0.2
    border: float = 0.0
    halo: float = 0.0
    clearing: float = 0.85
    nucleolus: float = 0.0
    vesicular: float = 0.0
    binucleate: float = 0.0
    mitoses: float = 0.0
    fibres: float = 0.0


# fmt: off
CELL_STYLES: dict[Tissue, CellStyle] = {
    # sparse spindle cells in wavy eosinophilic collagen
    Tissue.STROMA: CellStyle(
        spacing_um=30, jitter=0.5, nucleus_um=8.0, size_cv=0.15, aspect=5.0, angle_sd_deg=12,
        irregular=0.03, stain=0.8, cytoplasm=0.3, fibres=0.45,
    ),
    # basal / parabasal layer: small uniform crowded round nuclei
    Tissue.EPI_BASAL: CellStyle(
        spacing_um=8.5, jitter=0.12, nucleus_um=6.5, size_cv=0.08, aspect=1.3, angle_sd_deg=25,
        irregular=0.04, stain=0.75, cytoplasm=0.2, border=0.08,
    ),
    # intermediate / superficial layers: large flat cells, small dark nuclei, one orientation
    Tissue.EPI_UPPER: CellStyle(
        spacing_um=17, jitter=0.15, nucleus_um=5.0, size_cv=0.1, aspect=1.8, angle_sd_deg=12,
        irregular=0.04, stain=0.95, cytoplasm=0.15, border=0.22,
    ),
    # grade 1: koilocytes, enlarged wrinkled hyperchromatic nuclei in perinuclear halos
    Tissue.LSIL: CellStyle(
        spacing_um=17, jitter=0.2, nucleus_um=9.5, size_cv=0.18, aspect=1.2, angle_sd_deg=60,
        irregular=0.14, stain=0.85, chromatin=0.25, cytoplasm=0.35, border=0.35, halo=1.6,
        clearing=0.5, binucleate=0.12,
    ),
    # grade 2: crowded, disordered (no polarity), pleomorphic coarse nuclei, mitoses
    Tissue.HSIL: CellStyle(
        spacing_um=10.5, jitter=0.4, nucleus_um=10.0, size_cv=0.22, aspect=1.35,
        angle_sd_deg=180, irregular=0.16, stain=1.05, stain_cv=0.2, chromatin=0.4,
        cytoplasm=0.25, border=0.04, mitoses=0.03,
    ),
    # grade 3: large bizarre vesicular nuclei with nucleoli, eosinophilic cytoplasm
    Tissue.INVASIVE: CellStyle(
        spacing_um=17, jitter=0.35, nucleus_um=14.0, size_cv=0.3, aspect=1.3, angle_sd_deg=180,
        irregular=0.2, stain=0.85, stain_cv=0.25, chromatin=0.35, cytoplasm=0.42, border=0.12,
        nucleolus=1.1, vesicular=0.5, mitoses=0.02,
    ),
    # benign look-alike: lymphocytes, small dark round nuclei packed in stroma
    Tissue.INFLAMMATION: CellStyle(
        spacing_um=7.0, jitter=0.3, nucleus_um=5.5, size_cv=0.1, aspect=1.05, angle_sd_deg=180,
        irregular=0.05, stain=1.35, chromatin=0.1, cytoplasm=0.28, fibres=0.3,
    ),
}
# fmt: on
BALANCED = (Tissue.LSIL, Tissue.HSIL, Tissue.INVASIVE, Tissue.INFLAMMATION)


@dataclass(frozen=True)
class Stain:
    """A slide's stain: optical density per unit haematoxylin / eosin, and the glass's OD."""

    haematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    glass: tuple[float, float, float]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Stain:
        def vary(base: Sequence[float], spread: float, scale: tuple[float, float]) -> tuple:
            v = np.asarray(base) * (1 + rng.normal(0, spread, 3)) * rng.uniform(*scale)
            return tuple(float(x) for x in v)

        return cls(
            vary(HAEMATOXYLIN_OD, 0.06, (0.85, 1.15)),
            vary(EOSIN_OD, 0.06, (0.8, 1.2)),
            vary(GLASS_OD, 0.1, (0.6, 1.4)),
        )

    def rgb(self, h: np.ndarray, e: np.ndarray) -> np.ndarray:
        """(..., 3) float32 RGB in 0–255 of haematoxylin / eosin density maps ``h``, ``e``."""
        channels = [
            cv2.exp(-(h * np.float32(hc) + e * np.float32(ec) + np.float32(gc)))
            for hc, ec, gc in zip(self.haematoxylin, self.eosin, self.glass, strict=True)
        ]
        return 255.0 * cv2.merge(channels)


def _wrap_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a periodic (tile) image, keeping it periodic."""
    pad = math.ceil(3 * sigma) + 1
    out = cv2.GaussianBlur(np.pad(a, pad, mode="wrap"), (0, 0), sigma)
    return out[pad:-pad, pad:-pad]


def periodic_noise(
    rng: np.random.Generator, size: int, sigma_px: float, aniso: float = 1.0, angle: float = 0.0
) -> np.ndarray:
    """(size, size) float32 seamless (periodic) Gaussian-filtered noise, zero mean, unit std.

    ``aniso > 1`` stretches the features ``aniso**2`` times along direction ``angle`` (radians).
    Smooth noise is made on a coarser grid (a divisor of ``size``) and upsampled.
    """
    factor = next(f for f in (8, 4, 2, 1) if (size % f == 0 and sigma_px / f >= 1.5) or f == 1)
    n, sigma = size // factor, sigma_px / factor
    white = rng.standard_normal((n, n), dtype=np.float32)
    if aniso == 1.0:
        out = _wrap_blur(white, sigma)
    else:
        spectrum = np.fft.rfft2(white)
        ky = np.fft.fftfreq(n)[:, None]
        kx = np.fft.rfftfreq(n)[None, :]
        along = kx * math.cos(angle) + ky * math.sin(angle)
        across = -kx * math.sin(angle) + ky * math.cos(angle)
        gain = np.exp(-2 * (math.pi * sigma) ** 2 * ((along * aniso) ** 2 + (across / aniso) ** 2))
        out = np.fft.irfft2(spectrum * gain.astype(np.float32), s=(n, n)).astype(np.float32)
    if factor > 1:
        big = cv2.resize(
            np.pad(out, 1, mode="wrap"), None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR
        )
        out = big[factor : factor + size, factor : factor + size]
    return (out - out.mean()) / (out.std() + 1e-6)


def _cell_centres(rng: np.random.Generator, size: int, spacing: float, jitter: float) -> np.ndarray:
    """(n, 2) cell centres on a periodic jittered hexagonal grid in ``[0, size)``."""
    cols = max(1, round(size / spacing))
    rows = max(2, 2 * round(size / (spacing * 0.866) / 2))
    j, i = np.meshgrid(np.arange(cols), np.arange(rows))
    x = (j + 0.5 * (i % 2)) * (size / cols)
    y = i * (size / rows)
    xy = np.stack([x.ravel(), y.ravel()], 1) + rng.normal(0, jitter * spacing, (x.size, 2))
    return np.mod(xy, size)


def _copies(xy: np.ndarray, size: int, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Periodic copies of points ``xy`` (in [0, size)) within ``reach`` of the tile: the copies
    (m, 2) and the index of the point each one copies (m,)."""
    shifts = np.array([(dx, dy) for dx in (-size, 0, size) for dy in (-size, 0, size)])
    allxy = (xy[None, :, :] + shifts[:, None, :]).reshape(-1, 2)
    index = np.tile(np.arange(len(xy)), len(shifts))
    keep = np.all((allxy > -reach) & (allxy < size + reach), axis=1)
    return allxy[keep], index[keep]


def _outlines(
    rng: np.random.Generator,
    a: np.ndarray,
    b: np.ndarray,
    angle: np.ndarray,
    irregular: float,
    points: int = 20,
) -> np.ndarray:
    """(n, points, 2) random irregular ellipses with semi-axes ``a``, ``b`` (n,), rotated by
    ``angle`` (n,) radians, around the origin."""
    n = len(a)
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    k = np.arange(2, 6)
    amp = irregular / np.sqrt(k) * rng.standard_normal((n, len(k)))
    phase = rng.uniform(0, 2 * math.pi, (n, len(k)))
    radius = 1 + np.einsum("nk,nkp->np", amp, np.cos(k[None, :, None] * t + phase[..., None]))
    radius = np.clip(radius, 0.45, 1.6)
    u, v = a[:, None] * radius * np.cos(t), b[:, None] * radius * np.sin(t)
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return np.stack([u * c - v * s, u * s + v * c], -1)


def _cell_borders(centres: np.ndarray, canvas: int) -> np.ndarray:
    """(canvas, canvas) float32: 1 on Voronoi borders between ``centres`` (canvas px), else 0."""
    seeds = np.ones((canvas, canvas), np.uint8)
    ij = np.round(centres).astype(int)
    ok = np.all((ij >= 0) & (ij < canvas), axis=1)
    seeds[ij[ok, 1], ij[ok, 0]] = 0
    _, labels = cv2.distanceTransformWithLabels(
        seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    edge = np.zeros((canvas, canvas), np.float32)
    edge[:, 1:] += labels[:, 1:] != labels[:, :-1]
    edge[1:, :] += labels[1:, :] != labels[:-1, :]
    return np.minimum(edge, 1.0)


def _fill(layer: np.ndarray, outline: np.ndarray, value: float) -> None:
    cv2.fillPoly(layer, [np.round(outline * 16).astype(np.int32)], float(value), cv2.LINE_AA, 4)


def _draw_cells(
    rng: np.random.Generator,
    style: CellStyle,
    size: int,
    margin: int,
    mpp: float,
    axis: float,
    layers: dict[str, np.ndarray],
) -> None:
    """Draw nuclei (``h``), halos (``clear``) and borders (``e``) of one periodic texture on
    canvases padded by ``margin`` px."""
    centres = _cell_centres(rng, size, style.spacing_um / mpp, style.jitter)
    n = len(centres)
    copies, index = _copies(centres, size, margin)
    copies += margin
    if style.border:
        layers["e"] += style.border * _cell_borders(copies, size + 2 * margin)
    diameter = np.maximum(rng.normal(style.nucleus_um, style.size_cv * style.nucleus_um, n), 2.0)
    r = diameter / 2 / mpp
    stretch = np.sqrt(style.aspect * rng.uniform(0.85, 1.15, n))
    angle = axis + np.radians(rng.normal(0, style.angle_sd_deg, n))
    nuclei = _outlines(rng, r * stretch, r / stretch, angle, style.irregular)
    halos = _outlines(rng, r * style.halo, r * style.halo, angle, 0.12)
    nucleoli = _outlines(
        rng, np.maximum(0.12 * r, 0.6 / mpp), np.maximum(0.1 * r, 0.5 / mpp), angle, 0.1, points=10
    )
    stain = style.stain * np.maximum(0.3, 1 + style.stain_cv * rng.standard_normal(n))
    mitosis = rng.random(n) < style.mitoses
    twin = rng.random(n) < style.binucleate
    chromosomes = rng.normal(0, 0.45, (n, 6, 1, 2)) * r[:, None, None, None] + _outlines(
        rng, np.repeat(0.3 * r, 6), np.repeat(0.15 * r, 6), rng.uniform(0, 7, 6 * n), 0.2, 8
    ).reshape(n, 6, 8, 2)
    offset = np.stack([np.cos(angle), np.sin(angle)], 1) * (1.9 * r)[:, None]
    for centre, i in zip(copies, index, strict=True):
        if style.halo:
            _fill(layers["clear"], halos[i] + centre, 1.0)
        if mitosis[i]:
            for chromosome in chromosomes[i]:
                _fill(layers["h"], chromosome + centre, 1.6 * style.stain)
            continue
        _fill(layers["h"], nuclei[i] + centre, stain[i])
        if twin[i]:
            _fill(layers["h"], nuclei[i] + centre + offset[i], stain[i])
        if style.vesicular:
            _fill(layers["h"], 0.7 * nuclei[i] + centre, stain[i] * (1 - style.vesicular))
        if style.nucleolus:
            _fill(layers["h"], nucleoli[i] + centre, style.nucleolus)


def render_texture(
    tissue: Tissue, size: int, mpp: float, rng: np.random.Generator, stain: Stain
) -> np.ndarray:
    """(size, size, 3) float32 seamless RGB tile (0–255, no noise) of ``tissue`` at ``mpp``."""
    zeros = np.zeros((size, size), np.float32)
    if tissue == Tissue.GLASS:
        return stain.rgb(zeros, zeros)
    style = CELL_STYLES[tissue]
    reach = style.nucleus_um * (1 + 3 * style.size_cv) * max(style.halo, style.aspect, 2.0)
    margin = math.ceil((max(reach, 1.5 * style.spacing_um) + 4) / mpp)
    axis = rng.uniform(-0.3, 0.3)  # texture's orientation (fibres, flattened cells)
    if style.fibres:
        fibres = periodic_noise(rng, size, 1.5 / mpp, aniso=2.5, angle=axis)
        base = style.cytoplasm * np.clip(1 + style.fibres * fibres, 0.2, None)
    else:
        base = style.cytoplasm * (1 + 0.12 * periodic_noise(rng, size, 3 / mpp))
    layers = {
        "h": np.pad(zeros, margin),
        "e": np.pad(base.astype(np.float32), margin, mode="wrap"),
        "clear": np.pad(zeros, margin),
    }
    _draw_cells(rng, style, size, margin, mpp, axis, layers)
    inner = (slice(margin, margin + size),) * 2
    chromatin = np.clip(1 + style.chromatin * periodic_noise(rng, size, 0.5 / mpp), 0.2, None)
    h = layers["h"][inner] * chromatin
    e = layers["e"][inner] * (1 - style.clearing * np.minimum(layers["clear"][inner], 1.0))
    optics = 0.35 / mpp
    return stain.rgb(_wrap_blur(h, optics), _wrap_blur(e, optics))


def _balance(textures: dict[Tissue, np.ndarray]) -> None:
    """Scale the darkness (255 − RGB) of lesion and look-alike textures, in place, so that all
    share one mean colour, :data:`SUSPICIOUS_DARKNESS` of normal epithelium's."""
    epithelium = 0.4 * textures[Tissue.EPI_BASAL].mean((0, 1)) + 0.6 * textures[
        Tissue.EPI_UPPER
    ].mean((0, 1))
    target = 255 - SUSPICIOUS_DARKNESS * epithelium
    for tissue in BALANCED:
        darkness = 255 - textures[tissue]
        gain = target / darkness.mean((0, 1))
        textures[tissue] = 255 - darkness * gain.astype(np.float32)


def texture_bank(spec: SlideSpec) -> dict[Tissue, np.ndarray]:
    """One seamless (s, s, 3) uint8 RGB tile per :class:`Tissue` for ``spec`` (deterministic);
    side ``s`` is about :data:`TEXTURE_UM` µm, a multiple of 8, different for every type."""
    stain = Stain.sample(np.random.default_rng([spec.seed, 0]))
    base = 8 * max(8, round(TEXTURE_UM / spec.mpp / 8))
    textures = {
        tissue: render_texture(
            tissue,
            base + 8 * int(tissue),
            spec.mpp,
            np.random.default_rng([spec.seed, 1, int(tissue)]),
            stain,
        )
        for tissue in Tissue
    }
    _balance(textures)
    largest = base + 8 * max(Tissue)
    noise = np.random.default_rng([spec.seed, 2]).standard_normal(
        (largest, largest, 3), dtype=np.float32
    )
    return {
        tissue: np.clip(
            np.round(tex + SCANNER_NOISE * noise[: len(tex), : len(tex)]), 0, 255
        ).astype(np.uint8)
        for tissue, tex in textures.items()
    }


# -- label map ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Maps:
    """Low-resolution maps of a slide; pixel ``(i, j)`` covers page-0 pixels
    ``[j * zoom, (j + 1) * zoom) x [i * zoom, (i + 1) * zoom)``. All arrays uint8."""

    zoom: int
    labels: np.ndarray  # (h, w) Tissue values
    tissue_alpha: np.ndarray  # (h, w) 255 = tissue, 0 = glass, soft edge, paler areas < 255
    art_colour: np.ndarray  # (h, w, 3) artefact RGB
    art_alpha: np.ndarray  # (h, w) artefact opacity
    blur: np.ndarray  # (h, w) 255 inside out-of-focus patches


def label_zoom(width: int, height: int, mpp: float) -> int:
    """Page-0 pixels per label-map pixel: about :data:`LABEL_UM` µm (a multiple of 4 above 4, so
    that maps upsample fast), more for huge slides."""
    zoom = max(1, round(LABEL_UM / mpp), math.ceil(math.sqrt(width * height / MAX_LABEL_PIXELS)))
    return zoom if zoom <= 4 else 4 * round(zoom / 4)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(h, w) float32 smooth noise, zero mean, unit std (``sigma`` in map pixels)."""
    factor = max(1, int(sigma // 2))
    small = (math.ceil(shape[0] / factor) + 1, math.ceil(shape[1] / factor) + 1)
    noise = cv2.GaussianBlur(rng.standard_normal(small, dtype=np.float32), (0, 0), sigma / factor)
    noise = cv2.resize(
        noise, (small[1] * factor, small[0] * factor), interpolation=cv2.INTER_LINEAR
    )
    noise = noise[: shape[0], : shape[1]]
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _fill_map(mask: np.ndarray, outline: np.ndarray) -> None:
    """Set to 1 the pixels of a uint8 map inside ``outline`` ((n, 2) map-pixel units)."""
    points = np.round((outline - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(mask, [points], 1, cv2.LINE_8, 4)


def _fragment_angles(fragment: Fragment, mpp: float, zoom: int, shape: tuple[int, int]) -> tuple:
    """Slices of the fragment's bounding box in the map and the outline's parametric angle of
    every pixel there (radians, float32)."""
    outline = fragment_outline(fragment, mpp) / zoom
    x0, y0 = np.floor(outline.min(0)).astype(int)
    x1, y1 = np.ceil(outline.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx = (xx + 0.5) * zoom - fragment.cx
    dy = (yy + 0.5) * zoom - fragment.cy
    c, s = math.cos(math.radians(fragment.angle_deg)), math.sin(math.radians(fragment.angle_deg))
    u, v = (dx * c + dy * s) * mpp, (-dx * s + dy * c) * mpp
    t = np.arctan2(v / fragment.width_um, u / fragment.length_um)
    return (slice(y0, y1), slice(x0, x1)), t


def _blob_mask(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    size_um: float,
    spec: SlideSpec,
    zoom: int,
    shape: tuple[int, int],
) -> tuple[tuple[slice, slice], np.ndarray]:
    """A random blob ``size_um`` across centred on page-0 ``(cx, cy)``: the map slices of its
    bounding box and its bool mask there (empty slices when it is off the map)."""
    radius = size_um / 2 / spec.mpp
    outline = _outlines(rng, np.array([radius]), np.array([radius]), np.zeros(1), 0.3, 32)[0]
    outline = (outline + (cx, cy)) / zoom
    x0, y0 = np.maximum(np.floor(outline.min(0)).astype(int), 0)
    x1 = min(int(np.ceil(outline[:, 0].max())) + 1, shape[1])
    y1 = min(int(np.ceil(outline[:, 1].max())) + 1, shape[0])
    box = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
    mask = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
    if mask.size:
        _fill_map(mask, outline - (x0, y0))
    return box, mask > 0


def _paint_site(
    view: np.ndarray,
    blob: np.ndarray,
    region: np.ndarray,
    grade: int,
    nests: np.ndarray,
    size: float,
) -> None:
    """Paint a lesion of ``grade`` (0 = normal site) into the label-map window ``view``: ``blob``
    is its tissue footprint, ``region`` the part to replace, ``nests`` where grade-3 nests invade
    the stroma (bool arrays like ``view``), ``size`` its diameter in map pixels."""
    if grade == 0:  # normal epithelium, where the site is not already in it
        stroma = region & (view == Tissue.STROMA)
        core = cv2.distanceTransform(blob.astype(np.uint8), cv2.DIST_L2, 3) > 0.2 * size
        view[stroma] = Tissue.EPI_BASAL
        view[stroma & core] = Tissue.EPI_UPPER
    elif grade == 1:  # koilocytes in the upper layers
        view[region & (view != Tissue.EPI_BASAL)] = Tissue.LSIL
    elif grade == 2:  # full-thickness atypia
        view[region] = Tissue.HSIL
    else:  # invasive nests reach into the stroma
        view[region | (blob & nests)] = Tissue.INVASIVE


def render_maps(spec: SlideSpec) -> Maps:
    """The label, alpha, artefact and blur maps of ``spec`` (deterministic)."""
    zoom = label_zoom(spec.width, spec.height, spec.mpp)
    shape = (math.ceil(spec.height / zoom), math.ceil(spec.width / zoom))
    um = zoom * spec.mpp  # µm per map pixel
    rng = np.random.default_rng([spec.seed, 3])
    labels = np.zeros(shape, np.uint8)
    tissue = np.zeros(shape, np.uint8)
    for fragment in spec.fragments:
        _fill_map(tissue, fragment_outline(fragment, spec.mpp) / zoom)
    labels[tissue > 0] = Tissue.STROMA
    depth = cv2.distanceTransform(tissue, cv2.DIST_L2, 5) * um  # µm from the glass
    ridges = _smooth_noise(rng, shape, 25 / um)  # rete ridges: wavy basal boundary
    for fragment in spec.fragments:
        box, t = _fragment_angles(fragment, spec.mpp, zoom, shape)
        arc = np.mod(t - math.radians(fragment.epi_from_deg), 2 * math.pi)
        thickness = fragment.epi_um * (1 + 0.25 * ridges[box])
        inside = (tissue[box] > 0) & (arc < math.radians(fragment.epi_extent_deg))
        epithelium = inside & (depth[box] < thickness)
        upper = epithelium & (depth[box] < 0.6 * thickness)
        labels[box][epithelium] = Tissue.EPI_BASAL
        labels[box][upper] = Tissue.EPI_UPPER
    epi_um = float(np.mean([f.epi_um for f in spec.fragments])) if spec.fragments else 200.0
    for lookalike in spec.lookalikes:
        box, blob = _blob_mask(
            rng, lookalike.cx, lookalike.cy, lookalike.size_um, spec, zoom, shape
        )
        view = labels[box]
        view[blob & (view == Tissue.STROMA)] = Tissue.INFLAMMATION
    nests = _smooth_noise(rng, shape, 20 / um)
    for site in sorted(spec.lesions, key=lambda lesion: lesion.grade):
        box, blob = _blob_mask(rng, site.cx, site.cy, site.size_um, spec, zoom, shape)
        i = min(max(int(site.cy / zoom), 0), shape[0] - 1)
        j = min(max(int(site.cx / zoom), 0), shape[1] - 1)
        blob &= tissue[box] > 0
        view = labels[box]
        band = np.isin(view, EPITHELIAL)
        if band[blob].any():  # the lesion replaces the epithelium it covers
            region = blob & band
        else:  # no epithelium here (a layout box inside a fragment): paint a shallow patch
            region = blob & (depth[box] < depth[i, j] + 0.5 * epi_um)
        _paint_site(view, blob, region, site.grade, nests[box] > 0.3, site.size_um / um)
    pale = np.clip(1 - 0.12 * np.abs(_smooth_noise(rng, shape, 150 / um)), 0.6, 1)
    edge = cv2.GaussianBlur(tissue.astype(np.float32), (0, 0), 0.7)
    tissue_alpha = np.round(255 * edge * pale).astype(np.uint8)
    art_colour, art_alpha, blur = _artefact_maps(spec, zoom, shape, tissue, rng)
    return Maps(zoom, labels, tissue_alpha, art_colour, art_alpha, blur)


def _artefact_maps(
    spec: SlideSpec,
    zoom: int,
    shape: tuple[int, int],
    tissue: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Artefact colour (h, w, 3), opacity (h, w) and blur mask (h, w), all uint8."""
    colour = np.zeros((*shape, 3), np.uint8)
    alpha = np.zeros(shape, np.uint8)
    blur = np.zeros(shape, np.uint8)
    for artefact in spec.artefacts:
        points = np.round((np.asarray(artefact.points) / zoom - 0.5) * 16).astype(np.int32)
        width = max(1, round(artefact.width_um / spec.mpp / zoom))
        if artefact.kind == "blur":
            half = width * 8
            ((x, y),) = points
            cv2.rectangle(blur, (x - half, y - half), (x + half, y + half), 255, -1, shift=4)
            continue
        mask = np.zeros(shape, np.uint8)
        if len(points) == 1:
            cv2.circle(mask, tuple(points[0]), width * 8, 255, -1, cv2.LINE_AA, 4)
        else:
            cv2.polylines(mask, [points], False, 255, width, cv2.LINE_AA, 4)
        if artefact.kind == "fold":
            mask = mask * (tissue > 0)
        if artefact.kind == "pen":  # uneven ink with a soft edge
            ink = np.clip(0.8 + 0.2 * _smooth_noise(rng, shape, 8.0), 0, 1)
            mask = (cv2.GaussianBlur(mask, (0, 0), 1.0) * ink).astype(np.uint8)
        opacity = (mask.astype(np.uint16) * artefact.alpha // 255).astype(np.uint8)
        colour[opacity > 0] = artefact.colour
        alpha[:] = np.maximum(alpha, opacity)
    return colour, alpha, blur


# -- composition and writing --------------------------------------------------------------------

#: Out-of-focus blur, µm (Gaussian sigma).
BLUR_UM = 2.5


def _vips(array: np.ndarray) -> pyvips.Image:
    image = pyvips.Image.new_from_array(np.ascontiguousarray(array))
    return image.copy(interpretation="srgb") if array.ndim == 3 else image


def _tiled(texture: np.ndarray, width: int, height: int, rng: np.random.Generator) -> pyvips.Image:
    """A seamless texture repeated over ``width`` x ``height``, from a random phase."""
    size = texture.shape[0]
    ox, oy = (int(v) for v in rng.integers(0, size, 2))
    across, down = math.ceil((width + ox) / size), math.ceil((height + oy) / size)
    return _vips(texture).replicate(across, down).crop(ox, oy, width, height)


def _upsample(array: np.ndarray, zoom: int, width: int, height: int) -> pyvips.Image:
    """A label-resolution map upsampled to ``width`` x ``height``: bilinear to a quarter of the
    way (smooth), then pixel replication (fast; steps of at most 4 px)."""
    step = 4 if zoom % 4 == 0 else 1
    image = _vips(array)
    if zoom > step:
        image = image.resize(zoom // step, kernel="linear")
    return image.zoom(step, step).crop(0, 0, width, height)


def _refine_labels(labels: np.ndarray, rng: np.random.Generator, band: int = 128) -> np.ndarray:
    """``labels`` (h, w) upsampled 2 x by nearest lookup through a smooth random displacement
    (up to half a map pixel), so that boundaries wiggle instead of staircasing. Works in bands
    of ``band`` output rows to keep the temporary arrays small."""
    h, w = labels.shape
    noise = rng.uniform(-0.5, 0.5, (2, h // 2 + 2, w // 2 + 2)).astype(np.float32)
    xs = (np.arange(2 * w, dtype=np.float32) + 0.5) / 2 - 0.5
    out = np.empty((2 * h, 2 * w), np.uint8)
    for top in range(0, 2 * h, band):
        rows = min(band, 2 * h - top)
        coarse = slice(top // 4, (top + rows) // 4 + 2)  # noise rows covering these output rows
        shift = [
            cv2.resize(n[coarse], (4 * n.shape[1], 4 * (coarse.stop - coarse.start)))[
                top % 4 : top % 4 + rows, : 2 * w
            ]
            for n in noise
        ]
        ys = (np.arange(top, top + rows, dtype=np.float32) + 0.5) / 2 - 0.5
        out[top : top + rows] = cv2.remap(
            labels, shift[0] + xs, shift[1] + ys[:, None], cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_REPLICATE,
        )  # fmt: skip
    return out


def compose(spec: SlideSpec) -> pyvips.Image:
    """Page 0 of ``spec`` as a lazy ``width`` x ``height`` 3-band uchar sRGB pyvips image."""
    maps = render_maps(spec)
    bank = texture_bank(spec)
    rng = np.random.default_rng([spec.seed, 4])
    w, h, zoom = spec.width, spec.height, maps.zoom
    layers = [_tiled(bank[tissue], w, h, rng) for tissue in Tissue]
    if zoom % 8 == 0:  # 2 x finer, wiggly boundaries, then 4 px steps at most
        labels = _refine_labels(maps.labels, np.random.default_rng([spec.seed, 5]))
        index = _vips(labels).zoom(zoom // 2, zoom // 2).crop(0, 0, w, h)
    else:
        index = _vips(maps.labels).zoom(zoom, zoom).crop(0, 0, w, h)
    image = index.case(layers)
    alpha = _upsample(maps.tissue_alpha, zoom, w, h)
    image = alpha.ifthenelse(image, layers[Tissue.GLASS], blend=True)
    if maps.blur.any():
        blurred = image.gaussblur(BLUR_UM / spec.mpp, precision="integer")
        image = _vips(maps.blur).zoom(zoom, zoom).crop(0, 0, w, h).ifthenelse(blurred, image)
    if maps.art_alpha.any():
        colour = _vips(maps.art_colour).zoom(zoom, zoom).crop(0, 0, w, h)
        art = _upsample(maps.art_alpha, zoom, w, h)
        image = art.ifthenelse(colour, image, blend=True)
    return image


def write_slide(path: str | Path, spec: SlideSpec) -> Path:
    """Render ``spec`` and write it to ``path`` (a pyramidal JPEG TIFF); returns ``path``."""
    path = Path(path)
    save_competition_tiff(compose(spec), path, spec.mpp)
    log.info("wrote %s (%dx%d px, class %d)", path.name, spec.width, spec.height, spec.label)
    return path


# -- random and layout slide descriptions ------------------------------------------------------

PEN_COLOURS = ((40, 130, 70), (40, 60, 150), (35, 35, 45), (170, 40, 60))


@dataclass(frozen=True)
class SynthConfig:
    """How random slides are drawn. Sizes in page-0 pixels, probabilities in [0, 1]."""

    class_mix: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    size_range: tuple[int, int] = (6000, 20000)
    mpp_range: tuple[float, float] = MPP_RANGE
    annotate_p: float = 0.5  # each lesion after the first is annotated with this chance
    lookalike_p: float = 0.7  # a slide has dense inflammation with this chance
    artefact_p: float = 0.4  # chance of each of pen marks, folds, blur, scanner stripes

    def __post_init__(self) -> None:
        mix = np.asarray(self.class_mix, dtype=float)
        if mix.shape != (4,) or (mix < 0).any() or not math.isclose(mix.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"class_mix needs 4 non-negative shares summing to 1: {mix}")
        lo, hi = self.size_range
        if not 512 <= lo <= hi:
            raise ValueError(f"size_range needs 512 <= min <= max, got {self.size_range}")
        if not 0 < self.mpp_range[0] <= self.mpp_range[1]:
            raise ValueError(f"bad mpp_range {self.mpp_range}")
        for name in ("annotate_p", "lookalike_p", "artefact_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _random_fragments(
    rng: np.random.Generator, width: int, height: int, mpp: float
) -> tuple[Fragment, ...]:
    """2–5 fragments per 100 mm² (16 at most), each in its own cell of a grid over the slide,
    a few mm at most."""
    w_um, h_um = width * mpp, height * mpp
    n = min(16, int(rng.integers(2, 6)) * max(1, round(w_um * h_um / 1e8)))
    cols = max(1, min(n, round(math.sqrt(n * w_um / h_um))))
    rows = math.ceil(n / cols)
    cw, ch = w_um / cols, h_um / rows
    fragments = []
    for cell in rng.permutation(cols * rows)[:n]:
        row, col = divmod(int(cell), cols)
        length = min(max(cw, ch) * _uniform(rng, 0.55, 0.85), _uniform(rng, 2500, 6000))
        breadth = min(length * _uniform(rng, 0.3, 0.6), min(cw, ch) * 0.75)
        angle = (0.0 if cw >= ch else 90.0) + float(rng.normal(0, 12))
        c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        ex = 0.65 * math.hypot(length * c, breadth * s)  # half extents with 1.3 x bulges
        ey = 0.65 * math.hypot(length * s, breadth * c)
        k = min(1.0, 0.95 * cw / 2 / ex, 0.95 * ch / 2 / ey)
        cx = (col + 0.5) * cw + _uniform(rng, -1, 1) * max(0.0, cw / 2 - ex * k)
        cy = (row + 0.5) * ch + _uniform(rng, -1, 1) * max(0.0, ch / 2 - ey * k)
        fragment = Fragment(
            cx=cx / mpp, cy=cy / mpp, length_um=length * k, width_um=breadth * k, angle_deg=angle,
            shape=_random_shape(rng, 0.12), epi_from_deg=_uniform(rng, 0, 360),
            epi_extent_deg=_uniform(rng, 120, 260),
            epi_um=min(_uniform(rng, 150, 400), 0.3 * breadth * k),
        )  # fmt: skip
        fragments.append(fragment)
    return tuple(fragments)


def _epithelium_site(
    rng: np.random.Generator, fragments: Sequence[Fragment], mpp: float, depth: float
) -> tuple[float, float, Fragment]:
    """A page-0 point ``depth`` x epithelium thickness below the surface, inside the epithelium
    arc of a fragment chosen with probability proportional to its area."""
    areas = np.array([f.length_um * f.width_um for f in fragments])
    fragment = fragments[int(rng.choice(len(fragments), p=areas / areas.sum()))]
    t = math.radians(fragment.epi_from_deg + _uniform(rng, 0.15, 0.85) * fragment.epi_extent_deg)
    x, y = _fragment_point(fragment, mpp, t, depth * fragment.epi_um)
    return x, y, fragment


def _random_lesions(
    rng: np.random.Generator,
    fragments: Sequence[Fragment],
    mpp: float,
    label: int,
    annotate_p: float,
) -> list[Lesion]:
    """Lesions for a slide of class ``label`` (the first has that grade and is annotated, the
    others are lower or equal and annotated with chance ``annotate_p``) plus annotated normal
    sites (grade 0) away from them."""
    lesions = []
    if label:
        grades = [label] + [int(rng.integers(1, label + 1)) for _ in range(rng.integers(0, 4))]
        for k, grade in enumerate(grades):
            x, y, fragment = _epithelium_site(rng, fragments, mpp, 0.8 if grade == 3 else 0.5)
            high = 2500.0 if grade == 3 else 1500.0
            size = min(_uniform(rng, 300, high), max(0.8 * fragment.length_um, 300.0))
            annotated = k == 0 or bool(rng.random() < annotate_p)
            lesions.append(Lesion(cx=x, cy=y, grade=grade, size_um=size, annotated=annotated))
    for _ in range(int(rng.integers(2, 6)) if label == 0 else int(rng.integers(0, 3))):
        for _attempt in range(10):
            x, y, _ = _epithelium_site(rng, fragments, mpp, 0.5)
            clear = all(
                math.hypot(x - le.cx, y - le.cy) * mpp > le.size_um / 2 + ANNOTATION_UM
                for le in lesions
                if le.grade
            )
            if clear:
                size = ANNOTATION_UM * _uniform(rng, 1.2, 2.0)
                lesions.append(Lesion(cx=x, cy=y, grade=0, size_um=size, annotated=True))
                break
    return lesions


def _random_lookalikes(
    rng: np.random.Generator, fragments: Sequence[Fragment], mpp: float, chance: float
) -> tuple[LookAlike, ...]:
    """0–3 patches of dense inflammation in the stroma just under the epithelium."""
    if not fragments or rng.random() >= chance:
        return ()
    out = []
    for _ in range(int(rng.integers(1, 4))):
        size = _uniform(rng, 200, 800)
        depth = 1.0 + _uniform(rng, 0.2, 0.6) * size / float(np.mean([f.epi_um for f in fragments]))
        x, y, _ = _epithelium_site(rng, fragments, mpp, depth)
        out.append(LookAlike(cx=x, cy=y, size_um=size))
    return tuple(out)


def _random_artefacts(
    rng: np.random.Generator,
    fragments: Sequence[Fragment],
    width: int,
    height: int,
    mpp: float,
    chance: float,
) -> tuple[Artefact, ...]:
    """Pen strokes around fragments, folds across them, blur patches, dust, scanner stripes."""
    out: list[Artefact] = []
    for f in fragments:
        if rng.random() < chance / 2:  # pen arc around the fragment
            radius = (f.length_um / 2 + _uniform(rng, 200, 800)) / mpp
            t = _uniform(rng, 0, 2 * math.pi) + np.linspace(0, _uniform(rng, 1, 3.5), 24)
            wobble = 1 + 0.05 * np.sin(3 * t + _uniform(rng, 0, 6))
            xs = np.clip(f.cx + radius * wobble * np.cos(t), 0, width - 1).tolist()
            ys = np.clip(f.cy + 0.7 * radius * wobble * np.sin(t), 0, height - 1).tolist()
            colour = PEN_COLOURS[int(rng.integers(len(PEN_COLOURS)))]
            out.append(Artefact(
                kind="pen", points=tuple(zip(xs, ys, strict=True)),
                width_um=_uniform(rng, 150, 500), colour=colour, alpha=int(rng.integers(110, 180)),
            ))  # fmt: skip
        if rng.random() < chance / 2:  # fold: a dark band across the fragment
            half = f.width_um * _uniform(rng, 0.4, 0.8) / mpp
            t = _uniform(rng, 0, math.pi)
            dx, dy = half * math.cos(t), half * math.sin(t)
            cx = f.cx + float(rng.normal(0, 0.15 * f.width_um / mpp))
            cy = f.cy + float(rng.normal(0, 0.15 * f.width_um / mpp))
            out.append(Artefact(
                kind="fold", points=((cx - dx, cy - dy), (cx + dx, cy + dy)),
                width_um=_uniform(rng, 40, 200), colour=(110, 50, 120),
                alpha=int(rng.integers(90, 150)),
            ))  # fmt: skip
        if rng.random() < chance / 2:  # out-of-focus square
            cx = f.cx + float(rng.normal(0, 0.25 * f.width_um / mpp))
            cy = f.cy + float(rng.normal(0, 0.25 * f.width_um / mpp))
            out.append(Artefact(kind="blur", points=((cx, cy),), width_um=_uniform(rng, 300, 1200)))
    for _ in range(int(rng.poisson(3))):
        xy = (_uniform(rng, 0, width), _uniform(rng, 0, height))
        out.append(Artefact(
            kind="dust", points=(xy,), width_um=_uniform(rng, 8, 60), colour=(60, 55, 50),
            alpha=int(rng.integers(180, 240)),
        ))  # fmt: skip
    if rng.random() < chance / 3:  # a faint scanner stripe across the slide
        if rng.random() < 0.5:
            y = _uniform(rng, 0, height)
            points = ((0.0, y), (float(width), y))
        else:
            x = _uniform(rng, 0, width)
            points = ((x, 0.0), (x, float(height)))
        out.append(Artefact(
            kind="stripe", points=points, width_um=_uniform(rng, 20, 100), colour=(80, 80, 80),
            alpha=int(rng.integers(25, 50)),
        ))  # fmt: skip
    return tuple(out)


def random_spec(
    rng: np.random.Generator,
    filename: str,
    label: int,
    width: int,
    height: int,
    mpp: float,
    config: SynthConfig = SynthConfig(),
    fragments: Sequence[Fragment] | None = None,
    lesions: Sequence[Lesion] | None = None,
) -> SlideSpec:
    """A random slide of class ``label``; ``fragments`` / ``lesions`` replace the random ones."""
    if fragments is None:
        fragments = _random_fragments(rng, width, height, mpp)
    if lesions is None:
        lesions = _random_lesions(rng, fragments, mpp, label, config.annotate_p)
    return SlideSpec(
        filename=filename, width=width, height=height, mpp=mpp,
        magnification=int(rng.choice((20, 40))), seed=int(rng.integers(2**31)),
        fragments=tuple(fragments), lesions=tuple(lesions),
        lookalikes=_random_lookalikes(rng, fragments, mpp, config.lookalike_p),
        artefacts=_random_artefacts(rng, fragments, width, height, mpp, config.artefact_p),
    )  # fmt: skip


def sample_specs(n_slides: int, seed: int, config: SynthConfig = SynthConfig()) -> list[SlideSpec]:
    """``n_slides`` random slides (``syn{seed}_{i:04d}.tif``), classes drawn from the mix.

    Slide ``i`` depends only on ``(seed, i)`` and its drawn class, so a longer run extends a
    shorter one."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, size=n_slides, p=config.class_mix)
    specs = []
    for i, label in enumerate(labels):
        slide_rng = np.random.default_rng([seed, i])
        width, height = (int(v) for v in slide_rng.integers(*config.size_range, 2, endpoint=True))
        mpp = _uniform(slide_rng, *config.mpp_range)
        name = f"syn{seed}_{i:04d}.tif"
        specs.append(random_spec(slide_rng, name, int(label), width, height, mpp, config))
    return specs


def layout_specs(
    metadata: str | Path | pd.DataFrame,
    annotations: str | Path,
    scale: int = 1,
    seed: int = 0,
    config: SynthConfig = SynthConfig(),
) -> list[SlideSpec]:
    """Slides reproducing real ones: sizes, µm/pixel, magnification and annotated boxes from a
    ``train_metadata.csv`` / ``train_annotations.csv`` pair (boxes of slides the metadata does
    not list are ignored), sizes divided by ``scale`` (µm/pixel multiplied).

    Each box becomes an annotated lesion (class 0: a normal site) centred on it, inside a
    fragment grown around its cluster of boxes; random fragments fill free space; label = the
    highest box class. A slide may also get one unannotated lesion. Slides without boxes are
    random class-0 slides.
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    frame = metadata if isinstance(metadata, pd.DataFrame) else pd.read_csv(metadata)
    rows = pd.read_csv(annotations)
    if "filename" not in rows.columns:
        raise ValueError(f"{annotations}: no filename column")
    rows = rows[rows["filename"].isin(set(frame["filename"]))]  # boxes of the listed slides
    boxes: dict[str, list[Annotation]] = {}
    for annotation in parse_annotations(rows, frame):
        boxes.setdefault(annotation.filename, []).append(annotation)
    specs = []
    for i, row in enumerate(frame.itertuples(index=False)):
        rng = np.random.default_rng([seed, i])
        width, height = max(1, round(row.width / scale)), max(1, round(row.height / scale))
        mpp = float(row.resolution) * scale
        sites = [
            Lesion(cx=a.box.center[0] / scale, cy=a.box.center[1] / scale,
                   grade=a.annotation_class, size_um=ANNOTATION_UM * _uniform(rng, 1.5, 3.0),
                   annotated=True)
            for a in boxes.get(row.filename, [])
        ]  # fmt: skip
        fragments, lesions = None, None
        label = max((site.grade for site in sites), default=0)
        if sites:
            fragments = _fragments_around(rng, sites, width, height, mpp)
            fragments += _free_fragments(rng, fragments, width, height, mpp)
            if label and rng.random() < 0.5:
                x, y, _ = _epithelium_site(rng, fragments, mpp, 0.5)
                grade, size = int(rng.integers(1, label + 1)), _uniform(rng, 300, 1000)
                sites.append(Lesion(cx=x, cy=y, grade=grade, size_um=size, annotated=False))
            lesions = sites
        spec = random_spec(rng, row.filename, label, width, height, mpp, config, fragments, lesions)
        specs.append(replace(spec, magnification=int(row.magnification)))
    return specs


def _fragments_around(
    rng: np.random.Generator, sites: Sequence[Lesion], width: int, height: int, mpp: float
) -> tuple[Fragment, ...]:
    """One fragment per cluster of sites (sites closer than 2.5 mm join), an ellipse that holds
    the cluster's bounding box with a margin, kept on the slide."""
    link = 2500.0 / mpp
    cluster = list(range(len(sites)))
    for a in range(len(sites)):
        for b in range(a):
            if math.hypot(sites[a].cx - sites[b].cx, sites[a].cy - sites[b].cy) < link:
                old, new = cluster[a], cluster[b]
                cluster = [new if c == old else c for c in cluster]
    fragments = []
    for label in sorted(set(cluster)):
        xs = [s.cx for s, c in zip(sites, cluster, strict=True) if c == label]
        ys = [s.cy for s, c in zip(sites, cluster, strict=True) if c == label]
        margin = 900.0 / mpp
        half_w = min(((max(xs) - min(xs)) / 2 + margin) * math.sqrt(2), width / 2)
        half_h = min(((max(ys) - min(ys)) / 2 + margin) * math.sqrt(2), height / 2)
        cx = min(max((max(xs) + min(xs)) / 2, half_w), width - half_w)
        cy = min(max((max(ys) + min(ys)) / 2, half_h), height - half_h)
        breadth = 2 * min(half_w, half_h) * mpp
        fragment = Fragment(
            cx=cx, cy=cy, length_um=2 * max(half_w, half_h) * mpp, width_um=breadth,
            angle_deg=0.0 if half_w >= half_h else 90.0, shape=_random_shape(rng, 0.04),
            epi_from_deg=_uniform(rng, 0, 360), epi_extent_deg=_uniform(rng, 120, 260),
            epi_um=min(_uniform(rng, 150, 400), 0.3 * breadth),
        )  # fmt: skip
        fragments.append(fragment)
    return tuple(fragments)


def _free_fragments(
    rng: np.random.Generator, taken: Sequence[Fragment], width: int, height: int, mpp: float
) -> tuple[Fragment, ...]:
    """Random fragments whose bounding circles miss those of ``taken``."""

    def apart(a: Fragment, b: Fragment) -> bool:
        return math.hypot(a.cx - b.cx, a.cy - b.cy) * mpp > 0.65 * (a.length_um + b.length_um)

    candidates = _random_fragments(rng, width, height, mpp)
    return tuple(f for f in candidates if all(apart(f, t) for t in taken))


# -- dataset ------------------------------------------------------------------------------------


def posix_cksum(path: str | Path) -> int:
    """The POSIX ``cksum`` CRC of a file (the real metadata's ``tif_cksum``)."""
    try:
        out = subprocess.run(["cksum", str(path)], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"{path}: cksum failed ({exc})") from exc
    return int(out.stdout.split()[0])


def _one_hot(specs: Sequence[SlideSpec], zeros: bool = False) -> pd.DataFrame:
    rows = [[s.filename] + [int(not zeros and s.label == k) for k in range(4)] for s in specs]
    return pd.DataFrame(rows, columns=["filename", "0", "1", "2", "3"])


def write_dataset(
    out_dir: str | Path,
    specs: Sequence[SlideSpec],
    split: str,
    canvas: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Write ``specs`` as TIFs plus the competition's CSVs of ``split`` into ``out_dir``.

    ``test``: ``test_metadata.csv`` (filename, width, height, resolution, magnification),
    ``submission_format.csv`` (all zeros) and ``test_labels.csv`` (one-hot, for scoring).
    ``train``: ``train_metadata.csv`` (plus tif_cksum, tif_size), ``train_labels.csv`` and
    ``train_annotations.csv``. With ``canvas = (width, height)`` every slide is a huge sparse
    canvas (:func:`write_sparse_canvas`) holding its spec at a random place. Returns the metadata
    table with a ``seconds`` column (time to render and write each TIF) the CSV does not have.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if len({s.filename for s in specs}) != len(specs):
        raise ValueError("slide filenames must be unique")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, written = [], []
    for spec in specs:
        start = time.perf_counter()
        if canvas is None:
            slide = spec
            path = write_slide(out / spec.filename, spec)
        else:
            rng = np.random.default_rng([spec.seed, 6])
            x, y = (
                int(rng.integers(0, max(c - s, 0) + 1))
                for c, s in zip(canvas, (spec.width, spec.height), strict=True)
            )
            slide = place(spec, *canvas, x, y)
            path = write_sparse_canvas(out / spec.filename, *canvas, spec.mpp, spec, (x, y))
        seconds = time.perf_counter() - start
        row = {
            "filename": slide.filename,
            "width": slide.width,
            "height": slide.height,
            "resolution": slide.mpp,
            "magnification": slide.magnification,
        }
        if split == "train":
            row |= {"tif_cksum": posix_cksum(path), "tif_size": path.stat().st_size}
        rows.append(row | {"seconds": seconds})
        written.append(slide)
    metadata = pd.DataFrame(rows)
    metadata.drop(columns="seconds").to_csv(out / f"{split}_metadata.csv", index=False)
    _one_hot(written).to_csv(out / f"{split}_labels.csv", index=False)
    if split == "test":
        _one_hot(written, zeros=True).to_csv(out / "submission_format.csv", index=False)
    else:
        annotations = [a for slide in written for a in slide_annotations(slide)]
        heights = {slide.filename: slide.height for slide in written}
        annotations_frame(annotations, heights).to_csv(out / "train_annotations.csv", index=False)
    return metadata


def generate_dataset(
    out_dir: str | Path,
    n_slides: int,
    seed: int,
    split: str = "train",
    config: SynthConfig = SynthConfig(),
) -> pd.DataFrame:
    """``n_slides`` random slides of ``seed`` written as a ``split`` directory; see
    :func:`write_dataset`."""
    return write_dataset(out_dir, sample_specs(n_slides, seed, config), split)


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
) -> Path:
    """A huge, mostly glass slide in the competition's format, written in seconds.

    Same layout as :func:`training.convert.save_competition_tiff` (classic TIFF, a page per
    level, 512 x 512 JPEG Q75 tiles), but every all-glass tile of every page points at one
    shared compressed tile; only the tiles that touch ``tissue`` (rendered by :func:`compose`
    into a temporary pyramid, its top-left at page-0 ``origin``) are encoded. The file is a few
    MB plus the tissue.
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
        for level, (w, h) in enumerate(pyramid_sizes(width, height)):
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


# -- command line -------------------------------------------------------------------------------


def _class_mix(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--class-mix wants 4 numbers, got {text!r}") from exc
    if len(values) != 4 or min(values) < 0 or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"--class-mix wants 4 non-negative numbers: {text!r}")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.synthetic",
        description="Write synthetic TissueNet slides and CSVs in the competition's layout.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--slides", type=int, help="number of slides (with --layout: at most)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument(
        "--class-mix",
        type=_class_mix,
        default=SynthConfig().class_mix,
        metavar="P0,P1,P2,P3",
        help="class shares (normalised)",
    )
    parser.add_argument(
        "--size-range",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=SynthConfig().size_range,
        help="page-0 width/height range, px",
    )
    parser.add_argument(
        "--layout",
        type=Path,
        nargs=2,
        metavar=("METADATA.csv", "ANNOTATIONS.csv"),
        help="reproduce real slides: sizes, resolutions, labels, boxes",
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=1,
        help="with --layout: divide sizes (multiply µm/px) by this integer",
    )
    parser.add_argument(
        "--sparse-canvas",
        type=int,
        nargs=2,
        metavar=("WIDTH", "HEIGHT"),
        help="write each slide as a huge mostly-glass canvas of this size",
    )
    parser.add_argument(
        "--benchmark", action="store_true", help="print generation seconds and Mpx/s per slide"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = SynthConfig(class_mix=args.class_mix, size_range=tuple(args.size_range))
    except ValueError as exc:
        parser.error(str(exc))
    if args.layout:
        if args.sparse_canvas:
            parser.error("--sparse-canvas works with random slides, not --layout")
        specs = layout_specs(*args.layout, scale=args.scale, seed=args.seed, config=config)
        specs = specs[: args.slides] if args.slides is not None else specs
    elif args.slides is None or args.slides < 1:
        parser.error("--slides N (N >= 1) is required without --layout")
    else:
        specs = sample_specs(args.slides, args.seed, config)
    canvas = tuple(args.sparse_canvas) if args.sparse_canvas else None
    metadata = write_dataset(args.out_dir, specs, args.split, canvas)
    megapixels = metadata["width"] * metadata["height"] / 1e6
    if args.benchmark:
        for row, mpx in zip(metadata.itertuples(index=False), megapixels, strict=True):
            print(
                f"{row.filename}\t{row.width}x{row.height}\t{row.seconds:.2f} s\t"
                f"{mpx / row.seconds:.1f} Mpx/s"
            )
        total = metadata["seconds"].sum()
        print(
            f"total\t{len(metadata)} slides\t{total:.2f} s\t{megapixels.sum() / total:.1f} Mpx/s"
            f"\t{total / len(metadata):.2f} s/slide"
        )
    counts = np.bincount([s.label for s in specs], minlength=4).tolist()
    print(f"wrote {len(specs)} {args.split} slides to {args.out_dir} (classes 0-3: {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
