"""The cohorts of random slides (:data:`COHORTS`) and :func:`sample_specs`, which draws either:
the default one (:func:`~training.data.synthetic.sampling.default_specs`) or the ``realistic``
one (:func:`realistic_specs`): small worst lesions, grade read from depth, centres, noisy labels.

``COHORTS["realistic"]`` is a :class:`SynthConfig` whose :class:`Realism` makes
:func:`sample_specs` draw slides as pathology sees them:

* lesion sizes log-uniform from 80 µm foci to 1,500 µm areas (:attr:`Realism.lesion_um`), the
  300 µm annotation square centred on the lesion (so partly normal tissue around a small focus);
* every lesion a column across the epithelium graded by depth (:mod:`.depth`): atypia in the
  lower third of the thickness (grade 1), two-thirds to all of it (grade 2), all of it plus
  nests in the stroma below the basement membrane (grade 3); maturing cells above;
* several lesions of mixed grades per slide, the worst a small focus beside larger lower-grade
  areas in most slides of class 2–3 (:attr:`Realism.small_worst_p`); benign mimics: dense
  inflammation (``lookalike_p``) and reactive or metaplastic epithelium
  (:attr:`Realism.reactive_p`);
* synthetic centres (:data:`CENTRES`), each with its own stain (H and E optical densities),
  scanner sharpness, JPEG quality, µm/px and magnification; :data:`HELD_OUT` only in the test
  split; filenames ``{centre}_B{seed}_S{i:04d}.tif`` (the real ``C06_B111_S21`` pattern, so
  :func:`training.data.dataset.centre_of` reads the centre);
* some lesions unannotated, and label noise: :attr:`Realism.label_noise_p` of slides written one
  grade off (:attr:`SlideSpec.written_label`; :attr:`SlideSpec.label` stays the truth).

The ground truth (every lesion's grade, size, position) is written by :mod:`.truth_tables`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from training.data.synthetic.depth import column_centre_depth_um
from training.data.synthetic.sampling import (
    PLACEMENT_TRIES,
    SynthConfig,
    add_normal_sites,
    clear_of,
    default_specs,
    random_fragments,
    random_spec,
    uniform,
)
from training.data.synthetic.shapes import fragment_outline, fragment_point
from training.data.synthetic.spec import (
    ANNOTATION_UM,
    Fragment,
    Layers,
    Lesion,
    LookAlike,
    SlideSpec,
)
from training.data.synthetic.textures import EOSIN_OD, GLASS_OD, HAEMATOXYLIN_OD, Stain


@dataclass(frozen=True)
class Centre:
    """A synthetic centre: its stain (optical density per unit haematoxylin / eosin and of the
    glass, per RGB channel), scanner sharpness (Gaussian sigma on page 0, µm; 0 = sharp), JPEG
    quality of its TIFF tiles, page-0 µm/px and magnification."""

    name: str
    haematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    glass: tuple[float, float, float]
    blur_um: float
    jpeg_quality: int
    mpp: float
    magnification: int

    def stain(self, rng: np.random.Generator) -> Stain:
        """One slide's stain: the centre's, each stain's strength varied by ±5 % (1 sd) and
        each channel by ±2 %, as slides of one lab vary from day to day."""

        def vary(od: Sequence[float], spread: float) -> tuple[float, float, float]:
            v = np.asarray(od) * (1 + rng.normal(0, 0.02, 3)) * (1 + rng.normal(0, spread))
            return tuple(float(x) for x in v)  # type: ignore[return-value]

        return Stain(vary(self.haematoxylin, 0.05), vary(self.eosin, 0.05), vary(self.glass, 0.1))


def _centre(
    name: str,
    h: tuple[float, float, float, float],
    e: tuple[float, float, float, float],
    glass: float,
    blur_um: float,
    jpeg_quality: int,
    mpp: float,
    magnification: int,
) -> Centre:
    """A :class:`Centre` from per-channel tints and a strength (``h``, ``e``: R, G, B tint
    factors then strength) applied to the default H / E optical densities."""

    def od(base: Sequence[float], spec: Sequence[float]) -> tuple[float, float, float]:
        return tuple(float(b * t * spec[3]) for b, t in zip(base, spec[:3], strict=True))  # type: ignore[return-value]

    glass_od = tuple(float(g * glass) for g in GLASS_OD)
    return Centre(name, od(HAEMATOXYLIN_OD, h), od(EOSIN_OD, e), glass_od, blur_um,  # type: ignore[arg-type]
                  jpeg_quality, mpp, magnification)  # fmt: skip


# fmt: off
#: The synthetic centres: name, haematoxylin (R, G, B tints, strength), eosin (same), glass
#: density factor, scanner blur (µm), JPEG quality, µm/px, magnification. C07 is held out.
CENTRES: tuple[Centre, ...] = (
    _centre("C01", (1.00, 1.00, 1.00, 1.00), (1.00, 1.00, 1.00, 1.00), 1.0, 0.00, 80, 0.2527, 40),
    _centre("C02", (1.12, 1.00, 0.85, 1.20), (0.90, 1.00, 1.10, 0.80), 0.8, 0.30, 70, 0.2431, 40),
    _centre("C03", (0.90, 1.00, 1.15, 0.85), (1.15, 1.00, 0.90, 1.25), 1.3, 0.15, 85, 0.2265, 40),
    _centre("C04", (1.05, 0.95, 1.10, 1.05), (0.95, 1.10, 1.00, 1.10), 1.0, 0.45, 65, 0.2635, 20),
    _centre("C05", (0.95, 1.05, 0.90, 0.95), (1.05, 0.90, 1.15, 0.70), 0.7, 0.20, 75, 0.2208, 20),
    _centre("C06", (1.10, 1.05, 1.20, 1.30), (1.00, 1.05, 0.95, 1.35), 1.4, 0.35, 60, 0.2718, 40),
    _centre("C07", (0.85, 1.05, 1.25, 1.15), (1.20, 0.95, 0.85, 0.90), 1.1, 0.50, 70, 0.2325, 40),
)
# fmt: on
#: A column's centre must be at least this share of its depth from every point of its
#: fragment's outline (else the surface curves too much there; :func:`_column_site`).
STRAIGHT_SHARE = 0.9
#: Centres whose slides only the test split has.
HELD_OUT = ("C07",)


@dataclass(frozen=True)
class Realism:
    """How the ``realistic`` cohort departs from the default slides (sizes in µm, chances in
    [0, 1]). ``fill``: per grade 1–3 the range of the epithelium's thickness the atypia fills
    (from the basement membrane up); ``invasion_um``: depth range of grade-3 nests below it."""

    lesion_um: tuple[float, float] = (80.0, 1500.0)  # log-uniform
    focus_um: tuple[float, float] = (80.0, 300.0)  # a small worst focus, log-uniform
    small_worst_p: float = 0.6  # class 2-3: the worst is a small focus beside larger ones
    fill: tuple[tuple[float, float], ...] = ((0.2, 1 / 3), (2 / 3, 1.0), (1.0, 1.0))
    invasion_um: tuple[float, float] = (60.0, 400.0)
    annotate_worst_p: float = 0.85  # the worst lesion is annotated with this chance
    annotate_p: float = 0.6  # the others; a lesional slide keeps at least one annotated
    label_noise_p: float = 0.05  # a slide's label is written one grade off
    reactive_p: float = 0.5  # a slide has 1-2 patches of reactive / metaplastic epithelium
    reactive_um: tuple[float, float] = (150.0, 1200.0)  # log-uniform
    centres: tuple[Centre, ...] = field(default=CENTRES)
    held_out: tuple[str, ...] = HELD_OUT
    held_out_share: float = 0.25  # of the test split's slides

    def __post_init__(self) -> None:
        names = [c.name for c in self.centres]
        if len(set(names)) != len(names) or not set(self.held_out) < set(names):
            raise ValueError(f"held-out centres {self.held_out} must be some of {names}")
        if len(self.fill) != 3:
            raise ValueError("fill needs one range per grade 1-3")

    def split_centres(self, split: str) -> tuple[tuple[Centre, ...], tuple[Centre, ...]]:
        """The ``(seen, held_out)`` centres a ``split`` draws from (train: no held-out)."""
        seen = tuple(c for c in self.centres if c.name not in self.held_out)
        held = tuple(c for c in self.centres if c.name in self.held_out)
        return seen, held if split == "test" else ()


#: Named cohorts: ``default`` (today's fast slides) and ``realistic``.
COHORTS: dict[str, SynthConfig] = {
    "default": SynthConfig(),
    "realistic": SynthConfig(annotate_p=0.6, lookalike_p=0.6, realism=Realism()),
}


def cohort_name(config: SynthConfig) -> str:
    """The :data:`COHORTS` name of ``config``'s cohort (``realistic`` when it has a
    :class:`Realism`, else ``default``), whatever its class mix and sizes."""
    return "default" if config.realism is None else "realistic"


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _column_site(
    rng: np.random.Generator,
    fragments: Sequence[Fragment],
    mpp: float,
    size_um: float,
    fill: float,
    invasion_um: float,
) -> tuple[float, float, float, Layers] | None:
    """A column on the epithelium arc of a fragment chosen by area: page-0 centre ``(x, y)``,
    its width (``size_um`` capped at 0.8 x the fragment's length) and its :class:`Layers`
    (``invasion_um`` capped so that the centre lies in the fragment's half-width); None
    where the outline curves so much that the centre is nearer another part of it than the
    surface point it hangs from (the label map's depth is measured to the nearest glass)."""
    areas = np.array([f.length_um * f.width_um for f in fragments])
    fragment = fragments[int(rng.choice(len(fragments), p=areas / areas.sum()))]
    t = math.radians(fragment.epi_from_deg + uniform(rng, 0.15, 0.85) * fragment.epi_extent_deg)
    x0, y0 = fragment_point(fragment, mpp, t, 0.0)
    x1, y1 = fragment_point(fragment, mpp, t, 1.0)
    normal = math.degrees(math.atan2(y1 - y0, x1 - x0))
    layers = Layers(fill, normal, fragment.epi_um, invasion_um)
    limit = 0.45 * fragment.width_um  # the deepest point fragment_point gives
    if column_centre_depth_um(layers) > limit:  # invasion as deep as the fragment allows
        invasion = 2 * limit - fragment.epi_um * (2 - fill)  # epi_um <= 0.3 x width: positive
        layers = replace(layers, invasion_um=max(invasion, 0.0))
    depth = column_centre_depth_um(layers)
    x, y = fragment_point(fragment, mpp, t, depth)
    nearest = np.hypot(*(fragment_outline(fragment, mpp) - (x, y)).T).min() * mpp
    if nearest < STRAIGHT_SHARE * depth:
        return None
    return float(x), float(y), min(size_um, 0.8 * fragment.length_um), layers


def _place_lesion(
    rng: np.random.Generator,
    fragments: Sequence[Fragment],
    mpp: float,
    sites: Sequence[Lesion],
    grade: int,
    size_um: float,
    annotated: bool,
    realism: Realism,
) -> Lesion | None:
    """A layered lesion of ``grade`` clear of ``sites`` (other grades and annotated squares),
    or None after :data:`PLACEMENT_TRIES` tries."""
    for _ in range(PLACEMENT_TRIES):
        fill = uniform(rng, *realism.fill[grade - 1])
        invasion = uniform(rng, *realism.invasion_um) if grade == 3 else 0.0
        column = _column_site(rng, fragments, mpp, size_um, fill, invasion)
        if column is None:
            continue
        x, y, size, layers = column
        site = Lesion(x, y, grade, size, annotated, layers)
        if clear_of(site, sites, mpp):
            return site
    return None


def _grades_and_sizes(
    rng: np.random.Generator, label: int, realism: Realism
) -> list[tuple[int, float]]:
    """``(grade, size_um)`` of a class-``label`` slide's lesions, the worst first: a class 2–3
    slide's worst is a small focus beside 1–3 larger lower-grade lesions with chance
    :attr:`Realism.small_worst_p`, else every size is drawn alike."""
    lo, hi = realism.lesion_um
    if label >= 2 and rng.random() < realism.small_worst_p:
        worst = _log_uniform(rng, *realism.focus_um)
        others = [
            (int(rng.integers(1, label)), _log_uniform(rng, max(2 * worst, ANNOTATION_UM), hi))
            for _ in range(int(rng.integers(1, 4)))
        ]
        return [(label, worst), *others]
    return [(label, _log_uniform(rng, lo, hi))] + [
        (int(rng.integers(1, label + 1)), _log_uniform(rng, lo, hi))
        for _ in range(int(rng.integers(0, 4)))
    ]


def realistic_lesions(
    rng: np.random.Generator,
    fragments: Sequence[Fragment],
    mpp: float,
    label: int,
    realism: Realism,
) -> list[Lesion]:
    """Layered lesions of a class-``label`` slide (:func:`_grades_and_sizes`; a lesion that
    finds no room is dropped, the worst always has room) and annotated normal sites (grade 0,
    as the default cohort's). The worst is annotated with :attr:`Realism.annotate_worst_p`, the
    others with :attr:`Realism.annotate_p`; a slide with lesions keeps one annotated."""
    lesions: list[Lesion] = []
    if label:
        for k, (grade, size) in enumerate(_grades_and_sizes(rng, label, realism)):
            annotated = bool(rng.random() < (realism.annotate_p, realism.annotate_worst_p)[k == 0])
            site = _place_lesion(rng, fragments, mpp, lesions, grade, size, annotated, realism)
            if site is not None:
                lesions.append(site)
        if not any(site.annotated for site in lesions):
            largest = max(range(len(lesions)), key=lambda i: lesions[i].size_um)
            annotated = replace(lesions[largest], annotated=True)
            others = [s for i, s in enumerate(lesions) if i != largest]
            if clear_of(annotated, others, mpp):  # its square may overlap no other square
                lesions[largest] = annotated
    return add_normal_sites(rng, fragments, mpp, lesions, label)


def _reactive_mimics(
    rng: np.random.Generator, fragments: Sequence[Fragment], mpp: float, realism: Realism
) -> tuple[LookAlike, ...]:
    """0 or 1–2 columns of reactive epithelium across the whole thickness."""
    if rng.random() >= realism.reactive_p:
        return ()
    out = []
    for _ in range(int(rng.integers(1, 3))):
        size = _log_uniform(rng, *realism.reactive_um)
        for _ in range(PLACEMENT_TRIES):
            column = _column_site(rng, fragments, mpp, size, 1.0, 0.0)
            if column is not None:
                out.append(LookAlike(*column))
                break
    return tuple(out)


def _written_label(rng: np.random.Generator, label: int, chance: float) -> int | None:
    """The label one grade off (up or down, within 0–3) with ``chance``, else None."""
    if rng.random() >= chance:
        return None
    step = 1 if label == 0 else -1 if label == 3 else int(rng.choice((-1, 1)))
    return label + step


def realistic_specs(
    n_slides: int, seed: int, config: SynthConfig, split: str = "train"
) -> list[SlideSpec]:
    """``n_slides`` slides of the ``realistic`` cohort (``config.realism`` set), classes drawn
    from ``config.class_mix``, centres uniform over the seen ones (test: the held-out ones take
    :attr:`Realism.held_out_share`), sizes from ``config.size_range`` at the centre's µm/px.

    Slide ``i`` depends only on ``(seed, i, split)`` and its drawn class."""
    realism = config.realism
    if realism is None:
        raise ValueError("realistic_specs needs a config with realism set")
    seen, held = realism.split_centres(split)
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, size=n_slides, p=config.class_mix)
    specs = []
    for i, label in enumerate(labels):
        slide_rng = np.random.default_rng([seed, i])
        if held and slide_rng.random() < realism.held_out_share:
            centre = held[int(slide_rng.integers(len(held)))]
        else:
            centre = seen[int(slide_rng.integers(len(seen)))]
        width, height = (int(v) for v in slide_rng.integers(*config.size_range, 2, endpoint=True))
        fragments = random_fragments(slide_rng, width, height, centre.mpp)
        lesions = realistic_lesions(slide_rng, fragments, centre.mpp, int(label), realism)
        name = f"{centre.name}_B{seed}_S{i:04d}.tif"
        spec = random_spec(
            slide_rng, name, int(label), width, height, centre.mpp, config, fragments, lesions
        )
        mimics = _reactive_mimics(slide_rng, fragments, centre.mpp, realism)
        written = _written_label(slide_rng, spec.label, realism.label_noise_p)
        specs.append(replace(
            spec, lookalikes=spec.lookalikes + mimics, centre=centre,
            magnification=centre.magnification, written_label=written,
        ))  # fmt: skip
    return specs


def sample_specs(
    n_slides: int, seed: int, config: SynthConfig = COHORTS["default"], split: str = "train"
) -> list[SlideSpec]:
    """``n_slides`` random slides of ``config``'s cohort: the default one
    (:func:`~training.data.synthetic.sampling.default_specs`, ``syn{seed}_{i:04d}.tif``, which
    ignores ``split``) or, with ``config.realism`` set, the ``realistic`` one's slides of
    ``split`` (:func:`realistic_specs`).

    Slide ``i`` depends only on ``(seed, i)`` (and ``split`` in the realistic cohort) and its
    drawn class, so a longer run extends a shorter one."""
    if config.realism is not None:
        return realistic_specs(n_slides, seed, config, split)
    return default_specs(n_slides, seed, config)
