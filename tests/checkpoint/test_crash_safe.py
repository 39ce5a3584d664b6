"""Crash-safe checkpoints: savers killed with SIGKILL at random moments never leave a checkpoint that looks
complete but is not, and latest_checkpoint always names one that loads (one process, 2-rank DDP, 2-rank FSDP).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from fabric_lite.checkpoint import latest_checkpoint
from fabric_lite.checkpoint.sharded import MARKER, recover
from fabric_lite.errors import CheckpointError

SCRIPT = str(Path(__file__).parent / "_scripts" / "crash_saver.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
PLAN = {"single": 16, "ddp": 10, "fsdp": 6}  # 32 kills in all


def test_savers_killed_at_random_moments_leave_only_complete_checkpoints(tmp_path):
    command = [sys.executable, SCRIPT, str(tmp_path), "20240", *(f"{s}:{n}" for s, n in PLAN.items())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    reports = {r["strategy"]: r for r in map(json.loads, result.stdout.splitlines())}
    print("\n".join(json.dumps(r) for r in reports.values()))  # the figures: pytest -s shows them
    assert set(reports) == set(PLAN)
    for strategy, trials in PLAN.items():
        report = reports[strategy]
        # After every kill: the latest checkpoint loaded completely (all shards), held its step's values and
        # was not older than the last save that returned; or none existed yet because none had finished.
        assert report["problems"] == [], (strategy, report["problems"])
        assert report["trials"] == trials
        assert report["trials"] - report["none_yet"] >= 1, report  # the check did load checkpoints
    # Kills did land inside writes (a temporary file or an unmarked staging folder was left behind).
    assert sum(r["killed_mid_save"] for r in reports.values()) >= 5, reports


# ------------------------------------------------------------------------------------------ latest_checkpoint
def file(path, mtime, valid=True):
    if valid:
        torch.save({"step": 1}, path)
    else:
        path.write_bytes(b"PK\x03\x04 cut off")
    os.utime(path, ns=(mtime, mtime))
    return path


def folder(path, mtime, marked=True):
    path.mkdir()
    (path / ".metadata").write_bytes(b"x")
    if marked:
        (path / MARKER).write_text("done\n")
        os.utime(path / MARKER, ns=(mtime, mtime))
    return path


def test_latest_complete_file_or_folder_wins_and_incomplete_ones_never_do(tmp_path):
    t = time.time_ns()
    assert latest_checkpoint(tmp_path) is None
    file(tmp_path / "step-1.ckpt", t)
    folder(tmp_path / "step-2", t + 10)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-2"
    # newer, but incomplete: a temp file of atomic_save, a truncated file, an unmarked folder, a log
    file(tmp_path / ".step-3.ckpt.x1y2.tmp", t + 20)
    file(tmp_path / "step-3.ckpt", t + 20, valid=False)
    folder(tmp_path / "step-4", t + 30, marked=False)
    os.utime(tmp_path / "step-4", ns=(t + 30, t + 30))
    (tmp_path / "metrics.csv").write_text("step,loss\n")
    # the truncated file and the unmarked folder are named in warnings; the temp file and the log are not
    with pytest.warns(UserWarning) as record:
        assert latest_checkpoint(tmp_path) == tmp_path / "step-2"
    skipped = f"latest_checkpoint({str(tmp_path)!r}) skipped "
    fix = ". Fix: delete it or move it out of the folder once you no longer need it."
    assert [str(w.message) for w in record] == [
        f"{skipped}{str(tmp_path / 'step-4')!r}: it has no COMPLETE marker, so the save that wrote it did not finish{fix}",
        f"{skipped}{str(tmp_path / 'step-3.ckpt')!r}: it is not an intact torch checkpoint: its zip structure is broken "
        f"(File is not a zip file){fix}",
    ]
    (tmp_path / "step-6.ckpt").write_bytes(b"")  # newest, empty: a copy that was cut off
    (tmp_path / "step-7.pt").write_bytes(b"not a checkpoint")
    for name, mtime in (("step-6.ckpt", t + 50), ("step-7.pt", t + 60)):
        os.utime(tmp_path / name, ns=(mtime, mtime))
    with pytest.warns(UserWarning) as record:
        assert latest_checkpoint(tmp_path) == tmp_path / "step-2"
    assert [str(w.message).split(": ", 1)[1].split(fix)[0] for w in record[:2]] == [
        "it is not a torch zip archive (cut off, damaged, or another format)", "it is empty"]
    file(tmp_path / "step-5.ckpt", t + 70)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing newer is damaged now
        assert latest_checkpoint(tmp_path) == tmp_path / "step-5.ckpt"


def test_equal_times_go_to_the_name_that_sorts_last_naturally(tmp_path):
    t = time.time_ns()
    for step in (9, 10, 2):
        file(tmp_path / f"step-{step}.ckpt", t)
    assert latest_checkpoint(tmp_path).name == "step-10.ckpt"


def test_a_sharded_save_killed_between_its_renames_is_found_and_finished_by_recover(tmp_path):
    t = time.time_ns()
    file(tmp_path / "step-1.ckpt", t)
    # Killed after moving the old folder aside and before renaming the new one into place:
    folder(tmp_path / ".last.previous", t + 10)
    folder(tmp_path / ".last.partial", t + 20)
    assert latest_checkpoint(tmp_path) == tmp_path / ".last.partial"
    # A previous copy stands in only while the final name is missing.
    (tmp_path / ".last.partial" / MARKER).unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / ".last.previous"
    folder(tmp_path / "last", t + 5)
    assert latest_checkpoint(tmp_path) == tmp_path / "last"
    # recover (run by the next save to that path) finishes a marked staging folder, clears the rest
    shutil.rmtree(tmp_path / "last")
    (tmp_path / ".last.partial" / MARKER).write_text("done\n")
    recover(tmp_path / "last")
    assert (tmp_path / "last" / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step-1.ckpt"]
    folder(tmp_path / ".last.partial", t + 30, marked=False)  # a save killed before its marker
    recover(tmp_path / "last")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step-1.ckpt"]


def test_latest_checkpoint_of_a_missing_folder_or_a_file(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(
        f"latest_checkpoint({str(tmp_path / 'nope')!r}) needs a folder of checkpoints, but it does not exist. "
        "Fix: pass the folder you give fabric.save paths in")):
        latest_checkpoint(tmp_path / "nope")
    path = file(tmp_path / "a.ckpt", time.time_ns())
    with pytest.raises(CheckpointError, match=re.escape("needs a folder of checkpoints, but that is a file")):
        latest_checkpoint(path)
