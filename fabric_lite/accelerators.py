"""Accelerators (cpu, cuda, mps, xla): is one present, how many devices, which device for a local rank.

Detection never initialises a device runtime it does not need: XLA is found with ``find_spec``
and imported only when used; MPS is asked through ``torch.backends.mps``. On this project's
CPU machines only ``cpu`` is present; ``cuda`` is proven on a lent GPU; ``mps`` needs Apple
silicon and ``xla`` a torch_xla install (see README, "Accelerators").
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import Any

import torch


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
    """TPUs and other XLA devices through torch_xla (imported only when a device is asked for)."""

    name = "xla"

    @staticmethod
    def is_available() -> bool:
        if importlib.util.find_spec("torch_xla") is None:
            return False
        try:
            return XLAAccelerator.device_count() > 0
        except Exception:  # torch_xla present but no PJRT device configured
            return False

    @staticmethod
    def device_count() -> int:
        if importlib.util.find_spec("torch_xla") is None:
            return 0
        import torch_xla.runtime as xr

        return int(xr.addressable_runtime_device_count())

    def get_device(self, index: int) -> torch.device:
        import torch_xla.core.xla_model as xm

        return xm.xla_device()


ACCELERATORS: dict[str, type[Accelerator]] = {
    "cpu": CPUAccelerator,
    "cuda": CUDAAccelerator,
    "mps": MPSAccelerator,
    "xla": XLAAccelerator,
}

# The order in which accelerator="auto" tries them (DESIGN.md, "How choices are made").
AUTO_ORDER = ("xla", "cuda", "mps", "cpu")


def probe_available() -> dict[str, int]:
    """Device counts for every accelerator present in this process (absent ones are left out)."""
    found: dict[str, int] = {}
    for name in AUTO_ORDER:
        cls = ACCELERATORS[name]
        if name == "cpu" or cls.is_available():
            found[name] = cls.device_count()
    return found


def accelerator_for(obj: Any) -> Accelerator:
    """An accelerator instance for a name or an instance."""
    if isinstance(obj, Accelerator):
        return obj
    return ACCELERATORS[obj]()
