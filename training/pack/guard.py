"""What the runtime image holds, and a guard that makes a local run see only that.

The runtime set is the ``requirements.txt`` closure (:func:`runtime_distributions`); every
module of an installed distribution outside it is blocked (:func:`blocked_modules`), and the
packed sources must import nothing else (:func:`unresolved_imports`). :func:`write_guard` writes
the ``sitecustomize`` that refuses those imports (and, optionally, sockets) in a local run;
:func:`runtime_env` is that run's clean environment.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from collections.abc import Mapping
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from stages.runtime import TIME_LIMIT_ENV

REPO = Path(__file__).resolve().parents[2]
#: The runtime image's package set (exact pins); nothing else may be imported at run time.
RUNTIME_REQUIREMENTS = REPO / "requirements.txt"
ENTRY = "main.py"


class PackageError(RuntimeError):
    """The submission cannot be packed or run: names the file and the cause."""


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


#: This project's own distribution (pyproject.toml), installed editable by ``make setup``. Its
#: modules reach the runtime only as packed code (``stages/``, ``main.py``): the others
#: (``training/``) are blocked, although its editable install's finder could import them.
PROJECT = "tissuenet-cascade"


def module_owners() -> dict[str, frozenset[str]]:
    """Installed top-level module → canonical names of the distributions providing it."""
    return {
        module: frozenset(canonicalize_name(d) for d in dists)
        for module, dists in importlib.metadata.packages_distributions().items()
    }


def blocked_modules(
    allowed: frozenset[str], packed: frozenset[str] = frozenset()
) -> dict[str, str]:
    """Installed top-level modules that no distribution in ``allowed`` provides → their owner,
    the ``packed`` ones (top-level names of the zip) excepted."""
    return {
        module: sorted(owners)[0]
        for module, owners in module_owners().items()
        if not owners & allowed and module.isidentifier() and module not in packed
    }


def unresolved_imports(sources: Mapping[str, str], blocked: Mapping[str, str]) -> list[str]:
    """``"path:line: imports X (distribution D, not in the runtime set)"`` for each absolute import
    in ``sources`` (arcname → Python source) of a module outside the runtime set: a blocked
    module, or one that is neither standard library, packed, nor installed (this project's own
    modules count as installed only where packed)."""
    packed = {Path(name).parts[0].removesuffix(".py") for name in sources}
    installed = {m for m, owners in module_owners().items() if owners != {PROJECT}}
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
                if top in sys.stdlib_module_names or top in packed:
                    continue
                if top in blocked:
                    why = f"distribution {blocked[top]}, not in {RUNTIME_REQUIREMENTS.name}"
                elif top in installed:
                    continue
                else:
                    why = "neither packed, standard library nor installed"
                problems.append(f"{name}:{node.lineno}: imports {top} ({why})")
    return problems


#: The run's ``sitecustomize``: drops ``sys.path`` entries outside the interpreter (a ``.pth``
#: may put the checkout there), refuses imports outside the runtime set; optionally no sockets.
_GUARD = '''\
"""Written by training.pack.guard: the local runtime's import guard (and network block)."""
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
