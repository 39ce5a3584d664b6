#!/usr/bin/env bash
# Launch overhead: wall time from command to exit of a 2-process no-op script through fabric-run,
# against torchrun --standalone directly; interleaved runs, medians and their ratio (goal <= 1.05).
# FABRIC_LITE_BENCH_REPEATS sets the number of runs of each (default 11).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh "examples"
REPEATS="${FABRIC_LITE_BENCH_REPEATS:-11}"
SCRIPT="$(mktemp -d)/noop.py"
printf 'import torch\n' > "$SCRIPT"
export OMP_NUM_THREADS=1
"$PY" - "$SCRIPT" "$REPEATS" <<'PYEOF'
import statistics, subprocess, sys, time
script, repeats = sys.argv[1], int(sys.argv[2])
py = sys.executable
commands = {
    "fabric-run": [py, "-m", "fabric_lite.cli", "--accelerator", "cpu", "--devices", "2", script],
    "torchrun": [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script],
}
times = {name: [] for name in commands}
for round_ in range(repeats + 1):
    order = list(commands) if round_ % 2 == 0 else list(reversed(commands))
    for name in order:
        start = time.perf_counter()
        subprocess.run(commands[name], check=True, capture_output=True)
        if round_ > 0:  # the first round warms the file cache
            times[name].append(time.perf_counter() - start)
med = {name: statistics.median(values) for name, values in times.items()}
ratio = med["fabric-run"] / med["torchrun"]
print(f"runs per command: {repeats} (interleaved, first round discarded)")
for name, value in med.items():
    print(f"{name:12s} median {value:.3f} s   (min {min(times[name]):.3f}, max {max(times[name]):.3f})")
print(f"ratio fabric-run / torchrun: {ratio:.3f}  (goal <= 1.05: {'PASS' if ratio <= 1.05 else 'FAIL'})")
PYEOF
