"""Cluster environments under the names of ``lightning.fabric.plugins.environments``.

``LightningEnvironment`` is fabric_lite's :class:`~fabric_lite.environments.LocalEnvironment` under Lightning's
name: processes on one machine (or plain processes given ``MASTER_ADDR``/``NODE_RANK``) made by the project's
own launcher. Kubeflow, MPI and LSF load on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fabric_lite.environments import (
    ClusterEnvironment,
    LocalEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    XLAEnvironment,
)

LightningEnvironment = LocalEnvironment

_LAZY = {
    "KubeflowEnvironment": "fabric_lite.environments.kubeflow",
    "LSFEnvironment": "fabric_lite.environments.lsf",
    "MPIEnvironment": "fabric_lite.environments.mpi",
}

if TYPE_CHECKING:
    from fabric_lite.environments.kubeflow import KubeflowEnvironment
    from fabric_lite.environments.lsf import LSFEnvironment
    from fabric_lite.environments.mpi import MPIEnvironment

__all__ = [
    "ClusterEnvironment",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LightningEnvironment",
    "LocalEnvironment",
    "MPIEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "XLAEnvironment",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    except ModuleNotFoundError as error:
        if error.name != _LAZY[name]:
            raise  # a package that module needs is missing: its own message says which
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} ({error.name} is not in this build)") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
