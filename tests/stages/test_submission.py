"""Competition CSVs: reading tables and metadata, every validation fault, building and writing."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REAL_TISSUENET

from stages.submission import (
    SubmissionError,
    build_submission,
    classes_from_onehot,
    read_format,
    read_metadata,
    read_table,
    validate,
    write_submission,
)

HEADER = "filename,0,1,2,3\n"


def csv(tmp_path: Path, text: str, name: str = "table.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def table(rows: dict[str, list[int]]) -> pd.DataFrame:
    """A one-hot-style table from ``filename -> [v0, v1, v2, v3]``, int64 class columns."""
    frame = pd.DataFrame(list(rows.values()), columns=["0", "1", "2", "3"], dtype=np.int64)
    frame.insert(0, "filename", list(rows))
    return frame


FMT = table({"a.tif": [0] * 4, "b.tif": [0] * 4, "c.tif": [0] * 4})
GOOD = table({"a.tif": [1, 0, 0, 0], "b.tif": [0, 0, 1, 0], "c.tif": [0, 0, 0, 1]})


# -- read_table --------------------------------------------------------------------------------


def test_read_table(tmp_path: Path) -> None:
    path = csv(tmp_path, HEADER + "a.tif,0,1,0,0\nb.tif,0,0,0,1\n")
    read = read_table(path)
    assert read["filename"].tolist() == ["a.tif", "b.tif"]
    assert list(read.columns) == ["filename", "0", "1", "2", "3"]
    assert classes_from_onehot(read).tolist() == [1, 3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        (HEADER, "header only, no rows"),
        (
            "filename,0,1,3\na.tif,1,0,0\n",
            "missing column(s) 2; a table needs filename,0,1,2,3, got filename,0,1,3",
        ),
        ("name,0,1,2,3\na.tif,1,0,0,0\n", "missing column(s) filename"),
        (HEADER + "a.tif,1,0,0,0\n,0,1,0,0\n", "1 row(s) without a filename, at line(s) 3"),
        (
            HEADER + "a.tif,1,0,0,0\nb.tif,1,0,0,0\na.tif,0,1,0,0\n",
            "1 duplicate filename(s): a.tif",
        ),
        (
            HEADER + "a.tif,1,0,0,0\nb.tif,1,0,0,0,5,6\n",
            "not a readable CSV (Error tokenizing data. C error: Expected 5 fields in line 3, "
            "saw 7)",
        ),
    ],
    ids=[
        "empty",
        "header-only",
        "missing-class-column",
        "no-filename",
        "blank",
        "duplicate",
        "ragged",
    ],
)
def test_read_table_faults(tmp_path: Path, text: str, message: str) -> None:
    path = csv(tmp_path, text)
    with pytest.raises(SubmissionError, match=re.escape(f"{path}: {message}")):
        read_table(path)


def test_read_table_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match=re.escape(f"{tmp_path / 'none.csv'}: no such file")):
        read_table(tmp_path / "none.csv")


def test_real_submission_format() -> None:
    fmt = read_table(REAL_TISSUENET / "submission_format.csv")
    assert len(fmt) == 1527
    assert fmt["filename"].iloc[[0, -1]].tolist() == ["VVGJOSTC.tif", "5P5V02F5.tif"]
    assert (fmt[["0", "1", "2", "3"]].to_numpy() == 0).all()
    with pytest.raises(SubmissionError, match=r"1527 row\(s\) with no class: VVGJOSTC\.tif, "):
        classes_from_onehot(fmt)

    classes = {"VVGJOSTC.tif": 3, "5P5V02F5.tif": 2}
    submission = build_submission(fmt, classes, fallback=1)
    validate(submission, fmt)
    assert np.bincount(classes_from_onehot(submission)).tolist() == [0, 1525, 1, 1]


def test_real_labels_read_as_classes() -> None:
    labels = read_table(REAL_TISSUENET / "train_labels.csv")
    assert np.bincount(classes_from_onehot(labels)).tolist() == [16, 15, 16, 15]
    assert classes_from_onehot(labels).dtype == np.int64


# -- read_format: the runtime's lenient reading of submission_format.csv --------------------

#: name -> (bytes of a damaged format, the filenames it must give, fragments of its warnings)
DAMAGED_FORMATS = {
    "duplicated row": (
        b"filename,0,1,2,3\na.tif,0,0,0,0\nb.tif,0,0,0,0\na.tif,0,0,0,0\n",
        ["a.tif", "b.tif", "a.tif"],
        [
            "1 duplicated filename(s), each slide graded once and its class written in every one "
            "of its rows: a.tif"
        ],
    ),
    "BOM and CRLF": (
        b"\xef\xbb\xbffilename,0,1,2,3\r\na.tif,0,0,0,0\r\nb.tif,0,0,0,0\r\n",
        ["a.tif", "b.tif"],
        ["a byte-order mark"],
    ),
    "extra columns and a ragged row": (
        b"filename,0,1,2,3,url\na.tif,0,0,0,0,s3://a\nb.tif,0,0,0,0,s3://b,x,y\n",
        ["a.tif", "b.tif"],
        [
            "columns filename,0,1,2,3,url (read: filename; written: filename,0,1,2,3)",
            "1 row(s) with more fields than the header, cut to it",
        ],
    ),
    "spaces, a blank line and a row without a filename": (
        b"filename, 0, 1, 2, 3\n a.tif ,0,0,0,0\n\nb.tif,0,0,0,0\n,0,0,0,0\n",
        ["a.tif", "b.tif"],
        [
            "1 blank line(s), skipped",
            "spaces around 1 filename(s), stripped",
            "1 row(s) without a filename, dropped",
        ],
    ),
    "Latin-1, header in capitals": (
        "FileName,0,1,2,3\né.tif,0,0,0,0\n".encode("latin-1"),
        ["é.tif"],
        ["not UTF-8, read as Latin-1", "columns FileName,0,1,2,3"],
    ),
    "no header row": (
        b"a.tif,0,0,0,0\nb.tif,0,0,0,0\n",
        ["a.tif", "b.tif"],
        ["no 'filename' column: the first column taken as the filenames"],
    ),
    "filenames only": (b"filename\na.tif\nb.tif\n", ["a.tif", "b.tif"], ["columns filename"]),
}


@pytest.mark.parametrize("case", list(DAMAGED_FORMATS))
def test_read_format_reads_what_can_be_read_and_says_what_was_odd(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    raw, names, warnings = DAMAGED_FORMATS[case]
    path = tmp_path / "submission_format.csv"
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING):
        fmt = read_format(path)
    assert list(fmt.columns) == ["filename"] and fmt["filename"].tolist() == names
    for warning in warnings:
        assert f"{path}: {warning}" in caplog.text
    # the submission answers every row of it, in its order, and is valid against it
    submission = build_submission(fmt, {"a.tif": 3, "b.tif": 2}, fallback=1)
    validate(submission, fmt)
    write_submission(submission, tmp_path / "submission.csv", fmt=fmt)
    written = read_table(tmp_path / "submission.csv", unique=False)
    assert written["filename"].tolist() == names


def test_read_format_of_the_real_format_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        fmt = read_format(REAL_TISSUENET / "submission_format.csv")
    assert (
        fmt["filename"].tolist()
        == read_table(REAL_TISSUENET / "submission_format.csv")["filename"].tolist()
    )
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty file"),
        (b"\n\n", "empty file"),
        (b"filename,0,1,2,3\n", "no rows with a filename"),
    ],
    ids=["empty", "blank lines", "header only"],
)
def test_read_format_fails_only_without_a_filename(
    tmp_path: Path, raw: bytes, message: str
) -> None:
    path = tmp_path / "submission_format.csv"
    path.write_bytes(raw)
    with pytest.raises(SubmissionError, match=re.escape(f"{path}: {message}")):
        read_format(path)


def test_a_repeated_row_is_valid_only_where_the_format_repeats_it(tmp_path: Path) -> None:
    fmt = pd.DataFrame({"filename": ["a.tif", "b.tif", "a.tif"]})
    submission = build_submission(fmt, {"a.tif": 2}, fallback=1)
    assert classes_from_onehot(submission).tolist() == [2, 1, 2]
    validate(submission, fmt)
    with pytest.raises(SubmissionError, match=re.escape("1 duplicate filename(s): a.tif")):
        validate(submission, FMT[FMT["filename"] != "c.tif"])
    with pytest.raises(SubmissionError, match="1 duplicate filename"):
        write_submission(submission, tmp_path / "submission.csv")  # no format: unique rows only


# -- read_metadata -----------------------------------------------------------------------------


def test_metadata_with_only_filenames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = csv(tmp_path, "filename\nb.tif\na.tif\n", "meta.csv")
    with caplog.at_level(logging.WARNING):
        meta = read_metadata(path)
    assert meta["filename"].tolist() == ["b.tif", "a.tif"]  # file order kept
    assert meta["resolution"].dtype == np.float64
    assert meta["resolution"].isna().all()
    assert "no 'resolution' column" in caplog.text


def test_metadata_bad_resolutions_and_extra_columns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = csv(
        tmp_path,
        "url,resolution,filename,width\n"
        "s3://x,0.2271,c.tif,100\n"
        "s3://y,abc,a.tif,200\n"
        "s3://z,,b.tif,300\n"
        "s3://w, 0.25 ,d.tif,400\n",
        "meta.csv",
    )
    with caplog.at_level(logging.WARNING):
        meta = read_metadata(path)
    assert list(meta.columns) == ["filename", "resolution"]
    assert meta["filename"].tolist() == ["c.tif", "a.tif", "b.tif", "d.tif"]
    np.testing.assert_array_equal(meta["resolution"], [0.2271, np.nan, np.nan, 0.25])
    assert f"{path}: non-numeric resolution for 1 row(s), treated as missing: a.tif ('abc')" in (
        caplog.text
    )
    assert f"{path}: resolution empty for 1 row(s): b.tif" in caplog.text


def test_metadata_bad_rows_are_dropped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = csv(tmp_path, "filename,resolution\na.tif,0.25\n,0.3\na.tif,0.5\nb.tif,0.24\n")
    with caplog.at_level(logging.WARNING):
        meta = read_metadata(path)
    assert meta.to_dict("list") == {"filename": ["a.tif", "b.tif"], "resolution": [0.25, 0.24]}
    assert "dropping 1 row(s) without a filename" in caplog.text
    assert "1 duplicate filename(s), keeping the first row of each: a.tif" in caplog.text


def test_metadata_faults(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match="no such file"):
        read_metadata(tmp_path / "none.csv")
    with pytest.raises(SubmissionError, match="empty file"):
        read_metadata(csv(tmp_path, ""))
    with pytest.raises(SubmissionError, match=r"no 'filename' column \(columns: name, resolution"):
        read_metadata(csv(tmp_path, "name,resolution\na.tif,0.25\n"))


# -- validate ----------------------------------------------------------------------------------


def faulty(**changes: object) -> pd.DataFrame:
    """GOOD with ``changes`` applied: column name → new values."""
    submission = GOOD.copy()
    for column, values in changes.items():
        submission[column] = values
    return submission


@pytest.mark.parametrize(
    ("submission", "message"),
    [
        (
            GOOD.assign(extra=1),
            "columns must be exactly ['filename', '0', '1', '2', '3'], "
            "got ['filename', '0', '1', '2', '3', 'extra']",
        ),
        (
            GOOD[["filename", "1", "0", "2", "3"]],
            "got ['filename', '1', '0', '2', '3']",
        ),
        (
            GOOD.rename(columns={"0": 0, "1": 1, "2": 2, "3": 3}),
            "got ['filename', 0, 1, 2, 3]",
        ),
        (
            GOOD.iloc[[0, 1]],
            "missing 1 filename(s) of the format: c.tif; 2 rows, the format has 3",
        ),
        (
            faulty(filename=["a.tif", "b.tif", "x.tif"]),
            "missing 1 filename(s) of the format: c.tif; 1 filename(s) not in the format: x.tif",
        ),
        (
            faulty(filename=["a.tif", "b.tif", "b.tif"]),
            "1 duplicate filename(s): b.tif; missing 1 filename(s) of the format: c.tif",
        ),
        (
            GOOD.iloc[[0, 2, 1]],
            "rows not in the format's order: 2 row(s) out of place, the first is c.tif "
            "where the format has b.tif",
        ),
        (faulty(**{"2": [0.0, 1.0, 0.0]}), "class column(s) '2' (float64) must hold integers 0/1"),
        (
            faulty(**{"0": [1, np.nan, 0], "3": ["0", "0", "1"]}),
            "class column(s) '0' (float64), '3' (str) must hold integers 0/1",
        ),
        (faulty(**{"2": [0, 2, 0]}), "1 row(s) with values other than 0 and 1: b.tif"),
        (faulty(**{"0": [0, 0, 0]}), "1 row(s) with no class: a.tif"),
        (faulty(**{"0": [1, 1, 1]}), "2 row(s) with more than one class: b.tif, c.tif"),
    ],
    ids=[
        "extra-column",
        "column-order",
        "int-column-names",
        "missing-row",
        "unknown-filename",
        "duplicate",
        "row-order",
        "float",
        "nan-and-text",
        "not-binary",
        "no-class",
        "two-classes",
    ],
)
def test_validate_faults(submission: pd.DataFrame, message: str) -> None:
    with pytest.raises(SubmissionError, match=re.escape(message)) as error:
        validate(submission, FMT)
    assert str(error.value).startswith("invalid submission: ")


def test_validate_lists_a_few_examples_and_counts_the_rest() -> None:
    names = [f"s{i:02d}.tif" for i in range(12)]
    fmt = table({name: [0, 0, 0, 0] for name in names})
    submission = table({name: [1, 0, 0, 0] for name in names})
    submission.loc[2:, "0"] = 0
    with pytest.raises(
        SubmissionError,
        match=re.escape(
            "invalid submission: 10 row(s) with no class: "
            "s02.tif, s03.tif, s04.tif, s05.tif, s06.tif … (+5 more)"
        ),
    ):
        validate(submission, fmt)


def test_validate_reports_every_fault_at_once() -> None:
    submission = faulty(filename=["a.tif", "b.tif", "x.tif"], **{"0": [1, 1, 1]})
    with pytest.raises(SubmissionError) as error:
        validate(submission, FMT)
    assert str(error.value) == (
        "invalid submission: 2 row(s) with more than one class: b.tif, x.tif; "
        "missing 1 filename(s) of the format: c.tif; 1 filename(s) not in the format: x.tif"
    )


# -- build and write ---------------------------------------------------------------------------


def test_build_submission_follows_the_format(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        submission = build_submission(FMT, {"c.tif": 3, "a.tif": 2, "other.tif": 1}, fallback=1)
    assert submission["filename"].tolist() == ["a.tif", "b.tif", "c.tif"]
    assert submission[["0", "1", "2", "3"]].to_numpy().tolist() == [
        [0, 0, 1, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 1],
    ]
    assert (submission.dtypes[1:] == np.int64).all()
    assert "1 of 3 slide(s) without a prediction get the fallback class 1: b.tif" in caplog.text
    assert "ignoring 1 prediction(s) for files not in the format" in caplog.text
    validate(submission, FMT)


def test_build_submission_rejects_bad_classes() -> None:
    with pytest.raises(SubmissionError, match=re.escape("got a.tif=4, fallback=-1")):
        build_submission(FMT, {"a.tif": 4, "b.tif": 0}, fallback=-1)


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "submission.csv"
    write_submission(GOOD, path)
    assert path.read_text() == HEADER + "a.tif,1,0,0,0\nb.tif,0,0,1,0\nc.tif,0,0,0,1\n"
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]  # no temporary left
    read = read_table(path)
    validate(read, FMT)
    assert classes_from_onehot(read).tolist() == [0, 2, 3]

    write_submission(build_submission(FMT, {}, fallback=0), path)  # replaces the old file
    assert classes_from_onehot(read_table(path)).tolist() == [0, 0, 0]


def test_write_refuses_an_invalid_table(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    path.write_text("previous\n")
    with pytest.raises(SubmissionError, match=r"refusing to write .*1 row\(s\) with no class"):
        write_submission(faulty(**{"0": [0, 0, 0]}), path)
    assert path.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]
