"""Run by tests/strategies/test_fsdp.py: FSDP training, clipping, no_backward_sync, meta init and checkpoints; one JSON per rank.

Phases (each a separate launch, sharing OUT_DIR):
  train   world 2: train, check, save a sharded folder and a full file, load both back.
  single  world 1: load the world-2 folder and the full file, train one step, save a world-1 folder.
  reload  world 2: load the world-1 folder; hybrid sharding (HSDP) on a (2, 1) mesh.
  cuda    world 1 on a GPU: the precision given on the command line, a sharded save/load round trip.
"""

import argparse
import json
import os

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite import Fabric
from fabric_lite.strategies.fsdp import FSDPStrategy


class Counter:
    """A stateful object that is neither a module nor an optimizer."""

    def __init__(self, count=0):
        self.count = count

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def full(tensor):
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def params(model):
    return [full(p.detach()).flatten().tolist() for p in model.parameters()]


def momentum(opt, model):
    return [full(opt.state[p]["momentum_buffer"]).flatten().tolist() for p in model.parameters()]


def new_fabric(args, **strategy_kwargs):
    """The strategy by name (the registry's path), or an FSDPStrategy instance when options are given."""
    strategy = FSDPStrategy(**strategy_kwargs) if strategy_kwargs else args.strategy
    kwargs = {"accelerator": args.accelerator, "strategy": strategy}
    if args.devices is not None:
        kwargs["devices"] = args.devices
    if args.precision is not None:
        kwargs["precision"] = args.precision
    fabric = Fabric(**kwargs)
    fabric.launch()
    return fabric


def setup_model(fabric):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)  # made before setup: must follow the shards
    return fabric.setup(model, opt)


def capture_error(result, name, fn):
    try:
        fn()
    except Exception as error:  # the message is what the test checks
        result[name] = f"{type(error).__name__}: {error}"


def phase_train(args, out):
    fabric = new_fabric(args)
    rank = fabric.global_rank
    r = {"rank": rank, "world": fabric.world_size, "launcher": fabric.plan.launcher}
    original = make_model()
    model, opt = setup_model(fabric)
    r["types"] = [type(p).__name__ for p in model.parameters()]
    r["local_rows"] = [p.to_local().shape[0] if p.dim() else 0 for p in model.parameters()]
    r["optimizer_holds_model_params"] = [p for g in opt.param_groups for p in g["params"]] == list(model.parameters())
    r["hyperparameters"] = [opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]]
    r["initial"] = params(model)
    r["initial_matches_unsharded"] = r["initial"] == [p.detach().flatten().tolist() for p in original.parameters()]
    x, y = data()
    r["loss_before"] = nn.functional.mse_loss(model(x), y).item()
    local_before = model.module[0].weight.to_local().clone()
    for xb, yb in fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=8)):
        opt.zero_grad()
        fabric.backward(nn.functional.mse_loss(model(xb), yb))
        opt.step()
    r["shard_changed"] = not torch.equal(local_before, model.module[0].weight.to_local())
    r["loss_after"] = nn.functional.mse_loss(model(x), y).item()
    r["trained"] = params(model)

    # clipping: the global norm over all shards, a plain tensor, equal on every rank
    opt.zero_grad()
    fabric.backward(nn.functional.mse_loss(model(x[rank::2]), y[rank::2]) * 100)
    gathered = torch.stack([full(p.grad).norm() for p in model.parameters()]).norm()
    norm = fabric.clip_gradients(model, opt, max_norm=0.5)
    r["clip"] = {"type": type(norm).__name__, "norm": norm.item(), "gathered": gathered.item(),
                 "after": torch.stack([full(p.grad).norm() for p in model.parameters()]).norm().item()}
    opt.zero_grad()

    # no_backward_sync: nothing reduced inside (sharded grads stay empty), local grads accumulate, then one sync
    probe = fabric.setup(nn.Linear(4, 2, bias=False))
    xr = torch.full((2, 4), float(rank + 1))
    with fabric.no_backward_sync(probe):
        fabric.backward(probe(xr).sum())
    r["unsynced_grad_is_none"] = probe.module.weight.grad is None
    fabric.backward(probe(xr).sum())
    r["accumulated_grad"] = full(probe.module.weight.grad).flatten().tolist()

    # empty_init: built on meta, each rank materialises only its shard
    with fabric.init_module(empty_init=True):
        empty = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    r["meta_before"] = all(p.is_meta for p in empty.parameters())
    empty = fabric.setup(empty)
    r["meta_after"] = [(p.to_local().device.type, tuple(p.to_local().shape)) for p in empty.parameters()]
    w = full(empty.module[0].weight)
    r["empty_init_weight"] = {"finite": bool(w.isfinite().all()), "max": w.abs().max().item(),
                              "distinct_rows": len({tuple(row.tolist()) for row in w})}

    # an optimizer made before setup_module, set up afterwards
    late = make_model()
    adam = torch.optim.Adam(late.parameters(), lr=0.01, betas=(0.8, 0.9))
    late = fabric.setup_module(late)
    adam = fabric.setup_optimizers(adam)
    before = params(late)
    fabric.backward(nn.functional.mse_loss(late(x), y))
    adam.step()
    r["late_optimizer"] = {"changed": params(late) != before, "betas": list(adam.param_groups[0]["betas"])}

    # activation checkpointing: same gradients as without, checkpoint keys unchanged
    ac_fabric = new_fabric(args, auto_wrap_policy={nn.Linear}, activation_checkpointing_policy={nn.Linear})
    ac_model, ac_opt = setup_model(ac_fabric)
    plain_model, _ = setup_model(fabric)
    for m in (ac_model, plain_model):
        ac_fabric.backward(nn.functional.mse_loss(m(x), y))
    r["ac_wrapped"] = type(ac_model.module[0]).__name__
    r["ac_same_grads"] = all(torch.allclose(full(a.grad), full(b.grad), atol=1e-7)
                             for a, b in zip(ac_model.parameters(), plain_model.parameters()))
    r["ac_keys"] = sorted(ac_model.state_dict())

    # checkpoints: one sharded folder, one full file; load both back into perturbed objects
    counter = Counter(7)
    sharded_path, full_path = os.path.join(out, "ckpt_w2"), os.path.join(out, "full.ckpt")
    state = {"model": model, "optimizer": opt, "step": 5, "counter": counter}
    fabric.save(sharded_path, state)
    r["momentum"] = momentum(opt, model)
    fabric.strategy.state_dict_type = "full"
    fabric.save(full_path, state)
    fabric.strategy.state_dict_type = "sharded"
    r["folder"] = sorted(os.listdir(sharded_path)) if rank == 0 else None
    for name, path in (("sharded", sharded_path), ("full", full_path)):
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        opt.state[next(iter(model.parameters()))]["momentum_buffer"].zero_()
        target = {"model": model, "optimizer": opt, "step": 0, "counter": Counter()}
        remainder = fabric.load(path, target)
        r[f"loaded_{name}"] = {"params": params(model), "momentum": momentum(opt, model), "step": target["step"],
                               "counter": target["counter"].count, "remainder": sorted(remainder)}
    capture_error(r, "no_state_error", lambda: fabric.load(sharded_path))
    return rank, r


def phase_single(args, out):
    fabric = new_fabric(args)
    model, opt = setup_model(fabric)
    r = {"rank": fabric.global_rank, "world": fabric.world_size}
    state = {"model": model, "optimizer": opt, "step": 0, "counter": Counter()}
    fabric.load(os.path.join(out, "ckpt_w2"), state)
    r["loaded_sharded"] = {"params": params(model), "momentum": momentum(opt, model), "step": state["step"],
                           "counter": state["counter"].count}
    other, other_opt = setup_model(fabric)
    fabric.load(os.path.join(out, "full.ckpt"), {"model": other, "optimizer": other_opt})
    r["loaded_full"] = {"params": params(other), "momentum": momentum(other_opt, other)}
    x, y = data()
    fabric.backward(nn.functional.mse_loss(model(x), y))
    opt.step()
    r["saved_w1"] = params(model)
    fabric.save(os.path.join(out, "ckpt_w1"), {"model": model, "optimizer": opt, "step": 6})
    return 0, r


def phase_reload(args, out):
    fabric = new_fabric(args)
    rank = fabric.global_rank
    model, opt = setup_model(fabric)
    state = {"model": model, "optimizer": opt, "step": 0}
    fabric.load(os.path.join(out, "ckpt_w1"), state)
    r = {"rank": rank, "world": fabric.world_size, "loaded_w1": params(model), "step": state["step"],
         "local_rows": [p.to_local().shape[0] for p in model.parameters()]}
    # HSDP: 2 replicas of 1 shard each; gradients are averaged across replicas
    hsdp = new_fabric(args, device_mesh=(2, 1), auto_wrap_policy={nn.Linear})
    h_model, h_opt = setup_model(hsdp)
    x, y = data()
    hsdp.backward(nn.functional.mse_loss(h_model(x[rank::2]), y[rank::2]))
    h_opt.step()
    weight = h_model.module[0].weight
    r["hsdp"] = {"mesh": list(weight.device_mesh.shape), "placements": [str(p) for p in weight.placements],
                 "params": params(h_model)}
    return rank, r


def phase_reload4(args, out):
    """4 ranks read the sharded checkpoint written by 2 ranks (parameters and optimizer state)."""
    fabric = new_fabric(args)
    model, opt = setup_model(fabric)
    state = {"model": model, "optimizer": opt, "step": 0}
    fabric.load(os.path.join(out, "ckpt_w2"), state)
    return fabric.global_rank, {"world": fabric.world_size, "params": params(model), "momentum": momentum(opt, model),
                                "step": state["step"]}


def phase_cuda(args, out):
    fabric = new_fabric(args, cpu_offload=True) if args.cpu_offload else new_fabric(args)
    model, opt = setup_model(fabric)
    seen = []
    model.module[0].register_forward_hook(lambda m, i, o: seen.append((str(m.weight.dtype), str(o.dtype))))
    x, y = (t.to(fabric.device) for t in data())
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        opt.step()
        losses.append(loss.item())
    r = {"rank": 0, "device": str(fabric.device), "compute": seen[0], "losses": losses,
         "param_dtype": str(model.module[0].weight.dtype), "grad_dtype": str(model.module[0].weight.grad.dtype),
         "output_dtype": str(model(x).dtype), "shard_device": model.module[0].weight.to_local().device.type}
    before = params(model)
    path = os.path.join(out, "cuda_ckpt")
    fabric.save(path, {"model": model, "optimizer": opt})
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    fabric.load(path, {"model": model, "optimizer": opt})
    r["round_trip"] = params(model) == before
    return 0, r


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--phase", default="train", choices=["train", "single", "reload", "reload4", "cuda"])
    parser.add_argument("--strategy", default="fsdp")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--cpu-offload", action="store_true")
    args = parser.parse_args()
    phase = {"train": phase_train, "single": phase_single, "reload": phase_reload, "reload4": phase_reload4,
             "cuda": phase_cuda}[args.phase]
    rank, result = phase(args, args.out_dir)
    with open(os.path.join(args.out_dir, f"{args.phase}{rank}.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
