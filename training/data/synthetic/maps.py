"""The low-resolution maps of a slide: tissue type per pixel, tissue alpha, artefacts, blur.

One map pixel is ``zoom`` page-0 pixels (about :data:`LABEL_UM` µm); :func:`render_maps` draws the
fragments with their epithelium, the look-alikes and the lesions of a :class:`SlideSpec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from training.data.synthetic.depth import column_reach_um, paint_column
from training.data.synthetic.shapes import MAX_REACH, fragment_outline, irregular_outlines
from training.data.synthetic.spec import (
    ANNOTATION_UM,
    EPITHELIAL,
    LESION_TISSUE,
    Fragment,
    Lesion,
    SlideSpec,
    Tissue,
)

#: Target µm per label-map pixel, and the label map's largest size in pixels.
LABEL_UM = 2.0
MAX_LABEL_PIXELS = 8_000_000
#: A lesion (any grade) replaces the tissue of its blob that is epithelium or less than this much
#: deeper than its site (µm). No point of the 300 µm square centred on the site is more than its
#: half-diagonal (212 µm) away, so none is deeper than the site plus 212 µm: the lesion covers
#: all the square's tissue, whatever the surface's tilt.
FOOTPRINT_UM = 0.75 * ANNOTATION_UM
#: Every blob holds the disc of this radius (µm, at most half its size) around its site, so a
#: square centred on the site lies in its blob.
CORE_UM = ANNOTATION_UM / math.sqrt(2) + 15.0

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
    #: (h, w) float32 height above the basement membrane in epithelium thicknesses (0 membrane,
    #: 1 surface, < 0 stroma below; NaN where no epithelium lies above): see :mod:`.depth`
    level: np.ndarray | None = None


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
    """A random blob ``size_um`` across centred on page-0 ``(cx, cy)`` (within ``MAX_REACH *
    size_um / 2`` of it), holding the disc of radius ``min(CORE_UM, size_um / 2)``: the map
    slices of its bounding box and its bool mask there (empty slices when it is off the map)."""
    radius = size_um / 2 / spec.mpp
    radii = np.array([radius])
    outline = irregular_outlines(rng, radii, radii, np.zeros(1), 0.3, 32)[0]
    outline = (outline + (cx, cy)) / zoom
    x0, y0 = np.maximum(np.floor(outline.min(0)).astype(int), 0)
    x1 = min(int(np.ceil(outline[:, 0].max())) + 1, shape[1])
    y1 = min(int(np.ceil(outline[:, 1].max())) + 1, shape[0])
    box = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
    mask = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
    if mask.size:
        _fill_map(mask, outline - (x0, y0))
        core = min(CORE_UM, size_um / 2) / spec.mpp / zoom
        centre = np.round((np.array([cx / zoom, cy / zoom]) - (x0, y0) - 0.5) * 16).astype(int)
        cv2.circle(mask, tuple(int(v) for v in centre), round(core * 16), 1, -1, cv2.LINE_8, 4)
    return box, mask > 0


def site_reach_um(site: Lesion) -> float:
    """How far from its centre (µm) a site reaches: its blob, or its annotation square's
    half-diagonal when that is larger. Sites of different grades further apart than the sum of
    their reaches never overlap."""
    square = ANNOTATION_UM / math.sqrt(2) if site.annotated else 0.0
    if site.layers is not None:
        return max(column_reach_um(site.size_um, site.layers), square)
    return max(MAX_REACH * site.size_um / 2, square)


def _own_cells(
    site: Lesion, sites: tuple[Lesion, ...], box: tuple[slice, slice], zoom: int, mpp: float
) -> np.ndarray | None:
    """Bool mask of map window ``box``: pixels no nearer a site of another grade than to
    ``site`` (a Voronoi split between grades), or None when no such site is near enough."""
    reach = MAX_REACH * site.size_um / 2 / mpp  # page-0 px; rivals beyond 2 x reach claim none
    rivals = [
        other for other in sites
        if other.grade != site.grade
        and math.hypot(other.cx - site.cx, other.cy - site.cy) < 2 * reach + 2 * zoom
    ]  # fmt: skip
    if not rivals:
        return None
    ys = (np.arange(box[0].start, box[0].stop, dtype=np.float64) + 0.5) * zoom
    xs = (np.arange(box[1].start, box[1].stop, dtype=np.float64) + 0.5) * zoom
    own = (xs[None, :] - site.cx) ** 2 + (ys[:, None] - site.cy) ** 2
    keep = np.ones(own.shape, bool)
    for other in rivals:
        keep &= own <= (xs[None, :] - other.cx) ** 2 + (ys[:, None] - other.cy) ** 2
    return keep


def _paint_site(view: np.ndarray, region: np.ndarray, grade: int, band: np.ndarray) -> None:
    """Paint a site of ``grade`` into the label-map window ``view`` over ``region`` (bool, like
    ``view``; the same footprint for every grade). Grades 1–3 replace it with their lesion type;
    grade 0 (a normal site) turns it into normal epithelium only where ``band`` (the window's
    epithelium) misses it entirely (a layout box inside a fragment), else leaves it."""
    if grade:
        view[region] = LESION_TISSUE[grade]
    elif not band[region].any():
        inner = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 3)
        view[region] = Tissue.EPI_BASAL
        view[region & (inner > 0.25 * max(float(inner.max()), 1.0))] = Tissue.EPI_UPPER


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
    level = np.full(shape, np.nan, np.float32)
    for fragment in spec.fragments:
        box, t = _fragment_angles(fragment, spec.mpp, zoom, shape)
        arc = np.mod(t - math.radians(fragment.epi_from_deg), 2 * math.pi)
        thickness = fragment.epi_um * (1 + 0.25 * ridges[box])
        inside = (tissue[box] > 0) & (arc < math.radians(fragment.epi_extent_deg))
        epithelium = inside & (depth[box] < thickness)
        upper = epithelium & (depth[box] < 0.6 * thickness)
        labels[box][epithelium] = Tissue.EPI_BASAL
        labels[box][upper] = Tissue.EPI_UPPER
        level[box][inside] = (1 - depth[box] / thickness)[inside]
    for lookalike in spec.lookalikes:
        if lookalike.layers is not None:  # reactive epithelium across the whole thickness
            centre = (lookalike.cx, lookalike.cy)
            paint_column(labels, level, zoom, spec.mpp, centre, lookalike.size_um,
                         lookalike.layers, Tissue.REACTIVE, None, rng)  # fmt: skip
            continue
        box, blob = _blob_mask(
            rng, lookalike.cx, lookalike.cy, lookalike.size_um, spec, zoom, shape
        )
        view = labels[box]
        view[blob & (view == Tissue.STROMA)] = Tissue.INFLAMMATION
    for site in sorted(spec.lesions, key=lambda lesion: lesion.grade):
        if site.layers is not None and site.grade:  # graded by depth (:mod:`.depth`)
            paint_column(labels, level, zoom, spec.mpp, (site.cx, site.cy), site.size_um,
                         site.layers, LESION_TISSUE[site.grade], Tissue.REACTIVE, rng)  # fmt: skip
            continue
        box, blob = _blob_mask(rng, site.cx, site.cy, site.size_um, spec, zoom, shape)
        if not blob.size:
            continue
        i = min(max(int(site.cy / zoom), 0), shape[0] - 1)
        j = min(max(int(site.cx / zoom), 0), shape[1] - 1)
        blob &= tissue[box] > 0
        own = _own_cells(site, spec.lesions, box, zoom, spec.mpp)
        if own is not None:
            blob &= own
        view = labels[box]
        band = np.isin(view, EPITHELIAL)
        region = blob & (band | (depth[box] < depth[i, j] + FOOTPRINT_UM))
        _paint_site(view, region, site.grade, band)
    pale = np.clip(1 - 0.12 * np.abs(_smooth_noise(rng, shape, 150 / um)), 0.6, 1)
    edge = cv2.GaussianBlur(tissue.astype(np.float32), (0, 0), 0.7)
    tissue_alpha = np.round(255 * edge * pale).astype(np.uint8)
    art_colour, art_alpha, blur = _artefact_maps(spec, zoom, shape, tissue, rng)
    return Maps(zoom, labels, tissue_alpha, art_colour, art_alpha, blur, level)


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
