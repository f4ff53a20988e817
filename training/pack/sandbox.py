"""Run a packed submission as the competition's runtime does, without Docker.

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
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from stages.runtime import DEFAULT_TIME_LIMIT_S
from stages.submission import (
    SubmissionError,
    read_format,
    read_table,
    validate,
)
from training.pack.guard import (
    ENTRY,
    PackageError,
    blocked_modules,
    runtime_distributions,
    runtime_env,
    write_guard,
)
from training.process import high_water_kb

log = logging.getLogger(__name__)

LOG_NAME = "log.txt"
CSV_NAME = "submission.csv"
#: Seconds a run may go past its limit before it is killed (to tell "a little late" from hung).
DEFAULT_GRACE_S = 10.0
_NAMESPACE_PROBE = ("unshare", "--mount", "--net", "--propagation", "private", "--", "true")
#: Inside the namespace: bind the data read-only at root/data, then become ``python main.py``.
_NAMESPACE_SCRIPT = (
    'mount --bind "$1" "$2/data" && mount -o remount,bind,ro "$2/data" && exec "$3" main.py'
)


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
        packed = frozenset(path.name.removesuffix(".py") for path in root.iterdir())
        blocked = blocked_modules(runtime_distributions(), packed)
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
