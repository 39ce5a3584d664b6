"""The local environment: nobody else made this process; fabric_lite's own launcher (if any) sets the ranks."""

from __future__ import annotations

from collections.abc import Mapping

from fabric_lite.environments.base import ClusterEnvironment


class LocalEnvironment(ClusterEnvironment):
    """One machine, processes made by fabric_lite (or a single plain process).

    Example:
        >>> env = LocalEnvironment({})
        >>> env.world_size(), env.global_rank()
        (1, 0)
    """

    name = "local"

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return True

    @property
    def creates_processes_externally(self) -> bool:
        return False

    def world_size(self) -> int:
        return int(self.env.get("WORLD_SIZE", "1"))

    def global_rank(self) -> int:
        return int(self.env.get("RANK", "0"))

    def local_rank(self) -> int:
        return int(self.env.get("LOCAL_RANK", "0"))

    def node_rank(self) -> int:
        return int(self.env.get("NODE_RANK", "0"))
