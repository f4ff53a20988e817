"""The time-limit sweep of ``make benchmark --limits``: the score of :data:`LIMIT_SLIDES`
real-size slides (the ``real`` set's six, listed over and over under other names) under each
time limit of :data:`RUN_LIMITS_S`, from 16 h down to 30 s.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from stages.metric import score
from stages.submission import classes_from_onehot, read_table
from training.bench.sets import repeat_set
from training.process import run_main

log = logging.getLogger(__name__)


RUN_LIMITS_S = {
    "16 h": 16 * 3600.0,
    "1 h": 3600.0,
    "15 min": 900.0,
    "5 min": 300.0,
    "2 min": 120.0,
    "1 min": 60.0,
    "30 s": 30.0,
}
LIMIT_SLIDES = 100


def run_limits(out: Path, real: Path, assets: Path, device: str) -> pd.DataFrame:
    """The score of ``LIMIT_SLIDES`` real-size slides under each of ``RUN_LIMITS_S``."""
    data = repeat_set(real, out / "limits" / "data", LIMIT_SLIDES)
    labels = read_table(data / "test_labels.csv")
    y_true = classes_from_onehot(labels)
    rows = []
    for name, limit in RUN_LIMITS_S.items():
        run = out / "limits" / name.replace(" ", "")
        shutil.rmtree(run, ignore_errors=True)  # an earlier run's maps are not this run's
        code, wall, peak = run_main(data, run, assets, device, "--time-limit", str(limit))
        if code != 0:
            raise RuntimeError(f"limit {name}: main.py exited with {code}")
        y_pred = classes_from_onehot(read_table(run / "submission.csv"))
        summaries = [json.loads(p.read_text()) for p in sorted((run / "maps").glob("*.json"))]
        used = [s["seconds"]["slide"] / s["seconds"]["allotment"] for s in summaries]
        rows.append(
            {
                "time limit": name,
                "slides": len(y_true),
                "graded": len(summaries),
                "score": score(y_true, y_pred),
                "wall_s": wall,
                "patches per slide": np.mean([s["graded"] for s in summaries]),
                "coarser detector page": sum(
                    s["pages"].get("detector", -1) > s["pages"].get("detector_base", 99)
                    for s in summaries
                ),
                "no detector pass": sum("detector" not in s["pages"] for s in summaries),
                "most of its allotment a slide used, %": 100 * max(used, default=0.0),
                "peak_mb": peak,
            }
        )
        log.info("limit %s: %s", name, rows[-1])
    return pd.DataFrame(rows)
