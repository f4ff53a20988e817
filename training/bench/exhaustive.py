"""The brute-force baseline: the trained patch classifier on every tissue patch of a slide.

``python -m training.bench.exhaustive DATA OUT [--assets assets] [--device cpu]
[--sample-tiles N]``

Many TissueNet entries tiled the whole tissue at high resolution and classified every tile. This
does the same with the cascade's own parts, so that only the strategy differs:

* the tissue mask is :meth:`stages.cascade.Cascade.prepare`'s;
* the tiles are the classifier page's ``patch × patch`` grid cells (no overlap) whose footprint
  holds tissue (:func:`stages.detector.tissue_windows` with the patch as window), read row by row
  as strips (:func:`stages.detector.read_windows`) and graded in batches by
  :func:`stages.classifier.grade`;
* the slide class is the shipped decision (:func:`stages.decision.decide_slide`) on the
  ``budget.max_k`` tiles most likely to hold a lesion (1 − p0), as the cascade's hotspots are
  ranked, with no heatmap evidence.

Each slide's :class:`stages.result.SlideResult` (``grades``: every tile's probabilities,
``seconds`` by stage) is saved to ``OUT/maps`` as ``main.py --save-heatmaps`` does, and the
classes to ``OUT/submission.csv``.

With ``--sample-tiles N`` (for networks too slow to grade every tile: the standard preset, the
foundation-model encoders) only ``N`` tiles spread evenly over the slide's tile list are read and
graded, and the slide's seconds are extrapolated: the time before the first tile, plus the
measured seconds per tile (reading and grading) times the slide's tile count. ``seconds`` then
holds ``measured_s``, ``tiles`` and ``tiles_graded`` beside the extrapolated ``slide``; the
class is decided from the graded tiles only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from stages.cascade import Cascade, StageClock
from stages.classifier import grade
from stages.config import CascadeConfig, load_assets
from stages.decision import decide_slide
from stages.detector import read_windows, tissue_windows
from stages.nets import PRECISIONS
from stages.result import SlideResult, fallback_result
from stages.runtime import FORMAT_NAME, METADATA_NAME
from stages.submission import build_submission, read_format, read_metadata, write_submission
from training.cli import command_parser, setup_logging

log = logging.getLogger(__name__)

#: Tiles read and graded together (bounds the memory: 64 × 128² px is 3 MB of RGB).
TILE_BATCH = 64


def top_tiles(grades: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` rows of ``(N, C)`` tile probabilities most likely to hold a lesion (1 − p0),
    best first (ties in tile order), as the cascade ranks its hotspots."""
    return grades[np.argsort(-(1.0 - grades[:, 0]), kind="stable")[:k]]


def tiles_class(grades: np.ndarray, config: CascadeConfig) -> int:
    """A slide's class from its graded tiles' ``(N, C)`` probabilities: ``config``'s decision
    (:func:`stages.decision.decide_slide`, no heatmap evidence) on its ``budget.max_k``
    :func:`top_tiles`; give it the config :func:`training.bench.runner.fit_exhaustive_decision`
    refits for this evidence."""
    return decide_slide(top_tiles(grades, config.budget.max_k), [], config.decision).cls


def sample_evenly(n_total: int, n: int | None) -> np.ndarray:
    """Indices of ``n`` of ``n_total`` items spread evenly (all of them when ``n`` is None or
    not smaller), ascending."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))


def grade_exhaustively(
    cascade: Cascade, path: Path, mpp: float | None, sample_tiles: int | None = None
) -> SlideResult:
    """Every tissue tile of the slide at ``path`` graded (or ``sample_tiles`` of them, the time
    extrapolated); see the module doc."""
    cfg = cascade.config
    start = time.perf_counter()
    prepared = cascade.prepare(path, mpp)
    try:
        slide = prepared.slide
        clock = StageClock(slide, prepared.seconds)
        page = slide.page_for_mpp(cfg.classifier.target_mpp)
        info = slide.pages[page]
        patch = cfg.classifier.patch
        mask_scale = slide.pages[prepared.mask_page].scale
        every = tissue_windows(info.size, info.scale, prepared.mask, mask_scale, patch, 0)
        tiles = [every[i] for i in sample_evenly(len(every), sample_tiles)]
        grades = np.zeros((len(tiles), cfg.classifier.classes), np.float32)
        first_tile = time.perf_counter()
        for first in range(0, len(tiles), TILE_BATCH):
            batch = tiles[first : first + TILE_BATCH]
            pixels = read_windows(slide, page, batch, patch)
            with clock.stage("classifier"):
                grades[first : first + len(batch)] = grade(
                    cascade.assets.classifier,
                    pixels,
                    cfg.classifier,
                    cascade.assets.device,
                    cascade.assets.autocast,
                )
        per_tile = (time.perf_counter() - first_tile) / max(len(tiles), 1)
        with clock.stage("decision"):
            decision = decide_slide(top_tiles(grades, cfg.budget.max_k), [], cfg.decision)
        seconds = clock.finish()
        decoded = slide.reads.pixels / 1e6
    finally:
        prepared.close()
    seconds["total"] = seconds["slide"] = time.perf_counter() - start
    if len(tiles) < len(every):
        seconds["measured_s"] = seconds["slide"]
        seconds["tiles"], seconds["tiles_graded"] = float(len(every)), float(len(tiles))
        seconds["slide"] = seconds["total"] = (
            first_tile - start + per_tile * len(every) + seconds.get("decision", 0.0)
        )
    return SlideResult(
        filename=path.name,
        cls=decision.cls,
        probs=decision.probs,
        source=decision.source,
        grades=grades,
        tissue=prepared.mask,
        tissue_scale=mask_scale,
        seconds=seconds,
        decoded_mpx=decoded,
        pages={"tissue": prepared.mask_page, "classifier": page},
    )


def run(
    data: Path,
    out: Path,
    assets_dir: Path,
    device: str,
    precision: str = "auto",
    sample_tiles: int | None = None,
) -> None:
    """Grade every slide of ``data/submission_format.csv`` exhaustively into ``out``."""
    assets = load_assets(assets_dir, torch.device(device), precision)
    cascade = Cascade(assets)
    fmt = read_format(data / FORMAT_NAME)
    table = read_metadata(data / METADATA_NAME)
    mpps = {str(n): float(r) for n, r in zip(table["filename"], table["resolution"], strict=True)}
    prior = decide_slide([], [], assets.config.decision)
    classes: dict[str, int] = {}
    names = list(dict.fromkeys(fmt["filename"]))
    begin = time.monotonic()
    for i, name in enumerate(names):
        try:
            mpp = mpps.get(name)
            result = grade_exhaustively(
                cascade, data / name, mpp if mpp == mpp else None, sample_tiles
            )
        except Exception as exc:  # as main.py: a bad slide costs its own row
            result = fallback_result(name, prior, f"{type(exc).__name__}: {exc}")
        classes[name] = result.cls
        result.save(out / "maps")
        elapsed = time.monotonic() - begin
        log.info(
            "[%d/%d] %s: class %d, %d tiles graded, %.1f s; ETA %.0f s",
            i + 1,
            len(names),
            name,
            result.cls,
            len(result.grades),
            result.seconds.get("total", 0.0),
            elapsed / (i + 1) * (len(names) - i - 1),
        )
    write_submission(build_submission(fmt, classes, prior.cls), out / "submission.csv", fmt=fmt)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.bench.exhaustive", __doc__)
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--assets", type=Path, default=Path("assets"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--sample-tiles", type=int, default=None, help="grade N, extrapolate")
    args = parser.parse_args(argv)
    setup_logging()
    run(args.data, args.out, args.assets, args.device, args.precision, args.sample_tiles)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
