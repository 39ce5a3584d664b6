"""Accelerators (cpu, cuda, mps, xla): is one present, how many devices, which device for a local rank.

Detection never initialises a device runtime it does not need: XLA is found with ``find_spec``
and imported only when used; MPS is asked through ``torch.backends.mps``. On this project's
CPU machines only ``cpu`` is present; ``cuda`` is proven on a lent GPU; ``mps`` needs Apple
silicon and ``xla`` a torch_xla install (see README, "Accelerators").
"""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from fabric_lite.errors import FabricEnvironmentError, missing_package
from fabric_lite.registry import ACCELERATORS  # names this module's classes as strings: no import back


class Accelerator(ABC):
    """One kind of hardware. Subclasses answer availability questions and map indices to devices."""

    name: str = ""

    @staticmethod
    @abstractmethod
    def is_available() -> bool:
        """Whether this kind of hardware can be used in this process."""

    @staticmethod
    @abstractmethod
    def device_count() -> int:
        """How many devices of this kind this process can see."""

    def get_device(self, index: int) -> torch.device:
        """The ``torch.device`` for device ``index`` of this kind."""
        return torch.device(self.name, index)

    def setup_device(self, device: torch.device) -> None:
        """Make ``device`` the current one (no-op where there is no notion of a current device)."""

    def teardown(self) -> None:
        """Release what ``setup_device`` took."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CPUAccelerator(Accelerator):
    """The CPU. ``devices`` counts processes, not cores."""

    name = "cpu"

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        # A CPU "device" is a process slot; there is no hard upper bound, the plan checks only > 0.
        return 1

    def get_device(self, index: int) -> torch.device:
        return torch.device("cpu")


class CUDAAccelerator(Accelerator):
    """NVIDIA (or ROCm) GPUs through torch.cuda."""

    name = "cuda"

    @staticmethod
    def is_available() -> bool:
        return torch.cuda.is_available()

    @staticmethod
    def device_count() -> int:
        return torch.cuda.device_count()

    def setup_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDAAccelerator cannot set up device {device}: it is not a CUDA device.")
        torch.cuda.set_device(device)

    def teardown(self) -> None:
        torch.cuda.empty_cache()


class MPSAccelerator(Accelerator):
    """Apple silicon GPUs through torch.backends.mps (one device)."""

    name = "mps"

    @staticmethod
    def is_available() -> bool:
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())

    @staticmethod
    def device_count() -> int:
        return 1 if MPSAccelerator.is_available() else 0

    def get_device(self, index: int) -> torch.device:
        return torch.device("mps", 0)


class XLAAccelerator(Accelerator):
    """TPUs and other XLA devices through torch_xla (imported only when a device is used).

    Counting devices must not start the XLA runtime: ``torch_xla.launch`` refuses to run once the
    parent process has touched a device. So the count is read from what selects the devices:
    ``PJRT_DEVICE=CPU`` with ``CPU_NUM_DEVICES`` (default 1), ``PJRT_DEVICE=CUDA`` with
    ``GPU_NUM_DEVICES``, a TPU from its PCI entries; without ``PJRT_DEVICE`` only a TPU counts, so an
    installed torch_xla does not make ``accelerator="auto"`` pick XLA on a CPU machine.
    """

    name = "xla"

    @staticmethod
    def is_available() -> bool:
        try:
            return XLAAccelerator.device_count() > 0
        except (ValueError, OSError):  # a malformed count variable, unreadable PCI entries
            return False

    @staticmethod
    def is_installed() -> bool:
        return importlib.util.find_spec("torch_xla") is not None

    @staticmethod
    def device_count() -> int:
        if not XLAAccelerator.is_installed():
            return 0
        kind = os.environ.get("PJRT_DEVICE", "").split("_")[0].upper()
        if kind == "CPU":
            return int(os.environ.get("CPU_NUM_DEVICES", "1"))
        if kind in ("CUDA", "GPU"):
            return int(os.environ.get("GPU_NUM_DEVICES", torch.cuda.device_count()))
        if kind in ("", "TPU") and _google_pci_devices():
            from torch_xla._internal import tpu

            return int(tpu.num_available_devices())
        # Another PJRT plugin (NEURON, ...): it names one device per process unless it says otherwise.
        return 1 if kind else 0

    def get_device(self, index: int) -> torch.device:
        # A plain torch.device: asking torch_xla here would start the runtime before launch.
        return torch.device("xla", index)

    @staticmethod
    def unavailable_error(asked: str) -> Exception:
        """Why ``asked`` (e.g. ``"Fabric(accelerator='xla')"``) cannot run here, with the fix."""
        if not XLAAccelerator.is_installed():
            return missing_package(
                "torch_xla", "xla", f"{asked} (XLA devices: TPU, or the CPU through PJRT_DEVICE=CPU)",
                hint="torch_xla 2.9 needs torch 2.9 exactly: scripts/test-xla.sh builds such a venv next to the "
                "project's and runs the XLA tests there",
            )
        return FabricEnvironmentError(
            f"{asked} cannot run here: torch_xla is installed but no XLA device is selected "
            f"(PJRT_DEVICE={os.environ.get('PJRT_DEVICE', '<unset>')!s}, no TPU found). "
            f"Fix: PJRT_DEVICE=CPU (CPU_NUM_DEVICES=N for N devices) or PJRT_DEVICE=TPU on a TPU host."
        )


def _google_pci_devices() -> bool:
    """Whether a PCI device of Google (vendor 0x1ae0, the TPU chips) is present; reads /sys only."""
    try:
        return any(
            Path(entry, "vendor").read_text().strip() == "0x1ae0" for entry in Path("/sys/bus/pci/devices").iterdir()
        )
    except OSError:
        return False


# The order in which accelerator="auto" tries them (ARCHITECTURE.md, "Where each decision is made").
AUTO_ORDER = ("xla", "cuda", "mps", "cpu")
# The strategies that run on XLA devices (registered in registry.py), and the only ones XLA devices run.
XLA_STRATEGIES = ("single_xla", "xla", "xla_spmd", "xla_fsdp")


def probe_available() -> dict[str, int]:
    """Device counts for every accelerator present in this process (absent ones are left out).

    The classes come from the one accelerator table, ``registry.ACCELERATORS``.
    """
    found: dict[str, int] = {}
    for name in AUTO_ORDER:
        cls = ACCELERATORS.get(name, asked=f"accelerator={name!r}").load()
        if name == "cpu" or cls.is_available():
            found[name] = cls.device_count()
    return found

