"""Augmentation for both stages, in two parts: per sample (geometry, blur, JPEG) and per batch
(colour, normalisation).

Windows and patches are cut ``crop_factor`` larger than the network input
(:mod:`training.data.cache`), so that rotations and scale jitter leave no borders.

:class:`SampleAugment` runs per sample in the data-loader workers, uint8 throughout:

* one geometric transform, written directly at the input size (the centre crop folded in):
  with probability 0.3 only a flip / 90° rotation (the dihedral group: slides have no
  orientation), an exact pixel permutation; with probability 0.7 that element composed with a
  scale jitter (0.9–1.1, x and y drawn apart) and a rotation (±15°) into one
  ``cv2.warpAffine`` (bilinear for the image, nearest-neighbour for the mask, reflect-101
  border); masks stay aligned;
* blur (out-of-focus areas, p = 0.2) and JPEG compression (slides are JPEG Q75; p = 0.5,
  quality 60–95), on the image only.

:class:`BatchAugment` runs on a whole batch on its device (the GPU when training on one) and
ends with the input normalisation of :func:`stages.nets.to_input`; each sample gets each of
these with probability 0.5, with its own parameters:

* stain variation, as between centres: haematoxylin / eosin / DAB colour deconvolution
  (Ruifrok & Johnston's matrix), each stain's concentration scaled by U(0.7, 1.3) and
  shifted by U(−0.2, 0.2), on tissue only (glass stays as it is): the ranges of
  albumentations' ``HEStain``, whose spread of colour it matches on the test tiles;
* brightness and contrast (``x · (1 ± 0.1) ± 0.1``);
* hue (±8 of OpenCV's 180 units, i.e. ±16°) and saturation (±15 / 255), as OpenCV's HSV.

``python -m training.bench.augment_speed`` times both per sample on one core.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import torch

from stages.nets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_normalisation,
    normalise,
    standardise,
    to_unit,
)

#: Geometry: P(scale + rotation on top of the flip / 90° rotation), and their ranges.
P_AFFINE = 0.7
SCALE = (0.9, 1.1)
ROTATE = 15.0
#: Blur: probability, kernel sizes (3 with probability 1/3, else 5, as albumentations drew
#: ``randint(3, 5)`` and rounded 4 up), sigma range.
P_BLUR = 0.2
BLUR_SIGMA = (0.1, 1.2)
#: JPEG: probability and quality range (inclusive).
P_JPEG = 0.5
JPEG_QUALITY = (60, 95)

#: Stain optical-density vectors (rows: haematoxylin, eosin, DAB) of Ruifrok & Johnston, as in
#: ``skimage.color.rgb2hed``.
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
HED_FROM_RGB = tuple(map(tuple, np.linalg.inv(RGB_FROM_HED).tolist()))
#: Luminosity weights (ITU-R BT.601, as albumentations' tissue mask).
LUMA = (0.299, 0.587, 0.114)
#: Stain jitter: probability, and the range of each stain's concentration scale and shift
#: (optical density in natural-log units, as albumentations' ``HEStain``).
P_STAIN = 0.5
STAIN_SCALE = (0.7, 1.3)
STAIN_SHIFT = (-0.2, 0.2)
#: It applies to tissue: weight 1 below this luminosity band (in [0, 1]), 0 above it,
#: linear within (albumentations used a hard threshold at 0.85).
TISSUE_LUMINOSITY = (0.80, 0.90)
#: Brightness / contrast: ``x · (1 + U(±CONTRAST)) + U(±BRIGHTNESS)`` (albumentations'
#: ``RandomBrightnessContrast``, brightness by max).
P_BRIGHTNESS_CONTRAST = 0.5
BRIGHTNESS = 0.1
CONTRAST = 0.1
#: Hue / saturation: HSV hue turned by U(±HUE), saturation moved by U(±SATURATION), value kept.
P_HUE_SATURATION = 0.5
HUE = 8.0  # OpenCV hue units (180 a turn)
SATURATION = 15.0  # of 255


def _dihedral_inverse(k: int) -> np.ndarray:
    """The 2 × 2 map from output to source (x, y) offsets of dihedral element ``k`` (0–7):
    ``np.rot90`` ``k % 4`` times, then a left-right flip when ``k >= 4``."""
    quarter = np.array([[0.0, -1.0], [1.0, 0.0]])  # np.rot90 once: source = quarter @ output
    inverse = np.linalg.matrix_power(quarter, k % 4)
    return inverse @ np.diag([-1.0, 1.0]) if k >= 4 else inverse


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """``array`` (H, W[, C]) under dihedral element ``k`` (0–7; see :func:`warp`), contiguous."""
    out = np.rot90(array, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def warp(
    image: np.ndarray,
    mask: np.ndarray | None,
    size: int,
    k: int,
    scale: tuple[float, float] = (1.0, 1.0),
    angle: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``(size, size)`` centre of ``image`` (S, S, 3) uint8 and ``mask`` (S, S) uint8 under
    dihedral element ``k``, then the ``scale`` (x, y) and rotation by ``angle`` degrees about the
    centre, as one ``cv2.warpAffine`` (bilinear / nearest-neighbour, reflect-101 border)."""
    side = image.shape[0]
    theta = math.radians(angle)
    unrotate = np.array(
        [[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]]
    )  # R(-angle)
    linear = _dihedral_inverse(k) @ np.diag([1.0 / scale[0], 1.0 / scale[1]]) @ unrotate
    centre_dst = (size - 1) / 2.0
    centre_src = (side - size) // 2 + centre_dst  # that of the eval crop, when S - size is odd
    offset = centre_src - linear @ np.array([centre_dst, centre_dst])
    matrix = np.hstack([linear, offset[:, None]])

    def apply(array: np.ndarray, interpolation: int) -> np.ndarray:
        return cv2.warpAffine(
            np.ascontiguousarray(array),
            matrix,
            (size, size),
            flags=cv2.WARP_INVERSE_MAP | interpolation,
            borderMode=cv2.BORDER_REFLECT_101,
        )

    return apply(image, cv2.INTER_LINEAR), None if mask is None else apply(mask, cv2.INTER_NEAREST)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 RGB through JPEG encoding at ``quality`` and back (encoded as
    RGB, i.e. handed to OpenCV as BGR)."""
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), (cv2.IMWRITE_JPEG_QUALITY, int(quality))
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class SampleAugment:
    """Per-sample, in the data-loader workers, uint8 throughout.

    ``p_affine``, ``p_blur`` and ``p_jpeg`` are the probabilities of the scale / rotation, the
    blur and the JPEG compression (defaults as in the module's docstring).
    """

    def __init__(
        self,
        size: int,
        train: bool,
        *,
        p_affine: float = P_AFFINE,
        p_blur: float = P_BLUR,
        p_jpeg: float = P_JPEG,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size, self.train = size, train
        self.p_affine, self.p_blur, self.p_jpeg = p_affine, p_blur, p_jpeg

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """image (S, S, 3) uint8 (S >= size, the larger crop), mask (S, S) uint8 or None
        -> ((size, size, 3) uint8, (size, size) uint8 or None), both contiguous.

        ``train=False``: the centre crop ``image[o:o + size, o:o + size]``, ``o = (S - size) // 2``.
        ``train=True`` needs ``rng``; each call draws the same number of values from it.
        """
        side = image.shape[0]
        if image.ndim != 3 or image.shape != (side, side, 3) or image.dtype != np.uint8:
            raise ValueError(f"expected (S, S, 3) uint8, got {image.shape} {image.dtype}")
        if side < self.size:
            raise ValueError(f"crop {side} px is smaller than the output {self.size} px")
        if mask is not None and (mask.shape != (side, side) or mask.dtype != np.uint8):
            raise ValueError(f"expected a ({side}, {side}) uint8 mask, got {mask.shape}")
        if self.train and rng is None:
            raise ValueError("SampleAugment(train=True) needs a seeded rng")
        o = (side - self.size) // 2
        centre = slice(o, o + self.size)
        if not self.train:
            crop = np.ascontiguousarray(image[centre, centre])
            return crop, None if mask is None else np.ascontiguousarray(mask[centre, centre])
        assert rng is not None
        u = rng.random(10)
        k = min(int(u[0] * 8), 7)
        if u[1] < self.p_affine:
            scale = (
                SCALE[0] + (SCALE[1] - SCALE[0]) * u[2],
                SCALE[0] + (SCALE[1] - SCALE[0]) * u[3],
            )
            out, out_mask = warp(image, mask, self.size, k, scale, ROTATE * (2 * u[4] - 1))
        else:
            out = dihedral(image[centre, centre], k)
            out_mask = None if mask is None else dihedral(mask[centre, centre], k)
        if u[5] < self.p_blur:
            ksize = 3 if u[6] < 1 / 3 else 5
            sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[7]
            out = cv2.GaussianBlur(out, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT_101)
        if u[8] < self.p_jpeg:
            low, high = JPEG_QUALITY
            out = jpeg(out, low + min(int(u[9] * (high - low + 1)), high - low))
        return out, out_mask


def _on_some(
    x: torch.Tensor, apply: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> None:
    """Write ``fn(x[idx], idx)`` into ``x`` (N, …) in place at ``idx``, the samples where the
    bool ``apply`` (N,) is set; the others are untouched (and not computed)."""
    idx = apply.nonzero().squeeze(1)
    if idx.numel():
        x.index_copy_(0, idx, fn(x.index_select(0, idx), idx))


def shift_hue_saturation(
    x: torch.Tensor, hue_shift: torch.Tensor, saturation_shift: torch.Tensor
) -> torch.Tensor:
    """``x`` (N, 3, H, W) RGB in [0, 1] with its HSV hue turned by ``hue_shift`` (N, 1, 1, 1)
    turns and its saturation moved by ``saturation_shift`` (N, 1, 1, 1) and clipped to [0, 1];
    value kept, greys left grey (OpenCV's HSV definitions, as albumentations' shift)."""
    value = x.amax(dim=1, keepdim=True)
    delta = value - x.amin(dim=1, keepdim=True)
    safe = delta.clamp_min(1e-12)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    hue = torch.where(  # in sextants, [-1, 5)
        value == r,
        g - b,
        torch.where(value == g, (b - r).add_(safe, alpha=2), (r - g).add_(safe, alpha=4)),
    ).div_(safe)
    hue.add_(hue_shift * 6)
    saturation = (delta / value.clamp_min(1e-12)).add_(saturation_shift).clamp_(0, 1)
    chroma = torch.where(delta > 0, saturation.mul_(value), delta)
    # channel c is value - chroma · clamp(min(k, 4 - k), 0, 1), k = (offset_c + hue) mod 6;
    # in place where possible (fresh full-size tensors cost more than the arithmetic on a CPU)
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + hue).remainder_(6)
    ramp = torch.minimum(torch.rsub(k, 4), k, out=k).clamp_(0, 1)
    return ramp.mul_(chroma).neg_().add_(value)


def jitter_stains(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x`` (N, 3, H, W) float32 RGB in [0, 1], contiguous, with each sample's haematoxylin,
    eosin and DAB concentrations ``c`` (Ruifrok & Johnston's deconvolution of the optical
    density ``-ln max(x, 1/255)``) made ``c · scale + shift`` (``scale``, ``shift``: (N, 3)) on
    tissue (weight 1 below luminosity 0.80, 0 above 0.90), in place; clipped to [0, 1]."""
    n, _, h, w = x.shape
    rgb_from_hed = torch.tensor(RGB_FROM_HED, device=x.device)
    hed_from_rgb = torch.tensor(HED_FROM_RGB, device=x.device)
    # the density change, rgb_from_hed^T (diag(scale - 1) hed_from_rgb^T density + shift), as
    # one 3 x 3 matrix and bias per sample
    matrix = (rgb_from_hed.T * (scale - 1)[:, None, :]) @ hed_from_rgb.T  # (N, 3, 3)
    bias = (shift @ rgb_from_hed)[:, :, None]  # (N, 3, 1)
    flat = x.view(n, 3, h * w)
    change = torch.baddbmm(bias, matrix, flat.clamp_min(1 / 255).log_().neg_())
    low, high = TISSUE_LUMINOSITY
    luma = torch.tensor(LUMA, device=x.device).view(1, 1, 3)
    tissue = torch.matmul(luma, flat).sub_(high).div_(low - high).clamp_(0, 1)
    return flat.mul_(change.mul_(tissue).neg_().exp_()).clamp_(0, 1).view(n, 3, h, w)


class BatchAugment(torch.nn.Module):
    """Photometric augmentation and input normalisation of a whole batch, on the batch's device
    (GPU when training on one; CPU otherwise).

    ``p_stain``, ``p_brightness_contrast`` and ``p_hue_saturation`` are the per-sample
    probabilities (defaults as in the module's docstring); ``mean`` / ``std`` default to
    ImageNet's. Only the ``train`` given here decides whether to augment (not
    ``nn.Module.train()`` / ``eval()``).
    """

    def __init__(
        self,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        train: bool = False,
        *,
        p_stain: float = P_STAIN,
        p_brightness_contrast: float = P_BRIGHTNESS_CONTRAST,
        p_hue_saturation: float = P_HUE_SATURATION,
    ) -> None:
        super().__init__()
        check_normalisation(mean, std, "BatchAugment")
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = train
        self.p_stain = p_stain
        self.p_brightness_contrast = p_brightness_contrast
        self.p_hue_saturation = p_hue_saturation

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x (N, H, W, 3) uint8 (channels last) -> (N, 3, H, W) float32 ``(x / 255 - mean) / std``,
        colour-augmented first when ``train``; parameters drawn from ``generator`` (on any
        device; the batch's device's default generator when None)."""
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
            raise ValueError(f"expected (N, H, W, 3) uint8, got {tuple(x.shape)} {x.dtype}")
        if not (self.augment and len(x)):
            return normalise(x, self.mean, self.std)
        # the same values laid out as planes (to_unit then returns a contiguous tensor, whose
        # channel slices are contiguous): cheaper in uint8 here than in float32 later
        unit = to_unit(x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1))
        with torch.autocast(x.device.type, enabled=False):
            self.jitter(unit, generator)
        return standardise(unit, self.mean, self.std)

    def jitter(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Stain, brightness / contrast, then hue / saturation of ``x`` (N, 3, H, W) float32
        RGB in [0, 1], contiguous, in place; each sample gets each with its probability."""
        n = len(x)
        draw_on = generator.device if generator is not None else x.device
        u = torch.rand(n, 13, generator=generator, device=draw_on).to(x.device)

        def between(columns: slice | int, low: float, high: float) -> torch.Tensor:
            return low + (high - low) * u[:, columns]

        hed_scale = between(slice(1, 4), *STAIN_SCALE)
        hed_shift = between(slice(4, 7), *STAIN_SHIFT)
        contrast = between(8, 1 - CONTRAST, 1 + CONTRAST).view(-1, 1, 1, 1)
        brightness = between(9, -BRIGHTNESS, BRIGHTNESS).view(-1, 1, 1, 1)
        hue_shift = between(11, -HUE / 180, HUE / 180).view(-1, 1, 1, 1)
        sat_shift = between(12, -SATURATION / 255, SATURATION / 255).view(-1, 1, 1, 1)

        def stain(xs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return jitter_stains(xs, hed_scale[idx], hed_shift[idx])

        def brightness_contrast(xs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return xs.mul_(contrast[idx]).add_(brightness[idx]).clamp_(0, 1)

        def hue_saturation(xs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return shift_hue_saturation(xs, hue_shift[idx], sat_shift[idx])

        _on_some(x, u[:, 0] < self.p_stain, stain)
        _on_some(x, u[:, 7] < self.p_brightness_contrast, brightness_contrast)
        _on_some(x, u[:, 10] < self.p_hue_saturation, hue_saturation)
