"""Fail-fast timing: seconds from one rank failing (raise or SIGKILL) to every process of the job gone.

Rank 1 records the time just before it fails while rank 0 waits in an all_reduce; the job is over
when the launching command returns and no recorded pid is alive. Prints the median per launcher
and mode (goal: within 1.5 s). Run: .venv/bin/python scripts/bench_failfast.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "strategies"))
from launch_commands import command  # noqa: E402

SCRIPT = str(ROOT / "tests" / "strategies" / "_scripts" / "fail_one_rank.py")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def measure(launcher: str, mode: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([*command(launcher, SCRIPT, out), "--mode", mode], capture_output=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        pids = [int(Path(out, f"pid{r}").read_text()) for r in (0, 1)]
        while any(alive(p) for p in pids):
            time.sleep(0.01)
        gone = time.time()
        return gone - float(Path(out, "failed_at").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--launchers", nargs="+", default=["subprocess", "spawn", "fabric-run", "torchrun"])
    args = parser.parse_args()
    print(f"{'launcher':12s} {'mode':6s} {'median s':>9s} {'max s':>7s}  goal <= 1.5 s")
    for launcher in args.launchers:
        for mode in ("raise", "kill"):
            times = [measure(launcher, mode) for _ in range(args.repeats)]
            median = statistics.median(times)
            print(f"{launcher:12s} {mode:6s} {median:9.2f} {max(times):7.2f}  {'PASS' if median <= 1.5 else 'FAIL'}")


if __name__ == "__main__":
    main()
