#!/usr/bin/env bash
# Import cost of fabric_lite against torch alone, measured in one run, and a check that
# `import fabric_lite` pulls in none of the heavy optional modules.
#
# Each sample is a fresh interpreter that times its own import with time.perf_counter (interpreter
# start-up is left out). `import torch` and `import fabric_lite` alternate, and which one goes first
# alternates every pair, so drift of the machine falls on both alike. Prints the median seconds of
# each and the ratio fabric_lite/torch (goal <= 1.10); the ratio is a benchmark, not a test, and does
# not change the exit status. The exit status is 1 when a heavy module (torch._dynamo, deepspeed,
# torch_xla, tensorboardX, or any of their submodules) is in sys.modules after `import fabric_lite`.
#
# Usage:  scripts/bench_import.sh
# Environment:
#   FABRIC_LITE_BENCH_REPEATS=N     samples of each import (default 15)
#   FABRIC_LITE_BENCH_PYTHON=PATH   use this interpreter instead of setting up .venv (tests pass theirs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${FABRIC_LITE_BENCH_PYTHON:-}" ]; then
  PY="$FABRIC_LITE_BENCH_PYTHON"
else
  source scripts/_venv.sh examples
fi
REPEATS="${FABRIC_LITE_BENCH_REPEATS:-15}"

"$PY" - "$REPEATS" <<'EOF'
"""Time `import torch` and `import fabric_lite` in fresh interpreters; list heavy modules loaded."""
import datetime
import statistics
import subprocess
import sys

GOAL = 1.10
HEAVY = ("torch._dynamo", "deepspeed", "torch_xla", "tensorboardX")
TIMER = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
PROBE = (
    "import sys; import {module}; import torch; heavy = {heavy!r}; print(torch.__version__); "
    "print(','.join(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy))))"
)


def run(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"FAIL: {sys.executable} -c {code!r} exited with {done.returncode}:\n{done.stderr}")
    return done.stdout.splitlines()


def sample(module: str) -> float:
    return float(run(TIMER.format(module=module))[-1])


def heavy_modules(module: str) -> tuple[str, str]:
    """(torch version, comma-separated heavy modules) in a fresh interpreter after `import module`."""
    lines = run(PROBE.format(module=module, heavy=HEAVY))
    return lines[-2], lines[-1]


repeats = int(sys.argv[1])
if repeats < 1:
    sys.exit("FABRIC_LITE_BENCH_REPEATS must be at least 1")
version, baseline = heavy_modules("torch")
print(f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
print(f"python:  {sys.executable} ({sys.version.split()[0]})   torch: {version}")
print(f"repeats: {repeats} fresh interpreters per import, interleaved")

sample("torch")  # warm the file-system cache so that the first timed sample is not an outlier
times = {"torch": [], "fabric_lite": []}
for i in range(repeats):
    order = ("torch", "fabric_lite") if i % 2 == 0 else ("fabric_lite", "torch")
    for module in order:
        times[module].append(sample(module))
torch_s = statistics.median(times["torch"])
fabric_s = statistics.median(times["fabric_lite"])
ratio = fabric_s / torch_s
per_pair = statistics.median(f / t for f, t in zip(times["fabric_lite"], times["torch"]))
print(f"import torch        median {torch_s:.4f} s   (min {min(times['torch']):.4f}, max {max(times['torch']):.4f})")
print(f"import fabric_lite  median {fabric_s:.4f} s   (min {min(times['fabric_lite']):.4f}, max {max(times['fabric_lite']):.4f})")
print(f"ratio fabric_lite/torch: {ratio:.4f} (median of per-pair ratios {per_pair:.4f}); "
      f"goal <= {GOAL:.2f}: {'PASS' if ratio <= GOAL else 'FAIL'}")

_, found = heavy_modules("fabric_lite")
print(f"heavy modules after import torch (baseline, info): {baseline or 'none'}")
print(f"heavy modules after import fabric_lite: {found or 'none'}")
if found:
    print(f"FAIL: import fabric_lite loaded {found}")
    sys.exit(1)
print("heavy-module check: PASS")
EOF
