"""Run by tests/strategies/test_ddp.py under every launcher: trains, exercises collectives, writes one JSON per rank."""

import argparse
import json
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from fabric_lite import Fabric


class EveryOther(Sampler):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(0, self.n, 2))

    def __len__(self):
        return (self.n + 1) // 2


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)


def run(fabric, out_dir):
    rank, world = fabric.global_rank, fabric.world_size
    result = {"rank": rank, "world": world, "local_rank": fabric.local_rank, "node_rank": fabric.node_rank,
              "strategy": type(fabric.strategy).__name__, "launcher": fabric.plan.launcher, "pid": os.getpid()}
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = data()
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=8))
    seen = []
    for xb, yb in loader:
        seen.append(xb[:, 0].tolist())
        opt.zero_grad()
        fabric.backward(nn.functional.mse_loss(model(xb), yb))
        opt.step()
    result["weights"] = [p.detach().flatten().tolist() for p in model.parameters()]
    result["first_column_seen"] = sum(seen, [])

    # collectives
    value = torch.tensor([float(rank + 1)])
    result["sum"] = fabric.all_reduce(value, reduce_op="sum").item()
    result["mean"] = fabric.all_reduce(value, reduce_op="mean").item()
    result["max"] = fabric.all_reduce(value, reduce_op="max").item()
    result["min"] = fabric.all_reduce(value, reduce_op="min").item()
    result["int_mean"] = fabric.all_reduce(torch.tensor(rank), reduce_op="mean").item()
    result["dict_sum"] = fabric.all_reduce({"a": 1, "b": [torch.tensor(2.0)]}, reduce_op="sum")["b"][0].item()
    result["gather_equal"] = fabric.all_gather(torch.full((2,), float(rank))).tolist()
    result["gather_scalar"] = fabric.all_gather(rank).tolist()
    result["gather_uneven"] = fabric.all_gather(torch.arange(rank + 1.0).view(-1, 1)).flatten().tolist()
    w = torch.ones(3, requires_grad=True)
    gathered = fabric.all_gather(w * (rank + 1), sync_grads=True)
    gathered.sum().backward()
    result["sync_grads"] = w.grad.tolist()
    result["broadcast_obj"] = fabric.broadcast({"from": rank, "list": [rank]}, src=1 if world > 1 else 0)
    result["broadcast_tensor"] = fabric.broadcast(torch.tensor([rank * 10.0]), src=0).tolist()
    result["decision_all"] = fabric.strategy.reduce_boolean_decision(rank == 0, all=True)
    result["decision_any"] = fabric.strategy.reduce_boolean_decision(rank == 0, all=False)
    fabric.barrier("end")

    # no_backward_sync: gradients stay local inside, then synchronise
    model.zero_grad()
    xr = torch.full((2, 4), float(rank + 1))
    with fabric.no_backward_sync(model):
        fabric.backward(model(xr).sum())
    result["unsynced_grad"] = model.module.weight.grad.flatten().tolist()
    model.zero_grad()
    fabric.backward(model(xr).sum())
    result["synced_grad"] = model.module.weight.grad.flatten().tolist()

    # sampler injection variants
    ds = TensorDataset(torch.arange(10))
    shuffled = fabric.setup_dataloaders(DataLoader(ds, batch_size=2, shuffle=True))
    result["shuffled"] = [int(i) for b in shuffled for i in b[0]]
    result["shuffled_epoch2"] = [int(i) for b in shuffled for i in b[0]]
    uneven = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(9)), batch_size=4), even_batches=False)
    result["uneven"] = [int(i) for b in uneven for i in b[0]]
    padded = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(9)), batch_size=4))
    result["padded"] = [int(i) for b in padded for i in b[0]]
    dropped = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(9)), batch_size=2, drop_last=True))
    result["dropped"] = [int(i) for b in dropped for i in b[0]]
    custom = fabric.setup_dataloaders(DataLoader(ds, batch_size=1, sampler=EveryOther(10)))
    result["custom"] = [int(i) for b in custom for i in b[0]]
    untouched = fabric.setup_dataloaders(DataLoader(ds, batch_size=10), use_distributed_sampler=False)
    result["untouched"] = [int(i) for b in untouched for i in b[0]]
    try:
        fabric.setup_dataloaders(DataLoader(ds, batch_sampler=[[0, 1], [2]]))
    except ValueError as error:
        result["batch_sampler_error"] = str(error)

    # checkpoint: rank 0 writes, everyone reads
    path = os.path.join(out_dir, "ddp.ckpt")
    fabric.save(path, {"model": model, "optimizer": opt, "step": 5})
    state = {"model": model, "optimizer": opt, "step": 0}
    fabric.load(path, state)
    result["loaded_step"] = state["step"]
    result["checkpoint_keys"] = sorted(torch.load(path, weights_only=True)["model"])

    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    return rank


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--num-nodes", type=int, default=None)
    args = parser.parse_args()
    kwargs = {"accelerator": "cpu"}
    for name in ("strategy", "devices", "num_nodes"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    fabric = Fabric(**kwargs)
    if fabric.plan.launcher in ("spawn", "fork", "forkserver"):
        returned = fabric.launch(run, args.out_dir)
        with open(os.path.join(args.out_dir, "returned.json"), "w") as handle:
            json.dump(returned, handle)
    else:
        fabric.launch()
        run(fabric, args.out_dir)


if __name__ == "__main__":
    main()
