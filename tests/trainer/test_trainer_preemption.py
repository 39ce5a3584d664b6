"""Trainer(plugins=[Preemption()]) with real signals sent to real processes: every rank stops at the same step and
saves one exact checkpoint, the processes exit 0, rank 0 requeues (a fake scontrol on PATH), and a second run
resumes (automatically, or with ckpt_path="last") to the very weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainer_helpers import Regressor, loader, quiet_trainer

from fabric_lite.errors import CheckpointError
from fabric_lite.trainer import Callback
from fabric_lite.trainer.callbacks import ModelCheckpoint

SCRIPT = str(Path(__file__).parent / "_scripts" / "trainer_preempt.py")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "scontrol"
    fake.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PATH=f"{bin_dir}:{env['PATH']}",
               SCONTROL_LOG=str(tmp_path / "scontrol.log"), SLURM_JOB_ID="4242", **extra)
    return env


def _interrupt(out: Path, devices: int, env: dict[str, str], signal_rank: int) -> str:
    """Start the fit, wait until rank ``signal_rank`` sits at step STOP_AT, send it SIGUSR1 (that rank only)."""
    proc = subprocess.Popen([sys.executable, SCRIPT, str(out), str(devices), "interrupt"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file, deadline = out / f"pid{signal_rank}", time.time() + 120
    while not pid_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"the run never reached the signal point: {proc.communicate()}")
        time.sleep(0.05)
    time.sleep(0.05)  # the pid is written before the file is closed: read it whole
    os.kill(int(pid_file.read_text()), signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    assert f"rank {signal_rank} received SIGUSR1" in stderr
    return stdout + stderr


@pytest.mark.parametrize(("devices", "stop_at", "signal_rank", "resume_with", "epoch", "phase"), [
    # 8 batches an epoch: stopped at batch 2 of epoch 1, resumed with fit(ckpt_path="last")
    (1, 10, 0, "last", 1, "in_epoch"),
    # after the last batch of epoch 0: the resumed fit first runs that epoch's end
    (1, 8, 0, "auto", 0, "epoch_batches_done"),
    # 4 batches a rank an epoch: rank 1 alone gets the signal; the requeued job resumes by itself
    (2, 6, 1, "auto", 1, "in_epoch"),
])
def test_signal_stops_every_rank_at_one_step_and_the_resumed_fit_is_exact(devices, stop_at, signal_rank, resume_with, epoch,
                                                                          phase, tmp_path):
    out = tmp_path / "out"
    env = _env(tmp_path, STOP_AT=str(stop_at), SIGNAL_RANK=str(signal_rank))
    output = _interrupt(out, devices, env, signal_rank)
    stopped = [json.loads((out / f"stopped{r}.json").read_text()) for r in range(devices)]
    for report in stopped:
        assert report["preempted"] is True
        assert (report["global_step"], report["epoch"]) == (stop_at, epoch)  # the same step on every rank
        assert report["hooks"] == ["teardown_fit"]  # not finished: no on_train_end / on_fit_end
    saved = torch.load(out / "root" / "checkpoints" / "preempted.ckpt", weights_only=True)
    assert (saved["global_step"], saved["epoch"], saved["loops"]["phase"]) == (stop_at, epoch, phase)
    assert f"every rank stopped at epoch {epoch} step {stop_at}" in output
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"], "rank 0 requeues exactly once"

    result = subprocess.run([sys.executable, SCRIPT, str(out), str(devices), "resume", resume_with], env=env,
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("resuming from the preemption checkpoint" in result.stdout) == (resume_with == "auto")
    for rank in range(devices):
        resumed = json.loads((out / f"resumed{rank}.json").read_text())
        assert (resumed["start_step"], resumed["preempted"], resumed["global_step"]) == (stop_at, False, 3 * 8 // devices)
        assert resumed["hooks"] == ["on_train_end", "on_fit_end", "teardown_fit"]
        weights = torch.load(out / f"weights{rank}.pt", weights_only=True)
        for name, value in weights["reference"].items():
            assert torch.equal(weights["resumed"][name], value), name  # bit for bit the uninterrupted run
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"], "requeued although not preempted"
    assert not (out / "root" / "checkpoints" / "preempted.ckpt").exists()  # a finished fit removes it: no later fit resumes from it


class StartStep(Callback):
    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step


def test_last_takes_the_newer_of_last_ckpt_and_the_preemption_checkpoint(tmp_path):
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)]).fit(
        Regressor(), loader(32))  # last.ckpt at step 8
    writer = quiet_trainer(tmp_path, max_steps=3)
    writer.fit(Regressor(), loader(32))
    writer.save_checkpoint(writer.preemption_ckpt_path)  # newer, step 3
    start = StartStep()
    reader = quiet_trainer(tmp_path, max_steps=5, callbacks=[start, ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)])
    reader.fit(Regressor(), loader(32), ckpt_path="last")
    assert start.step == 3
    # Without the plugin nothing resumes by itself, and the finished fit removes the preemption checkpoint.
    assert not os.path.exists(reader.preemption_ckpt_path)
    writer.save_checkpoint(writer.preemption_ckpt_path)
    start = StartStep()
    quiet_trainer(tmp_path, max_steps=2, callbacks=[start]).fit(Regressor(), loader(32))
    assert start.step == 0


def test_last_without_any_checkpoint_names_the_preemption_path(tmp_path):
    trainer = quiet_trainer(tmp_path, max_steps=1)
    path = str(tmp_path / "checkpoints" / "preempted.ckpt")
    with pytest.raises(CheckpointError, match=r"ckpt_path='last'\) has no last checkpoint to load: no ModelCheckpoint callback "
                                              rf"is configured, and there is no preemption checkpoint {path}\. Fix: "):
        trainer.fit(Regressor(), loader(8), ckpt_path="last")
