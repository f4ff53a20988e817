"""Synthetic slides written as a competition folder: TIFs (and/or DrivenData's light files)
plus the split's CSVs."""

from __future__ import annotations

import functools
import multiprocessing
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.annotations import annotations_frame
from training.data.light.write import LightOptions, add_urls, write_light_files
from training.data.synthetic.canvas import place, write_sparse_canvas
from training.data.synthetic.cohort import sample_specs
from training.data.synthetic.render import write_slide
from training.data.synthetic.sampling import SynthConfig
from training.data.synthetic.spec import SlideSpec, slide_annotations
from training.data.synthetic.truth_tables import lesion_truth, slide_truth

SPLITS = ("train", "test")

# -- dataset ------------------------------------------------------------------------------------


def posix_cksum(path: str | Path) -> int:
    """The POSIX ``cksum`` CRC of a file (the real metadata's ``tif_cksum``)."""
    try:
        out = subprocess.run(["cksum", str(path)], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"{path}: cksum failed ({exc})") from exc
    return int(out.stdout.split()[0])


def _one_hot(specs: Sequence[SlideSpec], zeros: bool = False) -> pd.DataFrame:
    rows = [
        [s.filename] + [int(not zeros and s.label_as_written == k) for k in range(4)] for s in specs
    ]
    return pd.DataFrame(rows, columns=["filename", "0", "1", "2", "3"])


def _write_one(
    out: Path,
    spec: SlideSpec,
    split: str,
    canvas: tuple[int, int] | None,
    resume: bool,
    light: LightOptions | None,
) -> tuple[dict, SlideSpec]:
    """Write one slide of :func:`write_dataset`; its metadata row (with ``seconds`` and, with
    ``light``, ``light_seconds``) and the spec as written (placed on its canvas, if any)."""
    start = time.perf_counter()
    tifs = light is None or light.tifs
    path = out / (spec.filename if tifs else f".{spec.filename}.light")  # light-only: a scratch TIF
    if canvas is None:
        slide = spec
        if not (resume and tifs and path.is_file()):
            write_slide(path, spec)
    else:
        rng = np.random.default_rng([spec.seed, 6])
        x, y = (
            int(rng.integers(0, max(c - s, 0) + 1))
            for c, s in zip(canvas, (spec.width, spec.height), strict=True)
        )
        slide = place(spec, *canvas, x, y)
        path = write_sparse_canvas(path, *canvas, spec.mpp, spec, (x, y))
    seconds = time.perf_counter() - start
    row = {
        "filename": slide.filename,
        "width": slide.width,
        "height": slide.height,
        "resolution": slide.mpp,
        "magnification": slide.magnification,
    }
    if split == "train":
        row |= {"tif_cksum": posix_cksum(path), "tif_size": path.stat().st_size}
    row["seconds"] = seconds
    if light is not None:
        start = time.perf_counter()
        squares = slide_annotations(slide) if split == "train" else []
        try:
            write_light_files(path, out, slide.filename, (slide.width, slide.height), slide.mpp,
                              squares, light.quality)  # fmt: skip
        finally:
            if not tifs:
                path.unlink(missing_ok=True)
        row["light_seconds"] = time.perf_counter() - start
    return row, slide


def write_dataset(
    out_dir: str | Path,
    specs: Sequence[SlideSpec],
    split: str,
    canvas: tuple[int, int] | None = None,
    resume: bool = False,
    workers: int = 1,
    truth: bool = False,
    light: LightOptions | None = None,
) -> pd.DataFrame:
    """Write ``specs`` as TIFs plus the competition's CSVs of ``split`` into ``out_dir``;
    ``resume`` keeps the TIFs already there (slides are written whole or not at all).

    ``test``: ``test_metadata.csv`` (filename, width, height, resolution, magnification),
    ``submission_format.csv`` (all zeros) and ``test_labels.csv`` (one-hot, for scoring).
    ``train``: ``train_metadata.csv`` (plus tif_cksum, tif_size), ``train_labels.csv`` and
    ``train_annotations.csv``. With ``canvas = (width, height)`` every slide is a huge sparse
    canvas (:func:`write_sparse_canvas`) holding its spec at a random place. ``workers`` > 1
    writes that many slides at once, each in a process of its own (a slide's pixels depend on
    its spec alone, so the files are the same; a real-size slide's render holds ~1.6 GB).
    The labels CSVs hold each slide's label as written (:attr:`SlideSpec.label_as_written`);
    ``truth`` also writes the generator's ground truth, ``truth_lesions.csv`` and
    ``truth_slides.csv`` (:mod:`.truth_tables`). ``light`` also writes DrivenData's light files
    of each slide from its TIF (:func:`training.data.light.write.write_light_files`: the 32×
    downsampled image, and in the train split each square's crop) and the CSVs' URL columns
    holding their paths; with ``light.tifs`` False the TIFs are deleted once those are written
    (the metadata keeps their ``tif_cksum`` and ``tif_size``; ``resume`` then keeps nothing).
    Returns the metadata table with a ``seconds`` column (time to render and write each TIF)
    and, with ``light``, ``light_seconds`` (time to write its light files) the CSV does not
    have.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if len({s.filename for s in specs}) != len(specs):
        raise ValueError("slide filenames must be unique")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    one = functools.partial(_write_one, out, split=split, canvas=canvas, resume=resume, light=light)
    if workers > 1 and len(specs) > 1:
        context = multiprocessing.get_context("spawn")  # a fork would inherit libvips' threads
        with ProcessPoolExecutor(min(workers, len(specs)), mp_context=context) as pool:
            results = list(pool.map(one, specs))
    else:
        results = [one(spec) for spec in specs]
    rows = [row for row, _ in results]
    written = [slide for _, slide in results]
    metadata = pd.DataFrame(rows)
    table = metadata.drop(columns=["seconds", "light_seconds"], errors="ignore")
    (table if light is None else add_urls(table, "metadata")).to_csv(
        out / f"{split}_metadata.csv", index=False
    )
    _one_hot(written).to_csv(out / f"{split}_labels.csv", index=False)
    if split == "test":
        _one_hot(written, zeros=True).to_csv(out / "submission_format.csv", index=False)
    else:
        annotations = [a for slide in written for a in slide_annotations(slide)]
        heights = {slide.filename: slide.height for slide in written}
        squares = annotations_frame(annotations, heights)
        (squares if light is None else add_urls(squares, "annotations")).to_csv(
            out / "train_annotations.csv", index=False
        )
    if truth:
        lesion_truth(written).to_csv(out / "truth_lesions.csv", index=False)
        slide_truth(written).to_csv(out / "truth_slides.csv", index=False)
    return metadata


def generate_dataset(
    out_dir: str | Path,
    n_slides: int,
    seed: int,
    split: str = "train",
    config: SynthConfig | None = None,
    workers: int = 1,
    light: LightOptions | None = None,
) -> pd.DataFrame:
    """``n_slides`` random slides of ``seed`` written as a ``split`` directory with the ground
    truth (e.g. ``config=COHORTS["realistic"]``), ``workers`` at once, and, given ``light``, the
    light files; see :func:`write_dataset`."""
    specs = sample_specs(n_slides, seed, config or SynthConfig(), split)
    return write_dataset(out_dir, specs, split, workers=workers, truth=True, light=light)
