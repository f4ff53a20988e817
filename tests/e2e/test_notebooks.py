"""The notebooks run top to bottom with small parameters (papermill), and are committed clean."""

from __future__ import annotations

import ast
import base64
import json
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import cv2
import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
import torch
from helpers import REPO, TEST_RECIPE

from stages import runtime
from stages.config import load_config, save_config
from stages.metric import confusion_matrix, score
from stages.submission import classes_by_filename, read_table
from training.data.dataset import read_training_set
from training.data.synthetic import SynthConfig
from training.evaluate.cohort import budget_sweep, cohort_table, load_run
from training.fit.decision import run_cascade
from training.fit.patches import patch_score
from training.inspect.inspection import run_table

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


def printed(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook printed (stream outputs)."""
    return "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))


def results(notebook: nbformat.NotebookNode) -> list[str]:
    """The plain-text form of every cell's displayed value, in order."""
    return [
        o["data"]["text/plain"]
        for c in notebook.cells
        for o in c.get("outputs", [])
        if o["output_type"] == "execute_result" and "text/plain" in o.get("data", {})
    ]


class _Table(HTMLParser):
    """The cells of the first HTML ``<table>`` fed: header rows and body rows, as text."""

    def __init__(self) -> None:
        super().__init__()
        self.head: list[list[str]] = []
        self.body: list[list[str]] = []
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("thead", "tbody"):
            self._rows = self.head if tag == "thead" else self.body
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("th", "td") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None and self._rows is not None:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("thead", "tbody"):
            self._rows = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def displayed_table(notebook: nbformat.NotebookNode, column: str) -> dict[str, dict[str, str]]:
    """The first DataFrame the notebook displayed with a ``column``, as filename → column →
    the text shown (the filename a column or the index)."""
    for c in notebook.cells:
        for o in c.get("outputs", []):
            html = o.get("data", {}).get("text/html", "")
            if "<table" not in html:
                continue
            table = _Table()
            table.feed(html)
            header = table.head[0]
            if column not in header:
                continue
            key = header.index("filename") if "filename" in header else 0
            return {row[key]: dict(zip(header, row, strict=True)) for row in table.body}
    raise AssertionError(f"no table with a {column!r} column was displayed")


def test_training_notebooks_in_workflow_order(tmp_path: Path) -> None:
    """01 data → 02 detector → 03 classifier → 04 decision, one shared work folder, a few small
    slides and one short epoch each. Each notebook shows at least one figure that the training
    code's own output must match."""
    work = tmp_path / "work"
    recipe = tmp_path / "recipe"
    save_config(TEST_RECIPE, recipe)
    common = {"work_dir": str(work), "preset": str(recipe / "config.json")}
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
    # the squares per slide shown are the generator's CSV rows; the patches per slide shown
    # are the cache's patch table (before notebook 03 adds its hard negatives)
    squares = pd.read_csv(work / "data" / "train_annotations.csv")["filename"].value_counts()
    shown = displayed_table(data, "squares")
    assert len(shown) == 4 and {n: int(r["squares"]) for n, r in shown.items()} == dict(squares)
    patches = pd.read_csv(work / "cache" / "patches.csv")["filename"].value_counts()
    shown = displayed_table(data, "patches")
    assert {n: int(r["patches"]) for n, r in shown.items()} == dict(patches)
    detector = execute(
        REPO / "notebooks" / "02_detector.ipynb", tmp_path / "02.ipynb", **common, **fast
    )
    assert (work / "detector" / "detector.safetensors").is_file()
    assert images(detector) >= 3  # curves, at least one heatmap, recall@k
    # the notebook's recall@k of the saved detector is the trainer's validation recall@k
    trained = json.loads((work / "detector" / "detector.json").read_text())
    recall = ast.literal_eval(results(detector)[-1])
    assert recall and recall == {
        k: round(trained["metrics"][f"val_recall@{k}"], 3) for k in recall
    }, (recall, trained["metrics"])
    classifier = execute(
        REPO / "notebooks" / "03_classifier.ipynb",
        tmp_path / "03.ipynb",
        **common,
        **fast,
        hard_negatives=4,
    )
    assert (work / "classifier" / "validation.npz").is_file()
    assert images(classifier) >= 4  # gallery, curves, confusion, worst misgraded
    # the metrics shown are the trainer's, and its val_score is the patch score of the
    # confusion matrix of the saved validation logits (the matrix the notebook plots)
    stage = json.loads((work / "classifier" / "classifier.json").read_text())
    shown = ast.literal_eval(results(classifier)[0])
    assert shown == stage["metrics"]
    saved = np.load(work / "classifier" / "validation.npz")
    confusion = confusion_matrix(saved["labels"], saved["logits"].argmax(1))
    assert confusion.tolist() == stage["confusion"] and confusion.sum() > 0
    assert shown["val_score"] == pytest.approx(patch_score(confusion))
    decision = execute(
        REPO / "notebooks" / "04_decision.ipynb", tmp_path / "04.ipynb", work_dir=str(work), folds=2
    )
    text = printed(decision)
    assert "validation slides; cross-validated score" in text and "true\\pred" in text
    assert images(decision) >= 3  # confusion, reliability, sweeps
    # the slide count, cross-validated and in-sample scores printed are the fit's own
    fitted = json.loads((work / "decision" / "decision.json").read_text())["metrics"]
    cv = fitted.get("cv_score", float("nan"))
    assert f"{int(fitted['slides'])} validation slides; cross-validated score {cv:.4f}" in text
    assert f"in-sample: {fitted['fit_score']:.4f}, stage 2 off " in text


def graded_run(tmp_path: Path, assets: Path, data: Path) -> tuple[Path, Path]:
    """``(data, maps)``: the generated test-layout slides in ``data`` graded by the runtime with
    ``assets``, their results saved as ``main.py --save-heatmaps`` saves them."""
    maps = tmp_path / "maps"
    assert runtime.run(data, tmp_path / "sub.csv", assets, device="cpu", save_heatmaps=maps) == 0
    return data, maps


def test_heatmap_inspection_notebook(
    tmp_path: Path, assets: Path, generated: Callable[..., Path]
) -> None:
    data, maps = graded_run(tmp_path, assets, generated(2, 9))
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
    assert images(result) >= 2  # decoded, none blank
    # the slide inspected is the run's worst error, as the cohort table ranks it
    table = cohort_table(load_run(maps), data / "test_labels.csv", load_config(assets).decision)
    assert f"{table['slide'][0]} | " in printed(result)


def test_run_inspection_notebook(
    tmp_path: Path, assets: Path, generated: Callable[..., Path]
) -> None:
    data, maps = graded_run(tmp_path, assets, generated(2, 9))
    result = execute(
        REPO / "notebooks" / "06_run_inspection.ipynb",
        tmp_path / "06.ipynb",
        heatmaps_dir=str(maps),
        data_dir=str(data),
        labels_csv=str(data / "test_labels.csv"),
    )
    text = printed(result)
    # the score printed is the metric's on the run's classes
    truth = classes_by_filename(read_table(data / "test_labels.csv"))
    run = run_table(maps)
    expected = score([truth[n] for n in run["filename"]], run["class"].tolist())
    assert f"score {expected:.4f} on 2 slides" in text and "true\\pred" in text
    assert images(result) == 2  # one overview per slide, decoded, none blank


def test_cohort_review_notebook(
    tmp_path: Path, assets: Path, generated: Callable[..., Path]
) -> None:
    test, maps = graded_run(tmp_path, assets, generated(3, 11))
    train = generated(2, 12, "train", SynthConfig(class_mix=(0, 0, 1, 0)))
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
    text = printed(result)
    assert "3 slides: cascade" in text
    assert "class 2" in text and "@32" in text  # recall by class
    # the budget sweep printed is the training code's, on the same run
    decision = load_config(assets).decision
    results = load_run(maps)
    table = cohort_table(results, test / "test_labels.csv", decision)
    sweep = budget_sweep(results, table, decision, [1, 4, 32])
    assert list(sweep["k"]) == [1, 4, 32] and sweep.to_string(index=False) in text
    assert images(result) >= 2  # confusion matrix and the sweep, at least
