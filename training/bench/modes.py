"""The benchmark's modes: the ways of grading it times, and the asset sets they grade with.

A :class:`Mode` is ``main.py`` with a budget override (``budget.max_k``, stage 2 off, no
prefetch, float32, a time limit) or the exhaustive baseline (:mod:`training.bench.exhaustive`),
on the shipped assets or on one of :data:`ASSET_SETS` (random weights: they time, they do not
grade): the standard preset, or the shipped detector with stage 2 on a foundation-size timm ViT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from stages.classifier import PatchClassifier
from stages.config import load_assets, load_config, save_config
from stages.encoders import ENCODER_CARDS
from stages.nets import save_weights
from training.pack.export import encoder_config, init_assets
from training.presets import PRESETS
from training.stageio import write_assets

log = logging.getLogger(__name__)


KS = (1, 2, 4, 8, 16, 32)
PER_SLIDE_LIMITS_S = (0.5, 1.0, 2.0, 4.0)
#: Slide sets of the shipped assets' modes, and of the other asset sets'.
SHIPPED_SETS = ("heldout", "real", "canvas")
STANDARD_SETS = ("real", "canvas")
FOUNDATION_SETS = ("real2",)
#: Asset sets besides the shipped ones: name → (preset, stage-2 encoder card or None).
ASSET_SETS = {
    "standard": ("standard", None),
    "vit-l16": ("shipped", "uni"),
    "vit-g14": ("shipped", "h-optimus-0"),
}
FOUNDATION_MODELS = {"vit-l16": "ViT-L/16 (UNI size)", "vit-g14": "ViT-g/14 (H-optimus size)"}
#: Tiles a slide the foundation-size exhaustive modes grade (the rest extrapolated).
FOUNDATION_TILES = 8


@dataclass(frozen=True)
class Mode:
    """One way of grading: ``main.py`` with a budget override, or the exhaustive baseline."""

    name: str
    max_k: int = 32
    stage2: bool = True
    prefetch: bool = True
    precision: str = "auto"
    per_slide_s: float | None = None  # a binding time limit of about this much per slide
    exhaustive: bool = False
    assets: str = "shipped"  # "shipped" or a key of ASSET_SETS
    sets: tuple[str, ...] = SHIPPED_SETS  # the slide sets it runs on
    sample_tiles: int | None = None  # exhaustive: tiles graded a slide, the time extrapolated
    min_score: float | None = None  # hotspots.min_score override


def modes() -> list[Mode]:
    """Every mode of the benchmark, in table order."""
    chosen = [
        *(Mode(f"cascade k={k}", max_k=k) for k in KS),
        Mode("cascade k=32, no prefetch", prefetch=False),
        Mode("cascade k=32, float32", precision="float32"),
        *(Mode(f"cascade ~{t:g} s/slide", per_slide_s=t) for t in PER_SLIDE_LIMITS_S),
        Mode("detector only", stage2=False),
        Mode("exhaustive", exhaustive=True),
        Mode("standard: cascade k=32", assets="standard", sets=STANDARD_SETS),
        Mode(
            "standard: exhaustive (64 tiles a slide, extrapolated)",
            exhaustive=True,
            assets="standard",
            sets=STANDARD_SETS,
            sample_tiles=64,
        ),
    ]
    for key, label in FOUNDATION_MODELS.items():
        found = {"assets": key, "sets": FOUNDATION_SETS}
        chosen += [Mode(f"{label}: cascade k={k}", max_k=k, min_score=0.0, **found) for k in KS[3:]]
        chosen.append(
            Mode(
                f"{label}: exhaustive ({FOUNDATION_TILES} tiles a slide, extrapolated)",
                exhaustive=True,
                sample_tiles=FOUNDATION_TILES,
                **found,
            )
        )
    return chosen  # fmt: skip


def build_asset_set(name: str, out: Path, shipped: Path) -> Path:
    """The assets of :data:`ASSET_SETS` ``name`` under ``out/assets/<name>`` (built once, with
    random weights): the standard preset; or the shipped assets with stage 2 on a recipe's timm
    encoder, from a checkpoint of random weights written beside them."""
    target = out / "assets" / name
    if (target / "config.json").is_file():
        return target
    preset, recipe = ASSET_SETS[name]
    if recipe is None:
        return init_assets(target, PRESETS[preset].cascade, note=f"{preset} preset, random weights")
    base = load_assets(shipped, torch.device("cpu"))
    card = ENCODER_CARDS[recipe]
    torch.manual_seed(0)
    classifier = PatchClassifier(
        replace(base.config.classifier, encoder=card.model, source="timm",
                encoder_kwargs=card.kwargs, pool=card.pool, patch=card.size)
    )  # fmt: skip
    checkpoint = out / "assets" / f"{name}-random.safetensors"
    save_weights(classifier.encoder, checkpoint)
    stage2 = encoder_config(base.config.classifier, recipe, checkpoint)
    config = replace(
        base.config,
        classifier=stage2,
        note=f"shipped detector; stage 2 on {recipe}'s timm encoder with random weights",
    )
    return write_assets(target, config, base.detector, classifier, checkpoint)


def mode_assets(assets: Path, mode: Mode, out: Path) -> Path:
    """``assets`` with the mode's budget in its config (weights linked, not copied)."""
    config = load_config(assets)
    budget = replace(
        config.budget,
        max_k=mode.max_k,
        min_k=min(config.budget.min_k, mode.max_k),
        stage2=mode.stage2,
    )
    hotspots = config.hotspots
    if mode.min_score is not None:
        hotspots = replace(hotspots, min_score=mode.min_score)
    if budget == config.budget and hotspots == config.hotspots:
        return assets
    target = out / "assets"
    target.mkdir(parents=True, exist_ok=True)
    names = (config.detector.weights, config.classifier.weights, config.classifier.encoder_weights)
    for weights in filter(None, names):
        link = target / weights
        link.unlink(missing_ok=True)
        link.symlink_to((assets / weights).resolve())
    save_config(replace(config, budget=budget, hotspots=hotspots), target)
    load_config(target)  # the variant must validate as the runtime would
    return target
