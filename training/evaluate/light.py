"""The light recipe's price in score, side by side: ``python -m training.evaluate.light OUT``.

``python -m training.evaluate.light OUT [--tif-data build/train/data] [--tif-assets assets]
[--share 0.1] --test DIR [--train-set DIR] [--device cpu] [--publish DIR]``

Three cascades trained on the same slides (``--tif-data``, ``make train``'s 128 realistic
generated slides) with the same seeds and preset, graded by ``main.py`` on the same held-out
*TIF* slides (``--test``: ``make evaluate``'s):

* ``TIF-trained``: ``--tif-assets``, the assets ``make train`` wrote from ``--tif-data``;
* ``light-only``: ``python -m training.pipeline OUT/light-run OUT/light-assets --data OUT/light
  --source light``, ``OUT/light`` holding only the light files of ``--tif-data`` (``python -m
  training.data.light``);
* ``mixed``: the same on ``OUT/mixed``, the light files plus the TIFs of ``--share`` of the
  slides, those the pipeline's ``--list-tifs`` names (linked, not copied).

Each row has :mod:`training.evaluate.explain`'s scores (the cascade, detector-only and the two
oracle rows, against the written and the true labels; no exhaustive row), the worst-lesion
recall by size, the hotspot recall@k of ``--train-set``'s squares and the bytes of its training
folder. A run whose assets exist is not trained again (delete ``OUT/<name>-assets`` to retrain).
Writes ``OUT/light_price.md`` (``--publish DIR`` copies it there) and prints it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from training.bench.publish import publish
from training.cli import command_parser, setup_logging
from training.data.light import DOWNSAMPLED, REGIONS
from training.evaluate.explain import REPO, evaluate

log = logging.getLogger(__name__)

#: The file the table is written to.
NAME = "light_price.md"
#: The rows of :mod:`training.evaluate.explain` shown, with their column names.
SCORES = {
    "cascade": "score",
    "detector_only": "detector only",
    "oracle_hotspots": "oracle hotspots",
    "oracle_grades": "oracle grades",
}


def folder_bytes(data: Path) -> int:
    """Bytes of the slides' files in the training folder ``data``: its TIFs (links followed)
    and its light files."""
    files = [*data.glob("*.tif"), *(data / DOWNSAMPLED).glob("*"), *(data / REGIONS).glob("*")]
    return sum(f.stat().st_size for f in files)


def _run(*args: str) -> str:
    command = [sys.executable, "-m", *args]
    log.info("%s", " ".join(command))
    return subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout


def light_folders(tif_data: Path, out: Path, share: float) -> dict[str, Path]:
    """``OUT/light`` (the light files of ``tif_data``) and ``OUT/mixed`` (the same, hard-linked,
    with links to the TIFs of ``ceil(share × slides)`` slides named by ``--list-tifs``); made
    once."""
    light, mixed = out / "light", out / "mixed"
    if not (light / "train_metadata.csv").is_file():
        _run("training.data.light", str(tif_data), str(light))
    if not (mixed / "train_metadata.csv").is_file():
        slides = len(pd.read_csv(light / "train_labels.csv"))
        listed = _run("training.pipeline", str(out / "unused"), str(out / "unused"),
                      "--data", str(light), "--source", "light",
                      "--list-tifs", str(math.ceil(share * slides)))  # fmt: skip
        staging = out / "mixed.partial"
        subprocess.run(["cp", "-al", str(light), str(staging)], check=True)
        for name in listed.split():
            os.symlink((tif_data / name).resolve(), staging / name)
        staging.rename(mixed)
    return {"light-only": light, "mixed": mixed}


def train_light(data: Path, out: Path, name: str) -> Path:
    """``OUT/<name>-assets`` trained by the pipeline from ``data`` with ``--source light``
    (``make train``'s seed and preset), unless they exist."""
    assets = out / f"{name}-assets"
    if not (assets / "config.json").is_file():
        _run("training.pipeline", str(out / f"{name}-run"), str(assets), "--data", str(data),
             "--source", "light")  # fmt: skip
    return assets


def row(name: str, data: Path, figures: dict) -> dict:
    """One row of the table: the run's scores (written / true labels), worst-lesion recall by
    size, recall@k and training bytes."""
    out: dict[str, object] = {"training": name, "download (MB)": folder_bytes(data) / 1e6}
    for key, column in SCORES.items():
        scores = figures["scores"][key]
        out[column] = f"{scores['written']:.4f} / {scores['true']:.4f}"
    for group in figures["worst_lesion_recall"]:
        if "µm" in group["group"]:
            out[f"recall {group['group']}"] = f"{group['recall']:.3f}"
    if "recall" in figures:
        out |= {f"recall@{k}": f"{figures['recall'][k]:.3f}" for k in ("4", "32")}
    return out


def markdown(rows: list[dict], test: Path, slides: int) -> str:
    """The table, with what it was measured on."""
    frame = pd.DataFrame(rows)
    frame["download (MB)"] = frame["download (MB)"].map(lambda v: f"{v:,.1f}")
    header = "| " + " | ".join(frame.columns) + " |"
    lines = [header, "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return (
        f"Graded by main.py on {slides} held-out TIF slides ({test}); scores against the written "
        "/ the true labels.\n\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.evaluate.light", __doc__)
    parser.add_argument("out", type=Path, help="folder for the light folders, runs and table")
    parser.add_argument("--tif-data", type=Path, default=REPO / "build" / "train" / "data")
    parser.add_argument("--tif-assets", type=Path, default=REPO / "assets")
    parser.add_argument("--share", type=float, default=0.1, help="slides with TIFs, mixed")
    parser.add_argument("--test", type=Path, required=True, help="held-out test-layout folder")
    parser.add_argument("--train-set", type=Path, help="held-out train-layout folder (recall)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--publish", type=Path, help="copy the table here")
    args = parser.parse_args(argv)
    setup_logging()
    if not (args.tif_data / "train_metadata.csv").is_file():
        parser.error(f"{args.tif_data}: no training folder (make train writes it)")
    runs = {"TIF-trained": (args.tif_data, args.tif_assets)}
    for name, data in light_folders(args.tif_data, args.out, args.share).items():
        runs[name] = (data, train_light(data, args.out, name))
    rows, figures = [], {}
    for name, (data, assets) in runs.items():
        figures[name] = evaluate(args.test, assets, args.out / f"eval-{name}", args.device,
                                 args.train_set, exhaustive=False)  # fmt: skip
        rows.append(row(name, data, figures[name]))
    (args.out / "light_price.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = markdown(rows, args.test, figures["TIF-trained"]["slides"])
    (args.out / NAME).write_text(text + "\n")
    if args.publish is not None:
        publish([args.out / NAME], args.publish)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
