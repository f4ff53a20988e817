"""The TissueNet metric: weighted class score with the competition's error matrix.

score = mean over slides of ``1 - ERROR_MATRIX[true, predicted]``. Classes: 0 benign, 1 low-grade,
2 high-grade, 3 invasive.

CLI: ``python -m stages.metric SUBMISSION.csv LABELS.csv`` prints the score and the confusion
matrix (rows true, columns predicted). Both files are one-hot ``filename,0,1,2,3`` tables; the
submission is validated against the labels' filenames first.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from stages.submission import (
    CLASSES,
    SubmissionError,
    classes_from_onehot,
    read_table,
    validate,
)

N_CLASSES = len(CLASSES)

#: ERROR_MATRIX[true, predicted], float64 (4, 4), as published by the competition.
ERROR_MATRIX = np.array(
    [
        [0.0, 0.1, 0.7, 1.0],
        [0.1, 0.0, 0.3, 0.7],
        [0.7, 0.3, 0.0, 0.3],
        [1.0, 0.7, 0.3, 0.0],
    ],
    dtype=np.float64,
)
ERROR_MATRIX.setflags(write=False)

log = logging.getLogger(__name__)


def _as_classes(values: np.ndarray | list[int], name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D class indices, got shape {array.shape}")
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0):
        raise ValueError(f"{name} must hold integer classes 0..{N_CLASSES - 1}")
    if array.size and array.max() >= N_CLASSES:
        raise ValueError(f"{name} must hold integer classes 0..{N_CLASSES - 1}")
    return array.astype(np.int64)


def score(y_true: np.ndarray | list[int], y_pred: np.ndarray | list[int]) -> float:
    """Weighted class score of two ``(N,)`` integer class arrays, in ``[0, 1]``."""
    true, pred = _as_classes(y_true, "y_true"), _as_classes(y_pred, "y_pred")
    if true.shape != pred.shape or true.size == 0:
        raise ValueError(f"need equal, non-empty lengths, got {true.size} and {pred.size}")
    return float(np.mean(1.0 - ERROR_MATRIX[true, pred]))


def confusion_matrix(y_true: np.ndarray | list[int], y_pred: np.ndarray | list[int]) -> np.ndarray:
    """``(4, 4)`` int64 counts, rows = true class, columns = predicted class."""
    true, pred = _as_classes(y_true, "y_true"), _as_classes(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"need equal lengths, got {true.size} and {pred.size}")
    matrix = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    return matrix


def format_confusion(matrix: np.ndarray) -> str:
    """Confusion matrix as a small text table (rows true, columns predicted)."""
    lines = ["true\\pred " + " ".join(f"{c:>6}" for c in CLASSES)]
    for c, row in zip(CLASSES, matrix, strict=True):
        lines.append(f"{c:>9} " + " ".join(f"{int(v):>6}" for v in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.metric", description=__doc__)
    parser.add_argument("submission", type=Path)
    parser.add_argument("labels", type=Path)
    args = parser.parse_args(argv)
    try:
        labels = read_table(args.labels)
        submission = read_table(args.submission)
        validate(submission, labels)
    except SubmissionError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    y_true, y_pred = classes_from_onehot(labels), classes_from_onehot(submission)
    print(f"slides: {len(y_true)}")
    print(f"score:  {score(y_true, y_pred):.4f}")
    print(format_confusion(confusion_matrix(y_true, y_pred)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
