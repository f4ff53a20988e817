"""Training per stage on a few small generated slides: the data layout, folds, the cache, hard
negatives, learning, checkpoint resume, the decision fit, and the export round trip.

The networks are tiny and train for one short epoch: these tests check the mechanics and the
data, not accuracy (the held-out evaluation measures that: ``make evaluate``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REAL_TISSUENET, TEST_RECIPE, TRAIN_MIX
from torch.utils.data import default_collate

from stages.classifier import PatchClassifier
from stages.config import load_assets
from stages.detector import build_detector
from stages.geometry import Box
from stages.metric import score
from stages.nets import inference, save_weights
from stages.result import SlideResult
from stages.slide import Slide
from training.data.augment import BatchAugment
from training.data.cache import Cache, CacheConfig, CachedSlide, build_cache, crop_size
from training.data.dataset import TrainSlide, assign_folds, read_training_set
from training.fit import classifier, decision, detector, head
from training.fit.classifier import ClassifierModule, freeze_encoder
from training.fit.common import (
    command_line,
    learning_curves,
    make_loader,
    option_args,
    options_from,
    stage_parser,
    start_weights,
    val_workers,
)
from training.fit.hard_negatives import mine_hard_negatives
from training.fit.patches import fit_temperature
from training.pack.export import assemble, export
from training.presets import TrainOptions
from training.stageio import load_stage_model, save_stage

RECIPE = TEST_RECIPE
FAST = TrainOptions(epochs=1, batch_size=8, samples=16, workers=0, patience=10)
SMALL = CacheConfig(square_patches=3, benign_patches=6, hard_negatives=4)


@pytest.fixture(scope="module")
def data(generated: Callable[..., Path]) -> Path:
    out = generated(4, 24, "train", TRAIN_MIX)
    assert sorted(s.label for s in read_training_set(out)) == [0, 0, 2, 2]
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's work folder: the cache of :func:`data`, then the trained stages."""
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def cache(data: Path, work: Path) -> Cache:
    build_cache(data, work / "cache", RECIPE, SMALL, folds=2)
    return Cache.open(work / "cache")


@pytest.fixture(scope="module")
def trained(data: Path, cache: Cache, work: Path) -> Path:
    """A work folder with every stage trained for one short epoch."""
    detector.train_detector(cache.root, work / "detector", RECIPE, FAST)
    mine_hard_negatives(cache.root, data, work / "detector", per_slide=SMALL.hard_negatives)
    classifier.train_classifier(cache.root, work / "classifier", RECIPE, FAST)
    decision.fit_stage(
        data, cache.root, work / "detector", work / "classifier", work / "decision", folds=2
    )
    return work


# -- the competition's layout ------------------------------------------------------------------


def test_absent_slides_are_counted_in_one_warning(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("train_metadata.csv", "train_labels.csv", "train_annotations.csv"):
        shutil.copy(data / name, tmp_path / name)
    present = sorted(data.glob("*.tif"))[:1]
    (tmp_path / present[0].name).symlink_to(present[0])
    with caplog.at_level(logging.WARNING):
        slides = read_training_set(tmp_path)
    assert [s.filename for s in slides] == [present[0].name]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("3 of 4 listed slides are not in")
    full = read_training_set(data)
    assert all(a.filename == s.filename for s in full for a in s.annotations)
    assert max(a.annotation_class for s in full for a in s.annotations) == 2


def test_the_real_layout_reads_with_its_tifs_absent(caplog: pytest.LogCaptureFixture) -> None:
    # The real CSVs (62 slides, 361 squares) without a single TIF, as after a partial download.
    with caplog.at_level(logging.WARNING):
        assert read_training_set(REAL_TISSUENET) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("62 of 62 listed slides are not in")


def _slides(labels: list[int], names: list[str]) -> list[TrainSlide]:
    from training.data.dataset import centre_of

    return [
        TrainSlide(n, Path(n), label, 0.25, (), centre_of(n))
        for n, label in zip(names, labels, strict=True)
    ]


def test_folds_are_stratified_and_grouped_by_centre_on_request() -> None:
    names = [f"C{c:02d}_B{i:03d}_S01.tif" for i, c in enumerate([1, 1, 2, 2, 3, 3, 4, 4] * 2)]
    slides = _slides([0, 1, 2, 3] * 4, names)
    folds = assign_folds(slides, 2, seed=0)
    for fold in (0, 1):
        labels = sorted(s.label for s in slides if folds[s.filename] == fold)
        assert labels == [0, 0, 1, 1, 2, 2, 3, 3]
    grouped = assign_folds(slides, 2, seed=0, by_centre=True)
    by_centre: dict[str, set[int]] = {}
    for s in slides:
        by_centre.setdefault(s.centre, set()).add(grouped[s.filename])
    assert all(len(f) == 1 for f in by_centre.values())  # a centre never spans two folds
    assert set(grouped.values()) == {0, 1}
    with pytest.raises(ValueError, match="Cxx_Byyy_Szz"):
        assign_folds(_slides([0, 1], ["a.tif", "b.tif"]), 2, by_centre=True)


# -- the cache ---------------------------------------------------------------------------------


def test_cache_serves_the_slide_and_resumes(
    data: Path, cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(cache.slides) == 4 and set(cache.slides["fold"]) == {0, 1}
    row = cache.slides.iloc[0]
    cached = CachedSlide(cache, row["filename"])
    page = int(row["detector_page"])
    sx, sy = cached.pages[page].scale
    left, top, _, _ = cache.fragments(row["stem"])[0]
    box = Box((left + 10) * sx, (top + 5) * sy, 100 * sx, 60 * sy)
    with Slide(data / row["filename"], mpp=float(row["mpp"])) as slide:
        np.testing.assert_array_equal(cached.read_region(box, page), slide.read_region(box, page))
        outside = Box(-100 * sx, -100 * sy, 50 * sx, 50 * sy)
        np.testing.assert_array_equal(
            cached.read_region(outside, page), slide.read_region(outside, page)
        )
    patches = cache.patches[cache.patches["source"] == "patches"]
    size = crop_size(RECIPE.classifier.patch, SMALL.crop_factor)
    assert cache.array(row["stem"], "patches").shape[1:] == (size, size, 3)
    squares = patches[patches["kind"] == "square"]
    assert len(squares) == SMALL.square_patches * len(cache.squares)
    benign = patches[patches["kind"] == "benign"]
    assert set(benign["filename"]) == set(cache.slides.query("label == 0")["filename"])
    assert (benign["cls"] == 0).all()

    before = {p: p.stat().st_mtime_ns for p in cache.root.glob("*/slide.json")}
    build_cache(data, cache.root, RECIPE, SMALL, folds=2)  # resumes: nothing to redo
    assert {p: p.stat().st_mtime_ns for p in cache.root.glob("*/slide.json")} == before
    with pytest.raises(ValueError, match="other settings"):
        build_cache(data, cache.root, RECIPE, replace(SMALL, square_patches=5), folds=2)


def test_an_unreadable_slide_is_skipped_and_named(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for path in data.iterdir():
        (tmp_path / path.name).symlink_to(path)
    broken = sorted(data.glob("*.tif"))[1].name
    (tmp_path / broken).unlink()
    (tmp_path / broken).write_bytes(b"II*\0 not a tiff at all")
    with caplog.at_level(logging.ERROR):
        slides = build_cache(tmp_path, tmp_path / "cache", RECIPE, SMALL, folds=2)
    assert len(slides) == 3 and broken not in set(slides["filename"])
    assert any(broken in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


# -- the stages --------------------------------------------------------------------------------


def test_hard_negatives_are_stage_one_top_hotspots_on_benign_slides(
    data: Path, cache: Cache, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = build_detector(RECIPE.detector)
    save_stage(tmp_path, "detector", model, RECIPE, {"metrics": {}, "command": "test"})
    n = mine_hard_negatives(cache.root, data, tmp_path, per_slide=3)
    mined = Cache.open(cache.root).patches.query("source == 'hard'")
    assert len(mined) == n > 0
    assert set(mined["filename"]) <= set(cache.slides.query("label == 0")["filename"])
    assert (mined["cls"] == 0).all() and (mined["kind"] == "hard").all()
    name = mined["filename"].iloc[0]
    rows = mined[mined["filename"] == name]
    _, hotspots = CachedSlide(cache, name).hotspots(model.eval(), RECIPE, torch.device("cpu"))
    expected = np.array([h.box.center for h in hotspots[:3]])
    np.testing.assert_allclose(rows[["x", "y"]].to_numpy(), expected)
    row = cache.row(name)
    size = crop_size(RECIPE.classifier.patch, SMALL.crop_factor)
    page = int(row["classifier_page"])
    with Slide(data / name, mpp=float(row["mpp"])) as slide:
        sx, sy = slide.pages[page].scale
        first = slide.read_region(Box.centered(*expected[0], size * sx, size * sy), page)
    np.testing.assert_array_equal(Cache.open(cache.root).array(row["stem"], "hard")[0], first)


@pytest.mark.slow
def test_the_classifier_overfits_a_tiny_fixed_batch(cache: Cache) -> None:
    torch.manual_seed(0)
    rows = cache.patches.query("source == 'patches'").groupby("cls").head(4)
    data = classifier.PatchSet(cache, rows, RECIPE.classifier, 0, False, 0)
    module = ClassifierModule(RECIPE.classifier, lr=3e-3, weight_decay=0.0, epochs=1)
    x = module.inputs(torch.stack([data[i][0] for i in range(len(data))]))
    y = torch.tensor([data[i][1] for i in range(len(data))])
    optimizer = torch.optim.Adam(module.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = module.loss(module.model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.slow
def test_a_head_trains_on_features_cached_once(
    cache: Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The features are computed once, in the device's inference precision (bfloat16 here,
    whatever this CPU computes natively), through all the training loader's workers."""
    options = replace(FAST, train_blocks=0, epochs=2, samples=64, workers=3)
    monkeypatch.setattr(head, "pick_precision", lambda device: torch.bfloat16)
    asked = []

    def loader(dataset, options: TrainOptions, train: bool, workers: int | None = None):
        asked.append(workers)
        return make_loader(dataset, options, train, 0)  # no processes spawned in the test

    monkeypatch.setattr(head, "make_loader", loader)
    metrics = classifier.train_classifier(cache.root, tmp_path / "head", RECIPE, options)
    assert asked == [3]  # the training loader's 3, not a validation loader's 1
    assert {"val_score", "temperature"} <= set(metrics)
    (path,) = (cache.root / "features").glob("*.npy")
    features = np.load(path)
    model = load_stage_model(tmp_path / "head", "classifier", PatchClassifier(RECIPE.classifier))
    current = Cache.open(cache.root)  # the module's cache gained mined hard negatives above
    assert features.shape == (len(current.patches), model.features_dim)
    # they are the saved encoder's features of the centre crops, in patches.csv order
    data = classifier.PatchSet(current, current.patches.iloc[:6], RECIPE.classifier, 0, False, 0)
    x = BatchAugment(RECIPE.classifier.mean, RECIPE.classifier.std, train=False)(
        torch.stack([data[i][0] for i in range(6)])
    )
    with inference(torch.device("cpu"), torch.bfloat16):
        expected = model.eval().features(x).float().numpy()
    np.testing.assert_allclose(features[:6], expected, rtol=2e-3, atol=2e-3)  # float16
    assert json.loads(path.with_suffix(".json").read_text())["dtype"] == "bfloat16"
    stamp = path.stat().st_mtime_ns
    classifier.train_classifier(cache.root, tmp_path / "again", RECIPE, options)
    assert path.stat().st_mtime_ns == stamp  # reused, not computed again
    info = json.loads((tmp_path / "head" / "classifier.json").read_text())
    assert info["frozen_encoder"] and len(info["history"]) == 2


@pytest.mark.slow
def test_fine_tuning_trains_only_the_last_blocks(cache: Cache, tmp_path: Path) -> None:
    vit = PatchClassifier(
        replace(RECIPE.classifier, encoder="vit_tiny_patch16_224", source="timm",
                encoder_kwargs={"img_size": 64, "depth": 3, "embed_dim": 48, "num_heads": 2})
    )  # fmt: skip
    frozen = freeze_encoder(vit.encoder, 1)
    last = [*vit.encoder.blocks[-1].parameters(), *vit.encoder.norm.parameters()]
    trainable = [p for p in vit.encoder.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == sum(p.numel() for p in last)
    assert vit.encoder.blocks[1] in frozen and vit.encoder.blocks[2] not in frozen
    # the smp encoder's last 2 blocks train; the rest, batch-norm statistics too, stay as begun
    pl.seed_everything(0, workers=True, verbose=False)
    start = PatchClassifier(RECIPE.classifier).state_dict()
    classifier.train_classifier(cache.root, tmp_path / "ft", RECIPE, replace(FAST, train_blocks=2))
    trained = load_stage_model(tmp_path / "ft", "classifier", PatchClassifier(RECIPE.classifier))
    blocks = len(trained.encoder.model.blocks)
    tail = tuple(f"encoder.model.blocks.{i}." for i in (blocks - 2, blocks - 1))
    changed = {
        key
        for key, value in trained.state_dict().items()
        if key.startswith("encoder.") and not torch.equal(value, start[key])
    }
    assert changed and all(key.startswith(tail) for key in changed), sorted(changed)[:5]


class Interrupt(pl.Callback):
    """Stops the run after its first epoch, as a killed run would end."""

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        trainer.should_stop = True


@pytest.mark.slow
def test_resuming_from_a_checkpoint_continues_the_same_run(cache: Cache, tmp_path: Path) -> None:
    two = replace(FAST, epochs=2)
    classifier.train_classifier(cache.root, tmp_path / "straight", RECIPE, two)
    classifier.train_classifier(cache.root, tmp_path / "resumed", RECIPE, two, [Interrupt()])
    first = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (first["epoch"], first["global_step"]) == (0, 2)
    classifier.train_classifier(cache.root, tmp_path / "resumed", RECIPE, replace(two, resume=True))
    states = [
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False)
        for run in ("straight", "resumed")
    ]
    assert states[0]["epoch"] == states[1]["epoch"] == 1
    assert states[0]["global_step"] == states[1]["global_step"] == 4
    for key, value in states[0]["state_dict"].items():
        torch.testing.assert_close(states[1]["state_dict"][key], value, msg=key)
    curves = [learning_curves(tmp_path / run) for run in ("straight", "resumed")]
    assert curves[1]["epoch"].tolist() == [0, 1]  # the resumed run's logs hold both epochs
    pd.testing.assert_frame_equal(curves[1], curves[0])


class EndOnSimulatedGpu(pl.Callback):
    """Ends the fit as a one-GPU run would: its strategy's device is CUDA (Lightning hands the
    module back on the CPU all the same)."""

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        trainer.strategy._root_device = torch.device("cuda", 0)


@pytest.mark.slow
def test_the_temperatures_logits_are_computed_on_the_fits_device(
    cache: Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def logits_on(model, loader, device: torch.device, autocast: torch.dtype | None = None):
        calls.append((device, autocast, len(loader.dataset)))
        return np.zeros((len(loader.dataset), 4), np.float32)

    monkeypatch.setattr(classifier, "predict_logits", logits_on)
    out = tmp_path / "classifier"
    classifier.train_classifier(cache.root, out, RECIPE, FAST, [EndOnSimulatedGpu()])
    val = len(Cache.open(cache.root).patches.query("fold == 0"))  # hard negatives included
    # on the GPU, in the runtime's float16 there; the network saved from the CPU all the same
    assert calls == [(torch.device("cuda", 0), torch.float16, val)]
    assert (out / "classifier.safetensors").is_file()


def test_validation_loaders_get_a_quarter_of_the_workers() -> None:
    shares = {workers: val_workers(workers) for workers in (0, 1, 2, 7, 8, 15, 16)}
    assert shares == {0: 0, 1: 1, 2: 1, 7: 1, 8: 2, 15: 3, 16: 4}
    for workers, val in ((0, 0), (2, 1)):  # no more workers than this machine's 2 CPUs
        options = replace(FAST, workers=workers)
        train = make_loader(range(10), options, train=True)
        assert train.num_workers == workers and train.drop_last
        loader = make_loader(range(10), options, train=False)
        assert loader.num_workers == val and not loader.drop_last
        assert loader.persistent_workers == (val > 0)


def test_detector_targets_travel_as_bytes_and_reach_the_losses_as_int64(cache: Cache) -> None:
    files = list(cache.slides["filename"])
    windows = detector.WindowSet(cache, files, RECIPE.detector, 4, 0.5, True, 0)
    window = RECIPE.detector.window
    batch = default_collate([windows[i] for i in range(4)])
    assert batch[1].dtype == torch.uint8 and batch[1].nbytes == 4 * window * window
    module = detector.DetectorModule(RECIPE.detector, 1e-3, 0.0, 1)
    module.trainer = pl.Trainer(accelerator="cpu", logger=False)
    x, y = module.on_after_batch_transfer(batch, 0)
    assert x.dtype == torch.float32 and x.shape == (4, 3, window, window)
    assert y.dtype == torch.int64 and torch.equal(y, batch[1].long())
    _, ce, dice = module._loss((x, y))
    assert torch.isfinite(ce) and torch.isfinite(dice)


def test_a_trainer_command_line_carries_every_option() -> None:
    # the pipeline runs each trainer as its command, with these arguments
    options = replace(FAST, lr=3e-3, devices="2", precision="32-true", resume=True, init="w.pt")
    parser = stage_parser("training.fit.classifier", None, classifier.DEFAULTS)
    assert options_from(parser.parse_args(["cache", "out", *option_args(options)])) == options
    fresh = option_args(replace(options, resume=False))
    assert "--resume" not in fresh and fresh[:4] == ["--epochs", "1", "--batch-size", "8"]


def test_init_starts_from_a_local_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = PatchClassifier(RECIPE.classifier)
    save_weights(source, tmp_path / "weights.safetensors")
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pt")
    for init, part in (("weights.safetensors", ""), ("encoder.pt", "encoder.")):
        torch.manual_seed(2)
        model = PatchClassifier(RECIPE.classifier)
        start_weights(model, replace(FAST, init=str(tmp_path / init)), RECIPE.classifier.encoder)
        loaded = {k: v for k, v in model.state_dict().items() if k.startswith(part)}
        assert loaded
        for key, value in loaded.items():
            torch.testing.assert_close(value, source.state_dict()[key])
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no key matches"):
        start_weights(model, replace(FAST, init=str(tmp_path / "other.pt")), "")


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in probs])
    assert fit_temperature(3.0 * logits, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0, np.int64)) == 1.0


@pytest.mark.slow
def test_the_decision_fit_improves_the_score_on_a_constructed_case() -> None:
    # Benign slides show 24 patches that each look mildly suspicious (p0 = 0.7): their product
    # makes the default pooling call every benign slide a lesion. Lesion slides of grade g show
    # a few confident grade-g patches among benign ones.
    rng = np.random.default_rng(3)
    evidence = []
    for i in range(48):
        label = i % 4
        grades = np.tile([0.7, 0.2, 0.06, 0.04], (24, 1))
        if label:
            hit = np.full(4, 0.02)
            hit[label] = 0.94
            grades[: rng.integers(2, 5)] = hit
        heat = rng.dirichlet(np.ones(4), 8)
        evidence.append(decision.Evidence(f"s{i}", grades, heat, label))
    labels = np.array([e.label for e in evidence])
    base = RECIPE.decision
    unfitted = score(labels, decision.cross_validate(evidence, base, 4, fit=False))
    fitted = score(labels, decision.cross_validate(evidence, base, 4))
    assert unfitted < 0.85 and fitted > unfitted + 0.1


# -- export ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_then_load_assets_round_trips(trained: Path, tmp_path: Path) -> None:
    out = export(trained, tmp_path / "assets", "test export", "four generated slides")
    loaded = load_assets(out, torch.device("cpu"))
    config = assemble(trained, "test export", "four generated slides")
    assert loaded.config == replace(
        config, provenance=replace(config.provenance, date=loaded.config.provenance.date)
    )
    provenance = loaded.config.provenance
    assert provenance.data == "four generated slides" and provenance.commit
    # the three stages were trained by this process: their one command, listed once
    assert provenance.command == command_line()
    assert "decision_fit_score" in provenance.metrics
    stage = load_stage_model(
        trained / "classifier", "classifier", PatchClassifier(config.classifier)
    )
    for key, value in stage.state_dict().items():
        torch.testing.assert_close(loaded.classifier.state_dict()[key], value)
    assert config.classifier.temperature > 0
    assert config.budget.prior_patch_s > 0
    # the decision was fitted on the validation fold's slides, never on the training folds
    results = sorted((trained / "decision" / "results").glob("*.npz"))
    val = set(Cache.open(trained / "cache").slides.query("fold == 0")["filename"])
    assert {SlideResult.load(p).filename for p in results} == val


@pytest.mark.slow
def test_a_fit_on_a_gpu_ships_cost_priors_measured_on_the_cpu(
    data: Path, cache: Cache, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validation slides are graded on a (simulated) GPU, whose costs are a hundredth of a
    millisecond each; the budget's priors are the CPU's, in the runtime's precision."""
    real, devices = decision.run_cascade, []

    def on_simulated_gpu(assets, paths, mpps, out, device, *args, **kwargs):
        devices.append((torch.device(device).type, len(paths), *args, *kwargs.values()))
        results, costs = real(assets, paths, mpps, out, torch.device("cpu"), *args, **kwargs)
        if torch.device(device).type == "cuda":
            costs = dict.fromkeys(costs, 1e-5)
        return results, costs

    monkeypatch.setattr(decision, "run_cascade", on_simulated_gpu)
    out = tmp_path / "decision"
    decision.fit_stage(
        data, cache.root, trained / "detector", trained / "classifier", out, 2, "cuda"
    )
    val = len(cache.slides.query("fold == 0"))
    assert devices == [("cuda", val), ("cpu", min(val, decision.COST_SLIDES), "auto", True)]
    info = json.loads((out / "decision.json").read_text())
    budget = info["cascade"]["budget"]
    for name in ("patch_s", "batch_s", "detector_mpx_s", "prepare_s", "hotspots_mcell_s"):
        assert budget[f"prior_{name}"] == info["metrics"][f"cost_{name}"] != 1e-5
    assert info["costs_measured_on"]["device"] == "cpu"


@pytest.mark.slow
def test_train_speed_times_each_stage_three_ways(cache: Cache, tmp_path: Path) -> None:
    from training.bench import train_speed
    from training.presets import Preset

    preset = Preset(RECIPE, 2, replace(FAST, batch_size=4), replace(FAST, batch_size=8))
    table = train_speed.measure(cache.root, tmp_path, preset, steps=5, warmup=2,
                                accelerator="cpu", workers=0)  # fmt: skip
    assert list(table["stage"]) == ["detector", "classifier"]
    assert list(table["batch"]) == [4, 8]
    assert list(table["timed steps"]) == [3, 3]  # steps 3, 4 and 5 of 5
    rates = table[["loader samples/s", "device alone samples/s", "training samples/s"]]
    assert (rates > 0).all().all() and np.isfinite(rates.to_numpy()).all()
    assert table[["training GPU %", "training peak GPU MB"]].isna().all().all()  # no GPU here
    # the trainer's own run, with its outputs, is what the training rate timed
    assert (tmp_path / "runs" / "detector" / "detector.safetensors").is_file()
    assert (tmp_path / "runs" / "classifier" / "classifier.safetensors").is_file()
