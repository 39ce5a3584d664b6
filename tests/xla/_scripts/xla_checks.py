"""Run by tests/xla/test_xla.py under PJRT_DEVICE=CPU: one scenario per process (the XLA runtime is set once per process).

Scenarios (argv: OUT_DIR SCENARIO...), each writing OUT_DIR/SCENARIO.json (launch2: one file per replica):
  single   one XLA CPU device: import hygiene, plan, single_xla training vs. eager CPU, tied weights,
           clipping, save/load round trip, bf16-true.
  spmd     CPU_NUM_DEVICES=2: xla_spmd and xla_fsdp training vs. eager CPU, batch and parameter
           shardings, save/load round trips.
  launch1  strategy="xla" with one device: fabric.launch(train) through torch_xla.launch, training,
           every collective through torch_xla, save/load.
  launch2  CPU_NUM_DEVICES=2: strategy="xla" launches two replicas; ranks, devices, sampler shards,
           a local forward/backward (no collective: pytorch/xla #5005).
  launch_dies  CPU_NUM_DEVICES=2: the replica process dies; fabric.launch reports it.
"""

import json
import os
import sys
from pathlib import Path

import_started = set(sys.modules)

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite import Fabric
from fabric_lite.errors import ConfigurationError, FabricEnvironmentError
from fabric_lite.strategies.xla import XLAStrategy

STEPS = 12
LR = 0.1
MOMENTUM = 0.5


def data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, 0.5 * x.sum(dim=1, keepdim=True)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def reference(steps, batch_size, clip=None):
    """The same training on the eager CPU: the numbers every XLA run must reproduce."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    losses = []
    for _, (x, y) in zip(range(steps), _batches(batch_size)):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses


def _batches(batch_size):
    while True:
        yield from DataLoader(TensorDataset(*data()), batch_size=batch_size)


def train(fabric, steps, batch_size, clip=None, model=None, opt=None):
    """Model and optimizer made before setup (the optimizer must follow the parameters to the device)."""
    model = model or make_model()
    opt = opt or torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model, opt = fabric.setup(model, opt)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(*data()), batch_size=batch_size))
    losses, seen = [], []
    batches = iter(loader)
    for _ in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        out = model(x)
        seen.append(x)
        loss = nn.functional.mse_loss(out, y)
        fabric.backward(loss)
        if clip:
            fabric.clip_gradients(model, opt, max_norm=clip)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, opt, losses, seen


def cpu_params(model):
    return [p.detach().cpu().float() for p in model.parameters()]


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def sharding(tensor):
    import torch_xla

    return torch_xla._XLAC._get_xla_sharding_spec(tensor)


def round_trip(fabric, model, opt, path, make_fresh):
    """Save, load into fresh objects, compare exactly; the file must hold CPU tensors only."""
    fabric.save(path, {"model": model, "optimizer": opt, "step": 7})
    raw = torch.load(path, map_location=None, weights_only=False)
    devices = sorted({t.device.type for t in _tensors(raw)})
    fresh_model, fresh_opt = make_fresh()
    remainder = fabric.load(path, {"model": fresh_model, "optimizer": fresh_opt})
    exact = max_diff(cpu_params(model), cpu_params(fresh_model)) == 0.0
    momentum_exact = all(
        torch.equal(opt.state[p]["momentum_buffer"].cpu(), fresh_opt.state[q]["momentum_buffer"].cpu())
        for p, q in zip(model.parameters(), fresh_model.parameters())
    )
    return {"file_devices": devices, "params_exact": exact, "momentum_exact": momentum_exact,
            "remainder": remainder, "fresh_device": str(next(fresh_model.parameters()).device)}, fresh_model, fresh_opt


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def setup_fresh(fabric):
    def make():
        model = make_model()
        for p in model.parameters():
            nn.init.zeros_(p)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        return fabric.setup(model, opt)

    return make


# ------------------------------------------------------------------------------------------ single
def scenario_single(out):
    result = {}
    # import fabric_lite and plan a CPU run: torch_xla must not be imported for that.
    Fabric(accelerator="cpu")
    result["torch_xla_imported_by_cpu_fabric"] = "torch_xla" in sys.modules and "torch_xla" not in import_started
    fabric = Fabric()  # accelerator="auto" with PJRT_DEVICE=CPU set: XLA comes first
    result["plan"] = {k: getattr(fabric.plan, k) for k in ("accelerator", "strategy", "precision", "launcher")}
    fabric.launch()
    result["device"] = str(fabric.device)

    model, opt, losses, seen = train(fabric, STEPS, batch_size=16)
    ref_model, ref_losses = reference(STEPS, batch_size=16)
    result["losses"] = losses
    result["ref_losses"] = ref_losses
    result["param_diff_vs_eager"] = max_diff(cpu_params(model), cpu_params(ref_model))
    result["batch_device"] = str(seen[0].device)
    result["param_device"] = str(next(model.parameters()).device)
    result["optimizer_follows"] = all(p.device.type == "xla" for g in opt.param_groups for p in g["params"])
    rt, fresh_model, fresh_opt = round_trip(fabric, model, opt, out / "single.ckpt", setup_fresh(fabric))
    result["round_trip"] = rt
    # one more step from the original and from the restored objects: the same numbers
    x, y = data()
    x, y = fabric.to_device((x[:16], y[:16]))
    for m, o in ((model, opt), (fresh_model, fresh_opt)):
        fabric.backward(nn.functional.mse_loss(m(x), y))
        o.step()
        o.zero_grad()
    result["continued_exact"] = max_diff(cpu_params(model), cpu_params(fresh_model)) == 0.0

    # clipping, compared with the eager reference clipped the same way
    fabric2 = Fabric(accelerator="xla", devices=1)
    fabric2.launch()
    model, opt, losses, _ = train(fabric2, 6, batch_size=16, clip=0.05)
    ref_model, _ = reference(6, batch_size=16, clip=0.05)
    result["clip_param_diff"] = max_diff(cpu_params(model), cpu_params(ref_model))

    # tied weights stay tied and the optimizer made before setup keeps them
    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    tied[1].weight = tied[0].weight
    tied_model, _ = fabric2.setup(tied, torch.optim.SGD(tied.parameters(), lr=0.1))
    result["tied"] = tied_model.module[0].weight is tied_model.module[1].weight

    # bf16-true: bf16 weights and inputs inside, fp32 outputs, still learning
    fabric3 = Fabric(accelerator="xla", precision="bf16-true")
    fabric3.launch()
    model, opt, losses, _ = train(fabric3, STEPS, batch_size=16)
    x, _ = fabric3.to_device(data())
    result["bf16"] = {"param_dtype": str(next(model.parameters()).dtype), "output_dtype": str(model(x).dtype),
                      "losses": losses, "precision": type(fabric3.strategy.precision).__name__}
    return result


# -------------------------------------------------------------------------------------------- spmd
def scenario_spmd(out):
    result = {}
    for name in ("xla_spmd", "xla_fsdp"):
        fabric = Fabric(strategy=name)
        r = {"plan": {k: getattr(fabric.plan, k) for k in ("accelerator", "strategy", "launcher", "devices")}}
        fabric.launch()
        r["world_size"] = fabric.world_size
        r["mesh"] = [int(fabric.strategy.mesh.size()), list(fabric.strategy.mesh.axis_names)]
        model, opt, losses, seen = train(fabric, STEPS, batch_size=16)
        ref_model, ref_losses = reference(STEPS, batch_size=16)
        r["losses"] = losses
        r["ref_losses"] = ref_losses
        r["param_diff_vs_eager"] = max_diff(cpu_params(model), cpu_params(ref_model))
        r["batch_sharding"] = sharding(seen[-1])
        r["param_shardings"] = [sharding(p) for p in model.parameters()]
        rt, fresh_model, _ = round_trip(fabric, model, opt, out / f"{name}.ckpt", setup_fresh(fabric))
        r["round_trip"] = rt
        r["fresh_param_shardings"] = [sharding(p) for p in fresh_model.parameters()]
        result[name] = r
    try:  # a mesh always spans every device
        Fabric(strategy="xla_spmd", devices=1).launch()
    except ConfigurationError as error:
        result["devices_error"] = f"{type(error).__name__}: {error}"
    return result


# ----------------------------------------------------------------------------------------- launch1
def _train_replica(fabric, out):
    model, opt, losses, _ = train(fabric, STEPS, batch_size=16)
    ref_model, ref_losses = reference(STEPS, batch_size=16)
    r = {"rank": fabric.global_rank, "world_size": fabric.world_size, "device": str(fabric.device), "losses": losses,
         "ref_losses": ref_losses, "param_diff_vs_eager": max_diff(cpu_params(model), cpu_params(ref_model))}
    r["all_reduce_sum"] = fabric.all_reduce(torch.tensor([1.0, 2.0]), reduce_op="sum").cpu().tolist()
    r["all_reduce_mean"] = fabric.all_reduce(torch.tensor(3.0)).cpu().item()
    r["all_gather_shape"] = list(fabric.all_gather(torch.tensor([1.0, 2.0])).shape)
    r["all_gather_stacked_shape"] = list(fabric.all_gather(torch.tensor([1.0, 2.0]), stacked=True).shape)
    r["broadcast"] = fabric.broadcast({"lr": 0.5, "names": ["a", "b"]}, src=0)
    try:
        fabric.all_reduce(torch.tensor(1.0), reduce_op=torch.distributed.ReduceOp.PRODUCT)
    except ConfigurationError as error:
        r["product_error"] = str(error)
    fabric.barrier()
    rt, _, _ = round_trip(fabric, model, opt, out / "launch1.ckpt", setup_fresh(fabric))
    r["round_trip"] = rt
    return r


def scenario_launch1(out):
    fabric = Fabric(strategy="xla")
    plan = {k: getattr(fabric.plan, k) for k in ("accelerator", "strategy", "launcher", "devices")}
    result = fabric.launch(_train_replica, out)
    return {"plan": plan, "replica": result}


# ----------------------------------------------------------------------------------------- launch2
def _probe_replica(fabric, out):
    """What runs in each of two replicas without a collective between them."""
    model = fabric.setup_module(make_model())
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2))
    indices = [int(v) for (batch,) in loader for v in batch.cpu()]
    x, y = fabric.to_device(data(8))
    loss = nn.functional.mse_loss(model(x), y)
    fabric.backward(loss)
    record = {"rank": fabric.global_rank, "local_rank": fabric.local_rank, "world_size": fabric.world_size,
              "device": str(fabric.device), "indices": indices, "grad_finite": all(
                  bool(torch.isfinite(p.grad).all().cpu()) for p in model.parameters()),
              "environment": type(fabric.strategy._runtime).__name__}
    (out / f"launch2_rank{fabric.global_rank}.json").write_text(json.dumps(record))
    return record


def scenario_launch2(out):
    try:
        Fabric(strategy="xla").launch()
    except ConfigurationError as error:  # a script-style launch cannot start two replicas
        result = {"launch_without_function": f"{type(error).__name__}: {error}"}
    # No broadcast of rank 0's parameters in setup: that is a collective, which aborts here.
    fabric = Fabric(strategy=XLAStrategy(sync_module_states=False))
    result["plan"] = {k: getattr(fabric.plan, k) for k in ("accelerator", "strategy", "launcher", "devices")}
    result["returned"] = fabric.launch(_probe_replica, out)
    return result


# -------------------------------------------------------------------------------------- launch_dies
def _die(fabric):
    os._exit(3)  # as a replica killed by the OOM killer or aborted by XLA would


def scenario_launch_dies(out):
    try:
        Fabric(strategy="xla").launch(_die)
    except FabricEnvironmentError as error:
        return {"error": f"{type(error).__name__}: {error}", "cause": type(error.__cause__).__name__}
    return {"error": None}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for scenario in sys.argv[2:]:  # several scenarios may share a process when their XLA settings agree
        outcome = globals()[f"scenario_{scenario}"](out)
        (out / f"{scenario}.json").write_text(json.dumps(outcome, default=str))
        print(f"{scenario}: done", flush=True)
    os._exit(0)  # skip torch_xla's slow interpreter teardown
