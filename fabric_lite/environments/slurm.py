"""The SLURM environment: processes made by ``srun``; ranks, sizes and the main node read from SLURM's variables."""

from __future__ import annotations

import re
from collections.abc import Mapping

from fabric_lite.environments.base import ClusterEnvironment

# Interactive shells (salloc / srun --pty bash) also carry SLURM variables, but there the user starts
# processes by hand: they are not tasks that SLURM made for this job.
_INTERACTIVE_JOB_NAMES = ("bash", "interactive", "sh", "zsh")


def first_hostname(nodelist: str) -> str:
    """The first host of a SLURM hostlist such as ``node[003-005,7],gpu1`` (-> ``node003``).

    Example:
        >>> first_hostname("node[003-005,7],gpu1")
        'node003'
    """
    nodelist = nodelist.strip()
    match = re.match(r"^([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not match:
        return nodelist
    prefix, _, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}"


class SLURMEnvironment(ClusterEnvironment):
    """Ranks from ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NODEID``, world size from ``SLURM_NTASKS``.

    The rendezvous runs on the first node of ``SLURM_NODELIST``; its port is ``MASTER_PORT`` when set,
    else derived from the job id so that every task of the job agrees without talking.

    Example:
        >>> env = SLURMEnvironment({"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
        ...                         "SLURM_NODEID": "1", "SLURM_NODELIST": "n[1-2]", "SLURM_JOB_ID": "1234",
        ...                         "SLURM_JOB_NAME": "train"})
        >>> env.global_rank(), env.local_rank(), env.node_rank(), env.main_address, env.main_port
        (3, 1, 1, 'n1', 11234)
    """

    name = "slurm"

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        return "SLURM_NTASKS" in env and "SLURM_PROCID" in env and env.get("SLURM_JOB_NAME") not in _INTERACTIVE_JOB_NAMES

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" in self.env:
            return self.env["MASTER_ADDR"]
        nodelist = self.env.get("SLURM_NODELIST") or self.env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        return first_hostname(nodelist)

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in self.env:
            return int(self.env["MASTER_PORT"])
        job_id = int(re.sub(r"\D", "", self.env.get("SLURM_JOB_ID", "0")) or 0)
        return 10000 + job_id % 20000

    def world_size(self) -> int:
        return int(self.env["SLURM_NTASKS"])

    def global_rank(self) -> int:
        return int(self.env["SLURM_PROCID"])

    def local_rank(self) -> int:
        return int(self.env.get("SLURM_LOCALID", "0"))

    def node_rank(self) -> int:
        return int(self.env.get("SLURM_NODEID", "0"))

    def local_world_size(self) -> int | None:
        return self.tasks_per_node()

    def tasks_per_node(self) -> int | None:
        """``--ntasks-per-node`` as SLURM reports it (``SLURM_NTASKS_PER_NODE``, e.g. ``2`` or ``2(x2)``)."""
        value = self.env.get("SLURM_NTASKS_PER_NODE")
        if not value:
            return None
        match = re.match(r"^(\d+)", value)
        return int(match.group(1)) if match else None
