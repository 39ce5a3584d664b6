#!/usr/bin/env python
"""fabric_lite against raw PyTorch / raw DeepSpeed under DDP, FSDP2 and DeepSpeed ZeRO, measured in one run.

Every rank builds the same GPT-style model twice from one seed: one copy is set up by hand (raw
``DistributedDataParallel``, raw ``fully_shard`` per block, raw ``deepspeed.initialize``), the other
through ``Fabric(strategy=...).setup``. Both train on the same pre-built batches (already on the device);
after a warm-up, interleaved rounds time ``--steps`` steps of each, the side that goes first alternating.
Printed per strategy: median step time, tokens/s, the ratio fabric/raw of time (median of per-round
ratios) and of throughput, peak memory of each side and their ratio, and the parameter agreement of the
two copies at the end (relative L2 distance; both saw identical batches).

What "raw" means here is what a careful user writes for the same semantics as the Fabric run:
- ddp: ``DDP(model)``; forward under ``torch.autocast`` for the mixed precisions (GradScaler for 16-mixed).
- fsdp: ``fully_shard`` on each Block and the root with ``MixedPrecisionPolicy(param_dtype, reduce fp32)``,
  forward under ``torch.autocast`` as well (Fabric's FSDP mixed precision does both), ShardedGradScaler for 16-mixed.
- deepspeed2 / deepspeed3: ``deepspeed.initialize`` with the very same config dict given to
  ``DeepSpeedStrategy(config=...)``, ``engine.backward`` / ``engine.step``.
Peak memory of a side is measured with that side alone (CUDA only): built, warmed up and stepped after a
throw-away build has paid the one-time allocations, as ``max_memory_allocated`` above what was allocated before.

Runs under any launcher; one process runs alone at world size 1:
    python scripts/bench_multigpu.py --strategies fsdp,deepspeed2                 # 1 GPU (or CPU)
    fabric-run --devices 2 scripts/bench_multigpu.py --json out/n2.json --baseline out/n1.json
    fabric-run --accelerator cpu --devices 2 scripts/bench_multigpu.py --cpu-smoke   # 2 CPU processes, gloo
``--baseline`` (the JSON of a 1-process run) adds scaling efficiency = throughput_N / (N * throughput_1).
``--checks`` also checks collectives across ranks and writes/loads a sharded FSDP checkpoint
(``--save-sharded DIR`` at one world size, ``--load-sharded DIR`` at another).
Benchmarks are not tests: a missed goal prints FAIL; the exit status is 1 only when a correctness check fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import GPT, GPT_CPU_SMOKE, Block, GPTConfig, _lm_loss

from fabric_lite import Fabric

AMP = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": None}
GOAL_THROUGHPUT = 0.98
GOAL_MEMORY = 1.02
SEED = 1234


def log(*args: Any) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, flush=True)


# ------------------------------------------------------------------------------------------ sides
def deepspeed_config(stage: int, precision: str, micro_batch: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_bucket_size": 200_000_000, "allgather_bucket_size": 200_000_000},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16-mixed":
        config["bf16"] = {"enabled": True}
    elif precision == "16-mixed":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


def make_raw(strategy: str, model: nn.Module, precision: str, device: torch.device, micro_batch: int):
    """(step function, object whose parameters are compared) for the hand-written side."""
    dtype = AMP[precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else _nullcontext
    if strategy.startswith("deepspeed"):
        import deepspeed

        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(int(strategy[-1]), precision, micro_batch),
            dist_init_required=False,
        )

        def ds_step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = _lm_loss(engine(x.to(engine.device)).float(), y)
            engine.backward(loss)
            engine.step()

        return ds_step, engine.module
    model.to(device)
    if strategy == "ddp":
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    else:  # fsdp
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        wrapped = fully_shard(model, mp_policy=policy)
        scaler = ShardedGradScaler(device=device.type) if precision == "16-mixed" else None
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=3e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast():
            logits = wrapped(x)
        loss = _lm_loss(logits.float(), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step, model


def make_fabric(strategy: str, model: nn.Module, precision: str, accelerator: str, world: int, micro_batch: int):
    if strategy == "fsdp":
        from fabric_lite.strategies.fsdp import FSDPStrategy

        chosen: Any = FSDPStrategy(auto_wrap_policy={Block})
    elif strategy.startswith("deepspeed"):
        from fabric_lite.strategies.deepspeed import DeepSpeedStrategy

        chosen = DeepSpeedStrategy(config=deepspeed_config(int(strategy[-1]), precision, micro_batch))
    else:
        chosen = "ddp"
    fabric = Fabric(accelerator=accelerator, devices=world, strategy=chosen, precision=precision)
    fabric.launch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    fmodel, foptimizer = fabric.setup(model, optimizer)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = _lm_loss(fmodel(x), y)
        fabric.backward(loss)
        foptimizer.step()
        foptimizer.zero_grad(set_to_none=True)

    return fabric, step, fmodel


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --------------------------------------------------------------------------------------- measuring
def full_parameters(module: nn.Module, strategy: str) -> list[torch.Tensor]:
    """Every parameter in full, in a fixed order, on the CPU in fp32 (collective for sharded strategies)."""
    params = list(getattr(module, "module", module).parameters()) if strategy.startswith("deepspeed") else list(module.parameters())
    if strategy == "deepspeed3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return [p.detach().float().cpu().clone() for p in params]
    out = []
    for p in params:
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        out.append(t.float().cpu().clone())
    return out


def relative_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b))
    den = sum(float(x.pow(2).sum()) for x in a)
    return (num / max(den, 1e-30)) ** 0.5


def run_strategy(strategy: str, args: argparse.Namespace, config: GPTConfig, device: torch.device, world: int) -> dict[str, Any]:
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    allocated = torch.cuda.memory_allocated if cuda else (lambda: 0)
    generator = torch.Generator().manual_seed(SEED + 1 + int(os.environ.get("RANK", "0")))
    batches = []
    for _ in range(4):
        tokens = torch.randint(0, config.vocab_size, (config.batch_size, config.seq_len + 1), generator=generator).to(device)
        batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))

    def build_and_warm(side: str):
        sync()
        before = allocated()
        torch.manual_seed(SEED)
        model = GPT(config)
        if side == "raw":
            step, compared = make_raw(strategy, model, args.precision, device, config.batch_size)
            fabric = None
        else:
            fabric, step, compared = make_fabric(strategy, model, args.precision, device.type, world, config.batch_size)
        for i in range(args.warmup):
            step(*batches[i % len(batches)])
        sync()
        return step, compared, allocated() - before, fabric

    def footprint(side: str) -> float:
        """Peak memory of one side alone: built, warmed up and stepped with nothing else of this case alive."""
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sync()
        base = allocated()
        step, _, _, _ = build_and_warm(side)
        for i in range(args.steps):
            step(*batches[i % len(batches)])
        sync()
        peak = (torch.cuda.max_memory_allocated() - base) if cuda else 0
        del step
        gc.collect()
        return float(peak)

    if cuda:  # memory: a throw-away first build pays the one-time allocations (cuBLAS workspaces, comm buffers)
        footprint("raw")
        memory = {"raw": footprint("raw"), "fabric": footprint("fabric")}
    else:
        memory = {"raw": 0.0, "fabric": 0.0}
    raw_step, raw_model, _, _ = build_and_warm("raw")
    fab_step, fab_model, _, _fabric = build_and_warm("fabric")
    times = {"raw": [], "fabric": []}
    steps = {"raw": raw_step, "fabric": fab_step}
    position = {"raw": args.warmup, "fabric": args.warmup}

    def block(side: str) -> None:
        sync()
        start = time.perf_counter()
        for i in range(position[side], position[side] + args.steps):
            steps[side](*batches[i % len(batches)])
        sync()
        times[side].append((time.perf_counter() - start) / args.steps)
        position[side] += args.steps

    for r in range(args.rounds):
        order = ("raw", "fabric") if r % 2 == 0 else ("fabric", "raw")
        for side in order:
            block(side)
    # the ratio per round on the slowest rank (a step ends when every rank is done)
    raw_t = torch.tensor(times["raw"], dtype=torch.float64)
    fab_t = torch.tensor(times["fabric"], dtype=torch.float64)
    if world > 1:
        for t in (raw_t, fab_t):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
    ratios = (fab_t / raw_t).tolist()
    raw_ms = statistics.median(raw_t.tolist()) * 1e3
    fab_ms = statistics.median(fab_t.tolist()) * 1e3
    tokens = world * config.batch_size * config.seq_len
    distance = relative_distance(full_parameters(raw_model, strategy), full_parameters(fab_model, strategy))
    raw_mem, fab_mem = memory["raw"], memory["fabric"]
    mem = torch.tensor([raw_mem, fab_mem], dtype=torch.float64, device=device if cuda else None)
    if world > 1:
        dist.all_reduce(mem, op=dist.ReduceOp.MAX)
    raw_mem, fab_mem = (float(v) for v in mem.tolist())
    time_ratio = statistics.median(ratios)
    row = {
        "strategy": strategy, "precision": args.precision, "world_size": world, "device": device.type,
        "raw_ms": raw_ms, "fabric_ms": fab_ms, "time_ratio": time_ratio,
        "time_ratio_p25_p75": [statistics.quantiles(ratios, n=4)[0], statistics.quantiles(ratios, n=4)[2]] if len(ratios) >= 4 else None,
        "raw_tokens_per_s": tokens / (raw_ms / 1e3), "fabric_tokens_per_s": tokens / (fab_ms / 1e3),
        "throughput_ratio": raw_ms / fab_ms,
        "raw_peak_mib": raw_mem / 2**20, "fabric_peak_mib": fab_mem / 2**20,
        "memory_ratio": (fab_mem / raw_mem) if raw_mem else None,
        "param_relative_distance": distance,
        "params_agree": distance < args.param_tolerance,
    }
    del raw_step, fab_step, raw_model, fab_model
    if cuda:
        torch.cuda.empty_cache()
    return row


def check_collectives(fabric: Fabric) -> dict[str, Any]:
    rank = fabric.global_rank
    gathered = fabric.all_gather(torch.tensor([rank], device=fabric.device))
    reduced = fabric.all_reduce(torch.tensor(float(rank + 1), device=fabric.device), reduce_op="sum")
    broadcast = fabric.broadcast({"from": rank, "value": rank * 10 + 7}, src=0)
    ok_local = (
        gathered.flatten().tolist() == list(range(fabric.world_size))
        and float(reduced) == fabric.world_size * (fabric.world_size + 1) / 2
        and broadcast == {"from": 0, "value": 7}
    )
    agree = fabric.all_reduce(torch.tensor(int(ok_local), device=fabric.device), reduce_op="min")
    return {"collectives_agree": bool(int(agree) == 1)}


def sharded_checkpoint(args: argparse.Namespace, config: GPTConfig, accelerator: str, world: int) -> dict[str, Any]:
    from fabric_lite.strategies.fsdp import FSDPStrategy

    fabric = Fabric(accelerator=accelerator, devices=world, strategy=FSDPStrategy(auto_wrap_policy={Block}),
                    precision="32-true")
    fabric.launch()
    torch.manual_seed(SEED)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = fabric.setup(model, optimizer)
    x = torch.randint(0, config.vocab_size, (2, config.seq_len), generator=torch.Generator().manual_seed(5)).to(fabric.device)
    result: dict[str, Any] = {}
    if args.save_sharded:
        for _ in range(3):
            loss = model(x).float().pow(2).mean()
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        fabric.save(args.save_sharded, {"model": model, "optimizer": optimizer, "step": 3})
        probe = fabric.all_reduce(model(x).float().sum().detach(), reduce_op="mean")
        Path(args.save_sharded + ".probe.json").write_text(json.dumps({"probe": float(probe), "world": world})) if fabric.is_global_zero else None
        result["sharded_saved_at"] = world
    if args.load_sharded:
        state = {"model": model, "optimizer": optimizer, "step": 0}
        fabric.load(args.load_sharded, state)
        probe = float(fabric.all_reduce(model(x).float().sum().detach(), reduce_op="mean"))
        saved = json.loads(Path(args.load_sharded + ".probe.json").read_text())
        result.update(sharded_loaded_from=saved["world"], sharded_loaded_at=world, step=state["step"],
                      sharded_probe_matches=abs(probe - saved["probe"]) <= 1e-4 * max(1.0, abs(saved["probe"])))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="ddp,fsdp,deepspeed2,deepspeed3")
    parser.add_argument("--precision", default="bf16-mixed", choices=sorted(AMP))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny GPT, for CPU processes")
    parser.add_argument("--param-tolerance", type=float, default=2e-2,
                        help="largest relative L2 distance of the two copies' parameters counted as agreement")
    parser.add_argument("--checks", action="store_true", help="collectives and sharded checkpoints too")
    parser.add_argument("--save-sharded", default=None)
    parser.add_argument("--load-sharded", default=None)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per rank and step (CUDA model)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--baseline", default=None, help="JSON of a world-size-1 run, for scaling efficiency")
    args = parser.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    accelerator = device.type
    config = GPT_CPU_SMOKE if args.cpu_smoke else GPTConfig(num_layers=8, d_model=1024, num_heads=16, seq_len=512,
                                                             vocab_size=32768, batch_size=args.batch_size)
    os.environ.setdefault("LOCAL_RANK", "0")
    # One process group for every side: made by Fabric's DDP strategy (torchrun/fabric-run/srun variables, or a
    # 1-process group when run alone); the later Fabric objects and the raw sides use it as it is.
    base = Fabric(accelerator=accelerator, devices=world, strategy="ddp")
    base.launch()
    rows: list[dict[str, Any]] = []
    failed = False
    for strategy in [s for s in args.strategies.split(",") if s]:
        if strategy.startswith("deepspeed"):
            try:
                import deepspeed  # noqa: F401
            except ImportError:
                log(f"skip {strategy}: deepspeed is not installed")
                continue
        row = run_strategy(strategy, args, config, device, world)
        rows.append(row)
        failed |= not row["params_agree"]
        log(json.dumps(row))
    extra: dict[str, Any] = {}
    if args.checks:
        extra.update(check_collectives(base))
        failed |= not extra["collectives_agree"]
    if args.save_sharded or args.load_sharded:
        extra.update(sharded_checkpoint(args, config, accelerator, world))
        failed |= extra.get("sharded_probe_matches") is False
    baseline = {}
    if args.baseline and Path(args.baseline).is_file():
        baseline = {r["strategy"]: r for r in json.loads(Path(args.baseline).read_text())["rows"]}
    if int(os.environ.get("RANK", "0")) == 0:
        name = torch.cuda.get_device_name(device) if cuda else "cpu"
        print(f"\n{name}, world size {world}, {args.precision}, GPT {config.num_layers}L d{config.d_model} "
              f"seq{config.seq_len} batch{config.batch_size}/rank, {args.rounds} rounds x {args.steps} steps (medians)")
        print(f"{'strategy':<11} {'raw ms':>8} {'fab ms':>8} {'thr f/r':>8} {'raw MiB':>9} {'fab MiB':>9} "
              f"{'mem f/r':>8} {'scale eff':>9} {'param dist':>10}  verdict")
        for r in rows:
            eff = ""
            if r["strategy"] in baseline:
                b = baseline[r["strategy"]]
                eff = f"{r['fabric_tokens_per_s'] / (world * b['fabric_tokens_per_s']):.3f}"
                r["scaling_efficiency_fabric"] = float(eff)
                r["scaling_efficiency_raw"] = r["raw_tokens_per_s"] / (world * b["raw_tokens_per_s"])
            ok_t = r["throughput_ratio"] >= GOAL_THROUGHPUT
            ok_m = r["memory_ratio"] is None or r["memory_ratio"] <= GOAL_MEMORY
            verdict = ("PASS" if ok_t and ok_m else "FAIL") + ("" if r["params_agree"] else " PARAMS-DIFFER")
            mem = f"{r['memory_ratio']:.4f}" if r["memory_ratio"] else "n/a"
            print(f"{r['strategy']:<11} {r['raw_ms']:8.2f} {r['fabric_ms']:8.2f} {r['throughput_ratio']:8.4f} "
                  f"{r['raw_peak_mib']:9.1f} {r['fabric_peak_mib']:9.1f} {mem:>8} {eff:>9} "
                  f"{r['param_relative_distance']:10.2e}  {verdict}")
        if extra:
            print("checks:", json.dumps(extra))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"device": name, "world_size": world, "rows": rows, **extra}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
