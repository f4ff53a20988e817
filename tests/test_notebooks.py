"""The notebooks run top to bottom with small parameters (papermill), and are committed clean."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import nbformat
import numpy as np
import papermill
import pytest
import torch
from conftest import REPO, TEST_RECIPE

from stages import runtime
from stages.config import save_config
from training.data.dataset import read_training_set
from training.data.synthetic import SynthConfig, generate_dataset
from training.fit.decision import run_cascade
from training.pack.export import init_assets

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_parameterised(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert any("parameters" in cell.metadata.get("tags", []) for cell in code)
    assert path.name[:2].isdigit()


def execute(path: Path, out: Path, **parameters: object) -> nbformat.NotebookNode:
    papermill.execute_notebook(
        str(path), str(out), parameters=parameters, cwd=str(out.parent), progress_bar=False
    )
    return nbformat.read(out, as_version=4)


def images(notebook: nbformat.NotebookNode) -> int:
    """How many PNG figures a run notebook holds; each must decode and none may be blank (one
    colour), so that every figure function the notebooks call is checked for drawing something."""
    pngs = [
        o["data"]["image/png"]
        for c in notebook.cells
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    for data in pngs:
        image = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and min(image.shape[:2]) > 50, "a figure did not decode"
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10, "a blank figure"
    return len(pngs)


def test_training_notebooks_in_workflow_order(tmp_path: Path) -> None:
    """01 data → 02 detector → 03 classifier → 04 decision, one shared work folder, a few small
    slides and one short epoch each."""
    work = tmp_path / "work"
    recipe = tmp_path / "recipe"
    save_config(TEST_RECIPE, recipe)
    common = {"work_dir": str(work), "recipe": str(recipe / "config.json")}
    fast = {"epochs": 1, "samples": 16, "batch_size": 8, "workers": 0}
    data = execute(
        REPO / "notebooks" / "01_data.ipynb",
        tmp_path / "01.ipynb",
        **common,
        n_slides=4,
        seed=3,
        size_range=[3000, 4000],
        folds=2,
    )
    assert (work / "data" / "train_annotations.csv").is_file()
    assert (work / "cache" / "slides.csv").is_file()
    assert images(data) >= 5  # overviews, resolutions, targets, windows, patches
    detector = execute(
        REPO / "notebooks" / "02_detector.ipynb", tmp_path / "02.ipynb", **common, **fast
    )
    assert (work / "detector" / "detector.safetensors").is_file()
    assert images(detector) >= 3  # curves, at least one heatmap, recall@k
    classifier = execute(
        REPO / "notebooks" / "03_classifier.ipynb",
        tmp_path / "03.ipynb",
        **common,
        **fast,
        hard_negatives=4,
    )
    assert (work / "classifier" / "validation.npz").is_file()
    assert images(classifier) >= 4  # gallery, curves, confusion, worst misgraded
    decision = execute(
        REPO / "notebooks" / "04_decision.ipynb", tmp_path / "04.ipynb", work_dir=str(work), folds=2
    )
    printed = "".join(o.get("text", "") for c in decision.cells for o in c.get("outputs", []))
    assert "validation slides; cross-validated score" in printed and "true\\pred" in printed
    assert images(decision) >= 3  # confusion, reliability, sweeps


def graded_run(tmp_path: Path, n_slides: int, seed: int) -> tuple[Path, Path, Path]:
    """``(data, maps, assets)``: ``n_slides`` generated test-layout slides graded by the runtime
    with random-weight assets, their results saved as ``main.py --save-heatmaps`` saves them."""
    data, maps = tmp_path / "data", tmp_path / "maps"
    generate_dataset(data, n_slides, seed=seed, split="test")
    assets = init_assets(tmp_path / "assets")
    assert runtime.run(data, tmp_path / "sub.csv", assets, device="cpu", save_heatmaps=maps) == 0
    return data, maps, assets


def test_heatmap_inspection_notebook(tmp_path: Path) -> None:
    data, maps, assets = graded_run(tmp_path, 2, seed=9)
    result = execute(
        REPO / "notebooks" / "05_heatmap_inspection.ipynb",
        tmp_path / "05.ipynb",
        data_dir=str(data),
        assets_dir=str(assets),
        run_dir=str(maps),
        labels_csv=str(data / "test_labels.csv"),
        budgets=[2, 8],
    )
    outputs = [o for c in result.cells for o in c.get("outputs", [])]
    texts = [o.get("data", {}).get("text/plain", "") for o in outputs]
    compared = next(text for text in texts if "max_k" in text)
    assert compared.count("patches") == 2  # one row per budget
    summary = next(
        o["data"]["text/plain"]
        for o in outputs
        if "'source'" in o.get("data", {}).get("text/plain", "")
    )
    assert "'class'" in summary and "'errors': []" in summary
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    assert json.loads(json.dumps(result.metadata["papermill"]["parameters"]))["data_dir"] == str(
        data
    )


def test_run_inspection_notebook(tmp_path: Path) -> None:
    data, maps, _ = graded_run(tmp_path, 2, seed=10)
    result = execute(
        REPO / "notebooks" / "06_run_inspection.ipynb",
        tmp_path / "06.ipynb",
        heatmaps_dir=str(maps),
        data_dir=str(data),
        labels_csv=str(data / "test_labels.csv"),
    )
    outputs = [o for c in result.cells for o in c.get("outputs", [])]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "on 2 slides" in printed and "true\\pred" in printed
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2


def test_cohort_review_notebook(tmp_path: Path) -> None:
    test, maps, assets = graded_run(tmp_path, 3, seed=11)
    train = tmp_path / "train"
    generate_dataset(train, 2, seed=12, split="train", config=SynthConfig(class_mix=(0, 0, 1, 0)))
    slides = read_training_set(train)
    run_cascade(
        assets, [s.path for s in slides], [s.mpp for s in slides], tmp_path / "recall",
        torch.device("cpu"),
    )  # fmt: skip
    result = execute(
        REPO / "notebooks" / "07_cohort_review.ipynb",
        tmp_path / "07.ipynb",
        run_dir=str(maps),
        data_dir=str(test),
        labels_csv=str(test / "test_labels.csv"),
        assets_dir=str(assets),
        train_set=str(train),
        train_results_dir=str(tmp_path / "recall"),
        ks=[1, 4, 32],
        worst=2,
    )
    outputs = [o for c in result.cells for o in c.get("outputs", [])]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "3 slides: cascade" in printed
    assert "class 2" in printed and "@32" in printed  # recall by class
    assert " k " in printed.replace("\n", " ") or "k  score" in printed  # the budget sweep
    assert images(result) >= 2  # confusion matrix and the sweep, at least
