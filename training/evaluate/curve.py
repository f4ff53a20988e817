"""The score–time curve: the cascade's score and seconds per slide as its budget k grows, beside
exhaustive tiling's as the tiles it grades a slide grow (``python -m training.evaluate --curve``).

* cascade: ``main.py`` with ``budget.max_k = k`` (:func:`training.bench.modes.mode_assets`) for k
  in :data:`KS`; the run at the shipped ``max_k`` is the evaluation's own.
* exhaustive: the same classifier on ``N`` tissue tiles a slide spread evenly over the slide
  (:mod:`training.bench.exhaustive`, ``--sample-tiles N``) for N in :data:`TILES`, and on every
  tile (the evaluation's own exhaustive run); the class from the graded tiles only: the
  decision refitted for tiles (:func:`training.bench.runner.fit_exhaustive_decision`, as ``make
  benchmark`` does) on the ``budget.max_k`` most lesional.

Seconds per slide (:func:`seconds_per_slide`) are the mean of each slide's own measured seconds:
``seconds["slide"]`` of its :class:`stages.result.SlideResult` (the wall time ``main.py``'s
budget saw the slide take, waiting for the prefetch thread included; for exhaustive tiling the
wall time of the slide), and for a slide the exhaustive run sampled, ``measured_s`` (what
grading the sample took, not the extrapolation to every tile). The process's start-up (imports,
loading and warming up the networks) is left out: per slide it would shrink as the set grows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stages.config import CascadeConfig, load_config
from stages.metric import score
from stages.result import SlideResult
from stages.submission import classes_by_filename, read_table
from training.bench.exhaustive import tiles_class
from training.bench.modes import Mode
from training.bench.runner import run_mode
from training.bench.tables import plain_markdown
from training.evaluate.heldout import run_results

log = logging.getLogger(__name__)

#: Budgets of the cascade's points: ``budget.max_k``.
KS = (1, 2, 4, 8, 16, 32, 64)
#: Tiles a slide of the exhaustive points (every tile: the evaluation's own run, added last).
TILES = (4, 16, 64, 256)
CURVE_NAME = "score_time_curve"


def seconds_per_slide(results: Sequence[SlideResult]) -> float:
    """Mean measured seconds of the slides (module doc): ``measured_s`` where a slide was
    sampled, else ``slide``, else ``total``; NaN without results."""
    seconds = [
        r.seconds.get("measured_s", r.seconds.get("slide", r.seconds.get("total", 0.0)))
        for r in results
    ]
    return float(np.mean(seconds)) if seconds else float("nan")


def exhaustive_classes(
    run: Path, names: Sequence[str], config: CascadeConfig, results: Sequence[SlideResult]
) -> list[int]:
    """The classes of an exhaustive run's slides ``names`` from their saved tiles' grades by
    ``config``'s decision (:func:`training.bench.exhaustive.tiles_class`; the one
    :func:`training.bench.runner.fit_exhaustive_decision` refits for tiles); a slide with no
    graded tile keeps the class the run wrote. ``results``: the run's saved results of
    ``names``, in order (:func:`training.evaluate.heldout.run_results`)."""
    written = classes_by_filename(read_table(run / "submission.csv"))
    return [
        tiles_class(r.grades, config) if len(r.grades) else written[name]
        for name, r in zip(names, results, strict=True)
    ]


def curve_point(
    test: Path, run: Path, true: Mapping[str, int] | None, tiles: CascadeConfig | None = None
) -> dict:
    """A finished run's point: ``score`` against the test folder's written labels,
    ``score_true`` against ``true`` (filename → class; NaN without), ``s_per_slide`` and
    ``graded_per_slide`` (patches or tiles). ``tiles``: an exhaustive run's slides are classed
    by this config's decision (:func:`exhaustive_classes`), else as the run wrote them."""
    written = classes_by_filename(read_table(test / "test_labels.csv"))
    names = list(written)
    results = run_results(run, names)
    if tiles is None:
        predicted = classes_by_filename(read_table(run / "submission.csv"))
        classes = [predicted[n] for n in names]
    else:
        classes = exhaustive_classes(run, names, tiles, results)
    return {
        "score": score([written[n] for n in names], classes),
        "score_true": score([true[n] for n in names], classes) if true else float("nan"),
        "s_per_slide": seconds_per_slide(results),
        "graded_per_slide": float(np.mean([len(r.grades) for r in results])),
    }


def score_time_curve(
    test: Path,
    assets: Path,
    out: Path,
    device: str,
    runs: Mapping[str, Path],
    true: Mapping[str, int] | None,
    exhaustive: CascadeConfig | None = None,
    ks: Sequence[int] = KS,
    tiles: Sequence[int] = TILES,
) -> pd.DataFrame:
    """Every point of the curve (module doc), one row each: ``method`` (cascade, exhaustive),
    ``budget`` (``k=K``, ``N tiles``, ``all tiles``) and :func:`curve_point`'s columns. The
    runs it makes go to ``out/<mode>``; ``runs`` holds the evaluation's own: ``cascade`` (at the
    shipped ``max_k``) and ``exhaustive`` (every tile); ``exhaustive``: the config whose
    decision classes the exhaustive points (None: as each run wrote them)."""
    shipped_k = load_config(assets).budget.max_k
    points: list[tuple[str, str, Path]] = []
    for k in ks:
        run = runs["cascade"] if k == shipped_k else out / f"cascade_k{k}"
        if k != shipped_k:
            run_mode(test, run, assets, Mode(f"cascade k={k}", max_k=k), device)
        points.append(("cascade", f"k={k}", run))
    for n in tiles:
        run = out / f"exhaustive_{n}_tiles"
        run_mode(test, run, assets, Mode(f"exhaustive, {n} tiles", exhaustive=True,
                                         sample_tiles=n), device)  # fmt: skip
        points.append(("exhaustive", f"{n} tiles", run))
    points.append(("exhaustive", "all tiles", runs["exhaustive"]))
    rows = [
        {"method": m, "budget": b,
         **curve_point(test, run, true, exhaustive if m == "exhaustive" else None)}
        for m, b, run in points
    ]  # fmt: skip
    return pd.DataFrame(rows)


def curve_markdown(curve: pd.DataFrame, slides: int) -> str:
    """The curve of a set of ``slides`` held-out slides as a Markdown table under a line saying
    what its columns are (scores against the written labels, the headline, and the true ones)."""
    caption = (
        f"Score and seconds per slide on {slides} held-out slides (`python -m training.evaluate "
        "--curve`). s/slide: the mean of each slide's measured seconds, start-up left out; for "
        "exhaustive tiling on a sample of tiles, the sample's measured seconds (not extrapolated)."
    )
    names = {
        "score": "score (written labels)",
        "score_true": "score (true labels)",
        "s_per_slide": "s/slide",
        "graded_per_slide": "graded/slide",
    }
    return f"{caption}\n\n{plain_markdown(curve.rename(columns=names))}"


def plot_curve(curve: pd.DataFrame, path: Path) -> Path:
    """Score against seconds per slide (log), a line per method, each point named by its
    budget; solid: written labels, dashed: true labels. Writes and returns ``path`` (PNG)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (method, rows) in enumerate(curve.groupby("method", sort=False)):
        colour = f"C{i}"
        ax.plot(rows["s_per_slide"], rows["score"], "o-", color=colour, label=method)
        if rows["score_true"].notna().any():
            ax.plot(rows["s_per_slide"], rows["score_true"], "x--", color=colour, alpha=0.6,
                    label=f"{method}, true labels")  # fmt: skip
        for row in rows.itertuples(index=False):
            ax.annotate(row.budget, (row.s_per_slide, row.score), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("seconds per slide (log; start-up left out)")
    ax.set_ylabel("weighted class score")
    ax.set_title("held-out score against time per slide")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
