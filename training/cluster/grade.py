"""Grade a whole archive of slides on a Ray pool, resumably: ``python -m training.cluster grade``.

Each slide is one task, served to a pool of :class:`GradeWorker` actors that load ``assets/``
once and grade with the same :class:`stages.cascade.Cascade` as ``main.py``. Each slide gets a
fixed share of time (``seconds_per_slide``: there is no run-wide limit to share out, as in the
competition). The driver, the one process that writes ``OUT``, keeps every finished result:

* ``OUT/heatmaps/``: per slide the files ``main.py --save-heatmaps`` writes (``<stem>.npz``,
  ``<stem>.json``, ``<stem>.geojson``), sent back by the worker and written before its row;
* ``OUT/results.csv``: one row per finished slide (class, probabilities, source, errors, the
  worker's seconds, the worker, the Unix time it was recorded), appended and synced as each
  finishes. A slide with a row is done: a rerun grades only the others, and a run killed at
  any point loses at most the slides in flight;
* at the end, once every slide has a row: ``OUT/submission.csv`` in the order of
  ``DATA/submission_format.csv`` when that file exists, else ``OUT/predictions.csv`` for every
  TIF found in ``DATA``.

Faults: a slide that raises gets the fallback row with its error, as in ``main.py``; a worker
process that dies (libvips crash, out of memory) is restarted and its slide tried once more,
then given the fallback (:mod:`training.cluster.pool`). Results live with the driver, so a lost
node loses none of them.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import ray
import torch

from stages.budget import CostModel, SlideBudget
from stages.cascade import Cascade, grade_or_fallback
from stages.config import load_assets, load_config
from stages.decision import Decision, decide_slide
from stages.device import choose_device
from stages.geojson import DEFAULT_LEVELS
from stages.record import save_result
from stages.result import SlideResult, fallback_result
from stages.runtime import FORMAT_NAME, METADATA_NAME, resolutions
from stages.submission import build_submission, read_format, write_submission
from training.cluster.pool import (
    RETRIES_ON_CRASH,
    PoolConfig,
    PoolWorker,
    Progress,
    connect,
    map_on_pool,
)

log = logging.getLogger(__name__)

RESULTS = "results.csv"
MAPS = "heatmaps"
SUBMISSION = "submission.csv"
PREDICTIONS = "predictions.csv"
#: Metadata tables looked for in ``DATA`` (µm/pixel per slide), in this order.
METADATA_NAMES = (METADATA_NAME, "train_metadata.csv")
#: The exit status of a worker made to die by :attr:`GradeOptions.crash_on`.
CRASH_EXIT = 70
COLUMNS = (
    "filename", "class", "p0", "p1", "p2", "p3", "source", "degraded", "hotspots", "graded",
    "seconds", "worker", "finished", "errors",
)  # fmt: skip


@dataclass(frozen=True)
class GradeOptions:
    """How each slide is graded: ``seconds_per_slide``, its time budget; ``device`` / ``precision``
    as ``main.py``'s (None: the worker's GPU if it has one); ``contour_levels`` for the GeoJSON;
    ``heatmaps``: send back and write each slide's files (False: its ``results.csv`` row only,
    for archives whose heatmaps, about 12 MB a real-size slide, would be too much for the
    driver); ``crash_on``: a test hook, filenames on which the worker process exits at once (as
    a libvips crash would), leaving an empty file ``<filename>.<pid>`` in the folder
    ``crash_marks`` (if given) each time; ``hold_on``: a test hook, filenames that the worker
    holds in flight: it writes ``<filename>.<node id>.held`` in the folder ``hold_marks``, then
    waits until a file ``release`` is there before grading the slide, so that a test knows for
    certain which node has the slide in hand."""

    seconds_per_slide: float = 60.0
    device: str | None = None
    precision: str = "auto"
    contour_levels: tuple[float, ...] = DEFAULT_LEVELS
    heatmaps: bool = True
    crash_on: frozenset[str] = frozenset()
    crash_marks: str = ""
    hold_on: frozenset[str] = frozenset()
    hold_marks: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds_per_slide) and self.seconds_per_slide > 0):
            raise ValueError(f"seconds_per_slide must be positive, got {self.seconds_per_slide}")


def result_row(result: SlideResult, worker: str) -> dict:
    """The ``results.csv`` row of a graded slide (see :data:`COLUMNS`)."""
    return {
        "filename": result.filename,
        "class": result.cls,
        **{f"p{c}": round(float(p), 6) for c, p in enumerate(result.probs)},
        "source": result.source,
        "degraded": int(result.degraded),
        "hotspots": len(result.hotspots),
        "graded": len(result.grades),
        "seconds": round(result.seconds.get("slide", 0.0), 3),
        "worker": worker,
        "finished": 0.0,  # set by the driver when it records the row
        "errors": "; ".join(result.problems()),
    }


def saved_files(
    result: SlideResult, contour_levels: tuple[float, ...] = DEFAULT_LEVELS
) -> dict[str, bytes]:
    """The files ``main.py --save-heatmaps`` writes for ``result``, as name → bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        save_result(result, Path(tmp), contour_levels)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


class GradeWorker(PoolWorker):
    """One actor of the pool: the assets loaded once (from their files' bytes, so that no node
    needs the driver's ``assets/``) and the networks warmed up, as ``main.py`` does before its
    first slide (else that slide pays for the kernels' set-up and its costs, inflated, become the
    actor's first estimates), grading slides of ``data`` (a path every node reads) with as many
    torch threads as the actor has CPUs."""

    def __init__(self, assets: dict[str, bytes], data: str, options: GradeOptions) -> None:
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("pyvips").setLevel(logging.WARNING)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, math.floor(cpus)))
        with tempfile.TemporaryDirectory(prefix="tissuenet-assets-") as tmp:
            for name, blob in assets.items():
                (Path(tmp) / name).write_bytes(blob)
            device = choose_device(options.device)
            self.assets = load_assets(Path(tmp), device, options.precision, frozen=True)
        self.cascade = Cascade(self.assets)
        self.cascade.warm_up()
        self.costs = CostModel(self.assets.config.budget)
        self.prior = decide_slide([], [], self.assets.config.decision)
        self.data = Path(data)
        self.options = options
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def grade(self, filename: str, mpp: float | None) -> tuple[dict, dict[str, bytes]]:
        """Grade one slide: its ``results.csv`` row and its saved files (name → bytes)."""
        if filename in self.options.crash_on:
            if self.options.crash_marks:
                (Path(self.options.crash_marks) / f"{filename}.{os.getpid()}").touch()
            os._exit(CRASH_EXIT)
        if filename in self.options.hold_on and self.options.hold_marks:
            marks = Path(self.options.hold_marks)
            node = ray.get_runtime_context().get_node_id()
            (marks / f"{filename}.{node}.held").touch()
            while not (marks / "release").exists():
                time.sleep(0.05)
        seconds = self.options.seconds_per_slide
        budget = SlideBudget(
            time.monotonic, seconds, time.monotonic() + seconds, self.assets.config.budget
        )
        result = grade_or_fallback(
            self.cascade, self.data / filename, mpp, budget, self.costs, self.prior
        )
        files = saved_files(result, self.options.contour_levels) if self.options.heatmaps else {}
        return result_row(result, self.name), files


class ResultsTable:
    """``results.csv``: a header, then one whole line per finished slide, appended with one
    write and synced. A line cut short by a kill is dropped when the table is opened again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        header = ",".join(COLUMNS) + "\n"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(header)
            return
        text = path.read_text()
        if not text.startswith(header):
            raise ValueError(f"{path}: not a results table of this version (header {header!r})")
        whole = text[: text.rfind("\n") + 1]
        if len(whole) < len(text):
            log.warning("%s: dropping a last line cut short: %r", path, text[len(whole) :])
            with path.open("r+") as f:
                f.truncate(len(whole.encode()))

    def rows(self) -> pd.DataFrame:
        """Every row, the last one of a filename winning, indexed by filename."""
        table = pd.read_csv(self.path, keep_default_na=False, dtype={"filename": str})
        return table.drop_duplicates("filename", keep="last").set_index("filename")

    def append(self, row: dict) -> None:
        """Add ``row`` (:data:`COLUMNS`) durably."""
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow([row[c] for c in COLUMNS])
        with self.path.open("a") as f:
            f.write(line.getvalue())
            f.flush()
            os.fsync(f.fileno())


def list_slides(data: Path) -> tuple[list[str], pd.DataFrame | None]:
    """The slides of ``data``: the filenames of ``submission_format.csv`` in its order (and the
    table) when it exists, else every ``*.tif``/``*.tiff`` in the folder, sorted (and None)."""
    if (data / FORMAT_NAME).is_file():
        fmt = read_format(data / FORMAT_NAME)
        return list(dict.fromkeys(fmt["filename"])), fmt
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such folder")
    names = sorted(p.name for p in data.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    return names, None


def _write_files(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(blob)
        os.replace(tmp, directory / name)


def _lost(filename: str, prior: Decision, exc: BaseException) -> SlideResult:
    """The fallback of a slide whose task failed in Ray (its worker died on every try)."""
    first = next(iter(str(exc).strip().splitlines()), "")
    if isinstance(exc, ray.exceptions.RayActorError):
        why = f"its worker process died on each of {1 + RETRIES_ON_CRASH} tries"
    else:
        why = "the task failed"
    return fallback_result(filename, prior, f"{type(exc).__name__}: {why}: {first}"[:500])


@dataclass
class GradeReport:
    """What a run did: ``graded`` the slides finished in this run (in finishing order),
    ``done`` the slides with a row, ``total`` the slides listed, ``output`` the submission or
    predictions written (None while slides are left)."""

    graded: list[str] = field(default_factory=list)
    done: int = 0
    total: int = 0
    output: Path | None = None


def grade_archive(
    data: Path,
    out: Path,
    assets_dir: Path,
    pool: PoolConfig | None = None,
    options: GradeOptions = GradeOptions(),
    limit: int | None = None,
    metadata: Path | None = None,
) -> GradeReport:
    """Grade every slide of ``data`` not yet in ``out/results.csv`` (at most ``limit`` of them
    in this run) on the Ray pool ``pool`` (default: a local one); write the final table when
    none is left (see the module doc). ``metadata``: the µm/pixel table (default: the first of
    :data:`METADATA_NAMES` in ``data``; without one, the slides' own tags)."""
    names, fmt = list_slides(data)
    config = load_config(assets_dir)  # the whole config validated before any slide is sent
    prior = decide_slide([], [], config.decision)
    table = ResultsTable(out / RESULTS)
    done = set(table.rows().index) & set(names)
    todo = [n for n in names if n not in done][:limit]
    log.info(
        "%d slides in %s: %d done already, %d to grade now", len(names), data, len(done), len(todo)
    )
    report = GradeReport(total=len(names))
    if todo:
        if metadata is None:
            found = [data / n for n in METADATA_NAMES if (data / n).is_file()]
            metadata = found[0] if found else data / METADATA_NAME
        mpps = resolutions(metadata, todo)
        pool = pool or PoolConfig()
        _grade_on_pool(todo, mpps, data, out, assets_dir, pool, options, prior, table, report)
    rows = table.rows()
    report.done = len(set(rows.index) & set(names))
    if report.done < len(names):
        log.info("%d slides not graded yet: run again to resume", len(names) - report.done)
        return report
    if fmt is not None:
        classes = {name: int(rows.at[name, "class"]) for name in names}
        report.output = out / SUBMISSION
        write_submission(build_submission(fmt, classes, prior.cls), report.output, fmt=fmt)
    else:
        report.output = out / PREDICTIONS
        columns = ["class", "p0", "p1", "p2", "p3", "source"]
        rows.loc[names, columns].reset_index().to_csv(report.output, index=False)
        log.info("wrote %s (%d rows)", report.output, len(names))
    return report


def _grade_on_pool(
    todo: list[str],
    mpps: dict[str, float | None],
    data: Path,
    out: Path,
    assets_dir: Path,
    pool: PoolConfig,
    options: GradeOptions,
    prior: Decision,
    table: ResultsTable,
    report: GradeReport,
) -> None:
    connect(pool)  # to put the assets once in the object store, for every actor
    blobs = ray.put({p.name: p.read_bytes() for p in sorted(assets_dir.iterdir()) if p.is_file()})
    progress = Progress(len(todo))
    for name, reply in map_on_pool(
        pool,
        GradeWorker,
        (blobs, str(data.resolve()), options),
        todo,
        lambda a, n: a.grade.remote(n, mpps[n]),
    ):
        if isinstance(reply, BaseException):
            result = _lost(name, prior, reply)
            row = result_row(result, "")
            files = saved_files(result) if options.heatmaps else {}
        else:
            row, files = reply
        _write_files(out / MAPS, files)
        table.append(row | {"finished": round(time.time(), 3)})
        report.graded.append(name)
        failed = row["source"] == "fallback"
        progress.step(
            f"{name}: class {row['class']} from {row['source']}, {row['graded']}/"
            f"{row['hotspots']} hotspots graded, {row['seconds']:.1f} s"
            + (f" FAILED: {row['errors']}" if failed else ""),
            logging.ERROR if failed else logging.INFO,
        )
