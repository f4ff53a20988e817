"""The reliability battery: bad inputs through the PACKED submission in the local runtime.

Each case ends with exit status 0, a valid ``submission.csv`` holding every row of
``submission_format.csv`` and a log line naming the slide and the cause; only run-wide problems
(bad assets, no format file) exit non-zero, with one clear message and before any slide is read.
Tiny random-weight networks: these tests check mechanics, not grades.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pyvips
from helpers import rezip, tissue, write_format, write_tiff

from stages.decision import decide_slide
from stages.submission import classes_by_filename, read_table
from training.data.synthetic import SynthConfig, sample_specs, write_sparse_canvas
from training.pack.package import pack
from training.pack.sandbox import RunOutcome, check_outcome, run_local
from training.presets import TINY

pytestmark = pytest.mark.slow

#: The class of a slide that cannot be graded: the prior's least-cost class.
FALLBACK = decide_slide([], [], TINY.decision).cls
#: Size of the largest real TissueNet slides (page 0).
HUGE = (271_950, 294_038)


@pytest.fixture(scope="module")
def submission(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    """The zip as ``make pack-submission`` builds it, with tiny random-weight assets."""
    root = tmp_path_factory.mktemp("submission")
    return pack(root / "submission.zip", assets=assets).path


def make_data(
    root: Path,
    listed: list[str],
    files: dict[str, Path | bytes],
    metadata: pd.DataFrame | None = None,
) -> Path:
    """A ``data/`` folder: ``files`` (written slides, moved in, or raw bytes), the format listing
    ``listed`` and ``metadata`` (default: every listed slide at 0.25 µm/px)."""
    data = root / "data"
    data.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (data / name).write_bytes(content)
        else:
            shutil.move(content, data / name)
    write_format(data, listed, 0.25 if metadata is None else metadata)
    return data


def run(submission: Path, data: Path, time_limit_s: float = 600, grace_s: float = 15) -> RunOutcome:
    return run_local(submission, data, data.parent / "out", time_limit_s, grace_s)


def line(outcome: RunOutcome, *parts: str) -> str:
    """The first log line holding every one of ``parts``."""
    text = outcome.log_text()
    found = [x for x in text.splitlines() if all(p in x for p in parts)]
    assert found, f"no log line with {parts}:\n{text}"
    return found[0]


def classes(outcome: RunOutcome) -> dict[str, int]:
    assert outcome.submission is not None, outcome.log_text()
    return classes_by_filename(read_table(outcome.submission))


def assert_valid_run(outcome: RunOutcome, data: Path) -> None:
    """Exit 0, within the limit, every row of the format, valid."""
    assert outcome.returncode == 0, outcome.log_text()
    assert check_outcome(outcome, data / "submission_format.csv") == [], outcome.log_text()


#: How a slide's result line must read: graded by the networks, failed (its error, then the
#: fallback class), or decided by the prior because it holds no tissue.
GRADED, FAILED, PRIOR = "graded", "failed", "prior"
#: A tissue line that found none (``: 0.0%`` at its end: ``10.0%`` does not match).
NO_TISSUE = r"tissue on page \d+ \(\d+x\d+ px at [\d.]+ µm/px\): 0\.0%$"
#: name → (log fragments naming the cause, how the slide's result line reads)
BAD_SLIDES = {
    "good_1.tif": (("from patches",), GRADED),
    "truncated.tif": (("FAILED", "not a readable TIFF"), FAILED),
    "zero.tif": (("FAILED", "empty file"), FAILED),
    "png.tif": (("FAILED", "not a readable TIFF", "Not a TIFF file"), FAILED),
    "text.tif": (("FAILED", "not a readable TIFF", "Not a TIFF file"), FAILED),
    "missing.tif": (("FAILED", "no such file"), FAILED),
    "single_page.tif": (("tissue on page 0 (1600x1200 px at 0.25 µm/px)",), GRADED),
    "few_pages.tif": (("tissue on page 1 (1024x1024 px at 0.50 µm/px)",), GRADED),
    "grey.tif": ((), PRIOR),
    "rgba.tif": (("from patches",), GRADED),
    "white.tif": ((), PRIOR),
    "black.tif": ((), PRIOR),
    "pen.tif": ((), PRIOR),
    "good_2.tif": (("from patches",), GRADED),
}


def bad_slides(tmp: Path) -> dict[str, Path | bytes]:
    """Every kind of odd file the runtime's ``data/`` could hold (``missing.tif`` absent)."""
    pen = np.full((1200, 1600, 3), 250, np.uint8)
    pen[500:560, 100:1500] = (30, 160, 40)
    pen[150:1000, 700:740] = (40, 60, 200)
    rgba = np.concatenate([tissue(5), np.full((1200, 1600, 1), 255, np.uint8)], axis=2)
    good = write_tiff(tmp / "good_1.tif", tissue(1))
    return {
        "good_1.tif": good,
        "truncated.tif": good.read_bytes()[: good.stat().st_size // 2],
        "zero.tif": b"",
        "png.tif": pyvips.Image.new_from_array(tissue(2, (200, 200))).pngsave_buffer(),
        "text.tif": b"this is not a slide\n",
        "unlisted.tif": write_tiff(tmp / "unlisted.tif", tissue(3, (600, 600))),
        "single_page.tif": write_tiff(tmp / "single_page.tif", tissue(4), pyramid=False),
        "few_pages.tif": write_tiff(tmp / "few_pages.tif", tissue(6, (2048, 2048)), tile=1024),
        "grey.tif": write_tiff(tmp / "grey.tif", tissue(7)[..., 1]),
        "rgba.tif": write_tiff(tmp / "rgba.tif", rgba),
        "white.tif": write_tiff(tmp / "white.tif", np.full((1200, 1600, 3), 255, np.uint8)),
        "black.tif": write_tiff(tmp / "black.tif", np.zeros((1200, 1600, 3), np.uint8)),
        "pen.tif": write_tiff(tmp / "pen.tif", pen),
        "good_2.tif": write_tiff(tmp / "good_2.tif", tissue(8)),
    }


def test_every_bad_slide_costs_only_its_row(submission: Path, tmp_path: Path) -> None:
    data = make_data(tmp_path, list(BAD_SLIDES), bad_slides(tmp_path))
    outcome = run(submission, data)
    assert_valid_run(outcome, data)
    assert FALLBACK == 1  # the prior's least-cost class, as the README says
    got = classes(outcome)
    text = outcome.log_text()
    for name, (causes, kind) in BAD_SLIDES.items():
        if causes:
            line(outcome, f"{name}: ", *causes)
        result = line(outcome, f"] {name}: ")  # the slide's result line
        if kind == GRADED:
            assert "FAILED" not in result and " from prior" not in result, result
            assert got[name] == int(result.split(": class ")[1].split()[0])
        elif kind == FAILED:  # its error, then the fallback: not a graded class 1
            assert re.search(rf"\] {re.escape(name)}: FAILED \(.+\) -> fallback class 1$", result)
            assert got[name] == FALLBACK
        else:  # no tissue: the prior decides, which is the fallback's class
            assert re.search(rf"{re.escape(name)}: {NO_TISSUE}", text, re.MULTILINE), name
            assert f"] {name}: class {FALLBACK} from prior, 0/0 hotspots graded," in result
            assert got[name] == FALLBACK
    assert "unlisted.tif" in line(outcome, "not in submission_format.csv")
    assert "unlisted.tif" not in got
    assert "missing.tif" in line(outcome, "listed slides are missing")


def test_a_damaged_format_still_answers_every_row(submission: Path, tmp_path: Path) -> None:
    """A duplicated row, a byte-order mark, CRLF, spaces, an extra column and a blank line in
    ``submission_format.csv``: every row answered in the format's order, the duplicated slide
    graded once and its class in each of its rows, a warning naming each oddity."""
    files = {n: write_tiff(tmp_path / n, tissue(i)) for i, n in enumerate(["a.tif", "b.tif"], 61)}
    data = make_data(tmp_path, list(files), files)
    (data / "submission_format.csv").write_bytes(
        b"\xef\xbb\xbffilename,0,1,2,3,url\r\na.tif,0,0,0,0,s3://a\r\n b.tif ,0,0,0,0,s3://b\r\n"
        b"\r\na.tif,0,0,0,0,s3://a\r\n"
    )
    outcome = run(submission, data)
    assert_valid_run(outcome, data)
    written = read_table(outcome.submission, unique=False)
    assert written["filename"].tolist() == ["a.tif", "b.tif", "a.tif"]
    assert written.iloc[0].tolist() == written.iloc[2].tolist()
    assert line(outcome, "WARNING", "1 duplicated filename(s)", "a.tif")
    for odd in ("a byte-order mark", "spaces around 1 filename(s)", "1 blank line(s)", ",url"):
        line(outcome, "WARNING", "submission_format.csv", odd)
    text = outcome.log_text()
    assert text.count("] a.tif: ") == 1 and "2 slides, time limit" in text  # graded once
    assert "FAILED" not in text


#: Metadata variants over slides a, b (no resolution tags in the file) and c.
METADATA = {
    "filename only": pd.DataFrame({"filename": ["a.tif", "b.tif", "c.tif"]}),
    "missing and non-numeric resolution": pd.DataFrame(
        {"filename": ["a.tif", "b.tif", "c.tif"], "resolution": ["", "abc", "0.25"]}
    ),
    "extra columns, other order": pd.DataFrame(
        {
            "filename": ["c.tif", "b.tif", "a.tif"],
            "width": [1600] * 3,
            "height": [1200] * 3,
            "resolution": [0.25, 0.5, 0.25],
            "magnification": [40, 20, 40],
            "url": ["s3://c", "s3://b", "s3://a"],
        }
    ),
}
#: What each variant must log: (slide or file, fragment).
METADATA_LOG = {
    "filename only": [
        ("test_metadata.csv", "no 'resolution' column"),
        ("b.tif", "using default 0.2500 µm/px"),
    ],
    "missing and non-numeric resolution": [
        ("a.tif", "resolution empty"),
        ("b.tif", "'abc'"),
        ("b.tif", "using default 0.2500 µm/px"),
    ],
    "extra columns, other order": [
        ("a.tif", "tissue on page 2 (400x300 px at 1.00 µm/px)"),
        ("b.tif", "tissue on page 2 (400x300 px at 2.00 µm/px)"),
        ("c.tif", "tissue on page 2 (400x300 px at 1.00 µm/px)"),
    ],
}


@pytest.mark.parametrize("variant", list(METADATA))
def test_odd_metadata_still_grades_every_slide(
    submission: Path, tmp_path: Path, variant: str
) -> None:
    files = {
        "a.tif": write_tiff(tmp_path / "a.tif", tissue(11)),
        "b.tif": write_tiff(tmp_path / "b.tif", tissue(12), mpp=None),
        "c.tif": write_tiff(tmp_path / "c.tif", tissue(13)),
    }
    data = make_data(tmp_path, ["a.tif", "b.tif", "c.tif"], files, METADATA[variant])
    outcome = run(submission, data)
    assert_valid_run(outcome, data)
    for name, fragment in METADATA_LOG[variant]:
        line(outcome, name, fragment)
    for name in files:
        assert "FAILED" not in line(outcome, f"] {name}: ")


@pytest.mark.parametrize("pyramid", [True, False], ids=["pyramid", "single-page"])
def test_huge_mostly_white_canvas_among_small_slides(
    submission: Path, tmp_path: Path, pyramid: bool
) -> None:
    """The largest real canvas, as a pyramid and as one page (a conversion that forgot the
    pyramid: 80 Gpx, far more than its share of the run pays to decode, so its mask comes from
    a sample of its blocks and its pages from shrinking page 0), among two small slides."""
    spec = sample_specs(1, 3, SynthConfig(size_range=(4000, 4000)))[0]
    canvas = write_sparse_canvas(
        tmp_path / "canvas.tif", *HUGE, spec.mpp, spec, (120_000, 150_000), pyramid=pyramid
    )
    files = {
        "small_1.tif": write_tiff(tmp_path / "small_1.tif", tissue(21)),
        "canvas.tif": canvas,
        "small_2.tif": write_tiff(tmp_path / "small_2.tif", tissue(22)),
    }
    metadata = pd.DataFrame(
        {"filename": list(files), "width": [1600, HUGE[0], 1600], "height": [1200, HUGE[1], 1200]}
    ).assign(resolution=[0.25, spec.mpp, 0.25])
    data = make_data(tmp_path, list(files), files, metadata)
    outcome = run(submission, data)
    assert_valid_run(outcome, data)
    assert "FAILED" not in line(outcome, "] canvas.tif: ")
    # the mask on the overview page of at most 4 Mpx (tissue.max_mask_pixels), not the 20 Mpx one
    assert line(outcome, "canvas.tif: tissue on page 8 (1062x1148 px")
    if not pyramid:
        assert line(outcome, "canvas.tif: page 0 sampled, one 512-px block in")
    assert outcome.peak_rss_bytes < 2.5e9, f"peak memory {outcome.peak_rss_bytes / 1e9:.2f} GB"


def test_time_limit_far_too_short_still_writes_every_row(submission: Path, tmp_path: Path) -> None:
    """400 slides (single-page, all tissue: no detector pass fits their share, so each takes the
    cheaper path, ~0.1 s here) in a 30 s run, of which start-up takes several seconds (tens on a
    busy machine): far fewer than 400 fit, so the budget must pass slides over (skipped evenly
    where their cheapest path costs more than their share; not started where the time runs out),
    and the budget, not the watchdog, ends the run. Which of the two it is depends on the
    machine's speed. (Whether it ends inside the limit is a wall-time figure; the cut at the
    limit is checked on a fake clock in test_runtime.py.)"""
    template = write_tiff(
        tmp_path / "template.tif", tissue(31, (1800, 2400), whole=True), pyramid=False
    ).read_bytes()
    names = [f"s{i:03d}.tif" for i in range(400)]
    data = make_data(tmp_path, names, dict.fromkeys(names, template))
    outcome = run(submission, data, time_limit_s=30, grace_s=15)
    text = outcome.log_text()
    assert outcome.returncode == 0 and not outcome.timed_out, text
    problems = check_outcome(outcome, data / "submission_format.csv")
    assert [p for p in problems if "over the time limit" not in p] == [], text
    cut = re.search(r"time limit: (\d+) slides not started get the fallback class (\d)", text)
    started = len(names) - (int(cut[1]) if cut else 0)
    assert cut is None or int(cut[2]) == FALLBACK, text
    assert "abandoning" not in text  # no slide was still running at the limit
    got = classes(outcome)
    skipped = int(re.search(r"skipped by the budget (\d+)", text)[1])
    assert skipped + len(names) - started > 0, f"the budget passed no slide over:\n{text}"
    graded = [n for n in names[:started] if f"] {n}: class " in text]
    assert len(graded) + skipped == started and graded, text  # the others were skipped unread
    for name in graded:  # each graded row is its slide's class
        row = line(outcome, f"] {name}: class ")
        assert got[name] == int(row.split(": class ")[1].split()[0])
    for name in sorted(set(names) - set(graded)):  # skipped or never started: the fallback's row
        assert got[name] == FALLBACK and f"] {name}: " not in text
    # the slides shared the time: no detector pass fitted a slide's share, so the budget took the
    # cheaper path (tissue hotspots graded by stage 2) rather than overrun it
    assert "no detector pass: its cheapest, page 0, is estimated at" in text, text


WRONG_CONFIG = dataclasses.replace(
    TINY, classifier=dataclasses.replace(TINY.classifier, encoder="resnet18")
)
BAD_ASSETS = {
    "missing weight file": (
        {"drop": "assets/detector.safetensors"},
        ("weight file missing", "assets/detector.safetensors"),
    ),
    "config not matching the weights": (
        {"replace": {"assets/config.json": json.dumps(dataclasses.asdict(WRONG_CONFIG))}},
        ("assets/classifier.safetensors", "does not match the model in the config"),
    ),
}


@pytest.mark.parametrize("case", list(BAD_ASSETS))
def test_bad_assets_stop_the_run_before_any_slide(
    submission: Path, tmp_path: Path, case: str
) -> None:
    change, fragments = BAD_ASSETS[case]
    broken = rezip(submission, tmp_path / "broken.zip", **change)
    data = make_data(tmp_path, ["a.tif"], {"a.tif": write_tiff(tmp_path / "a.tif", tissue(41))})
    outcome = run(submission=broken, data=data)
    assert outcome.returncode == 3
    errors = [x for x in outcome.log_text().splitlines() if " ERROR " in x]
    assert len(errors) == 1 and all(f in errors[0] for f in fragments), outcome.log_text()
    assert "a.tif" not in outcome.log_text()  # no slide was read
    assert outcome.submission is None


def test_no_submission_format_is_one_clear_error(submission: Path, tmp_path: Path) -> None:
    data = make_data(tmp_path, ["a.tif"], {"a.tif": write_tiff(tmp_path / "a.tif", tissue(51))})
    (data / "submission_format.csv").unlink()
    outcome = run(submission, data)
    assert outcome.returncode == 2
    errors = [x for x in outcome.log_text().splitlines() if " ERROR " in x]
    assert len(errors) == 1 and "submission_format.csv: no such file" in errors[0]
    assert check_outcome(outcome, data / "submission_format.csv")[:2] == [
        f"main.py exited with status 2 (see {outcome.log})",
        "main.py wrote no submission.csv",
    ]
