"""Page 0 of a synthetic slide, composed lazily in pyvips and written as a competition TIFF.

The label map is zoomed to page 0, the texture tiles replicated, ``case`` picks a texture per
pixel, and blends add the tissue edge, blur patches and artefacts; the result streams to a
pyramidal TIFF (512 × 512 JPEG Q75 tiles), so a 20k × 20k slide takes seconds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pyvips

from training.data.convert import JPEG_QUALITY, save_competition_tiff
from training.data.synthetic.maps import render_maps
from training.data.synthetic.spec import SlideSpec, Tissue
from training.data.synthetic.textures import texture_bank

log = logging.getLogger(__name__)

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
    if spec.centre is not None and spec.centre.blur_um > 0:  # the centre's scanner optics
        image = image.gaussblur(spec.centre.blur_um / spec.mpp, precision="integer")
    return image


def write_slide(path: str | Path, spec: SlideSpec) -> Path:
    """Render ``spec`` and write it to ``path`` (a pyramidal JPEG TIFF; a temporary name until
    it is complete, so an interrupted write leaves no partial slide); returns ``path``."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        quality = JPEG_QUALITY if spec.centre is None else spec.centre.jpeg_quality
        save_competition_tiff(compose(spec), partial, spec.mpp, quality)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    log.info("wrote %s (%dx%d px, class %d)", path.name, spec.width, spec.height, spec.label)
    return path
