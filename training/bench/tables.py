"""The benchmark's report: the machine line, its Markdown tables and its two plots."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import pandas as pd
import torch

from training.bench.runner import STAGES

log = logging.getLogger(__name__)


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
