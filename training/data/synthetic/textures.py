"""Seamless texture tiles, one per tissue type, drawn cell by cell at the slide's µm/pixel.

Cells are drawn with OpenCV as haematoxylin / eosin optical density and turned into RGB by the
slide's :class:`Stain`; see :func:`texture_bank`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from training.data.synthetic.shapes import irregular_outlines
from training.data.synthetic.spec import SlideSpec, Tissue

#: Texture tile side, µm (each type adds a few pixels so that the periods do not line up).
TEXTURE_UM = 256.0


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
    nuclei = irregular_outlines(rng, r * stretch, r / stretch, angle, style.irregular)
    halos = irregular_outlines(rng, r * style.halo, r * style.halo, angle, 0.12)
    nucleoli = irregular_outlines(
        rng, np.maximum(0.12 * r, 0.6 / mpp), np.maximum(0.1 * r, 0.5 / mpp), angle, 0.1, points=10
    )
    stain = style.stain * np.maximum(0.3, 1 + style.stain_cv * rng.standard_normal(n))
    mitosis = rng.random(n) < style.mitoses
    twin = rng.random(n) < style.binucleate
    chromosomes = rng.normal(0, 0.45, (n, 6, 1, 2)) * r[:, None, None, None] + irregular_outlines(
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
