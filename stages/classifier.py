"""Stage 2: grade high-resolution patches centred on the hotspots.

Patches are ``patch × patch`` pixels of the classifier page (the page nearest ``target_mpp``,
page 0–1 on TissueNet slides) centred on each hotspot's page-0 centre. The network is an smp
encoder (built with ``weights=None``) with global average pooling and a linear head giving
``classes`` logits; :func:`grade` returns softmax probabilities ``(N, classes)`` float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

from stages.geometry import Box
from stages.nets import IMAGENET_MEAN, IMAGENET_STD, check_normalisation, inference, to_input
from stages.slide import Slide


@dataclass(frozen=True)
class ClassifierConfig:
    """Patch classifier network and sampling. ``patch`` is in classifier-page pixels;
    ``temperature`` divides the logits (calibration, fitted on validation patches); ``mean`` /
    ``std`` are the input normalisation the weights were trained with (RGB in [0, 1])."""

    encoder: str = "resnet18"
    classes: int = 4
    target_mpp: float = 0.5
    patch: int = 256
    batch_size: int = 16
    dropout: float = 0.2
    temperature: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: str = "classifier.safetensors"

    def __post_init__(self) -> None:
        if self.classes < 2:
            raise ValueError("classifier.classes must be at least 2")
        if self.patch % 32 or self.patch <= 0:
            raise ValueError(
                f"classifier.patch must be a positive multiple of 32, got {self.patch}"
            )
        if self.target_mpp <= 0 or self.batch_size <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("classifier.target_mpp, batch_size > 0 and dropout in [0, 1) needed")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"classifier.temperature must be > 0, got {self.temperature}")
        check_normalisation(self.mean, self.std, "classifier")


class PatchClassifier(nn.Module):
    """smp encoder → global average pool → dropout → linear. Input ``(N, 3, P, P)`` normalised."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.encoder = smp.encoders.get_encoder(config.encoder, in_channels=3, weights=None)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(self.encoder.out_channels[-1], config.classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1])


def patch_box(center: tuple[float, float], patch: int, scale: tuple[float, float]) -> Box:
    """Page-0 box of a ``patch``-pixel square of a page with ``scale``, centred on ``center``."""
    return Box.centered(center[0], center[1], patch * scale[0], patch * scale[1])


def read_patches(
    slide: Slide, centers: Sequence[tuple[float, float]], page: int, patch: int
) -> np.ndarray:
    """``(N, patch, patch, 3)`` uint8 patches of ``page`` centred on page-0 ``centers``."""
    scale = slide.pages[page].scale
    if not centers:
        return np.zeros((0, patch, patch, 3), np.uint8)
    return np.stack([slide.read_region(patch_box(c, patch, scale), page) for c in centers])


def grade(
    model: nn.Module,
    patches: np.ndarray,
    config: ClassifierConfig,
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """Class probabilities ``(N, classes)`` float32 of ``(N, P, P, 3)`` uint8 patches: softmax of
    the logits divided by ``config.temperature``; the network runs in ``autocast`` (None:
    float32)."""
    model.eval()
    with inference(device, autocast):
        logits = model(to_input(patches, device, config.mean, config.std)).float()
        return (logits / config.temperature).softmax(dim=1).cpu().numpy()
