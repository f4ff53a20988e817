"""The cache's arrays read through a bounded pool of open files (:class:`ArrayPool`)."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

#: ``.npy`` header readers by format version (``np.save`` writes 1.0, or 2.0 for huge headers).
HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class ArrayPool:
    """``.npy`` arrays by path, at most ``max_open`` open at a time, the least recently used
    closed first, so the pool bounds the open files of a process whatever the number of slides.
    Pickled empty (for loader workers).

    * :meth:`get` memory-maps a whole array (one file descriptor while the map lives; an array a
      caller still holds stays valid, its map closing when the last reference goes): for crops of
      the detector's fragment arrays.
    * :meth:`item` reads one item along the first axis with ``pread`` into a fresh array: for
      the classifier's patches, drawn one at a time from every slide. Nothing stays mapped, so
      the pages read count in the system's page cache, not in the process's resident set.
    """

    def __init__(self, max_open: int = 64) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open = max_open
        self._open: OrderedDict[tuple[Path, str], Any] = OrderedDict()

    def _remember(self, key: tuple[Path, str], value: Any) -> None:
        self._open[key] = value
        while len(self._open) > self.max_open:
            (_, kind), old = self._open.popitem(last=False)
            if kind == "file":
                old[0].close()

    def get(self, path: Path) -> np.ndarray:
        """The array of ``path``, memory-mapped read-only."""
        array = self._open.pop((path, "map"), None)
        if array is None:
            array = np.load(path, mmap_mode="r")
        self._remember((path, "map"), array)
        return array

    def item(self, path: Path, index: int) -> np.ndarray:
        """Item ``index`` (along the first axis) of the C-ordered array of ``path``, read."""
        entry = self._open.pop((path, "file"), None)
        if entry is None:
            handle = path.open("rb")
            try:
                version = np.lib.format.read_magic(handle)
                header = HEADER_READERS.get(version)
                if header is None:
                    raise ValueError(f"{path}: .npy format {version} is not read by items")
                shape, fortran, dtype = header(handle)
            except BaseException:
                handle.close()
                raise
            if fortran or not shape:
                handle.close()
                raise ValueError(f"{path}: item reads need a C-ordered array of rank >= 1")
            entry = (handle, handle.tell(), shape, dtype)
        self._remember((path, "file"), entry)
        handle, offset, shape, dtype = entry
        if not 0 <= index < shape[0]:
            raise IndexError(f"{path}: item {index} of {shape[0]}")
        out = np.empty(shape[1:], dtype)  # read straight into the array handed back
        if os.preadv(handle.fileno(), [out], offset + index * out.nbytes) != out.nbytes:
            raise ValueError(f"{path}: truncated at item {index}")
        return out

    def __len__(self) -> int:
        return len(self._open)

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open, "_open": OrderedDict()}
