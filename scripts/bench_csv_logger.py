"""fabric_lite's CSVLogger against Lightning's, writing the same rows in one run.

    python scripts/bench_csv_logger.py [--rows 1000000] [--repeats 3] [--log-every 50] [--val-every 10000]
                                       [--lightning fabric,pytorch] [--lightning-path DIR] [--json FILE]

Each side runs in its own fresh Python process (so neither sees the other's imports or caches), alternating,
``--repeats`` times. A process times a loop of ``--rows`` calls of ``logger.log_metrics`` as a training loop makes
them: three Python floats per row (loss, lr, grad_norm) at ``step = i * log_every``, plus ``val_loss`` every
``--val-every`` rows (a metric name that first appears mid-run, so each logger widens its header once), then
``finalize("success")``; the loggers flush at their default interval (every 100 rows). The timer covers the loop
and the finalize, not the import. The child then re-reads its file with the csv module and reports the number of
data rows, so both sides are checked to have written everything.

Lightning comes from ``--lightning-path`` (default: $LIGHTNING_REF, as set by ``source scripts/_lightning_ref.sh``);
``fabric`` is ``lightning.fabric.loggers.CSVLogger``, ``pytorch`` is ``lightning.pytorch.loggers.CSVLogger``.
Printed: the median seconds per side, and the speed ratio (Lightning's median / fabric_lite's; > 1: fabric_lite
is faster). Without Lightning only fabric_lite's time is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import csv, glob, os, sys, time
side, folder, rows, log_every, val_every = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
if side == "fabric_lite":
    from fabric_lite.loggers import CSVLogger
    logger = CSVLogger(folder)
elif side == "lightning.fabric":
    from lightning.fabric.loggers import CSVLogger
    logger = CSVLogger(folder)
else:
    from lightning.pytorch.loggers import CSVLogger
    logger = CSVLogger(folder)
start = time.perf_counter()
for i in range(rows):
    metrics = {"loss": 1.0 / (i + 1), "lr": 0.001, "grad_norm": 0.5 + (i % 7) * 0.125}
    if val_every and i % val_every == val_every - 1:
        metrics["val_loss"] = 2.0 / (i + 1)
    logger.log_metrics(metrics, step=i * log_every)
logger.finalize("success")
seconds = time.perf_counter() - start
(path,) = glob.glob(os.path.join(folder, "**", "metrics.csv"), recursive=True)
with open(path, newline="") as f:
    written = sum(1 for _ in csv.reader(f)) - 1
print(f"RESULT {seconds} {written}")
"""

SIDES = {"fabric": "lightning.fabric", "pytorch": "lightning.pytorch"}


def run_side(side: str, rows: int, log_every: int, val_every: int, lightning_path: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "PYTHONPATH")}
    paths = [str(ROOT)] if side == "fabric_lite" else [lightning_path or ""]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    with tempfile.TemporaryDirectory(prefix="bench_csv_") as folder:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, side, folder, str(rows), str(log_every), str(val_every)],
            env=env, capture_output=True, text=True, check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"{side} child failed:\n{done.stdout}{done.stderr[-3000:]}")
    seconds, written = done.stdout.strip().splitlines()[-1].split()[1:]
    if int(written) != rows:
        raise SystemExit(f"{side} wrote {written} rows, {rows} were logged")
    return float(seconds)


def lightning_available(path: str | None) -> bool:
    if not path:
        return False
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-c", "import lightning"], env=env, capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=50, help="steps between logged rows (the step column)")
    parser.add_argument("--val-every", type=int, default=10_000, help="rows between val_loss values (0: never)")
    parser.add_argument("--lightning", default="fabric", help="comma list of Lightning loggers: fabric, pytorch")
    parser.add_argument("--lightning-path", default=os.environ.get("LIGHTNING_REF"))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    wanted = [s for s in args.lightning.split(",") if s]
    for name in wanted:
        if name not in SIDES:
            parser.error(f"--lightning {name!r} is not one of {', '.join(SIDES)}")
    have_lightning = lightning_available(args.lightning_path)
    if not have_lightning:
        print("Lightning not importable (set --lightning-path or source scripts/_lightning_ref.sh): fabric_lite only")
    sides = ["fabric_lite"] + ([SIDES[s] for s in wanted] if have_lightning else [])

    times: dict[str, list[float]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for side in sides:
            times[side].append(run_side(side, args.rows, args.log_every, args.val_every, args.lightning_path))
            print(f"repeat {repeat + 1}/{args.repeats} {side:18s} {times[side][-1]:8.3f} s", flush=True)

    medians = {side: statistics.median(values) for side, values in times.items()}
    print(f"\n{args.rows} rows, log_every={args.log_every}, val_every={args.val_every}, medians of {args.repeats}:")
    result: dict[str, object] = {"rows": args.rows, "repeats": args.repeats, "seconds": times, "medians": medians,
                                 "ratios": {}}
    for side, median in medians.items():
        line = f"  {side:18s} {median:8.3f} s  ({median / args.rows * 1e6:.2f} us/row)"
        if side != "fabric_lite":
            ratio = median / medians["fabric_lite"]
            result["ratios"][side] = ratio  # type: ignore[index]
            line += f"  ratio {side}/fabric_lite: {ratio:.2f}x"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
