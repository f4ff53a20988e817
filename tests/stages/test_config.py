"""Assets config: JSON round trip, strict validation, weights checked against the config."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from stages.config import CascadeConfig, from_dict, load_assets, load_config, save_config
from stages.detector import DetectorConfig
from stages.nets import AssetsError
from training.pack.export import init_assets
from training.presets import TINY


def test_json_round_trip_is_exact(tmp_path: Path) -> None:
    config = replace(TINY, note="round trip")
    save_config(config, tmp_path)
    assert load_config(tmp_path) == config


def test_defaults_fill_missing_keys() -> None:
    config = from_dict(CascadeConfig, {"detector": {"window": 256}})
    assert config.detector == DetectorConfig(window=256)
    assert config.classifier == CascadeConfig().classifier


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"detectr": {}}, r"config: unknown keys \['detectr'\]"),
        ({"detector": {"window": "512"}}, r"config.detector.window: expected int, got '512'"),
        ({"detector": {"window": 100}}, "config.detector: detector.window must be a positive"),
        ({"detector": {"decoder_channels": 16}}, "decoder_channels: expected a list"),
        ({"hotspots": {"score": "loudest"}}, r"config.hotspots.score: 'loudest' is not one of"),
        ({"budget": {"min_k": True}}, "config.budget.min_k: expected int, got True"),
        ({"default_mpp": 0}, "default_mpp must be a plausible"),
        ([], "config: expected an object"),
    ],
)
def test_invalid_config_names_the_key(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_dict(CascadeConfig, data)


def test_load_assets_fails_early_naming_the_file(tmp_path: Path) -> None:
    assets = init_assets(tmp_path / "assets")
    loaded = load_assets(assets, torch.device("cpu"))
    assert loaded.config.note.startswith("random initialisation")
    assert not loaded.detector.training and not loaded.classifier.training

    (assets / TINY.classifier.weights).unlink()
    with pytest.raises(AssetsError, match=r"weight file missing: .*classifier.safetensors"):
        load_assets(assets, torch.device("cpu"))

    init_assets(assets)
    data = json.loads((assets / "config.json").read_text())
    data["detector"]["encoder"] = "resnet18"  # the weights are for another encoder
    (assets / "config.json").write_text(json.dumps(data))
    with pytest.raises(AssetsError, match=r"detector.safetensors does not match the model"):
        load_assets(assets, torch.device("cpu"))

    (assets / "config.json").write_text("{not json")
    with pytest.raises(AssetsError, match=r"config\.json"):
        load_assets(assets, torch.device("cpu"))
    (assets / "config.json").unlink()
    with pytest.raises(AssetsError, match="config missing"):
        load_assets(assets, torch.device("cpu"))
