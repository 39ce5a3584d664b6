"""Run by tests/clusters/test_torchrun_elastic.py under torchrun / fabric-run: train 12 steps on 2 ranks, save every
2 steps, resume from the newest complete checkpoint, and (with --crash-at S) let rank 1 die at step S of the
first attempt (TORCHELASTIC_RESTART_COUNT=0) so that torch.distributed.run restarts the workers.

Usage: python elastic_train.py CKPT_DIR OUT_DIR [--crash-at S]
"""

import argparse
import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite import Fabric

try:
    from fabric_lite.checkpoint import latest_checkpoint
except ImportError:  # the helper is not in this checkout: the newest complete file by its step number
    def latest_checkpoint(folder):
        # fabric.save renames a finished temporary file into place: every step-*.ckpt is complete
        files = sorted(Path(folder).glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
        return files[-1] if files else None

STEPS, SAVE_EVERY = 12, 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ckpt_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--crash-at", type=int, default=-1)
    args = parser.parse_args()
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
    fabric.launch()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    # Not shuffled, so a step number names its batch: resuming at step s skips the first s batches.
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=4))

    start, resumed_from = 0, None
    latest = latest_checkpoint(args.ckpt_dir)
    if latest is not None:
        start = fabric.load(latest, {"model": model, "optimizer": optimizer})["step"]
        resumed_from = latest.name

    step = 0
    while step < STEPS:
        for xb, yb in loader:
            if step >= STEPS:
                break
            if step < start:
                step += 1
                continue
            if step == args.crash_at and restart == 0 and fabric.global_rank == 1:
                os._exit(3)  # a hard crash: no exception handling, no clean-up
            optimizer.zero_grad()
            fabric.backward(nn.functional.mse_loss(model(xb), yb))
            optimizer.step()
            step += 1
            if step % SAVE_EVERY == 0:
                fabric.save(Path(args.ckpt_dir, f"step-{step}.ckpt"), {"model": model, "optimizer": optimizer, "step": step})

    report = {
        "rank": fabric.global_rank, "local_rank": fabric.local_rank, "world_size": fabric.world_size,
        "environment": fabric.plan.cluster_environment, "launcher": fabric.plan.launcher, "restart": restart,
        "start": start, "resumed_from": resumed_from, "latest_helper": latest_checkpoint.__module__,
        "weights": [p.detach().flatten().tolist() for p in model.parameters()],
    }
    Path(args.out_dir, f"rank{fabric.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
