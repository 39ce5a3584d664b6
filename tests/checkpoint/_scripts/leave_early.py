"""Run by tests/checkpoint/test_resume.py: a job that LEAVES its loop at a step limit, saves, and a new process resumes.

    python leave_early.py OUT --phase first  CASE [CASE ...] [--strategy ddp --devices 2]
    python leave_early.py OUT --phase second CASE [CASE ...] [--strategy ddp --devices 2]

``first`` trains N steps straight (the uninterrupted run), then again with a stop after K steps: the loop is left
with ``break`` / ``return`` (so the loader's iterator is closed) and only then ``fabric.save`` is called. ``second``
(a new process) loads that checkpoint and trains the remaining N - K steps with the same code. Each rank writes
OUT/<phase>-<case>-rank<r>.pt with the batches (sample indices), the samples, the losses, the loop's epoch counter
at each step and the final parameters.

A CASE is ``<how>-w<workers>[-p]``: how is one of

    break     ``while step < N: for batch in loader: ... if step == K: break`` (K in the middle of an epoch, odd)
    end       ``for epoch in range(state["epoch"], E): for batch in loader: ...`` left right after the LAST batch
              of an epoch (K = 2 epochs), before the epoch counter is advanced
    return    ``return`` from a function that runs the loop (K in the middle of an epoch)
    stream    like break, over an IterableDataset that has state_dict / load_state_dict (an offset and its own
              torch.Generator; with workers each worker's copy reads every num_workers-th item)

w<workers> is num_workers; -p makes them persistent. The map-style dataset draws from the global torch, Python and
NumPy generators in __getitem__: in the main process with w0, inside the worker processes otherwise.
"""

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from fabric_lite import Fabric

SAMPLES, BATCH = 44, 4  # one process: 11 batches per epoch; 2 ranks: 22 samples, 6 batches each (the last of 2)


class Noisy(Dataset):
    """Every sample adds noise from the global generators of the process that reads it."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(SAMPLES, 3, generator=g), torch.randn(SAMPLES, 1, generator=g)

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        noise = 0.01 * torch.rand(3) + 0.01 * random.random() + 0.01 * float(np.random.rand())
        return self.x[i] + noise, self.y[i], i


class Stream(IterableDataset):
    """Passes over SAMPLES items, each shuffled by the dataset's own generator; it knows its position in a pass.

    As torchdata's Stateful datasets: after load_state_dict the next __iter__ continues that pass (nothing is left
    if it had ended), any other __iter__ starts a new pass.
    """

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(SAMPLES, 3, generator=g), torch.randn(SAMPLES, 1, generator=g)
        self.generator = torch.Generator().manual_seed(7)
        self.offset = 0  # positions of the current pass already read
        self.pass_state = self.generator.get_state()
        self.resumed = False

    def __iter__(self):
        if not self.resumed:  # a new pass: its order comes from the dataset's own generator
            self.offset, self.pass_state = 0, self.generator.get_state()
            order = torch.randperm(SAMPLES, generator=self.generator).tolist()
        else:  # the pass that load_state_dict put back
            order = torch.randperm(SAMPLES, generator=torch.Generator().set_state(self.pass_state)).tolist()
        self.resumed = False
        info = torch.utils.data.get_worker_info()  # with workers, each one's copy reads its share of the pass
        while self.offset < SAMPLES:
            position = self.offset
            self.offset += 1
            if info is None or position % info.num_workers == info.id:
                i = order[position]
                yield self.x[i] + 0.01 * torch.rand(3), self.y[i], i

    def state_dict(self):
        return {"offset": self.offset, "pass_state": self.pass_state, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.offset, self.pass_state, self.resumed = state["offset"], state["pass_state"], True
        self.generator.set_state(state["generator"])


def full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def parse(case):
    how, workers, *rest = case.split("-")
    return how, int(workers[1:]), rest == ["p"]


def run(fabric, case, out, *, total, stop=None, load=None):
    how, workers, persistent = parse(case)
    fabric.seed_everything(1234, verbose=False)
    model = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    kwargs = {"num_workers": workers, "prefetch_factor": 2, "persistent_workers": persistent} if workers else {}
    if how == "stream":
        loader = DataLoader(Stream(), batch_size=BATCH, **kwargs)
    else:
        loader = DataLoader(Noisy(), batch_size=BATCH, shuffle=True, **kwargs)
    loader = fabric.setup_dataloaders(loader)
    torch.manual_seed(100 + fabric.global_rank)  # each rank its own stream: a rank given another's state diverges
    random.seed(100 + fabric.global_rank)
    np.random.seed(100 + fabric.global_rank)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0, "epoch": 0}
    if load is not None:
        fabric.load(load, state)
    record = {"batches": [], "samples": [], "losses": [], "epochs": []}

    def train_step(batch):
        x, y, index = batch
        for group in optimizer.param_groups:  # a schedule over the loop's own epochs: a miscounted epoch shows
            group["lr"] = 0.05 / (1 + state["epoch"])
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        record["batches"].append(index.clone())
        record["samples"].append(x.clone())
        record["losses"].append(loss.detach().clone())
        record["epochs"].append(torch.tensor(state["epoch"]))  # the loop's own epoch counter (used by "end")
        state["step"] += 1

    def until_stop():  # the "return" job: the loop lives in a function that returns at the step limit
        while state["step"] < total:
            for batch in loader:
                train_step(batch)
                if state["step"] in (stop, total):
                    return

    if how == "return":
        until_stop()
    elif how == "end":
        for epoch in range(state["epoch"], 1000):
            for batch in loader:
                train_step(batch)
                if state["step"] in (stop, total):
                    break
            if state["step"] in (stop, total):
                break
            state["epoch"] = epoch + 1
    else:
        while state["step"] < total:
            for batch in loader:
                train_step(batch)
                if state["step"] in (stop, total):
                    break
            if state["step"] == stop:
                break
    if stop is not None:  # the loop is left: its iterator is closed; save only now
        fabric.save(out / f"{case}.ckpt", state)
    record["params"] = [full(p.detach()).clone() for p in model.parameters()]
    record["epoch"] = state["epoch"]
    return record


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--phase", choices=("first", "second"), required=True)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    fabric = Fabric(accelerator="cpu", strategy=args.strategy, devices=args.devices)
    fabric.launch()
    per_epoch = -(-SAMPLES // (BATCH * fabric.world_size))
    for case in args.cases:
        how = parse(case)[0]
        stop = 2 * per_epoch if how == "end" else per_epoch + 3
        total = stop + per_epoch + 2
        if args.phase == "first":
            result = {"straight": run(fabric, case, args.out, total=total),
                      "first": run(fabric, case, args.out, total=total, stop=stop)}
        else:
            result = {"second": run(fabric, case, args.out, total=total, load=args.out / f"{case}.ckpt")}
        result["stop"], result["total"] = stop, total
        torch.save(result, args.out / f"{args.phase}-{case}-rank{fabric.global_rank}.pt")


if __name__ == "__main__":
    main()
