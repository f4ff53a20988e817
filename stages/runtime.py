"""The runtime job: every slide of ``data/`` through the cascade into ``submission.csv``.

Guarantees, in order of priority:

1. A run-wide problem (no ``submission_format.csv``, bad assets) is reported once, clearly,
   before any slide is read, with a non-zero exit status.
2. A complete, valid submission exists from the start: a provisional file with every row at the
   fallback class is written before the first slide, and rewritten as slides are graded.
3. One bad slide costs only its own row (fallback class, error logged with the filename).
4. The run ends within the time limit: slides share it through :class:`stages.budget.RunBudget`;
   slides not started in time get the fallback class; a slide stuck past the hard end is
   abandoned by a watchdog, which writes the file and exits.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyvips

from stages.budget import RunBudget
from stages.cascade import Cascade, SlideResult, fallback_result
from stages.config import load_assets
from stages.decision import Decision, decide_slide
from stages.nets import AssetsError, pick_device
from stages.submission import (
    SubmissionError,
    build_submission,
    read_metadata,
    read_table,
    write_submission,
)

log = logging.getLogger(__name__)

FORMAT_NAME = "submission_format.csv"
METADATA_NAME = "test_metadata.csv"
#: The competition's limit for the whole run.
DEFAULT_TIME_LIMIT_S = 16 * 3600.0
TIME_LIMIT_ENV = "TISSUENET_TIME_LIMIT"
#: Rewrite the provisional submission at most this often while grading.
CHECKPOINT_EVERY_S = 60.0
#: libvips' operation cache is bounded so that a huge slide cannot grow it.
VIPS_CACHE_MB = 256


@dataclass
class RunReport:
    """What a run did: results per slide, which slides got the fallback, and timings."""

    results: dict[str, SlideResult] = field(default_factory=dict)
    not_started: list[str] = field(default_factory=list)
    current: str | None = None
    timed_out: bool = False
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: SlideResult) -> None:
        """Record a graded slide (called by the worker while the main thread may read)."""
        with self.lock:
            self.results[result.filename] = result

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
            "not started %d%s",
            total,
            self.seconds,
            {c: classes.get(c, 0) for c in range(4)},
            len(self.results) - len(failed),
            len(failed),
            len(degraded),
            len(self.not_started),
            " (time limit reached)" if self.timed_out else "",
        )
        for name in failed:
            log.info("failed: %s: %s", name, "; ".join(self.results[name].errors))


def _hms(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _resolutions(data: Path, names: list[str]) -> dict[str, float | None]:
    """µm/pixel per filename from ``test_metadata.csv``; None where missing (the slide's own
    tags are used then). A missing or unreadable metadata file is logged, not fatal."""
    try:
        metadata = read_metadata(data / METADATA_NAME)
    except SubmissionError as exc:
        log.warning("metadata unusable, using the slides' own resolution tags: %s", exc)
        return dict.fromkeys(names)
    known = {
        str(n): (float(r) if math.isfinite(r) else None)
        for n, r in zip(metadata["filename"], metadata["resolution"], strict=True)
    }
    return {name: known.get(name) for name in names}


def run(
    data: Path,
    out: Path,
    assets_dir: Path,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    device: str | None = None,
    save_heatmaps: Path | None = None,
    started: float | None = None,
) -> int:
    """Grade every slide listed in ``data/submission_format.csv`` and write ``out``.

    ``started`` is the ``time.monotonic()`` the time limit counts from (default: now).
    Returns the exit status: 0 when a valid submission was written, 2 for a run-wide input
    problem, 3 for bad assets.
    """
    started = time.monotonic() if started is None else started
    pyvips.cache_set_max_mem(VIPS_CACHE_MB * 1024 * 1024)
    try:
        fmt = read_table(data / FORMAT_NAME)
    except SubmissionError as exc:
        log.error("cannot run: %s", exc)
        return 2
    try:
        assets = load_assets(assets_dir, pick_device(device))
    except AssetsError as exc:
        log.error("cannot run: bad assets: %s", exc)
        return 3
    config = assets.config
    names = [str(n) for n in fmt["filename"]]
    prior = decide_slide([], [], config.decision)
    log.info(
        "%d slides, time limit %s, device %s, fallback class %d",
        len(names),
        _hms(time_limit_s),
        assets.device,
        prior.cls,
    )
    _log_unlisted(data, set(names))
    write_submission(build_submission(fmt, {}, prior.cls), out)

    reserve = min(config.budget.reserve_s, 0.1 * time_limit_s)
    budget = RunBudget(
        max(time_limit_s - (time.monotonic() - started), 1e-3),  # start-up may have used it all
        len(names),
        replace(config.budget, reserve_s=reserve),
    )
    report = RunReport()
    writing = threading.Lock()

    def checkpoint() -> None:
        with writing:
            write_submission(build_submission(fmt, report.classes(), prior.cls), out)

    worker = threading.Thread(
        target=_grade_all,
        args=(Cascade(assets), data, names, _resolutions(data, names), budget, report),
        kwargs={"prior": prior, "save_heatmaps": save_heatmaps, "checkpoint": checkpoint},
        daemon=True,
        name="cascade",
    )
    worker.start()
    worker.join(timeout=max(0.0, budget.remaining() - reserve / 2))
    report.timed_out = worker.is_alive()
    if report.timed_out:
        log.error(
            "time limit: %s; writing the submission now",
            f"abandoning {report.current}" if report.current else "stopping before the next slide",
        )
    checkpoint()
    report.seconds = time.monotonic() - started
    report.log_summary(len(names), prior.cls)
    log.info("wrote %s", out)
    if report.timed_out:  # the worker may be stuck in native code: do not wait for it
        logging.shutdown()
        os._exit(0)
    return 0


def _log_unlisted(data: Path, listed: set[str]) -> None:
    if not data.is_dir():
        return
    present = {p.name for p in data.iterdir() if p.suffix.lower() in (".tif", ".tiff")}
    unlisted, missing = sorted(present - listed), sorted(listed - present)
    if unlisted:
        log.warning(
            "ignoring %d slide files not in %s: %s", len(unlisted), FORMAT_NAME, unlisted[:5]
        )
    if missing:
        log.warning("%d listed slides are missing from %s: %s", len(missing), data, missing[:5])


def _grade_all(
    cascade: Cascade,
    data: Path,
    names: list[str],
    mpps: dict[str, float | None],
    budget: RunBudget,
    report: RunReport,
    prior: Decision,
    save_heatmaps: Path | None,
    checkpoint: Callable[[], None],
) -> None:
    """The worker: slides in format order, each within its share of the budget."""
    last_checkpoint = time.monotonic()
    run_start = time.monotonic()
    for i, name in enumerate(names):
        if budget.exhausted():
            report.not_started = names[i:]
            log.error(
                "time limit: %d slides not started get the fallback class %d",
                len(names) - i,
                prior.cls,
            )
            return
        slide_budget = budget.start_slide()
        report.current = name
        try:
            result = cascade.grade_slide(data / name, mpps.get(name), slide_budget, budget.costs)
        except Exception as exc:  # one bad slide costs only its own row
            result = fallback_result(name, prior, f"{type(exc).__name__}: {exc}")
        finally:
            budget.finish_slide()
            report.current = None
        report.add(result)
        try:  # reporting must not stop the run either
            _log_slide(i, len(names), result, budget, time.monotonic() - run_start)
            if save_heatmaps is not None:
                result.save(save_heatmaps)
            if time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:
                checkpoint()
                last_checkpoint = time.monotonic()
        except Exception:
            log.exception("%s: reporting after grading failed", name)


def _log_slide(i: int, total: int, result: SlideResult, budget: RunBudget, elapsed: float) -> None:
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
        "[%d/%d] %s: class %d from %s, %d/%d hotspots graded, %.1f s (tissue %.1f, "
        "detector %.1f, classifier %.1f)%s; time left %s, ETA %s",
        i + 1,
        total,
        result.filename,
        result.cls,
        result.source,
        len(result.grades),
        len(result.hotspots),
        s.get("total", 0.0),
        s.get("tissue", 0.0),
        s.get("detector", 0.0),
        s.get("classifier", 0.0),
        f" DEGRADED: {'; '.join(result.problems())}" if result.degraded else "",
        _hms(budget.remaining()),
        _hms(eta),
    )
