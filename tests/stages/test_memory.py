"""The classifier's batch follows the memory left (stages.memory), in the cascade too."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import stages.classifier
from stages.budget import RunBudget
from stages.cascade import Cascade
from stages.config import load_assets
from stages.memory import (
    activation_bytes,
    batch_for_memory,
    free_memory_bytes,
    marginal_bytes,
)


def test_batch_for_memory_takes_its_fraction_of_the_free_bytes() -> None:
    assert batch_for_memory(1000, 100, most=8) == 2  # a quarter of 1000 B holds two 100 B items
    assert batch_for_memory(1000, 100, most=8, fraction=1.0) == 8  # 10, capped at most
    assert batch_for_memory(10**9, 100, most=32) == 32
    assert batch_for_memory(1000, 10**6, most=8) == 1  # never below one item
    assert batch_for_memory(1000, 0, most=8) == 8
    with pytest.raises(ValueError, match="fraction"):
        batch_for_memory(1000, 100, most=0)


def test_free_memory_is_memavailable_else_the_physical_memory(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8192 kB\nMemAvailable:   2048 kB\n")
    assert free_memory_bytes(torch.device("cpu"), meminfo) == 2048 * 1024
    physical = free_memory_bytes(torch.device("cpu"), tmp_path / "absent")
    assert physical > 2**28  # this machine's RAM


def test_a_patch_is_charged_only_what_grows_with_the_batch() -> None:
    """CUDA peaks of a ViT-g-like pass: 2.25 GB of autocast's weight copies whatever the batch,
    plus 0.3 GB a patch. Charged to one patch (the old probe), the copies made it 2.55 GB."""
    copies, patch = 2_250_000_000, 300_000_000
    assert marginal_bytes((1, copies + patch), (2, copies + 2 * patch)) == patch
    assert marginal_bytes((4, copies + 4 * patch), (8, copies + 8 * patch)) == patch
    assert marginal_bytes((2, 1000), (1, 990)) == 10  # in either order
    assert marginal_bytes((1, 1000), (4, 1001)) == 1  # rounded up
    assert marginal_bytes((1, 1000), (2, 900)) == 0  # never negative (allocator noise)
    with pytest.raises(ValueError, match="different"):
        marginal_bytes((2, 1000), (2, 2000))
    # a 16 GB GPU with the ViT-g's 4.5 GB of float32 weights loaded: 11.5 GB free
    free = 11_500_000_000
    assert batch_for_memory(free, copies + patch, most=32) == 1
    per_patch = marginal_bytes((1, copies + patch), (2, copies + 2 * patch))
    assert batch_for_memory(free, per_patch, most=32) == 9  # 2.875 GB hold nine 0.3 GB patches


def test_cuda_free_memory_counts_the_allocators_unused_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (5_000, 16_000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3_000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1_000)
    assert free_memory_bytes(cuda) == 5_000 + 2_000


def test_activation_bytes_is_the_largest_call_of_the_pass() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1))
    x = torch.zeros(1, 3, 16, 16)
    # the whole pass: input 3×16×16 + pooled 8 floats; the conv: input + its 8×16×16 output
    assert activation_bytes(conv, x) == (3 * 256 + 8 * 256) * 4
    assert activation_bytes(conv, torch.zeros(2, 3, 16, 16)) == 2 * (3 * 256 + 8 * 256) * 4


class CountingClassifier(nn.Module):
    """The classifier, recording the batch size of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.model(x)


def test_short_memory_makes_the_cascade_grade_in_smaller_batches(
    assets: Path, slide_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_assets(assets, torch.device("cpu"))
    loaded = replace(loaded, classifier=CountingClassifier(loaded.classifier))
    roomy = Cascade(loaded)
    assert roomy.patch_batch == loaded.config.budget.batch_size == 8
    per_patch = activation_bytes(
        loaded.classifier,
        torch.zeros(1, 3, loaded.config.classifier.patch, loaded.config.classifier.patch),
    )
    # room for three patches' activations in the quarter of free memory the batch may use
    monkeypatch.setattr(stages.classifier, "free_memory_bytes", lambda device: 4 * 3 * per_patch)
    short = Cascade(loaded)
    assert short.patch_batch == 3
    for cascade, most in ((roomy, 8), (short, 3)):
        loaded.classifier.sizes.clear()
        budget = RunBudget(3600, 1, cascade.config.budget)
        result = cascade.grade_slide(slide_path, None, budget.start_slide(), budget.costs)
        sizes = loaded.classifier.sizes
        assert len(result.grades) > most  # the test can fail: more patches than one batch
        # every batch runs at the warmed-up shape, the last one padded by less than a batch
        assert set(sizes) == {most} and 0 <= sum(sizes) - len(result.grades) < most
