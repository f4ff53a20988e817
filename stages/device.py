"""Choosing the device the networks run on, and telling why a GPU cannot be used.

A GPU is used only once it has shown that it works: CUDA is available, the GPU's compute
capability is among the architectures this torch build carries kernels for, and a small
float32 and float16 computation on it agrees with the CPU (:func:`probe`). Where it fails:

- device chosen automatically (``None`` or ``"auto"``): the CPU, with the reason in the log;
- device asked for (``"cuda"``, ``"cuda:1"``): :class:`DeviceError` with the reason (the
  runtime exits with :data:`EXIT_DEVICE`).

Requirements (the pinned ``torch==2.14.1`` is a CUDA 13.0 build): an NVIDIA driver of at least
:data:`MIN_DRIVER` and a GPU of compute capability 7.5 or newer (Turing, Ampere, Ada, Hopper,
Blackwell). Older GPUs (P100, V100, K80) need another torch build; see ``docs/runtime.md``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: Exit status of the runtime when the device asked for cannot be used.
EXIT_DEVICE = 4
#: What ``--device`` says when the choice is left to :func:`choose_device`.
AUTO_DEVICE = (None, "", "auto")
#: The oldest NVIDIA driver each CUDA major version of a torch build runs on (Linux).
MIN_DRIVER = {12: "525.60", 13: "580.65"}
#: Where the NVIDIA kernel module states its version (present when a driver is loaded).
DRIVER_FILE = Path("/proc/driver/nvidia/version")


class DeviceError(RuntimeError):
    """The device asked for cannot run the networks; the message says why."""


def driver_version(path: Path = DRIVER_FILE) -> str | None:
    """The loaded NVIDIA driver's version (``"580.65.06"``), or None when there is none."""
    try:
        text = path.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return found[1] if found else "unknown"


def arch_supported(capability: tuple[int, int], archs: list[str]) -> bool:
    """Whether a GPU of compute ``capability`` (major, minor) runs a build whose kernels are
    ``archs`` (``torch.cuda.get_arch_list()``: ``sm_XY`` binaries, ``compute_XY`` PTX).

    An ``sm_XY`` binary runs on the same major version with a minor of at least Y; ``compute_XY``
    PTX is compiled at load for any capability of at least X.Y.
    """
    major, minor = capability
    for arch in archs:
        found = re.fullmatch(r"(sm|compute)_(\d+?)(\d)a?", arch)
        if not found:
            continue
        kind, a_major, a_minor = found[1], int(found[2]), int(found[3])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def why_no_cuda() -> str:
    """Why ``torch.cuda.is_available()`` is False on this machine, in words."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    driver = driver_version()
    cuda_major = int(torch.version.cuda.split(".")[0])
    need = MIN_DRIVER.get(cuda_major, "a recent")
    if driver is None:
        return "no NVIDIA driver is loaded (no GPU, or its driver is not installed)"
    try:
        torch.cuda.init()
        said = ""
    except Exception as exc:
        said = f": {str(exc).strip()}"
    return (
        f"NVIDIA driver {driver} found, but torch {torch.__version__} (CUDA {torch.version.cuda}) "
        f"cannot use it; it needs driver >= {need}{said}"
    )


def probe(device: torch.device) -> None:
    """Raise :class:`DeviceError` unless the CUDA ``device`` can run this build's kernels: it
    exists, its compute capability is among the build's architectures, and a 64 × 64 matrix
    product in float32 and float16 on it matches the CPU's."""
    if not torch.cuda.is_available():
        raise DeviceError(f"{device} asked for, but CUDA is not available: {why_no_cuda()}")
    index = device.index or 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"{device} asked for, but this machine shows {count} GPU(s)")
    name = torch.cuda.get_device_name(index)
    capability = torch.cuda.get_device_capability(index)
    archs = torch.cuda.get_arch_list()
    if not arch_supported(capability, archs):
        raise DeviceError(
            f"{device} is a {name} of compute capability {capability[0]}.{capability[1]}, which "
            f"torch {torch.__version__} (CUDA {torch.version.cuda}, kernels for "
            f"{' '.join(archs)}) cannot run; install a torch build for it (docs/runtime.md)"
        )
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(64, 64, generator=generator)
    expected = a @ a
    try:
        for dtype, tolerance in ((torch.float32, 1e-3), (torch.float16, 5e-2)):
            on_gpu = a.to(device, dtype)
            got = (on_gpu @ on_gpu).float().cpu()
            if not torch.allclose(got, expected, rtol=tolerance, atol=tolerance):
                raise DeviceError(
                    f"{device} ({name}) computes a wrong {dtype} matrix product "
                    f"(largest error {(got - expected).abs().max().item():.3g})"
                )
        torch.cuda.synchronize(device)
    except DeviceError:
        raise
    except Exception as exc:
        raise DeviceError(
            f"a test kernel failed on {device} ({name}): {type(exc).__name__}: {exc}"
        ) from exc
    log.info(
        "%s: %s, compute capability %d.%d, %.1f GB, driver %s, torch %s (CUDA %s)",
        device,
        name,
        *capability,
        torch.cuda.get_device_properties(index).total_memory / 1e9,
        driver_version(),
        torch.__version__,
        torch.version.cuda,
    )


def choose_device(requested: str | None = None) -> torch.device:
    """The device the networks run on.

    ``requested``: ``None`` or ``"auto"`` — the first GPU when :func:`probe` passes on it, else
    the CPU, the reason logged (a warning when a GPU is present but unusable); ``"cpu"``;
    ``"cuda"`` / ``"cuda:N"`` — that GPU, or :class:`DeviceError` saying why it cannot be used.
    """
    if requested in AUTO_DEVICE:
        if not torch.cuda.is_available():
            reason = why_no_cuda()
            if driver_version() is None:
                log.info("device: cpu (%s)", reason)
            else:
                log.warning("device: cpu, the GPU cannot be used: %s", reason)
            return torch.device("cpu")
        try:
            probe(torch.device("cuda", 0))
        except DeviceError as exc:
            log.warning("device: cpu, the GPU cannot be used: %s", exc)
            return torch.device("cpu")
        return torch.device("cuda", 0)
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise DeviceError(f"not a device: {requested!r} ({exc})") from exc
    if device.type == "cuda":
        probe(device)
    elif device.type != "cpu":
        raise DeviceError(f"{requested!r}: only cpu and cuda devices are supported")
    return device


def is_device_fault(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the GPU itself (a CUDA, cuDNN or cuBLAS error, out of GPU
    memory) rather than from a slide: after one, the GPU is probed again before the next slide."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, getattr(torch, "AcceleratorError", ())):
        return True
    return isinstance(exc, RuntimeError) and bool(
        re.search(r"\bCUDA\b|cuDNN|CUBLAS|cuBLAS|NCCL|device-side assert", str(exc))
    )
