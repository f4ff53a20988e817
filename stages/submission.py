"""The competition's CSV formats: one-hot tables, test metadata, and the submission file.

A one-hot table (``submission_format.csv``, ``train_labels.csv``, ``submission.csv``) has exactly
the columns ``filename,0,1,2,3``; each row holds integers with a single 1 in the column of its
class. A submission must list the format's filenames in the format's order.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: The slide classes (0 benign … 3 invasive) and their one-hot columns, as the format names them.
CLASSES = (0, 1, 2, 3)
CLASS_COLUMNS = tuple(str(c) for c in CLASSES)
COLUMNS = ("filename", *CLASS_COLUMNS)
#: How many offending filenames or rows a message lists before "… (+N more)".
EXAMPLES = 5


class SubmissionError(ValueError):
    """A CSV table or submission does not have the competition's format."""


def _examples(items: Iterable[object]) -> str:
    """``a, b, c`` or ``a, b, c, d, e … (+7 more)`` for messages."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:EXAMPLES])
    return f"{shown} … (+{len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else shown


def _read_csv(path: str | Path) -> pd.DataFrame:
    """The CSV at ``path`` with ``filename`` as strings; SubmissionError if missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such file")
    try:
        return pd.read_csv(path, dtype={"filename": str})
    except pd.errors.EmptyDataError as exc:
        raise SubmissionError(f"{path}: empty file") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{path}: not a readable CSV ({str(exc).strip()})") from exc


def read_table(path: str | Path, unique: bool = True) -> pd.DataFrame:
    """Read a one-hot ``filename,0,1,2,3`` table as written (no coercion of values).

    Checks that the file exists and has rows, the five columns and non-empty filenames, unique
    unless not ``unique`` (a submission answering a format that repeats a row, checked by
    :func:`validate`); the values are checked by :func:`validate` / :func:`classes_from_onehot`.
    For ``submission_format.csv`` at run time, see the lenient :func:`read_format`.
    """
    table = _read_csv(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise SubmissionError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"a table needs {','.join(COLUMNS)}, got {','.join(map(str, table.columns))}"
        )
    if table.empty:
        raise SubmissionError(f"{path}: header only, no rows")
    blank = table.index[table["filename"].isna()]
    if len(blank):
        lines = [i + 2 for i in blank]  # line 1 is the header
        raise SubmissionError(
            f"{path}: {len(lines)} row(s) without a filename, at line(s) {_examples(lines)}"
        )
    duplicated = table["filename"][table["filename"].duplicated()].unique()
    if unique and len(duplicated):
        raise SubmissionError(
            f"{path}: {len(duplicated)} duplicate filename(s): {_examples(duplicated)}"
        )
    return table


#: Endings of a slide file's name: a format without a header row starts with one of these.
SLIDE_SUFFIXES = (".tif", ".tiff")


def _decode(path: Path) -> tuple[str, list[str]]:
    """The text of ``path`` (UTF-8, or Latin-1 when it is not: Latin-1 decodes any bytes), and
    what was odd about its bytes (a byte-order mark, the encoding, blank lines)."""
    raw = path.read_bytes()
    odd = []
    try:
        text = raw.decode("utf-8-sig")
        if raw.startswith(codecs.BOM_UTF8):
            odd.append("a byte-order mark")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        odd.append("not UTF-8, read as Latin-1")
    blank = sum(1 for line in text.splitlines() if not line.strip())
    if blank:
        odd.append(f"{blank} blank line(s), skipped")
    return text, odd


def _parse(path: Path, text: str, header: int | None) -> tuple[pd.DataFrame, int]:
    """``text`` as a table of strings, every row kept: rows with more fields than the first
    line are cut to it. Returns the table and how many rows were cut."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise SubmissionError(f"{path}: empty file")
    width = len(next(csv.reader(lines[:1])))
    cut = 0

    def cut_row(fields: list[str]) -> list[str]:
        nonlocal cut
        cut += 1
        return fields[:width]

    try:
        table = pd.read_csv(
            io.StringIO(text),
            dtype=str,
            header=header,
            engine="python",
            on_bad_lines=cut_row,
            keep_default_na=False,
        )
    except (pd.errors.ParserError, csv.Error) as exc:
        raise SubmissionError(f"{path}: not a readable CSV ({str(exc).strip()})") from exc
    return table, cut


def read_format(path: str | Path) -> pd.DataFrame:
    """The rows a submission must answer, from ``submission_format.csv``, read leniently.

    Returns one column, ``filename`` (str, spaces around it stripped), one row per row of the
    file in its order, duplicated filenames kept (each gets its slide's one prediction). What is
    odd is logged and read anyway: a byte-order mark, CRLF line ends, spaces, a header in another
    case, missing or extra columns, rows with more fields than the header (cut to it), a file in
    Latin-1, no header row (the first column taken), blank lines and rows without a filename
    (dropped). SubmissionError only when no filename can be read: no file, an empty file, no
    rows. The submission's own columns are always ``filename,0,1,2,3``.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such file")
    text, odd = _decode(path)
    table, cut = _parse(path, text, header=0)
    columns = [str(c).strip() for c in table.columns]
    lowered = [c.lower() for c in columns]
    if "filename" in lowered:
        names = table.iloc[:, lowered.index("filename")]
        if columns != list(COLUMNS):
            odd.append(
                f"columns {','.join(columns)} (read: filename; written: {','.join(COLUMNS)})"
            )
    else:  # no header row, or a header without 'filename': the first column names the slides
        table, cut = _parse(path, text, header=None)
        names = table.iloc[:, 0]
        if not names.iloc[0].strip().lower().endswith(SLIDE_SUFFIXES):
            names = names.iloc[1:]  # a header row after all
        odd.append("no 'filename' column: the first column taken as the filenames")
    if cut:
        odd.append(f"{cut} row(s) with more fields than the header, cut to it")
    names = names.fillna("")
    stripped = names.str.strip()
    if (stripped != names).any():
        odd.append(f"spaces around {int((stripped != names).sum())} filename(s), stripped")
    blank = stripped == ""
    if blank.any():
        odd.append(f"{int(blank.sum())} row(s) without a filename, dropped")
    names = stripped[~blank].reset_index(drop=True)
    if names.empty:
        raise SubmissionError(f"{path}: no rows with a filename")
    duplicated = names[names.duplicated()].unique()
    if len(duplicated):
        odd.append(
            f"{len(duplicated)} duplicated filename(s), each slide graded once and its class "
            f"written in every one of its rows: {_examples(duplicated)}"
        )
    for problem in odd:
        log.warning("%s: %s", path, problem)
    return pd.DataFrame({"filename": names})


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read ``test_metadata.csv`` as columns ``filename`` (str) and ``resolution`` (float64 µm/px).

    Only ``filename`` is required. A missing ``resolution`` column, an empty cell or a
    non-numeric value gives NaN (logged with the filenames); other columns are dropped; row order
    is kept as in the file. Rows without a filename are dropped and duplicates keep their first
    row, both with a warning, so that one bad row never stops a run.
    """
    table = _read_csv(path)
    if "filename" not in table.columns:
        raise SubmissionError(
            f"{path}: no 'filename' column (columns: {', '.join(map(str, table.columns))})"
        )
    blank = table["filename"].isna()
    if blank.any():
        log.warning("%s: dropping %d row(s) without a filename", path, int(blank.sum()))
        table = table[~blank]
    duplicated = table["filename"].duplicated()
    if duplicated.any():
        log.warning(
            "%s: %d duplicate filename(s), keeping the first row of each: %s",
            path,
            int(duplicated.sum()),
            _examples(table["filename"][duplicated]),
        )
        table = table[~duplicated]
    filenames = table["filename"]
    if "resolution" in table.columns:
        raw = table["resolution"]
        resolution = pd.to_numeric(raw, errors="coerce").astype(np.float64)
        empty, bad = raw.isna(), resolution.isna() & raw.notna()
        if empty.any():
            log.warning(
                "%s: resolution empty for %d row(s): %s",
                path,
                int(empty.sum()),
                _examples(filenames[empty]),
            )
        if bad.any():
            log.warning(
                "%s: non-numeric resolution for %d row(s), treated as missing: %s",
                path,
                int(bad.sum()),
                _examples(f"{f} ({v!r})" for f, v in zip(filenames[bad], raw[bad], strict=True)),
            )
    else:
        log.warning("%s: no 'resolution' column; µm/pixel will come from the slides", path)
        resolution = pd.Series(np.nan, index=table.index, dtype=np.float64)
    return pd.DataFrame({"filename": filenames.to_numpy(), "resolution": resolution.to_numpy()})


def _onehot_problems(table: pd.DataFrame) -> list[str]:
    """Faults of the class columns: non-integer columns, values other than 0/1, rows not one-hot."""
    missing = [c for c in CLASS_COLUMNS if c not in table.columns]
    if missing:
        return [f"class column(s) {', '.join(missing)} missing"]
    names = table["filename"].astype(str)
    not_int = [
        f"'{c}' ({table[c].dtype})"
        for c in CLASS_COLUMNS
        if not pd.api.types.is_integer_dtype(table[c]) or pd.api.types.is_bool_dtype(table[c])
    ]
    if not_int:
        return [f"class column(s) {', '.join(not_int)} must hold integers 0/1"]
    values = table[list(CLASS_COLUMNS)].to_numpy()
    problems = []
    not_binary = ~np.isin(values, (0, 1)).all(axis=1)
    if not_binary.any():
        problems.append(
            f"{int(not_binary.sum())} row(s) with values other than 0 and 1: "
            f"{_examples(names[not_binary])}"
        )
    sums = values.sum(axis=1)
    for mask, what in ((sums == 0, "no class"), (sums > 1, "more than one class")):
        mask = mask & ~not_binary
        if mask.any():
            problems.append(f"{int(mask.sum())} row(s) with {what}: {_examples(names[mask])}")
    return problems


def _structure_problems(table: pd.DataFrame, fmt: pd.DataFrame | None = None) -> list[str]:
    """Faults a submission has on its own: columns, duplicate filenames (those the format
    ``fmt`` lists more than once excepted: they are answered in each of their rows), one-hot
    values."""
    if tuple(table.columns) != COLUMNS:
        return [f"columns must be exactly {list(COLUMNS)}, got {list(table.columns)}"]
    problems = []
    repeated = table["filename"].duplicated()
    if fmt is not None:
        repeated &= ~table["filename"].isin(set(fmt["filename"][fmt["filename"].duplicated()]))
    duplicated = table["filename"][repeated].unique()
    if len(duplicated):
        problems.append(f"{len(duplicated)} duplicate filename(s): {_examples(duplicated)}")
    return problems + _onehot_problems(table)


def _order_problems(submission: pd.DataFrame, fmt: pd.DataFrame) -> list[str]:
    """Faults against the format: missing or unexpected filenames, rows out of order."""
    got, want = submission["filename"].astype(str), fmt["filename"].astype(str)
    problems = []
    missing = want[~want.isin(set(got))]
    if len(missing):
        problems.append(f"missing {len(missing)} filename(s) of the format: {_examples(missing)}")
    extra = got[~got.isin(set(want))]
    if len(extra):
        problems.append(f"{len(extra)} filename(s) not in the format: {_examples(extra)}")
    if len(got) != len(want):
        problems.append(f"{len(got)} rows, the format has {len(want)}")
    elif not problems:
        wrong = np.flatnonzero(got.to_numpy() != want.to_numpy())
        if len(wrong):
            first = wrong[0]
            problems.append(
                f"rows not in the format's order: {len(wrong)} row(s) out of place, the first "
                f"is {got.iloc[first]} where the format has {want.iloc[first]}"
            )
    return problems


def _raise_if(problems: list[str], what: str) -> None:
    if problems:
        raise SubmissionError(f"{what}: " + "; ".join(problems))


def validate(submission: pd.DataFrame, fmt: pd.DataFrame) -> None:
    """Raise SubmissionError naming every fault of ``submission`` against the format ``fmt``.

    Required: columns exactly ``filename,0,1,2,3``; the format's rows, in the format's order
    (a filename the format repeats, repeated as often); integer values; each row one-hot.
    """
    problems = _structure_problems(submission, fmt)
    if "filename" in submission.columns:
        problems += _order_problems(submission, fmt)
    _raise_if(problems, "invalid submission")


def classes_from_onehot(table: pd.DataFrame) -> np.ndarray:
    """Class index per row, ``(N,)`` int64, of a one-hot table (SubmissionError if not one-hot)."""
    _raise_if(_onehot_problems(table), "not a one-hot table")
    return table[list(CLASS_COLUMNS)].to_numpy().argmax(axis=1).astype(np.int64)


def classes_by_filename(table: pd.DataFrame) -> dict[str, int]:
    """Filename → class index of a one-hot table (labels or a submission)."""
    return dict(zip(table["filename"], classes_from_onehot(table).tolist(), strict=True))


def build_submission(
    fmt: pd.DataFrame, classes: Mapping[str, int], fallback: int, quiet: bool = False
) -> pd.DataFrame:
    """One-hot submission in the format's row order; filenames missing from ``classes`` get
    ``fallback`` (logged as a warning unless ``quiet``: a provisional file expects them).
    Columns ``filename,0,1,2,3``, class columns int64."""
    invalid = [f"{f}={c!r}" for f, c in classes.items() if c not in CLASSES]
    if fallback not in CLASSES:
        invalid.append(f"fallback={fallback!r}")
    if invalid:
        raise SubmissionError(f"classes must be in {CLASSES}, got {_examples(invalid)}")
    filenames = fmt["filename"].astype(str)
    unknown = set(classes) - set(filenames)
    if unknown:
        log.warning("ignoring %d prediction(s) for files not in the format", len(unknown))
    missing = ~filenames.isin(set(classes))
    if missing.any() and not quiet:
        log.warning(
            "%d of %d slide(s) without a prediction get the fallback class %d: %s",
            int(missing.sum()),
            len(filenames),
            fallback,
            _examples(filenames[missing]),
        )
    predicted = np.array([classes.get(f, fallback) for f in filenames], dtype=np.int64)
    onehot = np.eye(len(CLASSES), dtype=np.int64)[predicted]
    table = pd.DataFrame(onehot, columns=list(CLASS_COLUMNS))
    table.insert(0, "filename", filenames.to_numpy())
    return table


def write_submission(
    table: pd.DataFrame, path: str | Path, quiet: bool = False, fmt: pd.DataFrame | None = None
) -> None:
    """Check ``table`` (against the format ``fmt`` when given, :func:`validate`; else on its own:
    columns, unique filenames, integer one-hot), then write it to ``path`` atomically: a
    temporary file in the same folder, renamed over ``path`` (logged at debug level when
    ``quiet``)."""
    problems = _structure_problems(table, fmt)
    if fmt is not None:
        problems += _order_problems(table, fmt)
    _raise_if(problems, f"refusing to write {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        table.to_csv(tmp, index=False, lineterminator="\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    log.log(logging.DEBUG if quiet else logging.INFO, "wrote %s (%d rows)", path, len(table))
