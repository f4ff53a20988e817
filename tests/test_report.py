"""The run report: its figures, and the page in a real headless browser."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO
from matplotlib.figure import Figure

from stages import runtime
from stages.cascade import Hotspot, SlideResult
from stages.detector import Heatmap
from stages.geometry import Box
from training.data.synthetic import generate_dataset
from training.evaluate.report import (
    build_report,
    open_in_browser,
    plot_decision,
    plot_gallery,
    plot_overlay,
    plot_time,
    png,
)
from training.pack.export import init_assets

ARTEFACTS = REPO / "build" / "test-artifacts"
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
    ],
)
def test_every_figure_is_a_non_blank_image_of_its_size(make) -> None:
    image, size = decoded(make(result()))
    assert image.shape[:2] == size
    assert image.std() > 5 and len(np.unique(image.reshape(-1, 3), axis=0)) > 10


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, 3, seed=81, split="test")
    maps = tmp_path / "maps"
    code = runtime.run(
        data, tmp_path / "submission.csv", init_assets(tmp_path / "assets"), device="cpu",
        save_heatmaps=maps,
    )  # fmt: skip
    assert code == 0
    page = tmp_path / "report.html"
    page.write_text(build_report(maps, data / "test_labels.csv", data))
    text = page.read_text()
    assert "Score" in text and 'alt="confusion matrix"' in text and "Why this class" in text
    errors, images = open_in_browser(page, ARTEFACTS / "report.png")
    assert errors == []
    # summary confusion matrix, then per slide: overview, decision, patches, time
    assert len(images) == 1 + 3 * 4
    for image in images:
        assert image["width"] > 100 and image["height"] > 50, image
        assert image["spread"] > 0, f"blank image: {image['alt']}"
    assert (ARTEFACTS / "report.png").stat().st_size > 10_000
