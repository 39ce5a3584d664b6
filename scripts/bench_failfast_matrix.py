"""Fail-fast matrix: kill -9, an exception and a hang in one rank of 2 and of 4, under every launcher.

For each (launcher, world size, mode) it runs ``--trials`` jobs of tests/utilities/_scripts/fail_mode.py
and checks each one: the job exits non-zero, the root cause is printed first (naming the failed rank;
for a hang, the collective timeout), the hung rank's Python stack is shown (hang), and no process of
the job is left (a ps scan by process group, by a marker in the command line, and by the recorded
pids). It measures the seconds from the death (kill, raise) or from the timeout's expiry (hang) to the
moment every process of the job is gone. Goals: 1.5 s after a death, 2 s after a timeout.
The failing rank rotates over the trials (rank 0 included, except a kill -9 of the subprocess
launcher's rank 0, which is the launcher itself).

Run: .venv/bin/python scripts/bench_failfast_matrix.py [--trials 5] [--worlds 2 4] [--timeout 5]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "strategies"))
from launch_commands import command

SCRIPT = str(ROOT / "tests" / "utilities" / "_scripts" / "fail_mode.py")
GOAL_S = {"kill": 1.5, "raise": 1.5, "hang": 2.0}


def job_processes(pgid: int, marker: str, pids: list[int]) -> list[int]:
    """Live (non-zombie) processes of the job: same process group, the marker in argv, or a recorded pid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as handle:
                stat = handle.read()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, group = fields[0], int(fields[2])
        if state == "Z" or pid == os.getpid():
            continue
        if group == pgid or marker in argv or pid in pids:
            found.append(pid)
    return found


def job_command(launcher: str, out: str, mode: str, world: int, bad_rank: int, timeout: float) -> tuple[list, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("FABRIC_LITE_COLLECTIVE_TIMEOUT", None)
    args = [out, "--mode", mode, "--bad-rank", str(bad_rank)]
    if launcher in ("subprocess", "spawn"):
        cmd = command(launcher, SCRIPT, *args, "--timeout", str(timeout), devices=world)  # DDPStrategy(timeout=...)
    elif launcher == "fabric-run":
        cmd = command(launcher, SCRIPT, *args, devices=world)
        cmd[3:3] = ["--collective-timeout", str(timeout)]  # after "-m fabric_lite.cli"
    else:
        cmd = command(launcher, SCRIPT, *args, devices=world)
        env["FABRIC_LITE_COLLECTIVE_TIMEOUT"] = str(timeout)
    return cmd, env


def trial(launcher: str, world: int, mode: str, bad_rank: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="failfast_") as out:
        cmd, env = job_command(launcher, out, mode, world, bad_rank, timeout)
        started = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        chunks: list[str] = []
        import threading

        reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
        reader.start()
        pids: list[int] = []
        gone_at = None
        while time.time() - started < 300:
            pids = [int(Path(out, f"pid{r}").read_text()) for r in range(world) if Path(out, f"pid{r}").exists()]
            if proc.poll() is not None and not job_processes(proc.pid, out, pids):
                gone_at = time.time()
                break
            time.sleep(0.01)
        orphans = job_processes(proc.pid, out, pids)
        for pid in orphans:  # clean up so that later trials are not disturbed
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
        output = "".join(chunks)
        if mode == "hang":
            entered = Path(out, "entered_at")
            origin = float(entered.read_text()) + timeout if entered.exists() else None
        else:
            failed = Path(out, "failed_at")
            origin = float(failed.read_text()) if failed.exists() else None
    seconds = gone_at - origin if gone_at is not None and origin is not None else float("inf")
    return {
        "seconds": seconds,
        "nonzero": proc.returncode not in (0, None),
        "root_cause": root_cause_first(output, mode, bad_rank),
        "stack": mode != "hang" or (f"Python stack of rank {bad_rank} " in output and "hung_rank_waits_here" in output),
        "no_orphans": not orphans,
        "output": output,
    }


def root_cause_first(output: str, mode: str, bad_rank: int) -> bool:
    """The first root-cause report in the output names the right failure."""
    match = re.search(r"root cause", output, flags=re.IGNORECASE)
    if match is None:
        return False
    block = output[match.start(): match.start() + 600]
    if mode == "hang":
        return block.startswith("Root cause: a collective timed out")
    if block.startswith("Root cause: rank"):  # fabric_lite's launchers
        return block.startswith(f"Root cause: rank {bad_rank} ")
    return re.search(rf"rank\s*: {bad_rank} ", block) is not None  # torchrun's report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--modes", nargs="+", default=["kill", "raise", "hang"])
    parser.add_argument("--launchers", nargs="+", default=["spawn", "subprocess", "fabric-run", "torchrun"])
    parser.add_argument("--timeout", type=float, default=5.0, help="collective timeout of the hang trials (s)")
    parser.add_argument("--show-failures", action="store_true", help="print the output of failed trials")
    args = parser.parse_args()
    print(f"{'launcher':11s} {'ranks':>5s} {'mode':5s} {'ok':>5s} {'exit!=0':>7s} {'cause':>5s} {'stack':>5s} "
          f"{'no orph':>7s} {'worst s':>7s} {'median s':>8s} goal", flush=True)
    totals: dict[str, int] = defaultdict(int)
    for launcher in args.launchers:
        for world in args.worlds:
            for mode in args.modes:
                results = []
                for index in range(args.trials):
                    bad = index % world
                    if mode == "kill" and launcher == "subprocess" and bad == 0:
                        bad = 1  # rank 0 is the launcher itself there: nobody is left to report
                    result = trial(launcher, world, mode, bad, args.timeout)
                    result["bad"] = bad
                    results.append(result)
                times = sorted(r["seconds"] for r in results)
                checks = ("nonzero", "root_cause", "stack", "no_orphans")
                within = [r["seconds"] <= GOAL_S[mode] for r in results]
                ok = sum(all(r[c] for c in checks) and w for r, w in zip(results, within))
                counts = {c: sum(r[c] for r in results) for c in checks}
                n = len(results)
                totals["ok"] += ok
                totals["all"] += n
                print(f"{launcher:11s} {world:5d} {mode:5s} {ok:>2d}/{n:<2d} {counts['nonzero']:>4d}/{n:<2d} "
                      f"{counts['root_cause']:>2d}/{n:<2d} {counts['stack']:>2d}/{n:<2d} {counts['no_orphans']:>4d}/{n:<2d} "
                      f"{times[-1]:7.2f} {times[len(times) // 2]:8.2f} <= {GOAL_S[mode]} s", flush=True)
                if args.show_failures:
                    for r in results:
                        if not (all(r[c] for c in checks) and r["seconds"] <= GOAL_S[mode]):
                            print(f"--- failed trial (bad rank {r['bad']}, {r['seconds']:.2f} s, "
                                  f"{ {c: r[c] for c in checks} }):\n{r['output'][-3000:]}\n---", flush=True)
    print(f"all checks and goals met in {totals['ok']}/{totals['all']} trials")


if __name__ == "__main__":
    main()
