"""A rank that never reaches a collective: with a short timeout the job prints the root cause and every rank's
stack (the hung one included) before it is torn down, exits non-zero and leaves no process behind."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabric_lite import Fabric
from fabric_lite.errors import ConfigurationError
from fabric_lite.plan import resolve
from fabric_lite.strategies.ddp import DDPStrategy
from fabric_lite.strategies.fsdp import FSDPStrategy

SCRIPT = str(Path(__file__).parent / "_scripts" / "fail_mode.py")
TIMEOUT_S = 3  # the rendezvous waits at least 5 minutes whatever this is (ranks start seconds apart)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_hang_under_the_subprocess_launcher_dumps_stacks_and_tears_down(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, SCRIPT, str(tmp_path), "--mode", "hang", "--bad-rank", "1", "--timeout", str(TIMEOUT_S),
           "--strategy", "ddp", "--devices", "2"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
    gone = time.time()
    output = result.stderr
    assert result.returncode != 0, output
    # the root cause comes first, then the hung rank's stack (where it waits), then which ranks were absent
    cause = output.index("fabric_lite: Root cause: a collective timed out on rank 0 (")
    assert f"after {TIMEOUT_S} s: at least one rank never reached it" in output
    assert re.search(r"root cause", output[:cause], flags=re.IGNORECASE) is None, output
    stack = output.index("fabric_lite: Python stack of rank 1 (pid ")
    assert cause < stack < output.index("fail_mode.py\", line 18 in hung_rank_waits_here", stack)
    summary = output.index("ranks that timed out waiting in the collective: [0]; ranks that did not reach it: [1].")
    assert stack < summary < output.index("Traceback"), "the stacks come before the failure report"
    assert "Timed out waiting 3000ms" in output  # rank 0's own traceback (gloo's timeout error)
    # torn down within the timeout plus a few seconds, nothing left behind
    entered = float((tmp_path / "entered_at").read_text())
    assert gone - entered < TIMEOUT_S + 30, "the job did not stop soon after the timeout"
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in (0, 1)]
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)], output


def test_collective_timeout_reaches_the_strategy_from_the_environment():
    plan = resolve(accelerator="cpu", strategy="ddp", devices=2, env={"FABRIC_LITE_COLLECTIVE_TIMEOUT": "7.5"},
                   available={"cpu": 1})
    assert plan.collective_timeout == 7.5
    os.environ["FABRIC_LITE_COLLECTIVE_TIMEOUT"] = "7.5"
    try:
        fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
        assert fabric.strategy.timeout == datetime.timedelta(seconds=7.5)
        fabric = Fabric(accelerator="cpu", strategy=FSDPStrategy(), devices=2)
        assert fabric.strategy.timeout == datetime.timedelta(seconds=7.5)
    finally:
        del os.environ["FABRIC_LITE_COLLECTIVE_TIMEOUT"]
    assert Fabric(accelerator="cpu", strategy="ddp", devices=2).strategy.timeout == datetime.timedelta(minutes=30)
    own = DDPStrategy(timeout=datetime.timedelta(seconds=9))
    assert Fabric(accelerator="cpu", strategy=own, devices=2).strategy.timeout == datetime.timedelta(seconds=9)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: DDPStrategy(timeout=5),
     "DDPStrategy(timeout=5) must be a datetime.timedelta, not int. Fix: DDPStrategy(timeout=datetime.timedelta(seconds=5))."),
    (lambda: FSDPStrategy(timeout=datetime.timedelta(0)), "FSDPStrategy(timeout=datetime.timedelta(0)) is not positive"),
    (lambda: resolve(env={"FABRIC_LITE_COLLECTIVE_TIMEOUT": "soon"}, available={"cpu": 1}),
     "FABRIC_LITE_COLLECTIVE_TIMEOUT='soon' is not a positive number of seconds. Fix: FABRIC_LITE_COLLECTIVE_TIMEOUT=300"),
    (lambda: resolve(strategy=DDPStrategy(timeout=datetime.timedelta(seconds=9)), devices=2, accelerator="cpu",
                     env={"FABRIC_LITE_COLLECTIVE_TIMEOUT": "5"}, available={"cpu": 1}),
     "DDPStrategy(timeout=datetime.timedelta(seconds=9)) conflicts with FABRIC_LITE_COLLECTIVE_TIMEOUT='5'."),
])
def test_bad_timeouts(make, message):
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        make()


def test_rank_that_exited_before_a_timed_out_collective_is_the_root_cause(tmp_path):
    """Rank 1 exits with code 0 but a process it forked keeps its sockets open: rank 0 sees no closed connection and
    times out. The report names rank 1, not the rank that waited."""
    script = str(Path(__file__).parents[1] / "launchers" / "_scripts" / "stop_job.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "FABRIC_LITE_COLLECTIVE_TIMEOUT": str(TIMEOUT_S)}
    try:
        result = subprocess.run([sys.executable, script, str(tmp_path), "--where", "hidden-exit"], check=False,
                                capture_output=True, text=True, timeout=120, env=env)
    finally:
        grandchild = tmp_path / "grandchild"
        if grandchild.exists():
            try:
                os.kill(int(grandchild.read_text()), 9)
            except ProcessLookupError:
                pass
    output = result.stderr
    assert result.returncode != 0, output
    first = output[output.index("fabric_lite: Root cause:"):].splitlines()[0]
    assert first == (f"fabric_lite: Root cause: rank 1 exited before rank 0 finished its collective; rank 0 "
                     f"({first.split('(')[1].split(')')[0]}) timed out waiting after {TIMEOUT_S} s. Fix: let every rank "
                     f"run the same collectives to the end (no rank may return or exit early)."), output
    assert "fabric_lite: rank 1 has already exited: it left before the collective; no stack." in output
    assert "Root cause: rank 1 (local rank 1) on " in output and " exited (code 0) before rank 0 finished its collective." in output
    assert "Root cause: rank 0" not in output and "timed out on rank 0" not in output, output
