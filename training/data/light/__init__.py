"""DrivenData's light files of the TissueNet training set: each slide 32× downsampled
(``downsampled_images/<stem>.jpg``, ~7.5 µm/px) and each annotation square cropped at full
resolution (``annotated_regions/<annotation_id>.jpeg``), 752 MB of JPEGs plus the crops instead
of 928 GiB of TIFs.

The parts: :mod:`.layout` (names, paths, sizes; the only part imported here, so that
:mod:`training.data.dataset` may use it), :mod:`.write` (the files made from a TIF, as the
generator's ``--light`` writes them; ``python -m training.data.light`` for a folder of TIFs) and
:mod:`.read` (:class:`~.read.LightSlide`: a slide read from them as the cache reads a TIF,
``python -m training.data.cache DATA OUT --source light``).
"""

from training.data.light.layout import (
    DOWNSAMPLED,
    FACTOR,
    JPG_URLS,
    PAGE,
    REGION_URLS,
    REGIONS,
    TIF_URLS,
    downsampled_path,
    downsampled_size,
    outside,
    region_path,
    region_rect,
)

__all__ = [
    "DOWNSAMPLED",
    "FACTOR",
    "JPG_URLS",
    "PAGE",
    "REGIONS",
    "REGION_URLS",
    "TIF_URLS",
    "downsampled_path",
    "downsampled_size",
    "outside",
    "region_path",
    "region_rect",
]
