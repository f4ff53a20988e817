"""The run report: its figures, and the page in a real headless browser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from stages import runtime
from stages.budget import RunBudget
from stages.cascade import Cascade, Hotspot
from stages.config import load_assets
from stages.detector import Heatmap
from stages.geometry import Box
from stages.result import SlideResult
from stages.slide import Slide
from training.data.synthetic import SynthConfig
from training.inspect import figures, inspection
from training.inspect.report import (
    build_report,
    open_in_browser,
    plot_decision,
    plot_gallery,
    plot_overlay,
    plot_time,
    png,
)

NOISE = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3), np.uint8)


def result() -> SlideResult:
    probs = np.zeros((4, 20, 30), np.float32)
    probs[0] = 1.0
    probs[:, 5:10, 5:15] = np.array([0.2, 0.1, 0.6, 0.1])[:, None, None]
    tissue = np.zeros((20, 30), bool)
    tissue[2:18, 2:28] = True
    heatmap = Heatmap(probs, tissue, np.ones_like(tissue), (100.0, 100.0), 4, True, 6)
    hotspots = [
        Hotspot(Box(700.0, 600.0, 60.0, 60.0), 0.8, (0.2, 0.1, 0.6, 0.1), 0),
        Hotspot(Box(1500.0, 1200.0, 60.0, 60.0), 0.1, (0.9, 0.05, 0.03, 0.02), 1),
    ]
    return SlideResult(
        "a.tif", 2, (0.05, 0.1, 0.8, 0.05), "patches", hotspots,
        np.array([[0.1, 0.1, 0.7, 0.1]], np.float32), heatmap, tissue, (100.0, 100.0),
        {"tissue": 0.1, "detector": 0.5, "classifier": 0.2, "slide": 0.9, "allotment": 1.5},
        size=(3000, 2000),
    )  # fmt: skip


def decoded(figure: Figure, dpi: int = 90) -> tuple[np.ndarray, tuple[int, int]]:
    width, height = figure.get_size_inches()
    image = cv2.imdecode(np.frombuffer(png(figure, dpi), np.uint8), cv2.IMREAD_COLOR)
    return image, (round(height * dpi), round(width * dpi))


@pytest.mark.parametrize(
    "make",
    [
        lambda r: plot_overlay(r, None, (1.0, 1.0)),
        lambda r: plot_overlay(r, np.full((200, 300, 3), 230, np.uint8), (10.0, 10.0)),
        plot_decision,
        lambda r: plot_gallery(NOISE, r.grades),
        plot_time,
        lambda r: figures.plot_confusion(np.array([[3, 1, 0, 0], [0, 2, 1, 0], [0, 0, 4, 1],
                                                   [0, 0, 1, 5]]), "confusion"),
        lambda r: figures.plot_recall({1: 0.2, 4: 0.5, 16: 0.9, 32: 1.0}),
        lambda r: figures.plot_reliability(np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.4, 0.8]),
                                           np.array([10, 5, 7])),
        lambda r: figures.plot_gallery(list(NOISE) * 3, ["a", "b", "c"], columns=3),
        lambda r: figures.plot_sweeps({"patch_weight": (np.array([0.5, 1, 2]),
                                                         np.array([0.9, 0.95, 0.93]), 1.0)}),
    ],
)  # fmt: skip
def test_every_figure_is_a_non_blank_image_of_its_size(make) -> None:
    """The report's figures and the notebooks' (``training.inspect.figures``)."""
    image, size = decoded(make(result()))
    assert image.shape[:2] == size
    assert image.std() > 5 and len(np.unique(image.reshape(-1, 3), axis=0)) > 10


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(
    tmp_path: Path, assets: Path, generated: Callable[..., Path]
) -> None:
    data = generated(3, 21)
    maps = tmp_path / "maps"
    code = runtime.run(
        data, tmp_path / "submission.csv", assets, device="cpu",
        save_heatmaps=maps,
    )  # fmt: skip
    assert code == 0
    page = tmp_path / "report.html"
    page.write_text(build_report(maps, data / "test_labels.csv", data))
    text = page.read_text()
    assert "Score" in text and 'alt="confusion matrix"' in text and "Why this class" in text
    errors, images = open_in_browser(page, tmp_path / "report.png")
    assert errors == []
    # summary confusion matrix, then per slide: overview, decision, patches, time
    assert len(images) == 1 + 3 * 4
    for image in images:
        assert image["width"] > 100 and image["height"] > 50, image
        assert image["spread"] > 0, f"blank image: {image['alt']}"
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_the_inspection_figures_on_a_graded_slide_are_non_blank(
    assets: Path, generated: Callable[..., Path]
) -> None:
    """``training.inspect.inspection``'s figures, on a slide the cascade graded, and the
    training curves and windows figures."""
    path = next(generated(1, 82, config=SynthConfig(size_range=(6000, 7000))).glob("*.tif"))
    cascade = Cascade(load_assets(assets, torch.device("cpu")))
    budget = RunBudget(600, 1, cascade.config.budget)
    graded = cascade.grade_slide(path, None, budget.start_slide(), budget.costs)
    curves = pd.DataFrame(
        {"epoch": [0, 1, 2], "train_loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.8, 0.7]}
    )
    with Slide(path) as slide:
        made = [
            inspection.plot_result(slide, graded),
            inspection.plot_patches(slide, graded, graded.pages["classifier"], 128, n=4),
            inspection.plot_overviews([slide], {path.name: [graded.hotspots[0].box]}),
            inspection.plot_resolutions(slide, graded.hotspots[0].box, (0.5, 4.0)),
            figures.plot_windows(list(NOISE) * 2, [np.zeros((64, 64), np.uint8)] * 2),
            figures.plot_curves(curves, [["train_loss", "val_loss"]]),
        ]
    for figure in made:
        image, size = decoded(figure)
        assert image.shape[:2] == size
        assert image.std() > 5 and len(np.unique(image.reshape(-1, 3), axis=0)) > 10
