"""The generator's command-line options: ``--cohort``, ``--class-mix`` and ``--size-range``
(:func:`add_generator_options`), read back as a :class:`SynthConfig` by :func:`config_from_args`.

Shared by ``python -m training.data.synthetic`` and ``python -m training.data.check`` (which
rebuilds a generated folder's slide descriptions from them).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from training.data.synthetic.cohort import COHORTS
from training.data.synthetic.sampling import SynthConfig


def class_mix_arg(text: str) -> tuple[float, float, float, float]:
    """``--class-mix`` value: 4 comma-separated non-negative numbers, normalised to sum to 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--class-mix wants 4 numbers, got {text!r}") from exc
    if len(values) != 4 or min(values) < 0 or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"--class-mix wants 4 non-negative numbers: {text!r}")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


def add_generator_options(parser: argparse.ArgumentParser) -> None:
    """``--cohort``, ``--class-mix`` and ``--size-range``, the random slides' options (also what
    :mod:`training.data.synthetic.truth` needs to rebuild a folder's slide descriptions); read
    them back with :func:`config_from_args`."""
    parser.add_argument(
        "--cohort",
        choices=sorted(COHORTS),
        default="default",
        help="default: today's fast slides; realistic: small worst lesions graded by depth, "
        "centres (one held out of --split train), unannotated lesions, noisy labels",
    )
    parser.add_argument(
        "--class-mix",
        type=class_mix_arg,
        default=SynthConfig().class_mix,
        metavar="P0,P1,P2,P3",
        help="class shares (normalised)",
    )
    parser.add_argument(
        "--size-range",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=SynthConfig().size_range,
        help="page-0 width/height range, px",
    )


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The :class:`SynthConfig` of :func:`add_generator_options`' parsed options: the cohort's
    config with the given class mix and size range (ValueError when they are inconsistent)."""
    return replace(
        COHORTS[args.cohort], class_mix=args.class_mix, size_range=tuple(args.size_range)
    )
