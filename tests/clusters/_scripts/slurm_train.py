"""Run by tests/clusters/test_slurm.py under srun, sbatch and fabric-run: report ranks and train a small model.

Usage: python slurm_train.py OUT_DIR [--devices N] [--num-nodes M] [--check-only]
Each rank writes OUT_DIR/rank<R>.json: what Fabric detected and, unless --check-only, the final parameters.
"""

import argparse
import json
import os
import socket
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite import Fabric

GLOBAL_BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--check-only", action="store_true", help="resolve the plan and stop (misconfiguration tests)")
    args = parser.parse_args()
    kwargs = {"devices": args.devices} if args.devices else {}
    fabric = Fabric(accelerator="cpu", strategy="ddp", num_nodes=args.num_nodes, **kwargs)
    if args.check_only:
        return
    fabric.launch()
    environment = fabric.strategy.cluster_environment
    report = {
        "rank": fabric.global_rank, "local_rank": fabric.local_rank, "node_rank": fabric.node_rank,
        "world_size": fabric.world_size, "environment": fabric.plan.cluster_environment,
        "environment_class": type(environment).__name__, "launcher": fabric.plan.launcher,
        "main_address": environment.main_address, "main_port": environment.main_port,
        "slurm": {k: v for k, v in os.environ.items() if k.startswith("SLURM")},
        "master_in_env": [k for k in ("MASTER_ADDR", "MASTER_PORT") if k in os.environ],
        "host": socket.gethostname(),
    }
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 4, generator=g), torch.randn(128, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    # Not shuffled: rank r sees samples r, r + world, ... (DistributedSampler), GLOBAL_BATCH per step in all.
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=GLOBAL_BATCH // fabric.world_size))
    for _ in range(2):
        for xb, yb in loader:
            optimizer.zero_grad()
            fabric.backward(nn.functional.mse_loss(model(xb), yb))
            optimizer.step()
    report["weights"] = [p.detach().flatten().tolist() for p in model.parameters()]
    Path(args.out_dir, f"rank{fabric.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
