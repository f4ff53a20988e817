"""``python -m training.data.light DATA OUT [--quality Q]``: DrivenData's light files of the
TIFs of the training folder ``DATA`` written into ``OUT`` (which may be ``DATA``), with its CSVs
and their URL columns (:func:`training.data.light.write.light_folder`); prints their bytes
against the TIFs'."""

from __future__ import annotations

import sys
from pathlib import Path

from training.cli import command_parser, setup_logging
from training.data.light.write import LightOptions, light_folder


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.data.light", __doc__)
    parser.add_argument("data", type=Path, help="training folder with the TIFs")
    parser.add_argument("out", type=Path, help="where the light files and CSVs go")
    parser.add_argument("--quality", type=int, default=LightOptions.quality, help="JPEG quality")
    args = parser.parse_args(argv)
    try:
        options = LightOptions(args.quality)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging()
    sizes = light_folder(args.data, args.out, options.quality)
    tif, light = sizes["tif_bytes"].sum(), sizes["light_bytes"].sum()
    print(f"{len(sizes)} slides: TIFs {tif / 1e6:.1f} MB, light files {light / 1e6:.2f} MB "
          f"({tif / max(light, 1):.0f}x less)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
