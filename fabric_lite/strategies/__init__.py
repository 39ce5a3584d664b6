"""Strategies: where modules live, how they are wrapped and sharded, how processes talk.

The names ``lightning.fabric.strategies`` exports (those fabric_lite has) can be imported from here, so
``from fabric_lite.strategies import DDPStrategy, FSDPStrategy`` works as it does from Lightning. Only
``Strategy`` and ``SingleDeviceStrategy`` load with the package; every other strategy loads on first
access, so that ``import fabric_lite`` never imports torch.distributed.fsdp, DeepSpeed's glue or torch_xla's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fabric_lite.strategies.base import Strategy
from fabric_lite.strategies.single_device import SingleDeviceStrategy

# name -> module that defines it; loaded on first access (PEP 562)
_LAZY = {
    "DataParallelStrategy": "fabric_lite.strategies.dp",
    "DDPStrategy": "fabric_lite.strategies.ddp",
    "DeepSpeedStrategy": "fabric_lite.strategies.deepspeed",
    "FSDPStrategy": "fabric_lite.strategies.fsdp",
    "ParallelStrategy": "fabric_lite.strategies.parallel",
    "SingleDeviceXLAStrategy": "fabric_lite.strategies.xla",
    "XLAStrategy": "fabric_lite.strategies.xla",
    "XLASPMDStrategy": "fabric_lite.strategies.xla_spmd",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from fabric_lite.strategies.ddp import DDPStrategy
    from fabric_lite.strategies.deepspeed import DeepSpeedStrategy
    from fabric_lite.strategies.dp import DataParallelStrategy
    from fabric_lite.strategies.fsdp import FSDPStrategy
    from fabric_lite.strategies.parallel import ParallelStrategy
    from fabric_lite.strategies.xla import SingleDeviceXLAStrategy, XLAStrategy
    from fabric_lite.strategies.xla_spmd import XLASPMDStrategy

__all__ = ["SingleDeviceStrategy", "Strategy", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module 'fabric_lite.strategies' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
