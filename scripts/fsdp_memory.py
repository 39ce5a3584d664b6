"""Peak memory per rank when an FSDP model is built with init_module(empty_init=True) vs. built whole first.

Two CPU ranks (gloo) each build an MLP of 12 Linear(2048, 2048) layers (~201 MB of fp32 parameters) and
set it up with strategy="fsdp". Each rank reports the growth of its peak resident memory (ru_maxrss)
over its baseline after imports and the process group: with empty_init the model is created on the meta
device and each rank materialises only its shard (~100 MB), so the peak stays near one shard.

    .venv/bin/python scripts/fsdp_memory.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

LAYERS, WIDTH = 12, 2048


def child(empty_init: bool) -> None:
    import torch
    from torch import nn

    from fabric_lite import Fabric

    fabric = Fabric(accelerator="cpu", devices=2, strategy="fsdp")
    fabric.launch()
    fabric.barrier()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with fabric.init_module(empty_init=empty_init):
        model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])
    model = fabric.setup_module(model)
    fabric.barrier()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    local = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    stats = torch.tensor([(peak - base) / 1024, local / 2**20], dtype=torch.float64)
    gathered = fabric.all_gather(stats, stacked=True)  # one row per rank, also with one process
    if fabric.global_rank == 0:
        label = "empty_init=True " if empty_init else "empty_init=False"
        for rank, (grow, shard) in enumerate(gathered.tolist()):
            print(f"{label} rank {rank}: peak RSS growth {grow:7.1f} MiB  (own shard {shard:6.1f} MiB, "
                  f"whole model {full / 2**20:6.1f} MiB)")


def main() -> None:
    if len(sys.argv) > 1:
        child(sys.argv[1] == "empty")
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for mode in ("empty", "full"):
        subprocess.run([sys.executable, __file__, mode], check=True, env=env)


if __name__ == "__main__":
    main()
