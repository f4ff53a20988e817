"""The child-process readings that make train-scale, the benchmark and the package runner share."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import psutil

from training.process import high_water_kb, resident_kb

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


MAP = (
    "import numpy, time; a = numpy.ones(120 * 2**20, numpy.uint8); "
    "m = numpy.load({path!r}, mmap_mode='r'); m.sum(); print(1, flush=True); time.sleep(30)"
)


def test_the_resident_set_is_split_into_own_memory_and_mapped_file_pages(tmp_path) -> None:
    path = tmp_path / "mapped.npy"
    np.save(path, np.ones(200 * 2**20, np.uint8))
    proc = _started([sys.executable, "-c", MAP.format(path=str(path))])
    try:
        split = {k: v / 1024 for k, v in resident_kb(proc.pid).items()}
    finally:
        proc.kill()
        proc.wait()
    assert 120 <= split["RssAnon"] < 120 + 150, split  # the array it allocated
    assert 200 <= split["RssFile"] < 200 + 150, split  # the 200 MB file it read through a map
    assert resident_kb(proc.pid) == {}
