"""Torch plumbing shared by the detector and the classifier: device, input tensors, weight files.

Weights are safetensors files in ``assets/``; models are always built with
``encoder_weights=None`` and filled from those files, never downloaded.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

#: ImageNet statistics, the usual input normalisation of smp/timm encoders.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_normalisation(mean: tuple[float, ...], std: tuple[float, ...], where: str) -> None:
    """ValueError naming ``where`` unless ``mean`` / ``std`` are 3 finite numbers, std > 0
    (the per-channel input normalisation of RGB in [0, 1], saved with a stage's weights)."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{where}.mean and .std need 3 values each, got {mean}, {std}")
    if not all(math.isfinite(v) for v in (*mean, *std)) or min(std) <= 0:
        raise ValueError(f"{where}.mean must be finite and .std positive, got {mean}, {std}")


class AssetsError(RuntimeError):
    """The assets (config or weights) are missing, malformed or do not match each other."""


#: ``--precision`` choices: ``auto`` is float16 on a GPU, bfloat16 on a CPU that computes it
#: natively (AVX512-BF16 or AMX), float32 elsewhere.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU flags (``/proc/cpuinfo``, or the text given) include native bfloat16."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {
        flag
        for line in cpuinfo.splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[-1].split()
    }
    return any(flag in flags for flag in _BF16_FLAGS)


def pick_precision(
    device: torch.device, requested: str = "auto", cpu_bf16: bool | None = None
) -> torch.dtype | None:
    """The autocast dtype of the networks' inference on ``device``; None for float32.

    ``requested`` is one of :data:`PRECISIONS`; ``cpu_bf16`` overrides :func:`cpu_has_bf16`.
    """
    if requested not in PRECISIONS:
        raise AssetsError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "auto":
        if device.type == "cuda":
            return torch.float16
        native = cpu_has_bf16() if cpu_bf16 is None else cpu_bf16
        return torch.bfloat16 if device.type == "cpu" and native else None
    return _DTYPES.get(requested)


@contextmanager
def inference(device: torch.device, autocast: torch.dtype | None) -> Iterator[None]:
    """``torch.inference_mode``, with autocast to ``autocast`` on ``device`` when it is set."""
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None),
    ):
        yield


def to_input(
    batch: np.ndarray,
    device: torch.device,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 RGB → normalised ``(N, 3, H, W)`` float32 tensor on ``device``
    (:func:`normalise`)."""
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8, got {batch.shape} {batch.dtype}")
    return normalise(torch.from_numpy(np.ascontiguousarray(batch)).to(device), mean, std)


def normalise(
    batch: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 tensor → ``(N, 3, H, W)`` float32 ``(x / 255 - mean) / std`` on its
    device, channels-last in memory (the networks' layout, :func:`stages.config.load_assets`),
    computed as ``(x - 255 mean) / (255 std)`` in place."""
    planes = batch.permute(0, 3, 1, 2).float()  # a channels-last float copy
    shift = torch.tensor(mean, device=planes.device).view(1, 3, 1, 1) * 255.0
    scale = torch.tensor(std, device=planes.device).view(1, 3, 1, 1) * 255.0
    return planes.sub_(shift).div_(scale)


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 tensor → ``(N, 3, H, W)`` float32 in [0, 1], on its device."""
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def standardise(
    tensor: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """``(N, 3, H, W)`` float32 RGB in [0, 1] → ``(tensor - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, device=tensor.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=tensor.device).view(1, 3, 1, 1)
    return (tensor - mean_t).div_(std_t)


def padded_forward(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int
) -> torch.Tensor:
    """``fn`` on ``(N, …)`` ``x`` in chunks of exactly ``batch`` items, the last one padded with
    zeros (the padding's outputs dropped), so that a network only ever runs on one batch shape;
    ``batch`` 0: ``fn(x)`` as it is. On a CPU a new batch shape sets the kernels up again, or,
    for a :class:`Frozen` graph, profiles and optimises it again: tens of ms, more than a small
    batch costs."""
    if batch <= 0:
        return fn(x)
    outputs = []
    for chunk in x.split(batch):
        n = len(chunk)
        if n < batch:
            pad = chunk.new_zeros((batch - n, *chunk.shape[1:]))
            chunk = torch.cat([chunk, pad]).contiguous(memory_format=torch.channels_last)
        outputs.append(fn(chunk)[:n])
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


class Frozen(torch.nn.Module):
    """A network traced by TorchScript for one input shape ``(batch, 3, size, size)`` and frozen,
    in ``dtype``: its BatchNorms folded into the convolutions, its weights cast once (autocast
    casts them at every call) and no Python between its layers. Calls take ``(N, 3, size,
    size)`` tensors of any float dtype, run in batches of ``batch`` (:func:`padded_forward`);
    outputs are float32."""

    def __init__(self, graph: torch.jit.ScriptModule, batch: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.graph, self.batch, self.dtype = graph, batch, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_forward(self.graph, x.to(self.dtype), self.batch).float()


def freeze(model: torch.nn.Module, batch: int, size: int, dtype: torch.dtype) -> Frozen:
    """``model`` (eval mode, on the CPU) as a :class:`Frozen` network for ``(batch, 3, size,
    size)`` channels-last inputs in ``dtype``, run twice on a blank batch (TorchScript's
    profiling runs) so that the first real call is already optimised. The model given is left
    as it was."""
    example = torch.zeros((batch, 3, size, size), dtype=dtype)
    example = example.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), warnings.catch_warnings():
        # shape-dependent branches are fixed at the traced shape: the only one it runs on
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # TorchScript is deprecated upstream for torch.compile, which needs a C++ compiler at run
        # time: a runtime submission cannot count on one (torch is pinned, so this keeps working)
        warnings.simplefilter("ignore", FutureWarning)
        graph = torch.jit.freeze(torch.jit.trace(copy.deepcopy(model).to(dtype).eval(), example))
        for _ in range(2):
            graph(example)
    return Frozen(graph, batch, dtype)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write ``model``'s state dict as safetensors (contiguous CPU tensors)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def load_weights(model: torch.nn.Module, path: Path, assign: bool = False) -> torch.nn.Module:
    """Fill ``model`` from a safetensors file (``assign``: take its tensors as the parameters,
    for a model built on the meta device); :class:`AssetsError` naming the file on mismatch."""
    if not path.is_file():
        raise AssetsError(f"weight file missing: {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a bad file
        raise AssetsError(f"weight file unreadable: {path}: {exc}") from exc
    return fill(model, state, f"weight file {path}", "the model in the config", assign)


def fill(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    target: str,
    assign: bool = False,
) -> torch.nn.Module:
    """``model.load_state_dict(state, strict=True, assign=assign)``; :class:`AssetsError`
    naming ``source``, ``target`` and the missing, unexpected and misshapen keys when they do
    not match."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise AssetsError(
            f"{source} does not match {target}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(wrong)} with another shape (e.g. {wrong[:3]})"
        )
    model.load_state_dict(state, strict=True, assign=assign)
    return model
