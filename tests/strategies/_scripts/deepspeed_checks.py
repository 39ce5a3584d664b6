"""Run by tests/strategies/test_deepspeed.py on 2 CPU ranks: ``python deepspeed_checks.py OUT --stage S --precision P``.

Trains a small model through DeepSpeedStrategy, saves, trains on, loads, consolidates, and records
on each rank what the test checks (losses, full parameters, restored state, error messages) in
``OUT/rank{R}.json``. ``--extras`` adds the slower one-off checks (weights-only refusal, inference).
``--offload`` offloads optimizer state (and, at stage 3, parameters) and steps with DeepSpeedCPUAdam:
its op compiles for about two minutes the first time, so the test file leaves it to a manual run.
"""

import argparse
import json
import os
import time

import torch
from deepspeed_shared import NotAllowed, error_of
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite import Fabric
from fabric_lite.strategies.deepspeed import (
    DeepSpeedStrategy,
    consolidate_deepspeed_checkpoint,
)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def full_parameters(engine):
    """Every parameter in full (fp32 lists), gathered from the ZeRO-3 shards when partitioned."""
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=hasattr(params[0], "ds_id")):
        return {name: p.detach().float().flatten().tolist() for name, p in engine.module.named_parameters()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--offload", action="store_true")
    parser.add_argument("--extras", action="store_true")
    args = parser.parse_args()
    started = time.time()

    strategy = DeepSpeedStrategy(
        stage=args.stage, gradient_clipping=1.0, gradient_accumulation_steps=args.accumulate,
        offload_optimizer=args.offload, offload_parameters=args.offload and args.stage == 3,
    )
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy, precision=args.precision)
    fabric.launch()
    rank = fabric.global_rank
    result = {"rank": rank, "world": fabric.world_size, "launcher": fabric.plan.launcher}

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = x[:, :1] * 0.5 - x[:, 1:2] * 0.25 + 0.1
    # Before the model: the engine takes its micro-batch size from this loader.
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=4))

    model = make_model()
    result["two_optimizers"] = error_of(lambda: fabric.setup(
        model, torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1)))
    if args.offload:  # ZeRO-Offload steps on the CPU with DeepSpeed's own Adam
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        base = DeepSpeedCPUAdam(model.parameters(), lr=0.02)
    else:
        base = torch.optim.Adam(model.parameters(), lr=0.02)
    model, optimizer = fabric.setup(model, base)
    engine = model._forward_module
    result["engine"] = {
        "type": type(engine).__name__, "micro_batch": engine.train_micro_batch_size_per_gpu(),
        "clipping": engine.gradient_clipping(), "accumulation": engine.gradient_accumulation_steps(),
        "zero_stage": engine.zero_optimization_stage(), "dtype": str(next(engine.module.parameters()).dtype),
    }

    def train(steps):
        losses = []
        for _, (xb, yb) in zip(range(steps), loader):
            if args.accumulate == 1:  # harmless then; while accumulating it would drop the gradients gathered so far
                optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(xb), yb)
            fabric.backward(loss)
            optimizer.step()
            losses.append(fabric.all_reduce(loss.detach()).item())
        return losses

    result["losses"] = train(8) + train(8)
    result["global_steps"] = engine.global_steps  # optimizer updates: 16 micro-batches / accumulation
    result["clip_norm"] = error_of(lambda: fabric.clip_gradients(model, optimizer, max_norm=1.0))
    result["clip_value"] = error_of(lambda: fabric.clip_gradients(model, optimizer, clip_val=0.5))
    result["setup_optimizers"] = error_of(lambda: fabric.setup_optimizers(torch.optim.SGD(make_model().parameters())))

    # save, train on (parameters change), load: parameters and the user's state come back
    ckpt = os.path.join(args.out_dir, "ckpt")
    result["saved"] = full_parameters(engine)
    fabric.save(ckpt, {"model": model, "optimizer": optimizer, "step": 16, "extra": {"note": "kept"}})
    train(4)
    result["changed"] = full_parameters(engine) != result["saved"]
    state = {"model": model, "optimizer": optimizer, "step": 0}
    result["remainder"] = fabric.load(ckpt, state)
    result["loaded_step"] = state["step"]
    result["loaded"] = full_parameters(engine)
    result["losses_after_load"] = train(2)  # the restored engine (and optimizer state) trains on

    if rank == 0:
        consolidate_deepspeed_checkpoint(ckpt, os.path.join(args.out_dir, "consolidated.pt"))
    fabric.barrier()

    if args.extras:
        # A checkpoint holding an arbitrary class is refused by default and loads when trusted.
        unsafe = os.path.join(args.out_dir, "unsafe")
        fabric.save(unsafe, {"model": model, "obj": NotAllowed(3)})
        result["unsafe_refused"] = error_of(lambda: fabric.load(unsafe, {"model": model, "obj": None}))
        trusted = {"model": model, "obj": None}
        fabric.load(unsafe, trusted, weights_only=False)
        result["unsafe_trusted"] = trusted["obj"].value
        # inference: an engine without optimizer; backward through it is refused
        inference = fabric.setup_module(make_model())
        with torch.no_grad():
            result["inference"] = inference(torch.ones(3, 8)).tolist()
        result["inference_backward"] = error_of(
            lambda: fabric.backward(inference(torch.ones(3, 8)).sum(), model=inference))
        result["backward_picks_trained"] = error_of(lambda: fabric.backward(model(x[:4]).sum()))
        optimizer.step()
        # a second trained model: backward needs model= now, and a checkpoint holds one engine
        second_model = make_model()
        second, _ = fabric.setup(second_model, torch.optim.SGD(second_model.parameters(), lr=0.1))
        result["ambiguous_backward"] = error_of(lambda: fabric.backward(model(x[:4]).sum()))
        result["two_engines_saved"] = error_of(
            lambda: fabric.save(os.path.join(args.out_dir, "two"), {"a": model, "b": second}))
        result["set_up_twice"] = error_of(
            lambda: fabric.setup(second_model, torch.optim.SGD(second_model.parameters(), lr=0.1)))

    result["seconds"] = time.time() - started
    with open(os.path.join(args.out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
