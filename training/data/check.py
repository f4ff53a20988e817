"""Check a train folder: the annotations' geometry on any folder, and, on a generated one, the
generator's ground truth.

:func:`geometry_report` works on any training folder (the real TissueNet layout or a generated
one): per slide, the metadata size against the TIF's page-0 size (some real TIFs' page 0 is
padded to a multiple of 256 px); per annotation square, the share the cascade's tissue mask
calls tissue when the flipped y axis is undone with the metadata height and with the TIF height;
and which of the two conventions the data supports (:func:`flip_verdict`). It reads one
low-resolution page per slide (the tissue-mask page), never page 0.

On a generated folder (``synNNNN_NNNN.tif`` names, or ``--seed``) it also runs the checks
against the generator's ground truth (:mod:`training.data.synthetic.truth`).

CLI: ``python -m training.data.check DIR [--preset tiny] [--out DIR] [--seed S --slides N
--cohort realistic --class-mix ... --size-range MIN MAX]`` (``--preset``: the preset name or JSON
file whose tissue mask measures coverage; ``--out``: also write the geometry tables as CSV; the
rest are the generator's options, to rebuild a generated folder's specs; a ``realistic`` folder's
``C01_B5_S0000.tif`` names need ``--seed``).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.geometry import Box
from stages.slide import Slide, SlideError
from stages.tissue import TissueConfig, mask_for_slide
from training.data.annotations import Y_FLIPS, Annotation, parse_annotations
from training.data.synthetic.options import add_generator_options, config_from_args
from training.data.synthetic.truth import (
    CLEAN_SHARE,
    coverage_summary,
    folder_specs,
    resolution_check,
    square_coverage,
)
from training.presets import load_preset

log = logging.getLogger(__name__)

#: Verdict rule of :func:`flip_verdict`: a square is *decided* when its two coverages differ by
#: more than ``DECIDED`` (about a mask pixel of a 300 µm square at 16 µm/px is 0.3 %); a
#: convention is supported when its mean coverage over the squares of slides whose heights
#: differ is higher by at least ``MIN_MEAN_GAIN``, it wins more decided squares, and the
#: two-sided sign test on the decided squares gives p <= ``MAX_SIGN_P``.
DECIDED = 0.01
MIN_MEAN_GAIN = 0.02
MAX_SIGN_P = 0.01

# -- geometry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlipVerdict:
    """Which y-flip convention (:data:`training.data.annotations.Y_FLIPS`) the squares' tissue
    coverage supports: ``convention`` is ``"metadata"``, ``"tif"`` or ``"either"`` (heights equal
    everywhere, or a difference within noise), ``reason`` says why in one sentence. Counts and
    means are over the ``compared`` squares (those on slides whose TIF height differs from the
    metadata's); means are NaN and ``p_value`` 1.0 when there are none."""

    convention: str
    reason: str
    compared: int
    metadata_wins: int
    tif_wins: int
    mean_metadata: float
    mean_tif: float
    p_value: float


def box_coverage(mask: np.ndarray, scale: tuple[float, float], box: Box) -> float:
    """Share of page-0 ``box`` that ``mask`` (``(h, w)`` bool, ``scale`` page-0 px per mask pixel)
    calls tissue: the mask pixels whose centre lies in the box (at least the one under its
    centre), those outside the mask counting as glass. A float in [0, 1]."""
    sx, sy = scale

    def centres_in(lo: float, hi: float, step: float) -> tuple[int, int]:
        first, stop = (math.ceil(v / step - 0.5) for v in (lo, hi))
        if stop <= first:  # thinner than a pixel: the pixel under its centre
            first = math.floor((lo + hi) / 2 / step)
            stop = first + 1
        return first, stop

    (r0, r1), (c0, c1) = centres_in(box.y, box.bottom, sy), centres_in(box.x, box.right, sx)
    h, w = mask.shape
    window = mask[max(r0, 0) : max(min(r1, h), 0), max(c0, 0) : max(min(c1, w), 0)]
    return float(window.sum()) / ((r1 - r0) * (c1 - c0))


def _sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial sign test p-value of ``wins`` against ``losses`` (p = 1/2)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def flip_verdict(squares: pd.DataFrame) -> FlipVerdict:
    """The convention a :func:`geometry_report` squares table supports (rule: :data:`DECIDED`).

    Only squares with a nonzero ``shift`` (slides whose TIF height differs from the metadata's)
    and both coverages known are compared; the others sit alike under both conventions.
    """
    known = squares.dropna(subset=["coverage_metadata", "coverage_tif"])
    compared = known[known["shift"] != 0]
    if compared.empty:
        why = (
            "no annotation square on a readable slide"
            if known.empty
            else "every slide's TIF height equals its metadata height, so both place the squares "
            "alike"
        )
        return FlipVerdict("either", why, 0, 0, 0, math.nan, math.nan, 1.0)
    gain = compared["coverage_metadata"] - compared["coverage_tif"]
    meta_wins, tif_wins = int((gain > DECIDED).sum()), int((gain < -DECIDED).sum())
    p = _sign_test(meta_wins, tif_wins)
    means = float(compared["coverage_metadata"].mean()), float(compared["coverage_tif"].mean())
    counts = (
        f"mean coverage {means[0]:.3f} (metadata) vs {means[1]:.3f} (tif) over {len(compared)} "
        f"squares of slides whose heights differ; wins {meta_wins} vs {tif_wins}, sign test "
        f"p = {p:.2g}"
    )
    convention, why = "either", f"within noise: {counts}"
    for name, mean_gain, wins, losses in (
        ("metadata", float(gain.mean()), meta_wins, tif_wins),
        ("tif", -float(gain.mean()), tif_wins, meta_wins),
    ):
        if mean_gain >= MIN_MEAN_GAIN and wins > losses and p <= MAX_SIGN_P:
            convention, why = name, counts
    return FlipVerdict(convention, why, len(compared), meta_wins, tif_wins, *means, p)


SLIDE_COLUMNS = [
    "filename", "width", "height", "tif_width", "tif_height", "pad_x", "pad_y", "padded",
    "squares", "mask_page", "mask_mpp", "tissue", "error",
]  # fmt: skip
SQUARE_COLUMNS = [
    "annotation_id", "filename", "class", "x", "y_metadata", "y_tif", "side", "shift",
    "coverage_metadata", "coverage_tif",
]  # fmt: skip


def geometry_report(
    data_dir: str | Path, tissue: TissueConfig | None = None, default_mpp: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, FlipVerdict]:
    """The annotations' geometry in a training folder: ``(slides, squares, verdict)``.

    ``slides``: one row per listed slide whose TIF is present (:data:`SLIDE_COLUMNS`): metadata
    ``width`` × ``height`` against the TIF's page-0 ``tif_width`` × ``tif_height`` (px),
    ``pad_x`` / ``pad_y`` = TIF − metadata (px; ``padded`` when both are >= 0 and one is > 0),
    annotation ``squares``, the tissue-mask page, its µm/px and tissue share, and ``error`` (the
    reader's message for a slide that cannot be read, else ``""``). ``squares``: one row per
    annotation square of those slides (:data:`SQUARE_COLUMNS`): its page-0 box (x, y down)
    with y undone by the metadata height (``y_metadata``) and by the TIF height (``y_tif =
    y_metadata + shift``, ``shift = tif_height − height``), and the share of each box the tissue
    mask (:func:`stages.tissue.mask_for_slide` with ``tissue``) calls tissue, floats in [0, 1]
    (NaN on unreadable slides). ``verdict``: :func:`flip_verdict`. ``default_mpp`` is the
    µm/pixel of a slide the metadata and the file give none (as the cascade's).

    Reads the TIF headers and one low-resolution page per slide (the mask page); each slide is
    closed after use.
    """
    data_dir = Path(data_dir)
    metadata = pd.read_csv(data_dir / "train_metadata.csv")
    missing = {"filename", "width", "height"} - set(metadata.columns)
    if missing:
        raise ValueError(f"{data_dir / 'train_metadata.csv'}: missing column(s) {sorted(missing)}")
    path = data_dir / "train_annotations.csv"
    by_slide: dict[str, list[Annotation]] = {}
    for a in parse_annotations(path, metadata) if path.is_file() else []:
        by_slide.setdefault(a.filename, []).append(a)
    resolution = pd.to_numeric(metadata.get("resolution", np.nan), errors="coerce")
    resolution = np.broadcast_to(np.asarray(resolution, float), len(metadata))
    slide_rows, square_rows = [], []
    absent = 0
    for name, width, height, mpp in zip(
        metadata["filename"], metadata["width"], metadata["height"], resolution, strict=True
    ):
        name, width, height = str(name), int(width), int(height)
        if not (data_dir / name).is_file():
            absent += 1
            continue
        squares = by_slide.get(name, [])
        row = dict.fromkeys(SLIDE_COLUMNS, math.nan) | {
            "filename": name, "width": width, "height": height, "squares": len(squares),
            "error": "",
        }  # fmt: skip
        mask, scale, shift = None, (1.0, 1.0), 0
        try:
            with Slide(data_dir / name, mpp=mpp if math.isfinite(mpp) else None,
                       default_mpp=default_mpp) as slide:  # fmt: skip
                row |= {"tif_width": slide.width, "tif_height": slide.height}
                shift = slide.height - height
                mask, page = mask_for_slide(slide, tissue)
                scale = slide.pages[page].scale
                row |= {"mask_page": page, "mask_mpp": slide.page_mpp(page),
                        "tissue": float(mask.mean())}  # fmt: skip
        except (SlideError, ValueError) as exc:
            row["error"] = str(exc) if name in str(exc) else f"{name}: {exc}"
            log.warning("%s", row["error"])
        if not math.isnan(row["tif_height"]):
            row |= {"pad_x": row["tif_width"] - width, "pad_y": row["tif_height"] - height}
            pads = (row["pad_x"], row["pad_y"])
            row["padded"] = min(pads) >= 0 and max(pads) > 0
        slide_rows.append(row)
        for a in squares:
            moved = Box(a.box.x, a.box.y + shift, a.box.w, a.box.h)
            covers = [math.nan, math.nan] if mask is None else [
                box_coverage(mask, scale, a.box), box_coverage(mask, scale, moved)
            ]  # fmt: skip
            square_rows.append([
                a.annotation_id, name, a.annotation_class, a.box.x, a.box.y, moved.y, a.box.w,
                shift if mask is not None else math.nan, *covers,
            ])  # fmt: skip
    if absent:
        log.warning("%d of %d listed slides are not in %s", absent, len(metadata), data_dir)
    slides = pd.DataFrame(slide_rows, columns=SLIDE_COLUMNS).astype({
        "tif_width": "Int64", "tif_height": "Int64", "pad_x": "Int64", "pad_y": "Int64",
        "padded": "boolean", "mask_page": "Int64",
    })  # fmt: skip
    squares = pd.DataFrame(square_rows, columns=SQUARE_COLUMNS).astype({"shift": "Int64"})
    return slides, squares, flip_verdict(squares)


def print_geometry_report(
    slides: pd.DataFrame, squares: pd.DataFrame, verdict: FlipVerdict, listed: int
) -> None:
    """Print a :func:`geometry_report` (``listed``: slides in the metadata) on stdout."""
    padded = int(slides["padded"].fillna(False).sum())
    print(
        f"geometry of {len(slides)} slides ({listed - len(slides)} listed but absent): metadata "
        f"size against the TIF's page 0; {padded} padded"
    )
    table = slides.copy()
    table["metadata"] = [f"{w}x{h}" for w, h in zip(table["width"], table["height"], strict=True)]
    table["tif"] = [
        "?" if pd.isna(w) else f"{w}x{h}"
        for w, h in zip(table["tif_width"], table["tif_height"], strict=True)
    ]
    columns = ["filename", "metadata", "tif", "pad_x", "pad_y", "padded", "squares", "tissue"]
    if (table["error"] != "").any():
        columns.append("error")
    if len(table):
        print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        f"tissue coverage of {len(squares)} annotation squares, y flip undone with the metadata "
        "height (coverage_metadata) and with the TIF height (coverage_tif)"
    )
    if len(squares):
        print(squares.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        coverage = {name: squares[f"coverage_{name}"] for name in Y_FLIPS}
        summary = pd.DataFrame({
            "mean": [c.mean() for c in coverage.values()],
            "median": [c.median() for c in coverage.values()],
            "below_0.5": [int((c < 0.5).sum()) for c in coverage.values()],
        }, index=list(coverage))  # fmt: skip
        print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"y flip: the data supports {verdict.convention!r} ({verdict.reason})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data.check",
        description="Geometry of the annotation squares of a train folder (metadata against TIF "
        "sizes, tissue coverage under both y flips); on a generated folder also coverage of the "
        "squares and low/high-resolution separability of grades against the ground truth.",
    )
    parser.add_argument("data_dir", type=Path)
    parser.add_argument(
        "--preset",
        default="tiny",
        help="preset name or JSON file whose tissue mask measures coverage (default: tiny)",
    )
    parser.add_argument("--config", dest="preset", help=argparse.SUPPRESS)  # the old name
    parser.add_argument(
        "--out", type=Path, help="also write geometry_slides.csv and geometry_squares.csv here"
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="generator seed (default: from synNNNN_NNNN.tif filenames; other folders skip the "
        "synthetic checks unless it is given)",
    )
    parser.add_argument("--slides", type=int, help="slides generated (default: all listed)")
    add_generator_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cascade = load_preset(args.preset).cascade
        metadata = pd.read_csv(args.data_dir / "train_metadata.csv")
        slides_frame, squares_frame, verdict = geometry_report(
            args.data_dir, cascade.tissue, cascade.default_mpp
        )
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    print_geometry_report(slides_frame, squares_frame, verdict, len(metadata))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        slides_frame.to_csv(args.out / "geometry_slides.csv", index=False)
        squares_frame.to_csv(args.out / "geometry_squares.csv", index=False)
    seed = args.seed
    if seed is None:
        match = re.fullmatch(r"syn(\d+)_\d{4}\.tif", str(metadata["filename"].iloc[0]))
        if match is None:
            print("synthetic ground-truth checks skipped: not a generated folder (pass --seed)")
            return 0
        seed = int(match.group(1))
    slides = args.slides if args.slides is not None else len(metadata)
    try:
        config = config_from_args(args)
        specs = folder_specs(args.data_dir, seed, slides, config)
    except ValueError as exc:
        parser.error(str(exc))
    coverage = pd.concat([square_coverage(spec) for spec in specs], ignore_index=True)
    print(f"coverage of {len(coverage)} annotated squares on {len(specs)} slides")
    print(coverage_summary(coverage).round(3).to_string())
    clean = coverage.loc[coverage["artefact"] < CLEAN_SHARE, "annotation_id"]
    for name, ids in (("all squares", None), ("squares clear of artefacts", set(clean))):
        scores = resolution_check(args.data_dir, annotation_ids=ids)
        print(
            f"resolution check, {name} ({scores.squares} lesion squares, {scores.slides} slides,"
            f" majority class {scores.majority:.1%}): low (~4 um/px) {scores.low:.1%}, high "
            f"(~0.5 um/px) {scores.high:.1%} per square, {scores.high_window:.1%} per window"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
