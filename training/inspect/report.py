"""One self-contained HTML page of a run: what the cascade looked at and why it chose each class.

``python -m training.inspect.report RUN_DIR --out report.html [--labels test_labels.csv]
[--data DATA_DIR]``

``RUN_DIR`` is what ``main.py --save-heatmaps`` wrote; no network runs. ``--data`` (the slides'
folder) adds each slide's overview image and the patches stage 2 graded, read with pyvips;
without it the tissue mask stands in for the overview. Every image is a PNG embedded in the page,
so the file opens in any browser, offline. The page holds:

* a summary: classes predicted, seconds per stage, degraded and failed slides; with
  ``--labels`` the score, the confusion matrix and the slides ranked by the cost of their error;
* per slide (worst error first with labels, else in run order): the overview with the tissue
  outline, the heatmap (colour bar) and the hotspots ranked and coloured by grade (solid: graded,
  dotted: left unexpanded); the patch gallery with class probabilities; the slide's class
  probabilities beside the expected cost of each answer (*why this class*); the time spent
  against the slide's allotment.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from stages.classifier import read_patches
from stages.decision import expected_costs
from stages.metric import ERROR_MATRIX, confusion_matrix, score
from stages.result import SlideResult
from stages.slide import Slide
from stages.submission import classes_by_filename, read_table
from training.cli import command_parser, setup_logging
from training.inspect.figures import plot_confusion
from training.inspect.inspection import GRADE_COLOURS, GRADE_NAMES, overview_page

log = logging.getLogger(__name__)

STAGES = ("decode", "tissue", "detector", "hotspots", "classifier", "decision")
#: Patches shown per slide.
GALLERY = 8


def png(figure: Figure, dpi: int = 90) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def plot_overlay(
    result: SlideResult, image: np.ndarray | None, scale: tuple[float, float]
) -> Figure:
    """The slide overview (``image``, ``(h, w, 3)`` uint8 whose pixels are ``scale`` page-0 px;
    None: the tissue mask instead) with the tissue outline, the any-lesion heatmap (colour bar)
    and the hotspots, ranked, coloured by grade, solid when graded and dotted when not."""
    figure, axis = plt.subplots(figsize=(7, 5.2), constrained_layout=True)
    if image is None:
        tissue = result.tissue if result.tissue is not None else np.zeros((2, 2), bool)
        image = np.where(tissue[..., None], 215, 250).astype(np.uint8).repeat(3, axis=2)
        scale = result.tissue_scale
    shape = image.shape[:2]
    width, height = shape[1] * scale[0], shape[0] * scale[1]  # page-0 px the image covers
    extent = (0, shape[1], shape[0], 0)
    axis.imshow(image, extent=extent)
    if result.heatmap is not None:
        lesion = 1.0 - result.heatmap.probs[0]
        shown = np.ma.masked_where(~(result.heatmap.tissue & result.heatmap.visited), lesion)
        overlay = axis.imshow(shown, cmap="magma", vmin=0, vmax=1, alpha=0.45, extent=extent)
        figure.colorbar(overlay, ax=axis, shrink=0.8, label="detector: p(any lesion)")
    if result.tissue is not None and result.tissue.any():
        axis.contour(
            np.linspace(0, shape[1], result.tissue.shape[1]),
            np.linspace(0, shape[0], result.tissue.shape[0]),
            result.tissue.astype(float),
            levels=[0.5],
            colors="cyan",
            linewidths=0.8,
        )
    sx, sy = width / shape[1], height / shape[0]
    for rank, hotspot in enumerate(result.hotspots):
        graded = rank < len(result.grades)
        colour = GRADE_COLOURS[int(result.grades[rank].argmax())] if graded else "grey"
        box = hotspot.box
        axis.add_patch(
            Rectangle(
                (box.x / sx, box.y / sy),
                max(box.w / sx, 2),
                max(box.h / sy, 2),
                fill=False,
                lw=1.6 if graded else 0.8,
                ls="-" if graded else ":",
                ec=colour,
            )
        )
        if rank < 10:
            axis.text(box.right / sx, box.y / sy, str(rank + 1), fontsize=7, color=colour)
    axis.set_axis_off()
    axis.set_title(f"{result.filename}: class {result.cls} ({GRADE_NAMES[result.cls]})")
    return figure


def plot_decision(result: SlideResult) -> Figure:
    """The slide's class probabilities beside the expected competition cost of each answer."""
    probs = np.asarray(result.probs, dtype=np.float64)
    costs = expected_costs(probs)
    figure, axes = plt.subplots(1, 2, figsize=(7, 2.6), constrained_layout=True)
    classes = np.arange(len(probs))
    axes[0].bar(classes, probs, color=GRADE_COLOURS)
    axes[0].set_ylim(0, 1)
    axes[0].set_title("P(slide class)")
    colours = ["black" if c == result.cls else "lightgrey" for c in classes]
    axes[1].bar(classes, costs, color=colours)
    axes[1].set_title("expected cost of each answer")
    for axis in axes:
        axis.set_xticks(classes, [GRADE_NAMES[c] for c in classes], fontsize=8)
    return figure


def plot_gallery(patches: np.ndarray, grades: np.ndarray) -> Figure:
    """Graded patches ``(n, P, P, 3)`` with their class probabilities ``(n, 4)`` as titles."""
    n = max(len(patches), 1)
    figure, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.3), squeeze=False)
    for rank, (axis, pixels, probs) in enumerate(zip(axes[0], patches, grades, strict=False)):
        axis.imshow(pixels)
        grade = int(probs.argmax())
        axis.set_title(
            f"#{rank + 1} {GRADE_NAMES[grade]}\n" + " ".join(f"{p:.2f}" for p in probs),
            fontsize=7,
            color=GRADE_COLOURS[grade],
        )
    for axis in axes[0]:
        axis.set_axis_off()
    return figure


def plot_time(result: SlideResult) -> Figure:
    """Seconds by stage, stacked, against the slide's allotment (a line, when known)."""
    seconds = result.seconds
    figure, axis = plt.subplots(figsize=(7, 1.3), constrained_layout=True)
    left = 0.0
    for stage, colour in zip(STAGES, plt.cm.tab10.colors, strict=False):
        value = seconds.get(stage, 0.0)
        axis.barh(0, value, left=left, color=colour, label=stage)
        left += value
    allotment = seconds.get("allotment")
    if allotment is not None and np.isfinite(allotment) and allotment < 10 * max(left, 1e-3):
        axis.axvline(allotment, color="black", ls="--", label="allotment")
    axis.set_yticks([])
    axis.set_xlabel("seconds")
    axis.legend(ncol=7, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.6), frameon=False)
    return figure


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.2f}", border=0)


def overview(
    result: SlideResult, data: Path | None
) -> tuple[np.ndarray | None, tuple[float, float]]:
    """The slide's overview page and its scale, when its file is in ``data``."""
    path = None if data is None else data / result.filename
    if path is None or not path.is_file() or result.source == "fallback":
        return None, (1.0, 1.0)
    with Slide(path) as slide:
        page = overview_page(slide, 1200)
        return slide.read_page(page), slide.pages[page].scale


def first_overlay(result: SlideResult, data: Path | None) -> bytes:
    """PNG of :func:`plot_overlay` for ``result`` (at a higher resolution than in the page)."""
    image, scale = overview(result, data)
    return png(plot_overlay(result, image, scale), dpi=110)


def slide_section(result: SlideResult, data: Path | None, label: int | None, patch: int) -> str:
    """One slide's part of the page."""
    image, scale = overview(result, data)
    patches = None
    graded = result.hotspots[: min(len(result.grades), GALLERY)]
    if image is not None and graded and "classifier" in result.pages:
        with Slide(data / result.filename) as slide:
            centers = [h.box.center for h in graded]
            patches = read_patches(slide, centers, result.pages["classifier"], patch)
    seconds = result.seconds
    used = seconds.get("slide", seconds.get("total", 0.0))
    allotment = seconds.get("allotment")
    verdict = (
        ""
        if label is None
        else (f", true class {label}, error cost {ERROR_MATRIX[label, result.cls]:.1f}")
    )
    parts = [
        f'<section class="slide" id="{html.escape(result.filename)}">',
        f"<h3>{html.escape(result.filename)}: class {result.cls} "
        f"({GRADE_NAMES[result.cls]}) from {html.escape(result.source)}{verdict}</h3>",
        f"<p>{len(result.grades)} of {len(result.hotspots)} hotspots graded; "
        f"{used:.2f} s"
        + (f" of an allotment of {allotment:.2f} s" if allotment else "")
        + (f"; problems: {html.escape('; '.join(result.problems()))}" if result.degraded else "")
        + "</p>",
        _img(png(plot_overlay(result, image, scale)), f"{result.filename} overview"),
        "<p>Why this class: the expected cost of each answer is "
        + ", ".join(
            f"{GRADE_NAMES[c]} {cost:.3f}" for c, cost in enumerate(expected_costs(result.probs))
        )
        + f"; {GRADE_NAMES[result.cls]} costs least.</p>",
        _img(png(plot_decision(result)), f"{result.filename} decision"),
    ]
    if patches is not None:
        gallery = plot_gallery(patches, result.grades[: len(patches)])
        parts.append(_img(png(gallery), f"{result.filename} patches"))
    if seconds:
        parts.append(_img(png(plot_time(result)), f"{result.filename} time"))
    parts.append("</section>")
    return "\n".join(parts)


def build_report(
    run: Path,
    labels: Path | None = None,
    data: Path | None = None,
    patch: int = 128,
    overlay: Path | None = None,
) -> str:
    """The HTML page of the run in ``run`` (module doc); ``overlay``: also write the first
    slide's overview figure (the worst error, with labels) there as PNG."""
    results = [SlideResult.load(p) for p in sorted(run.glob("*.npz"))]
    if not results:
        raise ValueError(f"{run}: no saved results (<stem>.npz); run main.py --save-heatmaps")
    truth: dict[str, int] = {}
    if labels is not None:
        truth = classes_by_filename(read_table(labels))
    predicted = np.array([r.cls for r in results])
    summary = [
        f"<p>{len(results)} slides; classes predicted (0–3): "
        f"{np.bincount(predicted, minlength=4).tolist()}; "
        f"graded from patches {sum(r.source == 'patches' for r in results)}, "
        f"degraded {sum(r.degraded for r in results)}, "
        f"failed {sum(r.source == 'fallback' for r in results)}.</p>",
        _table(
            pd.DataFrame([{s: r.seconds.get(s, 0.0) for s in (*STAGES, "total")} for r in results])
            .describe()
            .loc[["mean", "50%", "max"]]
            .reset_index(names="seconds")
        ),
    ]
    failed = [r for r in results if r.degraded or r.source == "fallback"]
    if failed:
        rows = [{"slide": r.filename, "problems": "; ".join(r.problems())} for r in failed]
        summary.append(_table(pd.DataFrame(rows)))
    order = list(range(len(results)))
    if truth:
        known = [i for i in order if results[i].filename in truth]
        y_true = np.array([truth[results[i].filename] for i in known])
        y_pred = predicted[known]
        summary.append(f"<p>Score {score(y_true, y_pred):.4f} on {len(known)} labelled slides.</p>")
        matrix = confusion_matrix(y_true, y_pred)
        summary.append(
            _img(png(plot_confusion(matrix, "rows true, columns predicted")), "confusion matrix")
        )
        cost = {i: ERROR_MATRIX[truth[results[i].filename], results[i].cls] for i in known}
        order = sorted(order, key=lambda i: -cost.get(i, 0.0))
        ranked = [
            {
                "slide": '<a href="#{0}">{0}</a>'.format(html.escape(results[i].filename)),
                "true": truth[results[i].filename],
                "predicted": results[i].cls,
                "error cost": cost[i],
            }
            for i in order
            if cost.get(i, 0.0) > 0
        ]
        if ranked:
            summary.append("<h3>Errors, worst first</h3>")
            summary.append(pd.DataFrame(ranked).to_html(index=False, escape=False, border=0))
    sections = [
        slide_section(results[i], data, truth.get(results[i].filename), patch) for i in order
    ]
    if overlay is not None:
        overlay.parent.mkdir(parents=True, exist_ok=True)
        overlay.write_bytes(first_overlay(results[order[0]], data))
    return PAGE.format(
        title=html.escape(f"TissueNet run: {run}"),
        summary="\n".join(summary),
        slides="\n".join(sections),
    )


#: Chromium flags for a closed network: no background connections, no sandbox as root.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
#: In the page: each image drawn on a canvas, its size and the spread of its pixel values.
_IMAGE_STATS = """els => els.map(img => {
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  if (!img.complete || !c.width) return {alt: img.alt, width: 0, height: 0, spread: 0};
  const g = c.getContext("2d"); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let lo = 255, hi = 0;
  for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
  return {alt: img.alt, width: c.width, height: c.height, spread: hi - lo};
})"""


def open_in_browser(
    page: Path, screenshot: Path | None = None, chromium: str = "/usr/bin/chromium"
) -> tuple[list[str], list[dict]]:
    """Load ``page`` in headless Chromium (Playwright): the console errors and page errors, and
    per image its rendered size and pixel spread (0: blank); with ``screenshot``, the first
    screen is saved there as PNG."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 1500})
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(page.resolve().as_uri())
            tab.wait_for_load_state("load")
            images = tab.eval_on_selector_all("img", _IMAGE_STATS)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                tab.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return errors, images


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
section.slide {{ border-top: 1px solid #ccc; padding-top: 1em; margin-top: 1.5em; }}
img {{ display: block; max-width: 100%; margin: 0.5em 0; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ padding: 2px 8px; text-align: right; }}
</style></head>
<body><h1>{title}</h1>
<h2>Summary</h2>
{summary}
<h2>Slides</h2>
{slides}
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.inspect.report", __doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--data", type=Path, help="the slides' folder (overviews and patches)")
    parser.add_argument("--patch", type=int, default=128, help="classifier patch size, px")
    parser.add_argument(
        "--screenshot", type=Path, help="also open the page in headless Chromium, save its top"
    )
    parser.add_argument("--overlay", type=Path, help="also save the first slide's overview PNG")
    args = parser.parse_args(argv)
    setup_logging()
    page = build_report(args.run, args.labels, args.data, args.patch, args.overlay)
    args.out.write_text(page)
    log.info("wrote %s", args.out)
    if args.screenshot is not None:
        errors, images = open_in_browser(args.out, args.screenshot)
        blank = [i["alt"] for i in images if i["spread"] == 0]
        log.info(
            "Chromium: %d images, %d blank, console errors %s; screenshot %s",
            len(images),
            len(blank),
            errors or "none",
            args.screenshot,
        )
        return 1 if errors or blank else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
