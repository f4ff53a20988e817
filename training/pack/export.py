"""Write ``assets/``: ``config.json`` plus both stages' weights, atomically, with provenance.

``python -m training.pack.export WORK_DIR ASSETS [--data-note TEXT]`` assembles what the
trainers wrote under ``WORK_DIR`` (``detector/``, ``classifier/``, ``decision/``) into ASSETS.
``python -m training.pack.export --random ASSETS [--preset tiny|standard] [--seed S]`` writes
randomly initialised networks instead (tests use them: they exercise every mechanism but grade
nothing).

The folder is written beside its destination and swapped in with renames, so a reader never
sees half an export. ``config.json`` records the provenance (data, command, commit, date,
validation metrics); :func:`stages.config.load_assets` validates it and checks the weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from stages.classifier import ClassifierConfig, PatchClassifier
from stages.config import CascadeConfig, Provenance, from_dict, load_assets, save_config
from stages.detector import DetectorConfig, build_detector
from stages.nets import save_weights
from stages.tissue import TissueConfig
from training.cli import command_parser, setup_logging

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]

#: Small networks that grade a real-size slide in under a second on a CPU (training on a CPU,
#: tests, demo): an FPN detector whose output is its quarter-resolution map (never upsampled)
#: on page 5 (~8 µm/px; heatmap cells of ~32 µm), in 128 px windows that follow the tissue
#: closely, and the tissue mask at ~32 µm/px.
TINY = CascadeConfig(
    tissue=TissueConfig(target_mpp=32.0),
    detector=DetectorConfig(
        arch="FPN",
        encoder="tu-mobilenetv3_small_050",
        decoder_channels=(32, 32),
        output_stride=4,
        target_mpp=8.0,
        window=128,
        overlap=16,
        batch_size=32,
    ),
    classifier=ClassifierConfig(encoder="tu-mobilenetv3_small_050", patch=128, batch_size=16),
)
#: ResNet-18 networks for real tissue (trained on a GPU; graded in a few seconds a slide on a
#: CPU): an FPN detector at output stride 4 on page 5 (~8 µm/px, 256 px windows of 2 mm; page 4,
#: ``target_mpp`` 4, sees finer detail at 4 × the cost), the classifier on 256 px patches at
#: 0.5 µm/px.
STANDARD = CascadeConfig(
    detector=DetectorConfig(
        arch="FPN",
        decoder_channels=(64, 32),
        output_stride=4,
        target_mpp=8.0,
        window=256,
        overlap=32,
        batch_size=16,
    )
)
PRESETS = {"tiny": TINY, "standard": STANDARD}


def load_recipe(name: str) -> CascadeConfig:
    """A preset (``tiny``, ``standard``) or a cascade config JSON file: the networks and pages
    that training starts from."""
    if name in PRESETS:
        return PRESETS[name]
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"--config {name!r}: neither a preset {sorted(PRESETS)} nor a file")
    return from_dict(CascadeConfig, json.loads(path.read_text()), str(path))


def git_commit(repo: Path = REPO) -> str:
    """The checkout's commit (``+dirty`` when it has changes), or ``unknown``."""

    def git(*args: str) -> str:
        command = ["git", "-C", str(repo), *args]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    try:
        commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def write_assets(
    out: Path, config: CascadeConfig, detector: torch.nn.Module, classifier: torch.nn.Module
) -> Path:
    """Write ``config`` and both networks' weights as the folder ``out``, atomically: built in
    a sibling temporary folder, checked with :func:`load_assets`, then renamed into place (an
    existing ``out`` is replaced). Returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_weights(detector, tmp / config.detector.weights)
        save_weights(classifier, tmp / config.classifier.weights)
        save_config(config, tmp)
        load_assets(tmp, torch.device("cpu"))  # what was written must load
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s)", out, config.note)
    return out


def init_assets(out: Path, config: CascadeConfig = TINY, seed: int = 0, note: str = "") -> Path:
    """Write ``config`` and seeded random weights for both networks into ``out``; return ``out``."""
    torch.manual_seed(seed)
    config = replace(
        config,
        note=note or f"random initialisation (seed {seed}): untrained",
        provenance=Provenance(
            data="none", command=f"init_assets(seed={seed})", commit=git_commit(), date=now()
        ),
    )
    return write_assets(
        out, config, build_detector(config.detector), PatchClassifier(config.classifier)
    )


def assemble(work: Path, note: str, data: str) -> CascadeConfig:
    """The cascade config that the stage outputs under ``work`` make: the decision fit's
    (``decision/decision.json``, which holds the detector's and classifier's configs as it ran
    them, checked against ``detector/`` and ``classifier/``), with the provenance: ``data``
    describes the training data; the metrics are every stage's validation figures."""
    from training.fit.common import read_stage

    stages = {
        name: read_stage(work / name, name) for name in ("detector", "classifier", "decision")
    }
    config = from_dict(CascadeConfig, stages["decision"]["cascade"], "decision.json")
    for name in ("detector", "classifier"):
        if stages[name]["config"] != stages["decision"]["cascade"][name]:
            raise ValueError(f"the decision was fitted with another {name} than {work / name}")
    metrics = {
        f"{name}_{key}": float(value)
        for name, stage in stages.items()
        for key, value in stage["metrics"].items()
    }
    return replace(
        config,
        note=note,
        provenance=Provenance(
            data=data,
            command=" && ".join(dict.fromkeys(stage["command"] for stage in stages.values())),
            commit=git_commit(),
            date=now(),
            metrics=metrics,
        ),
    )


def export(work: Path, out: Path, note: str, data: str) -> Path:
    """:func:`assemble` the trained stages under ``work`` and write them as ``out``."""
    from training.fit.common import load_stage_model

    config = assemble(work, note, data)
    detector = load_stage_model(work / "detector", "detector", build_detector(config.detector))
    classifier = load_stage_model(
        work / "classifier", "classifier", PatchClassifier(config.classifier)
    )
    return write_assets(out, config, detector, classifier)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.pack.export", __doc__)
    parser.add_argument("source", type=Path, nargs="?", help="work folder of the trainers")
    parser.add_argument("out", type=Path, help="assets folder to write")
    parser.add_argument("--random", action="store_true", help="random weights (no training)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="one line saying what the weights are")
    parser.add_argument("--data", default="", help="what the stages were trained on")
    args = parser.parse_args(argv)
    setup_logging()
    if args.random:
        init_assets(args.out, PRESETS[args.preset], args.seed, args.note)
    elif args.source is None:
        parser.error("give the trainers' work folder, or --random")
    else:
        export(args.source, args.out, args.note or "trained", args.data or str(args.source))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
