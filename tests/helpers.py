"""Shared test helpers (imported as ``from helpers import ...``; fixtures live in conftest.py):
paths, the training tests' network config, small TIFFs written with pyvips, painted H&E tissue,
the competition's test-layout CSVs, a fake clock, a zip rewriter, and ``main.py`` run in a child
process (optionally with slides held in flight)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyvips
import tifffile

from training.data.synthetic import SynthConfig
from training.presets import TINY

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
#: Reference files production code reads too (training/data/reference/PROVENANCE.md): real H&E
#: tiles and real TissueNet CSVs (62 training slides, the 1,527-row test format).
REFERENCE = REPO / "training" / "data" / "reference"
REAL_TISSUENET = REFERENCE / "tissuenet"
#: The committed assets (trained on generated slides).
SHIPPED_ASSETS = REPO / "assets"
#: The script that runs ``main.py`` with :meth:`stages.cascade.Cascade.grade_slide` held on some
#: slides (see :func:`start_main`).
HELD_MAIN = REPO / "tests" / "e2e" / "held_main.py"

#: The tiny preset, smaller still, for training tests: 128-px detector windows, 64-px patches,
#: no dropout (so that a resumed run can match an uninterrupted one exactly).
TEST_RECIPE = replace(
    TINY,
    detector=replace(TINY.detector, window=128, overlap=32),
    classifier=replace(TINY.classifier, patch=64, dropout=0.0),
)
#: Small training slides of classes 0 and 2 only (seed 24, 4 slides: labels 0, 0, 2, 2).
TRAIN_MIX = SynthConfig(size_range=(3000, 4000), class_mix=(0.5, 0.0, 0.5, 0.0))


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


def tiff_tags(path: Path) -> list[dict[int, object]]:
    """Every tag of every page (IFD) of a TIFF, as tifffile reads it: tag code → value (a number,
    an enum of the number, a string, or a tuple; RATIONAL as ``(numerator, denominator)``)."""
    with tifffile.TiffFile(path) as tif:
        return [{tag.code: tag.value for tag in page.tags} for page in tif.pages]


# -- painted tissue -------------------------------------------------------------------------------

GLASS = (242, 242, 240)
EOSIN = (214, 122, 156)  # mean colours of eosin- and haematoxylin-rich areas of the real tiles
PURPLE = (170, 111, 158)


def glass(shape: tuple[int, int] = (160, 200), seed: int = 0) -> np.ndarray:
    """``(H, W, 3)`` uint8: empty glass, :data:`GLASS` with Gaussian noise of σ 2.5."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 2.5, (*shape, 3))
    return np.clip(np.array(GLASS) + noise, 0, 255).astype(np.uint8)


def paint_tissue(img: np.ndarray, where: np.ndarray, seed: int = 1) -> None:
    """Fill ``where`` ((H, W) bool) of ``img`` ((H, W, 3) uint8, in place) with a per-pixel mix of
    eosin and haematoxylin colours, as H&E at 16 µm/px."""
    rng = np.random.default_rng(seed)
    mix = rng.uniform(0, 1, (*img.shape[:2], 1))
    colours = mix * np.array(EOSIN) + (1 - mix) * np.array(PURPLE) + rng.normal(0, 4, img.shape)
    img[where] = np.clip(colours, 0, 255).astype(np.uint8)[where]


def tissue(seed: int, size: tuple[int, int] = (1200, 1600), whole: bool = False) -> np.ndarray:
    """``(H, W, 3)`` uint8 of ``size`` (H, W): glass with one H&E ellipse in its middle (semi-axes
    a third of the frame), or with ``whole`` H&E over the whole frame (all tissue: the detector
    has a window to grade everywhere)."""
    h, w = size
    pixels = glass(size, seed)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1
    paint_tissue(pixels, np.ones(size, bool) if whole else blob, seed)
    return pixels


# -- test-layout CSVs ---------------------------------------------------------------------------


def write_format(
    data: Path, names: Sequence[str], metadata: pd.DataFrame | float | None = None
) -> Path:
    """``data/submission_format.csv`` listing ``names`` (every class column 0) and, given
    ``metadata``, ``data/test_metadata.csv``: that table, or every listed slide at that many
    µm/px. Creates ``data``; returns the format's path."""
    data.mkdir(parents=True, exist_ok=True)
    path = data / "submission_format.csv"
    pd.DataFrame({"filename": list(names), **{str(c): 0 for c in range(4)}}).to_csv(
        path, index=False
    )
    if isinstance(metadata, float):
        metadata = pd.DataFrame({"filename": list(names), "resolution": metadata})
    if metadata is not None:
        metadata.to_csv(data / "test_metadata.csv", index=False)
    return path


# -- clocks, processes, zips --------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when told to (``clock.now`` or :meth:`advance`)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def start_main(
    data: Path,
    out: Path,
    assets: Path,
    *extra: str,
    log: int | IO[str] = subprocess.PIPE,
    hold: Iterable[str] = (),
    force: dict[str, int] | None = None,
    marks: Path | None = None,
) -> subprocess.Popen:
    """``main.py --data data --out out --assets assets --device cpu *extra`` started in a child
    process (working directory the repository), its stdout and stderr together into ``log`` (a
    pipe, or an open file). With ``hold`` or ``force`` it runs through ``tests/e2e/held_main.py``:
    ``Cascade.grade_slide`` never returns on the slides named in ``hold`` (as a native call that
    hangs), after writing ``marks/<filename>.held``; on the slides of ``force`` it grades as usual
    and returns the class given there. The marker tells a test for certain that the slide is in
    flight, and so that every slide before it was finished and its row written."""
    args = ["--data", str(data), "--out", str(out), "--assets", str(assets), "--device", "cpu"]
    script, env = REPO / "main.py", None
    if hold or force:
        assert marks is not None, "held slides need a folder for their marks"
        marks.mkdir(parents=True, exist_ok=True)
        script = HELD_MAIN
        env = os.environ | {
            "TEST_HOLD": json.dumps(sorted(hold)),
            "TEST_FORCE": json.dumps(force or {}),
            "TEST_MARKS": str(marks),
        }
    return subprocess.Popen(
        [sys.executable, str(script), *args, *extra],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )


def run_main(
    data: Path, out: Path, assets: Path, *extra: str, timeout: float = 300
) -> tuple[int, str]:
    """``(exit status, log)`` of :func:`start_main` run to its end (``timeout`` bounds a hang
    only)."""
    with start_main(data, out, assets, *extra) as process:
        try:
            log, _ = process.communicate(timeout=timeout)
        finally:
            process.kill()
    return process.returncode, log


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
