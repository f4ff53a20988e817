"""The ``realistic`` cohort of the generator: its statistics (exact seeds, specs only), lesions
graded by depth in the label map, and one tiny folder written with its ground truth."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data.dataset import centre_of
from training.data.synthetic import Tissue, render_maps, sample_specs
from training.data.synthetic.__main__ import main as synthetic_main
from training.data.synthetic.cohort import CENTRES, COHORTS, HELD_OUT
from training.data.synthetic.depth import column_centre_depth_um, column_corners
from training.data.synthetic.spec import Layers
from training.data.synthetic.truth_tables import (
    LESION_COLUMNS,
    SLIDE_COLUMNS,
    lesion_truth,
    slide_truth,
)

REALISTIC = COHORTS["realistic"]


@pytest.fixture(scope="module")
def cohort() -> dict[str, list]:
    """120 specs of seed 11 per split (no rendering: a few seconds)."""
    return {split: sample_specs(120, 11, REALISTIC, split) for split in ("train", "test")}


def test_lesion_sizes_span_small_foci_to_large_areas(cohort: dict[str, list]) -> None:
    sizes = lesion_truth(cohort["train"])["size_um"]
    # log-uniform 80-1500 µm (measured: 80 to 1482, median 472; 20 % < 150, 7 % > 1000)
    assert 80 <= sizes.min() < 90 and 1300 < sizes.max() <= 1500
    assert 300 < sizes.median() < 600
    assert (sizes < 150).mean() > 0.1 and (sizes > 1000).mean() > 0.05


def test_worst_lesion_is_the_smallest_in_a_large_share_of_lesional_slides(
    cohort: dict[str, list],
) -> None:
    slides = slide_truth(cohort["train"])
    lesional = slides[slides["label"] > 0]
    assert lesional["worst_is_smallest"].mean() >= 0.30  # measured 0.416
    lesions = lesion_truth(cohort["train"])
    assert set(lesions.groupby("filename")["grade"].nunique()) >= {1, 2, 3}  # mixed grades


def test_label_noise_is_a_few_percent_one_grade_off(cohort: dict[str, list]) -> None:
    for specs in cohort.values():
        noisy = [s for s in specs if s.written_label is not None]
        assert 0.02 <= len(noisy) / len(specs) <= 0.08  # measured 0.033 (train), 0.050 (test)
        assert all(abs(s.written_label - s.label) == 1 for s in noisy)
        slides = slide_truth(specs).set_index("filename")
        assert (slides.loc[[s.filename for s in noisy], "written_label"] != [
            s.label for s in noisy
        ]).all()  # fmt: skip


def test_some_lesions_are_unannotated_but_every_lesional_slide_has_a_square(
    cohort: dict[str, list],
) -> None:
    lesions = lesion_truth(cohort["train"])
    assert 0.15 < (~lesions["annotated"]).mean() < 0.4  # measured 0.269
    assert (~lesions.loc[lesions["worst"], "annotated"]).mean() > 0.1  # the worst too
    slides = slide_truth(cohort["train"])
    assert (slides.loc[slides["label"] > 0, "annotated_lesions"] > 0).all()


def test_benign_mimics_of_both_kinds(cohort: dict[str, list]) -> None:
    specs = cohort["train"]
    reactive = [s for s in specs if any(m.layers is not None for m in s.lookalikes)]
    inflamed = [s for s in specs if any(m.layers is None for m in s.lookalikes)]
    assert 0.35 < len(reactive) / len(specs) < 0.65  # chance 0.5 (measured 0.48)
    assert 0.45 < len(inflamed) / len(specs) < 0.75  # chance 0.6 (measured 0.63)
    assert any(s.label == 0 for s in reactive)


def test_centre_profiles_are_distinct_and_carried_by_the_filenames(
    cohort: dict[str, list],
) -> None:
    for a, b in itertools.combinations(CENTRES, 2):
        stain_gap = np.abs(np.subtract(a.haematoxylin + a.eosin, b.haematoxylin + b.eosin)).max()
        assert stain_gap > 0.05, (a.name, b.name)
        assert (a.mpp, a.jpeg_quality, a.blur_um) != (b.mpp, b.jpeg_quality, b.blur_um)
    assert len({c.jpeg_quality for c in CENTRES}) >= 5 and len({c.mpp for c in CENTRES}) == 7
    for spec in cohort["test"]:
        assert centre_of(spec.filename) == spec.centre.name
        assert spec.mpp == spec.centre.mpp
        assert spec.magnification == spec.centre.magnification


def test_held_out_centre_only_in_the_test_split(cohort: dict[str, list]) -> None:
    train = {s.centre.name for s in cohort["train"]}
    test = [s.centre.name for s in cohort["test"]]
    assert train == {c.name for c in CENTRES} - set(HELD_OUT)
    assert set(test) == {c.name for c in CENTRES}
    assert 0.15 < np.isin(test, HELD_OUT).mean() < 0.4  # share 0.25 (measured 0.32)


def test_column_geometry() -> None:
    layers = Layers(fill=0.5, normal_deg=90.0, epi_um=200.0, invasion_um=100.0)
    assert layers.band_um == 200.0
    assert column_centre_depth_um(layers) == 200.0  # 100 µm of normal layers, then half the band
    corners = column_corners(1000.0, 2000.0, 300.0, layers, 0.5)  # normal = +y (down)
    assert np.allclose(sorted(corners[:, 0]), [700, 700, 1300, 1300])
    assert np.allclose(sorted(corners[:, 1]), [1800, 1800, 2200, 2200])


@pytest.mark.parametrize(
    ("grade", "tissue"), [(1, Tissue.LSIL), (2, Tissue.HSIL), (3, Tissue.INVASIVE)]
)
def test_grade_is_drawn_by_depth_in_the_label_map(grade: int, tissue: Tissue) -> None:
    mix = tuple(float(k == grade) for k in range(4))
    config = replace(REALISTIC, class_mix=mix, size_range=(8000, 8000))
    spec = sample_specs(1, 3, config)[0]
    maps = render_maps(spec)
    level = maps.level[maps.labels == tissue]  # 0 = basement membrane, 1 = surface
    assert level.size and not np.isnan(level).any()
    assert level.min() < 0.05  # every lesion rises from the basement membrane
    if grade == 1:
        assert level.max() <= 1 / 3  # the lower third only
    if grade == 2:
        fills = [le.layers.fill for le in spec.lesions if le.grade == 2]
        assert level.max() >= 2 / 3 - 0.02 and level.max() <= max(fills)
    if grade == 3:
        assert (level < 0).sum() > 100  # nests below the basement membrane
    assert ((maps.labels == Tissue.REACTIVE) & (maps.level < 0)).sum() == 0  # maturing layers


def test_realistic_folder_has_written_labels_and_ground_truth(tmp_path: Path) -> None:
    out = tmp_path / "data"
    argv = [str(out), "--cohort", "realistic", "--slides", "1", "--seed", "5", "--split", "test",
            "--size-range", "1024", "1100"]  # fmt: skip
    assert synthetic_main(argv) == 0
    specs = sample_specs(1, 5, replace(REALISTIC, size_range=(1024, 1100)), "test")
    labels = pd.read_csv(out / "test_labels.csv")
    assert list(labels["filename"]) == [s.filename for s in specs]
    written = labels[["0", "1", "2", "3"]].to_numpy().argmax(1)
    assert list(written) == [s.label_as_written for s in specs]
    lesions = pd.read_csv(out / "truth_lesions.csv")
    slides = pd.read_csv(out / "truth_slides.csv", keep_default_na=False)
    assert list(lesions.columns) == LESION_COLUMNS and list(slides.columns) == SLIDE_COLUMNS
    assert list(slides["label"]) == [s.label for s in specs]
    assert list(slides["centre"]) == [s.centre.name for s in specs]
    assert len(lesions) == sum(le.grade > 0 for s in specs for le in s.lesions)
