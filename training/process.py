"""Readings of a running child process that every measuring command shares."""

from __future__ import annotations

from pathlib import Path

import psutil


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
