"""Run by tests/strategies/test_deepspeed.py: ``python deepspeed_reshape.py OUT PHASE`` with PHASE
``save2`` (2 ranks), ``load1`` (1 rank) or ``load2`` (2 ranks), one after the other on the same OUT.

For ZeRO stages 2 and 3 in fp32 and bf16-mixed (one Fabric each, in one process): ``save2`` trains on 2
ranks and saves; ``load1`` loads that on 1 rank, takes the same next step, trains on and saves; ``load2``
loads that on 2 ranks and takes the same next step. Models set up without optimizer load the same folders,
and checkpoints that cannot be resharded (SGD momentum, Adam before its first step) are refused. Each phase
records in ``OUT/{phase}-rank{R}.json`` the full fp32 weights, Adam moments and steps, buffers, frozen
parameters and the error messages, for the test to compare across phases.
"""

import argparse
import json
import os
import shutil

import torch
from deepspeed_shared import NotAllowed, error_of
from torch import nn

from fabric_lite import Fabric
from fabric_lite.strategies.deepspeed import DeepSpeedStrategy

#: name -> (ZeRO stage, precision); one Fabric each, in one process
SCENARIOS = {
    "stage2": (2, "32-true"), "stage3": (3, "32-true"), "stage2-bf16": (2, "bf16-mixed"), "stage3-bf16": (3, "bf16-mixed"),
}


def make_model(seed, precision):
    torch.manual_seed(seed)
    # A BatchNorm's buffers and a frozen parameter: DeepSpeed's universal loader leaves them alone, fabric_lite
    # restores them. (DeepSpeed's bf16 casts parameters but not buffers, which BatchNorm refuses: LayerNorm there.)
    norm = nn.BatchNorm1d(16) if precision == "32-true" else nn.LayerNorm(16)
    model = nn.Sequential(nn.Linear(8, 16), norm, nn.Tanh(), nn.Linear(16, 1))
    model[0].bias.requires_grad_(False)
    return model


def snapshot(fabric, model, optimizer):
    """Everything a resume needs, whole (gathered from every rank's shard): collective, every rank calls it."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    import deepspeed

    engine = model._forward_module
    params = {n: p for n, p in engine.module.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in engine.module.named_parameters() if not p.requires_grad}
    everything = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(everything, enabled=hasattr(everything[0], "ds_id")):
        frozen = {n: p.detach().flatten().tolist() for n, p in frozen.items()}
        # what the engine computes with: bf16 under bf16-mixed, made from the fp32 masters
        weights = {n: p.detach().float().flatten().tolist() for n, p in engine.module.named_parameters()}
    base = optimizer.optimizer.optimizer  # FabricOptimizer -> ZeRO optimizer -> torch Adam over flat groups
    return {
        "fp32": {n: safe_get_full_fp32_param(p).flatten().tolist() for n, p in params.items()},
        "exp_avg": {n: safe_get_full_optimizer_state(p, "exp_avg").flatten().tolist() for n, p in params.items()},
        "exp_avg_sq": {n: safe_get_full_optimizer_state(p, "exp_avg_sq").flatten().tolist() for n, p in params.items()},
        "adam_steps": sorted({float(s["step"]) for s in base.state.values()}),
        "lr": [g["lr"] for g in base.param_groups],
        "global_steps": engine.global_steps,
        "buffers": {n: b.flatten().tolist() for n, b in engine.module.named_buffers()},
        "frozen": frozen,
        "weights": weights,
    }


def whole_weights(model):
    """The module's parameters and buffers, gathered at stage 3: collective, every rank calls it."""
    import deepspeed

    module = model._forward_module.module
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=hasattr(params[0], "ds_id")):
        return {n: t.detach().float().flatten().tolist() for n, t in module.state_dict().items()}


def masters(model):
    """The fp32 master weights the engine's optimizer updates, whole: collective, every rank calls it."""
    from deepspeed.utils import safe_get_full_fp32_param

    module = model._forward_module.module
    return {n: safe_get_full_fp32_param(p).flatten().tolist() for n, p in module.named_parameters() if p.requires_grad}


def weights_only(fabric, result, model, optimizer, folder):
    """Load the weights alone (no optimizer in the state): whatever optimizer saved them, at any world size;
    this engine's Adam moments stay as they were."""

    def moments():
        base = optimizer.optimizer.optimizer.state.values()
        return [{k: v.clone() for k, v in state.items() if k != "step"} for state in base]

    before = moments()
    result["weights_only_remainder"] = fabric.load(folder, {"model": model})
    result["weights_only"] = whole_weights(model)
    result["weights_only_masters"] = masters(model)
    result["weights_only_kept_moments"] = all(
        a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(before, moments(), strict=True)
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("phase", choices=["save2", "load1", "load2"])
    args = parser.parse_args()
    out = args.out_dir
    devices = 1 if args.phase == "load1" else 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g)
    y = x[:, :1] * 0.5 - x[:, 1:2] * 0.25

    results = {}
    for index, (name, (stage, precision)) in enumerate(SCENARIOS.items()):
        fabric = Fabric(accelerator="cpu", devices=devices, strategy=DeepSpeedStrategy(stage=stage), precision=precision)
        fabric.launch()
        rank, world = fabric.global_rank, fabric.world_size
        result = results[name] = {"world": world}

        def step(model, optimizer, rows, train=True):
            # The global batch is the same at every world size; each rank takes its share.
            model.train(train)
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x[rows][rank::world]), y[rows][rank::world])
            fabric.backward(loss, model=model)
            optimizer.step()
            return fabric.all_reduce(loss.detach()).item()

        def continued(model, optimizer, rows):
            # Eval mode: no batch statistics, so one step on 2 ranks equals one step on 1 rank (up to rounding),
            # and it depends on the restored Adam moments and step.
            step(model, optimizer, rows, train=False)
            return snapshot(fabric, model, optimizer)["fp32"]

        model = make_model(0 if args.phase == "save2" else 1, precision)
        model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=0.05))
        ckpt = os.path.join(out, f"{args.phase}-{name}")
        if args.phase == "save2":
            if name == "stage3":  # Adam before its first step: no moments to reshard yet
                fabric.save(os.path.join(out, "nostep"), {"model": model, "optimizer": optimizer})
                result["nostep_weights"] = whole_weights(model)
            result["losses"] = [step(model, optimizer, slice(0, 8)) for _ in range(3)]
        else:
            source = os.path.join(out, f"{'save2' if args.phase == 'load1' else 'load1'}-{name}")
            if args.phase == "load1" and fabric.global_rank == 0:
                # What a conversion killed part-way leaves: a staging folder, a universal folder without marker.
                for leftover in (".universal.partial", "universal"):
                    os.makedirs(os.path.join(source, leftover, "checkpoint"))
                    with open(os.path.join(source, leftover, "checkpoint", "junk.pt"), "w") as handle:
                        handle.write("cut short")
            state = {"model": model, "optimizer": optimizer, "step": 0}
            result["remainder"] = fabric.load(source, state)
            result["loaded_step"] = state["step"]
            result["loaded"] = snapshot(fabric, model, optimizer)
            if args.phase == "load1":
                # A second load reuses the conversion made by the first.
                universal = os.path.join(source, "universal", "COMPLETE")
                made = os.stat(universal).st_mtime_ns
                fabric.load(source, {"model": model, "optimizer": optimizer})
                result["converted_once"] = os.stat(universal).st_mtime_ns == made
                result["siblings"] = sorted(os.listdir(source))
            if name in ("stage2", "stage3"):  # a model set up without optimizer (inference) loads the weights
                inference = fabric.setup_module(make_model(3, precision))
                result["inference_remainder"] = fabric.load(source, {"model": inference, "extra": None})
                result["inference"] = whole_weights(inference)
        result["continued"] = continued(model, optimizer, slice(8, 16))
        if args.phase == "load2":
            if name == "stage2":  # every rank raises rank 0's refusal (none waits in a collective)
                sgd1 = os.path.join(out, "sgd1")
                result["refused"] = error_of(lambda: fabric.load(sgd1, {"model": model, "optimizer": optimizer}))
                weights_only(fabric, result, model, optimizer, sgd1)
            continue
        # What the next phase loads, taken after a few more steps at this world size.
        result["losses_after"] = [step(model, optimizer, slice(0, 8)) for _ in range(2)]
        # Ranks gather their own BatchNorm statistics; share rank 0's (what is saved) so that the step after the
        # save is the same one the loading run takes.
        for buffer in model._forward_module.module.buffers():
            torch.distributed.broadcast(buffer, src=0)
        result["saved"] = snapshot(fabric, model, optimizer)
        fabric.save(ckpt, {"model": model, "optimizer": optimizer, "step": 10 * (index + 1), "extra": {"world": world}})
        result["continued_after_save"] = continued(model, optimizer, slice(8, 16))

        if args.phase in ("save2", "load1") and name == "stage2":  # SGD momentum: state ds_to_universal cannot reshard
            plain = make_model(2, precision)
            sgd_model, sgd = fabric.setup(plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9))
            step(sgd_model, sgd, slice(0, 8))
            sgd_folder = os.path.join(out, "sgd" if args.phase == "save2" else "sgd1")
            fabric.save(sgd_folder, {"model": sgd_model, "optimizer": sgd})
            result["sgd_weights"], result["sgd_masters"] = whole_weights(sgd_model), masters(sgd_model)
        if args.phase == "load1" and name in ("stage2", "stage3"):
            before = snapshot(fabric, model, optimizer)
            source = os.path.join(out, "sgd" if name == "stage2" else "nostep")
            result["refused"] = error_of(lambda: fabric.load(source, {"model": model, "optimizer": optimizer}))
            result["untouched_after_refusal"] = snapshot(fabric, model, optimizer) == before
            result["refused_left_nothing"] = sorted(os.listdir(source))
            weights_only(fabric, result, model, optimizer, source)
        if args.phase == "load1" and name == "stage2":
            # A universal folder that came with a checkpoint is checked like the checkpoint: a planted pickle of
            # an arbitrary class is refused under weights_only=True.
            planted = os.path.join(out, "planted")
            shutil.copytree(os.path.join(out, "save2-stage2"), planted)
            weight = os.path.join(planted, "universal", "checkpoint", "zero", "0.weight", "fp32.pt")
            torch.save({"param": NotAllowed(1)}, weight)  # what DeepSpeed would unpickle without weights_only
            result["planted"] = error_of(lambda: fabric.load(planted, {"model": model, "optimizer": optimizer}))

    with open(os.path.join(out, f"{args.phase}-rank{rank}.json"), "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
