"""Depth in the epithelium: lesions graded by how much of its thickness they fill.

The label map's ``level`` field (:attr:`~training.data.synthetic.maps.Maps.level`) gives every
map pixel under an epithelium arc its height above the basement membrane in units of the local
epithelium thickness: 0 on the membrane, 1 at the surface, negative in the stroma below (``-0.5``
is half a thickness under the membrane), NaN where no epithelium lies above.

A layered site (:class:`~training.data.synthetic.spec.Layers`) is a column across the
epithelium, ``size_um`` wide along the surface, its axis the inward surface normal: up to its
``fill`` of the thickness (from the membrane up) it holds the atypical cells of its grade, above
them maturing cells (:attr:`Tissue.REACTIVE`, a lesion's upper layers, which look like the
lesion at low magnification and like benign epithelium at high), and a grade-3 column adds
nests of atypical cells up to ``invasion_um`` below the membrane. A reactive mimic is a column
of :attr:`Tissue.REACTIVE` across the whole thickness.
"""

from __future__ import annotations

import math

import numpy as np

from training.data.synthetic.spec import Layers, Tissue

#: The rete ridges make the epithelium locally up to about this fraction thicker than nominal;
#: a column reaches this much further along its axis so that it still spans the thickness.
RIDGE_SLACK = 0.5
#: Radius range (µm) of a grade-3 column's nests, and their number per 100 x 100 µm of the
#: area (width x invasion depth) they are scattered over; one more nest straddles the membrane.
NEST_UM = (15.0, 45.0)
NESTS_PER_100_UM_SQUARED = 1.0
MAX_NESTS = 60


def column_reach_um(size_um: float, layers: Layers) -> float:
    """How far (µm) from its centre a column ``size_um`` wide reaches, at most: the
    half-diagonal of its width by its length (thickness with :data:`RIDGE_SLACK`, invasion)."""
    return math.hypot(size_um / 2, (1 + RIDGE_SLACK) * layers.epi_um + layers.invasion_um)


def column_centre_depth_um(layers: Layers) -> float:
    """Depth (µm below the surface along the normal, at the nominal thickness) of a column's
    centre: the middle of its band (atypical epithelium plus invasion)."""
    return layers.epi_um * (1 - layers.fill) + layers.band_um / 2


def column_corners(cx: float, cy: float, size_um: float, layers: Layers, mpp: float) -> np.ndarray:
    """(4, 2) float64 page-0 ``(x, y)`` corners of the lesion proper: a rectangle ``size_um``
    wide along the surface and :attr:`Layers.band_um` deep along the normal, centred on
    ``(cx, cy)`` (nominal thickness)."""
    theta = math.radians(layers.normal_deg)
    normal = np.array([math.cos(theta), math.sin(theta)])
    tangent = np.array([-normal[1], normal[0]])
    half_u, half_v = size_um / 2, layers.band_um / 2
    corners = [tangent * su * half_u + normal * sv * half_v for su in (-1, 1) for sv in (-1, 1)]
    return np.array([cx, cy]) + np.array(corners) / mpp


def paint_column(
    labels: np.ndarray,
    level: np.ndarray,
    zoom: int,
    mpp: float,
    centre: tuple[float, float],
    size_um: float,
    layers: Layers,
    lower: Tissue,
    upper: Tissue | None,
    rng: np.random.Generator,
) -> None:
    """Paint a column centred on page-0 ``centre`` into ``labels`` ((h, w) uint8 label map,
    in place; ``level`` the matching float32 field, one pixel = ``zoom`` page-0 px at ``mpp``
    µm/px): epithelium with level in (0, fill] becomes ``lower``, above it ``upper`` (None:
    left as it is), and with ``invasion_um`` > 0 nests of ``lower`` in the tissue below the
    membrane (depth below it taken as ``-level x epi_um``)."""
    h, w = labels.shape
    cx, cy = centre
    reach = column_reach_um(size_um, layers) / mpp / zoom
    i0, i1 = max(int(cy / zoom - reach), 0), min(int(cy / zoom + reach) + 2, h)
    j0, j1 = max(int(cx / zoom - reach), 0), min(int(cx / zoom + reach) + 2, w)
    if i1 <= i0 or j1 <= j0:
        return
    ys = ((np.arange(i0, i1, dtype=np.float64) + 0.5) * zoom - cy) * mpp
    xs = ((np.arange(j0, j1, dtype=np.float64) + 0.5) * zoom - cx) * mpp
    theta = math.radians(layers.normal_deg)
    nx, ny = math.cos(theta), math.sin(theta)
    u = xs[None, :] * -ny + ys[:, None] * nx  # µm along the surface
    v = xs[None, :] * nx + ys[:, None] * ny  # µm along the inward normal
    membrane = (layers.fill * layers.epi_um - layers.invasion_um) / 2  # nominal, v of the centre
    view, lv = labels[i0:i1, j0:j1], level[i0:i1, j0:j1]
    with np.errstate(invalid="ignore"):  # NaN level: no epithelium above, nothing to paint
        # a pixel belongs to this column's surface when its depth along the axis matches its
        # level (within the ridges' slack, more deep below the membrane), not to another
        # surface's epithelium across a thin fragment
        slack = RIDGE_SLACK * layers.epi_um * (1 + np.maximum(-lv, 0))
        across = (np.abs(u) <= size_um / 2) & (np.abs(v - membrane + lv * layers.epi_um) <= slack)
        epithelium = across & (lv > 0) & (lv <= 1)
        below = across & (lv <= 0) & (view != Tissue.GLASS)
    view[epithelium & (lv <= layers.fill)] = lower
    if upper is not None:
        view[epithelium & (lv > layers.fill)] = upper
    if layers.invasion_um <= 0 or not below.any():
        return
    under = -lv * layers.epi_um  # µm below the membrane
    area = size_um * layers.invasion_um / 1e4
    count = min(MAX_NESTS, max(1, round(NESTS_PER_100_UM_SQUARED * area)))
    nest_u = np.append(rng.uniform(-size_um / 2, size_um / 2, count), 0.0)
    nest_d = np.append(rng.uniform(0, layers.invasion_um, count), 0.0)
    radius = np.append(rng.uniform(*NEST_UM, count), NEST_UM[1])
    nests = np.zeros(below.shape, bool)
    for nu, nd, r in zip(nest_u, nest_d, radius, strict=True):
        nests |= (u - nu) ** 2 + (under - nd) ** 2 <= r * r
    view[below & nests] = lower
