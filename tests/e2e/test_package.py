"""Packing, the runtime package set, and the local runtime's isolation (training/pack/package.py).

Runs here use small stdlib-only ``main.py`` probes; the real submission goes through the local
runtime in test_battery.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO, write_format

from training.pack import package, sandbox
from training.pack.guard import (
    PackageError,
    blocked_modules,
    runtime_distributions,
    runtime_env,
    unresolved_imports,
    write_guard,
)
from training.pack.package import pack
from training.pack.sandbox import RunOutcome, check_outcome, run_local

NAMESPACES = sandbox.namespaces_available()


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> package.PackReport:
    return pack(tmp_path_factory.mktemp("pack") / "submission.zip", assets=assets)


def probe_zip(path: Path, main_py: str, extra: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("main.py", main_py)
        for name, text in (extra or {}).items():
            archive.writestr(name, text)
    return path


# -- packing -------------------------------------------------------------------------------------


def test_zip_holds_main_stages_and_assets_only(packed: package.PackReport, assets: Path) -> None:
    stages = sorted(
        f"stages/{p.relative_to(REPO / 'stages').as_posix()}"
        for p in (REPO / "stages").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    expected = ["main.py", *stages, *(f"assets/{p.name}" for p in sorted(assets.iterdir()))]
    with zipfile.ZipFile(packed.path) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == expected
    assert {i.external_attr >> 16 for i in infos} == {0o644}  # readable by any runtime user
    assert [name for name, _ in packed.files] == expected
    summary = packed.summary().splitlines()
    assert summary[0] == f"{packed.path}: {package._size(packed.size_bytes)}, {len(expected)} files"
    assert summary[1].split()[0] == "main.py"
    assert summary[2].split()[:3] == ["stages/", str(len(stages)), "files"]
    assert summary[3].split()[:3] == ["assets/", "3", "files"]


def test_pack_refuses_to_overwrite_unless_forced(packed: package.PackReport, assets: Path) -> None:
    before = packed.path.read_bytes()
    with pytest.raises(PackageError, match="exists; pass --force"):
        pack(packed.path, assets=assets)
    assert packed.path.read_bytes() == before
    pack(packed.path, assets=assets, force=True)
    assert packed.path.read_bytes() == before  # fixed dates and modes: same sources, same zip


def test_pack_refuses_assets_that_would_fail_at_start_up(tmp_path: Path, assets: Path) -> None:
    broken = tmp_path / "assets"
    shutil.copytree(assets, broken)
    (broken / "detector.safetensors").unlink()
    with pytest.raises(PackageError, match=r"weight file missing: .*detector\.safetensors"):
        pack(tmp_path / "submission.zip", assets=broken)
    assert not (tmp_path / "submission.zip").exists()


def test_pack_refuses_code_outside_the_runtime_set(tmp_path: Path, assets: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(REPO / "stages", source / "stages", ignore=shutil.ignore_patterns("__py*"))
    shutil.copy(REPO / "main.py", source)
    (source / "stages" / "plots.py").write_text("import json\n\nimport matplotlib.pyplot\n")
    with pytest.raises(PackageError) as error:
        pack(tmp_path / "submission.zip", source=source, assets=assets)
    assert str(error.value) == (
        "code imports outside the runtime package set: stages/plots.py:3: imports matplotlib "
        "(distribution matplotlib, not in requirements.txt)"
    )


def test_unresolved_imports_names_each_file_and_line() -> None:
    sources = {
        "main.py": "import os\nfrom stages import runtime\nimport numpy as np\n",
        "stages/a.py": "from . import b\nfrom training.data import x\nimport pip, torch\n",
    }
    assert unresolved_imports(sources, {"pip": "pip"}) == [
        "stages/a.py:2: imports training (neither packed, standard library nor installed)",
        "stages/a.py:3: imports pip (distribution pip, not in requirements.txt)",
    ]


def test_runtime_set_is_the_requirements_closure(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# runtime\nnumpy==2.4.6  # arrays\n-r other.txt\n\n")
    assert runtime_distributions(requirements) == frozenset({"numpy"})
    closure = runtime_distributions()
    assert {"segmentation-models-pytorch", "timm", "torch", "huggingface-hub", "pyvips"} <= closure
    assert not {"matplotlib", "pytest", "pip", "psutil", "scipy"} & closure
    requirements.write_text("numpy\nnot a requirement!\n")
    with pytest.raises(PackageError, match=r"requirements\.txt:2: not a requirement"):
        runtime_distributions(requirements)


def run_guarded(tmp_path: Path, code: str, no_network: bool = False) -> subprocess.CompletedProcess:
    blocked = blocked_modules(runtime_distributions())
    guard = write_guard(tmp_path / "guard", blocked, no_network)
    (tmp_path / "home").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=runtime_env(guard.parent, tmp_path / "home", 60),
        capture_output=True,
        text=True,
        check=False,
    )


def test_guard_blocks_dev_packages_and_allows_the_runtime_set(tmp_path: Path) -> None:
    blocked = run_guarded(tmp_path, "import matplotlib")
    assert blocked.returncode == 1
    assert blocked.stderr.splitlines()[-1] == (
        "ModuleNotFoundError: matplotlib (distribution matplotlib) is not in the runtime package "
        "set (requirements.txt): the runtime image does not have it"
    )
    allowed = run_guarded(
        tmp_path, "import cv2, numpy, pandas, pyvips, safetensors, segmentation_models_pytorch"
    )
    assert allowed.returncode == 0, allowed.stderr


def test_guard_without_namespace_disables_sockets(tmp_path: Path) -> None:
    code = "import socket; socket.create_connection(('127.0.0.1', 9))"
    result = run_guarded(tmp_path, code, no_network=True)
    assert result.stderr.splitlines()[-1] == (
        "OSError: [Errno 101] network disabled by the local runtime check"
    )


# -- the local runtime ---------------------------------------------------------------------------

#: Reports what the runtime gives a submission, then writes a valid all-class-0 submission.
PROBE = """\
import csv, json, os, socket
report = {"cwd": sorted(os.listdir(".")), "data": sorted(os.listdir("data"))}
try:
    open("data/written.txt", "w").close()
    report["data_write"] = "ok"
except OSError as exc:
    report["data_write"] = exc.errno
try:
    socket.create_connection(("1.1.1.1", 53), timeout=5)
    report["network"] = "ok"
except OSError as exc:
    report["network"] = exc.errno
try:
    import matplotlib
    report["matplotlib"] = "ok"
except ImportError:
    report["matplotlib"] = "blocked"
try:
    import training
    report["checkout"] = "importable"
except ImportError:
    report["checkout"] = "not importable"
report["env"] = sorted(set(os.environ) - {"PWD"})  # PWD: set by the namespace's sh
report["home"] = os.listdir(os.environ["HOME"])
with open("data/submission_format.csv") as src, open("submission.csv", "w", newline="") as dst:
    rows = list(csv.reader(src))
    csv.writer(dst).writerows([rows[0]] + [[r[0], 1, 0, 0, 0] for r in rows[1:]])
print(json.dumps(report))
"""


def probe_run(tmp_path: Path, isolate: bool | None) -> tuple[RunOutcome, dict, Path]:
    data = tmp_path / "data"
    write_format(data, ["a.tif", "b.tif"])
    (data / "a.tif").write_bytes(b"II*\0")
    zip_path = probe_zip(tmp_path / "probe.zip", PROBE, {"stages/__init__.py": ""})
    outcome = run_local(zip_path, data, tmp_path / "out", time_limit_s=60, isolate=isolate)
    return outcome, json.loads(outcome.log_text().splitlines()[-1]), data


@pytest.mark.skipif(not NAMESPACES, reason="needs unshare --mount --net (root)")
def test_runtime_mounts_data_read_only_without_network(tmp_path: Path) -> None:
    outcome, report, data = probe_run(tmp_path, isolate=True)
    assert outcome.returncode == 0 and outcome.isolated
    assert report == {
        "cwd": ["data", "main.py", "stages"],
        "data": ["a.tif", "submission_format.csv"],
        "data_write": 30,  # EROFS
        "network": 101,  # ENETUNREACH: the namespace has only a loopback, down
        "matplotlib": "blocked",
        "checkout": "not importable",
        "env": sorted(runtime_env(Path(), Path(), 0)),
        "home": [],
    }
    assert sorted(p.name for p in data.iterdir()) == ["a.tif", "submission_format.csv"]
    assert check_outcome(outcome, data / "submission_format.csv") == []
    assert (tmp_path / "out" / "submission.csv").read_text().splitlines()[1] == "a.tif,1,0,0,0"


def test_fallback_without_namespaces_warns_and_protects_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
    outcome, report, data = probe_run(tmp_path, isolate=None)
    assert outcome.returncode == 0 and not outcome.isolated
    assert "namespaces not permitted here" in caplog.text
    # a copy without write permission: root may still write it, but never into the real data
    assert report["data_write"] == ("ok" if os.geteuid() == 0 else 13)
    assert sorted(p.name for p in data.iterdir()) == ["a.tif", "submission_format.csv"]
    assert report["network"] == 101 and report["matplotlib"] == "blocked"
    assert report["checkout"] == "not importable"
    assert check_outcome(outcome, data / "submission_format.csv") == []


def test_run_past_the_limit_is_killed_and_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fmt = write_format(data, ["a.tif"])
    zip_path = probe_zip(
        tmp_path / "hang.zip", "import time\nprint('started', flush=True)\ntime.sleep(600)\n"
    )
    outcome = run_local(zip_path, data, tmp_path / "out", time_limit_s=1, grace_s=1)
    assert outcome.timed_out and outcome.log_text() == "started\n"
    assert check_outcome(outcome, fmt) == [
        "main.py still running 2 s after start (time limit 1 s): killed; the runtime kills it at "
        "the limit",
        "main.py wrote no submission.csv",
    ]


def test_zip_without_main_at_its_root_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_format(data, ["a.tif"])
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as archive:
        archive.writestr("mysub/main.py", "")
    with pytest.raises(PackageError, match=r"no main\.py at the root of the zip \(found mysub/"):
        run_local(nested, data, tmp_path / "out")
    with pytest.raises(PackageError, match="no such file"):
        run_local(tmp_path / "absent.zip", data, tmp_path / "out")


def outcome_for(tmp_path: Path, csv_text: str | None, returncode: int | None = 0) -> RunOutcome:
    log = tmp_path / "log.txt"
    log.write_text("")
    csv = None
    if csv_text is not None:
        csv = tmp_path / "submission.csv"
        csv.write_text(csv_text)
    return RunOutcome(returncode, 12.5, 0, 10.0, 5.0, log, csv, True)


def test_check_outcome_names_every_fault(tmp_path: Path) -> None:
    fmt = write_format(tmp_path / "data", ["a.tif", "b.tif"])
    header = "filename,0,1,2,3\n"
    good = header + "a.tif,1,0,0,0\nb.tif,0,0,0,1\n"
    outcome = outcome_for(tmp_path, good)
    assert check_outcome(outcome, fmt) == [
        "main.py ran 12.5 s, over the time limit of 10 s: the runtime would have killed it"
    ]
    short = outcome_for(tmp_path, header + "b.tif,0,1,0,0\n", returncode=1)
    status, invalid = check_outcome(short, fmt)[1:]
    assert status == f"main.py exited with status 1 (see {tmp_path / 'log.txt'})"
    assert invalid.startswith("invalid submission: ") and "a.tif" in invalid


def test_cli_pack_test_and_score(
    tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "sub" / "submission.zip"
    assert package.main(["pack", "--out", str(out), "--assets", str(assets)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: ")
    assert package.main(["pack", "--out", str(out), "--assets", str(assets)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err

    data = tmp_path / "data"
    write_format(data, ["a.tif", "b.tif"])
    probe = probe_zip(tmp_path / "probe.zip", PROBE)
    args = ["test", "--zip", str(probe), "--data", str(data), "--out-dir", str(tmp_path / "sub")]
    assert package.main([*args, "--time-limit", "60"]) == 0
    report = capsys.readouterr().out.splitlines()
    assert report[-2].endswith(
        "2 rows, valid against "
        f"{data / 'submission_format.csv'}; "
        "classes {0: 2, 1: 0, 2: 0, 3: 0}"
    )
    assert report[-1] == "OK"

    labels = tmp_path / "labels.csv"
    labels.write_text("filename,0,1,2,3\na.tif,0,1,0,0\nb.tif,0,0,0,1\n")
    assert (
        package.main(
            [
                "score",
                "--submission",
                str(tmp_path / "sub" / "submission.csv"),
                "--labels",
                str(labels),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[:2] == ["slides: 2", "score:  0.4500"]

    silent = probe_zip(tmp_path / "silent.zip", "print('no csv')\n")
    args[2] = str(silent)
    assert package.main([*args, "--time-limit", "60"]) == 1
    report = capsys.readouterr().out.splitlines()
    assert report[-4:] == [
        "--- last lines of the log ---",
        "no csv",
        "---",
        "FAILED: main.py wrote no submission.csv",
    ]
