"""Cluster environments read from plain dicts: detection, ranks, sizes, the main address and port."""

from __future__ import annotations

import pickle

import pytest

from fabric_lite.environments import LocalEnvironment, SLURMEnvironment, TorchElasticEnvironment
from fabric_lite.environments.slurm import first_hostname
from fabric_lite.errors import ConfigurationError, FabricEnvironmentError
from fabric_lite.plan import resolve

# What srun sets in a task (as seen under the real srun of tests/clusters/test_slurm.py).
SLURM = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
         "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "train.sh",
         "SLURM_NTASKS_PER_NODE": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}


def test_slurm_reads_ranks_and_main_node():
    env = SLURMEnvironment(SLURM)
    assert SLURMEnvironment.detect(SLURM)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    assert env.main_address == "gpu07" and env.main_port == 10000 + 4242 * 16 % 20000
    assert env.local_world_size() == 2 and env.creates_processes_externally
    assert SLURMEnvironment({**SLURM, "MASTER_PORT": "1234", "MASTER_ADDR": "h"}).main_port == 1234


@pytest.mark.parametrize("name", ["bash", "interactive"])
def test_interactive_slurm_shell_is_not_a_slurm_launch(name):
    # srun --pty bash: a one-task step named after the shell (or salloc's "interactive")
    shell = {**SLURM, "SLURM_JOB_NAME": name, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}
    assert not SLURMEnvironment.detect(shell)
    # but srun -n4 inside salloc (job name "interactive") starts real tasks
    assert SLURMEnvironment.detect({**SLURM, "SLURM_JOB_NAME": name, "SLURM_STEP_NUM_TASKS": "4"})


def test_batch_script_and_salloc_shell_are_not_srun_tasks():
    batch = {k: v for k, v in SLURM.items() if k not in ("SLURM_STEP_ID", "SLURM_STEP_TASKS_PER_NODE")}
    assert not SLURMEnvironment.detect(batch)
    salloc_shell = {k: v for k, v in batch.items() if k not in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID")}
    assert not SLURMEnvironment.detect(salloc_shell)


def test_slurm_uneven_layout_and_step_ports():
    env = SLURMEnvironment({**SLURM, "SLURM_NTASKS": "3", "SLURM_STEP_TASKS_PER_NODE": "2,1", "SLURM_NODEID": "1"})
    assert env.tasks_per_node_layout() == (2, 1) and env.local_world_size() == 1 and env.num_nodes() == 2
    assert SLURMEnvironment({**SLURM, "SLURM_STEP_ID": "1"}).main_port == env.main_port + 1


@pytest.mark.parametrize(("nodelist", "first"), [("n1", "n1"), ("n[3-5]", "n3"), ("a[01,04-06],b2", "a01"), ("x-1,y", "x-1")])
def test_first_hostname(nodelist, first):
    assert first_hostname(nodelist) == first


def test_plan_detects_slurm_and_uses_its_world():
    plan = resolve(env=SLURM, available={"cpu": 1}, devices=2, num_nodes=2)
    assert plan.cluster_environment == "slurm" and plan.launcher == "external" and plan.strategy == "ddp"
    assert plan.reasons["cluster_environment"] == "detected slurm variables"


def test_torchelastic_takes_precedence_over_slurm():
    env = {**SLURM, "TORCHELASTIC_RUN_ID": "r", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    assert resolve(env=env, available={"cpu": 1}).cluster_environment == "torchelastic"


def test_local_environment_before_and_after_launch():
    before = LocalEnvironment({}, num_processes=2, num_nodes=2)
    assert (before.world_size(), before.global_rank(), before.creates_processes_externally) == (4, 0, False)
    child = LocalEnvironment({"LOCAL_RANK": "1", "NODE_RANK": "1", "WORLD_SIZE": "4"}, num_processes=2)
    assert (child.global_rank(), child.node_rank(), child.creates_processes_externally) == (3, 1, True)
    assert resolve(env={"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"}, available={"cpu": 1}, devices=2).launcher == "external"


def test_environments_pickle_without_os_environ():
    import os

    env = pickle.loads(pickle.dumps(TorchElasticEnvironment()))
    assert env.env is os.environ


def test_slurm_uneven_layout_hint():
    # what `srun -N2 -n3` sets (seen under the real srun): 2 tasks on the first node, 1 on the second
    env = {**SLURM, "SLURM_NTASKS": "3", "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "2,1",
           "SLURM_TASKS_PER_NODE": "2,1"}
    del env["SLURM_NTASKS_PER_NODE"]
    with pytest.raises(ConfigurationError) as error:
        resolve(env=env, available={"cpu": 1}, devices=2, num_nodes=2)
    assert str(error.value).startswith(
        "Fabric(devices=2, num_nodes=2) expects 4 process(es), 2 on each of 2 node(s), but srun started 3 task(s) on 2 "
        "node(s), unevenly: 2 on node 0, 1 on node 1 (SLURM_STEP_TASKS_PER_NODE=2,1). --ntasks (-n) without "
        "--ntasks-per-node")
    assert "Fix: start 4 task(s) as Fabric expects: srun -N2 --ntasks-per-node=2 python " in str(error.value)
    assert "or use the tasks SLURM started" not in str(error.value)  # no Fabric(...) fits an uneven layout


# ----------------------------------------------------------------------------- RANK and WORLD_SIZE but no LOCAL_RANK
POD = {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "23456"}  # as a Kubernetes operator sets


def test_processes_placed_without_local_rank_are_external_and_placed_by_devices():
    one_per_node = LocalEnvironment(POD, num_processes=1, num_nodes=4)
    assert one_per_node.creates_processes_externally
    assert (one_per_node.global_rank(), one_per_node.local_rank(), one_per_node.node_rank()) == (3, 0, 3)
    two_per_node = LocalEnvironment(POD, num_processes=2, num_nodes=2)
    assert (two_per_node.local_rank(), two_per_node.node_rank()) == (1, 1)
    plan = resolve(env=POD, available={"cpu": 1}, accelerator="cpu", devices=1, num_nodes=4)
    assert (plan.launcher, plan.strategy, plan.world_size) == ("external", "ddp", 4)
    assert not LocalEnvironment({k: v for k, v in POD.items() if k != "MASTER_PORT"}).creates_processes_externally


def test_processes_placed_without_local_rank_that_do_not_fit_fabric_are_refused_at_once():
    with pytest.raises(FabricEnvironmentError) as error:
        resolve(env=POD, available={"cpu": 1}, accelerator="cpu", devices=2, strategy="ddp")
    assert str(error.value) == (
        "The environment sets RANK=3 and WORLD_SIZE=4 but no LOCAL_RANK (processes started by another tool, e.g. a "
        "Kubernetes operator), and Fabric(devices=2, num_nodes=1) expects 2 process(es), so this process's place on "
        "its machine cannot be derived. Fix: set LOCAL_RANK (and NODE_RANK) in every process, start the script with "
        "torchrun or fabric-run (they set them), or make devices * num_nodes equal WORLD_SIZE, e.g. "
        "Fabric(devices=1, num_nodes=4) for one process per machine."
    )


PLACED_SCRIPT = """
import json, sys
import torch
from fabric_lite import Fabric
devices, num_nodes = int(sys.argv[1]), int(sys.argv[2])
fabric = Fabric(accelerator="cpu", devices=devices, num_nodes=num_nodes, strategy="ddp")
fabric.launch()
total = fabric.all_reduce(torch.ones(1), reduce_op="sum").item()
fabric.barrier()
print("RESULT", json.dumps([fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size, total]))
"""


@pytest.mark.parametrize(("devices", "num_nodes", "places"), [(1, 2, [[0, 0, 0], [1, 0, 1]]), (2, 1, [[0, 0, 0], [1, 1, 0]])])
def test_two_processes_started_with_rank_but_no_local_rank_train_together(devices, num_nodes, places, tmp_path):
    """Two real processes that only know RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT form one world."""
    import json
    import os
    import subprocess
    import sys

    from fabric_lite.utilities.distributed import find_free_port

    script = tmp_path / "placed.py"
    script.write_text(PLACED_SCRIPT)
    # Without another launcher's variables (a CI host in Kubernetes sets KUBERNETES_PORT, which would read as Kubeflow).
    launcher_prefixes = ("SLURM_", "OMPI_", "PMI_", "LSB_", "JSM_", "KUBERNETES_", "TORCHELASTIC_")
    base = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE")
            and not k.startswith(launcher_prefixes)}
    base.update(OMP_NUM_THREADS="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(find_free_port("127.0.0.1")))
    procs = [subprocess.Popen([sys.executable, str(script), str(devices), str(num_nodes)], env={**base, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        outputs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads(next(l for l in out.splitlines() if l.startswith("RESULT"))[7:]) for out, _ in outputs]
    assert [r[:3] for r in results] == places
    assert all(r[3:] == [2, 2.0] for r in results), results
