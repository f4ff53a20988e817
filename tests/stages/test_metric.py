"""The TissueNet metric: published error matrix, exact scores, confusion counts and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REAL_TISSUENET, REPO

from stages.metric import ERROR_MATRIX, confusion_matrix, main, score
from stages.submission import build_submission, read_table, write_submission

PUBLISHED = [
    [0.0, 0.1, 0.7, 1.0],
    [0.1, 0.0, 0.3, 0.7],
    [0.7, 0.3, 0.0, 0.3],
    [1.0, 0.7, 0.3, 0.0],
]


def test_error_matrix_is_the_published_one() -> None:
    assert ERROR_MATRIX.tolist() == PUBLISHED
    assert ERROR_MATRIX.dtype == np.float64
    assert not ERROR_MATRIX.flags.writeable


@pytest.mark.parametrize("true", range(4))
@pytest.mark.parametrize("pred", range(4))
def test_one_slide_scores_one_minus_its_entry(true: int, pred: int) -> None:
    assert score([true], [pred]) == 1.0 - PUBLISHED[true][pred]


def test_perfect_worst_and_mean() -> None:
    assert score([0, 1, 2, 3, 3], [0, 1, 2, 3, 3]) == 1.0
    assert score([0, 3], [3, 0]) == 0.0
    # errors 0.1 + 0.0 + 0.3 + 1.0 = 1.4 over 4 slides
    assert score(np.array([0, 1, 2, 3]), np.array([1, 1, 3, 0])) == pytest.approx(1 - 1.4 / 4)


def test_always_low_grade_on_the_real_label_mix() -> None:
    # 270 / 288 / 238 / 219 slides of classes 0 / 1 / 2 / 3, all predicted 1:
    # errors 270 * 0.1 + 288 * 0.0 + 238 * 0.3 + 219 * 0.7 = 27 + 0 + 71.4 + 153.3 = 251.7,
    # score = 1 - 251.7 / 1015 = 763.3 / 1015 = 0.75202
    y_true = np.repeat([0, 1, 2, 3], [270, 288, 238, 219])
    result = score(y_true, np.ones_like(y_true))
    assert result == pytest.approx(763.3 / 1015)
    assert round(result, 3) == 0.752


def test_confusion_matrix_counts() -> None:
    matrix = confusion_matrix([0, 0, 1, 2, 3, 3, 3], [0, 1, 1, 3, 3, 3, 0])
    assert matrix.dtype == np.int64
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 2]]
    assert confusion_matrix([], []).tolist() == [[0] * 4] * 4


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([], [], "non-empty"),
        ([0, 1], [0], "equal, non-empty lengths, got 2 and 1"),
        ([4], [0], "integer classes 0..3"),
        ([0], [-1], "integer classes 0..3"),
        ([0.0], [0], "integer classes 0..3"),
        ([[0, 1]], [[0, 1]], "1-D class indices"),
    ],
)
def test_bad_inputs(y_true: list, y_pred: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score(y_true, y_pred)


def write_table(path: Path, rows: dict[str, int]) -> Path:
    """A one-hot table at ``path``: filename → class, in the given order."""
    table = build_submission(pd.DataFrame({"filename": list(rows)}), rows, fallback=0)
    write_submission(table, path)
    return path


def test_cli_prints_score_and_confusion_matrix(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = write_table(tmp_path / "labels.csv", {"a.tif": 0, "b.tif": 1, "c.tif": 2, "d.tif": 3})
    sub = write_table(tmp_path / "sub.csv", {"a.tif": 1, "b.tif": 1, "c.tif": 3, "d.tif": 0})
    assert main([str(sub), str(labels)]) == 0
    assert capsys.readouterr().out == (
        "slides: 4\n"
        "score:  0.6500\n"  # 1 - (0.1 + 0.0 + 0.3 + 1.0) / 4
        "true\\pred      0      1      2      3\n"
        "        0      0      1      0      0\n"
        "        1      0      1      0      0\n"
        "        2      0      0      0      1\n"
        "        3      1      0      0      0\n"
    )


def test_cli_rejects_an_invalid_submission(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    labels = write_table(tmp_path / "labels.csv", {"a.tif": 0, "b.tif": 1})
    sub = tmp_path / "sub.csv"
    sub.write_text("filename,0,1,2,3\na.tif,1,0,0,0\nb.tif,0,1,1,0\n")
    assert main([str(sub), str(labels)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "invalid: invalid submission: 1 row(s) with more than one class: b.tif\n"


def test_cli_module_on_the_real_labels(tmp_path: Path) -> None:
    # 62 real labels, 16 / 15 / 16 / 15 of classes 0 / 1 / 2 / 3, all predicted 1:
    # score = 1 - (16 * 0.1 + 16 * 0.3 + 15 * 0.7) / 62 = 1 - 16.9 / 62 = 0.7274
    labels = REAL_TISSUENET / "train_labels.csv"
    sub = tmp_path / "sub.csv"
    write_submission(build_submission(read_table(labels), {}, fallback=1), sub)
    run = [sys.executable, "-m", "stages.metric", str(sub), str(labels)]
    result = subprocess.run(run, cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["slides: 62", "score:  0.7274"]
    assert result.stdout.splitlines()[3:] == [
        "        0      0     16      0      0",
        "        1      0     15      0      0",
        "        2      0     16      0      0",
        "        3      0     15      0      0",
    ]

    sub.write_text("filename,0,1,2,3\nX.tif,1,0,0,0\n")
    result = subprocess.run(run, cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("invalid: invalid submission: missing 62 filename(s)")
