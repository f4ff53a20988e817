"""QuPath GeoJSON of a run with the ground truth beside the predictions.

``python -m training.inspect.qupath RUN_DIR --annotations train_annotations.csv
--metadata train_metadata.csv [--levels 0.5,0.8]``

``python -m training.inspect.qupath RUN_DIR --check`` writes nothing: it reads every
``*.geojson`` in ``RUN_DIR`` back and logs how many files, features and polygons it checked and
how many features are invalid (shapely's ``is_valid``, each one logged with its reason); exit
status 1 if any is.

``RUN_DIR`` is what ``main.py --save-heatmaps`` (or :func:`training.fit.decision.run_cascade`)
wrote. Each ``<stem>.geojson`` is written again from its ``<stem>.npz`` / ``<stem>.json``
(:func:`stages.geojson.result_features`) with the slide's annotated squares added as
``Annotation: <grade>`` (the CSV's y axis flipped back to page-0 pixels, y down, by
:func:`training.data.annotations.parse_annotations`). No network runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from stages.geojson import DEFAULT_LEVELS, invalid_features, result_features, write_geojson
from stages.result import SlideResult
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


def check_run(run: Path) -> tuple[int, int, int, int]:
    """``(files, features, polygons, invalid features)`` of every ``*.geojson`` in ``run`` read
    back (a MultiPolygon counts its polygons); each invalid feature logged with its reason."""
    files = features = polygons = invalid = 0
    for path in sorted(run.glob("*.geojson")):
        collection = json.loads(path.read_text(encoding="utf-8"))
        files += 1
        features += len(collection["features"])
        for feature in collection["features"]:
            geometry = feature.get("geometry") or {}
            if geometry.get("type") == "Polygon":
                polygons += 1
            elif geometry.get("type") == "MultiPolygon":
                polygons += len(geometry["coordinates"])
        for i, reason in invalid_features(collection):
            log.warning("%s: feature %d invalid: %s", path.name, i, reason)
            invalid += 1
    return files, features, polygons, invalid


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.inspect.qupath", __doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--annotations", type=Path)
    parser.add_argument("--metadata", type=Path)
    parser.add_argument("--levels", default="0.5", help="comma-separated heatmap levels")
    parser.add_argument("--check", action="store_true", help="only read the GeoJSON files back")
    args = parser.parse_args(argv)
    setup_logging()
    if args.check:
        files, features, polygons, invalid = check_run(args.run)
        log.info(
            "%s: %d GeoJSON files, %d features, %d polygons checked, %d features invalid",
            args.run, files, features, polygons, invalid,
        )  # fmt: skip
        return 1 if invalid else 0
    levels = tuple(float(v) for v in args.levels.split(","))
    export_run(args.run, args.annotations, args.metadata, levels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
