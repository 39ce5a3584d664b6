"""The local environment: processes on this machine made by fabric_lite's own launchers (or one plain process)."""

from __future__ import annotations

from collections.abc import Mapping

from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.errors import FabricEnvironmentError

# Set by a tool that started the processes itself and gave each its global rank (LOCAL_RANK may be missing).
_PLACED = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LocalEnvironment(ClusterEnvironment):
    """One machine. Before launching, sizes come from the plan; in launched processes from the variables the
    launcher set (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    Processes another tool started with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` but no
    ``LOCAL_RANK`` (some Kubernetes operators do) are placed by ``devices`` per machine: local rank
    ``RANK % devices``, node rank ``RANK // devices``; that needs ``devices * num_nodes == WORLD_SIZE``.

    Example:
        >>> env = LocalEnvironment({}, num_processes=2)
        >>> env.world_size(), env.global_rank(), env.creates_processes_externally
        (2, 0, False)
        >>> pod = LocalEnvironment({"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "m", "MASTER_PORT": "23456"},
        ...                        num_processes=1, num_nodes=4)
        >>> pod.creates_processes_externally, pod.local_rank(), pod.node_rank()
        (True, 0, 3)
    """

    name = "local"

    def __init__(self, env: Mapping[str, str] | None = None, *, num_processes: int = 1, num_nodes: int = 1) -> None:
        super().__init__(env)
        self.num_processes = num_processes
        self.num_nodes = num_nodes

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return True

    @property
    def creates_processes_externally(self) -> bool:
        # A process our subprocess launcher (or another tool) started already carries its local rank, or at least
        # its global rank and the rendezvous.
        return "LOCAL_RANK" in self.env or self._placed_without_local_rank()

    def world_size(self) -> int:
        return int(self.env.get("WORLD_SIZE", self.num_processes * self.num_nodes))

    def global_rank(self) -> int:
        if "RANK" in self.env:
            return int(self.env["RANK"])
        return self.node_rank() * self.num_processes + self.local_rank()

    def local_rank(self) -> int:
        if "LOCAL_RANK" in self.env:
            return int(self.env["LOCAL_RANK"])
        if self._placed_without_local_rank():
            self._check_layout()
            return self.global_rank() % self.num_processes
        return 0

    def node_rank(self) -> int:
        if "NODE_RANK" in self.env:
            return int(self.env["NODE_RANK"])
        if self._placed_without_local_rank():
            self._check_layout()
            return self.global_rank() // self.num_processes
        return 0

    def _placed_without_local_rank(self) -> bool:
        return "LOCAL_RANK" not in self.env and all(key in self.env for key in _PLACED)

    def _check_layout(self) -> None:
        world = int(self.env["WORLD_SIZE"])
        expected = self.num_processes * self.num_nodes
        if world != expected:
            raise FabricEnvironmentError(
                f"The environment sets RANK={self.env['RANK']} and WORLD_SIZE={world} but no LOCAL_RANK (processes "
                f"started by another tool, e.g. a Kubernetes operator), and Fabric(devices={self.num_processes}, "
                f"num_nodes={self.num_nodes}) expects {expected} process(es), so this process's place on its machine "
                f"cannot be derived. Fix: set LOCAL_RANK (and NODE_RANK) in every process, start the script with "
                f"torchrun or fabric-run (they set them), or make devices * num_nodes equal WORLD_SIZE, e.g. "
                f"Fabric(devices=1, num_nodes={world}) for one process per machine."
            )
