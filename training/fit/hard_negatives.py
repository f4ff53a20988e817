"""Hard negatives from stage 1: what the trained detector would send stage 2 on benign slides.

``python -m training.fit.hard_negatives DATA_DIR CACHE DETECTOR_DIR [--per-slide 16] [--device D]``

For every cached label-0 slide, the trained detector runs over the cached detector page with
the cascade's own code (:meth:`training.data.cache.CachedSlide.hotspots`); the top
``per_slide`` hotspots are then cut from the slide's classifier page and stored as ``hard.npy`` /
``hard.csv`` (kind ``hard``, class 0) beside the slide's other patches. Stage 2 thus learns on
what stage 1 actually sends it.

Where the slide's TIF is in ``DATA_DIR`` they are its top hotspots, read from the TIF (the one
TIFF read of this step). A slide with DrivenData's light files only (a cache built with
``--source light``) has full resolution inside its annotation squares alone: its hard negatives
are the top hotspots among the places whose patch lies inside a usable crop of its (class-0)
squares (:func:`training.fit.crops.crop_hotspots`), read from the crops: the parts of its benign
squares the detector finds most lesion-like. Such a slide of a lesion class also gets the
``per_slide`` places of its squares' crops the detector is surest are benign
(:func:`training.fit.crops.crop_hotspots`, ``benign``; kind ``benign_part``, class 0): the
benign tissue beside the lesions, which a TIF's benign slides show whole. ``hard.json`` records
where they were read (``read``: ``tif`` or ``crops``).

A rerun with the same detector weights skips the slides already mined; new weights mine again.
The detector runs on the GPU when there is one (float16), else on the CPU (``--device``
chooses).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from stages.classifier import read_patches
from stages.detector import build_detector
from stages.device import choose_device
from stages.slide import Slide
from training.cli import command_parser, setup_logging
from training.data.cache import HARD, Cache, CachedSlide, crop_size, write_index
from training.data.dataset import TrainSlide
from training.fit.crops import light_items, read_from_crops
from training.stageio import load_stage_model, stage_cascade

log = logging.getLogger(__name__)


def _weights_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def mine_hard_negatives(
    cache_root: Path,
    data: Path,
    detector_dir: Path,
    per_slide: int = 16,
    device: str | None = None,
) -> int:
    """Add hard negatives to every label-0 slide of the cache, the detector on ``device`` (the
    GPU when one works, by default: :func:`stages.device.choose_device`), read from the slide's
    TIF in ``data`` when it is there, else from its light files' crops, and the benign parts of
    the squares of every lesion slide without its TIF (module doc); returns how many patches."""
    cache = Cache.open(cache_root)
    cascade = stage_cascade(detector_dir, "detector")
    torch_device = choose_device(device)
    autocast = torch.float16 if torch_device.type == "cuda" else None
    model = load_stage_model(detector_dir, "detector", build_detector(cascade.detector))
    model.to(torch_device)
    digest = _weights_digest(detector_dir / "detector.safetensors")
    size = crop_size(cascade.classifier.patch, cache.settings["cache"]["crop_factor"])
    has_tif = {name: (data / name).is_file() for name in cache.slides["filename"]}
    wanted = cache.slides["filename"].map(lambda name: not has_tif[name])
    chosen = cache.slides[(cache.slides["label"] == 0) | wanted]
    light: dict[str, TrainSlide] | None = None
    total, reads = 0, {"tif": 0, "crops": 0}
    for row in tqdm(list(chosen.itertuples(index=False)), desc="hard negatives", unit="slide"):
        folder = cache.root / row.stem
        marker = folder / "hard.json"
        done = json.loads(marker.read_text()) if marker.is_file() else {}
        if done.get("detector") == digest:
            total += done["patches"]
            continue
        cached = CachedSlide(cache, row.filename)
        heatmap, hotspots = cached.hotspots(model, cascade, torch_device, autocast)
        page = int(row.classifier_page)
        read = "tif" if has_tif[row.filename] else "crops"
        try:
            if read == "tif":
                hotspots = hotspots[:per_slide]
                centres = [h.box.center for h in hotspots]
                with Slide(data / row.filename, float(row.mpp), cascade.default_mpp) as slide:
                    patches = read_patches(slide, centres, page, size)
            else:
                if light is None:
                    light = light_items(data, cache.settings["cache"]["y_flip"])
                if row.filename not in light:
                    raise FileNotFoundError(f"neither its TIF nor its light files are in {data}")
                hotspots, patches, _ = read_from_crops(
                    light[row.filename], heatmap, cascade, page, size, per_slide, row.label > 0
                )
        except Exception as exc:  # an unreadable slide loses its hard negatives only
            log.error("%s: no hard negatives: %s: %s", row.filename, type(exc).__name__, exc)
            continue
        centres = np.array([h.box.center for h in hotspots]).reshape(-1, 2)
        np.save(folder / "hard.npy", patches)
        table = pd.DataFrame(
            {
                "index": np.arange(len(centres)),
                "kind": "hard" if row.label == 0 else "benign_part",
                "cls": 0,
                "annotation_id": "",
                "x": centres[:, 0],
                "y": centres[:, 1],
                "score": [h.score for h in hotspots],
            }
        )
        table.to_csv(folder / HARD, index=False)
        marker.write_text(
            json.dumps({"detector": digest, "patches": len(table), "read": read}) + "\n"
        )
        total += len(table)
        reads[read] += 1
    write_index(cache.root)
    log.info("hard negatives: %d patches from %d slides (read from %d TIFs, %d slides' crops)",
             total, len(chosen), reads["tif"], reads["crops"])  # fmt: skip
    return total


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.fit.hard_negatives", __doc__)
    # positional arguments in the order of every training command: data, cache, stage outputs
    parser.add_argument("data", type=Path, help="the training folder the cache was built from")
    parser.add_argument("cache", type=Path)
    parser.add_argument("detector", type=Path, help="output folder of training.fit.detector")
    parser.add_argument("--per-slide", type=int, default=16)
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1")
    args = parser.parse_args(argv)
    setup_logging()
    n = mine_hard_negatives(args.cache, args.data, args.detector, args.per_slide, args.device)
    print(f"{n} hard negatives in {args.cache}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
