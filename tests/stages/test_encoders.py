"""Stage 2 on timm encoders from local checkpoints (stages/encoders.py, training.pack.export
``--classifier-encoder``): small random ViTs saved in the layouts the foundation models ship
(a timm state dict with the Hugging Face ``config.json`` beside it, Meta's DINOv2 layout with
register tokens), loaded offline, checked by sha256, packed and run as the runtime runs them."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import rezip, tissue, write_format, write_tiff
from safetensors.torch import save_file

from stages.classifier import ClassifierConfig, PatchClassifier, grade
from stages.config import load_assets
from stages.encoders import (
    ENCODER_CARDS,
    build_timm_encoder,
    load_encoder_checkpoint,
    sha256,
    token_features,
)
from stages.nets import AssetsError
from training.pack import export
from training.pack.package import pack
from training.pack.sandbox import check_outcome, run_local

#: A UNI-like ViT (class token, patch 16), small: the timm layout with its hub config.
VIT = "vit_tiny_patch16_224"
VIT_ARGS = {"img_size": 64, "depth": 2, "embed_dim": 48, "num_heads": 2}
VIT_MEAN, VIT_STD = (0.6, 0.5, 0.7), (0.2, 0.25, 0.3)
#: An H-optimus-like DINOv2 ViT with 4 register tokens (patch 14), small.
DINO = "vit_small_patch14_reg4_dinov2"
DINO_ARGS = {"img_size": 56, "depth": 2, "embed_dim": 48, "num_heads": 2}


def hub_checkpoint(folder: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A timm state dict as ``model.safetensors`` with the Hugging Face timm ``config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_timm_encoder(VIT, VIT_ARGS)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    card = {
        "architecture": VIT,
        "model_args": VIT_ARGS,
        "pretrained_cfg": {"input_size": [3, 64, 64], "mean": VIT_MEAN, "std": VIT_STD},
    }
    (folder / "config.json").write_text(json.dumps(card))
    return folder / "model.safetensors", model


def meta_dinov2_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s (timm DINOv2 with registers) weights in Meta's own layout: the class token's
    position in ``pos_embed``, ``register_tokens``, a ``mask_token``."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["register_tokens"] = state.pop("reg_token")
    cls_pos = torch.randn(1, 1, state["pos_embed"].shape[-1])
    state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    state["cls_token"] = state["cls_token"] - cls_pos  # timm adds it back
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return state


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every socket connection or name lookup is recorded and refused."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture(scope="module")
def vit_assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(assets, checkpoint): the tiny preset with the hub-layout ViT as stage 2's encoder."""
    root = tmp_path_factory.mktemp("vit")
    checkpoint, _ = hub_checkpoint(root / "hub")
    argv = ["--random", str(root / "assets"), "--classifier-encoder", VIT]
    assert export.main([*argv, "--classifier-weights", str(checkpoint)]) == 0
    return root / "assets", checkpoint


def test_a_hub_checkpoint_exports_and_loads_offline(tmp_path: Path, no_network: list[str]) -> None:
    checkpoint, source = hub_checkpoint(tmp_path / "hub", seed=3)
    argv = ["--random", str(tmp_path / "assets"), "--classifier-encoder", VIT]
    assert export.main([*argv, "--classifier-weights", str(checkpoint)]) == 0
    assets = load_assets(tmp_path / "assets", torch.device("cpu"))
    stage2 = assets.config.classifier
    # size and normalisation from the checkpoint's own config; its checksum recorded
    assert (stage2.source, stage2.encoder, stage2.patch) == ("timm", VIT, 64)
    assert (stage2.mean, stage2.std) == (VIT_MEAN, VIT_STD)
    assert stage2.encoder_sha256 == sha256(checkpoint)
    assert sha256(tmp_path / "assets" / stage2.encoder_weights) == sha256(checkpoint)
    for key, value in source.state_dict().items():  # the encoder is the checkpoint's
        assert torch.equal(assets.classifier.encoder.state_dict()[key], value), key
    patches = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    probs = grade(assets.classifier, patches, stage2, torch.device("cpu"))
    assert probs.shape == (5, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert no_network == []


def test_meta_dinov2_layout_with_registers_gives_the_same_features(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = build_timm_encoder(DINO, DINO_ARGS).eval()
    torch.save({"teacher": meta_dinov2_state(reference)}, tmp_path / "teacher_checkpoint.pth")
    config = ClassifierConfig(encoder=DINO, source="timm", encoder_kwargs=DINO_ARGS, patch=56)
    model = PatchClassifier(config).eval()
    load_encoder_checkpoint(model.encoder, tmp_path / "teacher_checkpoint.pth")
    x = torch.randn(3, 3, 56, 56)
    with torch.inference_mode():
        tokens = reference.forward_features(x)
        features = model.features(x)
    assert tokens.shape == (3, 1 + 4 + 16, 48)  # class token, 4 registers, 4 × 4 patches
    assert features.shape == (3, 48)
    torch.testing.assert_close(features, tokens[:, 0], atol=5e-4, rtol=1e-3)  # cls - pos + pos
    both = token_features(tokens, 5, "token+avg")
    assert both.shape == (3, 96)
    torch.testing.assert_close(both[:, 48:], tokens[:, 5:].mean(1))


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    torch.save(build_timm_encoder(DINO, DINO_ARGS).state_dict(), tmp_path / "other.pth")
    encoder = build_timm_encoder(VIT, VIT_ARGS)
    with pytest.raises(AssetsError, match=r"other\.pth does not match VisionTransformer"):
        load_encoder_checkpoint(encoder, tmp_path / "other.pth")


def test_the_recipes_build_the_model_cards_networks() -> None:
    """Each recipe's timm arguments make the feature width its model card states (built on the
    meta device: no memory, no weights)."""
    with torch.device("meta"):
        for name, recipe in ENCODER_CARDS.items():
            config = ClassifierConfig(
                encoder=recipe.model,
                source="timm",
                encoder_kwargs=recipe.kwargs,
                pool=recipe.pool,
                patch=recipe.size,
            )
            model = PatchClassifier(config)
            assert model.features_dim == recipe.features, name
            assert timm.is_model(recipe.model), name


@pytest.mark.slow
def test_a_changed_encoder_file_stops_main_with_status_3(
    vit_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    assets, _ = vit_assets
    stage2 = load_assets(assets, torch.device("cpu")).config.classifier
    packed = pack(tmp_path / "submission.zip", assets=assets).path
    damaged = bytearray((assets / stage2.encoder_weights).read_bytes())
    damaged[-1] ^= 0xFF
    entry = f"assets/{stage2.encoder_weights}"
    broken = rezip(packed, tmp_path / "broken.zip", replace={entry: bytes(damaged)})
    data = tmp_path / "data"
    write_format(data, ["a.tif"], 0.25)
    write_tiff(data / "a.tif", tissue(0, whole=True))
    outcome = run_local(broken, data, tmp_path / "out")
    assert outcome.returncode == 3, outcome.log_text()
    errors = [x for x in outcome.log_text().splitlines() if " ERROR " in x]
    assert len(errors) == 1 and "sha256" in errors[0] and entry in errors[0], errors
    assert "a.tif" not in outcome.log_text()  # checked before any slide was read
    # the intact zip grades the slide from its patches, as the runtime runs it
    good = run_local(packed, data, tmp_path / "good")
    assert check_outcome(good, data / "submission_format.csv") == [], good.log_text()
    assert "from patches" in good.log_text()


def test_a_config_without_the_encoder_checksum_is_refused() -> None:
    with pytest.raises(ValueError, match="encoder_sha256"):
        ClassifierConfig(source="timm", encoder=VIT, encoder_weights="encoder.safetensors")
    with pytest.raises(ValueError, match="timm encoders"):
        replace(ClassifierConfig(), encoder_weights="e.safetensors", encoder_sha256="0" * 64)
