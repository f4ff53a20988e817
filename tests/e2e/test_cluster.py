"""Distributed grading and cache building on a local Ray instance with 2 CPUs, and DDP training on
two CPU processes, all on small generated slides.

The Ray instance is started once by this module and the commands join it with ``--address``, as
they would join a cluster (Ray serves on this machine's own address).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from helpers import REPO, SHIPPED_ASSETS, TEST_RECIPE, TRAIN_MIX, run_main
from safetensors.torch import load_file

from stages.cascade import Cascade
from stages.config import load_config, save_config
from stages.decision import decide_slide
from stages.detector import build_detector
from stages.submission import classes_by_filename, read_table, validate
from training.bench.scaling import projection
from training.cluster.grade import COLUMNS, GradeOptions, GradeWorker, ResultsTable, grade_archive
from training.cluster.pool import (
    PlacementError,
    PoolConfig,
    Progress,
    Sizing,
    actor_options,
    connect,
    gpu_share,
    size_pool,
)
from training.data.cache import CacheConfig, build_cache
from training.data.synthetic import generate_dataset
from training.pack.guard import blocked_modules, runtime_distributions, unresolved_imports
from training.stageio import save_stage

pytestmark = pytest.mark.slow

ASSETS = SHIPPED_ASSETS
FORMAT = "submission_format.csv"
SMALL = CacheConfig(square_patches=3, benign_patches=6, hard_negatives=4)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The address of a local Ray instance with 2 CPUs, shut down after the module."""
    connect(PoolConfig(local_cpus=2))
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four generated test slides, one of each class, with main.py's submission and heatmaps
    (the committed assets) in ``../main``."""
    data = tmp_path_factory.mktemp("cluster") / "data"
    generate_dataset(data, 4, seed=31, split="test")
    labels = classes_by_filename(read_table(data / "test_labels.csv"))
    assert sorted(labels.values()) == [0, 1, 2, 3]
    main = data.parent / "main"
    code, log = run_main(
        data, main / "submission.csv", ASSETS, "--save-heatmaps", str(main / "maps")
    )
    assert code == 0, log
    return data


def grade_command(data: Path, out: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.cluster", "grade", "--data", str(data)] + [
        "--out", str(out), "--assets", str(ASSETS), "--address", address, *extra,
    ]  # fmt: skip


def main_classes(data: Path) -> dict[str, int]:
    """main.py's classes of the slides in ``data`` (validated as a one-hot table)."""
    return classes_by_filename(read_table(data.parent / "main" / "submission.csv"))


def test_cluster_grade_gives_the_classes_of_main_py(
    slides: Path, cluster: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        grade_command(slides, out, cluster, "--workers", "2"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "2 GradeWorker workers, 1 CPU and 0 GPU each" in log
    assert "[4/4]" in log and "slides/h, ETA" in log
    fmt = read_table(slides / "submission_format.csv")
    submission = read_table(out / "submission.csv")
    validate(submission, fmt)
    assert submission.equals(read_table(slides.parent / "main" / "submission.csv"))
    rows = ResultsTable(out / "results.csv").rows()
    assert sorted(rows.index) == sorted(fmt["filename"]) and set(rows["source"]) == {"patches"}
    assert len({w.split(":")[1] for w in rows["worker"]}) == 2  # both workers graded
    for name in fmt["filename"]:
        stem = Path(name).stem
        ours = np.load(out / "heatmaps" / f"{stem}.npz")
        theirs = np.load(slides.parent / "main" / "maps" / f"{stem}.npz")
        assert np.array_equal(ours["hotspot_boxes"], theirs["hotspot_boxes"])
        assert ours["grades"].shape == theirs["grades"].shape
        assert (out / "heatmaps" / f"{stem}.geojson").is_file()
        assert rows.at[name, "class"] == main_classes(slides)[name]


def test_a_worker_that_dies_costs_only_its_slide(
    slides: Path, cluster: str, tmp_path: Path
) -> None:
    names = list(read_table(slides / "submission_format.csv")["filename"])
    marks = tmp_path / "crashes"
    marks.mkdir()
    options = GradeOptions(crash_on=frozenset({names[1]}), crash_marks=str(marks))
    report = grade_archive(slides, tmp_path / "out", ASSETS, PoolConfig(workers=2), options)
    assert report.done == report.total == 4 and sorted(report.graded) == sorted(names)
    rows = ResultsTable(tmp_path / "out" / "results.csv").rows()
    crashed = rows.loc[names[1]]
    prior = decide_slide([], [], load_config(ASSETS).decision)
    assert crashed["source"] == "fallback" and crashed["class"] == prior.cls
    assert "died on each of 2 tries" in crashed["errors"]
    # tried twice, on two processes: the worker was restarted and the slide retried once
    assert len({p.suffix for p in marks.iterdir()}) == 2
    expected = main_classes(slides)
    for name in names[:1] + names[2:]:  # the restarted worker went on grading
        assert rows.at[name, "source"] == "patches" and rows.at[name, "class"] == expected[name]
    validate(read_table(tmp_path / "out" / "submission.csv"), read_table(slides / FORMAT))
    assert (tmp_path / "out" / "heatmaps" / f"{Path(names[1]).stem}.json").is_file()


def test_a_folder_without_csvs_gets_a_predictions_table(
    slides: Path, cluster: str, tmp_path: Path
) -> None:
    folder = tmp_path / "archive"  # TIFs only, as a hospital's backlog might come
    folder.mkdir()
    names = sorted(read_table(slides / FORMAT)["filename"])[:2]
    for name in names:
        (folder / name).symlink_to(slides / name)
    report = grade_archive(folder, tmp_path / "out", ASSETS, PoolConfig(workers=2))
    assert report.output == tmp_path / "out" / "predictions.csv"
    table = pd.read_csv(report.output)
    assert list(table.columns) == ["filename", "class", "p0", "p1", "p2", "p3", "source"]
    assert list(table["filename"]) == names  # every TIF found, sorted
    # no metadata: the slides' own resolution tags, and still main.py's classes
    assert [main_classes(slides)[n] for n in names] == list(table["class"])
    assert np.allclose(table[["p0", "p1", "p2", "p3"]].sum(axis=1), 1.0, atol=1e-4)


def test_an_interrupted_run_resumes_with_the_rest(
    slides: Path, cluster: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    names = list(read_table(slides / FORMAT)["filename"])
    first = grade_archive(slides, out, ASSETS, PoolConfig(workers=1), limit=1)
    assert first.graded == names[:1] and first.output is None and first.done == 1
    assert not (out / "submission.csv").exists()
    kept = (out / "heatmaps" / f"{Path(names[0]).stem}.npz").stat().st_mtime_ns

    # a run killed outright (SIGKILL) as soon as it has finished one more slide (this one
    # writing results.csv rows only)
    proc = subprocess.Popen(
        grade_command(slides, out, cluster, "--workers", "2", "--no-heatmaps"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    deadline = time.monotonic() + 240
    while len((out / "results.csv").read_text().splitlines()) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "the second run finished no slide"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with (out / "results.csv").open("a") as f:
        f.write("syn31_0003.tif,2,0.1")  # and a row cut short, as a kill mid-write would leave
    before = set(ResultsTable(out / "results.csv").rows().index)
    assert names[0] in before and 2 <= len(before) <= 4

    last = grade_archive(slides, out, ASSETS, PoolConfig(workers=2))
    assert sorted(last.graded) == sorted(set(names) - before)  # only the rest
    rows = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert sorted(rows["filename"]) == sorted(names)  # each slide once
    assert (out / "heatmaps" / f"{Path(names[0]).stem}.npz").stat().st_mtime_ns == kept
    maps = {p.stem for p in (out / "heatmaps").glob("*.npz")}
    assert maps == {Path(n).stem for n in [names[0], *last.graded]}  # none from --no-heatmaps
    assert read_table(out / "submission.csv").equals(
        read_table(slides.parent / "main" / "submission.csv")
    )


def test_results_table_keeps_whole_lines_only(tmp_path: Path) -> None:
    table = ResultsTable(tmp_path / "results.csv")
    row = dict.fromkeys(COLUMNS, 0) | {"filename": "a.tif", "source": "patches", "errors": "x, y"}
    table.append(row)
    with (tmp_path / "results.csv").open("a") as f:
        f.write("b.tif,1,0.")
    rows = ResultsTable(tmp_path / "results.csv").rows()
    assert list(rows.index) == ["a.tif"] and rows.at["a.tif", "errors"] == "x, y"
    assert (tmp_path / "results.csv").read_text().endswith('x, y"\n')
    (tmp_path / "other.csv").write_text("filename,class\n")
    with pytest.raises(ValueError, match="not a results table"):
        ResultsTable(tmp_path / "other.csv")


def test_the_runtime_set_leaves_ray_out() -> None:
    # the packed submission's test hides every module outside requirements.txt's closure
    assert blocked_modules(runtime_distributions()).get("ray") == "ray"
    sources = {f"stages/{p.name}": p.read_text() for p in (REPO / "stages").glob("*.py")}
    sources["main.py"] = (REPO / "main.py").read_text()
    assert unresolved_imports(sources, blocked_modules(runtime_distributions())) == []


def test_pool_sizing() -> None:
    cpus_only = [{"CPU": 16.0}]
    assert size_pool(PoolConfig(), cpus_only) == Sizing(16, 1.0, 0.0)
    assert size_pool(PoolConfig(cpus_per_worker=4), cpus_only) == Sizing(4, 4.0, 0.0)
    gpus = [{"CPU": 32.0, "GPU": 8.0}]
    assert size_pool(PoolConfig(), gpus) == Sizing(8, 4.0, 1.0)  # one actor per GPU
    assert size_pool(PoolConfig(gpus_per_worker=0.5), gpus) == Sizing(16, 2.0, 0.5)
    assert size_pool(PoolConfig(workers=3, gpus_per_worker=0), gpus) == Sizing(3, 1.0, 0.0)
    with pytest.raises(ValueError, match="workers"):
        PoolConfig(workers=0)


def test_pools_are_sized_by_the_nodes_actors_land_on() -> None:
    # a CPU-only head with two GPU nodes: each actor gets a GPU node's CPUs, not a share of the
    # cluster's 48 (24 CPUs and a GPU: no node has them)
    head_and_gpus = [{"CPU": 32.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert size_pool(PoolConfig(), head_and_gpus) == Sizing(2, 8.0, 1.0)
    # GPU nodes of different sizes: the CPUs per actor that every one of them gives
    mixed = [{"CPU": 32.0, "GPU": 8.0}, {"CPU": 6.0, "GPU": 1.0}]
    assert size_pool(PoolConfig(), mixed) == Sizing(9, 4.0, 1.0)
    # CPU actors count per node: 2 of 3 CPUs fit on each of two 5-CPU nodes, not 10 / 3
    assert size_pool(PoolConfig(cpus_per_worker=3), [{"CPU": 5.0}] * 2) == Sizing(2, 3.0, 0.0)


def test_workers_beyond_the_gpus_share_them() -> None:
    one_gpu = [{"CPU": 16.0, "GPU": 1.0}]
    assert size_pool(PoolConfig(workers=4), one_gpu) == Sizing(4, 4.0, 0.25)
    assert size_pool(PoolConfig(workers=3), one_gpu) == Sizing(3, 5.0, 0.3333)
    two_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert size_pool(PoolConfig(workers=3), two_nodes) == Sizing(3, 4.0, 0.5)  # 2 per GPU
    assert size_pool(PoolConfig(workers=2), two_nodes) == Sizing(2, 8.0, 1.0)
    assert gpu_share(3) * 3 <= 1.0 and gpu_share(7) == 0.1428


def test_an_actor_no_node_can_hold_is_refused_before_any_wait() -> None:
    with pytest.raises(PlacementError, match="no node can hold an actor of 1 CPU and 1 GPU"):
        size_pool(PoolConfig(gpus_per_worker=1), [{"CPU": 16.0}, {"CPU": 16.0}])
    with pytest.raises(PlacementError, match="of 24 CPU and 0 GPU"):
        size_pool(PoolConfig(cpus_per_worker=24), [{"CPU": 16.0}, {"CPU": 16.0}])


def test_actors_without_a_gpu_are_kept_from_seeing_one() -> None:
    assert actor_options(Sizing(2, 1.0, 0.0)) == {
        "num_cpus": 1.0,
        "num_gpus": 0.0,
        "max_restarts": -1,
        "runtime_env": {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}},
    }
    assert actor_options(Sizing(4, 4.0, 0.25)) == {
        "num_cpus": 4.0,
        "num_gpus": 0.25,
        "max_restarts": -1,
    }  # Ray gives it its GPU's CUDA_VISIBLE_DEVICES


def test_a_grade_worker_warms_its_networks_up_before_its_first_slide(
    assets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warmed: list[Cascade] = []
    monkeypatch.setattr(Cascade, "warm_up", lambda cascade: warmed.append(cascade) or 0.0)
    # outside an actor: the resources Ray would have given it (this process's threads, kept)
    given = SimpleNamespace(get_assigned_resources=lambda: {"CPU": torch.get_num_threads()})
    monkeypatch.setattr(ray, "get_runtime_context", lambda: given)
    blobs = {p.name: p.read_bytes() for p in assets.iterdir() if p.is_file()}
    worker = GradeWorker(blobs, str(assets), GradeOptions())
    assert warmed == [worker.cascade]


def test_progress_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    progress = Progress(10, clock=lambda: now[0])
    now[0] = 136.0
    with caplog.at_level("INFO"):
        progress.step("a.tif: class 1")
    assert progress.rate() == 100.0  # 1 slide in 36 s
    assert "[1/10] a.tif: class 1; 100 slides/h, ETA 0:05:24" in caplog.text


def test_projection_divides_the_archive_by_the_steady_rates() -> None:
    table = pd.DataFrame(
        [
            {"set": "real", "pool": "main.py", "steady_per_h": np.nan},
            {"set": "real", "pool": "2 worker(s) x 1 CPU", "steady_per_h": 1024.0},
        ]
    )
    hours = projection(table)
    assert list(hours["machines"]) == [1, 4, 16] and set(hours["pool"]) == {"2 worker(s) x 1 CPU"}
    assert list(hours["2048 slides, h"]) == [2.0, 0.5, 0.125]
    assert hours["50000 slides, h"].iloc[0] == 50_000 / 1024


@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory, generated: Callable[..., Path]) -> Path:
    out = tmp_path_factory.mktemp("cluster_train") / "data"
    shutil.copytree(generated(4, 24, "train", TRAIN_MIX), out)
    (out / "syn24_0003.tif").write_bytes(b"not a tiff")  # listed, and unreadable
    return out


def test_distributed_cache_equals_the_single_machine_one(
    train_data: Path, cluster: str, tmp_path: Path
) -> None:
    recipe = save_config(TEST_RECIPE, tmp_path / "recipe")
    settings = ["--config", str(recipe), "--folds", "2", "--square-patches", "3"]
    settings += ["--benign-patches", "6"]
    single = subprocess.run(
        [sys.executable, "-m", "training.data.cache", str(train_data), str(tmp_path / "single")]
        + settings,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert single.returncode == 0, single.stdout + single.stderr
    command = [sys.executable, "-m", "training.cluster", "cache", str(train_data)]
    command += [str(tmp_path / "ray"), *settings, "--address", cluster]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cached 3 slides" in proc.stdout
    assert "syn24_0003.tif: skipped, cannot be cached: SlideError" in proc.stderr
    single = sorted(p.relative_to(tmp_path / "single") for p in (tmp_path / "single").rglob("*"))
    ours = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*"))
    assert single == ours
    # arrays for each of the 3 readable slides (which arrays is the cache's business)
    arrays = [p for p in single if p.suffix == ".npy"]
    assert {p.parent.name for p in arrays} == {f"syn24_000{i}" for i in range(3)}
    for rel in single:
        a, b = tmp_path / "single" / rel, tmp_path / "ray" / rel
        if a.suffix == ".npy":
            assert np.array_equal(np.load(a), np.load(b)), rel
        elif a.suffix == ".csv":  # equal but for the seconds each slide took to cache
            tables = [pd.read_csv(x).drop(columns="seconds", errors="ignore") for x in (a, b)]
            pd.testing.assert_frame_equal(*tables, obj=str(rel))
        elif a.name == "slide.json":  # the same
            ours, theirs = ({**json.loads(x.read_text()), "seconds": None} for x in (a, b))
            assert ours == theirs, rel
        elif a.is_file():
            assert a.read_bytes() == b.read_bytes(), rel
    # a rerun resumes: nothing is cached again
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert again.returncode == 0 and "3 of 4 slides cached already" in again.stderr


def test_ddp_step_on_two_cpu_processes_ends_with_equal_weights(
    train_data: Path, tmp_path: Path
) -> None:
    build_cache(train_data, tmp_path / "cache", TEST_RECIPE, SMALL, folds=2)
    recipe = save_config(TEST_RECIPE, tmp_path / "recipe")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "e2e" / "ddp_step.py"), str(tmp_path / "cache")]
        + [str(tmp_path / "run"), str(recipe)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    infos = [(tmp_path / "run" / f"rank{r}.json").read_text() for r in (0, 1)]
    assert infos[0] == infos[1] == '{"world_size": 2, "steps": 2}'
    start = load_file(str(tmp_path / "run" / "start.safetensors"))
    ranks = [load_file(str(tmp_path / "run" / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == start.keys()
    for name in start:
        assert ranks[0][name].equal(ranks[1][name]), name  # the gradients were all-reduced
    moved = [name for name in start if not ranks[0][name].equal(start[name])]
    assert len(moved) > len(start) // 2  # and the steps changed the weights


def test_the_pipeline_on_two_ddp_ranks_runs_each_other_step_once_in_order(
    train_data: Path, tmp_path: Path
) -> None:
    work, assets = tmp_path / "work", tmp_path / "assets"
    recipe = save_config(TEST_RECIPE, tmp_path / "recipe")
    # a detector left by an earlier run: hard negatives must not be mined with it
    torch.manual_seed(0)
    stale = build_detector(TEST_RECIPE.detector)
    save_stage(work / "detector", "detector", stale, TEST_RECIPE, {"val_fold": 0, "command": ""})
    command = [sys.executable, "-m", "training.pipeline", str(work), str(assets)]
    command += ["--data", str(train_data), "--config", str(recipe), "--folds", "2"]
    command += ["--accelerator", "cpu", "--devices", "2", "--workers", "0"]
    for stage in ("detector", "classifier"):
        command += [f"--{stage}-epochs", "1", f"--{stage}-samples", "16"]
        command += [f"--{stage}-batch-size", "4"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    # one process ran the steps, in order; each fit had its second rank
    steps = re.findall(r"step (\w+) done", log)
    assert steps == [
        "data",
        "cache",
        "detector",
        "hard_negatives",
        "classifier",
        "decision",
        "export",
    ]
    assert log.count("MEMBER: 2/2") == 2, log
    # the hard negatives were mined once the new detector was written, with it
    weights = (work / "detector" / "detector.safetensors").read_bytes()
    marks = [json.loads(p.read_text()) for p in (work / "cache").glob("*/hard.json")]
    assert marks and {m["detector"] for m in marks} == {hashlib.sha256(weights).hexdigest()[:16]}
    assert (assets / "detector.safetensors").read_bytes() == weights
    trained_by = load_config(assets).provenance.command
    assert "training.fit.detector" in trained_by and "--devices 2" in trained_by
