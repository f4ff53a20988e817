"""main.py end to end (tiny random-weight networks: these tests check mechanics, not accuracy)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from stages.submission import read_table, validate
from training.data.synthetic import generate_dataset
from training.pack.export import init_assets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_assets(tmp_path_factory.mktemp("assets") / "assets")


def run_main(data: Path, out: Path, assets: Path, *extra: str, timeout: float = 300) -> tuple:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--data", str(data), "--out", str(out)]
        + ["--assets", str(assets), "--device", "cpu", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def test_generated_slides_give_a_valid_submission_and_heatmaps(
    tmp_path: Path, assets: Path
) -> None:
    data = tmp_path / "data"
    generate_dataset(data, 3, seed=21, split="test")
    out = tmp_path / "submission.csv"
    code, log, _ = run_main(data, out, assets, "--save-heatmaps", str(tmp_path / "maps"))
    assert code == 0, log
    fmt = read_table(data / "submission_format.csv")
    validate(read_table(out), fmt)
    for i, name in enumerate(fmt["filename"]):
        line = next(line for line in log.splitlines() if f"[{i + 1}/3] {name}: class" in line)
        assert "hotspots graded" in line and "ETA" in line
        saved = np.load(tmp_path / "maps" / f"{Path(name).stem}.npz")
        assert saved["heatmap"].ndim == 3 and saved["heatmap"].shape[0] == 4
        assert saved["tissue"].any()
        assert len(saved["hotspot_boxes"]) == len(saved["hotspot_scores"]) > 0
        qupath = json.loads((tmp_path / "maps" / f"{Path(name).stem}.geojson").read_text())
        hotspots = [f for f in qupath["features"] if f["properties"]["name"].startswith("Hotspot")]
        assert len(hotspots) == len(saved["hotspot_boxes"])
        summary = json.loads((tmp_path / "maps" / f"{Path(name).stem}.json").read_text())
        assert summary["pages"]["detector"] in (4, 5) and summary["pages"]["classifier"] in (0, 1)
    assert "done: 3 slides" in log and "failed 0" in log


def test_stuck_slide_is_abandoned_at_the_limit(tmp_path: Path, assets: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, 2, seed=22, split="test")
    first = read_table(data / "submission_format.csv")["filename"][0]
    out = tmp_path / "submission.csv"
    # grade_slide hangs as a native call might; the watchdog must still write the file in time
    script = (
        "import sys, time; sys.argv[0] = 'main.py'; sys.path.insert(0, sys.argv[1]);"
        "import stages.cascade as c;"
        "c.Cascade.grade_slide = lambda *a, **k: time.sleep(3600);"
        "import main; sys.exit(main.main(sys.argv[2:]))"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(REPO), "--data", str(data), "--out", str(out)]
        + ["--assets", str(assets), "--device", "cpu", "--time-limit", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert elapsed < 10 + 10, f"took {elapsed:.1f} s"
    assert f"abandoning {first}" in log
    validate(read_table(out), read_table(data / "submission_format.csv"))
