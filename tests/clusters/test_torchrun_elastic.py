"""torchrun and elastic restarts: plain torchrun is detected as torchelastic, and under fabric-run --max-restarts a run
whose rank crashes once is restarted by torch.distributed.run and resumes from the newest complete checkpoint,
ending with the parameters of a run that never crashed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

TRAIN = Path(__file__).parent / "_scripts" / "elastic_train.py"
PY = sys.executable
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "FABRIC_LITE_"))},
       "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd, timeout=240):
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=ENV)


def reports(out: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    assert [r["rank"] for r in found] == [0, 1], found
    return found


def test_fabric_run_max_restarts_resumes_after_a_crash_like_an_uninterrupted_torchrun(tmp_path):
    # Uninterrupted, under plain torchrun: the torchelastic environment is detected.
    plain_ckpt, plain_out = tmp_path / "plain_ckpt", tmp_path / "plain_out"
    plain_ckpt.mkdir(), plain_out.mkdir()
    plain = run([PY, "-m", "torch.distributed.run", "--nproc-per-node", "2", f"--master-port={free_port()}",
                 str(TRAIN), str(plain_ckpt), str(plain_out)])
    assert plain.returncode == 0, plain.stdout + plain.stderr
    uninterrupted = reports(plain_out)
    for r in uninterrupted:
        assert (r["environment"], r["launcher"], r["world_size"], r["local_rank"]) == ("torchelastic", "external", 2, r["rank"])
        assert (r["restart"], r["start"], r["resumed_from"]) == (0, 0, None)

    # Rank 1 dies at step 5 of the first attempt, after the checkpoint of step 4 (saved every 2 steps).
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    ckpt.mkdir(), out.mkdir()
    crashed = run([PY, "-m", "fabric_lite.cli", "--accelerator", "cpu", "--devices", "2", "--max-restarts", "1",
                   str(TRAIN), str(ckpt), str(out), "--crash-at", "5"])
    assert crashed.returncode == 0, crashed.stdout + crashed.stderr
    resumed = reports(out)
    for r in resumed:
        assert r["environment"] == "torchelastic"
        # the restarted attempt wrote the reports: it started from the newest complete checkpoint, step 4
        assert (r["restart"], r["start"], r["resumed_from"]) == (1, 4, "step-4.ckpt"), r
    assert sorted(p.name for p in ckpt.glob("step-*.ckpt")) == sorted(f"step-{s}.ckpt" for s in (2, 4, 6, 8, 10, 12))
    assert resumed[0]["weights"] == resumed[1]["weights"] == uninterrupted[0]["weights"]


def test_fabric_run_dry_run_shows_max_restarts():
    result = run([PY, "-m", "fabric_lite.cli", "--devices", "2", "--max-restarts", "3", "--dry-run", "train.py"])
    assert result.returncode == 0, result.stderr
    command = result.stdout.split("Command:")[1]
    assert "-m torch.distributed.run" in command and "--max-restarts=3" in command and "--nproc-per-node=2" in command
