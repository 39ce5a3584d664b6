"""Preemption with real signals sent to real processes: every rank stops and saves at the same step, exits 0,
rank 0 runs `scontrol requeue` (a fake scontrol on PATH records its arguments), and a second run resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fabric_lite import Fabric
from fabric_lite.errors import ConfigurationError
from fabric_lite.plugins import Preemption

sys.path.insert(0, str(Path(__file__).parents[1] / "strategies"))
from launch_commands import command

SCRIPT = str(Path(__file__).parent / "_scripts" / "preempt_train.py")


def _env(tmp_path: Path, job_id: str | None = "4242") -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "scontrol"
    fake.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PATH=f"{bin_dir}:{env['PATH']}",
               SCONTROL_LOG=str(tmp_path / "scontrol.log"))
    if job_id:
        env["SLURM_JOB_ID"] = job_id
    return env


def _wait_for(paths: list[Path], proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {paths}: {proc.communicate()}")
        time.sleep(0.05)


def _preempt(cmd: list[str], out: Path, env: dict[str, str], ranks: int, signal_rank: int | None, sig: int,
             returncode: int = 0) -> str:
    """Send ``sig`` to one rank (``signal_rank=None``: to the launching process) once all ranks train."""
    out.mkdir(exist_ok=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for([out / f"pid{r}" for r in range(ranks)], proc)
    time.sleep(0.3)  # a few steps in
    os.kill(proc.pid if signal_rank is None else int((out / f"pid{signal_rank}").read_text()), sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == returncode, stdout + stderr
    stopped = [json.loads((out / f"stopped{r}.json").read_text()) for r in range(ranks)]
    steps = {s["step"] for s in stopped}
    assert len(steps) == 1, f"ranks stopped at different steps: {stopped}"
    for rank in range(ranks) if signal_rank is None else [signal_rank]:
        assert stopped[rank]["signal"] == signal.Signals(sig).name
        assert f"rank {rank} received {signal.Signals(sig).name}" in stderr
    saved = torch.load(out / "last.ckpt", weights_only=True)
    assert saved["step"] == steps.pop() > 0
    return stderr


def _resume(cmd: list[str], out: Path, env: dict[str, str], ranks: int) -> None:
    saved = torch.load(out / "last.ckpt", weights_only=True)["step"]
    result = subprocess.run([*cmd, "--max-steps", "3"], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    resumed = [json.loads((out / f"resumed{r}.json").read_text()) for r in range(ranks)]
    assert [r["step"] for r in resumed] == [saved] * ranks
    assert all((out / f"finished{r}.json").exists() for r in range(ranks))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_single_process_stops_saves_requeues_and_resumes(sig, tmp_path):
    out, env = tmp_path / "out", _env(tmp_path)
    cmd = [sys.executable, SCRIPT, str(out)]
    stderr = _preempt(cmd, out, env, ranks=1, signal_rank=0, sig=sig)
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"]
    assert "requeueing SLURM job 4242 (`scontrol requeue 4242`)" in stderr
    _resume(cmd, out, env, ranks=1)
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"], "requeued although not preempted"


def test_no_slurm_job_no_requeue(tmp_path):
    out, env = tmp_path / "out", _env(tmp_path, job_id=None)
    _preempt([sys.executable, SCRIPT, str(out)], out, env, ranks=1, signal_rank=0, sig=signal.SIGUSR1)
    assert not (tmp_path / "scontrol.log").exists()


def test_array_job_requeues_its_task(tmp_path):
    out, env = tmp_path / "out", _env(tmp_path)
    env.update(SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3")
    _preempt([sys.executable, SCRIPT, str(out)], out, env, ranks=1, signal_rank=0, sig=signal.SIGTERM)
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 77_3"]


@pytest.mark.parametrize(("launcher", "signal_rank", "sig"), [
    ("subprocess", 1, signal.SIGUSR1),
    ("subprocess", 0, signal.SIGTERM),
    ("fabric-run", 1, signal.SIGTERM),
    ("spawn", 1, signal.SIGUSR1),
])
def test_two_ranks_stop_at_the_same_step(launcher, signal_rank, sig, tmp_path):
    out, env = tmp_path / "out", _env(tmp_path)
    cmd = command(launcher, SCRIPT, str(out))
    _preempt(cmd, out, env, ranks=2, signal_rank=signal_rank, sig=sig)
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"], "rank 0 requeues exactly once"
    if launcher in ("subprocess", "fabric-run") and signal_rank == 1:  # one resume per launcher keeps the file fast
        _resume(cmd, out, env, ranks=2)


@pytest.mark.parametrize(("launcher", "returncode"), [("fabric-run", 128 + signal.SIGUSR1), ("spawn", 0)])
def test_signal_to_the_launching_process_reaches_every_rank(launcher, returncode, tmp_path):
    """fabric-run (torchrun) and the spawn parent pass the signal on; no worker is left behind."""
    out, env = tmp_path / "out", _env(tmp_path)
    stderr = _preempt(command(launcher, SCRIPT, str(out)), out, env, ranks=2, signal_rank=None, sig=signal.SIGUSR1,
                      returncode=returncode)
    if launcher == "fabric-run":
        assert "fabric-run: stopped by SIGUSR1; the workers were sent the same signal." in stderr
    pids = [int((out / f"pid{r}").read_text()) for r in range(2)]
    assert not [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text()
                .rsplit(")", 1)[1].split()[0]], "a worker outlived the launcher"


def test_second_identical_signal_ends_the_process(tmp_path):
    code = (
        "import os, signal, time\n"
        "from fabric_lite import Fabric\nfrom fabric_lite.plugins import Preemption\n"
        "fabric = Fabric(accelerator='cpu', plugins=[Preemption(requeue=False)]); fabric.launch()\n"
        "os.kill(os.getpid(), signal.SIGUSR1); time.sleep(0.1)\n"
        "assert fabric.should_stop()\n"
        "os.kill(os.getpid(), signal.SIGUSR1); time.sleep(5)\n"
        "print('not reached')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                            env=_env(tmp_path, job_id=None))
    assert result.returncode == -signal.SIGUSR1, result.stdout + result.stderr
    assert "not reached" not in result.stdout


def test_should_stop_without_plugin_is_false_and_cheap():
    fabric = Fabric(accelerator="cpu")
    assert fabric.should_stop() is False


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"signals": ("SIGKILL",)}, "Preemption(signals=('SIGKILL',)) is not a signal a process can catch. Choose one of:"),
    ({"signals": ("SIGNOPE",)}, "Preemption(signals=('SIGNOPE',)) is not a signal a process can catch."),
    ({"signals": ()}, "Preemption(signals=()) catches no signal, so nothing could ever stop the loop. Fix:"),
    ({"requeue": "yes"}, "Preemption(requeue='yes') is not a known requeue mode. Choose one of: 'auto', True, False."),
    ({"requeue_command": ""}, "Preemption(requeue_command=()) is empty. Fix:"),
])
def test_bad_preemption_arguments(kwargs, message):
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Preemption(**kwargs)


def test_two_preemption_plugins_are_refused():
    with pytest.raises(ConfigurationError, match=re.escape("Fabric(plugins=[...]) received 2 Preemption plugins")):
        Fabric(accelerator="cpu", plugins=[Preemption(), Preemption()])
