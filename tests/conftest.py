"""Fixtures shared by the tests (helper functions and constants: ``helpers.py``): a gradient
image, tiny random-weight assets, generated datasets built once per session, one generated slide.

Tests run on the CPU, whatever the machine has: the session hides its GPUs from itself and from
every process it starts (``main.py``, the trainers, Ray), and each test not marked ``gpu`` sees
none in-process either. Tests marked ``gpu`` run only in a session of their own
(``pytest -m gpu``), on the GPU, and are skipped where there is none."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data.synthetic import SynthConfig, generate_dataset
from training.pack.export import init_assets

logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips is chatty at INFO


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before any test or fixture runs: unless every test selected is marked ``gpu``, hide the
    GPUs (``CUDA_VISIBLE_DEVICES=""``) from this process's CUDA and from every process started
    from now on, and skip the ``gpu`` tests; in a session of ``gpu`` tests only, skip them where
    there is no GPU."""
    gpu = [item for item in session.items if item.get_closest_marker("gpu")]
    if len(gpu) < len(session.items):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        reason = "a gpu test runs in a session of gpu tests only: pytest -m gpu"
    elif not torch.cuda.is_available():
        reason = "no GPU here"
    else:
        return
    for item in gpu:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def cpu_only(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked ``gpu`` sees no GPU, even where CUDA was set up before the session hid
    them: ``torch.cuda`` reports none (what the trainers, Lightning and the device choices ask)
    and the processes it starts get ``CUDA_VISIBLE_DEVICES=""``."""
    if request.node.get_closest_marker("gpu"):
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def gradient_rgb() -> np.ndarray:
    """(2001, 3001, 3) uint8: red ramps with x, green with y, blue constant 128."""
    yy, xx = np.mgrid[0:2001, 0:3001]
    return np.stack(
        [(xx * 255 // 3000), (yy * 255 // 2000), np.full_like(xx, 128)], axis=-1
    ).astype(np.uint8)


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight assets (``training.pack.export.init_assets``, seed 0): for tests of
    mechanics, not grades. Shared by the whole session: tests must not change them."""
    return init_assets(tmp_path_factory.mktemp("assets") / "assets")


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``generated(n, seed, split="test", config=None)``: the folder of
    :func:`training.data.synthetic.generate_dataset`'s ``n`` slides of ``seed`` (its default
    :class:`SynthConfig` for ``None``), generated once per session and shared by every test that
    asks for the same set: read it, never change it (copy it to change it)."""
    built: dict[tuple, Path] = {}

    def dataset(n: int, seed: int, split: str = "test", config: SynthConfig | None = None) -> Path:
        key = (n, seed, split, config)
        if key not in built:
            folder = tmp_path_factory.mktemp(f"{split}{n}_seed{seed}_") / "data"
            generate_dataset(folder, n, seed=seed, split=split, config=config)
            built[key] = folder
        return built[key]

    return dataset


@pytest.fixture(scope="session")
def slide_path(generated: Callable[..., Path]) -> Path:
    """One generated test-layout slide of 8000–9000 px (seed 31), shared by the session."""
    data = generated(1, 31, config=SynthConfig(size_range=(8000, 9000)))
    return next(data.glob("*.tif"))
