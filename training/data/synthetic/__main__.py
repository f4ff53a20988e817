"""CLI: ``python -m training.data.synthetic OUT_DIR --slides N --seed S --split {train,test}
[--cohort realistic] [--light | --light-only] [--light-quality Q]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.data.light.write import LightOptions
from training.data.synthetic.cohort import sample_specs
from training.data.synthetic.dataset import SPLITS, write_dataset
from training.data.synthetic.options import add_generator_options, config_from_args
from training.data.synthetic.sampling import layout_specs

# -- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data.synthetic",
        description="Write synthetic TissueNet slides and CSVs in the competition's layout.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--slides", type=int, help="number of slides (with --layout: at most)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=SPLITS, default="train")
    add_generator_options(parser)
    parser.add_argument(
        "--layout",
        type=Path,
        nargs=2,
        metavar=("METADATA.csv", "ANNOTATIONS.csv"),
        help="reproduce real slides: sizes, resolutions, labels, boxes",
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=1,
        help="with --layout: divide sizes (multiply µm/px) by this integer",
    )
    parser.add_argument(
        "--sparse-canvas",
        type=int,
        nargs=2,
        metavar=("WIDTH", "HEIGHT"),
        help="write each slide as a huge mostly-glass canvas of this size",
    )
    light = parser.add_mutually_exclusive_group()
    light.add_argument(
        "--light",
        action="store_true",
        help="also write DrivenData's light files: downsampled_images/<stem>.jpg (32x) and "
        "annotated_regions/<annotation_id>.jpeg (each square at full resolution), and the "
        "CSVs' URL columns",
    )
    light.add_argument("--light-only", action="store_true", help="the light files without the TIFs")
    parser.add_argument(
        "--light-quality",
        type=int,
        default=LightOptions.quality,
        help="JPEG quality of the light files",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="slides written at once, a process each"
    )
    parser.add_argument(
        "--benchmark", action="store_true", help="print generation seconds and Mpx/s per slide"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.layout:
        if config.realism is not None:
            parser.error("--layout reproduces real slides' boxes; --cohort realistic draws its own")
        if args.sparse_canvas:
            parser.error("--sparse-canvas works with random slides, not --layout")
        specs = layout_specs(*args.layout, scale=args.scale, seed=args.seed, config=config)
        specs = specs[: args.slides] if args.slides is not None else specs
    elif args.slides is None or args.slides < 1:
        parser.error("--slides N (N >= 1) is required without --layout")
    else:
        specs = sample_specs(args.slides, args.seed, config, args.split)
    canvas = tuple(args.sparse_canvas) if args.sparse_canvas else None
    light = None
    if args.light or args.light_only:
        try:
            light = LightOptions(args.light_quality, tifs=not args.light_only)
        except ValueError as exc:
            parser.error(str(exc))
    metadata = write_dataset(
        args.out_dir, specs, args.split, canvas, workers=args.workers, truth=True, light=light
    )
    megapixels = metadata["width"] * metadata["height"] / 1e6
    if args.benchmark:
        light_s = metadata.get("light_seconds")
        for i, (row, mpx) in enumerate(
            zip(metadata.itertuples(index=False), megapixels, strict=True)
        ):
            print(
                f"{row.filename}\t{row.width}x{row.height}\t{row.seconds:.2f} s\t"
                f"{mpx / row.seconds:.1f} Mpx/s"
                + ("" if light_s is None else f"\t{light_s.iloc[i]:.2f} s light files")
            )
        total = metadata["seconds"].sum()
        print(
            f"total\t{len(metadata)} slides\t{total:.2f} s\t{megapixels.sum() / total:.1f} Mpx/s"
            f"\t{total / len(metadata):.2f} s/slide"
            + ("" if light_s is None else f"\t{light_s.sum():.2f} s light files")
        )
    counts = np.bincount([s.label for s in specs], minlength=4).tolist()
    print(f"wrote {len(specs)} {args.split} slides to {args.out_dir} (classes 0-3: {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
