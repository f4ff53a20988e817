"""Pack the runtime submission (``main.py``, ``stages/``, ``assets/``) into a reproducible zip,
run it as the competition's runtime does (:mod:`training.pack.sandbox`, with the runtime-set
guard of :mod:`training.pack.guard`) and score it.

CLI (what ``make pack-submission``, ``make test-submission`` and ``make score`` call)::

    python -m training.pack.package pack [--out submission/submission.zip] [--assets DIR] [--force]
    python -m training.pack.package test [--zip Z] [--data DIR] [--time-limit S] [--out-dir DIR]
    python -m training.pack.package score [--submission CSV] --labels CSV
"""

from __future__ import annotations

import argparse
import logging
import sys
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from stages import metric
from stages.config import load_assets
from stages.nets import AssetsError
from stages.runtime import DEFAULT_TIME_LIMIT_S, FORMAT_NAME
from stages.submission import (
    classes_from_onehot,
    read_table,
)
from training.pack.guard import (
    ENTRY,
    REPO,
    RUNTIME_REQUIREMENTS,
    PackageError,
    blocked_modules,
    runtime_distributions,
    unresolved_imports,
)
from training.pack.sandbox import (
    CSV_NAME,
    DEFAULT_GRACE_S,
    LOG_NAME,
    RunOutcome,
    check_outcome,
    run_local,
)

log = logging.getLogger(__name__)

CODE_DIRS = ("stages",)
ASSETS = "assets"
SUBMISSION_DIR = REPO / "submission"
ZIP_NAME = "submission.zip"
#: Fixed timestamp and mode of zip entries: the same sources give the same zip, readable by all.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_MODE = 0o644
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class PackReport:
    """A written zip: its path and ``(arcname, bytes uncompressed)`` per entry."""

    path: Path
    files: tuple[tuple[str, int], ...]

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def summary(self) -> str:
        """Size and contents, one line per top-level entry (folders summed)."""
        groups: dict[str, list[tuple[str, int]]] = {}
        for name, size in self.files:
            top = name.split("/", 1)[0] + ("/" if "/" in name else "")
            groups.setdefault(top, []).append((name, size))
        lines = [f"{self.path}: {_size(self.size_bytes)}, {len(self.files)} files"]
        for top, entries in groups.items():
            count = f"{len(entries)} files" if top.endswith("/") else ""
            lines.append(f"  {top:<10} {count:>9} {_size(sum(s for _, s in entries)):>10}")
            if top == f"{ASSETS}/":
                lines += [f"    {n.split('/', 1)[1]:<30} {_size(s):>10}" for n, s in entries]
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _tree(directory: Path) -> Iterable[Path]:
    """Files under ``directory`` in sorted order, without caches and hidden files."""
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).parts
        if any(p.startswith(".") or p in _SKIP_DIRS for p in rel) or path.suffix in _SKIP_SUFFIXES:
            continue
        if path.is_file():
            yield path


def submission_files(source: Path = REPO, assets: Path | None = None) -> dict[str, Path]:
    """What the zip holds: arcname → file. ``main.py``, the code folders and ``assets/`` (from
    ``assets``, default ``source/assets``), nothing else."""
    assets = source / ASSETS if assets is None else assets
    entry = source / ENTRY
    if not entry.is_file():
        raise PackageError(f"{entry}: no such file (the runtime runs main.py)")
    files = {ENTRY: entry}
    for folder in (*(source / d for d in CODE_DIRS), assets):
        if not folder.is_dir():
            raise PackageError(f"{folder}: no such folder")
        prefix = ASSETS if folder == assets else folder.name
        files |= {f"{prefix}/{p.relative_to(folder).as_posix()}": p for p in _tree(folder)}
    return files


def pack(
    out_zip: Path,
    source: Path = REPO,
    assets: Path | None = None,
    force: bool = False,
) -> PackReport:
    """Write the submission zip: ``main.py`` at its root, the code folders and ``assets/``.

    Refuses to overwrite ``out_zip`` unless ``force``; refuses assets that would fail to load at
    start-up and code importing anything outside the runtime package set (both naming the file).
    """
    if out_zip.exists() and not force:
        raise PackageError(f"{out_zip} exists; pass --force (make pack-submission FORCE=1)")
    files = submission_files(source, assets)
    assets_dir = source / ASSETS if assets is None else assets
    try:
        load_assets(assets_dir, torch.device("cpu"))
    except AssetsError as exc:
        raise PackageError(f"assets would fail at start-up: {exc}") from exc
    sources = {name: path.read_text() for name, path in files.items() if name.endswith(".py")}
    foreign = unresolved_imports(sources, blocked_modules(runtime_distributions()))
    if foreign:
        raise PackageError("code imports outside the runtime package set: " + "; ".join(foreign))
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    partial = out_zip.with_name(f".{out_zip.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, path in files.items():
                info = zipfile.ZipInfo(name, ZIP_DATE)
                info.external_attr = ZIP_MODE << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
        partial.replace(out_zip)
    finally:
        partial.unlink(missing_ok=True)
    report = PackReport(out_zip, tuple((n, p.stat().st_size) for n, p in files.items()))
    log.info("wrote %s (%d files, %s)", out_zip, len(files), _size(report.size_bytes))
    return report


def _test_report(outcome: RunOutcome, problems: list[str], fmt_path: Path) -> str:
    text = outcome.log_text()
    levels = Counter(w for line in text.splitlines() for w in line.split()[2:3])
    mode = (
        "namespace (data/ read-only bind mount, no network)"
        if outcome.isolated
        else "FALLBACK (read-only copy of data/, Python sockets disabled)"
    )
    lines = [
        f"runtime: {mode}; python {sys.executable}; only {RUNTIME_REQUIREMENTS.name} importable",
        f"ran {outcome.seconds:.1f} s of {outcome.time_limit_s:g} s, exit status "
        f"{'KILLED' if outcome.timed_out else outcome.returncode}, peak memory "
        f"{_size(outcome.peak_rss_bytes)}",
        f"{outcome.log}: {len(text.splitlines())} lines, {levels['ERROR']} errors, "
        f"{levels['WARNING']} warnings",
    ]
    if not problems and outcome.submission is not None:
        table = read_table(outcome.submission, unique=False)
        classes = Counter(int(c) for c in classes_from_onehot(table))
        lines.append(
            f"{outcome.submission}: {len(table)} rows, valid against {fmt_path}; classes "
            f"{ {c: classes.get(c, 0) for c in metric.CLASSES} }"
        )
        lines.append("OK")
        return "\n".join(lines)
    tail = text.splitlines()[-15:]
    lines += ["--- last lines of the log ---", *tail, "---"]
    lines += [f"FAILED: {p}" for p in problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pack.package", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="write the submission zip")
    p.add_argument("--out", type=Path, default=SUBMISSION_DIR / ZIP_NAME)
    p.add_argument("--assets", type=Path, default=None, help="default: the repository's assets/")
    p.add_argument("--force", action="store_true", help="overwrite an existing zip")
    t = commands.add_parser("test", help="run the zip as the runtime does and check the result")
    t.add_argument("--zip", type=Path, default=SUBMISSION_DIR / ZIP_NAME)
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S)
    t.add_argument("--grace", type=float, default=DEFAULT_GRACE_S)
    t.add_argument("--out-dir", type=Path, default=SUBMISSION_DIR)
    s = commands.add_parser("score", help="score a submission against labels")
    s.add_argument("--submission", type=Path, default=SUBMISSION_DIR / CSV_NAME)
    s.add_argument("--labels", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "pack":
            print(pack(args.out, assets=args.assets, force=args.force).summary())
            return 0
        if args.command == "score":
            return metric.main([str(args.submission), str(args.labels)])
        print(f"log: {args.out_dir / LOG_NAME} (tail -f to follow)", flush=True)
        outcome = run_local(args.zip, args.data, args.out_dir, args.time_limit, args.grace)
    except PackageError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    fmt_path = args.data / FORMAT_NAME
    problems = check_outcome(outcome, fmt_path)
    print(_test_report(outcome, problems, fmt_path))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
