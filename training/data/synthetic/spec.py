"""What a synthetic slide holds: tissue types, fragments, lesions, look-alikes, artefacts.

A :class:`SlideSpec` is frozen and fully describes one slide; every position is in page-0 pixels
(y down, :mod:`stages.geometry`), every physical size in µm. Rendering lives in
:mod:`~training.data.synthetic.maps`, :mod:`~training.data.synthetic.textures` and
:mod:`~training.data.synthetic.render`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from stages.geometry import Box
from training.data.annotations import Annotation

#: Side of an annotation square, µm.
ANNOTATION_UM = 300.0
#: Page-0 µm/pixel range of the real scanners.
MPP_RANGE = (0.221, 0.272)


class Tissue(IntEnum):
    """Label-map values; each has one texture."""

    GLASS = 0
    STROMA = 1
    EPI_BASAL = 2
    EPI_UPPER = 3
    LSIL = 4
    HSIL = 5
    INVASIVE = 6
    INFLAMMATION = 7


EPITHELIAL = (Tissue.EPI_BASAL, Tissue.EPI_UPPER, Tissue.LSIL, Tissue.HSIL, Tissue.INVASIVE)
#: The tissue type a lesion of each grade paints.
LESION_TISSUE = {1: Tissue.LSIL, 2: Tissue.HSIL, 3: Tissue.INVASIVE}


# -- slide description ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    """An irregular elliptical piece of tissue with an epithelium band along part of its border.

    Centre in page-0 px; sizes in µm; the outline's radius is modulated by harmonics 2..
    (``shape`` holds amplitude, phase pairs); the epithelium covers the outline's parametric
    angles ``[epi_from_deg, epi_from_deg + epi_extent_deg)`` to a depth of ``epi_um``.
    """

    cx: float
    cy: float
    length_um: float
    width_um: float
    angle_deg: float
    shape: tuple[float, ...]
    epi_from_deg: float
    epi_extent_deg: float
    epi_um: float

    def __post_init__(self) -> None:
        if not (self.length_um >= self.width_um > 0 and self.epi_um > 0):
            raise ValueError(f"bad fragment sizes: {self}")
        if len(self.shape) % 2:
            raise ValueError("Fragment.shape holds (amplitude, phase) pairs")


@dataclass(frozen=True)
class Lesion:
    """A lesion of ``grade`` 1–3 centred on page-0 ``(cx, cy)``, ``size_um`` across.

    Grade 0 is a normal-epithelium site: it renders nothing and exists to carry a class-0
    annotation (the real file annotates normal areas too). ``annotated`` sites get one 300 µm
    square in ``train_annotations.csv``.
    """

    cx: float
    cy: float
    grade: int
    size_um: float
    annotated: bool

    def __post_init__(self) -> None:
        if self.grade not in (0, 1, 2, 3) or self.size_um <= 0:
            raise ValueError(f"bad lesion: {self}")


@dataclass(frozen=True)
class LookAlike:
    """A benign look-alike (dense inflammation in the stroma) centred on page-0 ``(cx, cy)``."""

    cx: float
    cy: float
    size_um: float


ARTEFACT_KINDS = ("pen", "fold", "dust", "blur", "stripe")


@dataclass(frozen=True)
class Artefact:
    """A slide artefact drawn along page-0 ``points`` (a polyline; one point = a disc).

    ``pen``: ink stroke; ``fold``: dark band on tissue; ``dust``: speck; ``blur``: out-of-focus
    square ``width_um`` wide; ``stripe``: faint scanner band. ``colour``/``alpha`` (uint8) set the
    overlay; ``blur`` ignores them.
    """

    kind: str
    points: tuple[tuple[float, float], ...]
    width_um: float
    colour: tuple[int, int, int] = (0, 0, 0)
    alpha: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ARTEFACT_KINDS:
            raise ValueError(f"unknown artefact kind {self.kind!r}; expected {ARTEFACT_KINDS}")
        if not self.points or self.width_um <= 0 or not 0 <= self.alpha <= 255:
            raise ValueError(f"bad artefact: {self}")


@dataclass(frozen=True)
class SlideSpec:
    """Everything needed to render one slide; ``seed`` drives textures, stain and outlines."""

    filename: str
    width: int
    height: int
    mpp: float
    magnification: int
    seed: int
    fragments: tuple[Fragment, ...] = ()
    lesions: tuple[Lesion, ...] = ()
    lookalikes: tuple[LookAlike, ...] = ()
    artefacts: tuple[Artefact, ...] = ()

    def __post_init__(self) -> None:
        if not self.filename.endswith(".tif"):
            raise ValueError(f"slide filename must end with .tif: {self.filename!r}")
        if self.width < 1 or self.height < 1 or not self.mpp > 0:
            raise ValueError(
                f"{self.filename}: bad size or mpp ({self.width}x{self.height}, {self.mpp})"
            )
        if self.magnification not in (20, 40):
            raise ValueError(f"{self.filename}: magnification must be 20 or 40")

    @property
    def stem(self) -> str:
        return self.filename[: -len(".tif")]

    @property
    def label(self) -> int:
        """Slide class: the most severe lesion present (0 without lesions)."""
        return max((lesion.grade for lesion in self.lesions), default=0)


def annotation_box(lesion: Lesion, spec: SlideSpec) -> Box:
    """The 300 µm square (page-0 px) centred on ``lesion``, shifted to lie inside the slide."""
    side = ANNOTATION_UM / spec.mpp
    x = min(max(lesion.cx - side / 2, 0.0), max(spec.width - side, 0.0))
    y = min(max(lesion.cy - side / 2, 0.0), max(spec.height - side, 0.0))
    return Box(x, y, side, side)


def slide_annotations(spec: SlideSpec) -> list[Annotation]:
    """Annotations of ``spec``'s annotated sites, ids ``{stem}_{i}``, in lesion order."""
    sites = [lesion for lesion in spec.lesions if lesion.annotated]
    return [
        Annotation(f"{spec.stem}_{i}", spec.filename, annotation_box(site, spec), site.grade)
        for i, site in enumerate(sites)
    ]
