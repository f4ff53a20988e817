"""Pack the runtime submission and run it as the competition's runtime does, without Docker.

The runtime unzips ``submission.zip`` into a folder, mounts the test data read-only at
``data/`` beside ``main.py``, runs ``python main.py`` there with no network and a 16 h limit, and
takes ``submission.csv`` from that folder. :func:`run_local` does the same on this machine:

* a fresh temporary root, the zip unpacked into it (``main.py`` must be at the zip's root);
* ``data/`` read-only: a read-only bind mount inside a private mount namespace, which also has
  no network (``unshare --mount --net``, needs root or user namespaces). Where namespaces are not
  permitted, a logged warning and the fallback: a copy of the data made read-only with file
  modes (which root ignores) and Python's sockets disabled in the run;
* ``python main.py`` with this interpreter (the project's ``.venv``, which holds the runtime set
  ``requirements.txt`` and the dev tools), a clean environment (empty ``HOME``, no cache or hub
  variables) and an import guard that makes every module of a distribution outside the
  ``requirements.txt`` closure fail to import, so a run passes only with the runtime image's
  packages;
* the time limit given to ``main.py`` as ``$TISSUENET_TIME_LIMIT``; a run still going ``grace_s``
  past it is killed with its process group; stdout and stderr go to ``log.txt``.

CLI (what ``make pack-submission``, ``make test-submission`` and ``make score`` call)::

    python -m training.pack.package pack [--out submission/submission.zip] [--assets DIR] [--force]
    python -m training.pack.package test [--zip Z] [--data DIR] [--time-limit S] [--out-dir DIR]
    python -m training.pack.package score [--submission CSV] --labels CSV
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from stages import metric
from stages.config import load_assets
from stages.nets import AssetsError
from stages.runtime import DEFAULT_TIME_LIMIT_S, FORMAT_NAME, TIME_LIMIT_ENV
from stages.submission import (
    SubmissionError,
    classes_from_onehot,
    read_format,
    read_table,
    validate,
)
from training.process import high_water_kb

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: The runtime image's package set (exact pins); nothing else may be imported at run time.
RUNTIME_REQUIREMENTS = REPO / "requirements.txt"
ENTRY = "main.py"
CODE_DIRS = ("stages",)
ASSETS = "assets"
SUBMISSION_DIR = REPO / "submission"
ZIP_NAME = "submission.zip"
LOG_NAME = "log.txt"
CSV_NAME = "submission.csv"
#: Seconds a run may go past its limit before it is killed (to tell "a little late" from hung).
DEFAULT_GRACE_S = 10.0
#: Fixed timestamp and mode of zip entries: the same sources give the same zip, readable by all.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_MODE = 0o644
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}
_NAMESPACE_PROBE = ("unshare", "--mount", "--net", "--propagation", "private", "--", "true")
#: Inside the namespace: bind the data read-only at root/data, then become ``python main.py``.
_NAMESPACE_SCRIPT = (
    'mount --bind "$1" "$2/data" && mount -o remount,bind,ro "$2/data" && exec "$3" main.py'
)


class PackageError(RuntimeError):
    """The submission cannot be packed or run: names the file and the cause."""


# -- the runtime package set ---------------------------------------------------------------------


def _requirements(path: Path) -> list[Requirement]:
    """The requirement lines of a pip requirements file (comments and options skipped)."""
    found = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            found.append(Requirement(line))
        except InvalidRequirement as exc:
            raise PackageError(f"{path}:{number}: not a requirement: {line!r} ({exc})") from exc
    return found


def runtime_distributions(requirements: Path = RUNTIME_REQUIREMENTS) -> frozenset[str]:
    """Canonical names of the distributions ``requirements`` lists plus, recursively, what the
    installed ones require (markers evaluated here, requested extras followed)."""
    todo = [(req, frozenset(req.extras)) for req in _requirements(requirements)]
    seen: set[str] = set()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (e.g. a CUDA wheel on a CPU machine)
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((sub, frozenset(sub.extras)))
    return frozenset(seen)


def module_owners() -> dict[str, frozenset[str]]:
    """Installed top-level module → canonical names of the distributions providing it."""
    return {
        module: frozenset(canonicalize_name(d) for d in dists)
        for module, dists in importlib.metadata.packages_distributions().items()
    }


def blocked_modules(allowed: frozenset[str]) -> dict[str, str]:
    """Installed top-level modules that no distribution in ``allowed`` provides → their owner."""
    return {
        module: sorted(owners)[0]
        for module, owners in module_owners().items()
        if not owners & allowed and module.isidentifier()
    }


def unresolved_imports(sources: Mapping[str, str], blocked: Mapping[str, str]) -> list[str]:
    """``"path:line: imports X (distribution D, not in the runtime set)"`` for each absolute import
    in ``sources`` (arcname → Python source) of a module outside the runtime set: a blocked
    module, or one that is neither standard library, packed, nor installed."""
    packed = {Path(name).parts[0].removesuffix(".py") for name in sources}
    installed = set(module_owners())
    problems = []
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text, name)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for top in {m.partition(".")[0] for m in modules}:
                if top in blocked:
                    why = f"distribution {blocked[top]}, not in {RUNTIME_REQUIREMENTS.name}"
                elif top in sys.stdlib_module_names or top in packed or top in installed:
                    continue
                else:
                    why = "neither packed, standard library nor installed"
                problems.append(f"{name}:{node.lineno}: imports {top} ({why})")
    return problems


#: The run's ``sitecustomize``: drops ``sys.path`` entries outside the interpreter (a ``.pth``
#: may put the checkout there), refuses imports outside the runtime set; optionally no sockets.
_GUARD = '''\
"""Written by training.pack.package: the local runtime's import guard (and network block)."""
import os
import socket
import sys

# Only the interpreter's own paths: no .pth entries pointing at a checkout (the repo's training/).
_PREFIXES = {{os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}}


def _inside(path):
    real = os.path.realpath(path)
    return any(real == p or real.startswith(p + os.sep) for p in _PREFIXES)


sys.path[:] = [p for p in sys.path if _inside(p)]

BLOCKED = {blocked!r}
NO_NETWORK = {no_network!r}


class RuntimeSetGuard:
    """A meta-path finder that finds no module of a blocked distribution, as in the runtime
    image where they are absent (``importlib.util.find_spec`` returns None for them too)."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):  # find_distributions, invalidate_caches, …
        return getattr(self.finder, name)


def _explain(kind, exc, tb):
    """An uncaught import of a blocked module names its distribution and the requirements."""
    top = (getattr(exc, "name", None) or "").partition(".")[0]
    if isinstance(exc, ModuleNotFoundError) and top in BLOCKED:
        exc.msg = (
            f"{{top}} (distribution {{BLOCKED[top]}}) is not in the runtime package set "
            "({requirements}): the runtime image does not have it"
        )
        exc.args = (exc.msg,)
    sys.__excepthook__(kind, exc, tb)


def _no_network(*args, **kwargs):
    raise OSError(101, "network disabled by the local runtime check")


sys.meta_path[:] = [RuntimeSetGuard(finder) for finder in sys.meta_path]
sys.excepthook = _explain
if NO_NETWORK:
    socket.socket.connect = socket.socket.connect_ex = socket.socket.sendto = _no_network
    socket.getaddrinfo = socket.create_connection = _no_network
'''


def write_guard(directory: Path, blocked: Mapping[str, str], no_network: bool) -> Path:
    """Write the guard as ``directory/sitecustomize.py`` (active with ``directory`` on
    ``PYTHONPATH``); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sitecustomize.py"
    text = _GUARD.format(
        blocked=dict(sorted(blocked.items())),
        no_network=no_network,
        requirements=RUNTIME_REQUIREMENTS.name,
    )
    path.write_text(text)
    return path


def runtime_env(guard_dir: Path, home: Path, time_limit_s: float) -> dict[str, str]:
    """The run's whole environment: nothing inherited (no proxies, caches, hub settings)."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(guard_dir),
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",
        TIME_LIMIT_ENV: f"{time_limit_s:g}",
    }


# -- packing -------------------------------------------------------------------------------------


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


# -- the local runtime ---------------------------------------------------------------------------


def namespaces_available() -> bool:
    """True when this process may make a mount + network namespace (root, or user namespaces)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(_NAMESPACE_PROBE, capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@dataclass(frozen=True)
class RunOutcome:
    """One local run. ``returncode`` None: killed ``grace_s`` after the limit. ``seconds``: wall
    time of the process; ``peak_rss_bytes``: the peak resident memory of its largest process;
    ``submission``: the copied ``submission.csv``, None when the run wrote none."""

    returncode: int | None
    seconds: float
    peak_rss_bytes: int
    time_limit_s: float
    grace_s: float
    log: Path
    submission: Path | None
    isolated: bool

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _unpack(zip_path: Path, root: Path) -> None:
    if not zip_path.is_file():
        raise PackageError(f"{zip_path}: no such file (make pack-submission writes it)")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
            if ENTRY not in names:
                nested = [n for n in names if n.endswith(f"/{ENTRY}")]
                hint = f" (found {nested[0]}: zip the folder's contents, not the folder)"
                raise PackageError(
                    f"{zip_path}: no {ENTRY} at the root of the zip{hint if nested else ''}"
                )
            if any(n == "data/" or n.startswith("data/") for n in names):
                raise PackageError(f"{zip_path}: holds data/, where the runtime mounts the data")
            archive.extractall(root)
    except zipfile.BadZipFile as exc:
        raise PackageError(f"{zip_path}: not a zip file ({exc})") from exc


def _copy_read_only(data: Path, target: Path) -> None:
    """Fallback: copy ``data`` to ``target`` and drop write permission (not binding for root)."""
    shutil.copytree(data, target)
    for path in sorted(target.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    target.chmod(0o555)


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


def _wait(pid: int, deadline: float) -> tuple[int | None, int]:
    """Wait for ``pid`` until ``deadline`` (monotonic), then kill its process group.
    Returns ``(exit status or None if killed, peak RSS in bytes, read every 0.1 s)``."""
    peak_kb = 0
    while True:
        peak_kb = max(peak_kb, high_water_kb(pid))
        done, status, _ = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), peak_kb * 1024
        if time.monotonic() >= deadline:
            os.killpg(pid, signal.SIGKILL)
            os.wait4(pid, 0)
            return None, peak_kb * 1024
        time.sleep(0.1)


def run_local(
    zip_path: Path,
    data: Path,
    out_dir: Path,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    grace_s: float = DEFAULT_GRACE_S,
    isolate: bool | None = None,
) -> RunOutcome:
    """Run the zipped submission on ``data`` as the runtime does; results into ``out_dir``.

    ``isolate``: True needs the namespace (read-only bind mount, no network), False forces the
    fallback, None (default) uses the namespace where permitted and warns where not. Writes
    ``out_dir/log.txt`` (stdout and stderr) and copies ``submission.csv`` to ``out_dir`` (a stale
    one is removed first). Raises :class:`PackageError` for a missing or malformed zip or data
    folder; the run's own failures are in the returned outcome (see :func:`check_outcome`).
    """
    data = data.resolve()
    if not data.is_dir():
        raise PackageError(f"{data}: no such data folder")
    if isolate is None:
        isolate = namespaces_available()
        if not isolate:
            log.warning(
                "namespaces not permitted here (unshare failed): data/ is a read-only COPY, which "
                "root can still write, and only Python sockets are disabled; run as root for the "
                "real read-only mount and network namespace"
            )
    elif isolate and not namespaces_available():
        raise PackageError("isolation asked for, but unshare --mount --net is not permitted")
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_out, log_path = out_dir / CSV_NAME, out_dir / LOG_NAME
    csv_out.unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tissuenet-runtime-"))
    root, home = work / "root", work / "home"
    try:
        root.mkdir()
        home.mkdir()
        _unpack(zip_path, root)
        blocked = blocked_modules(runtime_distributions())
        guard = write_guard(work / "guard", blocked, no_network=not isolate)
        if isolate:
            (root / "data").mkdir()
            command = [
                *_NAMESPACE_PROBE[:-1],
                *("sh", "-c", _NAMESPACE_SCRIPT, "sh", str(data), str(root), sys.executable),
            ]
        else:
            _copy_read_only(data, root / "data")
            command = [sys.executable, ENTRY]
        log.info("running %s in %s (time limit %g s)", zip_path, root, time_limit_s)
        with log_path.open("wb") as log_file:
            start = time.monotonic()
            process = subprocess.Popen(
                command,
                cwd=root,
                env=runtime_env(guard.parent, home, time_limit_s),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            returncode, peak = _wait(process.pid, start + time_limit_s + grace_s)
            process.returncode = -1 if returncode is None else returncode
            seconds = time.monotonic() - start
        produced = root / CSV_NAME
        if produced.is_file():
            shutil.copyfile(produced, csv_out)
    finally:
        _make_writable(work)
        shutil.rmtree(work, ignore_errors=True)
    return RunOutcome(
        returncode=returncode,
        seconds=seconds,
        peak_rss_bytes=peak,
        time_limit_s=time_limit_s,
        grace_s=grace_s,
        log=log_path,
        submission=csv_out if csv_out.is_file() else None,
        isolated=isolate,
    )


def check_outcome(outcome: RunOutcome, fmt_path: Path) -> list[str]:
    """Everything wrong with a run, one line each (empty: the runtime would accept it).

    Wrong: killed or over its time limit, a non-zero exit status, no ``submission.csv``, or a
    submission that :func:`stages.submission.validate` rejects against ``fmt_path``.
    """
    problems = []
    limit = outcome.time_limit_s
    if outcome.timed_out:
        problems.append(
            f"main.py still running {limit + outcome.grace_s:g} s after start (time limit "
            f"{limit:g} s): killed; the runtime kills it at the limit"
        )
    elif outcome.seconds > limit:
        problems.append(
            f"main.py ran {outcome.seconds:.1f} s, over the time limit of {limit:g} s: "
            "the runtime would have killed it"
        )
    if outcome.returncode not in (0, None):
        problems.append(f"main.py exited with status {outcome.returncode} (see {outcome.log})")
    if outcome.submission is None:
        problems.append(f"main.py wrote no {CSV_NAME}")
        return problems
    try:
        validate(read_table(outcome.submission, unique=False), read_format(fmt_path))
    except SubmissionError as exc:
        problems.append(str(exc))
    return problems


# -- CLI -----------------------------------------------------------------------------------------


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
