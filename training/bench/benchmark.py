"""Speed against exhaustive tiling, side by side on the same slides: ``make benchmark``.

``python -m training.bench.benchmark OUT [--sets heldout,real,canvas,real2] [--limits]
[--modes "NAME;NAME…"] [--assets assets] [--device cpu] [--workers N] [--publish DIR]
[--readme README.md]``

Slide sets (generated once into ``OUT/<set>/data``, ``--workers`` slides at a time, kept
between runs):

* ``heldout``: 48 generated test-layout slides (seed 3001, as ``make evaluate``; no step of
  training or fitting saw them);
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
  fitted on 32 other generated slides (seed 3005).

Beside the shipped assets, modes of other asset sets (random weights: they time, they do not
grade), each against exhaustive tiling with the same classifier, timed on an even sample of each
slide's tiles and extrapolated to all of them (``--sample-tiles``):

* ``standard: …``: the standard preset (``training.pack.export --preset standard``) on the
  ``real`` and ``canvas`` sets;
* ``ViT-L/16 …`` and ``ViT-g/14 …``: the shipped detector with stage 2 on a UNI-size and an
  H-optimus-size timm ViT (:data:`stages.encoders.RECIPES` ``uni``, ``h-optimus-0``; checkpoint
  files of random weights), at k = 8, 16 and 32 (``hotspots.min_score`` 0, so that k patches
  are graded), on ``real2``, the ``real`` set's first two slides.

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
table and plots there and ``--readme`` replaces the README's benchmark block with the table.
Nothing here is asserted.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stages.cascade import SlideResult
from stages.config import CascadeConfig, load_assets, load_config, save_config
from stages.decision import decide_slide
from stages.metric import score
from stages.submission import classes_by_filename, classes_from_onehot, read_table
from training.bench.exhaustive import top_tiles
from training.bench.floors import compute_floor, decode_floor, matmul_gflops, network_flops
from training.cli import command_parser, setup_logging
from training.data.synthetic import layout_specs, sample_specs, write_dataset
from training.fit.decision import Evidence, fit_decision
from training.process import high_water_kb

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
LAYOUT = REPO / "training" / "data" / "reference" / "tissuenet"
#: Rows of the real metadata reproduced at scale 1: six typical 10–13 gigapixel slides of
#: classes 0–3, and one of the 271,950 × 294,038 px canvases.
REAL_ROWS = (
    "C12_B509_S12.tif",
    "C07_B023_S21.tif",
    "C01_B291_S01.tif",
    "C08_B030_S08.tif",
    "C06_B087_S21.tif",
    "C01_B256_S01.tif",
)
CANVAS_ROW = "C13_B301_S11.tif"
LAYOUT_SEED = 8
HELDOUT = (48, 3001)
FIT_SET = (32, 3005)
KS = (1, 2, 4, 8, 16, 32)
PER_SLIDE_LIMITS_S = (0.5, 1.0, 2.0, 4.0)
RUN_LIMITS_S = {
    "16 h": 16 * 3600.0,
    "1 h": 3600.0,
    "15 min": 900.0,
    "5 min": 300.0,
    "2 min": 120.0,
    "1 min": 60.0,
    "30 s": 30.0,
}
LIMIT_SLIDES = 100
#: The competition's test set.
TEST_SET = 1527
#: Slide sets of the shipped assets' modes, and of the other asset sets'.
SHIPPED_SETS = ("heldout", "real", "canvas")
STANDARD_SETS = ("real", "canvas")
FOUNDATION_SETS = ("real2",)
#: Asset sets besides the shipped ones: name → (preset, stage-2 recipe or None).
ASSET_SETS = {
    "standard": ("standard", None),
    "vit-l16": ("shipped", "uni"),
    "vit-g14": ("shipped", "h-optimus-0"),
}
FOUNDATION_MODELS = {"vit-l16": "ViT-L/16 (UNI size)", "vit-g14": "ViT-g/14 (H-optimus size)"}
#: Tiles a slide the foundation-size exhaustive modes grade (the rest extrapolated).
FOUNDATION_TILES = 8
#: Seconds of process start-up (imports, loading the networks) assumed when none is measured.
STARTUP_S = 5.0
STAGES = ("decode", "tissue", "detector", "hotspots", "classifier", "decision")
#: Columns of ``slides.csv``: one row per slide and mode (NaN where a slide has no result).
SLIDE_COLUMNS = [
    "slide", "label", "class", "gigapixels", "tissue_mm2", "seconds",
    *(f"{s}_s" for s in STAGES),
    "allotment_s", "patches", "windows", "mpx_decoded", "io_floor_s", "compute_floor_s", "failed",
]  # fmt: skip


@dataclass(frozen=True)
class Mode:
    """One way of grading: ``main.py`` with a budget override, or the exhaustive baseline."""

    name: str
    max_k: int = 32
    stage2: bool = True
    prefetch: bool = True
    precision: str = "auto"
    per_slide_s: float | None = None  # a binding time limit of about this much per slide
    exhaustive: bool = False
    assets: str = "shipped"  # "shipped" or a key of ASSET_SETS
    sets: tuple[str, ...] = SHIPPED_SETS  # the slide sets it runs on
    sample_tiles: int | None = None  # exhaustive: tiles graded a slide, the time extrapolated
    min_score: float | None = None  # hotspots.min_score override


def modes() -> list[Mode]:
    """Every mode of the benchmark, in table order."""
    chosen = [
        *(Mode(f"cascade k={k}", max_k=k) for k in KS),
        Mode("cascade k=32, no prefetch", prefetch=False),
        Mode("cascade k=32, float32", precision="float32"),
        *(Mode(f"cascade ~{t:g} s/slide", per_slide_s=t) for t in PER_SLIDE_LIMITS_S),
        Mode("detector only", stage2=False),
        Mode("exhaustive", exhaustive=True),
        Mode("standard: cascade k=32", assets="standard", sets=STANDARD_SETS),
        Mode(
            "standard: exhaustive (64 tiles a slide, extrapolated)",
            exhaustive=True,
            assets="standard",
            sets=STANDARD_SETS,
            sample_tiles=64,
        ),
    ]
    for key, label in FOUNDATION_MODELS.items():
        found = {"assets": key, "sets": FOUNDATION_SETS}
        chosen += [Mode(f"{label}: cascade k={k}", max_k=k, min_score=0.0, **found) for k in KS[3:]]
        chosen.append(
            Mode(
                f"{label}: exhaustive ({FOUNDATION_TILES} tiles a slide, extrapolated)",
                exhaustive=True,
                sample_tiles=FOUNDATION_TILES,
                **found,
            )
        )
    return chosen  # fmt: skip


def build_asset_set(name: str, out: Path, shipped: Path) -> Path:
    """The assets of :data:`ASSET_SETS` ``name`` under ``out/assets/<name>`` (built once, with
    random weights): the standard preset; or the shipped assets with stage 2 on a recipe's timm
    encoder, from a checkpoint of random weights written beside them."""
    from training.pack.export import PRESETS, encoder_config, init_assets, write_assets

    target = out / "assets" / name
    if (target / "config.json").is_file():
        return target
    preset, recipe = ASSET_SETS[name]
    if recipe is None:
        return init_assets(target, PRESETS[preset], note=f"{preset} preset, random weights")
    from stages.classifier import PatchClassifier
    from stages.encoders import RECIPES
    from stages.nets import save_weights

    base = load_assets(shipped, torch.device("cpu"))
    card = RECIPES[recipe]
    torch.manual_seed(0)
    classifier = PatchClassifier(
        replace(base.config.classifier, encoder=card.model, source="timm",
                encoder_kwargs=card.kwargs, pool=card.pool, patch=card.size)
    )  # fmt: skip
    checkpoint = out / "assets" / f"{name}-random.safetensors"
    save_weights(classifier.encoder, checkpoint)
    stage2 = encoder_config(base.config.classifier, recipe, checkpoint)
    config = replace(
        base.config,
        classifier=stage2,
        note=f"shipped detector; stage 2 on {recipe}'s timm encoder with random weights",
    )
    return write_assets(target, config, base.detector, classifier, checkpoint)


# -- slide sets ---------------------------------------------------------------------------


def make_sets(out: Path, names: list[str], workers: int = 1) -> dict[str, Path]:
    """Generate (or reuse) the named slide sets (``fit``: the exhaustive mode's decision-fit
    slides), ``workers`` slides at a time; ``name → data folder``."""
    sets = {}
    rows = pd.read_csv(LAYOUT / "train_metadata.csv").set_index("filename")
    layout = rows.loc[[*REAL_ROWS, CANVAS_ROW]].reset_index()
    specs = layout_specs(layout, LAYOUT / "train_annotations.csv", seed=LAYOUT_SEED)
    chosen = {
        "heldout": lambda: sample_specs(*HELDOUT),
        "fit": lambda: sample_specs(*FIT_SET),
        "real": lambda: specs[: len(REAL_ROWS)],
        "canvas": lambda: specs[len(REAL_ROWS) :],
    }
    for name in names:
        data = out / name / "data"
        sets[name] = data
        if (data / "submission_format.csv").is_file():
            continue
        start = time.monotonic()
        if name == "real2":
            repeat_set(make_sets(out, ["real"], workers)["real"], data, 2)
        elif name in chosen:
            write_dataset(data, chosen[name](), "test", resume=True, workers=workers)
        else:
            raise ValueError(f"unknown slide set {name!r}")
        log.info("generated set %s in %.0f s", name, time.monotonic() - start)
    return sets


def repeat_set(source: Path, target: Path, n: int) -> Path:
    """A test-layout folder of ``n`` slides that are ``source``'s, listed over and over under
    other names (symbolic links), with its CSVs."""
    if (target / "submission_format.csv").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    tables = {name: pd.read_csv(source / name) for name in ("test_metadata.csv", "test_labels.csv")}
    names = list(tables["test_labels.csv"]["filename"])
    renamed = [f"r{i:03d}_{names[i % len(names)]}" for i in range(n)]
    for new, old in zip(renamed, (names[i % len(names)] for i in range(n)), strict=True):
        (target / new).symlink_to((source / old).resolve())
    for csv, table in tables.items():
        table = table.set_index("filename").loc[[r.split("_", 1)[1] for r in renamed]]
        table.index = renamed
        table.rename_axis("filename").reset_index().to_csv(target / csv, index=False)
    labels = pd.read_csv(target / "test_labels.csv")
    labels[["0", "1", "2", "3"]] = 0
    labels.to_csv(target / "submission_format.csv", index=False)
    return target


# -- running the modes --------------------------------------------------------------------


def run_main(
    data: Path,
    out: Path,
    assets: Path,
    device: str,
    *extra: str,
    module: str | None = None,
) -> tuple[int, float, float]:
    """Run ``main.py`` (or ``python -m module``) on ``data`` in its own process, writing
    ``out/submission.csv`` and ``out/maps``; returns (exit status, wall seconds, peak RSS MB).

    The peak is the highest high-water mark (``VmHWM``) of the process and its descendants
    (:func:`training.process.high_water_kb`), read every 50 ms while it runs: ``wait4``'s
    ``ru_maxrss`` would also count this (large) parent's memory at the fork."""
    out.mkdir(parents=True, exist_ok=True)
    if module is None:
        command = [sys.executable, str(REPO / "main.py"), "--data", str(data)]
        command += ["--out", str(out / "submission.csv"), "--save-heatmaps", str(out / "maps")]
    else:
        command = [sys.executable, "-m", module, str(data), str(out)]
    command += ["--assets", str(assets), "--device", device, *extra]
    start = time.monotonic()
    peak_kb = 0
    with open(out / "log.txt", "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
        while process.poll() is None:
            peak_kb = max(peak_kb, high_water_kb(process.pid))
            time.sleep(0.05)
    return process.returncode, time.monotonic() - start, peak_kb / 1024


def mode_assets(assets: Path, mode: Mode, out: Path) -> Path:
    """``assets`` with the mode's budget in its config (weights linked, not copied)."""
    config = load_config(assets)
    budget = replace(
        config.budget,
        max_k=mode.max_k,
        min_k=min(config.budget.min_k, mode.max_k),
        stage2=mode.stage2,
    )
    hotspots = config.hotspots
    if mode.min_score is not None:
        hotspots = replace(hotspots, min_score=mode.min_score)
    if budget == config.budget and hotspots == config.hotspots:
        return assets
    target = out / "assets"
    target.mkdir(parents=True, exist_ok=True)
    names = (config.detector.weights, config.classifier.weights, config.classifier.encoder_weights)
    for weights in filter(None, names):
        link = target / weights
        link.unlink(missing_ok=True)
        link.symlink_to((assets / weights).resolve())
    save_config(replace(config, budget=budget, hotspots=hotspots), target)
    load_config(target)  # the variant must validate as the runtime would
    return target


def startup_s(runs: Path) -> float:
    """Seconds ``main.py`` took to start (imports, networks loaded and frozen) in the set's
    untimed ``cascade k=32`` run under ``runs``, as its log says; :data:`STARTUP_S` when there
    is none (that mode not chosen)."""
    log_file = runs / "cascade_k=32" / "log.txt"
    found = (
        re.search(r"start-up (\d+\.\d+) s", log_file.read_text()) if log_file.is_file() else None
    )
    if found is None:
        log.warning("no start-up measured in %s: assuming %.0f s", log_file, STARTUP_S)
        return STARTUP_S
    return float(found[1])


def run_mode(
    data: Path, out: Path, assets: Path, mode: Mode, device: str, reuse: bool = False
) -> dict:
    """One mode on one set; the run's wall time and peak memory, also saved as
    ``out/measured.json`` (with ``reuse``, a run that has one is not run again)."""
    saved = out / "measured.json"
    if reuse and saved.is_file():
        return json.loads(saved.read_text())
    shutil.rmtree(out, ignore_errors=True)
    n = len(read_table(data / "submission_format.csv"))
    extra: list[str] = []
    if mode.exhaustive:
        if mode.sample_tiles is not None:
            extra += ["--sample-tiles", str(mode.sample_tiles)]
        code, wall, peak = run_main(
            data, out, assets, device, *extra, module="training.bench.exhaustive"
        )
    else:
        if not mode.prefetch:
            extra.append("--no-prefetch")
        extra += ["--precision", mode.precision]
        if mode.per_slide_s is not None:  # start-up and the runtime's 10 % reserve on top
            limit = (startup_s(out.parent) + n * mode.per_slide_s) / 0.9
            extra += ["--time-limit", f"{limit:.1f}"]
        code, wall, peak = run_main(data, out, mode_assets(assets, mode, out), device, *extra)
    if code != 0:
        raise RuntimeError(f"{mode.name} on {data} exited with {code}; see {out / 'log.txt'}")
    log.info("%s on %s: %.0f s, peak %.0f MB", mode.name, data.parent.name, wall, peak)
    measured = {"wall_s": wall, "peak_mb": peak}
    saved.write_text(json.dumps(measured) + "\n")
    return measured


def fit_exhaustive_decision(
    out: Path, assets: Path, device: str, workers: int = 1
) -> CascadeConfig:
    """The shipped config with its decision refitted for the exhaustive mode: the exhaustive
    run's top tiles on ``FIT_SET`` slides (never in any benchmark set) as the evidence."""
    data = make_sets(out, ["fit"], workers)["fit"]
    run = out / "fit" / "exhaustive"
    if not (run / "submission.csv").is_file():
        run_mode(data, run, assets, Mode("exhaustive", exhaustive=True), device)
    config = load_config(assets)
    truth = classes_by_filename(read_table(data / "test_labels.csv"))
    evidence = []
    for name, label in truth.items():
        result = SlideResult.load(run / "maps" / f"{Path(name).stem}.npz")
        top = top_tiles(result.grades, config.budget.max_k)
        evidence.append(Evidence(name, top.astype(np.float64), np.zeros((0, 4)), label))
    return replace(config, decision=fit_decision(evidence, config.decision))


# -- reading the runs ---------------------------------------------------------------------


def slide_rows(
    data: Path, run: Path, mode: Mode, exhaustive: CascadeConfig | None, floors: dict
) -> pd.DataFrame:
    """One row per slide of a finished run: class, label, seconds, work and floors."""
    truth = classes_by_filename(read_table(data / "test_labels.csv"))
    written = classes_by_filename(read_table(run / "submission.csv"))
    metadata = pd.read_csv(data / "test_metadata.csv").set_index("filename")
    assets = floors["assets"]
    rows = []
    for name, label in truth.items():
        saved = run / "maps" / f"{Path(name).stem}.npz"
        if not (saved.is_file() and saved.with_suffix(".json").is_file()):
            # abandoned at the time limit, never started, or its saving cut short: a fallback row
            rows.append({"slide": name, "label": label, "class": written[name], "failed": True})
            continue
        result = SlideResult.load(saved)
        cls = written[name]
        if mode.exhaustive and exhaustive is not None and len(result.grades):
            top = top_tiles(result.grades, exhaustive.budget.max_k)
            cls = decide_slide(top, [], exhaustive.decision).cls
        seconds = result.seconds
        windows = result.heatmap.windows if result.heatmap is not None else 0
        mpp = float(metadata.at[name, "resolution"])
        tissue_mm2 = 0.0
        if result.tissue is not None:
            sx, sy = result.tissue_scale
            tissue_mm2 = float(result.tissue.sum()) * sx * sy * mpp**2 / 1e6
        if mode.exhaustive:
            io_floor = seconds.get("decode", 0.0)  # it reads nothing but the tiles it grades
        else:
            io_floor = decode_floor(result, data / name, mpp, assets)
        rows.append(
            {
                "slide": name,
                "label": label,
                "class": cls,
                "gigapixels": metadata.at[name, "width"] * metadata.at[name, "height"] / 1e9,
                "tissue_mm2": tissue_mm2,
                "seconds": seconds.get("slide", seconds.get("total", 0.0)),
                **{f"{s}_s": seconds.get(s, 0.0) for s in STAGES},
                "allotment_s": seconds.get("allotment", math.inf),
                "patches": len(result.grades),
                "windows": windows,
                "mpx_decoded": result.decoded_mpx,
                "io_floor_s": io_floor,
                "compute_floor_s": compute_floor(
                    windows, len(result.grades), floors["flops"], floors["gflops"]
                ),
                "failed": result.source == "fallback",
            }
        )
    return pd.DataFrame(rows, columns=SLIDE_COLUMNS).astype({"failed": bool})


def summarise(slides: pd.DataFrame, run: dict) -> dict:
    """One table row from a run's slide rows."""
    used = (slides["seconds"] / slides["allotment_s"]).max()
    return {
        "score": score(slides["label"].to_numpy(), slides["class"].to_numpy()),
        "s_median": slides["seconds"].median(),
        "s_p95": slides["seconds"].quantile(0.95),
        **{f"{s}_s": slides[f"{s}_s"].mean() for s in STAGES},
        "patches": slides["patches"].mean(),
        "mpx_decoded": slides["mpx_decoded"].mean(),
        "peak_mb": run["peak_mb"],
        "io_floor_s": slides["io_floor_s"].median(),
        "compute_floor_s": slides["compute_floor_s"].median(),
        "worst_of_allotment": used,
        "failed": int(slides["failed"].sum()),
    }


# -- the report ---------------------------------------------------------------------------


def machine(device: str = "cpu") -> str:
    """One line describing this machine and the ``device`` the runs used."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    used = "no GPU used"
    if device.startswith("cuda"):
        used = f"{torch.cuda.get_device_name(torch.device(device))} used"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {memory:.0f} GB memory, {used}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    )


def markdown(table: pd.DataFrame, header: str) -> str:
    """The results table as Markdown, one row per set and mode."""
    lines = [
        header,
        "",
        "| set | mode | score | s/slide median | p95 | decode | tissue | detector | hotspots "
        "| classifier | decision | patches | Mpx decoded | peak MB | I/O floor s | compute "
        "floor s | × faster than exhaustive | most of its allotment a slide used | fallback rows "
        "| 1,527 slides, h |",
        "|" + "---|" * 20,
    ]
    for row in table.itertuples(index=False):
        used = f"{100 * row.worst_of_allotment:.0f} %" if row.worst_of_allotment >= 0.01 else "<1 %"
        lines.append(
            f"| {row.set} | {row.mode} | {row.score:.4f} | {row.s_median:.2f} | {row.s_p95:.2f} "
            + "".join(f"| {getattr(row, f'{s}_s'):.2f} " for s in STAGES)
            + f"| {row.patches:.1f} | {row.mpx_decoded:.1f} | {row.peak_mb:.0f} "
            f"| {row.io_floor_s:.2f} | {row.compute_floor_s:.3f} | {row.speedup:.1f} "
            f"| {used} | {row.failed} | {row.test_set_h:.2f} |"
        )
    return "\n".join(lines)


def plain_markdown(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table, floats to 4 significant digits."""
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in frame.values]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * frame.shape[1]]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def plot(table: pd.DataFrame, slides: pd.DataFrame, out: Path) -> list[Path]:
    """``score_vs_time.png`` (every mode, per set) and ``time_vs_tissue.png`` (per slide)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    sets = list(dict.fromkeys(table["set"]))
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.2), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        rows = table[table["set"] == name]
        for row in rows.itertuples(index=False):
            marker = "s" if row.mode == "exhaustive" else "^" if "detector" in row.mode else "o"
            ax.scatter(row.s_median, row.score, marker=marker, s=40)
            ax.annotate(row.mode, (row.s_median, row.score), fontsize=7, xytext=(4, 2),
                        textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("median seconds per slide (log)")
        ax.set_ylabel("weighted class score")
        ax.set_title(f"{name} ({int(rows['slides'].iloc[0])} slides)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "score_vs_time.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for mode in ("cascade k=32", "detector only", "exhaustive"):
        rows = slides[(slides["mode"] == mode) & (slides["tissue_mm2"] > 0)]
        ax.scatter(rows["tissue_mm2"], rows["seconds"], label=mode, s=18, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tissue area, mm² (log)")
    ax.set_ylabel("seconds per slide (log)")
    ax.set_title("time against tissue area, every slide of every set")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    paths.append(out / "time_vs_tissue.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def run_limits(out: Path, real: Path, assets: Path, device: str) -> pd.DataFrame:
    """The score of ``LIMIT_SLIDES`` real-size slides under each of ``RUN_LIMITS_S``."""
    data = repeat_set(real, out / "limits" / "data", LIMIT_SLIDES)
    labels = read_table(data / "test_labels.csv")
    y_true = classes_from_onehot(labels)
    rows = []
    for name, limit in RUN_LIMITS_S.items():
        run = out / "limits" / name.replace(" ", "")
        shutil.rmtree(run, ignore_errors=True)  # an earlier run's maps are not this run's
        code, wall, peak = run_main(data, run, assets, device, "--time-limit", str(limit))
        if code != 0:
            raise RuntimeError(f"limit {name}: main.py exited with {code}")
        y_pred = classes_from_onehot(read_table(run / "submission.csv"))
        summaries = [json.loads(p.read_text()) for p in sorted((run / "maps").glob("*.json"))]
        used = [s["seconds"]["slide"] / s["seconds"]["allotment"] for s in summaries]
        rows.append(
            {
                "time limit": name,
                "slides": len(y_true),
                "graded": len(summaries),
                "score": score(y_true, y_pred),
                "wall_s": wall,
                "patches per slide": np.mean([s["graded"] for s in summaries]),
                "coarser detector page": sum(
                    s["pages"].get("detector", -1) > s["pages"].get("detector_base", 99)
                    for s in summaries
                ),
                "no detector pass": sum("detector" not in s["pages"] for s in summaries),
                "most of its allotment a slide used, %": 100 * max(used, default=0.0),
                "peak_mb": peak,
            }
        )
        log.info("limit %s: %s", name, rows[-1])
    return pd.DataFrame(rows)


def replace_block(readme: Path, text: str, tag: str = "benchmark") -> None:
    """Put ``text`` between the README's ``<!-- tag:start -->`` and ``<!-- tag:end -->``."""
    content = readme.read_text()
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    if start not in content or end not in content:
        raise ValueError(f"{readme} has no {start} … {end} block")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def asset_floors(assets_dir: Path, device: str = "cpu") -> dict:
    """What the floors need of one asset set: its config (the networks dropped once their
    FLOPs per window and per patch are counted) and ``device``'s matrix-multiply rate."""
    assets = load_assets(assets_dir, torch.device("cpu"))
    flops = network_flops(assets)
    light = replace(assets, detector=torch.nn.Identity(), classifier=torch.nn.Identity())
    return {"assets": light, "flops": flops, "gflops": _matmul_rate(device)}


@functools.cache
def _matmul_rate(device: str) -> float:
    """:func:`matmul_gflops` on ``device`` (a GPU: 8192², its float16 rate), measured once per
    process."""
    return matmul_gflops(8192, device=device) if device.startswith("cuda") else matmul_gflops()


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
    parser.add_argument("--readme", type=Path, default=None)
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
        args.publish.mkdir(parents=True, exist_ok=True)
        for path in [args.out / "benchmark.md", args.out / "benchmark.csv", *figures]:
            shutil.copy(path, args.publish / path.name)
    if args.readme is not None:
        replace_block(args.readme, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
