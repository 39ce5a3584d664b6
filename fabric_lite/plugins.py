"""Lightning-style plugin names (``lightning.fabric.plugins``) re-exported for an import swap.

The strategy-family precisions (FSDP, DeepSpeed, XLA) load on first use, so that importing this module
never imports torch.distributed.fsdp.
"""

from typing import Any

from fabric_lite.environments import ClusterEnvironment, LocalEnvironment, TorchElasticEnvironment
from fabric_lite.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision, TruePrecision
from fabric_lite.utilities.preemption import Preemption

_LAZY = {
    "DeepSpeedPrecision": "fabric_lite.precision.deepspeed",
    "FSDPPrecision": "fabric_lite.precision.fsdp",
    "XLAPrecision": "fabric_lite.precision.xla",
}

__all__ = [
    "ClusterEnvironment",
    "DeepSpeedPrecision",
    "DoublePrecision",
    "FSDPPrecision",
    "HalfPrecision",
    "LocalEnvironment",
    "MixedPrecision",
    "Precision",
    "Preemption",
    "TorchElasticEnvironment",
    "TruePrecision",
    "XLAPrecision",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fabric_lite.plugins' has no attribute {name!r}")
