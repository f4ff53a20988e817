"""The device: a GPU used only once it works, the reason said when it cannot be, and no row lost
to a GPU fault at load, at warm-up or during the run. All on the CPU: CUDA is simulated by
patching torch.cuda's queries; its kernels then fail as a GPU that cannot run them would."""

from __future__ import annotations

import logging
import types
from pathlib import Path

import pytest
import torch
from helpers import tissue, write_format, write_tiff

from stages import cascade as cascade_module
from stages import device as device_module
from stages import runtime
from stages.config import load_config
from stages.decision import decide_slide
from stages.device import (
    EXIT_DEVICE,
    DeviceError,
    arch_supported,
    choose_device,
    driver_version,
    probe,
)
from stages.result import SlideResult
from stages.submission import classes_by_filename, read_table
from training.bench import gpu_smoke

#: torch 2.14.1's CUDA 13.0 build.
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.mark.parametrize(
    ("capability", "archs", "supported"),
    [
        ((7, 5), CU130, True),  # T4
        ((8, 9), CU130, True),  # L4: the sm_86 binary runs on 8.9
        ((9, 0), CU130, True),  # H100
        ((12, 1), CU130, True),
        ((6, 0), CU130, False),  # P100
        ((7, 0), CU130, False),  # V100
        ((3, 7), CU130, False),  # K80
        ((7, 0), ["sm_80", "compute_70"], True),  # PTX compiled at load
        ((6, 1), ["compute_70"], False),
        ((9, 0), ["sm_90a"], True),
    ],
)
def test_arch_supported(capability: tuple[int, int], archs: list[str], supported: bool) -> None:
    assert arch_supported(capability, archs) is supported


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023\n",
            "535.104.05",
        ),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n",
            "580.65.06",
        ),
        ("something else\n", "unknown"),
    ],
)
def test_driver_version(tmp_path: Path, text: str, version: str) -> None:
    path = tmp_path / "version"
    path.write_text(text)
    assert driver_version(path) == version
    assert driver_version(tmp_path / "absent") is None


def simulate_gpu(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], name: str = "Simulated GPU"
) -> None:
    """torch.cuda says one GPU of ``capability`` is there; its kernels fail (none is)."""
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cuda, "get_device_name", lambda index=0: name)
    monkeypatch.setattr(cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(cuda, "get_arch_list", lambda: CU130)


def test_no_gpu_runs_on_the_cpu_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with caplog.at_level(logging.INFO, "stages.device"):
        assert choose_device("auto") == torch.device("cpu")
        assert choose_device(None) == torch.device("cpu")
    assert "device: cpu (" in caplog.text
    with pytest.raises(DeviceError, match="cuda asked for, but CUDA is not available: "):
        choose_device("cuda")


def test_an_invisible_gpu_is_named_with_its_driver(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A driver older than the build needs: torch sees no CUDA, the log says so as a warning."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(device_module, "driver_version", lambda path=None: "470.82.01")
    with caplog.at_level(logging.INFO, "stages.device"):
        assert choose_device("auto") == torch.device("cpu")
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING).getMessage()
    assert "the GPU cannot be used: NVIDIA driver 470.82.01 found" in warning
    assert "it needs driver >= 580.65" in warning


def test_a_gpu_the_build_has_no_kernels_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    simulate_gpu(monkeypatch, (6, 0), "Tesla P100-PCIE-16GB")
    with pytest.raises(DeviceError, match=r"a Tesla P100-PCIE-16GB of compute capability 6\.0"):
        choose_device("cuda")
    with caplog.at_level(logging.WARNING, "stages.device"):
        assert choose_device("auto") == torch.device("cpu")
    assert "compute capability 6.0" in caplog.text and "docs/runtime.md" in caplog.text


def test_a_gpu_whose_test_kernel_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Capability supported, but a kernel cannot run (here: there is no GPU behind it)."""
    simulate_gpu(monkeypatch, (8, 0))
    with pytest.raises(DeviceError, match=r"a test kernel failed on cuda:0 \(Simulated GPU\)"):
        probe(torch.device("cuda", 0))
    assert choose_device("auto") == torch.device("cpu")


def test_a_gpu_index_the_machine_does_not_have(monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_gpu(monkeypatch, (8, 0))
    with pytest.raises(DeviceError, match="cuda:3 asked for, but this machine shows 1 GPU"):
        choose_device("cuda:3")
    with pytest.raises(DeviceError, match="only cpu and cuda"):
        choose_device("mps")


def test_is_device_fault() -> None:
    fault = device_module.is_device_fault
    assert fault(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert fault(RuntimeError("CUDA error: no kernel image is available for execution"))
    assert fault(RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"))
    assert not fault(RuntimeError("slide.tif: not a readable TIFF"))
    assert not fault(ValueError("CUDA"))


# -- the runtime on a GPU that fails ----------------------------------------------------------


def data_with_slides(root: Path, names: list[str]) -> Path:
    """A ``data/`` folder with small all-tissue slides ``names`` and their format."""
    data = root / "data"
    write_format(data, names)
    stain = tissue(0, (900, 1200), whole=True)
    for name in names:
        write_tiff(data / name, stain)
    return data


#: The slides of the runs on a GPU that fails at load.
NAMES = ["a.tif", "b.tif"]


def run_on_a_gpu_failing_at_load(
    tmp_path: Path, assets: Path, monkeypatch: pytest.MonkeyPatch, device: str
) -> tuple[int, Path]:
    """``runtime.run`` on :data:`NAMES` with ``--device device``, where a GPU passes the probe,
    then runs out of memory while the assets move onto it; the exit status and the submission."""
    data = data_with_slides(tmp_path, NAMES)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime, "probe", lambda device: None)
    monkeypatch.setattr(device_module, "probe", lambda device: None)
    load = runtime.load_assets

    def load_assets(assets, device, *args, **kwargs):
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return load(assets, device, *args, **kwargs)

    monkeypatch.setattr(runtime, "load_assets", load_assets)
    out = tmp_path / "submission.csv"
    code = runtime.run(data, out, assets, time_limit_s=600, device=device, prefetch=False)
    return code, out


@pytest.mark.slow
def test_a_gpu_out_of_memory_at_load_falls_back_to_the_cpu(
    tmp_path: Path, assets: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        code, out = run_on_a_gpu_failing_at_load(tmp_path, assets, monkeypatch, "auto")
    assert code == 0, caplog.text
    assert "the GPU failed loading or warming up the networks (OutOfMemoryError" in caplog.text
    assert "device cpu" in caplog.text
    for name in NAMES:  # graded on the CPU, not the fallback's row
        assert f"] {name}: class " in caplog.text
    assert set(classes_by_filename(read_table(out))) == set(NAMES)


@pytest.mark.slow
def test_a_gpu_asked_for_that_fails_at_load_exits_with_every_row_written(
    tmp_path: Path, assets: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        code, out = run_on_a_gpu_failing_at_load(tmp_path, assets, monkeypatch, "cuda")
    assert code == EXIT_DEVICE
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cuda failed loading or warming up the networks" in errors[0]
    assert "out of memory" in errors[0] and "--device cpu" in errors[0]
    prior = decide_slide([], [], load_config(assets).decision).cls
    assert classes_by_filename(read_table(out)) == dict.fromkeys(NAMES, prior)
    assert "] a.tif" not in caplog.text  # no slide was graded


@pytest.mark.slow
def test_networks_that_fail_at_warm_up_stop_the_run(
    tmp_path: Path, assets: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Networks that cannot run a blank batch cannot grade a slide: an error, not a run that
    gives every slide the prior's class (the detector's inputs fail as on a GPU without kernels
    for its architecture)."""
    data = data_with_slides(tmp_path, ["a.tif"])

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(cascade_module, "to_input", broken)
    out = tmp_path / "submission.csv"
    with caplog.at_level(logging.INFO):
        code = runtime.run(data, out, assets, time_limit_s=600, device="cpu", prefetch=False)
    assert code == 3
    assert "the networks fail on a blank batch on the cpu: RuntimeError: CUDA error" in caplog.text
    assert not out.exists()


class FaultingCascade:
    """Stands in for :class:`stages.cascade.Cascade`: it claims a GPU, on which the first slide
    fails with a CUDA error; after :meth:`use` (the CPU's networks) every slide is graded 3."""

    def __init__(self, loaded: object) -> None:
        self.assets = types.SimpleNamespace(device=torch.device("cuda", 0))
        self.patch_batch = 4
        self.graded: list[tuple[str, str]] = []

    def use(self, assets: object) -> None:
        self.assets = assets

    def warm_up(self) -> float:
        return 0.0

    def grade_slide(self, path, mpp, budget, costs, prepared=None) -> SlideResult:
        where = self.assets.device.type
        self.graded.append((path.name, where))
        if where == "cuda":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return SlideResult(path.name, 3, (0.0, 0.0, 0.0, 1.0), "patches")


@pytest.mark.slow
def test_a_gpu_that_breaks_during_the_run_hands_the_slides_to_the_cpu(
    tmp_path: Path, assets: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    names = ["a.tif", "b.tif", "c.tif"]
    data = tmp_path / "data"
    write_format(data, names)
    made: list[FaultingCascade] = []
    monkeypatch.setattr(
        runtime, "Cascade", lambda loaded: made.append(FaultingCascade(loaded)) or made[-1]
    )

    def broken_gpu(device: torch.device) -> None:
        raise DeviceError("a test kernel failed on cuda:0 (Simulated GPU): illegal memory access")

    monkeypatch.setattr(runtime, "probe", broken_gpu)
    out = tmp_path / "submission.csv"
    with caplog.at_level(logging.INFO):
        code = runtime.run(data, out, assets, time_limit_s=600, device="cpu", prefetch=False)
    assert code == 0
    (cascade,) = made
    assert cascade.graded == [
        ("a.tif", "cuda"),
        ("a.tif", "cpu"),
        ("b.tif", "cpu"),
        ("c.tif", "cpu"),
    ]
    assert classes_by_filename(read_table(out)) == dict.fromkeys(names, 3)
    assert "the GPU stopped working (a test kernel failed" in caplog.text


def test_gpu_smoke_without_a_gpu_says_so_and_does_not_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert gpu_smoke.main([str(tmp_path / "smoke")]) == EXIT_DEVICE
    printed = capsys.readouterr().out
    assert printed.startswith("gpu-smoke: no usable GPU: cuda asked for, but CUDA is not available")
    assert "passed" not in printed and not (tmp_path / "smoke").exists()  # no step ran
