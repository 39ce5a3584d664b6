"""Stop latency: seconds from a stop signal to every process of a 2-rank CPU job being gone, median over trials.

Cases (rank 1 never reaches the all_reduce that rank 0 waits in, or never joins the rendezvous):

* SIGTERM / SIGINT to rank 0 of ``python train.py`` with ``strategy="ddp"`` (the subprocess launcher), blocked in a
  collective, and blocked in the rendezvous;
* SIGTERM to rank 0 blocked in a collective with the Preemption plugin installed;
* SIGINT to the parent of ``strategy="ddp_spawn"`` (what Ctrl-C or a notebook's "interrupt kernel" sends).

A case that has not stopped after ``--limit`` seconds counts as ``--limit`` (and is then killed).

    .venv/bin/python scripts/bench_stop.py [--trials 5] [--limit 30] [--only 'SIGINT to rank 0']
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = str(Path(__file__).resolve().parents[1] / "tests" / "launchers" / "_scripts" / "stop_job.py")
CASES = (
    ("SIGTERM to rank 0 in a collective (ddp)", signal.SIGTERM, ["--where", "collective"]),
    ("SIGINT to rank 0 in a collective (ddp)", signal.SIGINT, ["--where", "collective"]),
    ("SIGTERM to rank 0 in the rendezvous (ddp)", signal.SIGTERM, ["--where", "rendezvous"]),
    ("SIGINT to rank 0 in the rendezvous (ddp)", signal.SIGINT, ["--where", "rendezvous"]),
    ("SIGTERM to rank 0 in a collective, Preemption (ddp)", signal.SIGTERM, ["--where", "collective", "--preemption"]),
    ("SIGINT to the ddp_spawn parent", signal.SIGINT, ["--where", "collective", "--strategy", "ddp_spawn"]),
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def trial(sig: int, args: list[str], limit: float) -> tuple[float, int | None]:
    """One run: start the job, wait until rank 0 blocks, signal the launching process, time until all are gone."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, SCRIPT, out, *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        pids: list[int] = []
        try:
            deadline = time.monotonic() + 120
            while not all(os.path.exists(os.path.join(out, f"pid{r}")) for r in (0, 1)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the job did not start (exit code {proc.poll()})")
                time.sleep(0.05)
            time.sleep(1.5)  # rank 0 now waits in the collective / rendezvous
            pids = [int(Path(out, f"pid{r}").read_text()) for r in (0, 1)]
            sent = time.monotonic()
            os.kill(proc.pid, sig)
            while (proc.poll() is None or any(_alive(p) for p in pids)) and time.monotonic() - sent < limit:
                time.sleep(0.005)
            return min(time.monotonic() - sent, limit), proc.poll()
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--limit", type=float, default=30.0, help="seconds after which a case counts as not stopping")
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    args = parser.parse_args()
    print(f"{'case':<54} {'median s':>9} {'max s':>7}  exit codes")
    for name, sig, extra in CASES:
        if args.only not in name:
            continue
        times, codes = [], []
        for _ in range(args.trials):
            elapsed, code = trial(sig, extra, args.limit)
            times.append(elapsed)
            codes.append(code)
        print(f"{name:<54} {statistics.median(times):>9.2f} {max(times):>7.2f}  {sorted(set(codes), key=str)}", flush=True)


if __name__ == "__main__":
    main()
