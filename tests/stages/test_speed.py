"""The speed changes, by behaviour: strip reads, precision choice, stage clocks, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FakeClock

from stages import record
from stages.cascade import StageClock
from stages.detector import read_windows
from stages.geometry import Box
from stages.nets import AssetsError, cpu_has_bf16, pick_precision
from stages.slide import ReadStats, Slide


def test_strip_reads_equal_window_reads_and_decode_shared_columns_once(slide_path: Path) -> None:
    window, page = 64, 2
    with Slide(slide_path, mpp=0.25) as slide:
        width, height = slide.pages[page].size
        # a run of three overlapping windows, a lone one after a gap, one past the right edge,
        # and a second row
        corners = [(0, 0), (48, 0), (96, 0), (300, 0), (width - 20, 0), (0, 48)]
        strips = read_windows(slide, page, corners, window)
        read = slide.reads.pixels
        sx, sy = slide.pages[page].scale
        singles = np.stack(
            [
                slide.read_region(Box(x * sx, y * sy, window * sx, window * sy), page)
                for x, y in corners
            ]
        )
        single_read = slide.reads.pixels - read
    assert height > 2 * window
    np.testing.assert_array_equal(strips, singles)
    assert (strips[4, :, 20:] == 255).all()  # outside the page is glass
    # strips: 160 + 64 + 20 + 64 columns of 64 rows; windows one by one: 5 × 64 + 20 columns
    assert read == (160 + 64 + 20 + 64) * window
    assert single_read == (5 * 64 + 20) * window


def test_precision_auto_is_half_on_gpu_bfloat16_on_capable_cpus_else_float32() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert pick_precision(gpu) is torch.float16
    assert pick_precision(cpu, cpu_bf16=True) is torch.bfloat16
    assert pick_precision(cpu, cpu_bf16=False) is None
    assert pick_precision(cpu, "float32", cpu_bf16=True) is None
    assert pick_precision(cpu, "bfloat16", cpu_bf16=False) is torch.bfloat16
    with pytest.raises(AssetsError, match="precision must be one of"):
        pick_precision(cpu, "int8")
    assert cpu_has_bf16("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16("flags : sse amx_bf16 amx_tile")
    assert not cpu_has_bf16("flags : fpu avx2 avx512f\nbugs : avx512_bf16_fake")


class FakeSlide:
    def __init__(self) -> None:
        self.reads = ReadStats()


def test_stage_clock_counts_reads_once_as_decode() -> None:
    now = FakeClock(0.0)
    slide = FakeSlide()
    clock = StageClock(slide, {"tissue": 0.5}, clock=now)  # type: ignore[arg-type]
    with clock.stage("detector"):
        now.advance(3.0)
        slide.reads.add(1.0, 1000)  # one second of it was spent reading pixels
    with clock.stage("detector"):
        now.advance(0.5)
    with clock.stage("classifier"):
        now.advance(0.25)
        slide.reads.add(0.125, 10)
    assert clock.finish() == {"tissue": 0.5, "detector": 2.5, "classifier": 0.125, "decode": 1.125}


def test_checkpoints_are_skipped_only_while_they_would_cost_too_much(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    now = FakeClock(100.0)

    def table(quiet: bool) -> None:
        now.advance(0.01)  # every write takes 10 ms

    monkeypatch.setattr(record.time, "monotonic", now)
    monkeypatch.setattr(record, "write_submission", lambda table, out, quiet, fmt: None)
    checkpoint = record.Checkpoint(table, tmp_path / "submission.csv")
    checkpoint.maybe_write()
    assert checkpoint.writes == 1
    now.advance(0.49)  # 10 ms / 2 % = 0.5 s must pass before the next
    checkpoint.maybe_write()
    assert checkpoint.writes == 1
    now.advance(0.02)
    checkpoint.maybe_write()
    assert checkpoint.writes == 2 and checkpoint.seconds == pytest.approx(0.02)
    checkpoint.write(quiet=False)  # the final write is never skipped
    assert checkpoint.writes == 3
