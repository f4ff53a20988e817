"""Helper of ``tests/e2e/test_cluster.py``: the classifier trainer, unchanged, run under DDP on
two CPU processes (gloo), each process saving what it ends with.

``python tests/e2e/ddp_step.py CACHE OUT CONFIG``: Lightning's launcher starts the second process by
running this same command again. Each rank writes ``OUT/rank<R>.safetensors`` (its network's
parameters at the end of fitting) and ``OUT/rank<R>.json`` (world size, steps taken); rank 0
also writes ``OUT/start.safetensors``, the parameters before the first step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
from safetensors.torch import save_file

from training.fit.classifier import train_classifier
from training.presets import TrainOptions, load_preset


def parameters(module: pl.LightningModule) -> dict:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.named_parameters()}


class SaveEachRank(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.global_rank == 0:
            save_file(parameters(module), str(self.out / "start.safetensors"))

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        rank = trainer.global_rank
        save_file(parameters(module), str(self.out / f"rank{rank}.safetensors"))
        info = {"world_size": trainer.world_size, "steps": trainer.global_step}
        (self.out / f"rank{rank}.json").write_text(json.dumps(info))


def main(cache: str, out: str, config: str) -> int:
    options = TrainOptions(
        epochs=1, batch_size=4, samples=16, workers=0, accelerator="cpu", devices="2"
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    train_classifier(
        Path(cache), Path(out), load_preset(config).cascade, options, [SaveEachRank(Path(out))]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:4]))
