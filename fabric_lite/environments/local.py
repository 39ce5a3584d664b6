"""The local environment: processes on this machine made by fabric_lite's own launchers (or one plain process)."""

from __future__ import annotations

from collections.abc import Mapping

from fabric_lite.environments.base import ClusterEnvironment


class LocalEnvironment(ClusterEnvironment):
    """One machine. Before launching, sizes come from the plan; in launched processes from the variables the
    launcher set (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    Example:
        >>> env = LocalEnvironment({}, num_processes=2)
        >>> env.world_size(), env.global_rank(), env.creates_processes_externally
        (2, 0, False)
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
        # A process our subprocess launcher (or another tool) started already carries its local rank.
        return "LOCAL_RANK" in self.env

    def world_size(self) -> int:
        return int(self.env.get("WORLD_SIZE", self.num_processes * self.num_nodes))

    def global_rank(self) -> int:
        return int(self.env.get("RANK", self.node_rank() * self.num_processes + self.local_rank()))

    def local_rank(self) -> int:
        return int(self.env.get("LOCAL_RANK", "0"))

    def node_rank(self) -> int:
        return int(self.env.get("NODE_RANK", "0"))
