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
#: Gaussian sigma (µm) below which the :data:`BALANCED` textures keep their own detail; above
#: it they all take their group's mean texture (:func:`_equalise`, applied this many passes).
EQUALISE_UM = 1.0
EQUALISE_PASSES = 4
#: The cell layout the :data:`BALANCED` textures share: spacing (µm), positional jitter
#: (fraction of spacing), mean nuclear diameter (µm) and its log-normal spread, spread of
#: nuclear orientation (degrees).
SHARED_SPACING_UM, SHARED_JITTER = 13.0, 0.22
SHARED_NUCLEUS_UM, SHARED_SIZE_CV, SHARED_ANGLE_SD = 7.0, 0.12, 40.0


@dataclass(frozen=True)
class CellStyle:
    """How one tissue type's cells look; lengths in µm, stains in optical density units.

    ``jitter`` is positional disorder (fraction of spacing), ``angle_sd_deg`` the spread of
    nuclear orientation around the texture's axis (180 = no polarity), ``halo`` the radius of a
    perinuclear clearing relative to the nucleus (koilocytes) and ``clearing`` how much eosin
    it removes, ``fibres`` the contrast of a stromal fibre background (0 = plain cytoplasm),
    ``wrinkle`` the amplitude of fine contour creases, ``chromatin`` the contrast of chromatin
    grains ``grain_um`` across (``clumping`` > 0 makes them coarse clumps with clear gaps),
    ``vesicular`` how much paler a nucleus's interior is than its rim.

    For the :data:`BALANCED` types, cell positions and orientations come from the slide's
    shared :class:`CellLayout` (``spacing_um``, ``jitter`` and ``angle_sd_deg`` are unused):
    ``nucleus_um`` scales the shared nuclear sizes and ``size_cv`` adds pleomorphism.
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
    wrinkle: float = 0.0
    grain_um: float = 0.5
    clumping: float = 0.0


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
    # The BALANCED group shares one cell layout (spacing 13 µm) and differs in fine detail only.
    # grade 1: koilocytes: enlarged wrinkled smudgy nuclei in perinuclear halos, binucleation
    Tissue.LSIL: CellStyle(
        spacing_um=SHARED_SPACING_UM, jitter=SHARED_JITTER, nucleus_um=7.5, size_cv=0.08,
        aspect=1.2, angle_sd_deg=SHARED_ANGLE_SD, irregular=0.1, stain=1.0, chromatin=0.08,
        grain_um=1.0, cytoplasm=0.35, border=0.35, halo=1.6, clearing=0.8, binucleate=0.15,
        wrinkle=0.08,
    ),
    # grade 2: high N:C, coarse clumped chromatin, irregular contours, mitoses
    Tissue.HSIL: CellStyle(
        spacing_um=SHARED_SPACING_UM, jitter=SHARED_JITTER, nucleus_um=9.0, size_cv=0.15,
        aspect=1.35, angle_sd_deg=SHARED_ANGLE_SD, irregular=0.22, stain=1.0, stain_cv=0.2,
        chromatin=0.75, grain_um=0.45, clumping=2.5, cytoplasm=0.22, border=0.04, mitoses=0.05,
    ),
    # grade 3: pleomorphic vesicular nuclei with a dark rim and prominent nucleoli
    Tissue.INVASIVE: CellStyle(
        spacing_um=SHARED_SPACING_UM, jitter=SHARED_JITTER, nucleus_um=10.0, size_cv=0.3,
        aspect=1.3, angle_sd_deg=SHARED_ANGLE_SD, irregular=0.22, stain=0.95, stain_cv=0.25,
        chromatin=0.15, cytoplasm=0.42, border=0.1, nucleolus=1.4, vesicular=0.7, mitoses=0.02,
    ),
    # benign look-alike: lymphocytes, small round regular dense nuclei in stroma
    Tissue.INFLAMMATION: CellStyle(
        spacing_um=SHARED_SPACING_UM, jitter=SHARED_JITTER, nucleus_um=5.5, size_cv=0.05,
        aspect=1.05, angle_sd_deg=SHARED_ANGLE_SD, irregular=0.03, stain=1.4, chromatin=0.05,
        cytoplasm=0.28, fibres=0.3,
    ),
    # benign mimic and a layered lesion's maturing upper layers: uniform small round nuclei
    # with smooth contours and fine even chromatin, clear cytoplasm, crisp cell borders
    Tissue.REACTIVE: CellStyle(
        spacing_um=SHARED_SPACING_UM, jitter=SHARED_JITTER, nucleus_um=6.0, size_cv=0.05,
        aspect=1.25, angle_sd_deg=SHARED_ANGLE_SD, irregular=0.03, stain=0.9, chromatin=0.05,
        cytoplasm=0.3, border=0.3, nucleolus=0.5,
    ),
}
# fmt: on
BALANCED = (Tissue.LSIL, Tissue.HSIL, Tissue.INVASIVE, Tissue.INFLAMMATION, Tissue.REACTIVE)


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
    """Gaussian blur of a periodic (tile) image, (h, w) or (h, w, c), keeping it periodic."""
    pad = math.ceil(3 * sigma) + 1
    widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (a.ndim - 2)
    out = cv2.GaussianBlur(np.pad(a, widths, mode="wrap"), (0, 0), sigma)
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


@dataclass(frozen=True, eq=False)
class CellLayout:
    """The cells the :data:`BALANCED` textures of a slide share: ``centres`` (n, 2) float64 px
    in a periodic ``size`` x ``size`` tile, nuclear diameters ``diameter_um`` (n,) µm around
    :data:`SHARED_NUCLEUS_UM` (each type scales them), orientations ``angle`` (n,) radians."""

    size: int
    centres: np.ndarray
    diameter_um: np.ndarray
    angle: np.ndarray


def cell_layout(rng: np.random.Generator, size: int, mpp: float) -> CellLayout:
    """A random shared :class:`CellLayout` for ``size`` px tiles at ``mpp`` µm/px."""
    centres = _cell_centres(rng, size, SHARED_SPACING_UM / mpp, SHARED_JITTER)
    n = len(centres)
    diameter = SHARED_NUCLEUS_UM * np.exp(rng.normal(0, SHARED_SIZE_CV, n))
    angle = rng.uniform(-0.3, 0.3) + np.radians(rng.normal(0, SHARED_ANGLE_SD, n))
    return CellLayout(size, centres, diameter, angle)


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
    layout: CellLayout | None = None,
) -> None:
    """Draw nuclei (``h``), halos (``clear``) and borders (``e``) of one periodic texture on
    canvases padded by ``margin`` px; cells from ``layout`` when given, else drawn here."""
    if layout is None:
        centres = _cell_centres(rng, size, style.spacing_um / mpp, style.jitter)
        n = len(centres)
        diameter = rng.normal(style.nucleus_um, style.size_cv * style.nucleus_um, n)
        diameter = np.maximum(diameter, 2.0)
        stretch = np.sqrt(style.aspect * rng.uniform(0.85, 1.15, n))
        angle = axis + np.radians(rng.normal(0, style.angle_sd_deg, n))
    else:
        centres, n = layout.centres, len(layout.centres)
        pleomorphism = np.exp(rng.normal(0, style.size_cv, n))
        diameter = layout.diameter_um * (style.nucleus_um / SHARED_NUCLEUS_UM) * pleomorphism
        stretch = np.sqrt(style.aspect * rng.uniform(0.85, 1.15, n))
        angle = layout.angle
    copies, index = _copies(centres, size, margin)
    copies += margin
    if style.border:
        layers["e"] += style.border * _cell_borders(copies, size + 2 * margin)
    r = diameter / 2 / mpp
    points = 32 if style.wrinkle else 20
    nuclei = irregular_outlines(
        rng, r * stretch, r / stretch, angle, style.irregular, points, style.wrinkle
    )
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
            _fill(layers["h"], 0.75 * nuclei[i] + centre, stain[i] * (1 - style.vesicular))
        if style.nucleolus:
            _fill(layers["h"], nucleoli[i] + centre, style.nucleolus)


def render_texture(
    tissue: Tissue,
    size: int,
    mpp: float,
    rng: np.random.Generator,
    stain: Stain,
    layout: CellLayout | None = None,
) -> np.ndarray:
    """(size, size, 3) float32 seamless RGB tile (0–255, no noise) of ``tissue`` at ``mpp``,
    its cells placed by ``layout`` (of the same ``size``) when given."""
    if layout is not None and layout.size != size:
        raise ValueError(f"layout is for {layout.size} px tiles, not {size}")
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
    _draw_cells(rng, style, size, margin, mpp, axis, layers, layout)
    inner = (slice(margin, margin + size),) * 2
    grains = periodic_noise(rng, size, style.grain_um / mpp)
    if style.clumping:  # coarse clumps and clear gaps rather than fine granularity
        grains = np.tanh(style.clumping * grains) / math.tanh(style.clumping)
    chromatin = np.clip(1 + style.chromatin * grains, 0.2, None)
    h = layers["h"][inner] * chromatin
    e = layers["e"][inner] * (1 - style.clearing * np.minimum(layers["clear"][inner], 1.0))
    optics = 0.35 / mpp
    return stain.rgb(_wrap_blur(h, optics), _wrap_blur(e, optics))


def _equalise(textures: dict[Tissue, np.ndarray], mpp: float) -> None:
    """Give the :data:`BALANCED` textures ((s, s, 3) float32, one size) one low-frequency
    content, in place: ``t -> t - G(t) + G(ref)`` repeated :data:`EQUALISE_PASSES` times, ``G``
    a periodic Gaussian blur of sigma :data:`EQUALISE_UM`, ``ref`` the group's mean texture
    with its darkness (255 − RGB) scaled per channel to a mean colour of
    :data:`SUSPICIOUS_DARKNESS` x normal epithelium's (40 % basal, 60 % upper layers).

    After ``k`` passes a texture differs from ``ref`` by ``(1 - G)^k (t - ref)``: a sharper
    low-pass than one pass. With sigma 1 µm and 4 passes, 0.5 % of the difference survives at an
    8 µm period, 25 % at 4 µm (where a 4 µm/px pixel's box already cancels it) and 97 % at
    2 µm, so page 4 (~4 µm/px) shows one texture while page 1 (~0.5 µm/px) keeps each type's
    chromatin, rims, nucleoli and contours."""
    epithelium = 0.4 * textures[Tissue.EPI_BASAL].mean((0, 1)) + 0.6 * textures[
        Tissue.EPI_UPPER
    ].mean((0, 1))
    target = 255 - SUSPICIOUS_DARKNESS * epithelium
    darkness = 255 - np.mean([textures[t] for t in BALANCED], axis=0)
    ref = 255 - darkness * (target / darkness.mean((0, 1))).astype(np.float32)
    sigma = EQUALISE_UM / mpp
    low = _wrap_blur(ref, sigma)
    for tissue in BALANCED:
        for _ in range(EQUALISE_PASSES):
            textures[tissue] = textures[tissue] - _wrap_blur(textures[tissue], sigma) + low


def texture_bank(spec: SlideSpec) -> dict[Tissue, np.ndarray]:
    """One seamless (s, s, 3) uint8 RGB tile per :class:`Tissue` for ``spec`` (deterministic);
    side ``s`` is about :data:`TEXTURE_UM` µm, a multiple of 8, different for every type but
    shared by the :data:`BALANCED` types, which share one :class:`CellLayout` and, above
    :data:`EQUALISE_UM`, one texture (:func:`_equalise`)."""
    stain_rng = np.random.default_rng([spec.seed, 0])
    stain = Stain.sample(stain_rng) if spec.centre is None else spec.centre.stain(stain_rng)
    base = 8 * max(8, round(TEXTURE_UM / spec.mpp / 8))
    shared = base + 8 * int(BALANCED[0])
    layout = cell_layout(np.random.default_rng([spec.seed, 7]), shared, spec.mpp)
    textures = {
        tissue: render_texture(
            tissue,
            shared if tissue in BALANCED else base + 8 * int(tissue),
            spec.mpp,
            np.random.default_rng([spec.seed, 1, int(tissue)]),
            stain,
            layout if tissue in BALANCED else None,
        )
        for tissue in Tissue
    }
    _equalise(textures, spec.mpp)
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
