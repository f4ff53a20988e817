"""Where DrivenData's light files of a training slide lie, and their sizes.

The competition published, beside the pyramidal TIFs, every slide 32× downsampled
(``downsampled_images/<stem>.jpg``, at the resolution of pyramid page 5) and every annotation
square cropped at full resolution (``annotated_regions/<annotation_id>.jpeg``), their addresses
in the CSVs' URL columns. A training folder holds them under those two names, beside (or instead
of) the TIFs.

Sizes, as the real files have them: the downsampled image is the metadata's page-0 size divided
by :data:`FACTOR`, each side rounded to the nearest pixel (the 271,950 × 294,038 px canvases give
8,498 × 9,189 px; a halved pyramid's page 5 is rounded down instead, so the two may differ by a
pixel); a crop is the annotation square rounded to page-0 pixels (:func:`region_rect`: the real
squares of 1,102.6–1,357.7 px give crops of 1,103–1,358 px a side).
"""

from __future__ import annotations

import math
from pathlib import Path

from stages.geometry import Box

#: Page-0 pixels per pixel of the downsampled image, a side.
FACTOR = 32
#: The pyramid page the downsampled image stands for (``2 ** PAGE == FACTOR``).
PAGE = 5
DOWNSAMPLED = "downsampled_images"
REGIONS = "annotated_regions"
#: The URL columns of the real CSVs that the light files' paths go in (``{us,eu,asia}_*``):
#: the TIFs' and the downsampled images' in ``*_metadata.csv``, the crops' in
#: ``train_annotations.csv``.
TIF_URLS = ("us_tif_url", "eu_tif_url", "asia_tif_url")
JPG_URLS = ("us_jpg_url", "eu_jpg_url", "asia_jpg_url")
REGION_URLS = ("us_jpeg_url", "eu_jpeg_url", "asia_jpeg_url")


def downsampled_path(filename: str) -> str:
    """The downsampled image of slide ``filename``, relative to the training folder."""
    return f"{DOWNSAMPLED}/{Path(filename).stem}.jpg"


def region_path(annotation_id: str) -> str:
    """The crop of annotation ``annotation_id``, relative to the training folder."""
    return f"{REGIONS}/{annotation_id}.jpeg"


def downsampled_size(width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` of the downsampled image of a page-0 ``width`` × ``height`` slide:
    each side divided by :data:`FACTOR`, rounded half up, at least 1."""
    return tuple(max(1, math.floor(side / FACTOR + 0.5)) for side in (width, height))  # type: ignore[return-value]


def region_rect(box: Box) -> tuple[int, int, int, int]:
    """Page-0 ``(left, top, width, height)`` of the crop of annotation square ``box`` (page-0
    px, y down): the square rounded to whole pixels (:meth:`Box.to_page` at scale 1)."""
    return box.to_page((1.0, 1.0))


def outside(box: Box, size: tuple[int, int]) -> bool:
    """True when square ``box`` reaches more than half a pixel past a page-0 ``size``
    ``(width, height)`` slide (its crop cannot hold all of it)."""
    width, height = size
    return box.x < -0.5 or box.y < -0.5 or box.right > width + 0.5 or box.bottom > height + 0.5
