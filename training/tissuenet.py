"""``tissuenet``: one command for every job of the project, each subcommand forwarding its
arguments to the module that does the job (the same parser and log set-up as ``python -m``).

``tissuenet SUBCOMMAND [ARGS…]``; ``tissuenet SUBCOMMAND --help`` shows the module's own help;
``tissuenet`` alone lists the subcommands. Installed as a console script by ``pip install -e .``
(``make setup``); ``python -m training.tissuenet`` works without it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: subcommand → (module whose ``main(argv)`` does it, one line of help). In workflow order.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.data.synthetic.__main__", "generate slides in the competition's formats"),
    "convert": ("training.data.convert", "convert a native slide to a pyramidal TIFF"),
    "light": ("training.data.light.__main__", "DrivenData's light files of a folder of TIFs"),
    "check": ("training.data.check", "check a training folder (labels, annotations, grades)"),
    "cache": ("training.data.cache", "build the training cache of a training folder"),
    "fit-detector": ("training.fit.detector", "train stage 1 (the heatmap detector)"),
    "hard-negatives": ("training.fit.hard_negatives", "mine stage 2's hard negatives"),
    "fit-classifier": ("training.fit.classifier", "train stage 2 (the patch classifier)"),
    "fit-decision": ("training.fit.decision", "fit the decision and the budget's priors"),
    "export": ("training.pack.export", "write assets/ from trained stages"),
    "train": ("training.pipeline", "all of the above in order (make train)"),
    "grade": ("stages.cli", "grade data/ into submission.csv (what main.py runs)"),
    "pack": ("training.pack.package", "pack, test and score the runtime submission"),
    "metric": ("stages.metric", "score a submission against labels"),
    "evaluate": ("training.evaluate.explain", "the shipped assets on held-out slides"),
    "light-price": ("training.evaluate.light", "light-files training against TIF training"),
    "report": ("training.inspect.report", "one HTML report of a graded run"),
    "qupath": ("training.inspect.qupath", "GeoJSON for QuPath of a graded run; --check"),
    "cluster": ("training.cluster.__main__", "grade an archive or build a cache on Ray"),
    "benchmark": ("training.bench.benchmark", "speed against exhaustive tiling, limits sweep"),
    "train-scale": ("training.bench.train_scale", "training memory and files at real scale"),
    "train-speed": ("training.bench.train_speed", "training throughput per stage"),
    "gpu-smoke": ("training.bench.gpu_smoke", "check a GPU machine end to end"),
}


def usage() -> str:
    """The subcommands, one line each."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: tissuenet SUBCOMMAND [ARGS...]\n\nsubcommands:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``argv[0]``'s module's ``main`` on the rest of ``argv`` (default: the command line);
    returns its exit status (2 with the list of subcommands for an unknown one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tissuenet: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"tissuenet {name}", *rest]  # so that argparse's usage names the subcommand
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
