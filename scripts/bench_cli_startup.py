"""CLI start-up: `fabric run --devices N noop.py` from start to exit, fabric_lite against Lightning 2.6.6, and the
time of `import fabric_lite` against `import lightning.fabric`; interleaved runs, medians and ratios in one run.

The script is empty (`pass`), so the figures are the launcher's own cost: the CLI's imports, torch.distributed.run's
agent and rendezvous, starting N Python processes and collecting their exit. Both commands get the same flags
(`run --accelerator cpu --devices N --main-port <free port>`) and the same environment without OMP_NUM_THREADS, so
each sets its own default. Lightning runs as its `fabric` console script does (lightning.fabric.cli:_main), from the
folder of scripts/_lightning_ref.sh (never installed into the project venv). Besides wall time, the CPU seconds of
the whole process tree (user + sys of the children) are reported: they are what the command costs and vary less than
wall time on a shared machine.

    source scripts/_venv.sh "test,examples,tensorboard"; source scripts/_lightning_ref.sh
    $PY scripts/bench_cli_startup.py --repeats 11            # devices 1 and 2, plus the imports
    $PY scripts/bench_cli_startup.py --repeats 1 --devices 1 --warmup 0   # the smoke test's run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_REF = Path.home() / ".cache" / "fabric_lite" / "lightning-ref-2.6.6"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(command: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) of one run; fails loudly if the command fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11, help="measured runs of each command (default: 11)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first, to warm the file cache")
    parser.add_argument("--devices", default="1,2", help="process counts to launch, comma-separated (default: 1,2)")
    parser.add_argument("--lightning-ref", default=os.environ.get("LIGHTNING_REF", str(DEFAULT_REF)),
                        help="folder holding lightning 2.6.6 (scripts/_lightning_ref.sh sets $LIGHTNING_REF)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    py = sys.executable
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS" and not k.startswith("FABRIC_LITE_")}
    base.pop("PYTHONPATH", None)
    ref_env = {**base, "PYTHONPATH": args.lightning_ref}
    probe = subprocess.run([py, "-c", "import lightning, click; print(lightning.__version__)"], env=ref_env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"bench_cli_startup: Lightning is not importable from {args.lightning_ref!r}. Fix: "
              f"source scripts/_venv.sh \"test,examples,tensorboard\"; source scripts/_lightning_ref.sh, then pass "
              f"--lightning-ref \"$LIGHTNING_REF\".\n{probe.stderr[-1000:]}", file=sys.stderr)
        return 2
    version = probe.stdout.strip()
    workdir = tempfile.mkdtemp(prefix="bench_cli_")
    Path(workdir, "noop.py").write_text("pass\n")
    fabric_lite_cli = [py, "-c", "import sys; from fabric_lite.cli import fabric_main; sys.exit(fabric_main())"]
    lightning_cli = [py, "-c", "import sys; from lightning.fabric.cli import _main; sys.exit(_main())"]

    # name -> (command without the port, env); the port is added per run
    cases: dict[str, tuple[list[str], dict[str, str]]] = {}
    for devices in [int(d) for d in args.devices.split(",")]:
        flags = ["run", "--accelerator", "cpu", "--devices", str(devices)]
        cases[f"fabric_lite run --devices {devices}"] = ([*fabric_lite_cli, *flags], base)
        cases[f"lightning   run --devices {devices}"] = ([*lightning_cli, *flags], ref_env)
    imports = {
        "import fabric_lite": ([py, "-c", "import fabric_lite"], base),
        "import lightning.fabric": ([py, "-c", "import lightning.fabric"], ref_env),
    }
    walls: dict[str, list[float]] = {name: [] for name in [*cases, *imports]}
    cpus: dict[str, list[float]] = {name: [] for name in walls}
    for round_ in range(args.warmup + args.repeats):
        names = list(walls) if round_ % 2 == 0 else list(reversed(walls))  # interleaved, order alternating
        for name in names:
            if name in cases:
                command, env = cases[name]
                command = [*command, "--main-port", str(free_port()), "noop.py"]
            else:
                command, env = imports[name]
            wall, cpu = timed(command, env, workdir)
            if round_ >= args.warmup:
                walls[name].append(wall)
                cpus[name].append(cpu)

    median = {name: statistics.median(values) for name, values in walls.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpus.items()}
    print(f"lightning {version} from {args.lightning_ref}; {args.repeats} measured runs each "
          f"(interleaved, {args.warmup} warm-up round(s)); {os.cpu_count()} CPU cores; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'command':34s} {'wall median':>11s} {'[min, max]':>17s} {'CPU median':>11s}")
    for name in walls:
        print(f"{name:34s} {median[name]:9.3f} s  [{min(walls[name]):6.3f}, {max(walls[name]):6.3f}] "
              f"{median_cpu[name]:9.3f} s")
    pairs = [(f"fabric_lite run --devices {d}", f"lightning   run --devices {d}", f"fabric run --devices {d}")
             for d in args.devices.split(",")]
    pairs.append(("import fabric_lite", "import lightning.fabric", "import"))
    ratios = {}
    for ours, theirs, label in pairs:
        per_pair = statistics.median(a / b for a, b in zip(walls[ours], walls[theirs]))
        ratio, cpu_ratio = median[ours] / median[theirs], median_cpu[ours] / median_cpu[theirs]
        ratios[label] = {"wall": ratio, "wall_per_pair": per_pair, "cpu": cpu_ratio}
        print(f"ratio fabric_lite/lightning, {label:22s} wall {ratio:.3f} (per-pair median {per_pair:.3f})   "
              f"CPU {cpu_ratio:.3f}   goal < 1: {'PASS' if ratio < 1 else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "lightning": version, "repeats": args.repeats, "wall_s": walls, "cpu_s": cpus,
            "median_wall_s": median, "median_cpu_s": median_cpu, "ratios": ratios,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
