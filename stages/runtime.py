"""The runtime job: every slide of ``data/`` through the cascade into ``submission.csv``.

Guarantees, in order of priority:

1. A run-wide problem (no ``submission_format.csv``, bad assets) is reported once, clearly,
   before any slide is read, with a non-zero exit status.
2. A complete, valid submission exists from the start: a provisional file with every row at the
   fallback class is written before the first slide, and rewritten (atomically) after every
   slide, so a run killed from outside loses at most the slide in progress. The rewrites are
   capped at :data:`stages.record.CHECKPOINT_SHARE` of the run's time: one is skipped while
   less than ``1 / CHECKPOINT_SHARE`` times the last write's duration has passed since it.
3. One bad slide costs only its own row (fallback class, error logged with the filename).
4. The run ends within the time limit: slides share it through :class:`stages.budget.RunBudget`;
   slides not started in time get the fallback class; a slide stuck past the hard end is
   abandoned by a watchdog thread, which writes the file and exits (the slides are graded in
   the main thread, the one that loaded the networks).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pyvips
import torch

from stages.budget import RunBudget, SlideBudget
from stages.cascade import Cascade, Prepared, grade_or_fallback
from stages.config import Assets, CascadeConfig, load_assets, load_config
from stages.decision import Decision, decide_slide
from stages.device import AUTO_DEVICE, EXIT_DEVICE, DeviceError, choose_device, probe
from stages.geojson import DEFAULT_LEVELS
from stages.nets import AssetsError
from stages.prefetch import Prefetcher
from stages.record import Checkpoint, RunReport, hms, log_slide, log_unlisted, save_result
from stages.submission import (
    SubmissionError,
    build_submission,
    read_format,
    read_metadata,
    write_submission,
)

log = logging.getLogger(__name__)

FORMAT_NAME = "submission_format.csv"
METADATA_NAME = "test_metadata.csv"
#: The competition's limit for the whole run.
DEFAULT_TIME_LIMIT_S = 16 * 3600.0
TIME_LIMIT_ENV = "TISSUENET_TIME_LIMIT"
#: Seconds a slide's allotment must reach for the next slide to be prepared in the prefetch
#: thread meanwhile. Below it, the prefetch gains little and costs the budget its
#: predictability: on the 2-core CPU, with 0.2–0.3 s a slide, a classifier batch took
#: 0.03–0.15 s while the other thread decoded, and slides overran their allotment by up to 56 %.
PREFETCH_MIN_S = 0.4
#: libvips' operation cache is bounded so that a huge slide cannot grow it.
VIPS_CACHE_MB = 256


def resolutions(metadata_csv: Path, names: list[str]) -> dict[str, float | None]:
    """µm/pixel per filename from a metadata table (``test_metadata.csv``); None where missing
    (the slide's own tags are used then). A missing or unreadable file is logged, not fatal."""
    try:
        metadata = read_metadata(metadata_csv)
    except SubmissionError as exc:
        log.warning("metadata unusable, using the slides' own resolution tags: %s", exc)
        return dict.fromkeys(names)
    known = {
        str(n): (float(r) if math.isfinite(r) else None)
        for n, r in zip(metadata["filename"], metadata["resolution"], strict=True)
    }
    return {name: known.get(name) for name in names}


@dataclass
class Engine:
    """What grades the slides: the networks on their device, the run's budget and the prefetch
    of the next slide (None without one)."""

    cascade: Cascade
    budget: RunBudget
    ahead: Prefetcher[Prepared] | None
    device: torch.device


def start_engine(
    assets_dir: Path,
    config: CascadeConfig,
    device: torch.device,
    precision: str,
    time_limit_s: float,
    started: float,
    slides: tuple[Path, list[str], dict[str, float | None]],
    prefetch: bool,
) -> Engine:
    """Load the networks on ``device``, share the time left over the ``slides`` (data folder,
    names, µm/px), start preparing the first one and warm the networks up meanwhile. Raises
    what loading or warming up raised (the prefetch then closed)."""
    data, names, mpps = slides
    cascade = Cascade(load_assets(assets_dir, device, precision, frozen=True, config=config))
    reserve = min(config.budget.reserve_s, 0.1 * time_limit_s)
    budget = RunBudget(
        max(time_limit_s - (time.monotonic() - started), 1e-3),  # start-up may have used it all
        len(names),  # the classifier's batches as the memory left makes them
        replace(config.budget, reserve_s=reserve, batch_size=cascade.patch_batch),
    )
    # the first slide is prepared while the networks warm up: it has no slide to overlap
    ahead = start_prefetch(cascade, data, names, mpps, budget) if prefetch else None
    try:
        cascade.warm_up()
    except BaseException:
        if ahead is not None:
            ahead.close()
        raise
    return Engine(cascade, budget, ahead, device)


def start_on_a_working_device(
    requested: str | None, start: Callable[[torch.device], Engine]
) -> Engine:
    """``start`` (:func:`start_engine`) on the device :func:`stages.device.choose_device` picks
    for ``requested``. When loading or warming the networks up fails on a GPU: a GPU chosen
    automatically gives way to the CPU (an error in the log says why), one asked for raises
    :class:`DeviceError`. On the CPU the failure is the assets': :class:`AssetsError`."""
    device = choose_device(requested)
    try:
        return start(device)
    except AssetsError:
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if device.type != "cuda":
            raise AssetsError(
                f"the networks fail on a blank batch on the {device}: {reason}"
            ) from exc
        if requested not in AUTO_DEVICE:
            raise DeviceError(
                f"{device} failed loading or warming up the networks: {reason}"
            ) from exc
        log.error(
            "the GPU failed loading or warming up the networks (%s); running on the CPU", reason
        )
        return start(torch.device("cpu"))


def run(
    data: Path,
    out: Path,
    assets_dir: Path,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    device: str | None = None,
    save_heatmaps: Path | None = None,
    started: float | None = None,
    prefetch: bool = True,
    precision: str = "auto",
    contour_levels: tuple[float, ...] = DEFAULT_LEVELS,
) -> int:
    """Grade every slide listed in ``data/submission_format.csv`` and write ``out``.

    ``started`` is the ``time.monotonic()`` the time limit counts from (default: now);
    ``device``: None or ``auto`` (a GPU that works, else the CPU), ``cpu``, ``cuda[:N]``;
    ``prefetch``: prepare the next slide in a background thread (:mod:`stages.prefetch`);
    ``precision``: the networks' dtype (:data:`stages.nets.PRECISIONS`); ``contour_levels``:
    the heatmap levels outlined in the ``<stem>.geojson`` files ``save_heatmaps`` gets.
    Returns the exit status: 0 when a valid submission was written, 2 for a run-wide input
    problem (nothing written), 3 for bad assets (nothing written), :data:`EXIT_DEVICE` when the
    device asked for cannot run the networks (the provisional file, every row at the fallback
    class, is left).
    """
    started = time.monotonic() if started is None else started
    pyvips.cache_set_max_mem(VIPS_CACHE_MB * 1024 * 1024)
    try:
        fmt = read_format(data / FORMAT_NAME)
    except SubmissionError as exc:
        log.error("cannot run: %s", exc)
        return 2
    try:
        config = load_config(assets_dir)
    except AssetsError as exc:
        log.error("cannot run: bad assets: %s", exc)
        return 3
    names = list(dict.fromkeys(fmt["filename"]))  # each slide once, in the format's order
    prior = decide_slide([], [], config.decision)
    # before any network is loaded: whatever happens on the device, every row is written
    write_submission(build_submission(fmt, {}, prior.cls, quiet=True), out, quiet=True, fmt=fmt)
    log_unlisted(data, set(names), FORMAT_NAME)
    mpps = resolutions(data / METADATA_NAME, names)
    start = functools.partial(
        start_engine, assets_dir, config, precision=precision, time_limit_s=time_limit_s,
        started=started, slides=(data, names, mpps), prefetch=prefetch,
    )  # fmt: skip
    try:
        engine = start_on_a_working_device(device, start)
    except AssetsError as exc:
        out.unlink(missing_ok=True)  # bad assets: no file that looks like a graded run
        log.error("cannot run: bad assets: %s", exc)
        return 3
    except DeviceError as exc:
        log.error(
            "cannot run on the device asked for: %s; %s keeps every row at the fallback class "
            "%d (run with --device cpu, or see docs/runtime.md)",
            exc,
            out,
            prior.cls,
        )
        return EXIT_DEVICE
    budget = engine.budget
    log.info(
        "%d slides, time limit %s, device %s, fallback class %d; start-up %.2f s",
        len(names),
        hms(time_limit_s),
        engine.device,
        prior.cls,
        time.monotonic() - started,
    )
    reserve = budget.config.reserve_s
    report = RunReport()
    checkpoint = Checkpoint(
        lambda quiet: build_submission(fmt, report.classes(), prior.cls, quiet=quiet), out, fmt
    )
    ending = threading.Lock()  # taken by whichever ends the run: the grading or the watchdog

    def end(timed_out: bool) -> None:
        report.timed_out = timed_out
        if timed_out:
            log.error(
                "time limit: %s; writing the submission now",
                f"abandoning {report.current}"
                if report.current
                else "stopping before the next slide",
            )
        checkpoint.write(quiet=False)
        report.seconds = time.monotonic() - started
        report.log_summary(len(names), prior.cls)
        log.info("wrote %s (%d rewrites took %.2f s)", out, checkpoint.writes, checkpoint.seconds)

    def watchdog() -> None:
        if ending.acquire(blocking=False):
            end(timed_out=True)
            logging.shutdown()
            os._exit(0)  # the grading may be stuck in native code: do not wait for it

    timer = threading.Timer(max(0.0, budget.remaining() - reserve / 2), watchdog)
    timer.daemon = True
    timer.name = "watchdog"
    timer.start()
    # the grading runs in this thread, the one that loaded and warmed the networks up: torch's
    # CPU kernels run at about half speed from a second thread once a first one has used them
    try:
        _grade_all(
            engine,
            data,
            names,
            mpps,
            report,
            prior=prior,
            save_heatmaps=save_heatmaps,
            checkpoint=checkpoint,
            contour_levels=contour_levels,
            cpu_assets=functools.partial(
                load_assets, assets_dir, torch.device("cpu"), precision, True, config
            ),
        )
    except Exception:  # a bug past the per-slide isolation: the rows graded so far are kept
        log.exception("grading stopped; the slides not graded get the fallback class")
    finally:
        timer.cancel()
    if not ending.acquire(blocking=False):  # the watchdog is ending the run and the process
        threading.Event().wait()
    end(timed_out=False)
    return 0


def start_prefetch(
    cascade: Cascade,
    data: Path,
    names: list[str],
    mpps: dict[str, float | None],
    budget: RunBudget,
) -> Prefetcher[Prepared]:
    """A :class:`stages.prefetch.Prefetcher` preparing ``names`` (in ``data``) in order, each
    with the detector windows read ahead that its slide's time lets the detector use
    (:meth:`stages.cascade.Cascade.read_ahead_bytes` of the allotment when it starts) and its
    tissue mask decoding what that time pays for (:meth:`~stages.cascade.Cascade.tissue_pixels`,
    which only a slide without an overview page can reach). While
    the allotment is under :data:`PREFETCH_MIN_S` it prepares nothing: each slide is then
    prepared in the grading thread, in turn."""

    def prepare(name: str) -> Prepared | None:
        allotment = budget.allotment() if budget.slides_left > 0 else 0.0
        if allotment < PREFETCH_MIN_S:
            return None
        read_ahead = cascade.read_ahead_bytes(allotment, budget.costs)
        max_decoded = cascade.tissue_pixels(allotment, budget.costs)
        return cascade.prepare(data / name, mpps.get(name), read_ahead, max_decoded)

    return Prefetcher(prepare, names)


def _grade_all(
    engine: Engine,
    data: Path,
    names: list[str],
    mpps: dict[str, float | None],
    report: RunReport,
    prior: Decision,
    save_heatmaps: Path | None,
    checkpoint: Checkpoint,
    contour_levels: tuple[float, ...] = DEFAULT_LEVELS,
    cpu_assets: Callable[[], Assets] | None = None,
) -> None:
    """The worker: slides in format order, each within its share of the budget (or passed over
    with the prior row when the time left does not pay for every slide's cheapest path); with
    a prefetch (:func:`start_prefetch`), the next slide is prepared in the background meanwhile,
    and closed here at the end. After a slide whose grading failed on a GPU, the GPU is probed
    (:func:`stages.device.probe`); if it no longer works, the networks move to the CPU
    (``cpu_assets``), which grades that slide again and the rest."""
    cascade, budget, ahead = engine.cascade, engine.budget, engine.ahead
    run_start = time.monotonic()
    try:
        for i, name in enumerate(names):
            if budget.exhausted():
                report.not_started = names[i:]
                log.error(
                    "time limit: %d slides not started get the fallback class %d",
                    len(names) - i,
                    prior.cls,
                )
                return
            if budget.skip_next():  # too little time per slide: this one gets the prior row
                report.skipped.append(name)
                if ahead is not None:
                    ahead.skip(name)
                continue
            slide_budget = budget.start_slide()
            report.current = name
            grade = functools.partial(
                grade_or_fallback, cascade, data / name, mpps.get(name), slide_budget,
                budget.costs, prior,
            )  # fmt: skip
            try:  # the slide's wall time as the budget saw it (waiting for the prefetch included)
                result = grade(
                    (lambda: None)
                    if ahead is None
                    else functools.partial(_take, ahead, name, slide_budget)
                )
                if result.errors and cpu_assets is not None and gpu_failed(cascade):
                    cascade.use(cpu_assets())
                    cascade.warm_up()
                    result = grade()  # read again: its preparation was taken
            finally:
                budget.finish_slide()
                report.current = None
            report.add(result)
            try:  # reporting must not stop the run either
                log_slide(i, len(names), result, budget.remaining(), time.monotonic() - run_start)
                if save_heatmaps is not None:
                    save_result(result, save_heatmaps, contour_levels)
                checkpoint.maybe_write()
            except Exception:
                log.exception("%s: reporting after grading failed", name)
            del result  # its arrays: the next slide's need the room
    finally:
        if ahead is not None:
            ahead.close()


def gpu_failed(cascade: Cascade) -> bool:
    """True when ``cascade`` grades on a GPU that no longer passes :func:`stages.device.probe`
    (logged as an error: the slides from here on run on the CPU)."""
    device = cascade.assets.device
    if device.type != "cuda":
        return False
    try:
        probe(device)
    except DeviceError as exc:
        log.error("the GPU stopped working (%s); the slides from here on run on the CPU", exc)
        return True
    return False


def _take(ahead: Prefetcher[Prepared], name: str, budget: SlideBudget) -> Prepared | None:
    """The slide ``name`` from the prefetch thread, waited for no longer than its time to plan
    (:meth:`~stages.budget.SlideBudget.plan_left`): a preparation that overruns it costs the
    slide its row (the prior's), not the slides after it their time."""
    return ahead.take(name, budget.plan_left())
