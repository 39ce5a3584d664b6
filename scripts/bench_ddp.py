"""DDP step overhead on 2 CPU processes (gloo): raw DistributedDataParallel against fabric_lite's DDP, one run.

Both sides live in the same two processes and share one process group; each round times ``--steps``
steps of the raw loop and of the fabric loop, the first side alternating per round. Rank 0 prints the
median ms/step of each, the median of the per-round ratios fabric/raw (goal <= 1.02) and checks that
both models end with the same parameters.

    .venv/bin/python scripts/bench_ddp.py [--rounds 21] [--steps 50] [--width 256]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fabric_lite import Fabric


def worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=world, strategy="ddp")  # processes exist: external launcher
    fabric.launch()
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(args.width, args.width), nn.ReLU(), nn.Linear(args.width, args.width), nn.ReLU(),
                         nn.Linear(args.width, 10))
    raw = DistributedDataParallel(copy.deepcopy(base))
    raw_opt = torch.optim.SGD(raw.parameters(), lr=0.01)
    mine = copy.deepcopy(base)
    model, opt = fabric.setup(mine, torch.optim.SGD(mine.parameters(), lr=0.01))
    g = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(64, args.width, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(8)]

    def raw_step(i: int) -> None:
        x, y = batches[i % 8]
        raw_opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(raw(x), y).backward()
        raw_opt.step()

    def fabric_step(i: int) -> None:
        x, y = batches[i % 8]
        opt.zero_grad(set_to_none=True)
        fabric.backward(nn.functional.cross_entropy(model(x), y))
        opt.step()

    sides = {"raw": raw_step, "fabric": fabric_step}
    for step in sides.values():
        for i in range(args.steps):
            step(i)
    times: dict[str, list[float]] = {"raw": [], "fabric": []}
    for round_ in range(args.rounds):
        order = ["raw", "fabric"] if round_ % 2 == 0 else ["fabric", "raw"]
        for name in order:
            dist.barrier()
            start = time.perf_counter()
            for i in range(args.steps):
                sides[name](i)
            elapsed = torch.tensor([time.perf_counter() - start])
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # a step is as slow as the slowest rank
            times[name].append(elapsed.item() / args.steps * 1e3)
    same = all(torch.equal(a, b) for a, b in zip(raw.module.parameters(), model.module.parameters()))
    if rank == 0:
        ratios = [f / r for f, r in zip(times["fabric"], times["raw"])]
        ratio = statistics.median(ratios)
        q = statistics.quantiles(ratios, n=4)
        print(f"DDP on {world} CPU processes (gloo), MLP width {args.width}, batch 64 per rank, "
              f"{args.rounds} rounds x {args.steps} steps, torch {torch.__version__}")
        print(f"raw DDP      median {statistics.median(times['raw']):.3f} ms/step")
        print(f"fabric DDP   median {statistics.median(times['fabric']):.3f} ms/step")
        print(f"ratio fabric/raw (median of per-round ratios): {ratio:.4f}  [p25 {q[0]:.3f}, p75 {q[2]:.3f}]  "
              f"goal <= 1.02: {'PASS' if ratio <= 1.02 else 'FAIL'}")
        print(f"same parameters after identical steps: {'OK' if same else 'MISMATCH'}")
    fabric.strategy.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    from fabric_lite.utilities.distributed import find_free_port

    mp.start_processes(worker, args=(2, find_free_port(), args), nprocs=2, start_method="spawn")


if __name__ == "__main__":
    main()
