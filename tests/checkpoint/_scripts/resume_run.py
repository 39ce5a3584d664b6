"""Run by tests/checkpoint/test_resume.py: train N steps straight, or K steps then save, or load then the rest.

    python resume_run.py OUT --phase first  --strategy ddp --devices 2   # straight run, then K steps and save
    python resume_run.py OUT --phase second --strategy ddp --devices 2   # a new process: load, run N - K steps

Each rank writes OUT/<phase>-w<workers>-rank<r>.pt with the batches, losses, worker seeds and final
parameters of every run, for num_workers 0 and 2 (shuffled, a stop in the middle of an epoch).
"""

import argparse
import multiprocessing
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fabric_lite import Fabric

# single: 12 batches per epoch (the last of 2); ddp/fsdp: 6 per rank (2 x 23 samples, batches of 4, the last of 3)
SAMPLES, BATCH = 46, 4
PLAN = {"single": (30, 12 + 8), "ddp": (16, 6 + 4), "fsdp": (16, 6 + 4)}  # (N steps, stop after K): epoch 1, position 8 / 4


class Data(Dataset):
    """Noise from the global generator of the reading process (so RNG restoring matters); a log of fetched indices."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(SAMPLES, 3, generator=g), torch.randn(SAMPLES, 1, generator=g)
        self.count = multiprocessing.Value("i", 0)
        self.log = multiprocessing.Array("i", 8192, lock=False)

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        with self.count.get_lock():
            self.log[self.count.value % 8192] = i
            self.count.value += 1
        info = torch.utils.data.get_worker_info()
        seed = -1 if info is None else torch.initial_seed()
        # From the global generator of the process that reads the sample: the main one, or a worker's (whose
        # random state the checkpoint carries too).
        return self.x[i] + 0.01 * torch.randn(3), self.y[i], i, seed

    def fetched(self):
        return [self.log[k] for k in range(self.count.value)]


def full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def run(args, workers, *, total, stop=None, load=None):
    fabric = args.fabric
    fabric.strategy.precision.load_state_dict(args.fresh_scaler)  # the runs share one Fabric: reset its GradScaler
    fabric.seed_everything(1234, workers=True, verbose=False)
    model = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    data = Data()
    kwargs = {"num_workers": workers, "prefetch_factor": 1} if workers else {}
    loader = fabric.setup_dataloaders(DataLoader(data, batch_size=BATCH, shuffle=True, **kwargs))
    # Each rank its own stream (dropout, noise): a rank that took another rank's state would diverge.
    torch.manual_seed(100 + fabric.global_rank)
    random.seed(100 + fabric.global_rank)
    np.random.seed(100 + fabric.global_rank)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "loader": loader, "step": 0}
    if load is not None:
        fabric.load(load, state)
    step, record = state["step"], {"batches": [], "losses": [], "seeds": [], "extra": []}
    while step < total:
        for x, y, index, seed in loader:
            if not record["batches"]:
                record["fetched_at_first_batch"] = data.fetched()
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            record["batches"].append(index.clone())
            record["seeds"].append(seed.clone())
            record["losses"].append(loss.detach().float().clone())
            record["extra"].append(torch.tensor([random.random(), float(np.random.rand())], dtype=torch.float64))
            step += 1
            if step == stop:
                state["step"] = step
                fabric.save(args.out / args.checkpoint(workers), state)
                break
            if step == total:
                break
        if step == stop:
            break
    record["params"] = [full(p.detach()).clone() for p in model.parameters()]
    record["scale"] = fabric.strategy.precision.state_dict().get("scale")
    return record


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--phase", choices=("first", "second"), required=True)
    parser.add_argument("--strategy", default="single")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    strategy = "auto" if args.strategy == "single" else args.strategy
    args.fabric = Fabric(accelerator="cpu", strategy=strategy, devices=args.devices, precision=args.precision)
    args.fabric.launch()
    args.fresh_scaler = args.fabric.strategy.precision.state_dict()
    args.checkpoint = lambda workers: f"w{workers}" + ("" if args.strategy == "fsdp" else ".ckpt")
    total, stop = PLAN[args.strategy]
    rank = args.fabric.global_rank
    for workers in args.workers:
        if args.phase == "first":
            result = {"straight": run(args, workers, total=total), "first": run(args, workers, total=total, stop=stop)}
        else:
            result = {"second": run(args, workers, total=total, load=args.out / args.checkpoint(workers))}
        result["stop"], result["total"] = stop, total
        torch.save(result, args.out / f"{args.phase}-w{workers}-rank{rank}.pt")


if __name__ == "__main__":
    main()
