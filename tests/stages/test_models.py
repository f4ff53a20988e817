"""Detector and classifier mechanics with tiny random-weight networks (no trained weights)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_tiff

import stages.config as config_module
from stages.classifier import ClassifierConfig, PatchClassifier, grade, patch_box, read_patches
from stages.config import load_assets
from stages.detector import DetectorConfig, build_detector, predict_heatmap, tissue_windows
from stages.nets import AssetsError, Frozen, freeze, load_weights, save_weights, to_input
from stages.slide import Slide
from training.presets import TINY

TINY_DETECTOR = replace(TINY.detector, window=128, overlap=32, target_mpp=2.0)
TINY_CLASSIFIER = replace(TINY.classifier, patch=64)


def test_tissue_windows_exact() -> None:
    # Page 1000 x 600 px, mask at 4x coarser scale; tissue only in mask block rows 10-19, cols 0-9
    mask = np.zeros((150, 250), bool)
    mask[10:20, 0:10] = True
    corners = tissue_windows((1000, 600), (2.0, 2.0), mask, (8.0, 8.0), window=256, overlap=56)
    # starts: x 0, 200, 400, 600, 744; y 0, 200, 344. Tissue = page px x 0..39, y 40..79
    assert corners == [(0, 0)]
    mask[:] = False
    mask[149, 249] = True  # bottom-right corner pixel: page px x 996..999, y 596..599
    assert tissue_windows((1000, 600), (2.0, 2.0), mask, (8.0, 8.0), 256, 56) == [(744, 344)]
    mask[:] = True
    assert len(tissue_windows((1000, 600), (2.0, 2.0), mask, (8.0, 8.0), 256, 56)) == 15
    # a page smaller than one window gets one window at the origin
    assert tissue_windows((100, 80), (1.0, 1.0), np.ones((8, 10), bool), (10.0, 10.0), 256, 0) == [
        (0, 0)
    ]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        DetectorConfig(window=100)
    with pytest.raises(ValueError, match="stride"):
        DetectorConfig(stride=5)
    with pytest.raises(ValueError, match="arch"):
        DetectorConfig(arch="Segformer3000")
    with pytest.raises(ValueError, match="patch"):
        ClassifierConfig(patch=100)


def test_to_input_shapes_and_normalisation() -> None:
    batch = np.zeros((2, 8, 6, 3), np.uint8)
    batch[..., 0] = 255
    tensor = to_input(batch, torch.device("cpu"), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert tensor.shape == (2, 3, 8, 6)
    assert tensor.is_contiguous(memory_format=torch.channels_last)
    assert tensor[:, 0].unique().tolist() == [1.0]
    assert tensor[:, 1].unique().tolist() == [-1.0]
    with pytest.raises(ValueError, match="uint8"):
        to_input(batch.astype(np.float32), torch.device("cpu"))


def test_heatmap_over_tissue_windows(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pixels = np.full((2048, 3072, 3), 240, np.uint8)
    pixels[200:900, 300:1200] = (180, 90, 160)  # one tissue block, top left
    slide = Slide(write_tiff(tmp_path / "s.tif", pixels, mpp=0.25))
    page = slide.page_for_mpp(TINY_DETECTOR.target_mpp)
    assert page == 3  # 0.25 * 8 = 2.0 µm/px, page size 384 x 256
    mask = np.zeros((64, 96), bool)  # mask grid of 32 page-0 px per cell
    mask[200 // 32 : 900 // 32, 300 // 32 : 1200 // 32] = True
    model = build_detector(TINY_DETECTOR)
    heatmap = predict_heatmap(
        model, slide, page, mask, (32.0, 32.0), TINY_DETECTOR, torch.device("cpu")
    )
    assert heatmap.probs.shape == (4, 64, 96)
    assert heatmap.probs.dtype == np.float32
    assert heatmap.scale == (32.0, 32.0)
    np.testing.assert_allclose(heatmap.probs.sum(axis=0), 1.0, atol=1e-5)
    # windows at x 0, 96 and y 0, 96 (page px); only those touching tissue ran
    assert heatmap.visited[:32, :32].all()
    assert not heatmap.visited[:, 64:].any()
    assert (heatmap.probs[0][~heatmap.visited] == 1.0).all()
    assert heatmap.tissue.shape == (64, 96) and heatmap.tissue.sum() == mask.sum()
    assert heatmap.complete
    expected = tissue_windows(
        slide.pages[page].size, slide.pages[page].scale, mask, (32.0, 32.0), 128, 32
    )
    assert heatmap.windows == len(expected) > 0
    stopped = predict_heatmap(
        model, slide, page, mask, (32.0, 32.0), TINY_DETECTOR, torch.device("cpu"), lambda n: True
    )
    assert not stopped.complete and not stopped.visited.any() and stopped.windows == 0


def test_patches_and_grades(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pixels = np.full((1024, 1024, 3), 255, np.uint8)
    pixels[:, 512:] = 0
    slide = Slide(write_tiff(tmp_path / "p.tif", pixels, mpp=0.25))
    page = slide.page_for_mpp(TINY_CLASSIFIER.target_mpp)
    assert page == 1
    assert patch_box((512, 512), 64, slide.pages[page].scale).w == 128
    patches = read_patches(slide, [(256.0, 256.0), (768.0, 768.0), (1020.0, 0.0)], page, 64)
    assert patches.shape == (3, 64, 64, 3)
    assert patches[0].min() > 240 and patches[1].max() < 15
    assert (patches[2][:32] == 255).all()  # the part above the slide is white padding
    model, cpu = PatchClassifier(TINY_CLASSIFIER), torch.device("cpu")
    probs = grade(model, patches, TINY_CLASSIFIER, cpu)
    assert probs.shape == (3, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # padded to a batch of 8 (the padding dropped): the same grades for the three
    padded = grade(model, patches, TINY_CLASSIFIER, cpu, pad_to=8)
    assert padded.shape == (3, 4)
    np.testing.assert_allclose(padded, probs, atol=1e-5)
    assert read_patches(slide, [], page, 64).shape == (0, 64, 64, 3)
    asked: list[int] = []
    first_two = read_patches(
        slide, [(256.0, 256.0), (768.0, 768.0), (1020.0, 0.0)], page, 64,
        should_stop=lambda done: asked.append(done) or done == 2,
    )  # fmt: skip
    assert asked == [1, 2]  # asked before each patch after the first
    np.testing.assert_array_equal(first_two, patches[:2])


def test_weights_round_trip_and_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PatchClassifier(TINY_CLASSIFIER)
    save_weights(model, tmp_path / "c.safetensors")
    torch.manual_seed(1)
    again = load_weights(PatchClassifier(TINY_CLASSIFIER), tmp_path / "c.safetensors")
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = PatchClassifier(replace(TINY_CLASSIFIER, classes=3))
    with pytest.raises(AssetsError, match="does not match"):
        load_weights(other, tmp_path / "c.safetensors")
    with pytest.raises(AssetsError, match="missing"):
        load_weights(other, tmp_path / "absent.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(AssetsError, match="unreadable"):
        load_weights(other, tmp_path / "bad.safetensors")


def test_fpn_detector_at_output_stride_4() -> None:
    config = replace(TINY_DETECTOR, arch="FPN", decoder_channels=(32, 32), output_stride=4)
    model = build_detector(config).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 128, 128)).shape == (1, 4, 32, 32)
    with pytest.raises(ValueError, match="output_stride"):
        replace(config, arch="Unet", decoder_channels=(16, 16, 16, 16, 16))
    with pytest.raises(ValueError, match="output_stride"):
        replace(config, stride=2)
    with pytest.raises(ValueError, match="segmentation"):
        replace(config, decoder_channels=(32, 16))


def test_segformer_detector_at_output_stride_4() -> None:
    config = TINY_DETECTOR
    assert (config.arch, config.decoder_channels, config.output_stride) == ("Segformer", (32,), 4)
    model = build_detector(config).eval()
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 128, 128)).shape == (2, 4, 32, 32)
    assert build_detector(replace(config, output_stride=1))(torch.zeros(1, 3, 64, 64)).shape == (
        1, 4, 64, 64
    )  # fmt: skip
    with pytest.raises(ValueError, match="Segformer"):
        replace(config, decoder_channels=(32, 32))


def test_a_frozen_detector_gives_the_networks_output_at_any_batch() -> None:
    torch.manual_seed(0)
    model = build_detector(TINY_DETECTOR).eval().to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = freeze(model, 4, 128, torch.float32)
    assert isinstance(frozen, Frozen) and frozen.batch == 4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # left as it was
    x = torch.randn(9, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        eager = model(x)
        for n in (1, 3, 4, 9):  # padded to the traced batch, exact, and run in chunks
            out = frozen(x[:n])
            assert out.shape == (n, 4, 32, 32) and out.dtype == torch.float32
            torch.testing.assert_close(out, eager[:n], atol=1e-4, rtol=1e-4)
        half = freeze(model, 4, 128, torch.bfloat16)(x[:3])
    assert half.dtype == torch.float32  # bfloat16 inside, float32 out
    torch.testing.assert_close(half.softmax(1), eager[:3].softmax(1), atol=0.1, rtol=0)


def test_load_assets_freezes_the_detector_only_when_asked_and_keeps_it_when_it_cannot(
    assets: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cpu = torch.device("cpu")
    assert not isinstance(load_assets(assets, cpu).detector, Frozen)
    loaded = load_assets(assets, cpu, frozen=True)
    assert isinstance(loaded.detector, Frozen)
    assert loaded.detector.batch == loaded.config.detector.batch_size
    assert not isinstance(loaded.classifier, Frozen)

    def untraceable(*args: object) -> Frozen:
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(config_module, "freeze", untraceable)
    with caplog.at_level("WARNING"):
        kept = load_assets(assets, cpu, frozen=True)
    assert not isinstance(kept.detector, Frozen)
    assert "detector not frozen (RuntimeError: cannot trace this)" in caplog.text
