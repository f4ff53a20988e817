"""Speed against exhaustive tiling, side by side on the same slides: ``make benchmark``.

``python -m training.bench.benchmark OUT [--sets heldout,real,canvas,real2] [--limits]
[--modes "NAME;NAME…"] [--assets assets] [--device cpu] [--workers N] [--publish DIR]
[--docs docs/benchmarks.md]``

Slide sets (generated once into ``OUT/<set>/data``, ``--workers`` slides at a time, kept
between runs):

* ``heldout``: 48 generated test-layout slides of the ``realistic`` cohort (seed 3001, as
  ``make evaluate``; no step of training or fitting saw them);
* ``real``: six slides at the real sizes, µm/pixel and annotation layouts of 10–13 gigapixel
  rows of ``training/data/reference/tissuenet/train_metadata.csv`` (``--layout`` at scale 1);
* ``canvas``: the 271,950 × 294,038 px row of the same file, generated the same way.

Modes, each a process of its own on each set (its peak memory: the highest ``VmHWM`` of
its process tree, :func:`training.process.high_water_kb`):

* ``cascade k=K`` (K = 1, 2, 4, 8, 16, 32): ``main.py`` with ``budget.max_k = K`` and no
  binding time limit; ``cascade k=32, no prefetch``: the same without the prefetch thread;
  ``cascade k=32, float32``: the same with the networks in float32 (``--precision``; the
  default, ``auto``, is bfloat16 on a CPU that computes it natively);
* ``cascade ~T s/slide``: ``main.py`` under a time limit of about T seconds per slide;
* ``detector only``: ``main.py`` with stage 2 off (``budget.stage2 = false``);
* ``exhaustive``: the same classifier on every tissue tile (:mod:`.exhaustive`), its decision
  fitted on 32 other generated ``realistic`` slides (seed 3005).

The parts: :mod:`.sets` (the slide sets), :mod:`.modes` (the modes and their asset sets),
:mod:`.runner` (running them, reading the runs), :mod:`.tables` (tables and plots),
:mod:`.limits` (the time-limit sweep), :mod:`.publish` (results folder and docs page).

Beside the shipped assets, modes of other asset sets (random weights: they time, they do not
grade), each against exhaustive tiling with the same classifier, timed on an even sample of each
slide's tiles and extrapolated to all of them (``--sample-tiles``):

* ``standard: …``: the standard preset (``training.pack.export --preset standard``) on the
  ``real`` and ``canvas`` sets;
* ``ViT-L/16 …`` and ``ViT-g/14 …``: the shipped detector with stage 2 on a UNI-size and an
  H-optimus-size timm ViT (:data:`stages.encoders.ENCODER_CARDS` ``uni``, ``h-optimus-0``;
  checkpoint files of random weights), at k = 8, 16 and 32 (``hotspots.min_score`` 0, so that
  k patches are graded), on ``real2``, the ``real`` set's first two slides.

The table's last column projects the 1,527-slide test set from each mode's median. A mode
that fails is named under the table (its log in ``OUT/<set>/runs``); the others are still run.
On a GPU (``--device cuda``) the networks run in float16 and the compute floor uses the GPU's
float16 matrix-multiply rate.

Per mode and set it prints and writes (``OUT/benchmark.csv``, ``OUT/slides.csv``,
``OUT/benchmark.md``): the weighted class score; seconds per slide (median, 95th percentile) as
the run's budget saw them, and the mean split by stage (decode, tissue, detector, hotspots,
classifier, decision); patches graded and megapixels decoded per slide; peak memory; the most
of its allotment a slide used; and the I/O and compute floors (:mod:`.floors`). Two plots:
``score_vs_time.png`` and ``time_vs_tissue.png``. ``--limits`` adds the score of 100 real-size
slides (the ``real`` set's six, listed over and over under other names) at time limits of 16 h,
1 h, 15 min and 5 min, and the tighter 2 min, 1 min and 30 s. ``--publish DIR`` copies the
table and plots there and ``--docs PAGE`` rewrites the generated table of that docs page
(:mod:`training.bench.publish`).
Nothing here is asserted.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import pandas as pd

from training.bench.limits import LIMIT_SLIDES, run_limits
from training.bench.modes import build_asset_set, modes
from training.bench.publish import publish, write_docs
from training.bench.runner import (
    asset_floors,
    fit_exhaustive_decision,
    run_mode,
    slide_rows,
    summarise,
)
from training.bench.sets import make_sets
from training.bench.tables import machine, markdown, plain_markdown, plot
from training.cli import command_parser, setup_logging
from training.process import REPO

log = logging.getLogger(__name__)


#: The competition's test set.
TEST_SET = 1527


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.bench.benchmark", __doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--sets", default="heldout,real,canvas,real2")
    parser.add_argument("--modes", default=None, help="mode names separated by ';' (default all)")
    parser.add_argument("--limits", action="store_true", help="also the time-limit sweep")
    parser.add_argument("--assets", type=Path, default=REPO / "assets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="slides generated at once")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the runs already measured in OUT; run the rest"
    )
    parser.add_argument("--publish", type=Path, default=None)
    parser.add_argument("--docs", type=Path, default=None, help="page whose table to rewrite")
    args = parser.parse_args(argv)
    setup_logging()
    pd.set_option("display.width", 250)
    args.out.mkdir(parents=True, exist_ok=True)

    chosen = modes()
    if args.modes:
        wanted = {name.strip() for name in args.modes.split(";")}
        unknown = wanted - {m.name for m in chosen}
        if unknown:
            parser.error(f"unknown modes {sorted(unknown)}")
        chosen = [m for m in chosen if m.name in wanted]
    wanted_sets = args.sets.split(",")
    sets = make_sets(
        args.out, [n for n in wanted_sets if any(n in m.sets for m in chosen)], args.workers
    )
    exhaustive = None
    if any(m.exhaustive and m.assets == "shipped" for m in chosen):
        exhaustive = fit_exhaustive_decision(args.out, args.assets, args.device, args.workers)
    asset_dirs = {"shipped": args.assets}
    floors_by: dict[str, dict] = {}
    for key in dict.fromkeys(m.assets for m in chosen):
        if key != "shipped":
            asset_dirs[key] = build_asset_set(key, args.out, args.assets)
        floors_by[key] = asset_floors(asset_dirs[key], args.device)
    floors = floors_by.get("shipped") or asset_floors(args.assets, args.device)
    log.info(
        "matmul %.1f GFLOP/s; %.2f GFLOP per detector window, %.3f GFLOP per patch",
        floors["gflops"],
        floors["flops"][0] / 1e9,
        floors["flops"][1] / 1e9,
    )
    table, per_slide, failed = [], [], []
    for set_name, data in sets.items():
        for mode in (m for m in chosen if set_name in m.sets):
            run = args.out / set_name / "runs" / mode.name.replace(" ", "_").replace("/", "")
            assets_dir = asset_dirs[mode.assets]
            try:
                measured = run_mode(data, run, assets_dir, mode, args.device, args.reuse)
            except RuntimeError as exc:  # the other modes are still measured
                log.error("%s", exc)
                failed.append(f"{mode.name} on {set_name}")
                continue
            fitted = exhaustive if mode.assets == "shipped" else None
            slides = slide_rows(data, run, mode, fitted, floors_by[mode.assets])
            per_slide.append(slides.assign(set=set_name, mode=mode.name))
            row = {"set": set_name, "mode": mode.name, "assets": mode.assets, "slides": len(slides)}
            table.append(row | summarise(slides, measured))
    table_frame = pd.DataFrame(table)
    exhaustive_s = (
        table_frame[table_frame["mode"].str.contains("exhaustive")]
        .set_index(["set", "assets"])["s_median"]
        .to_dict()
    )
    table_frame["speedup"] = [
        exhaustive_s.get((s, a), math.nan) / m
        for s, a, m in zip(
            table_frame["set"], table_frame["assets"], table_frame["s_median"], strict=True
        )
    ]
    table_frame["test_set_h"] = table_frame["s_median"] * TEST_SET / 3600
    slides_frame = pd.concat(per_slide, ignore_index=True)
    table_frame.to_csv(args.out / "benchmark.csv", index=False)
    slides_frame.to_csv(args.out / "slides.csv", index=False)
    header = (
        f"Machine: {machine(args.device)}. Matrix-multiply throughput "
        f"{floors['gflops']:.0f} GFLOP/s; "
        f"{floors['flops'][0] / 1e9:.2f} GFLOP per detector window, "
        f"{floors['flops'][1] / 1e9:.3f} GFLOP per classifier patch. Stage columns are mean "
        "seconds per slide; decode runs partly in the prefetch thread, overlapped."
    )
    text = markdown(table_frame, header)
    if failed:
        text += "\n\nModes that failed (their logs in OUT/<set>/runs): " + "; ".join(failed) + "."
    if args.limits:
        saved = args.out / "limits.csv"
        if args.reuse and saved.is_file():
            limits = pd.read_csv(saved)
        else:
            real = sets.get("real", args.out / "real" / "data")
            limits = run_limits(args.out, real, args.assets, args.device)
            limits.to_csv(saved, index=False)
        text += (
            f"\n\nTime limits, {LIMIT_SLIDES} real-size slides (the `real` set's six, listed "
            "over and over under other names):\n\n" + plain_markdown(limits)
        )
    (args.out / "benchmark.md").write_text(text + "\n")
    figures = plot(table_frame, slides_frame, args.out)
    print(text)
    if args.publish is not None:
        publish([args.out / "benchmark.md", args.out / "benchmark.csv", *figures], args.publish)
    if args.docs is not None:
        write_docs(args.docs, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
