"""How many patches one classifier batch may hold: the batch follows the memory left.

A foundation-size stage 2 (a ViT-g/14 holds ~4.5 GB of float32 weights) leaves far less room
for activations than the shipped MobileNet, and a GPU has less memory than the machine. The
cascade measures one patch's forward pass once (:func:`activation_bytes`), reads the memory
free on the device (:func:`free_memory_bytes`) and caps its classifier batches at
:func:`batch_for_memory` of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def free_memory_bytes(device: torch.device, meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes that new tensors on ``device`` may take now: the CUDA device's free memory, else
    the machine's ``MemAvailable`` (``meminfo``), else its physical memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
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


def activation_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """Working memory of ``model``'s forward pass on ``example`` (its batch as given), bytes,
    measured by running it once without gradients. On CUDA: the allocator's peak above what it
    held before. Elsewhere: the largest inputs-plus-output of any one module call (what must be
    alive together while that call runs; kernels' own scratch memory is not seen)."""
    if example.device.type == "cuda":
        torch.cuda.synchronize(example.device)
        before = torch.cuda.memory_allocated(example.device)
        torch.cuda.reset_peak_memory_stats(example.device)
        with torch.inference_mode():
            model(example)
        torch.cuda.synchronize(example.device)
        return max(int(torch.cuda.max_memory_allocated(example.device) - before), 0)
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
