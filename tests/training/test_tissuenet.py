"""The one command line: every ``tissuenet`` subcommand reaches its module's ``main``."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from helpers import REAL_TISSUENET

from stages.cli import parse_args
from training import tissuenet


@pytest.mark.parametrize("name", list(tissuenet.COMMANDS))
def test_every_subcommand_has_a_main(name: str) -> None:
    module = importlib.import_module(tissuenet.COMMANDS[name][0])
    assert callable(module.main)


def test_a_subcommand_forwards_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    labels = str(REAL_TISSUENET / "train_labels.csv")
    assert tissuenet.main(["metric", labels, labels]) == 0
    assert "1.0000" in capsys.readouterr().out


def test_no_or_an_unknown_subcommand_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert tissuenet.main([]) == 2
    assert tissuenet.main(["--help"]) == 0
    assert tissuenet.main(["nonsense"]) == 2
    printed = capsys.readouterr()
    assert printed.out.count("subcommands:") == 2
    assert "unknown subcommand 'nonsense'" in printed.err and "  grade " in printed.err


def test_grade_is_what_main_py_runs(tmp_path: Path) -> None:
    """``tissuenet grade`` and ``main.py`` parse the same options, defaults from the folder."""
    args = parse_args(["--time-limit", "60"], root=tmp_path)
    assert (args.data, args.out, args.assets) == (
        tmp_path / "data",
        tmp_path / "submission.csv",
        tmp_path / "assets",
    )
    assert args.time_limit == 60.0 and args.device == "auto"
