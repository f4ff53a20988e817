"""Decode each training slide once into an on-disk cache, so that epochs never read a TIFF.

The parts: :mod:`.config` (settings, file names, crops), :mod:`.source` (where a slide's pixels
are read: its TIF or DrivenData's light files), :mod:`.write` (building it),
:mod:`.pool` and :mod:`.read` (reading it), :mod:`.cli` (``python -m training.data.cache``,
whose help, the module doc of :mod:`.cli`, describes the cache's layout).
"""

from training.data.cache.cli import add_arguments, from_arguments, main
from training.data.cache.config import (
    DONE,
    HARD,
    PATCHES,
    SETTINGS,
    SLIDES,
    SQUARES,
    CacheConfig,
    crop_padded,
    crop_size,
    paste,
)
from training.data.cache.pool import HEADER_READERS, ArrayPool
from training.data.cache.read import Cache, CachedSlide
from training.data.cache.write import (
    CacheRunner,
    build_cache,
    cache_serially,
    cache_slide,
    fragment_boxes,
    resample_mask,
    tissue_cells,
    tissue_fragments,
    write_index,
)

__all__ = [
    "DONE",
    "HARD",
    "HEADER_READERS",
    "PATCHES",
    "SETTINGS",
    "SLIDES",
    "SQUARES",
    "ArrayPool",
    "Cache",
    "CacheConfig",
    "CacheRunner",
    "CachedSlide",
    "add_arguments",
    "build_cache",
    "cache_serially",
    "cache_slide",
    "crop_padded",
    "crop_size",
    "fragment_boxes",
    "from_arguments",
    "main",
    "paste",
    "resample_mask",
    "tissue_cells",
    "tissue_fragments",
    "write_index",
]
