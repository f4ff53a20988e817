"""Write ``assets/``: ``config.json`` plus both stages' weights, atomically, with provenance.

``python -m training.pack.export WORK_DIR ASSETS [--data-note TEXT]`` assembles what the
trainers wrote under ``WORK_DIR`` (``detector/``, ``classifier/``, ``decision/``) into ASSETS.
``python -m training.pack.export --random ASSETS [--preset NAME|FILE.json] [--seed S]`` writes
randomly initialised networks instead (tests use them: they exercise every mechanism but grade
nothing). ``--classifier-encoder NAME --classifier-weights FILE`` makes stage 2's encoder the
timm model ``NAME`` (a :data:`stages.encoders.ENCODER_CARDS` key such as ``uni``, or any timm
model name) with the weights of ``FILE``, copied into ASSETS with its sha256 in ``config.json`` (the
head random with ``--random``).

The folder is written beside its destination and swapped in with renames, so a reader never
sees half an export. ``config.json`` records the provenance (data, command, commit, date,
validation metrics); :func:`stages.config.load_assets` validates it and checks the weights.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import timm
import torch

from stages.classifier import ClassifierConfig, PatchClassifier
from stages.config import CascadeConfig, Provenance, from_dict
from stages.detector import build_detector
from stages.encoders import ENCODER_CARDS, load_encoder_checkpoint, sha256
from training.cli import command_parser, setup_logging
from training.presets import PRESETS, TINY, load_preset
from training.stageio import load_stage_model, read_stage, write_assets

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def encoder_config(classifier: ClassifierConfig, name: str, weights: Path) -> ClassifierConfig:
    """``classifier`` with the timm encoder ``name`` and its weights in the file ``weights``.

    The model's arguments, input size, normalisation and pooling come from, in this order: the
    card of that name (:data:`stages.encoders.ENCODER_CARDS`, from the model cards); a
    ``config.json`` beside the file in the Hugging Face timm layout (``architecture``,
    ``model_args``, ``pretrained_cfg``); timm's own pretrained config of the model name. The
    weight file keeps its suffix (``encoder.safetensors``, ``encoder.bin``)."""
    if not weights.is_file():
        raise ValueError(f"--classifier-weights {weights}: no such file")
    if name in ENCODER_CARDS:
        known = ENCODER_CARDS[name]
        model, kwargs, size = known.model, dict(known.kwargs), known.size
        mean, std, pool, mpp = known.mean, known.std, known.pool, known.mpp
    else:
        card = weights.with_name("config.json")
        hub = json.loads(card.read_text()) if card.is_file() else {}
        model = hub.get("architecture", name)
        if not timm.is_model(model):
            known_names = sorted(ENCODER_CARDS)
            raise ValueError(f"--classifier-encoder {name!r}: neither {known_names} nor timm's")
        cfg = timm.models.get_pretrained_cfg(model)
        pretrained = (cfg.to_dict() if cfg is not None else {}) | hub.get("pretrained_cfg", {})
        kwargs = dict(hub.get("model_args", {}))
        size = int(pretrained.get("input_size", (3, 224, 224))[-1])
        mean = tuple(pretrained.get("mean", classifier.mean))
        std = tuple(pretrained.get("std", classifier.std))
        pool, mpp = "token", classifier.target_mpp
    return replace(
        classifier,
        encoder=model,
        source="timm",
        encoder_kwargs=kwargs,
        pool=pool,
        patch=size,
        target_mpp=mpp,
        mean=mean,
        std=std,
        encoder_weights=f"encoder{weights.suffix}",
        encoder_sha256=sha256(weights),
    )


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


def init_assets(
    out: Path,
    config: CascadeConfig = TINY,
    seed: int = 0,
    note: str = "",
    encoder_file: Path | None = None,
) -> Path:
    """Write ``config`` and seeded random weights for both networks into ``out`` (with
    ``encoder_file``, the classifier's encoder from that checkpoint, the config's
    ``encoder_weights``); return ``out``."""
    torch.manual_seed(seed)
    config = replace(
        config,
        note=note or f"random initialisation (seed {seed}): untrained",
        provenance=Provenance(
            data="none", command=f"init_assets(seed={seed})", commit=git_commit(), date=now()
        ),
    )
    classifier = PatchClassifier(config.classifier)
    if encoder_file is not None:
        load_encoder_checkpoint(classifier.encoder, encoder_file)
    return write_assets(out, config, build_detector(config.detector), classifier, encoder_file)


def assemble(work: Path, note: str, data: str) -> CascadeConfig:
    """The cascade config that the stage outputs under ``work`` make: the decision fit's
    (``decision/decision.json``, which holds the detector's and classifier's configs as it ran
    them, checked against ``detector/`` and ``classifier/``), with the provenance: ``data``
    describes the training data; the metrics are every stage's validation figures."""
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
    parser.add_argument(
        "--preset", default="tiny", help=f"the networks: {sorted(PRESETS)} or a JSON file"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--classifier-encoder",
        default=None,
        help=f"stage 2's timm encoder: one of {sorted(ENCODER_CARDS)} or a timm model name",
    )
    parser.add_argument(
        "--classifier-weights", type=Path, default=None, help="its local checkpoint file"
    )
    parser.add_argument("--note", default="", help="one line saying what the weights are")
    parser.add_argument("--data", default="", help="what the stages were trained on")
    args = parser.parse_args(argv)
    setup_logging()
    if (args.classifier_encoder is None) != (args.classifier_weights is None):
        parser.error("--classifier-encoder and --classifier-weights go together")
    if args.random:
        config = load_preset(args.preset).cascade
        if args.classifier_encoder is not None:
            stage2 = encoder_config(
                config.classifier, args.classifier_encoder, args.classifier_weights
            )
            config = replace(config, classifier=stage2)
        init_assets(args.out, config, args.seed, args.note, args.classifier_weights)
    elif args.source is None:
        parser.error("give the trainers' work folder, or --random")
    else:
        export(args.source, args.out, args.note or "trained", args.data or str(args.source))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
