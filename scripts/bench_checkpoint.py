"""Cost of fabric_lite's safe checkpoint files against raw torch.save / torch.load, measured in one run.

    python scripts/bench_checkpoint.py [--sizes-mb 100 10] [--repeats 7] [--folder DIR]

For each size, a state dict of float32 tensors (a few large and many small, like a model) is saved and loaded
``--repeats`` times each way, alternating, and the medians are printed:

  raw      torch.save(obj, path): no fsync, no atomic rename
  +fsync   torch.save into an open file, then fsync: the least a durable write costs
  atomic   temp file, torch.save, fsync, rename: fabric.save's recipe before checksums (written out here)
  fabric   atomic_save as it is: the same, plus the seal of the zip index (its CRC-32 in the zip comment)
  loads    torch.load(weights_only=True) against load_checkpoint_file (checks every CRC-32 and the seal first)

Ratios are speed ratios (time of the reference / time of fabric): ``raw/fabric`` is fabric save against raw
torch.save (the goal: >= 0.9), ``atomic/fabric`` what the integrity data costs on top of an atomic write. Pass ``--folder`` on the disk
checkpoints go to (the default, the system's temporary folder, may be a tmpfs where fsync costs nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fabric_lite.checkpoint.io import atomic_save, load_checkpoint_file


def state_of(megabytes: float) -> dict[str, torch.Tensor]:
    """~``megabytes`` MB of float32: 4 big matrices holding 90% and 200 small tensors the rest."""
    total = int(megabytes * 1e6 / 4)
    big, small = int(total * 0.9) // 4, int(total * 0.1) // 200
    state = {f"layer{i}.weight": torch.randn(big) for i in range(4)}
    state.update({f"norm{i}.bias": torch.randn(small) for i in range(200)})
    return state


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def raw_save(obj, path):
    torch.save(obj, path)


def raw_save_fsync(obj, path):
    with open(path, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_without_seal(obj, path):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[100.0, 10.0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--folder", default=tempfile.gettempdir())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        print(f"folder {folder} ({os.statvfs(folder).f_bsize}-byte blocks), torch {torch.__version__}, "
              f"{args.repeats} repeats, medians in ms")
        print(f"{'size':>8} {'raw':>7} {'+fsync':>7} {'atomic':>7} {'fabric':>7} {'raw/fabric':>10} "
              f"{'atomic/fabric':>13} | {'raw load':>8} {'fabric load':>11} {'ratio':>6}")
        for megabytes in args.sizes_mb:
            obj = state_of(megabytes)
            paths = {name: Path(folder) / f"{name}-{megabytes}.pt" for name in ("raw", "fsync", "atomic", "fabric")}
            savers = {"raw": raw_save, "fsync": raw_save_fsync, "atomic": atomic_without_seal, "fabric": atomic_save}
            times: dict[str, list[float]] = {k: [] for k in (*savers, "raw_load", "fabric_load")}
            for _ in range(args.repeats):  # alternate, so that drifts in the machine's load hit every variant alike
                for name, save in savers.items():
                    times[name].append(timed(lambda: save(obj, paths[name])))
                times["raw_load"].append(timed(lambda: torch.load(paths["raw"], weights_only=True)))
                times["fabric_load"].append(timed(lambda: load_checkpoint_file(paths["fabric"])))
            m = {k: statistics.median(v) * 1000 for k, v in times.items()}
            print(f"{megabytes:>6.0f}MB {m['raw']:>7.1f} {m['fsync']:>7.1f} {m['atomic']:>7.1f} {m['fabric']:>7.1f} "
                  f"{m['raw'] / m['fabric']:>10.2f} {m['atomic'] / m['fabric']:>13.2f} | {m['raw_load']:>8.1f} "
                  f"{m['fabric_load']:>11.1f} {m['raw_load'] / m['fabric_load']:>6.2f}")
            for path in paths.values():
                path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
