"""The ClusterEnvironment interface: detect(), and ranks, sizes and the rendezvous address read from the environment."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping


class ClusterEnvironment(ABC):
    """A read-only view of one way processes get started (by us, torchrun, SLURM, ...).

    ``env`` defaults to ``os.environ``; tests pass a plain dict instead.
    """

    name: str = ""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env

    @staticmethod
    @abstractmethod
    def detect(env: Mapping[str, str]) -> bool:
        """Whether ``env`` shows that this environment started the current process."""

    @property
    @abstractmethod
    def creates_processes_externally(self) -> bool:
        """True when the processes already exist (the launcher must not start more)."""

    @property
    def main_address(self) -> str:
        return self.env.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        return int(self.env.get("MASTER_PORT", "0"))

    @abstractmethod
    def world_size(self) -> int: ...

    @abstractmethod
    def global_rank(self) -> int: ...

    @abstractmethod
    def local_rank(self) -> int: ...

    @abstractmethod
    def node_rank(self) -> int: ...

    def local_world_size(self) -> int | None:
        """Processes per node, when the environment says (None: unknown)."""
        return None

    def __getstate__(self) -> dict[str, object]:
        # os.environ cannot be pickled (spawned processes): keep a marker and re-bind on load.
        state = dict(self.__dict__)
        if state.get("env") is os.environ:
            state["env"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if self.env is None:
            self.env = os.environ

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
