"""The preset registry: names, JSON files with and without training defaults, the pipeline's use."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from stages.config import save_config
from training import pipeline
from training.presets import PRESETS, STANDARD, TINY, load_preset


def test_a_name_is_its_preset() -> None:
    assert load_preset("standard") is PRESETS["standard"]
    assert PRESETS["standard"].cascade == STANDARD and PRESETS["tiny"].cascade == TINY
    assert (PRESETS["tiny"].folds, PRESETS["standard"].folds) == (4, 5)
    assert PRESETS["standard"].detector.epochs == PRESETS["standard"].classifier.epochs == 40


def test_a_cascade_config_file_trains_with_tinys_defaults_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_config(STANDARD, tmp_path)
    with caplog.at_level(logging.INFO, logger="training.presets"):
        preset = load_preset(str(tmp_path / "config.json"))
    assert preset.cascade == STANDARD
    tiny = PRESETS["tiny"]
    assert (preset.folds, preset.detector, preset.classifier) == (
        tiny.folds,
        tiny.detector,
        tiny.classifier,
    )
    assert "training defaults (folds, epochs …): tiny's" in caplog.text


def test_a_preset_file_carries_its_training_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "preset.json"
    cascade = json.loads(json.dumps(dataclasses.asdict(STANDARD)))
    training = {"folds": 5, "detector": {"epochs": 40, "batch_size": 32}}
    path.write_text(json.dumps({"cascade": cascade, "training": training}))
    with caplog.at_level(logging.INFO, logger="training.presets"):
        preset = load_preset(str(path))
    assert preset.cascade == STANDARD and preset.folds == 5
    tiny = PRESETS["tiny"]
    assert preset.detector == dataclasses.replace(tiny.detector, epochs=40, batch_size=32)
    assert preset.classifier == tiny.classifier
    assert "classifier not given: tiny's" in caplog.text
    path.write_text(json.dumps({"cascade": cascade, "training": {"detector": {"epoch": 1}}}))
    with pytest.raises(ValueError, match=r"unknown training options \['epoch'\]"):
        load_preset(str(path))
    with pytest.raises(ValueError, match="neither a preset"):
        load_preset(str(tmp_path / "missing.json"))


def test_the_pipeline_takes_a_preset_files_folds_and_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON --preset used to get tiny's folds and epochs whatever it said."""
    path = tmp_path / "preset.json"
    cascade = json.loads(json.dumps(dataclasses.asdict(TINY)))
    training = {"folds": 3, "detector": {"epochs": 2}, "classifier": {"epochs": 5}}
    path.write_text(json.dumps({"cascade": cascade, "training": training}))
    seen = {}

    def train(work: Path, assets: Path, *args: object) -> dict[str, float]:
        seen["args"] = args
        return {"total": 0.0}

    monkeypatch.setattr(pipeline, "train", train)
    assert pipeline.main([str(tmp_path / "w"), str(tmp_path / "a"), "--preset", str(path)]) == 0
    _, _, _, preset, folds, detector, classifier = seen["args"][:7]
    assert (preset, folds, detector.epochs, classifier.epochs) == (str(path), 3, 2, 5)
    # the old flag still works, and the command line still overrides the preset
    argv = [str(tmp_path / "w"), str(tmp_path / "a"), "--config", str(path), "--folds", "2"]
    assert pipeline.main([*argv, "--detector-epochs", "7"]) == 0
    _, _, _, preset, folds, detector, _ = seen["args"][:7]
    assert (preset, folds, detector.epochs) == (str(path), 2, 7)
