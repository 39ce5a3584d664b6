"""Cluster environments under the names of ``lightning.fabric.plugins.environments``.

``LightningEnvironment`` is fabric_lite's :class:`~fabric_lite.environments.LocalEnvironment` under Lightning's
name: processes on one machine (or plain processes given ``MASTER_ADDR``/``NODE_RANK``) made by the project's
own launcher.
"""

from fabric_lite.environments import (
    ClusterEnvironment,
    KubeflowEnvironment,
    LocalEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    XLAEnvironment,
)

LightningEnvironment = LocalEnvironment

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
