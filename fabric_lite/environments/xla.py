"""The XLA environment: processes (or, on XLA's CPU device, threads) made by torch_xla's launcher.

``torch_xla.launch`` sets ``PJRT_LOCAL_PROCESS_RANK`` and ``PJRT_LOCAL_PROCESS_COUNT`` in every
process it makes; ranks and sizes are asked from the torch_xla runtime (``torch_xla.runtime``),
which is imported only when a rank is read, inside a launched process.
"""

from __future__ import annotations

from collections.abc import Mapping

from fabric_lite.environments.base import ClusterEnvironment

_LAUNCHED = ("PJRT_LOCAL_PROCESS_RANK", "PJRT_LOCAL_PROCESS_COUNT")


class XLAEnvironment(ClusterEnvironment):
    """Ranks of the replicas torch_xla runs: one per XLA device.

    ``global_rank`` is the ordinal of this replica's device (``torch_xla.runtime.global_ordinal``),
    ``world_size`` the number of replicas, ``node_rank`` the host index (TPU worker id).

    Example:
        >>> XLAEnvironment.detect({"PJRT_LOCAL_PROCESS_RANK": "0", "PJRT_LOCAL_PROCESS_COUNT": "1"})
        True
        >>> XLAEnvironment.detect({})
        False
    """

    name = "xla"

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return all(key in env for key in _LAUNCHED)

    @property
    def creates_processes_externally(self) -> bool:
        # Inside a replica torch_xla made, nothing is left to launch.
        return self.detect(self.env)

    def world_size(self) -> int:
        import torch_xla.runtime as xr

        return int(xr.world_size())

    def global_rank(self) -> int:
        import torch_xla.runtime as xr

        return int(xr.global_ordinal())

    def local_rank(self) -> int:
        import torch_xla.runtime as xr

        return int(xr.local_ordinal())

    def node_rank(self) -> int:
        import torch_xla.runtime as xr

        return int(xr.host_index())

    def local_world_size(self) -> int | None:
        import torch_xla.runtime as xr

        return int(xr.local_device_count())
