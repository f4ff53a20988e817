"""Tests run on the CPU unless marked ``gpu`` (``tests/conftest.py``): shown by pytest sessions of
their own, with this suite's conftest, on a machine whose torch reports two GPUs."""

from __future__ import annotations

import os

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow  # each test runs a pytest session of its own

#: A plugin that makes torch report two GPUs, as on a GPU machine.
SIMULATED_GPU = """
import torch

torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
"""

INNER_TESTS = """
import subprocess
import sys

import pytest
from lightning.pytorch.accelerators import CPUAccelerator

from training.fit.common import make_trainer, trainer_precision
from training.presets import TrainOptions


def test_unmarked(tmp_path):
    options = TrainOptions()
    assert not options.gpu() and trainer_precision(options) == "32-true"
    trainer = make_trainer(options, tmp_path, "val_loss", "min")
    assert isinstance(trainer.accelerator, CPUAccelerator)
    code = "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.stdout.strip() == "''"


@pytest.mark.gpu
def test_marked():
    options = TrainOptions()
    assert options.gpu() and trainer_precision(options) == "16-mixed"
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A folder holding :data:`INNER_TESTS`, run with ``-p simulated_gpu -p conftest`` (this
    suite's conftest, importable)."""
    pytester.makepyfile(simulated_gpu=SIMULATED_GPU, test_inner=INNER_TESTS)
    path = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    return pytester


def test_unmarked_tests_see_no_gpu_and_gpu_tests_wait_for_a_session_of_their_own(
    inner: pytest.Pytester,
) -> None:
    result = inner.runpytest_subprocess("-p", "simulated_gpu", "-p", "conftest", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*pytest -m gpu*"])


def test_a_session_of_gpu_tests_sees_the_gpu(inner: pytest.Pytester) -> None:
    result = inner.runpytest_subprocess("-p", "simulated_gpu", "-p", "conftest", "-m", "gpu")
    result.assert_outcomes(passed=1, deselected=1)
