"""Training at the real data's scale, measured: ``make train-scale``.

``python -m training.bench.train_scale OUT [--counts 32 128 512] [--steps 300] [--publish DIR]``

For training sets of growing size (``--counts`` small generated slides, one cache whose first
slides are the smaller sets), plus slides generated at the real sizes of rows of the real
metadata (two typical 10–13 gigapixel slides and a 271,950 × 294,038 px canvas, from
``training/data/reference/tissuenet``), it measures and prints:

* cache bytes per slide and cache seconds per slide (one process, this machine);
* the peak RSS and the most open file descriptors of the detector and the classifier training
  processes (``python -m training.fit.{detector,classifier}`` for ``--steps`` steps, their loader
  workers included), sampled every 0.5 s, ``--repeats`` runs per count (one run's peak moves by
  tens of MB from run to run, as much as hundreds of slides would; the detector's per-epoch
  hotspot recall runs on the same number of validation slides at every count,
  ``--recall-slides``, so that its fixed-size subset does not pass for growth);
* the memory the training data itself holds per slide in one process (the cache's index tables,
  both stages' datasets, a few hundred items read), traced by ``tracemalloc``: what grows with
  the slides, without the run-to-run noise of a whole process's peak;
* loader samples/s of one worker for each stage (a training item: read from the cache and
  augmented per sample; the batch's photometric augmentation is timed apart, per sample on the
  CPU);
* the extrapolation to the 1,015-slide real set: 715 slides like the real-size ones and 300
  canvases (disk, cache time on one core), and the peak RSS from a line fitted over every run.

Everything is generated under ``OUT`` and reused by a rerun.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

from training.bench.sets import CANVAS_ROW, LAYOUT, LAYOUT_SEED, REAL_ROWS
from training.cli import command_parser, setup_logging
from training.data.augment import BatchAugment
from training.data.cache import Cache, CacheConfig, build_cache, write_index
from training.data.synthetic import SynthConfig, layout_specs, sample_specs, write_dataset
from training.fit import detector
from training.fit.patches import PatchSet
from training.presets import load_preset
from training.process import high_water_kb, resident_kb

log = logging.getLogger(__name__)

SMALL_SEED = 4100
#: Small slides: 2,500–4,000 px at page 0, so that 512 of them generate in minutes.
SMALL_SIZES = (2500, 4000)
#: The real rows reproduced at their real size: two typical slides and a canvas.
REAL = (*REAL_ROWS[:2], CANVAS_ROW)
#: The real training set: 1,015 slides, of which 300 are MIRAX-derived canvases.
REAL_SET, REAL_CANVASES = 1015, 300
#: Bounds of issue 15: memory per slide beyond a fixed base, open files at any slide count.
BOUND_KB_PER_SLIDE, BOUND_FDS = 64, 256
#: Validation slides of the detector's per-epoch hotspot recall in the runs over ``--counts``: as
#: many as the smallest set's validation fold has with lesions (3 of 32 slides), so that every
#: count measures the same fixed-size subset (its memory, the peak of a heatmap pass over
#: each, is part of the fixed base: a run caps it at ``--recall-slides``, 16 by default, at any
#: slide count); the real-size run uses the trainer's default.
RECALL_SLIDES = 3


@dataclass(frozen=True)
class ProcessPeak:
    """What a training process tree reached: ``rss_mb``, the peak RSS of its largest process
    (MB, ``VmHWM`` read at every sample, see :func:`high_water_kb`); ``pss_mb``, the tree's
    proportional set size at its highest sample (loader workers share the training process's
    pages; PSS counts each page once); ``anon_mb`` and ``file_mb``, the largest ``RssAnon``
    (its own memory) and ``RssFile`` (mapped file pages, reclaimable) one process of the tree
    showed at a sample (:func:`resident_kb`); ``fds``, the most file descriptors one process of
    the tree held; and its seconds."""

    rss_mb: float
    pss_mb: float
    fds: int
    seconds: float
    anon_mb: float
    file_mb: float


def watch(command: list[str], log_path: Path, interval: float = 0.5) -> ProcessPeak:
    """Run ``command`` (output to ``log_path``) and sample its process tree until it ends;
    RuntimeError naming the log when it fails."""
    started = time.monotonic()
    with log_path.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        pss, fds, peak_kb, anon_kb, file_kb = 0, 0, 0, 0, 0
        while True:
            peak_kb = max(peak_kb, high_water_kb(proc.pid))
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                tree = [root, *root.children(recursive=True)]
                pss = max(pss, sum(p.memory_full_info().pss for p in tree))
                fds = max(fds, *(p.num_fds() for p in tree))
                for p in tree:
                    split = resident_kb(p.pid)
                    anon_kb = max(anon_kb, split.get("RssAnon", 0))
                    file_kb = max(file_kb, split.get("RssFile", 0))
            except psutil.Error:
                pass  # a process ended between the listing and the reading
            time.sleep(interval)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}); see {log_path}")
    elapsed = time.monotonic() - started
    return ProcessPeak(peak_kb / 1e3, pss / 1e6, fds, elapsed, anon_kb / 1e3, file_kb / 1e3)


def subset_cache(full: Path, target: Path, filenames: list[str]) -> Path:
    """A cache holding ``filenames`` of ``full`` (their slide folders linked, not copied)."""
    if (target / "slides.csv").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(full / "cache.json", target / "cache.json")
    rows = pd.read_csv(full / "slides.csv").set_index("filename").loc[filenames]
    for stem in rows["stem"]:
        (target / stem).symlink_to((full / stem).resolve())
    write_index(target)
    return target


def loader_rates(cache_root: Path, preset: str, n: int = 200) -> dict[str, float]:
    """Training items per second of one loader worker (this process, one thread) for each
    stage, and the batch augmentation's samples per second on this CPU."""
    torch.set_num_threads(1)
    cascade = load_preset(preset).cascade
    cache = Cache.open(cache_root)
    files = list(cache.slides["filename"])
    windows = detector.WindowSet(cache, files, cascade.detector, n, 0.7, True, 0)
    patches = PatchSet(cache, cache.patches, cascade.classifier, n, True, 0)
    rates = {}
    for name, data in (("detector", windows), ("classifier", patches)):
        data[0]  # warm: imports, first maps
        start = time.perf_counter()
        items = [data[i][0] for i in range(n)]
        rates[f"{name}_items_s"] = n / (time.perf_counter() - start)
        batch = torch.stack(items[:32])
        augment = BatchAugment(train=True)
        augment(batch)
        start = time.perf_counter()
        for _ in range(5):
            augment(batch)
        rates[f"{name}_batch_aug_items_s"] = 5 * len(batch) / (time.perf_counter() - start)
    torch.set_num_threads(os.cpu_count() or 1)
    return rates


def data_memory(cache_root: Path, preset: str, items: int = 200) -> float:
    """Bytes per slide that opening the cache at ``cache_root`` and building both stages'
    training and validation datasets over all its slides hold, ``items`` items of each read
    (``tracemalloc``, this process)."""
    cascade = load_preset(preset).cascade
    tracemalloc.start()
    try:
        cache = Cache.open(cache_root)
        files = list(cache.slides["filename"])
        kept = [
            detector.WindowSet(cache, files, cascade.detector, items, 0.7, True, 0),
            detector.WindowSet(cache, files, cascade.detector, 0, 0.7, False, 1),
            PatchSet(cache, cache.patches, cascade.classifier, items, True, 0),
        ]
        for data in kept:
            for i in range(min(items, len(data))):
                data[i]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return held / len(files)


def train_peaks(
    cache_root: Path, work: Path, preset: str, steps: int, workers: int, recall_slides: int
) -> dict[str, ProcessPeak]:
    """Peak RSS and open files of a detector and a classifier run of ``steps`` steps each (one
    epoch, one validation pass) with ``workers`` loader processes; the detector's hotspot recall
    on ``recall_slides`` validation slides."""
    peaks = {}
    for name, batch in (("detector", 8), ("classifier", 32)):
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        command = [
            sys.executable, "-m", f"training.fit.{name}", str(cache_root), str(out),
            "--preset", preset, "--epochs", "1", "--samples", str(steps * batch),
            "--batch-size", str(batch), "--workers", str(workers), "--accelerator", "cpu",
        ]  # fmt: skip
        if name == "detector":
            command += ["--recall-slides", str(recall_slides)]
        work.mkdir(parents=True, exist_ok=True)
        peaks[name] = watch(command, work / f"{name}.log")
    return peaks


def cache_figures(cache_root: Path) -> dict[str, float]:
    """Bytes and seconds per slide of a built cache (each slide's, as it was cached)."""
    slides = pd.read_csv(cache_root / "slides.csv")
    return {
        "slides": len(slides),
        "bytes_median": float(slides["bytes"].median()),
        "bytes_max": float(slides["bytes"].max()),
        "seconds_per_slide": float(slides["seconds"].mean()),
    }


def run(
    out: Path,
    counts: list[int],
    steps: int,
    workers: int,
    preset: str,
    repeats: int = 2,
    recall_slides: int = RECALL_SLIDES,
) -> dict:
    """Every measurement of the module doc; returns them (also written to ``OUT/scale.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    cascade = load_preset(preset).cascade
    config = CacheConfig(square_patches=12, benign_patches=32)
    results: dict = {"counts": {}, "real": {}}

    small = out / "small" / "data"  # resumed: the slides already written are kept
    specs = sample_specs(max(counts), SMALL_SEED, SynthConfig(size_range=SMALL_SIZES))
    write_dataset(small, specs, "train", resume=True)
    build_cache(small, out / "small" / "cache", cascade, config)
    names = list(pd.read_csv(small / "train_metadata.csv")["filename"])
    for count in sorted(counts):
        root = subset_cache(out / "small" / "cache", out / f"cache-{count}", names[:count])
        figures = cache_figures(root)
        figures |= loader_rates(root, preset)
        figures["data_bytes_per_slide"] = data_memory(root, preset)
        runs = [
            train_peaks(root, out / f"train-{count}-{r}", preset, steps, workers, recall_slides)
            for r in range(repeats)
        ]
        for stage in ("detector", "classifier"):
            for f in ("rss_mb", "pss_mb", "anon_mb", "file_mb", "fds", "seconds"):
                values = [getattr(peaks[stage], f) for peaks in runs]
                figures[f"{stage}_{f}"] = max(values) if f == "fds" else float(np.mean(values))
                figures[f"{stage}_{f}_runs"] = values
        results["counts"][count] = figures
        log.info("%d slides: %s", count, figures)

    real = out / "real" / "data"
    if not (real / "train_metadata.csv").is_file():
        rows = pd.read_csv(LAYOUT / "train_metadata.csv").set_index("filename")
        layout = rows.loc[list(REAL)].reset_index()
        specs = layout_specs(layout, LAYOUT / "train_annotations.csv", seed=LAYOUT_SEED)
        write_dataset(real, specs, "train", resume=True)
    real_cache = out / "real" / "cache"
    build_cache(real, real_cache, cascade, config, folds=2)
    slides = pd.read_csv(real_cache / "slides.csv").set_index("filename")
    for name in REAL:
        row = slides.loc[name]
        results["real"][name] = {
            "gigapixels": _gigapixels(real, name),
            "fragments": int(row["fragments"]),
            "bytes": float(row["bytes"]),
            "seconds": float(row["seconds"]),
        }
    peaks = train_peaks(
        real_cache, out / "train-real", preset, steps, workers, detector.RECALL_SLIDES
    )
    results["real_train"] = {k: vars(v) for k, v in peaks.items()}
    results["extrapolation"] = extrapolate(results)
    (out / "scale.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def _gigapixels(data: Path, name: str) -> float:
    meta = pd.read_csv(data / "train_metadata.csv").set_index("filename").loc[name]
    return float(meta["width"]) * float(meta["height"]) / 1e9


def extrapolate(results: dict) -> dict[str, float]:
    """The 1,015-slide real set from the measurements: disk and cache time (715 typical slides,
    300 canvases), the per-slide memory slope and peak RSS of each trainer, the most fds."""
    real = results["real"]
    typical = [v for k, v in real.items() if k != CANVAS_ROW]
    canvas = real[CANVAS_ROW]
    n_typical = REAL_SET - REAL_CANVASES
    disk = n_typical * np.median([v["bytes"] for v in typical]) + REAL_CANVASES * canvas["bytes"]
    seconds = (
        n_typical * np.median([v["seconds"] for v in typical]) + REAL_CANVASES * canvas["seconds"]
    )
    counts = sorted(results["counts"])
    out = {"disk_gb": disk / 1e9, "cache_hours_one_core": seconds / 3600}
    for stage in ("detector", "classifier"):
        points = [(c, rss) for c in counts for rss in results["counts"][c][f"{stage}_rss_mb_runs"]]
        slope, base = np.polyfit(*zip(*points, strict=True), 1)
        out[f"{stage}_kb_per_slide"] = slope * 1000
        out[f"{stage}_rss_mb_at_{REAL_SET}"] = base + slope * REAL_SET
        anon = [(c, a) for c in counts for a in results["counts"][c][f"{stage}_anon_mb_runs"]]
        out[f"{stage}_anon_kb_per_slide"] = np.polyfit(*zip(*anon, strict=True), 1)[0] * 1000
        fds = [results["counts"][c][f"{stage}_fds"] for c in counts]
        out[f"{stage}_fds_max"] = max(fds + [results["real_train"][stage]["fds"]])
    return out


def report(results: dict) -> str:
    """The measurements as Markdown tables."""
    lines = [
        "| slides | cache MB/slide (median) | cache s/slide | data KB/slide (traced) | "
        "detector RSS MB, each run (tree PSS, mean) | detector anon / file MB | detector fds | "
        "classifier RSS MB, each run (tree PSS, mean) | classifier anon / file MB | "
        "classifier fds | detector items/s/worker "
        "| classifier items/s/worker | batch aug items/s (CPU, det / cls) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def runs(f: dict, stage: str) -> str:
        each = " / ".join(f"{v:.0f}" for v in f[f"{stage}_rss_mb_runs"])
        split = f"{f[f'{stage}_anon_mb']:.0f} / {f[f'{stage}_file_mb']:.0f}"
        return f"{each} ({f[f'{stage}_pss_mb']:.0f}) | {split}"

    for count, f in sorted(results["counts"].items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {count} | {f['bytes_median'] / 1e6:.2f} | {f['seconds_per_slide']:.2f} | "
            f"{f['data_bytes_per_slide'] / 1e3:.1f} | "
            f"{runs(f, 'detector')} | {f['detector_fds']} | "
            f"{runs(f, 'classifier')} | "
            f"{f['classifier_fds']} | {f['detector_items_s']:.0f} | "
            f"{f['classifier_items_s']:.0f} | {f['detector_batch_aug_items_s']:.0f} / "
            f"{f['classifier_batch_aug_items_s']:.0f} |"
        )
    lines += [
        "",
        "| real-size slide | gigapixels | fragments | cache MB | cache s |",
        "|---|---|---|---|---|",
    ]
    for name, f in results["real"].items():
        lines.append(
            f"| {name} | {f['gigapixels']:.1f} | {f['fragments']} | {f['bytes'] / 1e6:.0f} | "
            f"{f['seconds']:.1f} |"
        )
    train = results["real_train"]
    lines.append(
        f"\ntraining on the real-size slides: detector RSS {train['detector']['rss_mb']:.0f} MB "
        f"(tree PSS {train['detector']['pss_mb']:.0f} MB), {train['detector']['fds']} fds; "
        f"classifier RSS {train['classifier']['rss_mb']:.0f} MB (tree PSS "
        f"{train['classifier']['pss_mb']:.0f} MB), {train['classifier']['fds']} fds"
    )
    e = results["extrapolation"]
    lines += [
        "",
        f"extrapolated to the {REAL_SET}-slide real set ({REAL_SET - REAL_CANVASES} typical, "
        f"{REAL_CANVASES} canvases): cache {e['disk_gb']:.0f} GB on disk, "
        f"{e['cache_hours_one_core']:.1f} h to cache on one core;",
    ]
    for stage in ("detector", "classifier"):
        slope = e[f"{stage}_kb_per_slide"]
        fds = e[f"{stage}_fds_max"]
        lines.append(
            f"{stage}: {slope:+.1f} KB per slide (bound {BOUND_KB_PER_SLIDE}: "
            f"{'met' if slope <= BOUND_KB_PER_SLIDE else 'NOT met'}; a line through every run's "
            f"peak RSS of the training process; its own memory, RssAnon: "
            f"{e[f'{stage}_anon_kb_per_slide']:+.1f} KB per slide), "
            f"{e[f'{stage}_rss_mb_at_{REAL_SET}']:.0f} MB at {REAL_SET} slides, at most {fds} fds "
            f"(bound {BOUND_FDS}: {'met' if fds <= BOUND_FDS else 'NOT met'})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.bench.train_scale", __doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--counts", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--steps", type=int, default=150, help="training steps per process")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the trainers")
    parser.add_argument("--repeats", type=int, default=2, help="training runs per count")
    parser.add_argument(
        "--recall-slides",
        type=int,
        default=RECALL_SLIDES,
        help="validation slides of the detector's hotspot recall in the runs over --counts",
    )
    parser.add_argument("--preset", default="tiny", help="preset name or JSON file")
    parser.add_argument("--config", dest="preset", help=argparse.SUPPRESS)  # the old name
    parser.add_argument("--publish", type=Path, help="also write train_scale.md there")
    args = parser.parse_args(argv)
    setup_logging()
    results = run(
        args.out,
        args.counts,
        args.steps,
        args.workers,
        args.preset,
        args.repeats,
        args.recall_slides,
    )
    text = report(json.loads(json.dumps(results)))
    print(text)
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        (args.publish / "train_scale.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
