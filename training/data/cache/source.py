"""Where the cache reads a slide's pixels (:data:`SOURCES`): its TIF (:class:`TifSource`) or
DrivenData's light files (:class:`LightSource`, :mod:`training.data.light`).

A source opens the slide as a :class:`stages.slide.Slide` (tissue, fragments and detector
targets then come from the same code either way) and says which squares' pixels it can read at
the classifier's µm/px, and where a label-0 slide's benign patches lie.
"""

from __future__ import annotations

import numpy as np

from stages.slide import Slide, SlideError
from training.data.annotations import Annotation
from training.data.dataset import TrainSlide
from training.data.light.read import LightSlide
from training.data.targets import jittered_centres, tissue_points


class TifSource:
    """The TIFs: every square, and all the tissue, at any µm/px."""

    def open(self, item: TrainSlide, default_mpp: float) -> Slide:
        """``item``'s slide, open (close it, or use it in ``with``)."""
        return Slide(item.path, mpp=item.mpp, default_mpp=default_mpp)

    def patch_squares(self, slide: Slide, item: TrainSlide) -> tuple[Annotation, ...]:
        """The squares of ``item`` whose patches ``slide`` can read: all of them."""
        return item.annotations

    def footprint(
        self, patch: tuple[float, float], read: tuple[float, float]
    ) -> tuple[float, float]:
        """The page-0 size, of the network's ``patch`` and of the larger ``read`` cut around
        it (for augmentation), that must lie inside a square: the patch (its margin may reach
        past the square)."""
        return patch

    def benign_centres(
        self,
        rng: np.random.Generator,
        slide: Slide,
        mask: np.ndarray,
        mask_scale: tuple[float, float],
        n: int,
        patch: tuple[float, float],
    ) -> np.ndarray:
        """``(n, 2)`` page-0 centres of a label-0 slide's benign patches (of :meth:`footprint`
        ``patch``): uniform over the tissue of ``mask`` (``(h, w)`` bool, ``mask_scale`` page-0
        px per pixel)."""
        return tissue_points(rng, mask, mask_scale, n)


class LightSource(TifSource):
    """The light files: the downsampled image, and full resolution inside the squares only."""

    def open(self, item: TrainSlide, default_mpp: float) -> LightSlide:
        """``item``'s light files, open (:class:`LightSlide`; its size from the metadata)."""
        if item.size is None:
            raise SlideError(f"{item.filename}: no width and height in the metadata")
        return LightSlide(
            item.path.parent, item.filename, item.size, item.annotations, item.mpp, default_mpp
        )

    def patch_squares(self, slide: Slide, item: TrainSlide) -> tuple[Annotation, ...]:
        """The squares of ``item`` with a usable crop (:attr:`LightSlide.crops`)."""
        return tuple(a for a in item.annotations if a.annotation_id in slide.crops)

    def footprint(
        self, patch: tuple[float, float], read: tuple[float, float]
    ) -> tuple[float, float]:
        """The whole ``read``: nothing past a crop can be read."""
        return read

    def benign_centres(
        self,
        rng: np.random.Generator,
        slide: Slide,
        mask: np.ndarray,
        mask_scale: tuple[float, float],
        n: int,
        patch: tuple[float, float],
    ) -> np.ndarray:
        """``(n, 2)`` page-0 centres inside the usable crops' squares (a label-0 slide's are
        class 0: the only full-resolution tissue the light files hold), each square drawn
        uniformly, each patch inside its square (:func:`jittered_centres`); ``(0, 2)`` without
        one."""
        boxes = [region.box for region in slide.crops.values()]
        if not boxes:
            return np.zeros((0, 2))
        counts = np.bincount(rng.integers(0, len(boxes), n), minlength=len(boxes))
        pairs = zip(boxes, counts, strict=True)
        return np.concatenate([jittered_centres(rng, box, int(k), patch) for box, k in pairs])


#: The cache's sources by name (:data:`training.data.dataset.SOURCES`).
SOURCES = {"tif": TifSource(), "light": LightSource()}
