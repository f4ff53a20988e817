"""Stage 1: an smp segmentation network over the tissue of a low-resolution page → lesion heatmap.

The network sees overlapping ``window × window`` windows of the detector page (the page nearest
``target_mpp``, page 4–5 on TissueNet slides), only where the tissue mask has tissue. Its softmax
output (at ``1 / output_stride`` of the window's resolution: an FPN's or a Segformer's is at a
quarter, computed there and never upsampled), average-pooled to ``stride`` detector-page pixels,
is blended into a heatmap ``(C, H, W)`` float32 on that grid. Channel 0 is "no lesion", channel
c ≥ 1 lesion grade c. Unvisited cells hold ``(1, 0, 0, 0)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F  # noqa: N812

from stages.geometry import Box
from stages.nets import IMAGENET_MEAN, IMAGENET_STD, check_normalisation, inference, to_input
from stages.slide import Slide

log = logging.getLogger(__name__)

ARCHS = ("Unet", "UnetPlusPlus", "FPN", "Segformer")
#: Output strides each architecture can give (smp's FPN and Segformer work at a quarter of their
#: input and upsample by ``4 / output_stride``; the U-Nets end at full resolution).
OUTPUT_STRIDES = {"Unet": (1,), "UnetPlusPlus": (1,), "FPN": (1, 2, 4), "Segformer": (1, 2, 4)}


@dataclass(frozen=True)
class DetectorConfig:
    """Detector network and windowing. Sizes are detector-page pixels; ``mean`` / ``std`` are the
    input normalisation the weights were trained with (RGB in [0, 1]).

    ``decoder_channels``: a U-Net's channels per decoder block, finest last; an FPN's
    ``(pyramid, segmentation)`` channels (segmentation a multiple of 32, for its group norm); a
    Segformer's ``(segmentation,)``: each encoder level's 1 × 1 projection, fused by one 1 × 1
    convolution at a quarter of the window (no 3 × 3 or group-normed blocks: on a CPU, several
    times faster than an FPN of the same width).
    ``output_stride``: input pixels per output pixel of the network (:data:`OUTPUT_STRIDES`); it
    divides ``stride``, the heatmap's cell.
    """

    arch: str = "Unet"
    encoder: str = "resnet18"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    classes: int = 4
    target_mpp: float = 4.0
    window: int = 512
    overlap: int = 64
    stride: int = 4
    output_stride: int = 1
    batch_size: int = 4
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: str = "detector.safetensors"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"detector.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.classes < 2:
            raise ValueError("detector.classes must be at least 2")
        if self.window % 32 or self.window <= 0:
            raise ValueError(
                f"detector.window must be a positive multiple of 32, got {self.window}"
            )
        if not 0 <= self.overlap < self.window:
            raise ValueError("detector.overlap must be in [0, window)")
        if self.stride <= 0 or self.window % self.stride or self.overlap % self.stride:
            raise ValueError("detector.stride must divide window and overlap")
        if self.output_stride not in OUTPUT_STRIDES[self.arch] or self.stride % self.output_stride:
            raise ValueError(
                f"detector.output_stride must be one of {OUTPUT_STRIDES[self.arch]} for "
                f"{self.arch} and divide stride {self.stride}, got {self.output_stride}"
            )
        if self.arch == "FPN" and (
            len(self.decoder_channels) != 2 or self.decoder_channels[1] % 32
        ):
            raise ValueError(
                "detector.decoder_channels of an FPN is (pyramid, segmentation), segmentation a "
                f"multiple of 32, got {self.decoder_channels}"
            )
        if self.arch == "Segformer" and len(self.decoder_channels) != 1:
            raise ValueError(
                "detector.decoder_channels of a Segformer is (segmentation,), got "
                f"{self.decoder_channels}"
            )
        if self.target_mpp <= 0 or self.batch_size <= 0:
            raise ValueError("detector.target_mpp and batch_size must be positive")
        check_normalisation(self.mean, self.std, "detector")


@dataclass(frozen=True)
class Heatmap:
    """Lesion heatmap of one slide.

    ``probs``: ``(C, H, W)`` float32 class probabilities; ``tissue``: ``(H, W)`` bool on the same
    grid; ``visited``: ``(H, W)`` bool, cells the network saw; ``scale``: page-0 pixels per heatmap
    cell ``(sx, sy)``; ``page``: the detector page; ``complete``: False when stopped early;
    ``windows``: how many windows the network ran on (its cost is ``windows × window²`` pixels).
    """

    probs: np.ndarray
    tissue: np.ndarray
    visited: np.ndarray
    scale: tuple[float, float]
    page: int
    complete: bool
    windows: int


def heatmap_grid(page_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """``(width, height)`` in cells of the heatmap over a page of ``page_size`` ``(width,
    height)`` px, with cells of ``stride`` page px (the last row/column may be partial)."""
    return math.ceil(page_size[0] / stride), math.ceil(page_size[1] / stride)


def build_detector(config: DetectorConfig) -> torch.nn.Module:
    """The smp model named by ``config``, randomly initialised (``encoder_weights=None``):
    ``(N, 3, w, w)`` float32 in, ``(N, classes, w / output_stride, w / output_stride)`` logits
    out."""
    if config.arch == "FPN":
        pyramid, segmentation = config.decoder_channels
        decoder = {
            "decoder_pyramid_channels": pyramid,
            "decoder_segmentation_channels": segmentation,
            "decoder_dropout": 0.0,
            "upsampling": 4 // config.output_stride,
        }
    elif config.arch == "Segformer":
        decoder = {
            "decoder_segmentation_channels": config.decoder_channels[0],
            "upsampling": 4 // config.output_stride,
        }
    else:
        decoder = {"decoder_channels": config.decoder_channels}
    return smp.create_model(
        config.arch,
        encoder_name=config.encoder,
        encoder_weights=None,
        in_channels=3,
        classes=config.classes,
        **decoder,
    )


def tissue_windows(
    page_size: tuple[int, int],
    page_scale: tuple[float, float],
    mask: np.ndarray,
    mask_scale: tuple[float, float],
    window: int,
    overlap: int,
) -> list[tuple[int, int]]:
    """Top-left corners (detector-page px) of the windows that hold tissue, row-major.

    Windows step by ``window - overlap`` from (0, 0); the last row/column is shifted back to end at
    the page edge (so no window is mostly outside the page). ``mask`` is ``(h, w)`` bool whose
    pixels are ``mask_scale`` page-0 px; a window is kept when its footprint on the mask holds at
    least one tissue pixel.
    """
    width, height = page_size

    def starts(length: int) -> list[int]:
        if length <= window:
            return [0]
        step = window - overlap
        positions = list(range(0, length - window, step))
        return [*positions, length - window]

    ratio_x = page_scale[0] / mask_scale[0]
    ratio_y = page_scale[1] / mask_scale[1]
    kept = []
    for top in starts(height):
        y0, y1 = int(top * ratio_y), math.ceil((top + window) * ratio_y)
        for left in starts(width):
            x0, x1 = int(left * ratio_x), math.ceil((left + window) * ratio_x)
            if mask[y0:y1, x0:x1].any():
                kept.append((left, top))
    return kept


def read_windows(
    slide: Slide, page: int, corners: Sequence[tuple[int, int]], window: int
) -> np.ndarray:
    """``(N, window, window, 3)`` uint8 pixels of ``page`` at the windows' top-left ``corners``
    (detector-page px), each run of touching windows in a row read as one strip, so the columns
    that neighbours share are decoded once. Outside the page is white."""
    out = np.empty((len(corners), window, window, 3), np.uint8)
    sx, sy = slide.pages[page].scale
    i = 0
    while i < len(corners):
        j = i + 1  # extend the run while the next window is in the same row and touches this one
        while (
            j < len(corners)
            and corners[j][1] == corners[i][1]
            and corners[j][0] <= corners[j - 1][0] + window
        ):
            j += 1
        left, top = corners[i]
        width = corners[j - 1][0] + window - left
        strip = slide.read_region(Box(left * sx, top * sy, width * sx, window * sy), page)
        for n in range(i, j):
            x = corners[n][0] - left
            out[n] = strip[:, x : x + window]
        i = j
    return out


def predict_heatmap(
    model: torch.nn.Module,
    slide: Slide,
    page: int,
    mask: np.ndarray,
    mask_scale: tuple[float, float],
    config: DetectorConfig,
    device: torch.device,
    should_stop: Callable[[int], bool] = lambda windows: False,
    prefetched: np.ndarray | None = None,
    autocast: torch.dtype | None = None,
    corners: Sequence[tuple[int, int]] | None = None,
) -> Heatmap:
    """Run the detector over the tissue windows of ``page``; see :class:`Heatmap`.

    ``corners``: those windows (:func:`tissue_windows` of ``mask`` on ``page``) when the caller
    has listed them already (listed here otherwise). ``prefetched``: pixels of the first of them
    (as :func:`read_windows` gives them) read ahead of time; the others are read batch by batch.
    ``autocast``: the dtype the network runs in (None: float32). Memory is bounded by one batch
    of windows (plus ``prefetched``) and the heatmap itself;
    ``should_stop`` is asked before each batch, with the batch's number of windows, and ends the
    pass early (``complete=False``).
    """
    info = slide.pages[page]
    stride, window = config.stride, config.window
    grid_w, grid_h = heatmap_grid(info.size, stride)
    total = np.zeros((config.classes, grid_h, grid_w), np.float32)
    weight = np.zeros((grid_h, grid_w), np.float32)
    if corners is None:
        corners = tissue_windows(info.size, info.scale, mask, mask_scale, window, config.overlap)
    pool = stride // config.output_stride
    ready = 0 if prefetched is None else len(prefetched)
    if ready > len(corners):
        raise ValueError(f"{ready} prefetched windows for {len(corners)} tissue windows")
    complete = True
    done = 0
    model.eval()
    for start in range(0, len(corners), config.batch_size):
        if should_stop(min(config.batch_size, len(corners) - start)):
            complete = False
            log.warning(
                "%s: detector stopped by the budget after %d of %d windows",
                slide.path.name,
                start,
                len(corners),
            )
            break
        batch = corners[start : start + config.batch_size]
        end = start + len(batch)
        if end <= ready:
            pixels = prefetched[start:end]
        else:
            fresh = read_windows(slide, page, corners[max(start, ready) : end], window)
            pixels = np.concatenate([prefetched[start:ready], fresh]) if start < ready else fresh
        with inference(device, autocast):
            logits = model(to_input(pixels, device, config.mean, config.std))
            if logits.shape[-1] * config.output_stride != window:
                raise ValueError(
                    f"detector output {tuple(logits.shape)} for {window} px windows: not "
                    f"output_stride {config.output_stride}"
                )
            pooled = F.avg_pool2d(logits.float().softmax(dim=1), pool).cpu().numpy()
        cells = window // stride
        for (x, y), out in zip(batch, pooled, strict=True):
            gx, gy = x // stride, y // stride
            h, w = min(cells, grid_h - gy), min(cells, grid_w - gx)
            total[:, gy : gy + h, gx : gx + w] += out[:, :h, :w]
            weight[gy : gy + h, gx : gx + w] += 1.0
        done += len(batch)
    visited = weight > 0
    probs = np.divide(total, np.maximum(weight, 1.0), out=total)  # unvisited cells: all 0 …
    probs[0][~visited] = 1.0  # … but "no lesion"
    tissue = cv2.resize(mask.astype(np.uint8), (grid_w, grid_h), interpolation=cv2.INTER_NEAREST)
    return Heatmap(
        probs=probs,
        tissue=tissue.astype(bool),
        visited=visited,
        scale=(info.scale[0] * stride, info.scale[1] * stride),
        page=page,
        complete=complete,
        windows=done,
    )
