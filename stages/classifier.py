"""Stage 2: grade high-resolution patches centred on the hotspots.

Patches are ``patch × patch`` pixels of the classifier page (the page nearest ``target_mpp``,
page 0–1 on TissueNet slides) centred on each hotspot's page-0 centre. The network is an
encoder, pooled to one feature vector per patch, and a head giving ``classes`` logits. The
encoder is an smp encoder (``source: smp``, trained here, weights in ``weights`` with the head)
or any timm model (``source: timm``, :mod:`stages.encoders`: foundation models, their weights in
``encoder_weights``, checked by sha256). Both are built without downloading. :func:`grade`
returns softmax probabilities ``(N, classes)`` float32.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

from stages.encoders import (
    Kwarg,
    Pool,
    build_timm_encoder,
    load_encoder_checkpoint,
    token_features,
    verify_sha256,
)
from stages.geometry import Box
from stages.memory import activation_bytes, batch_for_memory, free_memory_bytes
from stages.nets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AssetsError,
    check_normalisation,
    inference,
    load_weights,
    padded_forward,
    to_input,
)
from stages.slide import Slide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierConfig:
    """Patch classifier network and sampling. ``patch`` is in classifier-page pixels;
    ``temperature`` divides the logits (calibration, fitted on validation patches); ``mean`` /
    ``std`` are the input normalisation the weights were trained with (RGB in [0, 1]).

    ``encoder`` is an smp encoder name (``source: smp``) or a timm model name (``source:
    timm``, built with ``encoder_kwargs`` and its tokens pooled by ``pool``). With
    ``encoder_weights`` (a file beside the config, sha256 ``encoder_sha256``) the encoder's
    weights come from that file and ``weights`` holds the head only. ``head_hidden`` > 0 puts
    a hidden layer of that width in the head."""

    encoder: str = "resnet18"
    source: Literal["smp", "timm"] = "smp"
    encoder_kwargs: dict[str, Kwarg] = field(default_factory=dict)
    pool: Pool = "token"
    encoder_weights: str = ""
    encoder_sha256: str = ""
    head_hidden: int = 0
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
        if self.patch <= 0 or (self.source == "smp" and self.patch % 32):
            raise ValueError(
                f"classifier.patch must be a positive multiple of 32, got {self.patch}"
            )
        if bool(self.encoder_weights) != (len(self.encoder_sha256) == 64):
            raise ValueError("classifier.encoder_weights needs its 64-digit encoder_sha256")
        if self.encoder_weights and self.source != "timm":
            raise ValueError("classifier.encoder_weights is for timm encoders (source: timm)")
        if self.head_hidden < 0:
            raise ValueError("classifier.head_hidden must be >= 0")
        if self.target_mpp <= 0 or self.batch_size <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("classifier.target_mpp, batch_size > 0 and dropout in [0, 1) needed")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"classifier.temperature must be > 0, got {self.temperature}")
        check_normalisation(self.mean, self.std, "classifier")


class PatchClassifier(nn.Module):
    """Encoder → pooled features ``(N, D)`` → dropout → linear (or an MLP with ``head_hidden``)
    → logits ``(N, classes)``. Input ``(N, 3, P, P)`` float32, normalised.

    ``head[:2]`` pools the encoder's output into features (smp: global average pool of the last
    map; timm: :func:`stages.encoders.token_features`), the rest classifies them, so that a head
    can be trained on features cached once (:meth:`features`, :meth:`classify`)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.source = config.source
        if config.source == "smp":
            self.encoder = smp.encoders.get_encoder(config.encoder, in_channels=3, weights=None)
            width = self.encoder.out_channels[-1]
            pool: nn.Module = nn.AdaptiveAvgPool2d(1)
        else:
            self.encoder = build_timm_encoder(config.encoder, config.encoder_kwargs)
            width = self.encoder.num_features * (2 if config.pool == "token+avg" else 1)
            pool = TokenPool(getattr(self.encoder, "num_prefix_tokens", 0), config.pool)
        hidden = config.head_hidden
        layers: list[nn.Module] = [nn.Dropout(config.dropout)]
        if hidden:
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(config.dropout)]
        layers.append(nn.Linear(hidden or width, config.classes))
        self.head = nn.Sequential(pool, nn.Flatten(), *layers)
        self.features_dim = width

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's last output: a map ``(N, C, h, w)`` or tokens ``(N, T, D)``."""
        return self.encoder(x)[-1] if self.source == "smp" else self.encoder.forward_features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` pooled features of normalised ``(N, 3, P, P)`` patches."""
        return self.head[:2](self.trunk(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` of ``(N, D)`` features."""
        return self.head[2:](features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class TokenPool(nn.Module):
    """:func:`stages.encoders.token_features` as a module (no parameters)."""

    def __init__(self, prefix_tokens: int, pool: Pool) -> None:
        super().__init__()
        self.prefix_tokens, self.pool = prefix_tokens, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return token_features(x, self.prefix_tokens, self.pool)


def load_classifier(config: ClassifierConfig, folder: Path) -> PatchClassifier:
    """The classifier of ``config`` with its weights from ``folder``. With ``encoder_weights``,
    that file's sha256 is checked first, the encoder is filled from it
    (:func:`stages.encoders.load_encoder_checkpoint`; the network is built on the meta device,
    so a large encoder is never randomly initialised first) and the head from ``weights``; otherwise
    the whole network comes from ``weights``. :class:`stages.nets.AssetsError` on a mismatch."""
    if not config.encoder_weights:
        return load_weights(PatchClassifier(config), folder / config.weights)
    verify_sha256(folder / config.encoder_weights, config.encoder_sha256)
    with torch.device("meta"):  # no random initialisation of weights about to be replaced
        model = PatchClassifier(config)
    load_encoder_checkpoint(model.encoder, folder / config.encoder_weights, assign=True)
    load_weights(model.head, folder / config.weights, assign=True)
    unfilled = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if unfilled:
        raise AssetsError(f"{folder / config.encoder_weights}: no values for {unfilled[:3]}")
    return model.float()  # a float16 / bfloat16 checkpoint computes in float32 (autocast aside)


def patch_box(center: tuple[float, float], patch: int, scale: tuple[float, float]) -> Box:
    """Page-0 box of a ``patch``-pixel square of a page with ``scale``, centred on ``center``."""
    return Box.centered(center[0], center[1], patch * scale[0], patch * scale[1])


def read_patches(
    slide: Slide,
    centers: Sequence[tuple[float, float]],
    page: int,
    patch: int,
    should_stop: Callable[[int], bool] = lambda done: False,
) -> np.ndarray:
    """``(N, patch, patch, 3)`` uint8 patches of ``page`` centred on page-0 ``centers``, read in
    order; ``should_stop(done)``, asked before each patch after the first, ends the reading early
    (then N < ``len(centers)``: the patches of the first N centres)."""
    scale = slide.pages[page].scale
    if not centers:
        return np.zeros((0, patch, patch, 3), np.uint8)
    patches = []
    for center in centers:
        if patches and should_stop(len(patches)):
            break
        patches.append(slide.read_region(patch_box(center, patch, scale), page))
    return np.stack(patches)


def memory_batch(
    model: nn.Module,
    config: ClassifierConfig,
    device: torch.device,
    autocast: torch.dtype | None,
    most: int,
) -> int:
    """Patches per classifier batch that the memory free on ``device`` holds (1 to ``most``):
    one blank patch's forward pass is measured in the inference dtype
    (:func:`stages.memory.activation_bytes`) against :func:`stages.memory.free_memory_bytes`."""
    model.eval()
    blank = np.zeros((1, config.patch, config.patch, 3), np.uint8)
    with inference(device, autocast):
        per_patch = activation_bytes(model, to_input(blank, device, config.mean, config.std))
    free = free_memory_bytes(device)
    batch = batch_for_memory(free, per_patch, most)
    log.info(
        "classifier batches of at most %d patches (%.1f MB of activations a patch, %.1f GB free)",
        batch,
        per_patch / 1e6,
        free / 1e9,
    )
    return batch


def grade(
    model: nn.Module,
    patches: np.ndarray,
    config: ClassifierConfig,
    device: torch.device,
    autocast: torch.dtype | None = None,
    pad_to: int = 0,
) -> np.ndarray:
    """Class probabilities ``(N, classes)`` float32 of ``(N, P, P, 3)`` uint8 patches: softmax of
    the logits divided by ``config.temperature``; the network runs in ``autocast`` (None:
    float32). ``pad_to``: the patches run in batches of exactly that many
    (:func:`stages.nets.padded_forward`), the batch shape the network was warmed up on."""
    model.eval()
    with inference(device, autocast):
        inputs = to_input(patches, device, config.mean, config.std)
        logits = padded_forward(model, inputs, pad_to).float()
        return (logits / config.temperature).softmax(dim=1).cpu().numpy()
