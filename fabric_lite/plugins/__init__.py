"""Lightning-style plugin names (``lightning.fabric.plugins``) re-exported for an import swap.

Everything is importable from here directly (``from fabric_lite.plugins import SLURMEnvironment, MixedPrecision``)
and from Lightning's sub-paths: ``fabric_lite.plugins.environments`` and ``fabric_lite.plugins.precision``.
``FSDPPrecision`` loads on first use, so that importing this package never imports torch.distributed.fsdp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric_lite.plugins import environments, precision
from fabric_lite.plugins.environments import (
    ClusterEnvironment,
    KubeflowEnvironment,
    LightningEnvironment,
    LocalEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    XLAEnvironment,
)
from fabric_lite.plugins.precision import (
    DeepSpeedPrecision,
    DoublePrecision,
    HalfPrecision,
    MixedPrecision,
    Precision,
    TruePrecision,
    XLAPrecision,
)
from fabric_lite.utilities.preemption import Preemption

if TYPE_CHECKING:
    from fabric_lite.precision.fsdp import FSDPPrecision

__all__ = [
    "ClusterEnvironment",
    "DeepSpeedPrecision",
    "DoublePrecision",
    "FSDPPrecision",
    "HalfPrecision",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LightningEnvironment",
    "LocalEnvironment",
    "MPIEnvironment",
    "MixedPrecision",
    "Precision",
    "Preemption",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "TruePrecision",
    "XLAEnvironment",
    "XLAPrecision",
]


def __getattr__(name: str) -> Any:
    if name == "FSDPPrecision":
        value = precision.FSDPPrecision  # imports torch.distributed.fsdp
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fabric_lite.plugins' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"FSDPPrecision"})
