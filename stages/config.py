"""The cascade's configuration: one frozen dataclass per stage, saved as ``assets/config.json``.

Each stage module owns its config class; :class:`CascadeConfig` composes them. Loading validates
the JSON strictly — unknown keys and wrong types are errors naming the key — and each class's
``__post_init__`` checks its ranges. :func:`load_assets` also checks that the weight files exist
and match the networks the config describes, before any slide is read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from stages.budget import BudgetConfig
from stages.classifier import ClassifierConfig, load_classifier
from stages.decision import DecisionConfig
from stages.detector import DetectorConfig, build_detector
from stages.hotspots import HotspotConfig
from stages.nets import AssetsError, freeze, load_weights, pick_precision
from stages.tissue import TissueConfig

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class Provenance:
    """Where the weights come from, written by the export (``training.pack.export``).

    ``data``: the training data (a folder, or the generator's seed and slide count);
    ``command``: the command line that trained them; ``commit``: the code's git commit (or
    ``"unknown"``); ``date``: ISO 8601 time of the export; ``metrics``: validation figures by
    name (finite numbers).
    """

    data: str = ""
    command: str = ""
    commit: str = ""
    date: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.date:
            try:
                datetime.fromisoformat(self.date)
            except ValueError as exc:
                raise ValueError(f"provenance.date is not ISO 8601: {self.date!r}") from exc
        bad = {k: v for k, v in self.metrics.items() if not math.isfinite(v)}
        if bad:
            raise ValueError(f"provenance.metrics must be finite numbers, got {bad}")


@dataclass(frozen=True)
class CascadeConfig:
    """Everything the cascade needs besides the weights. ``default_mpp`` is used (and logged)
    for a slide whose µm/pixel is in neither the metadata nor the file. ``note`` says what the
    weights are in a line, ``provenance`` how they were made."""

    tissue: TissueConfig = field(default_factory=TissueConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    hotspots: HotspotConfig = field(default_factory=HotspotConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    default_mpp: float = 0.25
    note: str = ""
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        if not 0.05 <= self.default_mpp <= 100:
            raise ValueError(f"default_mpp must be a plausible µm/pixel, got {self.default_mpp}")


def _check(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (JSON lists become tuples); ValueError naming ``where``."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        candidates = [o for o in options if o is not type(None)]
        if len(candidates) == 1:
            return _check(value, candidates[0], where)
        for option in candidates:
            try:
                return _check(value, option, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: expected one of {options}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        key_hint, value_hint = typing.get_args(hint)
        return {
            _check(k, key_hint, f"{where} key"): _check(v, value_hint, f"{where}.{k}")
            for k, v in value.items()
        }
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(
            _check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ValueError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a JSON dict; missing keys take defaults, unknown keys fail."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}")
    values = {k: _check(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def save_config(config: CascadeConfig, assets: Path) -> Path:
    """Write ``config`` as ``assets/config.json`` (pretty, stable key order)."""
    assets.mkdir(parents=True, exist_ok=True)
    path = assets / CONFIG_NAME
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return path


def load_config(assets: Path) -> CascadeConfig:
    """Read and validate ``assets/config.json``; :class:`AssetsError` naming the file on failure."""
    path = assets / CONFIG_NAME
    if not path.is_file():
        raise AssetsError(f"config missing: {path}")
    try:
        return from_dict(CascadeConfig, json.loads(path.read_text()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise AssetsError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class Assets:
    """The validated config and both networks, on ``device`` and in eval mode; ``autocast``:
    the dtype their inference runs in (None: float32; see :func:`stages.nets.pick_precision`)."""

    config: CascadeConfig
    detector: torch.nn.Module
    classifier: torch.nn.Module
    device: torch.device
    autocast: torch.dtype | None = None


def load_assets(
    assets: Path,
    device: torch.device,
    precision: str = "float32",
    frozen: bool = False,
    config: CascadeConfig | None = None,
) -> Assets:
    """Config plus both networks with their weights; fails early, naming the bad file.
    ``precision``: one of :data:`stages.nets.PRECISIONS` (the runtime's default is ``auto``).
    ``frozen``: on a CPU, the detector (stage 1, most of a slide's compute) is traced and frozen
    for its batches in that precision (:func:`stages.nets.freeze`; the runtime's choice); a
    failure to do so is logged and the network kept as it is. The classifier stays as built: it
    may be any encoder, and its batches follow the memory left (:mod:`stages.memory`).
    ``config``: :func:`load_config` of ``assets`` when the caller has read it already."""
    config = load_config(assets) if config is None else config
    detector = load_weights(build_detector(config.detector), assets / config.detector.weights)
    classifier = load_classifier(config.classifier, assets)
    # the inputs are channels-last (stages.nets.to_input); so are the weights: oneDNN's fast path
    detector, classifier = (m.to(memory_format=torch.channels_last) for m in (detector, classifier))
    autocast = pick_precision(device, precision)
    if frozen and device.type == "cpu":
        detector = _frozen_detector(detector, config.detector, autocast or torch.float32)
    log.info(
        "assets %s: detector %s/%s, classifier %s%s; inference in %s",
        assets,
        config.detector.arch,
        config.detector.encoder,
        config.classifier.encoder,
        f" ({config.note})" if config.note else "",
        autocast or torch.float32,
    )
    return Assets(
        config, detector.to(device).eval(), classifier.to(device).eval(), device, autocast
    )


def _frozen_detector(
    detector: torch.nn.Module, config: DetectorConfig, dtype: torch.dtype
) -> torch.nn.Module:
    start = time.perf_counter()
    try:
        frozen = freeze(detector.eval(), config.batch_size, config.window, dtype)
    except Exception as exc:  # a network TorchScript cannot trace still runs as it is
        log.warning("detector not frozen (%s: %s); it runs as built", type(exc).__name__, exc)
        return detector
    log.info("detector frozen in %s in %.1f s", dtype, time.perf_counter() - start)
    return frozen
