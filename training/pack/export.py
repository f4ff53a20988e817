"""Write an assets folder: ``config.json`` and randomly initialised weights for both networks.

``python -m training.pack.export OUT_DIR [--preset tiny|standard] [--seed S]``

Random weights exercise every mechanism of the cascade (tests, demo, packing) but grade nothing
meaningfully; the config's ``note`` says so, and the runtime logs it. Trained weights are written
into the same layout by the training code.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import torch

from stages.classifier import ClassifierConfig, PatchClassifier
from stages.config import CascadeConfig, load_assets, save_config
from stages.detector import DetectorConfig, build_detector
from stages.nets import save_weights

log = logging.getLogger(__name__)

#: Small networks that run a slide in seconds on a CPU (what tests and the demo use).
TINY = CascadeConfig(
    detector=DetectorConfig(
        encoder="tu-mobilenetv3_small_050",
        decoder_channels=(64, 32, 16, 16, 8),
        window=256,
        overlap=32,
        batch_size=8,
    ),
    classifier=ClassifierConfig(encoder="tu-mobilenetv3_small_050", patch=128, batch_size=16),
)
PRESETS = {"tiny": TINY, "standard": CascadeConfig()}


def init_assets(out: Path, config: CascadeConfig = TINY, seed: int = 0, note: str = "") -> Path:
    """Write ``config`` and seeded random weights for both networks into ``out``; return ``out``."""
    torch.manual_seed(seed)
    config = replace(config, note=note or f"random initialisation (seed {seed}): untrained")
    out.mkdir(parents=True, exist_ok=True)
    save_weights(build_detector(config.detector), out / config.detector.weights)
    save_weights(PatchClassifier(config.classifier), out / config.classifier.weights)
    save_config(config, out)
    load_assets(out, torch.device("cpu"))  # what was written must load
    log.info("wrote %s (%s)", out, config.note)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.pack.export", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    init_assets(args.out, PRESETS[args.preset], args.seed)


if __name__ == "__main__":
    main()
