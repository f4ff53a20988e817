"""The benchmark's slide sets, generated once into ``OUT/<set>/data`` and kept between runs.

``heldout``: 48 generated test-layout slides of the ``realistic`` cohort (seed 3001, as ``make
evaluate``); ``real``: six
slides at the real sizes, µm/pixel and annotation layouts of 10–13 gigapixel rows of the real
metadata (``training/data/reference/tissuenet``); ``canvas``: its 271,950 × 294,038 px row;
``real2``: the ``real`` set's first two slides; ``fit``: the exhaustive mode's decision-fit
slides (``realistic``, seed 3005). :func:`repeat_set` lists a set's slides over and over under
other names. Every set gets the generator's ground truth (``truth_*.csv``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from training.data.synthetic import layout_specs, sample_specs, write_dataset
from training.data.synthetic.cohort import COHORTS

log = logging.getLogger(__name__)


#: The real metadata and annotations whose rows the real-size slides reproduce.
LAYOUT = Path(__file__).resolve().parents[1] / "data" / "reference" / "tissuenet"
#: Rows of the real metadata reproduced at scale 1: six typical 10–13 gigapixel slides of
#: classes 0–3, and one of the 271,950 × 294,038 px canvases.
REAL_ROWS = (
    "C12_B509_S12.tif",
    "C07_B023_S21.tif",
    "C01_B291_S01.tif",
    "C08_B030_S08.tif",
    "C06_B087_S21.tif",
    "C01_B256_S01.tif",
)
CANVAS_ROW = "C13_B301_S11.tif"
LAYOUT_SEED = 8
HELDOUT = (48, 3001)
FIT_SET = (32, 3005)


def make_sets(out: Path, names: list[str], workers: int = 1) -> dict[str, Path]:
    """Generate (or reuse) the named slide sets (``fit``: the exhaustive mode's decision-fit
    slides), ``workers`` slides at a time; ``name → data folder``."""
    sets = {}
    rows = pd.read_csv(LAYOUT / "train_metadata.csv").set_index("filename")
    layout = rows.loc[[*REAL_ROWS, CANVAS_ROW]].reset_index()
    specs = layout_specs(layout, LAYOUT / "train_annotations.csv", seed=LAYOUT_SEED)
    chosen = {
        "heldout": lambda: sample_specs(*HELDOUT, COHORTS["realistic"], "test"),
        "fit": lambda: sample_specs(*FIT_SET, COHORTS["realistic"], "test"),
        "real": lambda: specs[: len(REAL_ROWS)],
        "canvas": lambda: specs[len(REAL_ROWS) :],
    }
    for name in names:
        data = out / name / "data"
        sets[name] = data
        if (data / "submission_format.csv").is_file():
            continue
        start = time.monotonic()
        if name == "real2":
            repeat_set(make_sets(out, ["real"], workers)["real"], data, 2)
        elif name in chosen:
            write_dataset(data, chosen[name](), "test", resume=True, workers=workers, truth=True)
        else:
            raise ValueError(f"unknown slide set {name!r}")
        log.info("generated set %s in %.0f s", name, time.monotonic() - start)
    return sets


def repeat_set(source: Path, target: Path, n: int) -> Path:
    """A test-layout folder of ``n`` slides that are ``source``'s, listed over and over under
    other names (symbolic links), with its CSVs."""
    if (target / "submission_format.csv").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    tables = {name: pd.read_csv(source / name) for name in ("test_metadata.csv", "test_labels.csv")}
    names = list(tables["test_labels.csv"]["filename"])
    renamed = [f"r{i:03d}_{names[i % len(names)]}" for i in range(n)]
    for new, old in zip(renamed, (names[i % len(names)] for i in range(n)), strict=True):
        (target / new).symlink_to((source / old).resolve())
    for csv, table in tables.items():
        table = table.set_index("filename").loc[[r.split("_", 1)[1] for r in renamed]]
        table.index = renamed
        table.rename_axis("filename").reset_index().to_csv(target / csv, index=False)
    labels = pd.read_csv(target / "test_labels.csv")
    labels[["0", "1", "2", "3"]] = 0
    labels.to_csv(target / "submission_format.csv", index=False)
    return target
