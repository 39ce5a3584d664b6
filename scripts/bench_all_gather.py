"""fabric.all_gather against the raw torch.distributed gather, 2 processes, one run.

Raw is ``all_gather_into_tensor`` where the backend has it (NCCL) and ``all_gather`` into a list plus
``torch.stack`` where it does not (gloo). fabric.all_gather first exchanges a small header (shape,
dtype, device type) so that uneven shapes are concatenated and mismatched dtypes raise on every rank;
``same_shape=True`` skips it. Each round times ``--iters`` calls of each side in alternating order;
rank 0 prints the median microseconds per call and the median per-round ratio against raw.

    .venv/bin/python scripts/bench_all_gather.py [--rounds 15] [--iters 200] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fabric_lite import Fabric

SIZES = (1, 1024, 262_144, 4_194_304)


def raw_gather(tensor: torch.Tensor, world: int) -> torch.Tensor:
    if tensor.device.type == "cuda":
        out = torch.empty((world, *tensor.shape), dtype=tensor.dtype, device=tensor.device)
        dist.all_gather_into_tensor(out, tensor)
        return out
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor)
    return torch.stack(parts)


def worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    fabric = Fabric(accelerator=args.device, devices=world, strategy="ddp")  # processes exist: external launcher
    fabric.launch()
    sides = {
        "raw": lambda t: raw_gather(t, world),
        "fabric": lambda t: fabric.all_gather(t),
        "fabric same_shape": lambda t: fabric.all_gather(t, same_shape=True),
    }
    if rank == 0:
        print(f"{'elements':>10} {'raw us':>10} {'fabric us':>10} {'ratio':>7} {'same_shape us':>14} {'ratio':>7}")
    for size in SIZES:
        tensor = torch.full((size,), float(rank), device=fabric.device)
        iters = max(5, args.iters // max(1, size // 65536))
        for fn in sides.values():
            assert torch.equal(fn(tensor).cpu(), torch.stack([torch.full((size,), float(r)) for r in range(world)]))
        times: dict[str, list[float]] = {name: [] for name in sides}
        for round_index in range(args.rounds):
            order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
            for name in order:
                fn = sides[name]
                dist.barrier()
                if fabric.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(iters):
                    fn(tensor)
                if fabric.device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) / iters * 1e6)
        if rank == 0:
            med = {name: statistics.median(values) for name, values in times.items()}
            ratio = {name: statistics.median(t / r for t, r in zip(times[name], times["raw"])) for name in sides}
            print(f"{size:>10} {med['raw']:>10.1f} {med['fabric']:>10.1f} {ratio['fabric']:>7.3f} "
                  f"{med['fabric same_shape']:>14.1f} {ratio['fabric same_shape']:>7.3f}", flush=True)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(worker, args=(2, port, args), nprocs=2)


if __name__ == "__main__":
    main()
