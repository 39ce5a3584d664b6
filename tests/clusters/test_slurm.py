"""Under a real SLURM (scripts/slurm-local.sh: slurmctld + two emulated nodes on this machine): srun, sbatch and
salloc runs detect the SLURM environment, get the right ranks and rendezvous from the job, train exactly like
fabric-run, and misconfigured task counts fail with hints that name the srun flags."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "slurm-local.sh"
TRAIN = Path(__file__).parent / "_scripts" / "slurm_train.py"
PREEMPT = Path(__file__).parent / "_scripts" / "preempt_train.py"
PY = sys.executable

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local SLURM cluster needs Linux"),
]

# What a rank must not inherit from the shell that runs pytest: it would tell Fabric where it is.
_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK")


@pytest.fixture(scope="session")
def slurm_env():
    """Start the local cluster once per session (installing SLURM when missing); stop it at the end if we started it."""
    state = os.environ.get("FABRIC_LITE_SLURM_DIR", "/var/tmp/fabric_lite-slurm")
    started = subprocess.run(["bash", str(CLUSTER), "start"], check=False, capture_output=True, text=True, timeout=900)
    if started.returncode == 3:  # the script's code for "SLURM cannot be installed here"
        pytest.skip(f"no SLURM on this machine and it cannot be installed: {started.stderr.strip()}")
    assert started.returncode == 0, started.stdout + started.stderr
    env = {k: v for k, v in os.environ.items() if k.startswith("FABRIC_LITE_SLURM_") or (
        not k.startswith(("SLURM_", "TORCHELASTIC_", "FABRIC_LITE_")) and k not in _LAUNCH_VARIABLES)}
    env.update(SLURM_CONF=f"{state}/slurm.conf", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    yield env
    if "already running" not in started.stdout:  # another session's (or the user's) cluster is left alone
        subprocess.run(["bash", str(CLUSTER), "stop"], check=False, capture_output=True, timeout=120)


def run(cmd, env, timeout=240, **kwargs):
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def read_ranks(out_dir: Path, world_size: int) -> list[dict]:
    reports = [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]
    assert sorted(r["rank"] for r in reports) == list(range(world_size)), [r["rank"] for r in reports]
    return sorted(reports, key=lambda r: r["rank"])


def fabric_run_weights(env, tmp_path_factory, devices):
    out = tmp_path_factory.mktemp(f"fabric_run_{devices}")
    result = run([PY, "-m", "fabric_lite.cli", "--accelerator", "cpu", "--devices", str(devices), str(TRAIN), str(out),
                  "--devices", str(devices)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    reports = read_ranks(out, devices)
    assert all(r["environment"] == "torchelastic" for r in reports)
    return reports[0]["weights"]


@pytest.fixture(scope="module")
def reference(slurm_env, tmp_path_factory):
    """Final parameters of the same training under fabric-run, by number of processes (computed on first use)."""
    cache: dict[int, list] = {}

    def weights(devices: int) -> list:
        if devices not in cache:
            cache[devices] = fabric_run_weights(slurm_env, tmp_path_factory, devices)
        return cache[devices]

    return weights


def check_slurm_ranks(reports, *, num_nodes: int, per_node: int):
    world = num_nodes * per_node
    job, step = reports[0]["slurm"]["SLURM_JOB_ID"], reports[0]["slurm"]["SLURM_STEP_ID"]
    for r in reports:
        assert r["environment"] == "slurm" and r["environment_class"] == "SLURMEnvironment" and r["launcher"] == "external"
        assert r["world_size"] == world
        assert r["local_rank"] == r["rank"] % per_node, r
        assert r["node_rank"] == r["rank"] // per_node, r
        assert r["slurm"]["SLURMD_NODENAME"] == f"node{r['node_rank'] + 1}"  # the emulated node it really ran on
        # the rendezvous comes from the job: its first node, a port from the job and step ids, no MASTER_* set
        assert r["master_in_env"] == []
        assert (r["slurm"]["SLURM_JOB_ID"], r["slurm"]["SLURM_STEP_ID"]) == (job, step)
        assert r["main_address"] == "node1"
        assert r["main_port"] == 10000 + (int(job) * 16 + int(step)) % 20000
    assert all(r["weights"] == reports[0]["weights"] for r in reports)


def srun(*flags: str) -> list[str]:
    return ["srun", "--time=3", "--kill-on-bad-exit=1", *flags]


def test_srun_two_nodes_four_tasks_trains_like_fabric_run(slurm_env, reference, tmp_path):
    result = run([*srun("-N2", "-n4", "--ntasks-per-node=2"), PY, str(TRAIN), str(tmp_path), "--devices", "2",
                  "--num-nodes", "2"], slurm_env)
    assert result.returncode == 0, result.stdout + result.stderr
    reports = read_ranks(tmp_path, 4)
    check_slurm_ranks(reports, num_nodes=2, per_node=2)
    assert reports[0]["weights"] == reference(4)  # bit for bit: same data split, same gloo reduction order


def test_srun_one_node_two_tasks_trains_like_fabric_run(slurm_env, reference, tmp_path):
    # no devices=: the two tasks srun made decide the world size
    result = run([*srun("-N1", "-n2"), PY, str(TRAIN), str(tmp_path)], slurm_env)
    assert result.returncode == 0, result.stdout + result.stderr
    reports = read_ranks(tmp_path, 2)
    check_slurm_ranks(reports, num_nodes=1, per_node=2)
    assert reports[0]["weights"] == reference(2)


_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def job_state(job: str, env) -> dict[str, str]:
    shown = run(["scontrol", "show", "job", "-o", job], env, timeout=30).stdout
    return dict(field.split("=", 1) for field in shown.split() if "=" in field)


def wait_for_job(job: str, env, timeout: float = 300) -> dict[str, str]:
    """Poll until the job has ended (sbatch --wait backs off to 30 s between checks, wasting most of it)."""
    deadline, state = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        state = job_state(job, env)
        if state.get("JobState") in _ENDED:
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job} did not end within {timeout} s: {state}")


def sbatch(*args: str, env, cwd=None) -> str:
    submitted = run(["sbatch", "--parsable", *args], env, timeout=60, cwd=cwd)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    return submitted.stdout.strip().split(";")[0]


def sbatch_wait(script: Path, env) -> tuple[str, str]:
    """Submit a batch script and wait for it to end; returns (job id, its output)."""
    job = sbatch(str(script), env=env, cwd=script.parent)
    state = wait_for_job(job, env)
    output = (script.parent / "job.out").read_text() if (script.parent / "job.out").exists() else ""
    assert state["JobState"] == "COMPLETED", f"{state}\njob output:\n{output}"
    return job, output


def test_sbatch_script_calling_srun(slurm_env, reference, tmp_path):
    # The first python line runs in the batch script itself, outside srun: with num_nodes=2 it must refuse
    # at once (nothing would start on node2) instead of waiting forever for ranks that never come.
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH -N2 --ntasks-per-node=2 --time=3 -o {tmp_path}/job.out
{PY} {TRAIN} {tmp_path} --devices 2 --num-nodes 2 2> {tmp_path}/outside.err && exit 7
srun --kill-on-bad-exit=1 {PY} {TRAIN} {tmp_path} --devices 2 --num-nodes 2
""")
    job, _ = sbatch_wait(script, slurm_env)
    reports = read_ranks(tmp_path, 4)
    check_slurm_ranks(reports, num_nodes=2, per_node=2)
    assert reports[0]["slurm"]["SLURM_JOB_ID"] == job
    assert reports[0]["weights"] == reference(4)
    outside = (tmp_path / "outside.err").read_text()
    assert (f"Fabric(devices=2, num_nodes=2) runs in the batch script of SLURM job {job}, outside srun: nothing "
            f"starts processes on the other 1 node(s), so the run would wait for them forever. The job has 2 "
            f"node(s). Fix: start the script with srun, which makes one task per process on every node: "
            f"srun -N2 --ntasks-per-node=2 python slurm_train.py.") in outside


def test_example_sbatch_script_trains_digits(slurm_env, tmp_path):
    pytest.importorskip("sklearn", reason="examples/digits.py needs scikit-learn: pip install -e '.[examples]'")
    # 4 ranks x 16 = the single-process batch of 64, so 5 epochs reach the accuracy they reach in one process
    job = sbatch(f"--output={tmp_path}/digits-%j.out", "examples/slurm/digits.sbatch", "--epochs", "5",
                 "--batch-size", "16", env={**slurm_env, "PYTHON": PY}, cwd=ROOT)
    state = wait_for_job(job, slurm_env)
    output = "".join(p.read_text() for p in tmp_path.glob("digits-*.out"))
    assert state["JobState"] == "COMPLETED", f"{state}\n{output}"
    assert "2 nodes (node[1-2]), 4 tasks" in output
    # fabric.print prints once per machine: both nodes report the same (all-reduced) accuracy
    assert output.count("(target > 0.90: PASSED)") == 2, output


# ------------------------------------------------------------------------------------ preemption
def test_preempted_job_checkpoints_requeues_itself_and_resumes_exactly(slurm_env, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    ckpt.mkdir(), out.mkdir()
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH -N2 --ntasks-per-node=2 --time=5 --requeue --open-mode=append -o {tmp_path}/job.out
echo "attempt ${{SLURM_RESTART_COUNT:-0}}"
srun --kill-on-bad-exit=1 {PY} {PREEMPT} {ckpt} {out} --slow-first-attempt
""")
    job = sbatch(str(script), env=slurm_env)
    # The uninterrupted run, under fabric-run on 4 processes, meanwhile (the requeue waits ~11 s anyway).
    ref_ckpt, ref_out = tmp_path / "ref_ckpt", tmp_path / "ref_out"
    ref_ckpt.mkdir(), ref_out.mkdir()
    reference = subprocess.Popen([PY, "-m", "fabric_lite.cli", "--accelerator", "cpu", "--devices", "4", str(PREEMPT),
                                  str(ref_ckpt), str(ref_out)], env=slurm_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    try:
        # Preempt once the first attempt is training (0.1 s a step: 60 steps leave time for the signal).
        progress, deadline = out / "progress-0", time.monotonic() + 240
        while time.monotonic() < deadline and not (progress.exists() and int(progress.read_text() or 0) >= 3):
            assert job_state(job, slurm_env).get("JobState") not in _ENDED, (tmp_path / "job.out").read_text()
            time.sleep(0.2)
        signalled = run(["scancel", "--signal=USR1", job], slurm_env, timeout=30)  # to every task of the job's steps
        assert signalled.returncode == 0, signalled.stderr
        state = wait_for_job(job, slurm_env)  # a requeued job is PENDING, not ended, until its second run ends
        log = (tmp_path / "job.out").read_text()
        assert (state.get("JobState"), state.get("Restarts")) == ("COMPLETED", "1"), f"{state}\n{log}"
    finally:
        ref_log, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_log

    # every rank stopped, and saved, at the same step; one checkpoint of that step
    stops = {int((out / f"stop-rank{r}").read_text()) for r in range(4)}
    assert len(stops) == 1, stops
    stop = stops.pop()
    assert 3 <= stop < 60 and sorted(p.name for p in ckpt.iterdir()) == [f"step-{stop}.ckpt"]
    assert "attempt 0" in log and "attempt 1" in log and f"requeueing SLURM job {job}" in log
    assert log.count("received SIGUSR1") == 4  # each rank got the signal itself
    # the requeued run resumed there, and ended where the uninterrupted run ended, bit for bit
    resumed = [json.loads((out / f"attempt1-rank{r}.json").read_text()) for r in range(4)]
    uninterrupted = [json.loads((ref_out / f"attempt0-rank{r}.json").read_text()) for r in range(4)]
    for r in resumed:
        assert (r["environment"], r["world_size"], r["job"], r["attempt"]) == ("slurm", 4, job, 1)
        assert (r["start"], r["resumed_from"], r["stopped_at"]) == (stop, f"step-{stop}.ckpt", None)
        assert r["weights"] == uninterrupted[0]["weights"]
    assert uninterrupted[0]["environment"] == "torchelastic" and uninterrupted[0]["stopped_at"] is None


# ------------------------------------------------------------------------------------ misconfigurations
def check_only(*slurm_flags: str, devices: int, num_nodes: int = 1) -> list[str]:
    # No --kill-on-bad-exit: every task fails on its own, and killing the others could lose the first one's output.
    return ["srun", "--time=3", *slurm_flags, PY, str(TRAIN), "unused", "--devices", str(devices),
            "--num-nodes", str(num_nodes), "--check-only"]


@pytest.fixture(scope="module")
def misconfigured(slurm_env, tmp_path_factory):
    """The misconfigured launches, run side by side (each only imports fabric_lite and resolves the plan)."""
    out = tmp_path_factory.mktemp("misconfigured")
    inside_salloc = (
        f"{shlex.join(check_only('-n2', devices=2, num_nodes=2))} 2> {out}/srun.err; echo srun_rc=$?; "
        f"{PY} {TRAIN} unused --devices 2 --num-nodes 2 --check-only 2> {out}/shell.err; echo shell_rc=$?; "
        f"echo job=$SLURM_JOB_ID"
    )
    commands = {
        # first and alone for a moment: with all 8 CPUs of node1 free, SLURM puts both tasks there
        "ntasks": check_only("-n2", "-J", "fl-ntasks", devices=1, num_nodes=2),
        "devices": check_only("-N1", "--ntasks-per-node=2", devices=4),
        "salloc": ["salloc", "-N2", "--ntasks-per-node=2", "--time=3", "bash", "-c", inside_salloc],
    }
    processes = {}
    for name, command in commands.items():
        processes[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                           env=slurm_env)
        if name == "ntasks":
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and processes[name].poll() is None and "RUNNING" not in run(
                    ["squeue", "-h", "-n", "fl-ntasks", "-o", "%T"], slurm_env, timeout=30).stdout:
                time.sleep(0.2)
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(commands[name], process.returncode, stdout, stderr)
    results["salloc_srun"] = subprocess.CompletedProcess([], 1, "", (out / "srun.err").read_text())
    results["salloc_shell"] = subprocess.CompletedProcess([], 1, "", (out / "shell.err").read_text())
    return results


def failed_hint(result) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if "ConfigurationError: " in line]
    assert lines, result.stderr
    return lines[0].split("ConfigurationError: ", 1)[1]


def test_ntasks_without_ntasks_per_node(misconfigured):
    # one process per node on 2 nodes was meant, but srun -n2 puts both tasks on node1 (it has the CPUs)
    assert failed_hint(misconfigured["ntasks"]) == (
        "Fabric(devices=1, num_nodes=2) expects 2 process(es), 1 on each of 2 node(s), but srun started 2 task(s) on 1 "
        "node(s), 2 per node (SLURM_STEP_TASKS_PER_NODE=2). --ntasks (-n) without --ntasks-per-node lets SLURM put "
        "the tasks wherever it finds free CPUs, so how many run on each node is not fixed; each task is one process "
        "and its local rank picks its device. Fix: start 2 task(s) as Fabric expects: srun -N2 --ntasks-per-node=1 "
        "python slurm_train.py in a job of 2 nodes (salloc or sbatch -N2 --ntasks-per-node=1); or use the tasks "
        "SLURM started: Fabric(devices=2, num_nodes=1)."
    )


def test_devices_not_matching_tasks_per_node(misconfigured):
    assert failed_hint(misconfigured["devices"]) == (
        "Fabric(devices=4, num_nodes=1) expects 4 process(es), 4 on each of 1 node(s), but srun started 2 task(s) on 1 "
        "node(s), 2 per node (SLURM_STEP_TASKS_PER_NODE=2). Each SLURM task is one process of the run, so the counts "
        "must agree. Fix: start 4 task(s) as Fabric expects: srun -N1 --ntasks-per-node=4 python slurm_train.py; or "
        "use the tasks SLURM started: Fabric(devices=2, num_nodes=1)."
    )


def test_srun_with_wrong_counts_inside_salloc(misconfigured):
    # An interactive allocation of 2 nodes x 2 tasks; inside it, `srun -n2` overrides the layout, and a plain
    # `python` runs in the allocation's shell, outside srun.
    result = misconfigured["salloc"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "srun_rc=0" not in result.stdout and "shell_rc=0" not in result.stdout, result.stdout
    job = result.stdout.split("job=")[1].split()[0]
    assert failed_hint(misconfigured["salloc_srun"]) == (
        "Fabric(devices=2, num_nodes=2) expects 4 process(es), 2 on each of 2 node(s), but srun started 2 task(s) on 2 "
        "node(s), 1 per node (SLURM_STEP_TASKS_PER_NODE=1(x2)). This srun runs inside job " + job + ", allocated with "
        "--ntasks-per-node=2 on 2 node(s), but a task count given to srun itself (-n/-N) overrides the allocation's "
        "layout. Fix: start 4 task(s) as Fabric expects: srun -N2 --ntasks-per-node=2 python slurm_train.py (or plain "
        "`srun python slurm_train.py`, which takes the allocation's layout); or use the tasks SLURM started: "
        "Fabric(devices=1, num_nodes=2)."
    )
    shell_hint = failed_hint(misconfigured["salloc_shell"])
    assert shell_hint.startswith(
        f"Fabric(devices=2, num_nodes=2) runs in the shell of SLURM allocation {job} (salloc), outside srun")
    assert shell_hint.endswith("Fix: start the script with srun, which makes one task per process on every node: "
                               "srun -N2 --ntasks-per-node=2 python slurm_train.py.")


def test_cluster_script_is_idempotent_and_reports_its_state(slurm_env):
    began = time.monotonic()
    again = run(["bash", str(CLUSTER), "start"], slurm_env, timeout=60)
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    assert "state: " in again.stdout and "SLURM_CONF=" in again.stdout
    assert time.monotonic() - began < 30
    status = run(["bash", str(CLUSTER), "status"], slurm_env, timeout=60)
    assert status.returncode == 0 and "node[1-2]" in status.stdout, status.stdout + status.stderr
    bad = run(["bash", str(CLUSTER), "restart"], slurm_env, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr and "Fix:" in bad.stderr
