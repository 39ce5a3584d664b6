"""The Kubeflow environment: one process per pod, started by Kubeflow's ``PyTorchJob`` operator.

The operator starts the container's command once in every pod (Master and Worker replicas) and sets
``MASTER_ADDR``/``MASTER_PORT`` (the master pod's service), ``WORLD_SIZE`` (the number of pods) and ``RANK``
(this pod's index). Kubernetes itself sets ``KUBERNETES_PORT`` in every pod. A pod is a node of one process:
global rank and node rank are ``RANK``, the local rank is 0.

Processes that carry ``LOCAL_RANK`` or ``GROUP_RANK`` were started by torchrun (the operator's elastic mode and
``nprocPerNode`` run torchrun in the pod): the torchelastic environment reads those.

Several processes per pod need a launcher inside the pod: ``torchrun --nnodes=$WORLD_SIZE --node-rank=$RANK
--nproc-per-node=N --master-addr=$MASTER_ADDR --master-port=$MASTER_PORT train.py`` (or ``fabric-run`` with
the same numbers); ``Fabric(devices=N)`` with N > 1 under the plain operator is refused with that fix.
"""

from __future__ import annotations

from collections.abc import Mapping

from fabric_lite.environments._variables import check_below, read_int
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.errors import FabricEnvironmentError

_REQUIRED = ("KUBERNETES_PORT", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
# Set by torchrun (and by fabric_lite's own launchers): then the processes are torchelastic's or local.
_NOT_OURS = ("LOCAL_RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID")
_FIX = ("Fix: let the PyTorchJob operator set RANK and WORLD_SIZE (do not set them in the pod spec), or run "
        "torchrun in the pod, which sets LOCAL_RANK and is then read as the torchelastic environment.")


class KubeflowEnvironment(ClusterEnvironment):
    """Ranks of a PyTorchJob pod: ``RANK`` of ``WORLD_SIZE`` pods, one process each.

    ``num_processes``/``num_nodes`` are ``Fabric(devices, num_nodes)``; they must be 1 and ``WORLD_SIZE``.

    Example:
        >>> pod = {"KUBERNETES_PORT": "tcp://10.96.0.1:443", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456",
        ...        "WORLD_SIZE": "3", "RANK": "2"}
        >>> KubeflowEnvironment.detect(pod)
        True
        >>> env = KubeflowEnvironment(pod, num_nodes=3)
        >>> env.world_size(), env.global_rank(), env.local_rank(), env.node_rank(), env.main_address, env.main_port
        (3, 2, 0, 2, 'job-master-0', 23456)
    """

    name = "kubeflow"

    def __init__(self, env: Mapping[str, str] | None = None, *, num_processes: int = 1, num_nodes: int | None = None) -> None:
        super().__init__(env)
        self.num_processes = num_processes
        #: None: take the pods the operator started (a plugin made by hand); else checked against WORLD_SIZE.
        self.num_nodes = num_nodes

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return all(key in env for key in _REQUIRED) and not any(key in env for key in _NOT_OURS)

    @staticmethod
    def describe(env: Mapping[str, str]) -> str:
        return (f"a PyTorchJob pod (KUBERNETES_PORT, RANK={env.get('RANK')} of WORLD_SIZE={env.get('WORLD_SIZE')} "
                f"pods, no LOCAL_RANK): one process per pod")

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return self.env["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        return read_int(self.env, "MASTER_PORT", lowest=1, environment=self.name, fix=_FIX)

    def world_size(self) -> int:
        self._check()
        return self._pods()

    def global_rank(self) -> int:
        self._check()
        return read_int(self.env, "RANK", lowest=0, environment=self.name, fix=_FIX)

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return self.global_rank()

    def local_world_size(self) -> int | None:
        return 1

    def _pods(self) -> int:
        return read_int(self.env, "WORLD_SIZE", lowest=1, environment=self.name, fix=_FIX)

    def _check(self) -> None:
        pods, rank = self._pods(), read_int(self.env, "RANK", lowest=0, environment=self.name, fix=_FIX)
        check_below("RANK", rank, "WORLD_SIZE", pods, environment=self.name, fix=_FIX)
        nodes = pods if self.num_nodes is None else self.num_nodes
        if self.num_processes != 1 or nodes != pods:
            asked = f"Fabric(devices={self.num_processes}, num_nodes={nodes})"
            several = (
                f" For {self.num_processes} processes per pod, start them in the pod: torchrun "
                f"--nnodes=$WORLD_SIZE --node-rank=$RANK --nproc-per-node={self.num_processes} "
                f"--master-addr=$MASTER_ADDR --master-port=$MASTER_PORT train.py (LOCAL_RANK is then set)."
                if self.num_processes != 1 else ""
            )
            raise FabricEnvironmentError(
                f"Kubeflow's PyTorchJob started this pod as RANK={rank} of WORLD_SIZE={pods} pods, one process per "
                f"pod (no LOCAL_RANK), but {asked} expects {self.num_processes * nodes} process(es), "
                f"{self.num_processes} per node. Fix: Fabric(devices=1, num_nodes={pods}), one pod per process "
                f"(the PyTorchJob's Master + Worker replicas).{several}"
            )

    def __repr__(self) -> str:
        return "KubeflowEnvironment()"
