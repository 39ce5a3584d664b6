"""Kubeflow PyTorchJob, MPI (OpenMPI, MPICH/Intel MPI) and LSF (jsrun): detected from the variables each launcher sets.

The unit tests read plain dicts; the last test starts two real Python processes per launcher with exactly the
variables that launcher sets (nothing else fabric_lite-specific), which meet through fabric_lite and all_reduce.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys

import pytest

from fabric_lite.environments import KubeflowEnvironment, LSFEnvironment, MPIEnvironment
from fabric_lite.errors import FabricEnvironmentError
from fabric_lite.plan import resolve
from fabric_lite.utilities.distributed import find_free_port, port_in_use

CPU = {"cpu": 1}
# A PyTorchJob worker pod: what the operator sets, plus Kubernetes' own service variable.
POD = {"KUBERNETES_PORT": "tcp://10.96.0.1:443", "MASTER_ADDR": "train-master-0", "MASTER_PORT": "23456",
       "WORLD_SIZE": "2", "RANK": "1", "PYTHONUNBUFFERED": "1"}
# OpenMPI's mpirun -np 4 over two nodes, rank 3.
OMPI = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_COMM_WORLD_NODE_RANK": "1", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
# MPICH / Intel MPI's Hydra mpiexec -n 4 -ppn 2, rank 2.
HYDRA = {"PMI_SIZE": "4", "PMI_RANK": "2", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2", "PMI_FD": "5",
         "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
# A task of an srun step (what srun sets, as in test_environments.py).
SLURM_STEP = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
              "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "train.sh"}
# jsrun -n 4 -r 2 in LSF job 4242 on a CSM cluster (batch1 is the launch node), task 3.
JSRUN = {"LSB_JOBID": "4242", "LSB_MCPU_HOSTS": "batch1 1 h41n04 42 h41n05 42", "JSM_NAMESPACE_SIZE": "4",
         "JSM_NAMESPACE_RANK": "3", "JSM_NAMESPACE_LOCAL_RANK": "1"}


def _plan(env, **kwargs):
    return resolve(env=env, available=CPU, accelerator="cpu", **kwargs)


# ----------------------------------------------------------------------------- Kubeflow
def test_kubeflow_pod_is_one_node_of_one_process_and_the_plan_says_why():
    plan = _plan(POD, devices=1, num_nodes=2)
    assert (plan.cluster_environment, plan.launcher, plan.strategy, plan.world_size) == ("kubeflow", "external", "ddp", 2)
    assert plan.reasons["cluster_environment"] == (
        "detected kubeflow variables: a PyTorchJob pod (KUBERNETES_PORT, RANK=1 of WORLD_SIZE=2 pods, no LOCAL_RANK): "
        "one process per pod"
    )
    assert "kubeflow" in str(plan) and "PyTorchJob pod" in str(plan)
    env = KubeflowEnvironment(POD, num_nodes=2)
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (1, 0, 1, 2)
    assert (env.main_address, env.main_port) == ("train-master-0", 23456)
    # Handed over as a plugin (Lightning's way), the pods the operator started are taken as they are.
    assert _plan(POD, plugins=[KubeflowEnvironment(POD)]).cluster_environment == "kubeflow"


@pytest.mark.parametrize(
    ("extra", "dropped", "expected"),
    [
        ({"LOCAL_RANK": "0", "GROUP_RANK": "1", "TORCHELASTIC_RUN_ID": "j", "LOCAL_WORLD_SIZE": "1"}, (), "torchelastic"),
        ({"LOCAL_RANK": "0"}, (), "local"),  # fabric_lite's own launchers set LOCAL_RANK
        ({}, ("KUBERNETES_PORT",), "local"),  # not in a Kubernetes pod: the local environment's placement
        ({}, ("MASTER_PORT",), "local"),  # no rendezvous: one plain process
    ],
)
def test_kubeflow_is_not_detected_when_another_launcher_placed_the_process(extra, dropped, expected):
    env = {**{k: v for k, v in POD.items() if k not in dropped}, **extra}
    assert KubeflowEnvironment.detect(env) is (expected == "kubeflow")
    assert _plan(env, devices=1, num_nodes=2).cluster_environment == expected


def test_kubeflow_refuses_several_processes_per_pod_and_a_wrong_node_count():
    with pytest.raises(FabricEnvironmentError) as error:
        _plan(POD, devices=2, num_nodes=2)
    assert str(error.value) == (
        "Kubeflow's PyTorchJob started this pod as RANK=1 of WORLD_SIZE=2 pods, one process per pod (no LOCAL_RANK), "
        "but Fabric(devices=2, num_nodes=2) expects 4 process(es), 2 per node. Fix: Fabric(devices=1, num_nodes=2), one "
        "pod per process (the PyTorchJob's Master + Worker replicas). For 2 processes per pod, start them in the pod: "
        "torchrun --nnodes=$WORLD_SIZE --node-rank=$RANK --nproc-per-node=2 --master-addr=$MASTER_ADDR "
        "--master-port=$MASTER_PORT train.py (LOCAL_RANK is then set)."
    )
    with pytest.raises(FabricEnvironmentError, match=r"Fabric\(devices=1, num_nodes=1\) expects 1 process\(es\).*"
                                                     r"Fix: Fabric\(devices=1, num_nodes=2\)"):
        _plan(POD, devices=1)


def test_kubeflow_rank_not_below_world_size_names_both_variables():
    with pytest.raises(FabricEnvironmentError) as error:
        KubeflowEnvironment({**POD, "RANK": "2"}, num_nodes=2).world_size()
    assert str(error.value).startswith(
        "The kubeflow environment reads rank RANK=2 and size WORLD_SIZE=2, but a rank must be below the size (0 to 1). "
        "Fix: let the PyTorchJob operator set RANK and WORLD_SIZE"
    )


# ----------------------------------------------------------------------------- MPI
def test_openmpi_and_hydra_variables_give_ranks_without_mpi4py():
    openmpi = MPIEnvironment(OMPI)
    assert (openmpi.world_size(), openmpi.global_rank(), openmpi.local_rank(), openmpi.node_rank()) == (4, 3, 1, 1)
    assert (openmpi.local_world_size(), openmpi.main_address, openmpi.main_port) == (2, "node1", 29500)
    hydra = MPIEnvironment(HYDRA)
    assert (hydra.world_size(), hydra.global_rank(), hydra.local_rank(), hydra.node_rank()) == (4, 2, 0, 1)
    plan = _plan(OMPI, devices=2, num_nodes=2)
    assert (plan.cluster_environment, plan.launcher, plan.world_size) == ("mpi", "external", 4)
    assert plan.reasons["cluster_environment"] == (
        "detected mpi variables: OpenMPI mpirun set OMPI_COMM_WORLD_RANK=3 of OMPI_COMM_WORLD_SIZE=4"
    )
    assert _plan(HYDRA, devices=2, num_nodes=2).reasons["cluster_environment"] == (
        "detected mpi variables: MPICH/Intel MPI (Hydra) mpiexec set PMI_RANK=2 of PMI_SIZE=4"
    )
    assert "mpi4py" not in sys.modules


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({**SLURM_STEP, "PMI_RANK": "1", "PMI_SIZE": "2"}, "slurm"),  # srun --mpi=pmi2: SLURM knows the nodes
        ({**SLURM_STEP, **OMPI}, "mpi"),  # mpirun in a SLURM job: its daemons' srun step counts nodes, not ranks
        ({**SLURM_STEP, **HYDRA}, "mpi"),  # Intel MPI's mpirun uses srun the same way
        ({**OMPI, "TORCHELASTIC_RUN_ID": "j", "RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "GROUP_RANK": "0",
          "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "torchelastic"),  # torchrun started by mpirun: its workers
        ({**JSRUN, **OMPI, "NODE_RANK": "1"}, "lsf"),  # jsrun (Spectrum MPI) sets both; LSF also names the hosts
        ({**POD, **OMPI}, "mpi"),  # an MPIJob pod: mpirun's ranks, not the pod's
        ({"PMI_RANK": "0", "PMI_SIZE": "2"}, "local"),  # PMI without Hydra's MPI_LOCALRANKID: not enough to place it
    ],
)
def test_detection_precedence(env, expected):
    assert _plan(env).cluster_environment == expected


@pytest.mark.parametrize(
    ("env", "node"),
    [
        ({**OMPI, "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, 1),  # blocks (mpirun's default)
        ({**OMPI, "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, 1),  # --map-by node: round-robin
        ({**OMPI, "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "0", "NODE_RANK": "0"}, 0),  # user's word
        ({**OMPI, "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "2"}, 0),
    ],
)
def test_mpi_node_rank_from_the_layout(env, node):
    assert MPIEnvironment(env).node_rank() == node


def test_mpi_node_rank_of_an_unknown_layout_asks_for_node_rank():
    env = {**OMPI, "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_COMM_WORLD_RANK": "2",
           "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    with pytest.raises(FabricEnvironmentError, match=r"cannot tell this process's node: the ranks are placed neither "
                                                     r"in blocks of 2 nor round-robin .*Fix: set NODE_RANK"):
        MPIEnvironment(env).node_rank()


def test_mpi_rendezvous_needs_master_port_and_on_several_nodes_master_addr():
    one_node = {**OMPI, "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    del one_node["MASTER_ADDR"]
    assert MPIEnvironment(one_node).main_address == "127.0.0.1"  # every process on this node
    alone = {"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
             "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}  # mpirun -np 1: one process, nobody to meet
    assert (_plan(alone).strategy, MPIEnvironment(alone).main_port) == ("single_device", 0)
    no_port = {k: v for k, v in one_node.items() if k != "MASTER_PORT"}
    with pytest.raises(FabricEnvironmentError) as error:
        _plan(no_port, devices=2)  # refused when Fabric is made, before any process waits for the others
    assert str(error.value) == (
        "OpenMPI started this process, but MPI sets no rendezvous port and MASTER_PORT is not set, so the processes "
        "cannot meet. Fix: pass a free port to every process: mpirun -x MASTER_PORT=29500 ... (and "
        "-x MASTER_ADDR=<host of rank 0> on several nodes)."
    )
    with pytest.raises(FabricEnvironmentError, match=r"mpiexec -genv MASTER_PORT 29500"):
        _plan({k: v for k, v in HYDRA.items() if k != "MASTER_PORT"}, devices=2, num_nodes=2)
    with pytest.raises(FabricEnvironmentError) as error:
        _plan({k: v for k, v in OMPI.items() if k != "MASTER_ADDR"}, devices=2, num_nodes=2)
    assert str(error.value) == (
        "OpenMPI started 4 processes over several nodes (OMPI_COMM_WORLD_LOCAL_SIZE=2), but MPI does not tell a "
        "process where rank 0 runs, and MASTER_ADDR is not set. Fix: pass the address of the node of rank 0 to every "
        "process: mpirun -x MASTER_ADDR=<host of rank 0> -x MASTER_PORT=29500 ..."
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"OMPI_COMM_WORLD_RANK": "4"}, "The mpi environment reads rank OMPI_COMM_WORLD_RANK=4 and size "
                                        "OMPI_COMM_WORLD_SIZE=4, but a rank must be below the size (0 to 3). Fix: start "
                                        "the script with mpirun -np N python train.py"),
        ({"OMPI_COMM_WORLD_LOCAL_RANK": "2"}, "The mpi environment reads local rank OMPI_COMM_WORLD_LOCAL_RANK=2 and "
                                              "size OMPI_COMM_WORLD_LOCAL_SIZE=2, but a local rank must be below"),
        ({"OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, "The mpi environment reads OMPI_COMM_WORLD_LOCAL_SIZE=8 processes on this "
                                              "node but OMPI_COMM_WORLD_SIZE=4 in all"),
        ({"OMPI_COMM_WORLD_LOCAL_RANK": None}, "The mpi environment was detected but OMPI_COMM_WORLD_LOCAL_RANK is not "
                                               "set, so this process cannot be placed. Fix: start the script with mpirun"),
        ({"OMPI_COMM_WORLD_SIZE": "four"}, "The environment variable OMPI_COMM_WORLD_SIZE='four' is not an integer >= 1; "
                                           "the mpi environment reads it to place this process. Fix:"),
    ],
)
def test_inconsistent_mpi_variables_are_refused_naming_them(change, message):
    env = {k: v for k, v in {**OMPI, **change}.items() if v is not None}
    with pytest.raises(FabricEnvironmentError) as error:
        _plan(env, devices=2, num_nodes=2)
    assert str(error.value).startswith(message), str(error.value)


def test_mpi_environment_plugin_outside_mpirun_says_how_to_start():
    with pytest.raises(FabricEnvironmentError, match=r"carries no MPI launcher's rank variables .*Fix: start the script "
                                                     r"with mpirun -np N python train.py, or drop MPIEnvironment\(\)"):
        _plan({}, plugins=[MPIEnvironment({})])


# ----------------------------------------------------------------------------- LSF
def test_lsf_reads_jsrun_ranks_and_hosts_without_the_launch_node(tmp_path):
    env = LSFEnvironment(JSRUN, hostname="h41n05.summit.olcf.ornl.gov")  # a full name matches the short one
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    assert env.nodes() == ["h41n04", "h41n05"]
    assert (env.main_address, env.main_port) == ("h41n04", 10000 + (4242 * 16) % 20000)
    rankfile = tmp_path / "rankfile"
    rankfile.write_text("batch1\nh41n04\nh41n04\nh41n05\nh41n05\n")
    from_file = LSFEnvironment({**JSRUN, "LSB_DJOB_RANKFILE": str(rankfile), "LSB_MCPU_HOSTS": "ignored 1"},
                               hostname="h41n04")
    assert (from_file.nodes(), from_file.node_rank(), from_file.main_address) == (["h41n04", "h41n05"], 0, "h41n04")
    # Elements of one job array share LSB_JOBID: the index keeps their ports apart; MASTER_* win when set.
    assert LSFEnvironment({**JSRUN, "LSB_JOBINDEX": "3"}).main_port == LSFEnvironment(JSRUN).main_port + 3
    given = LSFEnvironment({**JSRUN, "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29501"})
    assert (given.main_address, given.main_port) == ("10.0.0.9", 29501)
    plan = _plan(JSRUN, devices=2, num_nodes=2, plugins=[LSFEnvironment(JSRUN, hostname="h41n05")])
    assert (plan.cluster_environment, plan.launcher, plan.world_size) == ("lsf", "external", 4)
    assert _plan({**JSRUN, "NODE_RANK": "1"}, devices=2, num_nodes=2).reasons["cluster_environment"] == (
        "detected lsf variables: jsrun in LSF job 4242 set JSM_NAMESPACE_RANK=3 of JSM_NAMESPACE_SIZE=4"
    )
    assert pickle.loads(pickle.dumps(env)).nodes() == ["h41n04", "h41n05"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"JSM_NAMESPACE_RANK": "4"}, "The lsf environment reads rank JSM_NAMESPACE_RANK=4 and size JSM_NAMESPACE_SIZE=4, "
                                      "but a rank must be below the size (0 to 3). Fix: start the script with jsrun"),
        ({"JSM_NAMESPACE_RANK": None}, "The lsf environment was detected but JSM_NAMESPACE_RANK is not set"),
        ({"LSB_MCPU_HOSTS": "batch1 1 h41n04"}, "LSB_MCPU_HOSTS='batch1 1 h41n04' is not a list of 'host slots' pairs"),
        ({"LSB_MCPU_HOSTS": None}, "The LSF environment was detected (LSB_JOBID, JSM_NAMESPACE_SIZE) but neither "
                                   "LSB_DJOB_RANKFILE nor LSB_MCPU_HOSTS lists the job's hosts"),
        ({"LSB_DJOB_RANKFILE": "/nonexistent/rankfile"}, "LSB_DJOB_RANKFILE=/nonexistent/rankfile cannot be read"),
        ({}, f"This host ({socket.gethostname()}) is not among the LSF job's compute hosts ['h41n04', 'h41n05'] (from "
             f"LSB_MCPU_HOSTS='batch1 1 h41n04 42 h41n05 42'), so its node rank is unknown. Fix: run the script "
             f"through jsrun"),
    ],
)
def test_inconsistent_lsf_variables_are_refused_naming_them(change, message):
    env = {k: v for k, v in {**JSRUN, **change}.items() if v is not None}
    with pytest.raises(FabricEnvironmentError) as error:
        _plan(env, devices=2, num_nodes=2)
    assert str(error.value).startswith(message), str(error.value)


# ----------------------------------------------------------------------------- two real processes per launcher
SCRIPT = """
import json, os, sys
import torch
from fabric_lite import Fabric
fabric = Fabric(accelerator="cpu", strategy="ddp", devices=int(sys.argv[1]), num_nodes=int(sys.argv[2]))
fabric.launch()
total = fabric.all_reduce(torch.tensor([float(fabric.global_rank + 1)]), reduce_op="sum").item()
fabric.barrier()
print("RESULT", json.dumps({"env": fabric.plan.cluster_environment, "launcher": fabric.plan.launcher,
                            "reason": fabric.plan.reasons["cluster_environment"], "table": str(fabric.plan),
                            "ranks": [fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size],
                            "total": total}))
"""


def _free_derived_lsf_job() -> tuple[str, int]:
    """An LSF job id whose derived port is free here (the test exercises the derivation, not MASTER_PORT)."""
    for job in range(int.from_bytes(os.urandom(2), "little"), 10**6, 7919):
        port = 10000 + (job * 16) % 20000
        if not port_in_use("127.0.0.1", port):
            return str(job), port
    raise AssertionError("no free port in 10000-29999")


def _launch_variables(kind: str, rank: int, tmp_path) -> dict[str, str]:
    port = str(find_free_port("127.0.0.1"))
    if kind == "kubeflow":  # two pods, one process each
        return {"KUBERNETES_PORT": "tcp://10.96.0.1:443", "KUBERNETES_SERVICE_HOST": "10.96.0.1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(rank)}
    if kind == "openmpi":  # mpirun -np 2 -x MASTER_PORT on one node (no MASTER_ADDR: 127.0.0.1)
        return {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_LOCAL_RANK": str(rank),
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_COMM_WORLD_NODE_RANK": str(rank),
                "OMPI_UNIVERSE_SIZE": "2", "OMPI_MCA_ess_base_jobid": "1234", "MASTER_PORT": port}
    if kind == "hydra":  # mpiexec -n 2 -genv MASTER_ADDR 127.0.0.1 -genv MASTER_PORT ...
        return {"PMI_SIZE": "2", "PMI_RANK": str(rank), "MPI_LOCALRANKID": str(rank), "MPI_LOCALNRANKS": "2",
                "PMI_FD": "9", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    assert kind == "lsf"  # jsrun -n 2 in an LSF job: rank file with the launch node first; port from the job id
    rankfile = tmp_path / "rankfile"
    rankfile.write_text(f"batch1\n{socket.gethostname()}\n{socket.gethostname()}\n")
    job = (tmp_path / "job").read_text() if (tmp_path / "job").exists() else _free_derived_lsf_job()[0]
    (tmp_path / "job").write_text(job)
    return {"LSB_JOBID": job, "LSB_DJOB_RANKFILE": str(rankfile), "LSB_MCPU_HOSTS": f"batch1 1 {socket.gethostname()} 2",
            "JSM_NAMESPACE_SIZE": "2", "JSM_NAMESPACE_RANK": str(rank), "JSM_NAMESPACE_LOCAL_RANK": str(rank)}


#: (launcher, Fabric devices, Fabric num_nodes, environment detected, [global, local, node rank, world] by rank)
LAUNCHES = [
    ("kubeflow", 1, 2, "kubeflow", [[0, 0, 0, 2], [1, 0, 1, 2]]),
    ("openmpi", 2, 1, "mpi", [[0, 0, 0, 2], [1, 1, 0, 2]]),
    ("hydra", 2, 1, "mpi", [[0, 0, 0, 2], [1, 1, 0, 2]]),
    ("lsf", 2, 1, "lsf", [[0, 0, 0, 2], [1, 1, 0, 2]]),
]


def test_two_processes_started_as_each_launcher_would_meet_and_all_reduce(tmp_path):
    """Per launcher, two real processes with its variables form one world; the four pairs run side by side."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    launcher_names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT", "TORCHELASTIC_RUN_ID", "KUBERNETES_PORT", "LSB_JOBID", "JSM_NAMESPACE_SIZE")
    base = {k: v for k, v in os.environ.items()
            if k not in launcher_names and not k.startswith(("SLURM_", "OMPI_", "PMI_", "FABRIC_LITE_"))}
    base["OMP_NUM_THREADS"] = "1"
    procs = {}
    for kind, devices, num_nodes, _, _ in LAUNCHES:
        folder = tmp_path / kind
        folder.mkdir()
        variables = [_launch_variables(kind, rank, folder) for rank in (0, 1)]
        if "MASTER_PORT" in variables[0]:
            variables[1]["MASTER_PORT"] = variables[0]["MASTER_PORT"]
        procs[kind] = [
            subprocess.Popen([sys.executable, str(script), str(devices), str(num_nodes)], env={**base, **variables[rank]},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for rank in (0, 1)
        ]
    outputs = {}
    try:
        for kind, pair in procs.items():
            outputs[kind] = [p.communicate(timeout=120) for p in pair]
    finally:
        for pair in procs.values():
            for p in pair:
                p.kill()
    for kind, _, _, name, places in LAUNCHES:
        assert [p.returncode for p in procs[kind]] == [0, 0], (kind, outputs[kind])
        results = [json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:])
                   for out, _ in outputs[kind]]
        assert [r["ranks"] for r in results] == places, kind
        assert all(r["total"] == 3.0 for r in results), (kind, results)  # 1 + 2: both ranks took part
        assert all(r["env"] == name and r["launcher"] == "external" for r in results), (kind, results)
        assert all(r["reason"].startswith(f"detected {name} variables: ") for r in results), (kind, results)
        assert all(r["reason"] in r["table"] for r in results), kind  # print(fabric.plan) shows why
