"""The two floors a grading mode is measured against: decoding alone, and arithmetic alone.

* **I/O floor** (:func:`decode_floor`): the seconds libvips takes to decode only the pixels a
  run read on one slide (its tissue page, the detector windows it ran, the patches it graded),
  read again with the same functions and nothing else running.
* **Compute floor** (:func:`compute_floor`): the networks' floating-point operations on those
  windows and patches (:func:`network_flops`, counted by ``torch.utils.flop_counter``) divided by
  the machine's measured matrix-multiply throughput (:func:`matmul_gflops`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from stages.classifier import read_patches
from stages.config import Assets
from stages.detector import read_windows, tissue_windows
from stages.result import SlideResult
from stages.slide import Slide


def matmul_gflops(size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best measured GFLOP/s of a ``size``² matrix product on ``device``: float32 with torch's
    own threads on a CPU; float16 (the networks' dtype there) on a GPU, synchronised."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))

    def product() -> float:
        start = time.perf_counter()
        torch.mm(a, b)
        if a.is_cuda:
            torch.cuda.synchronize(a.device)
        return time.perf_counter() - start

    product()  # warm-up
    return 2 * size**3 / min(product() for _ in range(repeats)) / 1e9


def network_flops(assets: Assets) -> tuple[float, float]:
    """Floating-point operations of one detector window and of one classifier patch (inference,
    on the CPU, multiply and add counted apart)."""
    config = assets.config
    out = []
    for model, size in (
        (assets.detector, config.detector.window),
        (assets.classifier, config.classifier.patch),
    ):
        model = model.to("cpu").eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            model(torch.zeros(1, 3, size, size))
        out.append(float(counter.get_total_flops()))
    return out[0], out[1]


def compute_floor(windows: int, patches: int, flops: tuple[float, float], gflops: float) -> float:
    """Seconds of arithmetic for ``windows`` detector windows and ``patches`` graded patches."""
    return (windows * flops[0] + patches * flops[1]) / (gflops * 1e9)


def decode_floor(result: SlideResult, path: Path, mpp: float | None, assets: Assets) -> float:
    """Seconds to decode again exactly the regions the cascade read for ``result``: the tissue
    page whole, the first ``heatmap.windows`` tissue windows of the detector page (as strips),
    and the patches of the graded hotspots."""
    config = assets.config
    with Slide(
        path,
        mpp=mpp,
        default_mpp=config.default_mpp,
        max_page_pixels=config.tissue.max_page_pixels,
    ) as slide:
        start = time.perf_counter()
        if "tissue" in result.pages:
            slide.read_page(result.pages["tissue"], config.tissue.max_page_pixels)
        heatmap = result.heatmap
        if heatmap is not None and heatmap.windows and result.tissue is not None:
            info = slide.pages[heatmap.page]
            corners = tissue_windows(
                info.size,
                info.scale,
                result.tissue,
                result.tissue_scale,
                config.detector.window,
                config.detector.overlap,
            )[: heatmap.windows]
            read_windows(slide, heatmap.page, corners, config.detector.window)
        graded = result.hotspots[: len(result.grades)]
        if graded:
            centers = [h.box.center for h in graded]
            read_patches(slide, centers, result.pages["classifier"], config.classifier.patch)
        return time.perf_counter() - start
