"""A killed fabric-run (torch elastic's agent) takes its workers with it, even one blocked in a collective."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    rank = os.environ["RANK"]
    import torch
    from fabric_lite import Fabric
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    (out / f"pid{rank}").write_text(str(os.getpid()))
    if rank == "1":
        time.sleep(120)  # never reaches the collective: rank 0 waits in it (for the 30-minute timeout)
    fabric.all_reduce(torch.ones(1))
    (out / "joined").write_text("unexpected")
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_killed_fabric_run_leaves_no_worker_behind(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    agent = subprocess.Popen(
        [sys.executable, "-m", "fabric_lite.cli", "--accelerator", "cpu", "--devices", "2", str(script), str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    pids = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all((tmp_path / f"pid{r}").exists() for r in (0, 1)):
            time.sleep(0.2)
        pids = [int((tmp_path / f"pid{r}").read_text()) for r in (0, 1)]
        time.sleep(2)  # rank 0 is in the all_reduce, rank 1 asleep
        assert _alive(pids[0]) and _alive(pids[1]) and not (tmp_path / "joined").exists()
        agent.kill()
        agent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        assert [_alive(pid) for pid in pids] == [False, False], "a rank outlived the fabric-run agent that started it"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if agent.poll() is None:
            agent.kill()
