"""What a trained stage and an ``assets/`` folder are on disk: written atomically, read back.

A trained stage is its output folder's ``<stage>.safetensors`` (the network's weights) plus
``<stage>.json`` (the stage's config, as the cascade will load it, the whole cascade config it
was trained within, its validation metrics, data and command): :func:`save_stage` writes them,
:func:`read_stage`, :func:`stage_cascade` and :func:`load_stage_model` read them.
:func:`write_assets` writes an ``assets/`` folder (``config.json`` and both networks' weights),
checked by :func:`stages.config.load_assets` before it replaces the old one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from stages.classifier import PatchClassifier
from stages.config import CascadeConfig, from_dict, load_assets, save_config
from stages.encoders import sha256
from stages.nets import load_weights, save_weights

log = logging.getLogger(__name__)


def save_stage(
    out: Path, name: str, model: torch.nn.Module | None, cascade: CascadeConfig, info: dict
) -> Path:
    """Write ``out/<name>.safetensors`` (unless ``model`` is None) and ``out/<name>.json``: the
    stage's config (``cascade.<name>``), the whole ``cascade`` it belongs to, and ``info``
    (metrics, data, command), each atomically; returns the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:
        tmp = out / f".{name}.tmp.safetensors"
        save_weights(model, tmp)
        os.replace(tmp, out / f"{name}.safetensors")
    path = out / f"{name}.json"
    payload = {
        "config": dataclasses.asdict(getattr(cascade, name)),
        "cascade": dataclasses.asdict(cascade),
    } | info
    tmp_json = out / f".{name}.tmp.json"
    tmp_json.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp_json, path)
    return path


def read_stage(out: Path, name: str) -> dict:
    """What :func:`save_stage` wrote as ``out/<name>.json``."""
    path = out / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: stage not trained (no {path.name})")
    return json.loads(path.read_text())


def stage_cascade(out: Path, name: str) -> CascadeConfig:
    """The cascade config a stage was trained within (its own config in place)."""
    return from_dict(CascadeConfig, read_stage(out, name)["cascade"], f"{out / name}.json")


def load_stage_model(out: Path, name: str, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` filled from ``out/<name>.safetensors``, in eval mode."""
    return load_weights(model, out / f"{name}.safetensors").eval()


def write_assets(
    out: Path,
    config: CascadeConfig,
    detector: torch.nn.Module,
    classifier: PatchClassifier,
    encoder_file: Path | None = None,
) -> Path:
    """Write ``config`` and both networks' weights as the folder ``out``, atomically: built in
    a sibling temporary folder, checked with :func:`load_assets`, then renamed into place (an
    existing ``out`` is replaced). Returns ``out``.

    With ``classifier.encoder_weights`` in the config, the classifier's file holds its head and
    the encoder goes to that file: a copy of ``encoder_file`` (the user's checkpoint, unchanged)
    or, without one, the encoder's own state as safetensors (fine-tuned); its sha256 goes in the
    config."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_weights(detector, tmp / config.detector.weights)
        stage2 = config.classifier
        if stage2.encoder_weights:
            target = tmp / stage2.encoder_weights
            if encoder_file is not None:
                try:  # the same bytes: a hard link where the file system allows, else a copy
                    os.link(encoder_file, target)
                except OSError:
                    shutil.copyfile(encoder_file, target)
            else:
                target = target.with_suffix(".safetensors")
                save_weights(classifier.encoder, target)
            stage2 = replace(stage2, encoder_weights=target.name, encoder_sha256=sha256(target))
            config = replace(config, classifier=stage2)
            save_weights(classifier.head, tmp / stage2.weights)
        else:
            save_weights(classifier, tmp / stage2.weights)
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
