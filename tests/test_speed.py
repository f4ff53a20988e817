"""The speed changes, by behaviour: strip reads, precision choice, stage clocks, checkpoints."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from stages import runtime
from stages.cascade import StageClock
from stages.detector import read_windows
from stages.geometry import Box
from stages.nets import AssetsError, cpu_has_bf16, pick_precision
from stages.slide import ReadStats, Slide
from stages.submission import read_table
from training.data.synthetic import SynthConfig, generate_dataset
from training.pack.export import init_assets


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    generate_dataset(data, 1, seed=51, split="test", config=SynthConfig(size_range=(6000, 7000)))
    return next(data.glob("*.tif"))


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
    now = [0.0]
    slide = FakeSlide()
    clock = StageClock(slide, {"tissue": 0.5}, clock=lambda: now[0])  # type: ignore[arg-type]
    with clock.stage("detector"):
        now[0] += 3.0
        slide.reads.add(1.0, 1000)  # one second of it was spent reading pixels
    with clock.stage("detector"):
        now[0] += 0.5
    with clock.stage("classifier"):
        now[0] += 0.25
        slide.reads.add(0.125, 10)
    assert clock.finish() == {"tissue": 0.5, "detector": 2.5, "classifier": 0.125, "decode": 1.125}


def test_checkpoints_are_skipped_only_while_they_would_cost_too_much(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    now = [100.0]

    def table(quiet: bool) -> None:
        now[0] += 0.01  # every write takes 10 ms

    monkeypatch.setattr(runtime.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(runtime, "write_submission", lambda table, out, quiet: None)
    checkpoint = runtime.Checkpoint(table, tmp_path / "submission.csv")
    checkpoint.maybe_write()
    assert checkpoint.writes == 1
    now[0] += 0.49  # 10 ms / 2 % = 0.5 s must pass before the next
    checkpoint.maybe_write()
    assert checkpoint.writes == 1
    now[0] += 0.02
    checkpoint.maybe_write()
    assert checkpoint.writes == 2 and checkpoint.seconds == pytest.approx(0.02)
    checkpoint.write(quiet=False)  # the final write is never skipped
    assert checkpoint.writes == 3


@pytest.mark.slow
def test_a_run_killed_after_a_slide_keeps_that_slide_row(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, 3, seed=52, split="test")
    names = list(read_table(data / "submission_format.csv")["filename"])
    assets = init_assets(tmp_path / "assets")
    out = tmp_path / "submission.csv"
    # the second slide hangs; the first one's row must be on disk before the kill
    script = (
        "import sys, time; sys.argv[0] = 'main.py'; sys.path.insert(0, sys.argv[1]);"
        "import stages.cascade as c; grade = c.Cascade.grade_slide;"
        f"c.Cascade.grade_slide = lambda self, path, *a, **k: time.sleep(3600) "
        f"if path.name == {names[1]!r} else grade(self, path, *a, **k);"
        "import main; sys.exit(main.main(sys.argv[2:]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(REPO), "--data", str(data), "--out", str(out)]
        + ["--assets", str(assets), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    graded = None
    deadline = time.monotonic() + 120
    assert process.stdout is not None
    for line in process.stdout:
        if f"[1/3] {names[0]}: class" in line:
            graded = int(line.split(": class ")[1].split()[0])
            break
        assert time.monotonic() < deadline, "the first slide was never graded"
    time.sleep(0.5)  # the row is written right after the log line
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    submission = read_table(out).set_index("filename")
    assert graded is not None
    assert int(np.argmax(submission.loc[names[0], ["0", "1", "2", "3"]].to_numpy())) == graded
    assert len(submission) == 3
