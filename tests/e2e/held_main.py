"""``main.py`` with :meth:`stages.cascade.Cascade.grade_slide` held on chosen slides: a test hook
(:func:`helpers.start_main` starts it).

``python tests/e2e/held_main.py MAIN_ARGS...`` with, in the environment, ``TEST_HOLD`` (a JSON list
of filenames whose ``grade_slide`` writes ``TEST_MARKS/<filename>.held`` and then never returns,
as a native call that hangs) and ``TEST_FORCE`` (a JSON object filename → class: those slides are
graded as usual, then given that class, so that a test knows a row the fallback cannot hold).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import stages.cascade  # noqa: E402
from stages.cli import main  # noqa: E402

HOLD = set(json.loads(os.environ.get("TEST_HOLD", "[]")))
FORCE = {str(k): int(v) for k, v in json.loads(os.environ.get("TEST_FORCE", "{}")).items()}
MARKS = Path(os.environ.get("TEST_MARKS", "."))
grade_slide = stages.cascade.Cascade.grade_slide


def held_grade_slide(self, path, *args, **kwargs):  # type: ignore[no-untyped-def]
    if path.name in HOLD:
        (MARKS / f"{path.name}.held").touch()
        threading.Event().wait()  # never set: the slide stays in flight
    result = grade_slide(self, path, *args, **kwargs)
    if path.name in FORCE:
        result = dataclasses.replace(result, cls=FORCE[path.name])
    return result


stages.cascade.Cascade.grade_slide = held_grade_slide  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = str(REPO / "main.py")
    sys.exit(main(sys.argv[1:], root=REPO))
