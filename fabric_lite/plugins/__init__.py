"""Lightning-style plugin names (``lightning.fabric.plugins``) re-exported for an import swap.

Everything is importable from here directly (``from fabric_lite.plugins import SLURMEnvironment, MixedPrecision``)
and from Lightning's sub-paths: ``fabric_lite.plugins.environments`` and ``fabric_lite.plugins.precision``.
``FSDPPrecision`` and the Kubeflow, MPI and LSF environments load on first use, so that importing this package
never imports torch.distributed.fsdp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric_lite.plugins import environments, precision
from fabric_lite.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    LocalEnvironment,
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

_LAZY = {
    "FSDPPrecision": precision,
    "KubeflowEnvironment": environments,
    "LSFEnvironment": environments,
    "MPIEnvironment": environments,
}

if TYPE_CHECKING:
    from fabric_lite.environments.kubeflow import KubeflowEnvironment
    from fabric_lite.environments.lsf import LSFEnvironment
    from fabric_lite.environments.mpi import MPIEnvironment
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
    if name in _LAZY:
        value = getattr(_LAZY[name], name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fabric_lite.plugins' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
