"""Stopping a job: a scheduler's SIGTERM, `timeout` or Ctrl-C ends every rank within 2 s even while rank 0 is blocked
in a collective or the rendezvous; Ctrl-C to a spawn/fork parent stops its ranks; a script that cannot be re-run is
refused at once; and the failure report names the rank that really failed. Real processes and real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "_scripts"
STOP_JOB = str(SCRIPTS / "stop_job.py")
SAVE_FAILS = str(SCRIPTS / "save_fails_on_one_rank.py")
STOP_WITHIN_S = 2.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and /proc")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _env(tmp_path: Path) -> dict[str, str]:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmpdir)}


def _log_folders(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "tmp").glob("fabric_lite_logs_*"))


def _start(cmd: list[str], tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start the job and wait until both ranks wrote their pid and rank 0 is blocked."""
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"pid{r}").exists() for r in (0, 1)):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc, [])
            raise AssertionError(f"the job did not start: {proc.communicate()}")
        time.sleep(0.05)
    time.sleep(1.5)  # rank 0 is now waiting in the all_reduce / the rendezvous, rank 1 asleep
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in (0, 1)]
    assert all(_alive(p) for p in pids) and not (tmp_path / "joined").exists()
    return proc, pids


def _kill(proc: subprocess.Popen, pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def _signal_and_time(proc: subprocess.Popen, pids: list[int], sig: int, target: int) -> tuple[float, str]:
    """Send ``sig`` to ``target``; seconds until the launching process and every rank are gone, and stderr."""
    sent = time.monotonic()
    os.kill(target, sig)
    try:
        while (proc.poll() is None or any(_alive(p) for p in pids)) and time.monotonic() - sent < 30:
            time.sleep(0.01)
        elapsed = time.monotonic() - sent
        _, stderr = proc.communicate(timeout=30)
    finally:
        _kill(proc, pids)
    assert not [p for p in pids if _alive(p)], f"orphans left: {stderr}"
    return elapsed, stderr


@pytest.mark.parametrize(
    ("sig", "where", "preemption"),
    [
        (signal.SIGTERM, "collective", False),  # a scheduler's SIGTERM, `timeout`
        (signal.SIGINT, "collective", False),  # Ctrl-C
        (signal.SIGTERM, "rendezvous", False),
        (signal.SIGINT, "rendezvous", False),
        (signal.SIGTERM, "collective", True),  # the Preemption plugin's handler cannot run while blocked either
    ],
)
def test_stop_signal_ends_a_job_whose_rank_0_is_blocked(sig, where, preemption, tmp_path):
    cmd = [sys.executable, STOP_JOB, str(tmp_path), "--where", where, *(["--preemption"] if preemption else [])]
    proc, pids = _start(cmd, tmp_path)
    elapsed, stderr = _signal_and_time(proc, pids, sig, target=proc.pid)
    assert proc.returncode != 0, stderr
    assert f"fabric_lite: rank 0 received {signal.Signals(sig).name}; stopping every rank." in stderr
    assert elapsed < STOP_WITHIN_S, f"the job took {elapsed:.2f} s to stop after {signal.Signals(sig).name}"
    assert _log_folders(tmp_path) == [], "the log folder of the other ranks was left behind"


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_notebook"])
def test_ctrl_c_to_the_spawn_parent_stops_every_rank(strategy, tmp_path):
    proc, pids = _start([sys.executable, STOP_JOB, str(tmp_path), "--strategy", strategy], tmp_path)
    elapsed, stderr = _signal_and_time(proc, pids, signal.SIGINT, target=proc.pid)  # the parent alone
    assert proc.returncode != 0, stderr
    assert "fabric_lite: the launching process was interrupted (SIGINT); stopped 2 running rank(s)." in stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert elapsed < STOP_WITHIN_S, f"the ranks took {elapsed:.2f} s to stop"


def test_script_that_cannot_be_rerun_is_refused_at_once(tmp_path):
    code = "from fabric_lite import Fabric\nFabric(accelerator='cpu', devices=2, strategy='ddp').launch()\nprint('launched')\n"
    fix = ("which cannot be run again. Fix: save the code to a file and run it as `python train.py` or "
           "`fabric-run --devices 2 train.py`, or use strategy='ddp_spawn'")
    runs = {
        "standard input (python - < script.py)": dict(args=["-"], input=code),
        "python -c": dict(args=["-c", code], input=None),
    }
    for source, how in runs.items():
        started = time.monotonic()
        result = subprocess.run([sys.executable, *how["args"]], input=how["input"], capture_output=True, text=True,
                                timeout=60, env=_env(tmp_path))
        assert result.returncode != 0 and "launched" not in result.stdout, result.stderr
        assert (f"ConfigurationError: Fabric(strategy='ddp', devices=2) re-runs your script once per extra process, "
                f"but the code comes from {source}, {fix}") in result.stderr
        assert time.monotonic() - started < 30, "it waited instead of failing"
    assert _log_folders(tmp_path) == []


def _root_cause_line(output: str) -> str:
    start = output.index("fabric_lite: Root cause:")
    return output[start:].splitlines()[0]


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_rank_that_leaves_a_collective_with_code_0_is_the_root_cause(strategy, tmp_path):
    result = subprocess.run([sys.executable, STOP_JOB, str(tmp_path), "--where", "early-exit", "--strategy", strategy],
                            capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    line = _root_cause_line(output)
    assert line.startswith("fabric_lite: Root cause: rank 1 (local rank 1) on "), output
    assert line.endswith(" exited (code 0) before rank 0 finished its collective."), output
    assert _log_folders(tmp_path) == []


def test_rank_that_exits_0_without_joining_the_rendezvous_stops_the_job(tmp_path):
    started = time.monotonic()
    result = subprocess.run([sys.executable, STOP_JOB, str(tmp_path), "--where", "no-join"],
                            capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    line = _root_cause_line(output)
    assert line.endswith(" exited (code 0) without joining the rendezvous, where rank 0 waits for it."), output
    assert time.monotonic() - started < 60, "rank 0 waited in the rendezvous"
    assert _log_folders(tmp_path) == []


@pytest.mark.parametrize("launcher", ["subprocess", "spawn"])
def test_failed_sharded_save_on_rank_1_blames_rank_1(launcher, tmp_path):
    result = subprocess.run([sys.executable, SAVE_FAILS, str(tmp_path), "--launcher", launcher],
                            capture_output=True, text=True, timeout=180, env=_env(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "[failed on rank 1]" in output, output  # the error every rank raised
    line = _root_cause_line(output)
    assert line.startswith("fabric_lite: Root cause: rank 1 (local rank 1) on "), output
    assert "Root cause: rank 0" not in output, output
    assert _log_folders(tmp_path) == []


def test_a_finished_run_leaves_no_log_folder(tmp_path):
    env = _env(tmp_path)  # a private TMPDIR
    before = _log_folders(tmp_path)
    result = subprocess.run([sys.executable, STOP_JOB, str(tmp_path), "--where", "finish"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert all((tmp_path / f"pid{r}").exists() for r in (0, 1))
    assert _log_folders(tmp_path) == before
