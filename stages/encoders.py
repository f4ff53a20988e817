"""Stage 2's timm encoders and their weight files: any timm model, pathology foundation models
included, built offline and filled from a local checkpoint in the layout its model card ships.

A timm encoder is built with ``timm.create_model(name, pretrained=False, num_classes=0,
global_pool="", **kwargs)``, so it never downloads; :func:`token_features` pools its
``forward_features`` tokens into one ``(N, D)`` vector per patch. Its weights come from a file
in the assets folder whose sha256 the config records; :func:`verify_sha256` checks it before any
slide is read, and :func:`load_encoder_checkpoint` reads the layouts the model cards publish
(a timm state dict as safetensors or a torch pickle, Meta's DINOv2 layout with register tokens,
those wrapped in ``model`` / ``state_dict`` / ``teacher`` or prefixed ``module.`` /
``backbone.``), converting them with timm's own checkpoint filter of the model's family.

:data:`ENCODER_CARDS` are the foundation models' timm arguments, input size and normalisation, as
their model cards give them (README, "Stage 2 encoders").
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from stages.nets import IMAGENET_MEAN, IMAGENET_STD, AssetsError, fill

log = logging.getLogger(__name__)

#: How the tokens ``(N, T, D)`` of a ViT become one patch vector: the class token, the mean of
#: the patch tokens (after the prefix tokens), or both concatenated (Virchow's ``2 D`` vector).
Pool = Literal["token", "avg", "token+avg"]
#: ``encoder_kwargs`` values are JSON; these keys name a class of ``timm.layers``.
LAYER_KWARGS = ("mlp_layer",)
Kwarg = bool | int | float | str


@dataclass(frozen=True)
class EncoderCard:
    """A foundation model as its model card builds it: timm ``model`` with ``kwargs``, input
    ``size`` px at ``mpp`` µm/px, normalisation, pooling, feature width, licence and source."""

    model: str
    kwargs: dict[str, Kwarg]
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pool: Pool
    features: int
    licence: str
    source: str
    mpp: float = 0.5


_SWIGLU: dict[str, Kwarg] = {"mlp_layer": "SwiGLUPacked", "act_layer": "silu"}
ENCODER_CARDS: dict[str, EncoderCard] = {
    "uni": EncoderCard(
        "vit_large_patch16_224",
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
        224, IMAGENET_MEAN, IMAGENET_STD, "token", 1024,
        "CC-BY-NC-ND 4.0, gated", "huggingface.co/MahmoodLab/UNI, pytorch_model.bin",
    ),
    "uni2-h": EncoderCard(
        "vit_giant_patch14_224",
        {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
         "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8,
         "dynamic_img_size": True, **_SWIGLU},
        224, IMAGENET_MEAN, IMAGENET_STD, "token", 1536,
        "CC-BY-NC-ND 4.0, gated", "huggingface.co/MahmoodLab/UNI2-h, pytorch_model.bin",
    ),
    "virchow2": EncoderCard(
        "vit_huge_patch14_224",
        {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "reg_tokens": 4,
         "dynamic_img_size": True, **_SWIGLU},
        224, IMAGENET_MEAN, IMAGENET_STD, "token+avg", 2560,
        "CC-BY-NC-ND 4.0, gated", "huggingface.co/paige-ai/Virchow2, pytorch_model.bin",
    ),
    "h-optimus-0": EncoderCard(
        "vit_giant_patch14_reg4_dinov2",
        {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
        224, (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "token", 1536,
        "Apache 2.0", "huggingface.co/bioptimus/H-optimus-0, pytorch_model.bin",
    ),
    "h-optimus-1": EncoderCard(
        "vit_giant_patch14_reg4_dinov2",
        {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
        224, (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "token", 1536,
        "non-commercial, gated", "huggingface.co/bioptimus/H-optimus-1, pytorch_model.bin",
    ),
    "prov-gigapath": EncoderCard(
        "vit_giant_patch14_dinov2",
        {"img_size": 224, "in_chans": 3},
        224, IMAGENET_MEAN, IMAGENET_STD, "token", 1536,
        "Apache 2.0, gated", "huggingface.co/prov-gigapath/prov-gigapath, pytorch_model.bin",
    ),
}  # fmt: skip


def build_timm_encoder(name: str, kwargs: dict[str, Kwarg]) -> nn.Module:
    """The timm model ``name`` with ``kwargs``, randomly initialised, without its classifier head
    or pooling (``forward_features`` gives tokens ``(N, T, D)`` or maps ``(N, D, h, w)``).
    ValueError for a name timm does not know."""
    if not timm.is_model(name):
        raise ValueError(f"classifier.encoder: timm has no model {name!r}")
    args: dict[str, object] = dict(kwargs)
    for key in LAYER_KWARGS:
        if key in args:
            args[key] = getattr(timm.layers, str(args[key]))
    return timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **args)


def token_features(out: torch.Tensor, prefix_tokens: int, pool: Pool) -> torch.Tensor:
    """``(N, D)`` (``(N, 2 D)`` for ``token+avg``) features of ``forward_features`` output:
    tokens ``(N, T, D)`` whose first ``prefix_tokens`` are class / register tokens, or a
    feature map ``(N, D, h, w)`` (CNNs; always averaged)."""
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    avg = out[:, prefix_tokens:].mean(dim=1)
    if pool == "avg" or prefix_tokens == 0:
        return avg
    if pool == "token":
        return out[:, 0]
    return torch.cat([out[:, 0], avg], dim=1)


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """:class:`AssetsError` unless the file exists and its sha256 is ``expected``."""
    if not path.is_file():
        raise AssetsError(f"encoder weight file missing: {path}")
    actual = sha256(path)
    if actual != expected:
        raise AssetsError(
            f"encoder weight file {path} has sha256 {actual}, the config records {expected}: "
            "a different or damaged file"
        )


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch pickle (loaded with ``weights_only``),
    unwrapped from ``model`` / ``state_dict`` / ``teacher`` and from a ``module.`` or
    ``backbone.`` prefix shared by every key."""
    try:
        if path.suffix == ".safetensors":
            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # both libraries raise several types for a bad file
        raise AssetsError(f"encoder weight file unreadable: {path}: {exc}") from exc
    while isinstance(state, dict):
        wrapper = next((k for k in ("model", "state_dict", "teacher") if k in state), None)
        if wrapper is None or isinstance(state[wrapper], torch.Tensor):
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AssetsError(f"encoder weight file {path} holds no state dict of tensors")
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_encoder_checkpoint(encoder: nn.Module, path: Path, assign: bool = False) -> nn.Module:
    """Fill a :func:`build_timm_encoder` model from ``path`` (:func:`read_checkpoint`),
    converted by timm's checkpoint filter of the model's family (DINOv2, CLIP … layouts) and
    without classifier-head keys (``assign``: the file's tensors become the parameters, for an
    encoder built on the meta device); :class:`AssetsError` naming the keys that do not match."""
    state = read_checkpoint(path)
    family = importlib.import_module(type(encoder).__module__)
    convert = getattr(family, "checkpoint_filter_fn", None)
    if convert is not None:
        try:
            state = convert(state, encoder)
        except (RuntimeError, ValueError, KeyError) as exc:  # e.g. a grid of another size
            raise AssetsError(
                f"encoder weight file {path} does not match {type(encoder).__name__} in the "
                f"config: {type(exc).__name__}: {exc}"
            ) from exc
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    return fill(encoder, state, f"encoder weight file {path}", type(encoder).__name__, assign)
