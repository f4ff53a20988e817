"""Benchmark the runtime job: per-slide seconds by stage and peak memory, as main.py runs it.

``python -m training.evaluate.benchmark OUT_DIR [--slides 6] [--assets assets] [--device cpu]``

1. generates ``--slides`` synthetic test slides (``training.data.synthetic``) and one real-size
   canvas: the largest slide of ``--layout`` (default: the real TissueNet metadata copied into
   ``tests/data/tissuenet/``, 271,950 × 294,038 px) as a mostly-glass sparse TIFF holding one
   generated tissue patch;
2. runs ``main.py`` on each set in its own process (``--save-heatmaps`` gives the per-stage
   seconds), measuring that process's peak resident memory (``wait4`` rusage);
3. prints a table per slide and a summary per run. Nothing here is asserted: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from training.data.synthetic import sample_specs, write_dataset

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LAYOUT = REPO / "tests" / "data" / "tissuenet" / "train_metadata.csv"


def run_main(data: Path, out: Path, assets: Path, device: str) -> tuple[int, float, float]:
    """Run main.py on ``data``; return (exit status, wall seconds, peak RSS in MB)."""
    maps = out / "maps"
    command = [sys.executable, str(REPO / "main.py"), "--data", str(data)]
    command += ["--out", str(out / "submission.csv"), "--assets", str(assets)]
    command += ["--device", device, "--save-heatmaps", str(maps)]
    start = time.monotonic()
    with open(out / "log.txt", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - start
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024  # KB on Linux


def stage_table(out: Path, data: Path) -> pd.DataFrame:
    """One row per slide from the saved ``<stem>.json`` summaries and the metadata."""
    metadata = pd.read_csv(data / "test_metadata.csv").set_index("filename")
    rows = []
    for path in sorted((out / "maps").glob("*.json")):
        summary = json.loads(path.read_text())
        name = summary["filename"]
        seconds = summary["seconds"]
        rows.append(
            {
                "slide": name,
                "size": f"{metadata.at[name, 'width']}x{metadata.at[name, 'height']}",
                "pages t/d/c": "/".join(
                    str(summary["pages"].get(k, "-")) for k in ("tissue", "detector", "classifier")
                ),
                "tissue_s": seconds.get("tissue", 0.0),
                "detector_s": seconds.get("detector", 0.0),
                "classifier_s": seconds.get("classifier", 0.0),
                "total_s": seconds.get("total", 0.0),
                "graded": f"{summary['graded']}/{summary['hotspots']}",
                "class": summary["class"],
            }
        )
    return pd.DataFrame(rows)


def largest_layout(metadata_csv: Path) -> tuple[str, int, int]:
    """(filename, width, height) of the largest slide in a real metadata CSV."""
    table = pd.read_csv(metadata_csv)
    row = table.loc[(table["width"] * table["height"]).idxmax()]
    return str(row["filename"]), int(row["width"]), int(row["height"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate.benchmark", description=__doc__
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--slides", type=int, default=6)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--assets", type=Path, default=REPO / "assets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layout", type=Path, default=DEFAULT_LAYOUT)
    args = parser.parse_args(argv)
    pd.set_option("display.width", 160)

    runs: list[tuple[str, Path]] = []
    slides = args.out_dir / "slides" / "data"
    if not (slides / "submission_format.csv").exists():
        start = time.monotonic()
        write_dataset(slides, sample_specs(args.slides, args.seed), "test")
        print(f"generated {args.slides} slides in {time.monotonic() - start:.1f} s")
    runs.append((f"{args.slides} generated slides", slides))
    if args.layout.is_file():
        name, width, height = largest_layout(args.layout)
        canvas = args.out_dir / "canvas" / "data"
        if not (canvas / "submission_format.csv").exists():
            start = time.monotonic()
            write_dataset(canvas, sample_specs(1, args.seed + 1), "test", canvas=(width, height))
            print(f"wrote a {width}x{height} canvas in {time.monotonic() - start:.1f} s")
        runs.append((f"real-size canvas {width}x{height} ({name})", canvas))
    else:
        print(f"no {args.layout}: skipping the real-size canvas")

    status = 0
    for title, data in runs:
        out = data.parent / "run"
        out.mkdir(parents=True, exist_ok=True)
        code, wall, peak_mb = run_main(data, out, args.assets, args.device)
        print(f"\n== {title}: exit {code}, wall {wall:.1f} s, peak RSS {peak_mb:.0f} MB")
        table = stage_table(out, data)
        if len(table):
            print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
            sums = table[["tissue_s", "detector_s", "classifier_s", "total_s"]].sum()
            per_slide = sums / len(table)
            print("mean s/slide: " + ", ".join(f"{k} {v:.2f}" for k, v in per_slide.items()))
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
