"""Decode each training slide once into an on-disk cache, so that epochs never read a TIFF.

``python -m training.data.cache DATA_DIR CACHE_DIR [--folds 4] [--by-centre]
[--preset NAME|FILE.json] [--source tif|light]``

``--source light`` reads DrivenData's light files instead of the TIFs
(:mod:`training.data.light`: ``downsampled_images/<stem>.jpg``, 32× downsampled, and
``annotated_regions/<annotation_id>.jpeg``, the squares at full resolution): the tissue mask,
fragments and detector targets come from the downsampled image (page 5, whose µm/px is the
metadata's times its scale, about 32), the classifier's patches from the crops, and a label-0
slide's benign patches from inside its (class-0) squares. The cache is the same either way; the
detector page must be page 5 or coarser (the presets' 8 µm/px is). A crop that is missing,
truncated, greyscale or off its square, or whose square reaches past the slide, loses that
square's patches (a warning names the file); a downsampled image that is missing, unreadable or
not the metadata's size / 32 loses its slide.

Per slide, in ``CACHE_DIR/<stem>/`` (written to temporary names, then renamed; ``slide.json``
last, so a slide with ``slide.json`` is complete and a rerun resumes after it):

* the detector page (the page nearest ``detector.target_mpp``, chosen as the cascade chooses it)
  is cached **per tissue fragment**: the tissue mask's 8-connected components of at least
  ``min_fragment_um2`` (smaller specks dropped, unless they meet an annotation square), each box
  grown by half a training crop and merged with the boxes it overlaps. Fragment ``i`` is
  ``detector-i.npy`` ``(H, W, 3)`` uint8, ``tissue-i.npy`` ``(H, W)`` bool and ``target-i.npy``
  ``(H, W)`` uint8 (:func:`training.data.targets.detector_target`) on one grid; ``slide.json``
  holds the boxes (detector-page ``left, top, width, height``). A 66 × 71 mm canvas with 2 %
  tissue thus costs its fragments, not its glass;
* ``cells.npy`` ``(n, 3)`` uint16: ``(fragment, row, column)`` of the ``cell`` × ``cell`` cells of
  the fragments that hold tissue, the compact index training windows are drawn from;
* ``mask.npy``: the cascade's tissue mask (:func:`stages.tissue.mask_for_slide`);
* ``patches.npy`` ``(N, S, S, 3)`` uint8 on the classifier page, ``S = crop_factor × patch``:
  jittered inside each annotation square (its class) and, on label-0 slides, on random tissue
  (class 0); ``patches.csv`` says which is which (kind, class, page-0 centre);
* ``hard.npy`` / ``hard.csv``: hard negatives, added later by
  :mod:`training.fit.hard_negatives`.

``slides.csv`` (one row per cached slide, with its fold, fragments, bytes on disk and seconds) and
``patches.csv`` (every patch) index the cache; ``cache.json`` holds the settings (the y-flip
convention of the annotations among them), and a rerun with other settings is refused. A slide
that cannot be read is skipped and named in the log; the others go on.

Arrays are read through an :class:`ArrayPool` of at most ``max_open`` open files (fragment
crops memory-mapped, patches read one at a time), so a training process keeps a bounded number
of files open whatever the number of slides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli import command_parser, setup_logging
from training.data.annotations import Y_FLIPS
from training.data.cache.config import CacheConfig
from training.data.cache.write import CacheRunner, build_cache, cache_serially
from training.data.dataset import SOURCES
from training.presets import load_preset


def add_reading_options(parser: argparse.ArgumentParser) -> None:
    """``--y-flip`` and ``--source``: how the cache reads a training folder (also the
    pipeline's options)."""
    parser.add_argument(
        "--y-flip",
        choices=Y_FLIPS,
        default=CacheConfig.y_flip,
        help="page-0 height that undoes the annotations' flipped y: the metadata's or the TIF's "
        "own (python -m training.data.check DATA says which the data supports)",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default=CacheConfig.source,
        help="read the TIFs, or DrivenData's light files (downsampled_images/, annotated_regions/)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The cache command's arguments (``DATA OUT`` and its settings), for :func:`from_arguments`."""
    parser.add_argument(
        "data", type=Path, help="training folder (train_*.csv and the TIFs or light files)"
    )
    parser.add_argument("out", type=Path, help="cache folder (resumed when it exists)")
    parser.add_argument("--preset", default="tiny", help="preset name or JSON file (its cascade)")
    parser.add_argument("--config", dest="preset", help=argparse.SUPPRESS)  # the old name
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--by-centre", action="store_true", help="group folds by centre (Cxx_)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--square-patches", type=int, default=CacheConfig.square_patches)
    parser.add_argument("--benign-patches", type=int, default=CacheConfig.benign_patches)
    parser.add_argument(
        "--square-spread",
        type=float,
        default=CacheConfig.square_spread,
        help="share of an annotation square's range its patches are drawn over, about its centre",
    )
    add_reading_options(parser)
    parser.add_argument(
        "--min-fragment-um2",
        type=float,
        default=CacheConfig.min_fragment_um2,
        help="tissue components smaller than this (µm²) are specks, not cached",
    )


def from_arguments(args: argparse.Namespace, runner: CacheRunner = cache_serially) -> int:
    """Build the cache that :func:`add_arguments`' ``args`` describe with ``runner``; prints the
    slides per fold and label."""
    config = CacheConfig(
        square_patches=args.square_patches,
        benign_patches=args.benign_patches,
        square_spread=args.square_spread,
        min_fragment_um2=args.min_fragment_um2,
        y_flip=args.y_flip,
        seed=args.seed,
        source=args.source,
    )
    cascade = load_preset(args.preset).cascade
    slides = build_cache(args.data, args.out, cascade, config, args.folds, args.by_centre, runner)
    print(f"cached {len(slides)} slides in {args.out}")
    if len(slides):
        counts = slides.groupby(["fold", "label"]).size().unstack(fill_value=0)
        print(f"slides per fold and label:\n{counts}")
        mb = slides["bytes"] / 1e6
        print(f"disk per slide: median {mb.median():.1f} MB, max {mb.max():.1f} MB, "
              f"total {mb.sum() / 1e3:.2f} GB")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.data.cache", __doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    return from_arguments(args)
