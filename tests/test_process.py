"""The child-process readings that make train-scale, the benchmark and the package runner share."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import psutil

from training.process import high_water_kb

HOLD = "import numpy, time; a = numpy.ones({mb} * 2**20, numpy.uint8); print(1, flush=True); time.sleep(30)"  # noqa: E501


def _started(command: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "1"
    return proc


def test_the_peak_of_a_grandchild_is_read_and_the_parents_memory_is_not() -> None:
    held = np.ones(400 * 2**20, np.uint8)  # this process's own 400 MB, inherited by a fork
    tree = _started(["sh", "-c", f"{sys.executable} -c '{HOLD.format(mb=150)}'"])
    try:
        peak = high_water_kb(tree.pid) / 1024
    finally:
        for child in psutil.Process(tree.pid).children(recursive=True):
            child.kill()
        tree.kill()
        tree.wait()
    assert 150 <= peak < 150 + 200, peak  # the python grandchild's 150 MB, not this 400 MB
    assert held[-1] == 1


def test_an_ended_process_reads_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    time.sleep(0.1)
    assert high_water_kb(proc.pid) == 0
