"""Runtime entry point: grade every slide in ``data/``, write ``submission.csv`` beside this file.

Run as ``python main.py`` from the folder that holds it (``data/`` read-only, ``assets/`` with the
weights, no network). Options are for local use; ``python main.py --help`` lists them
(:mod:`stages.cli`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

STARTED = time.monotonic()  # the time limit counts from here, before torch is imported

if __name__ == "__main__":
    from stages.cli import main

    code = main(root=Path(__file__).resolve().parent, started=STARTED)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The submission is written; skip the interpreter's teardown of torch (1.5–3 s that no
    # budget sees) so the run ends when its log says it did.
    os._exit(code)
