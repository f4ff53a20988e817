"""How many patches one classifier batch may hold: the batch follows the memory left.

A foundation-size stage 2 (a ViT-g/14 holds ~4.5 GB of float32 weights) leaves far less room
for activations than the shipped MobileNet, and a GPU has less memory than the machine. The
cascade measures one patch's forward pass once (:func:`activation_bytes`), reads the memory
free on the device (:func:`free_memory_bytes`) and caps its classifier batches at
:func:`batch_for_memory` of them.

On CUDA a pass also allocates what does not grow with the batch: under autocast, the
half-precision copies of the weights (2.25 GB for a ViT-g, cached for the autocast region),
and the kernels' workspaces. Charged to one patch, they gave a ViT-g batches of one on a 16 GB
GPU; so a patch's cost there is the growth of the peak from one batch size to twice it, after a
warm-up pass (:func:`marginal_bytes`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn


def free_memory_bytes(device: torch.device, meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes that new tensors on ``device`` may take now: on CUDA, the device's free memory
    plus what torch's caching allocator holds unused (its blocks serve new tensors first); else
    the machine's ``MemAvailable`` (``meminfo``), else its physical memory."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0] + max(cached, 0))
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _tensor_bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0


def marginal_bytes(small: tuple[int, int], large: tuple[int, int]) -> int:
    """Bytes each item adds to a pass, from two passes' ``(items, peak bytes)`` with different
    item counts: the growth of the peak over the growth of the items, rounded up, at least 0.
    What both passes hold whatever their size (cached weight casts, workspaces) cancels out."""
    (n_small, peak_small), (n_large, peak_large) = small, large
    if n_large == n_small:
        raise ValueError(f"need two different item counts, got {n_small} twice")
    return max(math.ceil((peak_large - peak_small) / (n_large - n_small)), 0)


def _cuda_peak(model: nn.Module, batch: torch.Tensor) -> int:
    """Bytes the allocator's peak rose above what it held during ``model(batch)``, the batch's
    own bytes included (it is part of what the pass needs)."""
    torch.cuda.synchronize(batch.device)
    before = torch.cuda.memory_allocated(batch.device)
    torch.cuda.reset_peak_memory_stats(batch.device)
    with torch.inference_mode():
        model(batch)
    torch.cuda.synchronize(batch.device)
    return int(torch.cuda.max_memory_allocated(batch.device) - before) + _tensor_bytes(batch)


def activation_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """Working memory of ``model``'s forward pass on ``example`` (its batch as given), bytes,
    measured by running it without gradients. On CUDA: after a warm-up pass, ``len(example)``
    times :func:`marginal_bytes` of the allocator's peaks on ``example`` and on it twice over,
    so that one-time allocations (autocast's weight casts when called inside the autocast
    region, workspaces) are not counted as the batch's. Elsewhere: the largest
    inputs-plus-output of any one module call (what must be alive together while that call
    runs; kernels' own scratch memory is not seen)."""
    if example.device.type == "cuda":
        with torch.inference_mode():
            model(example)  # the warm-up: what a first pass allocates once
        double = torch.cat([example, example])
        peaks = [(len(batch), _cuda_peak(model, batch)) for batch in (example, double)]
        return len(example) * marginal_bytes(*peaks)
    peak = 0

    def record(module: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal peak
        peak = max(peak, _tensor_bytes(inputs) + _tensor_bytes(output))

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return peak


def batch_for_memory(
    free_bytes: int, per_item_bytes: int, most: int, fraction: float = 0.25
) -> int:
    """Items per batch: as many as ``fraction`` of ``free_bytes`` holds at ``per_item_bytes``
    each, from 1 (always at least one item) to ``most``. The fraction leaves room for what the
    measurement does not see (allocator slack, kernels' scratch, the detector, decoded pages)."""
    if most < 1 or per_item_bytes < 0 or free_bytes < 0 or not 0 < fraction <= 1:
        raise ValueError(
            f"need most >= 1, bytes >= 0 and 0 < fraction <= 1, got {most}, "
            f"{per_item_bytes}, {free_bytes}, {fraction}"
        )
    if per_item_bytes == 0:
        return most
    return max(1, min(most, int(free_bytes * fraction) // per_item_bytes))
