"""The SLURM environment: processes made by ``srun``; ranks, sizes and the main node read from SLURM's variables."""

from __future__ import annotations

import re
from collections.abc import Mapping

from fabric_lite.environments.base import ClusterEnvironment

# Job names of interactive shells (salloc's default name, `srun --pty bash`): a one-task step under such a
# name is a shell the user types commands into, not a training launch.
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


def parse_tasks_per_node(value: str) -> tuple[int, ...]:
    """SLURM's compressed tasks-per-node list, one entry per node: ``2(x2),1`` -> ``(2, 2, 1)``.

    Example:
        >>> parse_tasks_per_node("2(x2),1")
        (2, 2, 1)
    """
    counts: list[int] = []
    for part in value.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part)
        if not match:
            return ()
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return tuple(counts)


def is_srun_task(env: Mapping[str, str]) -> bool:
    """Whether ``env`` is that of a task ``srun`` started (a job step), not of a batch script or a salloc shell.

    The batch script of an ``sbatch`` job has ``SLURM_PROCID`` but no step id; a salloc shell has neither.
    """
    return "SLURM_PROCID" in env and "SLURM_NTASKS" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env)


class SLURMEnvironment(ClusterEnvironment):
    """Ranks from ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NODEID``, world size from ``SLURM_NTASKS``.

    Detected in the tasks that ``srun`` starts (in a batch script, inside ``salloc``, or on its own), but
    not in the batch script itself nor in an interactive shell step (``srun --pty bash``): there the user
    starts processes by hand. The rendezvous runs on the first node of ``SLURM_NODELIST``; its port is
    ``MASTER_PORT`` when set, else derived from the job and step ids, so that every task of a step agrees
    without talking and two steps running side by side in one job do not collide.

    Example:
        >>> env = SLURMEnvironment({"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
        ...                         "SLURM_NODEID": "1", "SLURM_NODELIST": "n[1-2]", "SLURM_JOB_ID": "1234",
        ...                         "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "train"})
        >>> env.global_rank(), env.local_rank(), env.node_rank(), env.main_address, env.main_port
        (3, 1, 1, 'n1', 29744)
    """

    name = "slurm"

    @staticmethod
    def detect(env: Mapping[str, str]) -> bool:
        if not is_srun_task(env):
            return False
        num_tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS", "1")
        return not (env.get("SLURM_JOB_NAME") in _INTERACTIVE_JOB_NAMES and num_tasks == "1")

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" in self.env:
            return self.env["MASTER_ADDR"]
        nodelist = self.env.get("SLURM_STEP_NODELIST") or self.env.get("SLURM_NODELIST") or self.env.get(
            "SLURM_JOB_NODELIST") or "127.0.0.1"
        return first_hostname(nodelist)

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in self.env:
            return int(self.env["MASTER_PORT"])
        job_id = int(re.sub(r"\D", "", self.env.get("SLURM_JOB_ID", "0")) or 0)
        step_id = int(re.sub(r"\D", "", self.env.get("SLURM_STEP_ID", self.env.get("SLURM_STEPID", "0"))) or 0)
        # 10000-29999: above the usual service ports, below Linux's ephemeral range (32768+).
        return 10000 + (job_id * 16 + step_id) % 20000

    def world_size(self) -> int:
        return int(self.env["SLURM_NTASKS"])

    def global_rank(self) -> int:
        return int(self.env["SLURM_PROCID"])

    def local_rank(self) -> int:
        return int(self.env.get("SLURM_LOCALID", "0"))

    def node_rank(self) -> int:
        return int(self.env.get("SLURM_NODEID", "0"))

    def local_world_size(self) -> int | None:
        """Tasks on this node; with an uneven layout (``2,1``) it differs between nodes."""
        layout = self.tasks_per_node_layout()
        node = self.node_rank()
        return layout[node] if node < len(layout) else None

    def tasks_per_node_layout(self) -> tuple[int, ...]:
        """The tasks of this step on each of its nodes, e.g. ``(2, 1)``; empty when SLURM does not say.

        ``SLURM_STEP_TASKS_PER_NODE`` is the step's real layout; ``SLURM_NTASKS_PER_NODE`` is only the job's
        request (and absent without ``--ntasks-per-node``), so it is the last resort.
        """
        for variable in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
            layout = parse_tasks_per_node(self.env.get(variable, ""))
            if layout:
                return layout
        return ()

    def num_nodes(self) -> int:
        """The nodes this step runs on."""
        layout = self.tasks_per_node_layout()
        if layout:
            return len(layout)
        return int(self.env.get("SLURM_STEP_NUM_NODES") or self.env.get("SLURM_NNODES") or 1)
