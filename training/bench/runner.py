"""Running the benchmark's modes and reading their runs: one process per mode and set (its wall
time and peak memory), then one row per slide (class, seconds by stage, work done, the I/O and
compute floors of :mod:`training.bench.floors`) and one summary row per run.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stages.config import CascadeConfig, load_assets, load_config
from stages.metric import score
from stages.result import SlideResult
from stages.submission import classes_by_filename, read_table
from training.bench.exhaustive import tiles_class, top_tiles
from training.bench.floors import compute_floor, decode_floor, matmul_gflops, network_flops
from training.bench.modes import Mode, mode_assets
from training.bench.sets import make_sets
from training.fit.decision import Evidence, fit_decision
from training.process import run_main

log = logging.getLogger(__name__)


#: Seconds of process start-up (imports, loading the networks) assumed when none is measured.
STARTUP_S = 5.0
STAGES = ("decode", "tissue", "detector", "hotspots", "classifier", "decision")
#: Columns of ``slides.csv``: one row per slide and mode (NaN where a slide has no result).
SLIDE_COLUMNS = [
    "slide", "label", "class", "gigapixels", "tissue_mm2", "seconds",
    *(f"{s}_s" for s in STAGES),
    "allotment_s", "patches", "windows", "mpx_decoded", "io_floor_s", "compute_floor_s", "failed",
]  # fmt: skip


def startup_s(runs: Path) -> float:
    """Seconds ``main.py`` took to start (imports, networks loaded and frozen) in the set's
    untimed ``cascade k=32`` run under ``runs``, as its log says; :data:`STARTUP_S` when there
    is none (that mode not chosen)."""
    log_file = runs / "cascade_k=32" / "log.txt"
    found = (
        re.search(r"start-up (\d+\.\d+) s", log_file.read_text()) if log_file.is_file() else None
    )
    if found is None:
        log.warning("no start-up measured in %s: assuming %.0f s", log_file, STARTUP_S)
        return STARTUP_S
    return float(found[1])


def run_mode(
    data: Path, out: Path, assets: Path, mode: Mode, device: str, reuse: bool = False
) -> dict:
    """One mode on one set; the run's wall time and peak memory, also saved as
    ``out/measured.json`` (with ``reuse``, a run that has one is not run again)."""
    saved = out / "measured.json"
    if reuse and saved.is_file():
        return json.loads(saved.read_text())
    shutil.rmtree(out, ignore_errors=True)
    n = len(read_table(data / "submission_format.csv"))
    extra: list[str] = []
    if mode.exhaustive:
        if mode.sample_tiles is not None:
            extra += ["--sample-tiles", str(mode.sample_tiles)]
        code, wall, peak = run_main(
            data, out, assets, device, *extra, module="training.bench.exhaustive"
        )
    else:
        if not mode.prefetch:
            extra.append("--no-prefetch")
        extra += ["--precision", mode.precision]
        if mode.per_slide_s is not None:  # start-up and the runtime's 10 % reserve on top
            limit = (startup_s(out.parent) + n * mode.per_slide_s) / 0.9
            extra += ["--time-limit", f"{limit:.1f}"]
        code, wall, peak = run_main(data, out, mode_assets(assets, mode, out), device, *extra)
    if code != 0:
        raise RuntimeError(f"{mode.name} on {data} exited with {code}; see {out / 'log.txt'}")
    log.info("%s on %s: %.0f s, peak %.0f MB", mode.name, data.parent.name, wall, peak)
    measured = {"wall_s": wall, "peak_mb": peak}
    saved.write_text(json.dumps(measured) + "\n")
    return measured


def fit_exhaustive_decision(
    out: Path, assets: Path, device: str, workers: int = 1, data: Path | None = None
) -> CascadeConfig:
    """The shipped config with its decision refitted for the exhaustive mode: the exhaustive
    run's top tiles (run into ``out/fit/exhaustive``, kept) on the labelled test-layout folder
    ``data`` as the evidence; None: the ``FIT_SET`` slides, never in any benchmark set,
    generated into ``out/fit/data``."""
    if data is None:
        data = make_sets(out, ["fit"], workers)["fit"]
    run = out / "fit" / "exhaustive"
    if not (run / "submission.csv").is_file():
        run_mode(data, run, assets, Mode("exhaustive", exhaustive=True), device)
    config = load_config(assets)
    truth = classes_by_filename(read_table(data / "test_labels.csv"))
    evidence = []
    for name, label in truth.items():
        result = SlideResult.load(run / "maps" / f"{Path(name).stem}.npz")
        top = top_tiles(result.grades, config.budget.max_k)
        evidence.append(Evidence(name, top.astype(np.float64), np.zeros((0, 4)), label))
    return replace(config, decision=fit_decision(evidence, config.decision))


def slide_rows(
    data: Path, run: Path, mode: Mode, exhaustive: CascadeConfig | None, floors: dict
) -> pd.DataFrame:
    """One row per slide of a finished run: class, label, seconds, work and floors."""
    truth = classes_by_filename(read_table(data / "test_labels.csv"))
    written = classes_by_filename(read_table(run / "submission.csv"))
    metadata = pd.read_csv(data / "test_metadata.csv").set_index("filename")
    assets = floors["assets"]
    rows = []
    for name, label in truth.items():
        saved = run / "maps" / f"{Path(name).stem}.npz"
        if not (saved.is_file() and saved.with_suffix(".json").is_file()):
            # abandoned at the time limit, never started, or its saving cut short: a fallback row
            rows.append({"slide": name, "label": label, "class": written[name], "failed": True})
            continue
        result = SlideResult.load(saved)
        cls = written[name]
        if mode.exhaustive and exhaustive is not None and len(result.grades):
            cls = tiles_class(result.grades, exhaustive)
        seconds = result.seconds
        windows = result.heatmap.windows if result.heatmap is not None else 0
        mpp = float(metadata.at[name, "resolution"])
        tissue_mm2 = 0.0
        if result.tissue is not None:
            sx, sy = result.tissue_scale
            tissue_mm2 = float(result.tissue.sum()) * sx * sy * mpp**2 / 1e6
        if mode.exhaustive:
            io_floor = seconds.get("decode", 0.0)  # it reads nothing but the tiles it grades
        else:
            io_floor = decode_floor(result, data / name, mpp, assets)
        rows.append(
            {
                "slide": name,
                "label": label,
                "class": cls,
                "gigapixels": metadata.at[name, "width"] * metadata.at[name, "height"] / 1e9,
                "tissue_mm2": tissue_mm2,
                "seconds": seconds.get("slide", seconds.get("total", 0.0)),
                **{f"{s}_s": seconds.get(s, 0.0) for s in STAGES},
                "allotment_s": seconds.get("allotment", math.inf),
                "patches": len(result.grades),
                "windows": windows,
                "mpx_decoded": result.decoded_mpx,
                "io_floor_s": io_floor,
                "compute_floor_s": compute_floor(
                    windows, len(result.grades), floors["flops"], floors["gflops"]
                ),
                "failed": result.source == "fallback",
            }
        )
    return pd.DataFrame(rows, columns=SLIDE_COLUMNS).astype({"failed": bool})


def summarise(slides: pd.DataFrame, run: dict) -> dict:
    """One table row from a run's slide rows."""
    used = (slides["seconds"] / slides["allotment_s"]).max()
    return {
        "score": score(slides["label"].to_numpy(), slides["class"].to_numpy()),
        "s_median": slides["seconds"].median(),
        "s_p95": slides["seconds"].quantile(0.95),
        **{f"{s}_s": slides[f"{s}_s"].mean() for s in STAGES},
        "patches": slides["patches"].mean(),
        "mpx_decoded": slides["mpx_decoded"].mean(),
        "peak_mb": run["peak_mb"],
        "io_floor_s": slides["io_floor_s"].median(),
        "compute_floor_s": slides["compute_floor_s"].median(),
        "worst_of_allotment": used,
        "failed": int(slides["failed"].sum()),
    }


def asset_floors(assets_dir: Path, device: str = "cpu") -> dict:
    """What the floors need of one asset set: its config (the networks dropped once their
    FLOPs per window and per patch are counted) and ``device``'s matrix-multiply rate."""
    assets = load_assets(assets_dir, torch.device("cpu"))
    flops = network_flops(assets)
    light = replace(assets, detector=torch.nn.Identity(), classifier=torch.nn.Identity())
    return {"assets": light, "flops": flops, "gflops": _matmul_rate(device)}


@functools.cache
def _matmul_rate(device: str) -> float:
    """:func:`matmul_gflops` on ``device`` (a GPU: 8192², its float16 rate), measured once per
    process."""
    return matmul_gflops(8192, device=device) if device.startswith("cuda") else matmul_gflops()
