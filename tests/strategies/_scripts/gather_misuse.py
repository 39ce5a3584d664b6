"""Two ranks (ddp_spawn, gloo) call fabric.all_gather with mismatched dtypes; each rank records what it saw."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fabric_lite import Fabric


def attempt(fn):
    try:
        return {"value": fn().tolist()}
    except Exception as error:  # noqa: BLE001 - the test reads the type and message
        return {"error": type(error).__name__, "message": str(error)}


def main(fabric: Fabric, out: str) -> None:
    rank = fabric.global_rank
    result = {
        # float32 on rank 0, int32 on rank 1: same shape, bytes that cannot be read as the other
        "float_vs_int": attempt(lambda: fabric.all_gather(torch.ones(3) if rank == 0 else torch.ones(3, dtype=torch.int32))),
        # float32 vs float64: different element sizes (raw gloo aborts the process)
        "float_vs_double": attempt(lambda: fabric.all_gather(torch.ones(4, dtype=torch.float32 if rank == 0 else torch.float64))),
        # uneven first dimension and a dtype mismatch at once: the dtype is named
        "uneven_mismatch": attempt(lambda: fabric.all_gather(torch.ones(rank + 1, dtype=torch.float16 if rank else torch.float32))),
        # the ranks are still in step after the errors
        "after": attempt(lambda: fabric.all_gather(torch.tensor([float(rank)]))),
        "fast_path": attempt(lambda: fabric.all_gather(torch.full((2,), float(rank)), same_shape=True)),
        "uneven": attempt(lambda: fabric.all_gather(torch.arange(rank + 1.0))),
        # past the 4 KiB that travel inside the header exchange: the second collective
        "big_mismatch": attempt(lambda: fabric.all_gather(torch.ones(3000, dtype=torch.float32 if rank == 0 else torch.float64))),
        "big_equal": attempt(lambda: fabric.all_gather(torch.full((3000,), float(rank))).sum(dim=1)),
        "big_uneven": attempt(lambda: torch.tensor(fabric.all_gather(torch.full((1500 + rank * 1000, 2), float(rank))).shape)),
        "mixed_sizes": attempt(lambda: fabric.all_gather(torch.full((1 + rank * 1500,), float(rank))).sum().reshape(1)),
        "bool": attempt(lambda: fabric.all_gather(torch.tensor([True, rank == 1]))),
        "bf16_scalar": attempt(lambda: fabric.all_gather(torch.tensor(rank + 0.5, dtype=torch.bfloat16)).float()),
        "empty": attempt(lambda: torch.tensor(fabric.all_gather(torch.ones(rank, 2)).shape)),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn").launch(main, sys.argv[1])
