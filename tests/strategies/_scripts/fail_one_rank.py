"""Rank 1 fails (raises or is SIGKILLed) while rank 0 waits in a collective. Every process records its pid."""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/strategies
from script_launch import launch


def run(fabric, out_dir, mode):
    with open(os.path.join(out_dir, f"pid{fabric.global_rank}"), "w") as handle:
        handle.write(str(os.getpid()))
    fabric.barrier()
    if fabric.global_rank == 1:
        time.sleep(0.5)
        with open(os.path.join(out_dir, "failed_at"), "w") as handle:
            handle.write(repr(time.time()))
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("rank 1 broke on purpose")
    fabric.all_reduce(torch.ones(1))  # rank 0 waits here for a partner that never comes
    time.sleep(60)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--mode", choices=["raise", "kill"], default="raise")
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--devices", type=int, default=None)
    args = parser.parse_args()
    launch(run, args, args.out_dir, args.mode, accelerator="cpu")


if __name__ == "__main__":
    main()
