"""Run by tests/clusters/test_slurm.py: train on every rank until done or preempted, and resume after a requeue.

Usage: python preempt_train.py CKPT_DIR OUT_DIR [--slow-first-attempt]
With Fabric(plugins=[Preemption(signals=("SIGUSR1",))]), a SIGUSR1 to the tasks (scancel --signal=USR1, or
sbatch --signal=USR1@N) makes fabric.should_stop() true on every rank at the same step: the ranks save a
checkpoint (model, optimizer, each rank's dataloader position) and leave the loop, and rank 0 requeues the
job at exit (scontrol requeue). The requeued run (SLURM_RESTART_COUNT=1) resumes from the newest complete
checkpoint. Each rank writes OUT_DIR/attempt<RESTART>-rank<R>.json.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite import Fabric
from fabric_lite.checkpoint import latest_checkpoint
from fabric_lite.plugins import Preemption

STEPS = 60  # 5 epochs of 12 steps: the resume lands inside an epoch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ckpt_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--slow-first-attempt", action="store_true", help="sleep 0.1 s a step before any requeue")
    args = parser.parse_args()
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))

    # find_unused_parameters: DDP then keeps its first gradient-bucket layout. With plain "ddp" it rebuilds the
    # buckets after the first step of every process, so the resumed run's first step reduces in another order
    # than the uninterrupted run's same step, and with more than 2 ranks gloo's sums then differ in the last bit.
    fabric = Fabric(accelerator="cpu", strategy="ddp_find_unused_parameters_true",
                    plugins=[Preemption(signals=("SIGUSR1",))])
    fabric.launch()
    fabric.seed_everything(7)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(192, 4, generator=g), torch.randn(192, 1, generator=g)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True))
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    latest = latest_checkpoint(args.ckpt_dir)
    if latest is not None:
        fabric.load(latest, state)
    start = step = state["step"]
    stopped_at = None
    progress = Path(args.out_dir, f"progress-{attempt}")
    while step < STEPS and stopped_at is None:
        for xb, yb in loader:
            optimizer.zero_grad()
            fabric.backward(nn.functional.mse_loss(model(xb), yb))
            optimizer.step()
            step += 1
            if fabric.global_rank == 0:
                progress.write_text(str(step))
            if args.slow_first_attempt and attempt == 0:
                time.sleep(0.1)
            if fabric.should_stop():  # the same answer on every rank: all save the same step
                state["step"] = stopped_at = step
                # before the save (a collective): rank 0 requeues at exit, which ends the other ranks at once
                Path(args.out_dir, f"stop-rank{fabric.global_rank}").write_text(str(step))
                fabric.save(Path(args.ckpt_dir, f"step-{step}.ckpt"), state)
                break
            if step == STEPS:
                break

    report = {
        "rank": fabric.global_rank, "world_size": fabric.world_size, "environment": fabric.plan.cluster_environment,
        "attempt": attempt, "job": os.environ.get("SLURM_JOB_ID"), "start": start, "stopped_at": stopped_at,
        "resumed_from": latest.name if latest is not None else None,
        "weights": [p.detach().flatten().tolist() for p in model.parameters()],
    }
    Path(args.out_dir, f"attempt{attempt}-rank{fabric.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
