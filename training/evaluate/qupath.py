"""QuPath GeoJSON of a run with the ground truth beside the predictions.

``python -m training.evaluate.qupath RUN_DIR --annotations train_annotations.csv
--metadata train_metadata.csv [--levels 0.5,0.8]``

``RUN_DIR`` is what ``main.py --save-heatmaps`` (or :func:`training.fit.decision.run_cascade`)
wrote. Each ``<stem>.geojson`` is written again from its ``<stem>.npz`` / ``<stem>.json``
(:func:`stages.geojson.result_features`) with the slide's annotated squares added as
``Annotation: <grade>`` (the CSV's y axis flipped back to page-0 pixels, y down, by
:func:`training.data.annotations.parse_annotations`). No network runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stages.cascade import SlideResult
from stages.geojson import DEFAULT_LEVELS, result_features, write_geojson
from training.cli import command_parser, setup_logging
from training.data.annotations import parse_annotations

log = logging.getLogger(__name__)


def export_run(
    run: Path,
    annotations: Path | None = None,
    metadata: Path | None = None,
    levels: tuple[float, ...] = DEFAULT_LEVELS,
) -> list[Path]:
    """Write ``<stem>.geojson`` beside every saved result in ``run``; returns the files."""
    squares: dict[str, list] = {}
    if annotations is not None:
        if metadata is None:
            raise ValueError("annotations need the metadata CSV (slide heights undo the y flip)")
        for a in parse_annotations(annotations, metadata):
            squares.setdefault(a.filename, []).append((a.box, a.annotation_class))
    written = []
    for saved in sorted(run.glob("*.npz")):
        result = SlideResult.load(saved)
        collection = result_features(result, levels, squares.get(result.filename, ()))
        written.append(write_geojson(collection, saved.with_suffix(".geojson")))
    log.info("wrote %d GeoJSON files to %s", len(written), run)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.evaluate.qupath", __doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--annotations", type=Path)
    parser.add_argument("--metadata", type=Path)
    parser.add_argument("--levels", default="0.5", help="comma-separated heatmap levels")
    args = parser.parse_args(argv)
    setup_logging()
    levels = tuple(float(v) for v in args.levels.split(","))
    export_run(args.run, args.annotations, args.metadata, levels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
