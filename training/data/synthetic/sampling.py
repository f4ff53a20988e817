"""Random and layout-driven slide descriptions (:class:`SlideSpec`), deterministic per seed.

:func:`default_specs` draws the default cohort's random slides with a configurable class mix
(:mod:`.cohort` builds the ``realistic`` one on its helpers and picks the cohort);
:func:`layout_specs` reproduces real slides' sizes, resolutions and annotated boxes from the
competition's CSVs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from training.data.annotations import Annotation, parse_annotations
from training.data.synthetic.maps import site_reach_um
from training.data.synthetic.shapes import fragment_outline, fragment_point, random_shape
from training.data.synthetic.spec import (
    ANNOTATION_UM,
    MPP_RANGE,
    Artefact,
    Fragment,
    Lesion,
    LookAlike,
    SlideSpec,
)

if TYPE_CHECKING:
    from training.data.synthetic.cohort import Realism

# -- random and layout slide descriptions ------------------------------------------------------

PEN_COLOURS = ((40, 130, 70), (40, 60, 150), (35, 35, 45), (170, 40, 60))


@dataclass(frozen=True)
class SynthConfig:
    """How random slides are drawn. Sizes in page-0 pixels, probabilities in [0, 1]."""

    class_mix: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    size_range: tuple[int, int] = (6000, 20000)
    mpp_range: tuple[float, float] = MPP_RANGE
    annotate_p: float = 0.5  # each lesion after the first is annotated with this chance
    lookalike_p: float = 0.7  # a slide has dense inflammation with this chance
    artefact_p: float = 0.4  # pen marks and folds per fragment (/ 2), blur (/ 6), stripes (/ 3)
    #: the ``realistic`` cohort's settings (:mod:`.cohort`; its centres set the µm/px, so
    #: ``mpp_range`` is unused), None for the default slides
    realism: Realism | None = None

    def __post_init__(self) -> None:
        mix = np.asarray(self.class_mix, dtype=float)
        if mix.shape != (4,) or (mix < 0).any() or not math.isclose(mix.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"class_mix needs 4 non-negative shares summing to 1: {mix}")
        lo, hi = self.size_range
        if not 512 <= lo <= hi:
            raise ValueError(f"size_range needs 512 <= min <= max, got {self.size_range}")
        if not 0 < self.mpp_range[0] <= self.mpp_range[1]:
            raise ValueError(f"bad mpp_range {self.mpp_range}")
        for name in ("annotate_p", "lookalike_p", "artefact_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")


def uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """One draw of ``rng``, uniform in [low, high), as a Python float."""
    return float(rng.uniform(low, high))


def random_fragments(
    rng: np.random.Generator, width: int, height: int, mpp: float
) -> tuple[Fragment, ...]:
    """2–5 fragments per 100 mm² (16 at most), each in its own cell of a grid over the slide,
    a few mm at most."""
    w_um, h_um = width * mpp, height * mpp
    n = min(16, int(rng.integers(2, 6)) * max(1, round(w_um * h_um / 1e8)))
    cols = max(1, min(n, round(math.sqrt(n * w_um / h_um))))
    rows = math.ceil(n / cols)
    cw, ch = w_um / cols, h_um / rows
    fragments = []
    for cell in rng.permutation(cols * rows)[:n]:
        row, col = divmod(int(cell), cols)
        length = min(max(cw, ch) * uniform(rng, 0.55, 0.85), uniform(rng, 2500, 6000))
        breadth = min(length * uniform(rng, 0.3, 0.6), min(cw, ch) * 0.75)
        angle = (0.0 if cw >= ch else 90.0) + float(rng.normal(0, 12))
        c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        ex = 0.65 * math.hypot(length * c, breadth * s)  # half extents with 1.3 x bulges
        ey = 0.65 * math.hypot(length * s, breadth * c)
        k = min(1.0, 0.95 * cw / 2 / ex, 0.95 * ch / 2 / ey)
        cx = (col + 0.5) * cw + uniform(rng, -1, 1) * max(0.0, cw / 2 - ex * k)
        cy = (row + 0.5) * ch + uniform(rng, -1, 1) * max(0.0, ch / 2 - ey * k)
        fragment = Fragment(
            cx=cx / mpp, cy=cy / mpp, length_um=length * k, width_um=breadth * k, angle_deg=angle,
            shape=random_shape(rng, 0.12), epi_from_deg=uniform(rng, 0, 360),
            epi_extent_deg=uniform(rng, 120, 260),
            epi_um=min(uniform(rng, 150, 400), 0.3 * breadth * k),
        )  # fmt: skip
        fragments.append(fragment)
    return tuple(fragments)


#: Sites (lesions and annotated normal sites) lie this far (µm) below the tissue surface: half
#: an annotation square, so that the square centred on a site holds tissue, not glass.
SITE_DEPTH_UM = ANNOTATION_UM / 2
#: Lesion diameters (µm) of random slides, the same range for every grade.
LESION_UM = (500.0, 1500.0)
#: Tries to place a site clear of sites of other grades before giving it up.
PLACEMENT_TRIES = 30


def _epithelium_site(
    rng: np.random.Generator,
    fragments: Sequence[Fragment],
    mpp: float,
    depth_um: float,
    epi_depth: float = 0.0,
) -> tuple[float, float, Fragment]:
    """A page-0 point ``depth_um + epi_depth`` x epithelium thickness below the surface, inside
    the epithelium arc of a fragment chosen with probability proportional to its area."""
    areas = np.array([f.length_um * f.width_um for f in fragments])
    fragment = fragments[int(rng.choice(len(fragments), p=areas / areas.sum()))]
    t = math.radians(fragment.epi_from_deg + uniform(rng, 0.15, 0.85) * fragment.epi_extent_deg)
    x, y = fragment_point(fragment, mpp, t, depth_um + epi_depth * fragment.epi_um)
    return x, y, fragment


def clear_of(site: Lesion, sites: Sequence[Lesion], mpp: float) -> bool:
    """True when ``site`` and every site of another grade are further apart than the sum of
    their reaches (:func:`site_reach_um`: their blobs and squares cannot overlap), and an
    annotated ``site``'s square overlaps no other annotated square."""
    reach = site_reach_um(site)
    for other in sites:
        dx, dy = abs(site.cx - other.cx) * mpp, abs(site.cy - other.cy) * mpp
        if other.grade != site.grade and math.hypot(dx, dy) <= reach + site_reach_um(other):
            return False
        if site.annotated and other.annotated and max(dx, dy) < ANNOTATION_UM:
            return False
    return True


def _square_on_tissue(site: Lesion, fragment: Fragment, mpp: float) -> float:
    """Share of a 7 x 7 grid of points of the annotation square centred on ``site`` that lies
    inside ``fragment``'s outline."""
    outline = fragment_outline(fragment, mpp).astype(np.float32)
    half = ANNOTATION_UM / 2 / mpp
    steps = np.linspace(-half, half, 7)
    inside = [
        cv2.pointPolygonTest(outline, (float(site.cx + dx), float(site.cy + dy)), False) >= 0
        for dx in steps
        for dy in steps
    ]
    return float(np.mean(inside))


def place_site(
    rng: np.random.Generator,
    fragments: Sequence[Fragment],
    mpp: float,
    sites: Sequence[Lesion],
    grade: int,
    size_um: tuple[float, float],
    annotated: bool,
) -> Lesion | None:
    """A site of ``grade`` (diameter uniform in ``size_um``, capped at 0.8 x its fragment's
    length) clear of ``sites`` (:func:`clear_of`), or None when :data:`PLACEMENT_TRIES` tries
    find none. An annotated site takes the first try whose square lies 90 % on its fragment, else
    the try with the most tissue in its square."""
    best, best_share = None, -1.0
    for _ in range(PLACEMENT_TRIES):
        x, y, fragment = _epithelium_site(rng, fragments, mpp, SITE_DEPTH_UM)
        size = min(uniform(rng, *size_um), max(0.8 * fragment.length_um, size_um[0]))
        site = Lesion(cx=x, cy=y, grade=grade, size_um=size, annotated=annotated)
        if not clear_of(site, sites, mpp):
            continue
        share = _square_on_tissue(site, fragment, mpp) if annotated else 1.0
        if share >= 0.9:
            return site
        if share > best_share:
            best, best_share = site, share
    return best


def _random_lesions(
    rng: np.random.Generator,
    fragments: Sequence[Fragment],
    mpp: float,
    label: int,
    annotate_p: float,
) -> list[Lesion]:
    """Lesions for a slide of class ``label`` (the first has that grade and is annotated, the
    others are lower or equal and annotated with chance ``annotate_p``) plus annotated normal
    sites (grade 0). Every site is :data:`SITE_DEPTH_UM` deep, lesion sizes do not depend on
    the grade, and sites of different grades never overlap (a site that finds no room is
    dropped; the first lesion always has room)."""
    lesions: list[Lesion] = []
    if label:
        grades = [label] + [int(rng.integers(1, label + 1)) for _ in range(rng.integers(0, 4))]
        for k, grade in enumerate(grades):
            annotated = k == 0 or bool(rng.random() < annotate_p)
            site = place_site(rng, fragments, mpp, lesions, grade, LESION_UM, annotated)
            if site is not None:
                lesions.append(site)
    return add_normal_sites(rng, fragments, mpp, lesions, label)


def add_normal_sites(
    rng: np.random.Generator,
    fragments: Sequence[Fragment],
    mpp: float,
    lesions: list[Lesion],
    label: int,
) -> list[Lesion]:
    """``lesions`` with annotated squares of normal epithelium (grade 0) added where they fit:
    2–5 on a benign slide, 0–2 on the others; returns the list (extended in place)."""
    normal = (1.2 * ANNOTATION_UM, 2.0 * ANNOTATION_UM)
    for _ in range(int(rng.integers(2, 6)) if label == 0 else int(rng.integers(0, 3))):
        site = place_site(rng, fragments, mpp, lesions, 0, normal, True)
        if site is not None:
            lesions.append(site)
    return lesions


def _random_lookalikes(
    rng: np.random.Generator, fragments: Sequence[Fragment], mpp: float, chance: float
) -> tuple[LookAlike, ...]:
    """0–3 patches of dense inflammation in the stroma just under the epithelium."""
    if not fragments or rng.random() >= chance:
        return ()
    out = []
    for _ in range(int(rng.integers(1, 4))):
        size = uniform(rng, 200, 800)
        x, y, _ = _epithelium_site(rng, fragments, mpp, uniform(rng, 0.2, 0.6) * size, 1.0)
        out.append(LookAlike(cx=x, cy=y, size_um=size))
    return tuple(out)


def _random_artefacts(
    rng: np.random.Generator,
    fragments: Sequence[Fragment],
    width: int,
    height: int,
    mpp: float,
    chance: float,
) -> tuple[Artefact, ...]:
    """Pen strokes around fragments, folds across them, blur patches, dust, scanner stripes."""
    out: list[Artefact] = []
    for f in fragments:
        if rng.random() < chance / 2:  # pen arc around the fragment
            radius = (f.length_um / 2 + uniform(rng, 200, 800)) / mpp
            t = uniform(rng, 0, 2 * math.pi) + np.linspace(0, uniform(rng, 1, 3.5), 24)
            wobble = 1 + 0.05 * np.sin(3 * t + uniform(rng, 0, 6))
            xs = np.clip(f.cx + radius * wobble * np.cos(t), 0, width - 1).tolist()
            ys = np.clip(f.cy + 0.7 * radius * wobble * np.sin(t), 0, height - 1).tolist()
            colour = PEN_COLOURS[int(rng.integers(len(PEN_COLOURS)))]
            out.append(Artefact(
                kind="pen", points=tuple(zip(xs, ys, strict=True)),
                width_um=uniform(rng, 150, 500), colour=colour, alpha=int(rng.integers(110, 180)),
            ))  # fmt: skip
        if rng.random() < chance / 2:  # fold: a dark band across the fragment
            half = f.width_um * uniform(rng, 0.4, 0.8) / mpp
            t = uniform(rng, 0, math.pi)
            dx, dy = half * math.cos(t), half * math.sin(t)
            cx = f.cx + float(rng.normal(0, 0.15 * f.width_um / mpp))
            cy = f.cy + float(rng.normal(0, 0.15 * f.width_um / mpp))
            out.append(Artefact(
                kind="fold", points=((cx - dx, cy - dy), (cx + dx, cy + dy)),
                width_um=uniform(rng, 40, 200), colour=(110, 50, 120),
                alpha=int(rng.integers(90, 150)),
            ))  # fmt: skip
        # out-of-focus square, rarer than the others: over a lesion it leaves the grade
        # unreadable at any resolution (about 1 in 15 fragments at the default chance)
        if rng.random() < chance / 6:
            cx = f.cx + float(rng.normal(0, 0.25 * f.width_um / mpp))
            cy = f.cy + float(rng.normal(0, 0.25 * f.width_um / mpp))
            out.append(Artefact(kind="blur", points=((cx, cy),), width_um=uniform(rng, 300, 1200)))
    for _ in range(int(rng.poisson(3))):
        xy = (uniform(rng, 0, width), uniform(rng, 0, height))
        out.append(Artefact(
            kind="dust", points=(xy,), width_um=uniform(rng, 8, 60), colour=(60, 55, 50),
            alpha=int(rng.integers(180, 240)),
        ))  # fmt: skip
    if rng.random() < chance / 3:  # a faint scanner stripe across the slide
        if rng.random() < 0.5:
            y = uniform(rng, 0, height)
            points = ((0.0, y), (float(width), y))
        else:
            x = uniform(rng, 0, width)
            points = ((x, 0.0), (x, float(height)))
        out.append(Artefact(
            kind="stripe", points=points, width_um=uniform(rng, 20, 100), colour=(80, 80, 80),
            alpha=int(rng.integers(25, 50)),
        ))  # fmt: skip
    return tuple(out)


def random_spec(
    rng: np.random.Generator,
    filename: str,
    label: int,
    width: int,
    height: int,
    mpp: float,
    config: SynthConfig = SynthConfig(),
    fragments: Sequence[Fragment] | None = None,
    lesions: Sequence[Lesion] | None = None,
) -> SlideSpec:
    """A random slide of class ``label``; ``fragments`` / ``lesions`` replace the random ones."""
    if fragments is None:
        fragments = random_fragments(rng, width, height, mpp)
    if lesions is None:
        lesions = _random_lesions(rng, fragments, mpp, label, config.annotate_p)
    return SlideSpec(
        filename=filename, width=width, height=height, mpp=mpp,
        magnification=int(rng.choice((20, 40))), seed=int(rng.integers(2**31)),
        fragments=tuple(fragments), lesions=tuple(lesions),
        lookalikes=_random_lookalikes(rng, fragments, mpp, config.lookalike_p),
        artefacts=_random_artefacts(rng, fragments, width, height, mpp, config.artefact_p),
    )  # fmt: skip


def default_specs(n_slides: int, seed: int, config: SynthConfig = SynthConfig()) -> list[SlideSpec]:
    """``n_slides`` random slides of the default cohort (``syn{seed}_{i:04d}.tif``), classes
    drawn from the mix; ``config.realism`` is ignored
    (:func:`~training.data.synthetic.cohort.sample_specs` picks the cohort).

    Slide ``i`` depends only on ``(seed, i)`` and its drawn class, so a longer run extends a
    shorter one."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, size=n_slides, p=config.class_mix)
    specs = []
    for i, label in enumerate(labels):
        slide_rng = np.random.default_rng([seed, i])
        width, height = (int(v) for v in slide_rng.integers(*config.size_range, 2, endpoint=True))
        mpp = uniform(slide_rng, *config.mpp_range)
        name = f"syn{seed}_{i:04d}.tif"
        specs.append(random_spec(slide_rng, name, int(label), width, height, mpp, config))
    return specs


def layout_specs(
    metadata: str | Path | pd.DataFrame,
    annotations: str | Path,
    scale: int = 1,
    seed: int = 0,
    config: SynthConfig = SynthConfig(),
) -> list[SlideSpec]:
    """Slides reproducing real ones: sizes, µm/pixel, magnification and annotated boxes from a
    ``train_metadata.csv`` / ``train_annotations.csv`` pair (boxes of slides the metadata does
    not list are ignored), sizes divided by ``scale`` (µm/pixel multiplied).

    Each box becomes an annotated lesion (class 0: a normal site) centred on it, inside a
    fragment grown around its cluster of boxes; random fragments fill free space; label = the
    highest box class. A slide may also get one unannotated lesion. Slides without boxes are
    random class-0 slides.
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    frame = metadata if isinstance(metadata, pd.DataFrame) else pd.read_csv(metadata)
    rows = pd.read_csv(annotations)
    if "filename" not in rows.columns:
        raise ValueError(f"{annotations}: no filename column")
    rows = rows[rows["filename"].isin(set(frame["filename"]))]  # boxes of the listed slides
    boxes: dict[str, list[Annotation]] = {}
    for annotation in parse_annotations(rows, frame):
        boxes.setdefault(annotation.filename, []).append(annotation)
    specs = []
    for i, row in enumerate(frame.itertuples(index=False)):
        rng = np.random.default_rng([seed, i])
        width, height = max(1, round(row.width / scale)), max(1, round(row.height / scale))
        mpp = float(row.resolution) * scale
        sites = [
            Lesion(cx=a.box.center[0] / scale, cy=a.box.center[1] / scale,
                   grade=a.annotation_class, size_um=ANNOTATION_UM * uniform(rng, 1.5, 3.0),
                   annotated=True)
            for a in boxes.get(row.filename, [])
        ]  # fmt: skip
        fragments, lesions = None, None
        label = max((site.grade for site in sites), default=0)
        if sites:
            fragments = _fragments_around(rng, sites, width, height, mpp)
            fragments += _free_fragments(rng, fragments, width, height, mpp)
            if label and rng.random() < 0.5:
                grade = int(rng.integers(1, label + 1))
                site = place_site(rng, fragments, mpp, sites, grade, (500.0, 1000.0), False)
                sites += [site] if site is not None else []
            lesions = sites
        spec = random_spec(rng, row.filename, label, width, height, mpp, config, fragments, lesions)
        specs.append(replace(spec, magnification=int(row.magnification)))
    return specs


def _fragments_around(
    rng: np.random.Generator, sites: Sequence[Lesion], width: int, height: int, mpp: float
) -> tuple[Fragment, ...]:
    """One fragment per cluster of sites (sites closer than 2.5 mm join), an ellipse that holds
    the cluster's bounding box with a margin, kept on the slide."""
    link = 2500.0 / mpp
    cluster = list(range(len(sites)))
    for a in range(len(sites)):
        for b in range(a):
            if math.hypot(sites[a].cx - sites[b].cx, sites[a].cy - sites[b].cy) < link:
                old, new = cluster[a], cluster[b]
                cluster = [new if c == old else c for c in cluster]
    fragments = []
    for label in sorted(set(cluster)):
        xs = [s.cx for s, c in zip(sites, cluster, strict=True) if c == label]
        ys = [s.cy for s, c in zip(sites, cluster, strict=True) if c == label]
        margin = 900.0 / mpp
        half_w = min(((max(xs) - min(xs)) / 2 + margin) * math.sqrt(2), width / 2)
        half_h = min(((max(ys) - min(ys)) / 2 + margin) * math.sqrt(2), height / 2)
        cx = min(max((max(xs) + min(xs)) / 2, half_w), width - half_w)
        cy = min(max((max(ys) + min(ys)) / 2, half_h), height - half_h)
        breadth = 2 * min(half_w, half_h) * mpp
        fragment = Fragment(
            cx=cx, cy=cy, length_um=2 * max(half_w, half_h) * mpp, width_um=breadth,
            angle_deg=0.0 if half_w >= half_h else 90.0, shape=random_shape(rng, 0.04),
            epi_from_deg=uniform(rng, 0, 360), epi_extent_deg=uniform(rng, 120, 260),
            epi_um=min(uniform(rng, 150, 400), 0.3 * breadth),
        )  # fmt: skip
        fragments.append(fragment)
    return tuple(fragments)


def _free_fragments(
    rng: np.random.Generator, taken: Sequence[Fragment], width: int, height: int, mpp: float
) -> tuple[Fragment, ...]:
    """Random fragments whose bounding circles miss those of ``taken``."""

    def apart(a: Fragment, b: Fragment) -> bool:
        return math.hypot(a.cx - b.cx, a.cy - b.cy) * mpp > 0.65 * (a.length_um + b.length_um)

    candidates = random_fragments(rng, width, height, mpp)
    return tuple(f for f in candidates if all(apart(f, t) for t in taken))
