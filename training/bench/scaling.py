"""Slides per hour on a Ray pool, against ``main.py``: ``make cluster-benchmark``.

``python -m training.bench.scaling OUT [--sets heldout,real] [--pools 1x1,1x2,2x1]
[--min-slides 24] [--local-cpus 2] [--publish DIR]``

The slide sets are ``make benchmark``'s (:func:`training.bench.sets.make_sets`: generated
under ``OUT`` once, then reused); a set of fewer than ``--min-slides`` slides (the six real-size
ones) is listed over and over up to that many (:func:`training.bench.sets.repeat_set`),
so that a rate is measured over more slides than workers. Each set is graded by ``main.py``
once (one process, its prefetch thread, torch on every core) and by ``python -m
training.cluster grade`` with each pool shape ``WxC`` (W workers of C CPUs each) on a local Ray
instance of ``--local-cpus`` CPUs, each run a fresh process in a fresh output folder, as a user
would run it. Columns:

* ``wall_s``: the whole command, start-up included (Python, Ray, the actors loading assets);
* ``slides_per_h``: slides over ``wall_s``; ``steady_per_h``: between the first and the last
  slide recorded (start-up left out: the rate a long archive runs at);
* ``worker_s_median`` / ``worker_s_p95``: seconds a slide took its worker.

Writes ``OUT/scaling/scaling.csv`` and ``scaling.md`` (copied to ``--publish``), and prints
them with the hours that 2,048 and 50,000 slides would take at the steady rates on 1 to 16
such machines.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from training.bench.sets import make_sets, repeat_set
from training.bench.tables import machine, plain_markdown
from training.cli import command_parser, setup_logging
from training.cluster.grade import RESULTS, ResultsTable
from training.process import REPO

log = logging.getLogger(__name__)

ARCHIVES = (2048, 50_000)
MACHINES = (1, 4, 16)


def run(command: list[str], log_path: Path) -> float:
    """Run ``command`` from the repository root, its output to ``log_path``; its wall seconds."""
    start = time.monotonic()
    with log_path.open("w") as f:
        proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"{command[:4]} failed ({proc.returncode}); see {log_path}")
    return time.monotonic() - start


def grade_main(data: Path, out: Path, assets: Path) -> dict:
    """``main.py`` on ``data``: the row of the table."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(REPO / "main.py"), "--data", str(data), "--assets", str(assets)]
    command += ["--out", str(out / "submission.csv"), "--save-heatmaps", str(out / "maps")]
    wall = run(command, out / "log.txt")
    seconds = [json.loads(p.read_text())["seconds"]["slide"] for p in (out / "maps").glob("*.json")]
    return (
        {"pool": "main.py", "slides": len(seconds), "wall_s": wall}
        | _spread(seconds)
        | {"steady_per_h": np.nan}
    )


def grade_pool(data: Path, out: Path, assets: Path, pool: str, local_cpus: int) -> dict:
    """``training.cluster grade`` with pool shape ``pool`` (``WxC``): the row of the table."""
    workers, cpus = pool.split("x")
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "training.cluster", "grade", "--data", str(data)]
    command += ["--out", str(out / "run"), "--assets", str(assets), "--local-cpus", str(local_cpus)]
    command += ["--workers", workers, "--cpus-per-worker", cpus]
    wall = run(command, out / "log.txt")
    rows = ResultsTable(out / "run" / RESULTS).rows()
    finished = np.sort(rows["finished"].to_numpy(float))
    span = finished[-1] - finished[0]
    steady = 3600.0 * (len(finished) - 1) / span if span > 0 else np.nan
    row = {"pool": f"{workers} worker(s) x {cpus} CPU", "slides": len(rows), "wall_s": wall}
    return row | _spread(rows["seconds"].to_numpy(float)) | {"steady_per_h": steady}


def _spread(seconds: list[float] | np.ndarray) -> dict:
    values = np.asarray(seconds, float)
    return {
        "worker_s_median": float(np.median(values)),
        "worker_s_p95": float(np.percentile(values, 95)),
    }


def projection(table: pd.DataFrame) -> pd.DataFrame:
    """Hours for :data:`ARCHIVES` slides on :data:`MACHINES` machines like this one, at each
    pool's steady rate (start-up left out: minutes against hours)."""
    rows = []
    for r in table.dropna(subset=["steady_per_h"]).itertuples(index=False):
        for n in MACHINES:
            rows.append(
                {"set": r.set, "pool": r.pool, "machines": n}
                | {f"{s} slides, h": s / (r.steady_per_h * n) for s in ARCHIVES}
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.bench.scaling", __doc__)
    parser.add_argument("out", type=Path, help="work folder (slide sets are kept and reused)")
    parser.add_argument("--sets", default="heldout,real")
    parser.add_argument("--pools", default="1x1,1x2,2x1", help="pool shapes WxC")
    parser.add_argument("--min-slides", type=int, default=24, help="repeat smaller sets")
    parser.add_argument("--local-cpus", type=int, default=2)
    parser.add_argument("--assets", type=Path, default=REPO / "assets")
    parser.add_argument("--publish", type=Path, default=None, help="copy the table here")
    args = parser.parse_args(argv)
    setup_logging()
    sets = make_sets(args.out, args.sets.split(","))
    rows = []
    for name, data in sets.items():
        work = args.out / "scaling" / name
        shutil.rmtree(work, ignore_errors=True)
        if len(pd.read_csv(data / "submission_format.csv")) < args.min_slides:
            data = repeat_set(data, work / "data", args.min_slides)
        rows.append({"set": name} | grade_main(data, work / "main", args.assets))
        for pool in args.pools.split(","):
            rows.append(
                {"set": name}
                | grade_pool(data, work / f"pool-{pool}", args.assets, pool, args.local_cpus)
            )
            log.info("%s", rows[-1])
    table = pd.DataFrame(rows)
    table["slides_per_h"] = 3600.0 * table["slides"] / table["wall_s"]
    table = table[
        ["set", "pool", "slides", "wall_s", "slides_per_h", "steady_per_h"]
        + ["worker_s_median", "worker_s_p95"]
    ]
    hours = projection(table)
    out = args.out / "scaling"
    table.to_csv(out / "scaling.csv", index=False)
    text = (
        f"Measured on {machine()}, a local Ray instance of {args.local_cpus} CPUs.\n\n"
        f"{plain_markdown(table.round(2))}\n\nHours at the steady rates on N such machines:\n\n"
        f"{plain_markdown(hours.round(1))}\n"
    )
    (out / "scaling.md").write_text(text)
    if args.publish is not None:
        args.publish.mkdir(parents=True, exist_ok=True)
        for name in ("scaling.csv", "scaling.md"):
            shutil.copy(out / name, args.publish / name)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
