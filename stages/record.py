"""What a run keeps and writes besides grading: the outcome of every slide
(:class:`RunReport`), the submission rewritten as slides finish (:class:`Checkpoint`), one log
line per slide (:func:`log_slide`) and the ``--save-heatmaps`` files (:func:`save_result`).
:mod:`stages.runtime` drives them."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from stages.geojson import DEFAULT_LEVELS, result_features, write_geojson
from stages.result import SlideResult
from stages.submission import write_submission

log = logging.getLogger(__name__)

#: Most of the run's time the provisional submission's rewrites may take.
CHECKPOINT_SHARE = 0.02


@dataclass(frozen=True)
class Outcome:
    """What the run keeps of a graded slide: its class, the decision's source, whether it was
    degraded and why it failed. (The arrays of its :class:`SlideResult` are dropped once it
    is saved: kept for every slide, they would grow with the run, by about 50 MB a
    real-size slide.)"""

    cls: int
    source: str
    degraded: bool
    errors: tuple[str, ...]

    @classmethod
    def of(cls, result: SlideResult) -> Outcome:
        return cls(result.cls, result.source, result.degraded, tuple(result.errors))


@dataclass
class RunReport:
    """What a run did: the outcome per slide, which slides got the fallback, and timings."""

    results: dict[str, Outcome] = field(default_factory=dict)
    not_started: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    current: str | None = None
    timed_out: bool = False
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: SlideResult) -> None:
        """Record a graded slide's outcome (called by the worker while the main thread may
        read)."""
        with self.lock:
            self.results[result.filename] = Outcome.of(result)

    def classes(self) -> dict[str, int]:
        """Filename → class of every slide recorded so far (a consistent snapshot)."""
        with self.lock:
            return {name: r.cls for name, r in self.results.items()}

    def log_summary(self, total: int, fallback: int) -> None:
        with self.lock:
            self._log_summary(total, fallback)

    def _log_summary(self, total: int, fallback: int) -> None:
        classes = Counter(r.cls for r in self.results.values())
        classes[fallback] += total - len(self.results)
        failed = [name for name, r in self.results.items() if r.source == "fallback"]
        degraded = [n for n, r in self.results.items() if r.degraded and r.source != "fallback"]
        log.info(
            "done: %d slides in %.1f s; classes %s; graded %d, failed %d, degraded %d, "
            "skipped by the budget %d, not started %d%s",
            total,
            self.seconds,
            {c: classes.get(c, 0) for c in range(4)},
            len(self.results) - len(failed),
            len(failed),
            len(degraded),
            len(self.skipped),
            len(self.not_started),
            " (time limit reached)" if self.timed_out else "",
        )
        for name in failed:
            log.info("failed: %s: %s", name, "; ".join(self.results[name].errors))


def hms(seconds: float) -> str:
    """``H:MM:SS`` of ``seconds`` (rounded, ≥ 0)."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Checkpoint:
    """Atomic rewrites of the submission ``out`` from ``table(quiet)``, checked against the
    format ``fmt``, thread-safe; :meth:`maybe_write` keeps their cost under
    :data:`CHECKPOINT_SHARE` of the time passing."""

    def __init__(
        self, table: Callable[[bool], pd.DataFrame], out: Path, fmt: pd.DataFrame | None = None
    ) -> None:
        self._table = table
        self._out = out
        self._fmt = fmt
        self._lock = threading.Lock()
        self._last_end = -math.inf
        self._last_cost = 0.0
        self.writes = 0
        self.seconds = 0.0

    def write(self, quiet: bool = True) -> None:
        """Rewrite the file now (``quiet``: a provisional rewrite, logged at debug level)."""
        with self._lock:
            start = time.monotonic()
            write_submission(self._table(quiet), self._out, quiet=quiet, fmt=self._fmt)
            self._last_end = time.monotonic()
            self._last_cost = self._last_end - start
            self.writes += 1
            self.seconds += self._last_cost

    def maybe_write(self) -> None:
        """Rewrite the file unless the last rewrite was too recent for its cost."""
        if time.monotonic() - self._last_end >= self._last_cost / CHECKPOINT_SHARE:
            self.write()


def save_result(
    result: SlideResult, directory: Path, contour_levels: tuple[float, ...] = DEFAULT_LEVELS
) -> None:
    """What ``--save-heatmaps`` writes for a slide into ``directory``: ``<stem>.npz`` and
    ``<stem>.json`` (:meth:`SlideResult.save`) and, unless it got the fallback, ``<stem>.geojson``
    for QuPath with the heatmap outlined at ``contour_levels``."""
    result.save(directory)
    if result.source != "fallback":
        stem = Path(result.filename).stem
        write_geojson(result_features(result, contour_levels), directory / f"{stem}.geojson")


def log_unlisted(data: Path, listed: set[str], format_name: str) -> None:
    """Warn about slide files of ``data`` the format (``format_name``) does not list, and about
    listed slides missing from it."""
    if not data.is_dir():
        return
    present = {p.name for p in data.iterdir() if p.suffix.lower() in (".tif", ".tiff")}
    unlisted, missing = sorted(present - listed), sorted(listed - present)
    if unlisted:
        log.warning(
            "ignoring %d slide files not in %s: %s", len(unlisted), format_name, unlisted[:5]
        )
    if missing:
        log.warning("%d listed slides are missing from %s: %s", len(missing), data, missing[:5])


def log_slide(i: int, total: int, result: SlideResult, time_left: float, elapsed: float) -> None:
    """The result line of slide ``i`` (0-based) of ``total``: class, source, hotspots, seconds by
    stage, ``time_left`` in the run and the ETA from ``elapsed``; or its failure."""
    eta = elapsed / (i + 1) * (total - i - 1)
    if result.source == "fallback":
        log.error(
            "[%d/%d] %s: FAILED (%s) -> fallback class %d",
            i + 1,
            total,
            result.filename,
            "; ".join(result.errors),
            result.cls,
        )
        return
    s = result.seconds
    log.info(
        "[%d/%d] %s: class %d from %s, %d/%d hotspots graded, %.1f s (decode %.1f, tissue %.1f, "
        "detector %.1f, classifier %.1f)%s; time left %s, ETA %s",
        i + 1,
        total,
        result.filename,
        result.cls,
        result.source,
        len(result.grades),
        len(result.hotspots),
        s.get("total", 0.0),
        s.get("decode", 0.0),
        s.get("tissue", 0.0),
        s.get("detector", 0.0),
        s.get("classifier", 0.0),
        f" DEGRADED: {'; '.join(result.problems())}" if result.degraded else "",
        hms(time_left),
        hms(eta),
    )
