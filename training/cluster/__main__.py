"""Grade archives and build training caches on a Ray cluster (or a local Ray instance).

``python -m training.cluster grade --data DIR --out DIR [--address auto] [--workers N]
[--gpus-per-worker G] …``: every slide of ``DIR`` through the cascade of ``assets/``, one Ray
task per slide, resumable (:mod:`training.cluster.grade`).

``python -m training.cluster cache DATA CACHE [cache options] [--address …] [--workers N]``: the
training cache of ``python -m training.data.cache``, one Ray task per slide
(:mod:`training.cluster.cache`).

Without ``--address`` a local Ray instance is started on this machine; with it, the command
joins an existing cluster (``auto`` for one started on this machine by ``ray start --head``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stages.geojson import DEFAULT_LEVELS
from stages.nets import PRECISIONS
from training.cli import command_parser, setup_logging
from training.cluster.cache import ray_runner
from training.cluster.grade import GradeOptions, grade_archive
from training.cluster.pool import PoolConfig
from training.data import cache

REPO = Path(__file__).resolve().parents[2]


def _pool_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the Ray pool")
    group.add_argument("--address", default=None, help="Ray cluster (default: a local instance)")
    group.add_argument("--workers", type=int, default=None, help="actors (default: all that fit)")
    group.add_argument("--cpus-per-worker", type=float, default=None, help="default 1 on CPUs")
    group.add_argument("--gpus-per-worker", type=float, default=None, help="default 1 with GPUs")
    group.add_argument("--local-cpus", type=int, default=None, help="a local instance's CPUs")


def _pool(args: argparse.Namespace) -> PoolConfig:
    return PoolConfig(
        args.address, args.workers, args.cpus_per_worker, args.gpus_per_worker, args.local_cpus
    )


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.cluster", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    grade = commands.add_parser("grade", help="grade every slide of a folder")
    grade.add_argument("--data", type=Path, required=True, help="slides (and their CSVs)")
    grade.add_argument("--out", type=Path, required=True, help="results (resumed when it exists)")
    grade.add_argument("--assets", type=Path, default=REPO / "assets", help="weights + config")
    grade.add_argument("--metadata", type=Path, default=None, help="µm/pixel table (CSV)")
    grade.add_argument(
        "--seconds-per-slide", type=float, default=GradeOptions.seconds_per_slide,
        help=f"each slide's time budget (default {GradeOptions.seconds_per_slide:g})",
    )  # fmt: skip
    grade.add_argument("--limit", type=int, default=None, help="grade at most N slides this run")
    grade.add_argument(
        "--no-heatmaps", dest="heatmaps", action="store_false",
        help="write only results.csv rows, not each slide's heatmap files",
    )  # fmt: skip
    grade.add_argument("--device", default=None, help="cpu, cuda (default: GPU if any)")
    grade.add_argument("--precision", choices=PRECISIONS, default="auto")
    _pool_arguments(grade)
    build = commands.add_parser("cache", help="build a training cache")
    cache.add_arguments(build)
    _pool_arguments(build)
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "cache":
        return cache.from_arguments(args, ray_runner(_pool(args)))
    options = GradeOptions(
        args.seconds_per_slide, args.device, args.precision, DEFAULT_LEVELS, args.heatmaps
    )
    report = grade_archive(
        args.data, args.out, args.assets, _pool(args), options, args.limit, args.metadata
    )
    print(
        f"graded {len(report.graded)} slides in this run; {report.done}/{report.total} done"
        + (f"; wrote {report.output}" if report.output else "; run again to resume")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
