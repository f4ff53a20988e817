"""The runtime's command line: ``python main.py [options]`` (and ``tissuenet grade``).

``main.py`` only records its start time and calls :func:`main` here; :func:`parse_args` lists the
options (``python main.py --help``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from stages.device import EXIT_DEVICE
from stages.nets import PRECISIONS
from stages.runtime import DEFAULT_TIME_LIMIT_S, TIME_LIMIT_ENV, run

DESCRIPTION = (
    "Grade every slide in data/ and write submission.csv beside main.py (data/ read-only, "
    "assets/ with the weights, no network)."
)


def seconds(text: str) -> float:
    """argparse type: a positive number of seconds."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def levels(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated probabilities in (0, 1]."""
    values = tuple(float(v) for v in text.split(","))
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"levels must be in (0, 1], got {text}")
    return values


def parse_args(argv: list[str] | None = None, root: Path | None = None) -> argparse.Namespace:
    """The runtime's options; ``data/``, ``submission.csv`` and ``assets/`` default to ``root``
    (``main.py``'s folder; the current one when None)."""
    root = Path.cwd() if root is None else root
    parser = argparse.ArgumentParser(prog="python main.py", description=DESCRIPTION)
    parser.add_argument("--data", type=Path, default=root / "data", help="slides and CSVs")
    parser.add_argument("--out", type=Path, default=root / "submission.csv")
    parser.add_argument("--assets", type=Path, default=root / "assets", help="weights + config")
    parser.add_argument(
        "--time-limit",
        type=seconds,
        default=os.environ.get(TIME_LIMIT_ENV) or str(DEFAULT_TIME_LIMIT_S),  # argparse converts
        help=f"seconds for the whole run (default 16 h, or ${TIME_LIMIT_ENV})",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU that passes a test kernel, else the CPU; the log says why), cpu, cuda, "
        f"cuda:1; a device asked for that cannot run the networks exits with status {EXIT_DEVICE}",
    )
    parser.add_argument(
        "--save-heatmaps", type=Path, default=None, help="write per-slide heatmaps/hotspots here"
    )
    parser.add_argument(
        "--contour-levels",
        type=levels,
        default="0.5",
        help="heatmap probability levels outlined in the --save-heatmaps GeoJSON, e.g. 0.5,0.8",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the networks' dtype (auto: float16 on a GPU, bfloat16 on a CPU with native "
        "bfloat16, else float32)",
    )
    parser.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="read each slide only when its turn comes (default: the next one is read meanwhile)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(
    argv: list[str] | None = None, root: Path | None = None, started: float | None = None
) -> int:
    """Parse ``argv`` (:func:`parse_args` with ``root``), set up the log and run
    :func:`stages.runtime.run`, the time limit counted from ``started`` (default: now); returns
    its exit status."""
    args = parse_args(argv, root)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    logging.getLogger("pyvips").setLevel(logging.WARNING)
    return run(
        data=args.data,
        out=args.out,
        assets_dir=args.assets,
        time_limit_s=args.time_limit,
        device=args.device,
        save_heatmaps=args.save_heatmaps,
        started=started,
        prefetch=args.prefetch,
        precision=args.precision,
        contour_levels=args.contour_levels,
    )
