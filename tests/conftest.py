"""Shared test helpers: small TIFFs written with pyvips in the competition's layout, a TIFF tag
reader, tiny random-weight assets, one generated slide, a fake clock, and ``main.py`` with a
slide held in flight.

Tests run on the CPU, whatever the machine has: the session hides its GPUs from itself and from
every process it starts (``main.py``, the trainers, Ray), and each test not marked ``gpu`` sees
none in-process either. Tests marked ``gpu`` run only in a session of their own
(``pytest -m gpu``), on the GPU, and are skipped where there is none."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pyvips
import torch

from training.data.synthetic import SynthConfig, generate_dataset
from training.pack.export import init_assets
from training.presets import TINY

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
#: Reference files production code reads too (training/data/reference/PROVENANCE.md): real H&E
#: tiles and real TissueNet CSVs (62 training slides, the 1,527-row test format).
REFERENCE = REPO / "training" / "data" / "reference"
REAL_TISSUENET = REFERENCE / "tissuenet"

#: The tiny preset, smaller still, for training tests: 128-px detector windows, 64-px patches,
#: no dropout (so that a resumed run can match an uninterrupted one exactly).
TEST_RECIPE = replace(
    TINY,
    detector=replace(TINY.detector, window=128, overlap=32),
    classifier=replace(TINY.classifier, patch=64, dropout=0.0),
)

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


def write_tiff(
    path: Path,
    pixels: np.ndarray,
    mpp: float | None = 0.25,
    pyramid: bool = True,
    tile: int = 512,
) -> Path:
    """Write ``pixels`` ((H, W) or (H, W, B) uint8) as a tiled JPEG/LZW TIFF, pyramidal by default.

    JPEG for 3-band images (the competition's format), LZW otherwise (JPEG cannot hold alpha).
    ``mpp=None`` writes no resolution tags.
    """
    image = pyvips.Image.new_from_array(pixels)
    if pixels.ndim == 3:
        image = image.copy(interpretation="srgb" if pixels.shape[2] >= 3 else "b-w")
    kwargs: dict = {"tile": True, "tile_width": tile, "tile_height": tile, "pyramid": pyramid}
    kwargs |= {"compression": "jpeg", "Q": 75} if image.bands == 3 else {"compression": "lzw"}
    if mpp is not None:
        kwargs |= {"xres": 1000.0 / mpp, "yres": 1000.0 / mpp, "resunit": "cm"}
    image.tiffsave(str(path), **kwargs)
    return path


@pytest.fixture
def gradient_rgb() -> np.ndarray:
    """(2001, 3001, 3) uint8: red ramps with x, green with y, blue constant 128."""
    yy, xx = np.mgrid[0:2001, 0:3001]
    return np.stack(
        [(xx * 255 // 3000), (yy * 255 // 2000), np.full_like(xx, 128)], axis=-1
    ).astype(np.uint8)


#: The committed assets (trained on generated slides).
SHIPPED_ASSETS = REPO / "assets"
#: The script that runs ``main.py`` with :meth:`stages.cascade.Cascade.grade_slide` held on some
#: slides (see :func:`held_main`).
HELD_MAIN = REPO / "tests" / "held_main.py"


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight assets (``training.pack.export.init_assets``, seed 0): for tests of
    mechanics, not grades. Shared by the whole session: tests must not change them."""
    return init_assets(tmp_path_factory.mktemp("assets") / "assets")


class FakeClock:
    """A clock that only moves when told to (``clock.now`` or :meth:`advance`)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated test-layout slide of 8000–9000 px (seed 31), shared by the session."""
    data = tmp_path_factory.mktemp("one_slide")
    generate_dataset(data, 1, seed=31, split="test", config=SynthConfig(size_range=(8000, 9000)))
    return next(data.glob("*.tif"))


#: TIFF field types: struct code and size in bytes (RATIONAL: two LONGs).
_TIFF_TYPES = {1: "B", 2: "s", 3: "H", 4: "I", 5: "II", 6: "b", 7: "B", 8: "h", 9: "i", 10: "ii",
               11: "f", 12: "d"}  # fmt: skip


def tiff_tags(path: Path) -> list[dict[int, tuple]]:
    """Every tag of every page (IFD) of a classic TIFF, either byte order: tag → values (numbers
    as a tuple; ASCII as a one-string tuple; RATIONAL as ``(numerator, denominator)`` pairs)."""
    data = path.read_bytes()
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    magic, offset = struct.unpack_from(order + "HI", data, 2)
    assert magic == 42, f"{path.name}: not a classic TIFF"
    pages = []
    while offset:
        (n,) = struct.unpack_from(order + "H", data, offset)
        tags: dict[int, tuple] = {}
        for entry in range(offset + 2, offset + 2 + 12 * n, 12):
            tag, kind, count = struct.unpack_from(order + "HHI", data, entry)
            code = _TIFF_TYPES.get(kind)
            if code is None:
                tags[tag] = ()
                continue
            size = struct.calcsize(order + code) * count
            at = entry + 8 if size <= 4 else struct.unpack_from(order + "I", data, entry + 8)[0]
            if kind == 2:
                tags[tag] = (data[at : at + count].rstrip(b"\0").decode("latin-1"),)
            else:
                values = struct.unpack_from(f"{order}{count * code}", data, at)
                if len(code) == 2:  # RATIONAL, SRATIONAL: (numerator, denominator) pairs
                    values = tuple(zip(values[::2], values[1::2], strict=True))
                tags[tag] = values
        pages.append(tags)
        (offset,) = struct.unpack_from(order + "I", data, offset + 2 + 12 * n)
    return pages


def held_main(
    main_args: list[str],
    marks: Path,
    hold: Iterable[str] = (),
    force: dict[str, int] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """``(command, environment)`` running ``main.py main_args`` in a child process in which
    ``Cascade.grade_slide`` never returns on the slides named in ``hold`` (as a native call that
    hangs), after writing ``marks/<filename>.held``; on the slides of ``force`` it grades as
    usual and returns the class given there. The marker tells a test for certain that the slide
    is in flight, and so that every slide before it was finished and its row written."""
    marks.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "TEST_HOLD": json.dumps(sorted(hold)),
        "TEST_FORCE": json.dumps(force or {}),
        "TEST_MARKS": str(marks),
    }
    return [sys.executable, str(HELD_MAIN), *main_args], env


def wait_for(path: Path, process: subprocess.Popen, deadline_s: float = 300.0) -> None:
    """Wait until ``path`` exists, failing if ``process`` ends first. The deadline only bounds a
    hang: it is no claim about speed."""
    end = time.monotonic() + deadline_s
    while not path.exists():
        assert process.poll() is None, f"the process ended ({process.returncode}) before {path}"
        assert time.monotonic() < end, f"{path} did not appear within {deadline_s:g} s"
        time.sleep(0.05)


def rezip(
    source: Path, target: Path, drop: str = "", replace: dict[str, str | bytes] | None = None
) -> Path:
    """A copy of the zip ``source`` without entry ``drop`` and with ``replace``'s contents."""
    replace = replace or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename != drop:
                dst.writestr(info, replace.get(info.filename, src.read(info)))
    return target
