"""Figures for looking at what the cascade did on a slide (used by the inspection notebooks).

Everything is drawn on a low-resolution page of the slide; boxes come in page-0 pixels
(:mod:`stages.geometry`) and are scaled to that page here, nowhere else.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from stages.classifier import read_patches
from stages.geometry import Box
from stages.result import SlideResult
from stages.slide import Slide

GRADE_NAMES = ("benign", "low-grade", "high-grade", "invasive")
GRADE_COLOURS = ("tab:green", "gold", "tab:orange", "tab:red")


def overview_page(slide: Slide, max_side: int = 1500) -> int:
    """The largest page whose longer side is at most ``max_side`` pixels (else the last page)."""
    for page in slide.pages:
        if max(page.size) <= max_side:
            return page.index
    return slide.pages[-1].index


def plot_result(slide: Slide, result: SlideResult, max_side: int = 1500) -> Figure:
    """Overview with tissue contour and hotspot boxes (coloured by grade), and one heatmap panel
    per lesion class. Returns the figure (1 x 4 panels)."""
    page = overview_page(slide, max_side)
    image = slide.read_page(page)
    sx, sy = slide.pages[page].scale
    figure, axes = plt.subplots(1, 4, figsize=(20, 5.5), constrained_layout=True)
    extent = (0, image.shape[1], image.shape[0], 0)
    axes[0].imshow(image)
    if result.tissue is not None:
        axes[0].contour(
            np.linspace(0, image.shape[1], result.tissue.shape[1]),
            np.linspace(0, image.shape[0], result.tissue.shape[0]),
            result.tissue.astype(float),
            levels=[0.5],
            colors="cyan",
            linewidths=0.8,
        )
    for i, hotspot in enumerate(result.hotspots):
        graded = i < len(result.grades)
        grade = int(result.grades[i].argmax()) if graded else None
        box = hotspot.box
        axes[0].add_patch(
            Rectangle(
                (box.x / sx, box.y / sy),
                box.w / sx,
                box.h / sy,
                fill=False,
                lw=1.5 if graded else 0.8,
                ls="-" if graded else ":",
                ec=GRADE_COLOURS[grade] if grade is not None else "black",
            )
        )
        axes[0].text(box.x / sx, box.y / sy, str(i), fontsize=7, color="black")
    axes[0].set_title(
        f"{result.filename}: class {result.cls} ({GRADE_NAMES[result.cls]}) from {result.source}"
    )
    if result.heatmap is not None:
        for c in (1, 2, 3):
            shown = axes[c].imshow(
                result.heatmap.probs[c], vmin=0, vmax=1, cmap="magma", extent=extent
            )
            axes[c].set_title(f"p({GRADE_NAMES[c]}), detector page {result.heatmap.page}")
        figure.colorbar(shown, ax=axes[1:], shrink=0.8)
    for axis in axes:
        axis.set_axis_off()
    return figure


def plot_patches(slide: Slide, result: SlideResult, page: int, patch: int, n: int = 8) -> Figure:
    """The first ``n`` graded hotspot patches as the classifier saw them, with their grades."""
    n = min(n, len(result.grades))
    figure, axes = plt.subplots(1, max(n, 1), figsize=(2.6 * max(n, 1), 3), squeeze=False)
    centers = [h.box.center for h in result.hotspots[:n]]
    patches = read_patches(slide, centers, page, patch)
    for i, (axis, pixels, probs) in enumerate(
        zip(axes[0], patches, result.grades[:n], strict=False)
    ):
        axis.imshow(pixels)
        axis.set_title(f"#{i}: {GRADE_NAMES[int(probs.argmax())]} {probs.max():.2f}", fontsize=9)
    for axis in axes[0]:
        axis.set_axis_off()
    return figure


def plot_overviews(
    slides: list[Slide], boxes: dict[str, list[Box]], max_side: int = 1000
) -> Figure:
    """Each slide's overview page with its page-0 ``boxes`` (e.g. annotations) drawn in red."""
    figure, axes = plt.subplots(1, len(slides), figsize=(5 * len(slides), 5), squeeze=False)
    for axis, slide in zip(axes[0], slides, strict=True):
        page = overview_page(slide, max_side)
        sx, sy = slide.pages[page].scale
        axis.imshow(slide.read_page(page))
        for box in boxes.get(slide.path.name, []):
            axis.add_patch(
                Rectangle((box.x / sx, box.y / sy), box.w / sx, box.h / sy, fill=False, ec="red")
            )
        axis.set_title(f"{slide.path.name}: page {page}")
        axis.set_axis_off()
    return figure


def plot_resolutions(slide: Slide, box: Box, target_mpps: tuple[float, ...]) -> Figure:
    """The same page-0 ``box`` read at the page nearest each µm/pixel in ``target_mpps``."""
    figure, axes = plt.subplots(1, len(target_mpps), figsize=(4 * len(target_mpps), 4))
    for axis, target in zip(np.atleast_1d(axes), target_mpps, strict=True):
        page = slide.page_for_mpp(target)
        axis.imshow(slide.read_region(box, page), interpolation="nearest")
        axis.set_title(f"page {page} ({slide.page_mpp(page):.2f} µm/px)")
        axis.set_axis_off()
    return figure


def run_table(directory: Path) -> pd.DataFrame:
    """One row per slide of a ``main.py --save-heatmaps`` folder: decision, hotspots graded,
    seconds by stage, pages used, and problems (from the ``<stem>.json`` summaries)."""
    rows = []
    for path in sorted(directory.glob("*.json")):
        summary = json.loads(path.read_text())
        rows.append(
            {
                "filename": summary["filename"],
                "class": summary["class"],
                "source": summary["source"],
                "graded": f"{summary['graded']}/{summary['hotspots']}",
                **{f"{k}_s": v for k, v in summary["seconds"].items()},
                **{f"{k}_page": v for k, v in summary["pages"].items()},
                "problems": "; ".join(summary["errors"])
                or ("degraded" if summary["degraded"] else ""),
            }
        )
    return pd.DataFrame(rows)
