"""What a synthetic slide holds: tissue types, fragments, lesions, look-alikes, artefacts.

A :class:`SlideSpec` is frozen and fully describes one slide; every position is in page-0 pixels
(y down, :mod:`stages.geometry`), every physical size in µm. Rendering lives in
:mod:`~training.data.synthetic.maps`, :mod:`~training.data.synthetic.textures` and
:mod:`~training.data.synthetic.render`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from stages.geometry import Box
from training.data.annotations import Annotation

if TYPE_CHECKING:
    from training.data.synthetic.cohort import Centre

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
    #: benign epithelium that looks like a lesion at low magnification: reactive or metaplastic
    #: change, and the maturing layers above a layered lesion's atypical zone
    REACTIVE = 8


EPITHELIAL = (
    Tissue.EPI_BASAL, Tissue.EPI_UPPER, Tissue.LSIL, Tissue.HSIL, Tissue.INVASIVE, Tissue.REACTIVE,
)  # fmt: skip
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
class Layers:
    """A column across the epithelium (:mod:`~training.data.synthetic.depth`): its axis is the
    inward surface normal ``normal_deg`` (degrees, page-0 x right, y down), the epithelium there
    is nominally ``epi_um`` thick; the lower ``fill`` of that thickness (from the basement
    membrane up, in (0, 1]) holds the atypical cells, the rest up to the surface maturing
    (``Tissue.REACTIVE``) cells, and nests of atypical cells reach ``invasion_um`` below the
    membrane (grade 3; 0 otherwise)."""

    fill: float
    normal_deg: float
    epi_um: float
    invasion_um: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.fill <= 1 and self.epi_um > 0 and self.invasion_um >= 0):
            raise ValueError(f"bad layers: {self}")

    @property
    def band_um(self) -> float:
        """Depth of the lesion proper along the normal: atypical epithelium plus invasion, µm."""
        return self.fill * self.epi_um + self.invasion_um


@dataclass(frozen=True)
class Lesion:
    """A lesion of ``grade`` 1–3 centred on page-0 ``(cx, cy)``, ``size_um`` across.

    Grade 0 is a normal-epithelium site: it renders nothing and exists to carry a class-0
    annotation (the real file annotates normal areas too). ``annotated`` sites get one 300 µm
    square in ``train_annotations.csv``. Without ``layers`` a lesion replaces a blob of tissue
    whatever its grade; with ``layers`` it is a column across the epithelium graded by depth,
    ``size_um`` wide along the surface, centred on the middle of its :attr:`Layers.band_um`.
    """

    cx: float
    cy: float
    grade: int
    size_um: float
    annotated: bool
    layers: Layers | None = None

    def __post_init__(self) -> None:
        if self.grade not in (0, 1, 2, 3) or self.size_um <= 0:
            raise ValueError(f"bad lesion: {self}")


@dataclass(frozen=True)
class LookAlike:
    """A benign look-alike centred on page-0 ``(cx, cy)``: dense inflammation in the stroma, or
    with ``layers`` (``fill`` 1) reactive epithelium across the whole thickness."""

    cx: float
    cy: float
    size_um: float
    layers: Layers | None = None


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
    #: the synthetic centre (stain, scanner, JPEG quality) of a ``realistic`` slide, else None
    centre: Centre | None = None
    #: the label as the pathologist wrote it when it differs from :attr:`label` (label noise)
    written_label: int | None = None

    def __post_init__(self) -> None:
        if not self.filename.endswith(".tif"):
            raise ValueError(f"slide filename must end with .tif: {self.filename!r}")
        if self.width < 1 or self.height < 1 or not self.mpp > 0:
            raise ValueError(
                f"{self.filename}: bad size or mpp ({self.width}x{self.height}, {self.mpp})"
            )
        if self.magnification not in (20, 40):
            raise ValueError(f"{self.filename}: magnification must be 20 or 40")
        if self.written_label not in (None, 0, 1, 2, 3):
            raise ValueError(f"{self.filename}: written_label must be 0-3 or None")

    @property
    def stem(self) -> str:
        return self.filename[: -len(".tif")]

    @property
    def label(self) -> int:
        """Slide class: the most severe lesion present (0 without lesions)."""
        return max((lesion.grade for lesion in self.lesions), default=0)

    @property
    def label_as_written(self) -> int:
        """The slide label in the labels CSV: :attr:`written_label`, else the true label."""
        return self.label if self.written_label is None else self.written_label


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
