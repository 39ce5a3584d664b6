"""A sharded (FSDP) fabric.save that fails on rank 1 only: rank 1 may write no file over 32 KiB (RLIMIT_FSIZE, a
real OS limit), so its shard cannot be written. DCP gathers the failure and every rank raises the same error,
which names rank 1."""

import argparse
import os
import resource
import signal
from pathlib import Path

import torch

from fabric_lite import Fabric


def run(fabric, out: Path) -> None:
    (out / f"pid{fabric.global_rank}").write_text(str(os.getpid()))
    model = fabric.setup(torch.nn.Linear(256, 256))
    if fabric.global_rank == 1:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, resource.RLIM_INFINITY))
    fabric.save(out / "ckpt", {"model": model})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--launcher", default="subprocess", choices=["subprocess", "spawn"])
    args = parser.parse_args()
    start = "spawn" if args.launcher == "spawn" else "popen"
    from fabric_lite.strategies.fsdp import FSDPStrategy

    fabric = Fabric(accelerator="cpu", devices=2, strategy=FSDPStrategy(start_method=start) if start != "popen" else "fsdp")
    if args.launcher == "spawn":
        fabric.launch(run, Path(args.out))
    else:
        fabric.launch()
        run(fabric, Path(args.out))


if __name__ == "__main__":
    main()
