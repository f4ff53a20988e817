"""The generator's labels against its ground truth: what annotated squares hold, and the
low- versus high-resolution grading check on a tiny train folder; the geometry report (metadata
against TIF sizes, y-flip convention) on padded TIFs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pyvips
from helpers import REAL_TISSUENET as REAL

from stages.geometry import Box
from stages.slide import Slide
from training.data.annotations import annotations_frame
from training.data.check import box_coverage, flip_verdict, geometry_report, main
from training.data.convert import save_competition_tiff
from training.data.dataset import read_training_set
from training.data.synthetic import (
    LESION_TISSUE,
    Fragment,
    Lesion,
    SlideSpec,
    SynthConfig,
    layout_specs,
    render_maps,
    sample_specs,
    slide_annotations,
    write_dataset,
)
from training.data.synthetic.truth import (
    centre_windows,
    image_features,
    resolution_check,
    square_coverage,
)
from training.presets import load_preset

TINY = SynthConfig(class_mix=(0.1, 0.3, 0.3, 0.3), size_range=(3000, 4000))


def _spec(*lesions: Lesion) -> SlideSpec:
    """An 8000 px slide at 0.25 µm/px holding one plain elliptical fragment (1600 x 1400 µm)
    around its centre, epithelium on a short arc at its left end, and ``lesions``."""
    fragment = Fragment(cx=4000, cy=4000, length_um=1600, width_um=1400, angle_deg=0.0,
                        shape=(), epi_from_deg=175, epi_extent_deg=10, epi_um=150)  # fmt: skip
    return SlideSpec("a.tif", 8000, 8000, 0.25, 40, 1, fragments=(fragment,), lesions=lesions)


def test_coverage_of_a_square_inside_its_lesion() -> None:
    coverage = square_coverage(_spec(Lesion(4000, 4000, 2, 600, True)))
    assert list(coverage.columns) == [
        "annotation_id", "filename", "class", "own", "other", "tissue", "artefact",
    ]  # fmt: skip
    row = coverage.iloc[0]
    assert (row.annotation_id, row["class"]) == ("a_0", 2)
    assert (row.own, row.other, row.tissue, row.artefact) == (1.0, 0.0, 1.0, 0.0)


def test_close_squares_of_two_grades_split_at_the_bisector() -> None:
    # real layout boxes may lie 200 µm apart: each lesion paints only its Voronoi half, so the
    # bisector (100 µm from each site) cuts 50 of each square's 300 µm (75 map px of 2 µm).
    coverage = square_coverage(
        _spec(Lesion(4000, 4000, 2, 600, True), Lesion(4800, 4000, 3, 600, True))
    )
    assert list(coverage["class"]) == [2, 3]
    assert coverage["own"].tolist() == pytest.approx([125 / 150, 125 / 150], abs=1e-12)
    assert coverage["other"].tolist() == pytest.approx([25 / 150, 25 / 150], abs=1e-12)
    assert coverage["tissue"].tolist() == [1.0, 1.0]


def test_a_square_on_glass_holds_nothing() -> None:
    spec = SlideSpec("g.tif", 4000, 4000, 0.25, 40, 2, lesions=(Lesion(2000, 2000, 1, 600, True),))
    row = square_coverage(spec).iloc[0]
    assert (row.own, row.other, row.tissue) == (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def random_coverage() -> tuple[list[SlideSpec], pd.DataFrame]:
    specs = [spec for seed in (101, 202, 7) for spec in sample_specs(6, seed)]
    return specs, pd.concat([square_coverage(spec) for spec in specs], ignore_index=True)


def test_random_squares_never_meet_another_class(
    random_coverage: tuple[list[SlideSpec], pd.DataFrame],
) -> None:
    specs, coverage = random_coverage
    # sample_specs(n, 101)[3] used to put a grade-1 and a grade-2 square on one lesion
    assert {a.annotation_class for a in slide_annotations(specs[3])} == {2}
    for spec in specs:
        for a, b in combinations(slide_annotations(spec), 2):
            if a.annotation_class != b.annotation_class:
                apart = a.box.right <= b.box.x or b.box.right <= a.box.x
                assert apart or a.box.bottom <= b.box.y or b.box.bottom <= a.box.y
    assert (coverage["other"] == 0).all()
    assert set(coverage["class"]) == {0, 1, 2, 3}


def test_lesion_squares_are_their_lesion_wherever_there_is_tissue(
    random_coverage: tuple[list[SlideSpec], pd.DataFrame],
) -> None:
    _, coverage = random_coverage
    lesions = coverage[coverage["class"] > 0]
    # The lesion's blob holds a disc wider than the square's half-diagonal and paints all
    # tissue down to 225 µm below the site (more than the 212 µm any point of the square can
    # be below it), so every tissue pixel of the square is the lesion: own == tissue exactly.
    assert (lesions["own"] == lesions["tissue"]).all()
    # What is not the lesion is glass: sites are 150 µm (half a square) below the surface, so
    # a flat surface leaves none and a curved or tilted one a few %; squares are placed 90 %
    # on their fragment when one of 30 tries allows (measured: median 0.96, min 0.79).
    assert lesions["own"].median() >= 0.9
    assert lesions["own"].min() >= 0.5
    normal = coverage[coverage["class"] == 0]
    assert normal["own"].median() >= 0.9  # normal sites are placed the same way


def test_layout_lesions_paint_only_their_voronoi_cells() -> None:
    """Real boxes of different classes can be close (C06_B076_S21 has a class-2 and a class-3
    square 351 µm apart); no lesion pixel is nearer a site of another grade than its own."""
    specs = layout_specs(REAL / "train_metadata.csv", REAL / "train_annotations.csv", scale=8)
    checked = 0
    for spec in specs:
        if len({site.grade for site in spec.lesions}) < 2:
            continue
        maps = render_maps(spec)
        centres = np.array([(site.cx, site.cy) for site in spec.lesions])
        grades = np.array([site.grade for site in spec.lesions])
        for grade, tissue in LESION_TISSUE.items():
            i, j = np.nonzero(maps.labels == tissue)
            if not len(i):
                continue
            xy = np.stack([(j + 0.5) * maps.zoom, (i + 0.5) * maps.zoom], 1)
            dist = np.hypot(*(xy[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
            own = dist[:, grades == grade].min(1)
            rival = np.where(grades[None, :] != grade, dist, np.inf).min(1)
            assert (own <= rival).all(), (spec.filename, grade)
            checked += len(xy)
    assert checked > 10_000
    close = square_coverage(next(s for s in specs if s.filename == "C06_B076_S21.tif"))
    assert (close["other"] > 0).any() and (close["own"] + close["other"] <= 1).all()


def test_image_features_are_exact_on_a_checkerboard() -> None:
    board = np.indices((64, 64)).sum(0) % 2 * 255
    rgb = np.repeat(board[..., None], 3, axis=2).astype(np.uint8)
    features = image_features(rgb)
    assert features.shape == (32,) and np.isfinite(features).all()
    assert features[:3].tolist() == [127.5] * 3  # channel means
    assert features[3:6].tolist() == [127.5] * 3  # channel stds
    # co-occurrence of the two levels 0 and 7 only: contrast 49, homogeneity 1/8, energy 1/2,
    # correlation -1
    assert features[-5:-1].tolist() == pytest.approx([49, 1 / 8, 1 / 2, -1])
    flat = image_features(np.full((32, 32, 3), 200, np.uint8))
    assert flat[3:6].tolist() == [0, 0, 0]  # no contrast, no gradient, no Laplacian energy
    assert flat[21:27].tolist() == [0] * 6


@pytest.fixture(scope="module")
def tiny_train(generated: Callable[..., Path]) -> Path:
    return generated(8, 4, "train", TINY)


def test_high_resolution_windows_sit_at_the_square_centre() -> None:
    """A small focus in the middle of its square (a bright 40 px block of a 600 px square read
    at the high-resolution page) lies whole in every window: windows jitter by at most 5 % of
    the side (30 px), and 64 - 30 >= 20."""
    square = np.zeros((600, 600, 3), np.uint8)
    square[280:320, 280:320] = 255

    class Square:
        def read_region(self, box: Box, page: int) -> np.ndarray:
            return square

    rng = np.random.default_rng(0)
    crops = centre_windows(Square(), Box(0.0, 0.0, 600.0, 600.0), 0, 128, 8, rng)  # type: ignore[arg-type]
    assert len(crops) == 8
    assert all(c.shape == (128, 128, 3) and (c == 255).all(-1).sum() == 40 * 40 for c in crops)


# a tiny folder's slide-grouped folds can miss a class: scikit-learn warns, the check still runs
@pytest.mark.filterwarnings("ignore:Number of classes in training fold")
def test_resolution_check_runs_on_a_tiny_folder(tiny_train: Path) -> None:
    annotations = pd.read_csv(tiny_train / "train_annotations.csv")
    lesions = annotations[annotations["annotation_class"] > 0]
    scores = resolution_check(tiny_train, folds=2)
    assert scores.squares == len(lesions) and scores.slides == lesions["filename"].nunique()
    counts = lesions["annotation_class"].value_counts()
    assert scores.majority == pytest.approx(counts.max() / counts.sum())
    for value in (scores.low, scores.high, scores.high_window):
        assert 0 <= value <= 1
    some = set(lesions["annotation_id"][: len(lesions) // 2 + 2])
    assert resolution_check(tiny_train, folds=2, annotation_ids=some).squares == len(some)


@pytest.mark.filterwarnings("ignore:Number of classes in training fold")
def test_cli_prints_coverage_and_scores(tiny_train: Path, capsys: pytest.CaptureFixture) -> None:
    mix = ",".join(str(p) for p in TINY.class_mix)
    assert main([str(tiny_train), "--size-range", "3000", "4000", "--class-mix", mix]) == 0
    out = capsys.readouterr().out
    assert "geometry of 8 slides (0 listed but absent)" in out and "0 padded" in out
    assert "y flip: the data supports 'either'" in out and "skipped" not in out
    assert "coverage of" in out and "own_median" in out
    assert out.count("resolution check") == 2
    with pytest.raises(SystemExit):  # the generator's options are needed to rebuild specs
        main([str(tiny_train), "--size-range", "3000", "4000"])


# -- geometry: metadata against TIF sizes, and the y-flip convention -----------------------------

TISSUE = load_preset("tiny").cascade.tissue


def test_box_coverage_counts_mask_pixel_centres_and_glass_outside() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half tissue; a mask pixel is 4 x 4 page-0 px
    assert box_coverage(mask, (4.0, 4.0), Box(0, 0, 40, 40)) == 0.5
    assert box_coverage(mask, (4.0, 4.0), Box(0, 0, 20, 20)) == 1.0
    assert box_coverage(mask, (4.0, 4.0), Box(-20, 0, 40, 40)) == 0.5  # 5 columns off the page
    assert box_coverage(mask, (4.0, 4.0), Box(9, 9, 1, 1)) == 1.0  # thinner than a pixel


def test_flip_verdict_rule() -> None:
    def squares(metadata: list[float], tif: list[float], shift: int = 200) -> pd.DataFrame:
        n = len(metadata)
        return pd.DataFrame({"shift": [shift] * n, "coverage_metadata": metadata,
                             "coverage_tif": tif})  # fmt: skip

    assert flip_verdict(squares([0.9] * 8, [0.5] * 8)).convention == "metadata"
    assert flip_verdict(squares([0.5] * 8, [0.9] * 8)).convention == "tif"
    equal = flip_verdict(squares([0.9] * 8, [0.5] * 8, shift=0))
    assert (equal.convention, equal.compared) == ("either", 0)
    assert "equals its metadata height" in equal.reason
    # a clear mean gain on too few squares, or many wins of a negligible size: noise
    assert flip_verdict(squares([0.9] * 3, [0.5] * 3)).convention == "either"
    assert flip_verdict(squares([0.915] * 20, [0.9] * 20)).convention == "either"
    # as many squares lost as won
    mixed = flip_verdict(squares([1.0, 0.2] * 10, [0.2, 1.0] * 10))
    assert (mixed.convention, mixed.metadata_wins, mixed.tif_wins) == ("either", 10, 10)


def _padding_spec(i: int, width: int, height: int) -> SlideSpec:
    """A slide at 1 µm/px with four 520 x 480 µm fragments near its corners, a lesion square
    (300 px) centred on each: a shift of 200+ px moves a square half off its fragment."""
    corners = [(650, 650), (width - 650, 650), (650, height - 650), (width - 650, height - 650)]
    fragments = tuple(
        Fragment(cx, cy, 520, 480, 30.0 * j, (), 0, 90, 120) for j, (cx, cy) in enumerate(corners)
    )
    lesions = tuple(
        Lesion(cx, cy, 1 + (i + j) % 3, 500, True) for j, (cx, cy) in enumerate(corners)
    )
    name = f"C0{i}_B00{i}_S0{i}.tif"  # a real-layout name: no synthetic checks
    return SlideSpec(name, width, height, 1.0, 20, i, fragments, lesions)


def _pad_page0(path: Path, mpp: float) -> tuple[int, int]:
    """Re-save ``path`` with page 0 padded white at the right and bottom to the next multiples
    of 256 px, pyramid rebuilt from it (as some real TIFs are); returns the new size."""
    # sequential: not the loader call (random access) that readers make, whose libvips cache
    # entry would otherwise keep the unpadded header of this filename within the process
    image = pyvips.Image.new_from_file(str(path), page=0, access="sequential")
    width, height = (-(-n // 256) * 256 for n in (image.width, image.height))
    part = path.with_name(path.name + ".part")
    save_competition_tiff(image.embed(0, 0, width, height, extend="white"), part, mpp)
    os.replace(part, path)
    return width, height


@pytest.fixture(scope="module")
def padded_train(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two copies of one folder: three slides with page 0 padded by 216-252 px and one whose
    size is a multiple of 256 (not padded), squares flipped with the metadata height
    (``"metadata"``) and with the TIF height (``"tif"``)."""
    root = tmp_path_factory.mktemp("padded")
    specs = [
        _padding_spec(1, 2580, 2580), _padding_spec(2, 2600, 2820),
        _padding_spec(3, 2830, 2570), _padding_spec(4, 2560, 2560),
    ]  # fmt: skip
    folders = {"metadata": root / "metadata", "tif": root / "tif"}
    write_dataset(folders["metadata"], specs, "train")
    tif_heights = {
        s.filename: _pad_page0(folders["metadata"] / s.filename, s.mpp)[1] for s in specs
    }
    shutil.copytree(folders["metadata"], folders["tif"])
    annotations = [a for spec in specs for a in slide_annotations(spec)]
    frame = annotations_frame(annotations, tif_heights)  # format_annotation with the TIF height
    frame.to_csv(folders["tif"] / "train_annotations.csv", index=False)
    return folders


@pytest.mark.parametrize("convention", ["metadata", "tif"])
def test_geometry_report_names_the_convention_of_padded_tifs(
    padded_train: dict[str, Path], convention: str
) -> None:
    slides, squares, verdict = geometry_report(padded_train[convention], TISSUE)
    assert slides["pad_x"].tolist() == [236, 216, 242, 0]
    assert slides["pad_y"].tolist() == [236, 252, 246, 0]
    assert slides["padded"].tolist() == [True, True, True, False]
    assert (slides["tif_height"] - slides["height"]).tolist() == slides["pad_y"].tolist()
    assert (slides["error"] == "").all() and len(squares) == 16
    assert (squares["y_tif"] - squares["y_metadata"] == squares["shift"]).all()
    right, wrong = (
        squares[f"coverage_{convention}"],
        squares["coverage_tif" if convention == "metadata" else "coverage_metadata"],
    )
    shifted = squares["shift"] > 0
    assert (right >= 0.95).all() and (wrong[shifted] <= 0.6).all()
    assert (right[~shifted] == wrong[~shifted]).all()
    assert verdict.convention == convention
    assert (verdict.compared, verdict.metadata_wins + verdict.tif_wins) == (12, 12)


def test_cli_reports_geometry_and_skips_synthetic_checks_on_other_folders(
    padded_train: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    for convention, folder in padded_train.items():
        assert main([str(folder), "--out", str(tmp_path / convention)]) == 0
        out = capsys.readouterr().out
        assert "geometry of 4 slides (0 listed but absent)" in out and "3 padded" in out
        assert "2580x2580" in out and "2816x2816" in out
        assert f"y flip: the data supports {convention!r}" in out
        assert "synthetic ground-truth checks skipped" in out
        assert len(pd.read_csv(tmp_path / convention / "geometry_squares.csv")) == 16


def test_read_training_set_undoes_the_flip_with_the_tif_height(
    padded_train: dict[str, Path],
) -> None:
    folder = padded_train["metadata"]
    by_metadata, by_tif = read_training_set(folder), read_training_set(folder, y_flip="tif")
    assert read_training_set(folder, y_flip="metadata") == by_metadata
    metadata = pd.read_csv(folder / "train_metadata.csv").set_index("filename")
    pads = {"C01_B001_S01.tif": 236, "C02_B002_S02.tif": 252, "C03_B003_S03.tif": 246,
            "C04_B004_S04.tif": 0}  # fmt: skip
    assert [s.filename for s in by_tif] == [s.filename for s in by_metadata] == list(pads)
    for a_slide, b_slide in zip(by_metadata, by_tif, strict=True):
        with Slide(a_slide.path, mpp=1.0) as slide:
            tif_height = slide.height
        shift = tif_height - metadata.loc[a_slide.filename, "height"]
        assert shift == pads[a_slide.filename]
        assert len(a_slide.annotations) == len(b_slide.annotations) == 4
        for a, b in zip(a_slide.annotations, b_slide.annotations, strict=True):
            assert (a.annotation_id, a.annotation_class) == (b.annotation_id, b.annotation_class)
            assert (b.box.x, b.box.w, b.box.h) == (a.box.x, a.box.w, a.box.h)
            assert b.box.y - a.box.y == shift
    with pytest.raises(ValueError, match=r"one of \('metadata', 'tif'\)"):
        read_training_set(folder, y_flip="page0")


def test_an_unreadable_tif_is_reported_not_fatal(
    padded_train: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(padded_train["metadata"], folder)
    broken = folder / "C02_B002_S02.tif"
    broken.write_bytes(broken.read_bytes()[:5000])
    (folder / "C04_B004_S04.tif").unlink()
    slides, squares, verdict = geometry_report(folder, TISSUE)
    assert slides["filename"].tolist() == ["C01_B001_S01.tif", "C02_B002_S02.tif",
                                           "C03_B003_S03.tif"]  # fmt: skip
    assert slides["error"].str.startswith("C02_B002_S02.tif: not a readable TIFF").tolist() == [
        False, True, False,
    ]  # fmt: skip
    assert squares.loc[squares["filename"] == "C02_B002_S02.tif", "coverage_tif"].isna().all()
    assert (verdict.convention, verdict.compared) == ("metadata", 8)
    kept = [s.filename for s in read_training_set(folder, y_flip="tif")]
    assert kept == ["C01_B001_S01.tif", "C03_B003_S03.tif"]
    assert "C02_B002_S02.tif: not a readable TIFF" in caplog.text
