"""``make gpu-smoke``: does this machine's GPU run the whole product? One line per step, the
first degraded step fails the run.

``python -m training.bench.gpu_smoke WORK [--device cuda] [--assets assets]``

Steps: the device probe (:func:`stages.device.probe`); sample slides; ``main.py`` on the CPU,
then on the GPU in float16 and in float32 (each must log the GPU, grade every slide, and score
within :data:`SCORE_TOLERANCE` of the CPU); a short ``training.pipeline`` with
``--accelerator gpu`` (16-bit mixed precision, spawned pinned loaders, hard negatives and the
decision on CUDA); ``main.py`` on the GPU with the assets it wrote; the benchmark's GPU mode on
the held-out set. About 5–10 minutes on one GPU and 16 cores.

Exit status: 0 when every step passed; 1 at the first failed step (its output's last lines
printed); :data:`stages.device.EXIT_DEVICE` (4) with ``no usable GPU: <reason>`` when there is
no GPU that works, before any step runs: it never reports a pass without one.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from stages.device import EXIT_DEVICE, DeviceError, choose_device
from stages.metric import score
from stages.submission import classes_by_filename, read_table
from training.cli import command_parser, setup_logging

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: How far the GPU's score may lie from the CPU's on the same slides.
SCORE_TOLERANCE = 0.05
#: Lines of a failed step's output shown.
TAIL = 25


class StepError(RuntimeError):
    """A step's command failed or its result is degraded; the message says how."""


def sh(*args: str, cwd: Path = REPO) -> str:
    """Run ``python args`` in the repository; its output (stdout and stderr), or StepError with
    the last lines of it."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-TAIL:])
        raise StepError(f"`python {' '.join(args)}` exited {proc.returncode}:\n{tail}")
    return text


def grade(data: Path, out: Path, assets: Path, device: str, precision: str = "auto") -> float:
    """``main.py`` on ``data`` with ``assets`` on ``device``; its score against the labels.
    StepError unless it ran on that device and graded every slide."""
    text = sh(
        "main.py", "--data", str(data), "--out", str(out), "--assets", str(assets),
        "--device", device, "--precision", precision,
    )  # fmt: skip
    if f"device {device}" not in text:
        raise StepError(f"main.py did not run on {device}:\n{text[-2000:]}")
    if " failed 0," not in text or "FAILED" in text:
        raise StepError(f"slides failed on {device}:\n{text[-2000:]}")
    truth = classes_by_filename(read_table(data / "test_labels.csv"))
    got = classes_by_filename(read_table(out))
    return score([truth[n] for n in truth], [got[n] for n in truth])


def smoke(work: Path, device: str, assets: Path) -> list[tuple[str, Callable[[], str]]]:
    """The steps, in order: (name, a call returning its one-line result or raising)."""
    test, train = work / "test", work / "train"
    scores: dict[str, float] = {}

    def data() -> str:
        if not (test / "test_labels.csv").is_file():
            sh("-m", "training.data.synthetic", str(test), "--slides", "8", "--seed", "7",
               "--split", "test")  # fmt: skip
        return f"8 test slides in {test}"

    def run_main(name: str, on: str, precision: str = "auto") -> Callable[[], str]:
        def step() -> str:
            scores[name] = grade(test, work / f"{name}.csv", assets, on, precision)
            line = f"score {scores[name]:.4f}"
            if name != "cpu":
                gap = abs(scores[name] - scores["cpu"])
                if gap > SCORE_TOLERANCE:
                    raise StepError(f"{line}, CPU {scores['cpu']:.4f}: apart by {gap:.4f}")
                line += f" (CPU {scores['cpu']:.4f})"
            return line

        return step

    def pipeline() -> str:
        text = sh(
            "-m", "training.pipeline", str(train), str(work / "assets"), "--slides", "16",
            "--folds", "2", "--accelerator", "gpu", "--devices", "1", "--device", device,
            "--detector-epochs", "1", "--detector-samples", "512",
            "--classifier-epochs", "1", "--classifier-samples", "1024", "--workers", "4",
        )  # fmt: skip
        if "GPU available: True (cuda), used: True" not in text:
            raise StepError(f"Lightning did not train on the GPU:\n{text[-2000:]}")
        if "Using 16bit Automatic Mixed Precision" not in text:
            raise StepError(f"not in 16-bit mixed precision:\n{text[-2000:]}")
        return f"assets in {work / 'assets'}"

    def trained() -> str:
        return f"score {grade(test, work / 'trained.csv', work / 'assets', device):.4f}"

    def benchmark() -> str:
        text = sh(
            "-m", "training.bench.benchmark", str(work / "bench"), "--sets", "heldout",
            "--modes", "cascade k=32;detector only", "--device", device, "--workers", "8",
            "--assets", str(assets),
        )  # fmt: skip
        table = [line for line in text.splitlines() if line.startswith("|")]
        if not table:
            raise StepError(f"no table printed:\n{text[-2000:]}")
        return f"{len(table)} table rows; {table[-1]}"

    return [
        ("sample slides", data),
        ("main.py on the CPU", run_main("cpu", "cpu")),
        ("main.py on the GPU, float16", run_main("gpu16", device, "float16")),
        ("main.py on the GPU, float32", run_main("gpu32", device, "float32")),
        ("training.pipeline on the GPU", pipeline),
        ("main.py with the GPU-trained assets", trained),
        ("benchmark, GPU mode", benchmark),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("training.bench.gpu_smoke", __doc__)
    parser.add_argument("work", type=Path, help="folder for the slides, runs and assets")
    parser.add_argument("--device", default="cuda", help="the GPU to check (cuda, cuda:1, …)")
    parser.add_argument("--assets", type=Path, default=REPO / "assets")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        device = choose_device(args.device)
    except DeviceError as exc:
        print(f"gpu-smoke: no usable GPU: {exc}", flush=True)
        return EXIT_DEVICE
    print(f"gpu-smoke: device {device} passed the probe", flush=True)
    steps = smoke(args.work.resolve(), str(device), args.assets.resolve())
    for i, (name, step) in enumerate(steps, 1):
        start = time.monotonic()
        try:
            result = step()
        except StepError as exc:
            print(f"gpu-smoke [{i}/{len(steps)}] {name}: FAILED\n{exc}", flush=True)
            return 1
        print(
            f"gpu-smoke [{i}/{len(steps)}] {name}: ok, {result} ({time.monotonic() - start:.0f} s)",
            flush=True,
        )
    print("gpu-smoke: every step passed", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
