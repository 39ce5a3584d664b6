"""Cluster environments read from plain dicts: detection, ranks, sizes, the main address and port."""

from __future__ import annotations

import pickle

import pytest

from fabric_lite.environments import LocalEnvironment, SLURMEnvironment, TorchElasticEnvironment
from fabric_lite.environments.slurm import first_hostname
from fabric_lite.errors import ConfigurationError
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
