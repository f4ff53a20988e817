"""Child processes that every measuring command shares: running ``main.py`` (or a module) and
reading its resident set."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def high_water_kb(pid: int) -> int:
    """The highest peak resident set (``VmHWM`` of ``/proc/<pid>/status``, KiB) of ``pid`` and
    its descendants; 0 once they have ended. Unlike ``wait4``'s ``ru_maxrss``, ``VmHWM`` starts
    afresh at ``exec``, so it does not count the memory the parent held when it forked."""
    try:
        pids = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return 0
    peak = 0
    for each in pids:  # one that ended between the listing and the reading reads {}
        peak = max(peak, resident_kb(each).get("VmHWM", 0))
    return peak


def resident_kb(pid: int) -> dict[str, int]:
    """The resident set of ``pid`` as ``/proc/<pid>/status`` gives it (KiB): its peak ``VmHWM``,
    and now ``RssAnon`` (the process's own memory), ``RssFile`` (file pages mapped, e.g.
    memory-mapped arrays and shared libraries: reclaimable page cache) and ``RssShmem``; empty
    once it has ended."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = ("VmHWM:", "RssAnon:", "RssFile:", "RssShmem:")
    return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith(fields)}


def run_main(
    data: Path,
    out: Path,
    assets: Path,
    device: str,
    *extra: str,
    module: str | None = None,
) -> tuple[int, float, float]:
    """Run ``main.py`` (or ``python -m module``) on ``data`` in its own process, writing
    ``out/submission.csv`` and ``out/maps``; returns (exit status, wall seconds, peak RSS MB).

    The peak is the highest high-water mark (``VmHWM``) of the process and its descendants
    (:func:`training.process.high_water_kb`), read every 50 ms while it runs: ``wait4``'s
    ``ru_maxrss`` would also count this (large) parent's memory at the fork."""
    out.mkdir(parents=True, exist_ok=True)
    if module is None:
        command = [sys.executable, str(REPO / "main.py"), "--data", str(data)]
        command += ["--out", str(out / "submission.csv"), "--save-heatmaps", str(out / "maps")]
    else:
        command = [sys.executable, "-m", module, str(data), str(out)]
    command += ["--assets", str(assets), "--device", device, *extra]
    start = time.monotonic()
    peak_kb = 0
    with open(out / "log.txt", "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
        while process.poll() is None:
            peak_kb = max(peak_kb, high_water_kb(process.pid))
            time.sleep(0.05)
    return process.returncode, time.monotonic() - start, peak_kb / 1024
