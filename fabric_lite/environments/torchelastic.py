"""The torchelastic environment: processes made by torchrun / torch.distributed.run."""

from __future__ import annotations

from collections.abc import Mapping

from fabric_lite.environments.base import ClusterEnvironment

_REQUIRED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class TorchElasticEnvironment(ClusterEnvironment):
    """Ranks come from the variables torchrun sets for every worker.

    Example:
        >>> env = TorchElasticEnvironment({"TORCHELASTIC_RUN_ID": "1", "RANK": "3", "WORLD_SIZE": "4",
        ...                                "LOCAL_RANK": "1", "GROUP_RANK": "1", "MASTER_ADDR": "h",
        ...                                "MASTER_PORT": "29500"})
        >>> env.global_rank(), env.node_rank()
        (3, 1)
    """

    name = "torchelastic"

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return "TORCHELASTIC_RUN_ID" in env and all(key in env for key in _REQUIRED)

    @property
    def creates_processes_externally(self) -> bool:
        return True

    def world_size(self) -> int:
        return int(self.env["WORLD_SIZE"])

    def global_rank(self) -> int:
        return int(self.env["RANK"])

    def local_rank(self) -> int:
        return int(self.env["LOCAL_RANK"])

    def node_rank(self) -> int:
        return int(self.env.get("GROUP_RANK", "0"))

    def local_world_size(self) -> int | None:
        value = self.env.get("LOCAL_WORLD_SIZE")
        return int(value) if value and value.isdigit() else None
