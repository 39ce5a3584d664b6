"""Cluster environments: read-only views of who made this process and what its ranks are."""

from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.environments.kubeflow import KubeflowEnvironment
from fabric_lite.environments.local import LocalEnvironment
from fabric_lite.environments.lsf import LSFEnvironment
from fabric_lite.environments.mpi import MPIEnvironment
from fabric_lite.environments.slurm import SLURMEnvironment
from fabric_lite.environments.torchelastic import TorchElasticEnvironment
from fabric_lite.environments.xla import XLAEnvironment

__all__ = [
    "ClusterEnvironment",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LocalEnvironment",
    "MPIEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "XLAEnvironment",
]
