"""Plan checks for SLURM jobs: srun's task layout against Fabric(devices, num_nodes), and scripts run outside srun.

Each check is a (predicate, message) pair for the one table in ``plan/checks.py``; the messages say what
SLURM started (read from its variables), why that cannot work, and the srun flags that would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from fabric_lite.environments.slurm import SLURMEnvironment, is_srun_task
from fabric_lite.plan.model import Plan


def _command() -> str:
    """How the user started the script, for the srun line of a fix (``python train.py``)."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return f"python {script}" if script.endswith(".py") else "python train.py"


def _layout_text(layout: tuple[int, ...]) -> str:
    if len(set(layout)) == 1:
        return f"{layout[0]} per node"
    return "unevenly: " + ", ".join(f"{count} on node {index}" for index, count in enumerate(layout))


def _srun_fix(p: Plan) -> str:
    return f"srun -N{p.num_nodes} --ntasks-per-node={p.num_devices} {_command()}"


# ----------------------------------------------------------------------------- srun started the wrong layout
def srun_mismatch(p: Plan) -> bool:
    """Under srun, Fabric(devices, num_nodes) was given and disagrees with the tasks SLURM started."""
    if p.cluster_environment != "slurm" or p.strategy == "dp" or not (p.devices_given or p.num_nodes != 1):
        return False
    env = SLURMEnvironment(p.scheduler_env)
    layout = env.tasks_per_node_layout()
    if not layout:
        return env.world_size() != p.world_size
    return len(set(layout)) != 1 or layout[0] != p.num_devices or len(layout) != p.num_nodes


def srun_mismatch_message(p: Plan) -> str:
    slurm: Mapping[str, str] = p.scheduler_env
    env = SLURMEnvironment(slurm)
    layout = env.tasks_per_node_layout()
    nodes = env.num_nodes()
    found = f"srun started {env.world_size()} task(s) on {nodes} node(s)"
    if layout:
        variable = next(v for v in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE") if v in slurm)
        found += f", {_layout_text(layout)} ({variable}={slurm[variable]})"
    asked = (
        f"Fabric(devices={p.num_devices}, num_nodes={p.num_nodes}) expects {p.world_size} process(es), "
        f"{p.num_devices} on each of {p.num_nodes} node(s), but {found}."
    )
    job_per_node = slurm.get("SLURM_NTASKS_PER_NODE")
    job_nodes = slurm.get("SLURM_JOB_NUM_NODES")
    job = slurm.get("SLURM_JOB_ID", "?")
    if not job_per_node:
        why = (
            " --ntasks (-n) without --ntasks-per-node lets SLURM put the tasks wherever it finds free CPUs, so how "
            "many run on each node is not fixed; each task is one process and its local rank picks its device."
        )
    elif layout and (len(set(layout)) != 1 or str(layout[0]) != job_per_node):
        why = (
            f" This srun runs inside job {job}, allocated with --ntasks-per-node={job_per_node}"
            + (f" on {job_nodes} node(s)" if job_nodes else "")
            + ", but a task count given to srun itself (-n/-N) overrides the allocation's layout."
        )
    else:
        why = " Each SLURM task is one process of the run, so the counts must agree."
    fix = f" Fix: start {p.world_size} task(s) as Fabric expects: {_srun_fix(p)}"
    if job_per_node == str(p.num_devices) and job_nodes == str(p.num_nodes):
        fix += f" (or plain `srun {_command()}`, which takes the allocation's layout)"
    elif job_nodes and job_nodes.isdigit() and int(job_nodes) < p.num_nodes:
        fix += f" in a job of {p.num_nodes} nodes (salloc or sbatch -N{p.num_nodes} --ntasks-per-node={p.num_devices})"
    if layout and len(set(layout)) == 1:
        fix += f"; or use the tasks SLURM started: Fabric(devices={layout[0]}, num_nodes={nodes})"
    return asked + why + fix + "."


# ----------------------------------------------------------------------------- a job's script run without srun
def outside_srun(p: Plan) -> bool:
    """In a SLURM job but not in an srun task, and asking for several nodes: only this node would run."""
    slurm = p.scheduler_env
    return (
        p.cluster_environment == "local"
        and "SLURM_JOB_ID" in slurm
        and p.num_nodes > 1
        and "NODE_RANK" not in slurm  # the user places the nodes by hand
    )


def outside_srun_message(p: Plan) -> str:
    slurm = p.scheduler_env
    job = slurm.get("SLURM_JOB_ID", "?")
    if is_srun_task(slurm):
        where = f"an interactive shell step of SLURM job {job} (srun --pty)"
    elif "SLURM_PROCID" in slurm:
        where = f"the batch script of SLURM job {job}"
    else:
        where = f"the shell of SLURM allocation {job} (salloc)"
    nodes = slurm.get("SLURM_JOB_NUM_NODES") or slurm.get("SLURM_NNODES")
    return (
        f"Fabric(devices={p.num_devices}, num_nodes={p.num_nodes}) runs in {where}, outside srun: nothing starts "
        f"processes on the other {p.num_nodes - 1} node(s), so the run would wait for them forever."
        + (f" The job has {nodes} node(s)." if nodes else "")
        + f" Fix: start the script with srun, which makes one task per process on every node: {_srun_fix(p)}."
    )


CHECKS = [(srun_mismatch, srun_mismatch_message), (outside_srun, outside_srun_message)]
