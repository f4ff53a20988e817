"""What every training command shares: its argument parser and its log format."""

from __future__ import annotations

import argparse
import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def command_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser for ``python -m prog`` whose help shows the module doc as written."""
    return argparse.ArgumentParser(
        prog=f"python -m {prog}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped log lines on stderr; libvips' own INFO chatter silenced."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger("pyvips").setLevel(logging.WARNING)
