"""Does the frozen-encoder path learn? ``python -m training.evaluate.frozen_head OUT``

``[--assets assets] [--slides 32] [--seed 3100] [--epochs 30]``

On generated slides no step of training saw (``--seed``), it builds a training cache with the
shipped config, then compares on that cache's validation patches (fold 0):

* **fine-tuned**: the shipped classifier as it is (its encoder and head trained together by
  ``make train``), graded on the validation patches;
* **frozen + linear head**: the shipped classifier's encoder frozen, its features cached once
  (:mod:`training.fit.head`), a fresh linear head trained on the cache's training patches; its
  score is that of its last epoch, so that no choice was made on the validation patches.

It prints both weighted patch scores (the competition metric on patches) and their difference,
and writes them to ``OUT/frozen_head.json``. This is the path a pathology foundation model takes
(a frozen encoder, a head on cached features), shown here on an encoder that has seen the
generated slides.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from stages.config import load_assets
from stages.metric import confusion_matrix
from training.cli import command_parser, setup_logging
from training.data.cache import Cache, CacheConfig, build_cache
from training.data.synthetic import generate_dataset
from training.fit.classifier import DEFAULTS
from training.fit.head import train_head
from training.fit.patches import PatchSet, patch_metrics, predict_logits

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def compare(out: Path, assets_dir: Path, slides: int, seed: int, epochs: int) -> dict:
    """The two validation patch scores (see the module doc), also saved as JSON."""
    data = out / "data"
    if not (data / "train_metadata.csv").is_file():
        generate_dataset(data, slides, seed, "train")
    assets = load_assets(assets_dir, torch.device("cpu"))
    if not (out / "cache" / "slides.csv").is_file():
        build_cache(data, out / "cache", assets.config, CacheConfig(seed=seed), folds=4)
    cache = Cache.open(out / "cache")
    val_rows = cache.patches[cache.patches["fold"] == 0]
    val = PatchSet(cache, val_rows, assets.config.classifier, 0, False, seed)
    logits = predict_logits(assets.classifier, DataLoader(val, batch_size=64), assets.device)
    labels = val_rows["cls"].to_numpy(np.int64)
    tuned = patch_metrics(confusion_matrix(labels, logits.argmax(1)))["val_score"]
    options = replace(
        DEFAULTS,
        train_blocks=0,
        init=str(assets_dir / assets.config.classifier.weights),
        epochs=epochs,
        val_fold=0,
        seed=seed,
    )
    train_head(out / "cache", out / "head", assets.config, options)
    history = json.loads((out / "head" / "classifier.json").read_text())["history"]
    frozen = history[-1]["val_score"]  # the last epoch's: no epoch chosen on these patches
    result = {
        "validation_patches": len(val_rows),
        "fine_tuned_score": tuned,
        "frozen_linear_head_score": frozen,
        "difference": tuned - frozen,
        "epochs": epochs,
        "slides": slides,
        "seed": seed,
    }
    (out / "frozen_head.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.evaluate.frozen_head", __doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--assets", type=Path, default=REPO / "assets")
    parser.add_argument("--slides", type=int, default=32)
    parser.add_argument("--seed", type=int, default=3100)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    setup_logging()
    r = compare(args.out, args.assets, args.slides, args.seed, args.epochs)
    print(
        f"{r['validation_patches']} validation patches of {r['slides']} unseen generated slides "
        f"(seed {r['seed']}): fine-tuned classifier {r['fine_tuned_score']:.4f}, frozen encoder "
        f"+ linear head {r['frozen_linear_head_score']:.4f} (last of {r['epochs']} epochs), "
        f"difference {r['difference']:+.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
