"""One rank of N fails while the others wait in a collective: it raises, is SIGKILLed, or hangs (never
reaches the collective; the others time out after --timeout seconds). Every process records its pid;
the failing rank records when it failed (or when the others' collective started, for a hang)."""

import argparse
import datetime
import os
import signal
import time

import torch

from fabric_lite import Fabric
from fabric_lite.strategies.ddp import DDPStrategy


def hung_rank_waits_here():
    time.sleep(3600)  # the hung rank: never reaches the collective


def run(fabric, out_dir, mode, bad_rank):
    rank = fabric.global_rank
    with open(os.path.join(out_dir, f".pid{rank}"), "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(os.path.join(out_dir, f".pid{rank}"), os.path.join(out_dir, f"pid{rank}"))  # never read half-written
    fabric.barrier()
    if rank == bad_rank:
        if mode == "hang":
            hung_rank_waits_here()
        time.sleep(0.5)
        with open(os.path.join(out_dir, "failed_at"), "w") as handle:
            handle.write(repr(time.time()))
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"rank {rank} broke on purpose")
    if mode == "hang" and rank == (bad_rank + 1) % fabric.world_size:
        with open(os.path.join(out_dir, "entered_at"), "w") as handle:
            handle.write(repr(time.time()))
    fabric.all_reduce(torch.ones(1))  # the others wait here for a partner that never comes
    time.sleep(60)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--mode", choices=["raise", "kill", "hang"], default="raise")
    parser.add_argument("--bad-rank", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=None, help="collective timeout in seconds")
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--devices", type=int, default=None)
    args = parser.parse_args()
    kwargs = {"accelerator": "cpu"}
    if args.strategy:
        start = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork"}[args.strategy]
        timeout = datetime.timedelta(seconds=args.timeout) if args.timeout else None
        kwargs["strategy"] = DDPStrategy(start_method=start, timeout=timeout)
    if args.devices:
        kwargs["devices"] = args.devices
    fabric = Fabric(**kwargs)
    if fabric.plan.launcher in ("spawn", "fork"):
        fabric.launch(run, args.out_dir, args.mode, args.bad_rank)
    else:
        fabric.launch()
        run(fabric, args.out_dir, args.mode, args.bad_rank)


if __name__ == "__main__":
    main()
