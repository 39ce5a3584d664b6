#!/usr/bin/env python
"""Per-step overhead of fabric_lite against the same loop in raw PyTorch, measured in one run.

For each case (model x precision x device) the same model is built twice from the same seed: one
is trained by a careful raw PyTorch loop, the other through ``Fabric.setup`` (FabricModule,
FabricOptimizer, ``fabric.backward``). Both take their batches from one pre-built list of batches
already on the device, so data loading is not measured. After a warm-up, interleaved rounds time
``--steps`` steps of each loop; the side that goes first alternates every round, so drift of the
machine (other processes, clocks, caches) falls on both sides alike. On CUDA the clock is read
only after ``torch.cuda.synchronize()``.

One step is: forward, loss, backward, optimizer step, ``zero_grad(set_to_none=True)``. The raw
loop wraps forward and loss in ``torch.autocast(device, dtype)`` for the mixed precisions and
scales the loss with ``torch.amp.GradScaler`` for 16-mixed, as the PyTorch AMP recipe does.

The verdict uses the median of the per-round ratios fabric/raw (each round pairs two blocks timed
back to back); the ratio of the two medians is printed beside it. Goals: <= 1.02 for the tiny
MLP (launch-bound: it shows every microsecond of Python the wrapper adds) and <= 1.005 for the
GPT on CUDA. Benchmarks are not tests: a missed goal prints FAIL but does not change the exit
status unless ``--strict`` is given. The exit status is 1 when the correctness check fails:
after all rounds, the raw and the fabric model (32-true) trained on identical batches must hold
the same parameters (torch.allclose). CUDA kernels that accumulate with atomics (the fused
attention backward) are not bitwise reproducible, so on CUDA a miss is re-checked with fresh models
and deterministic kernels. For the mixed precisions the comparison is printed but not gated: Fabric
casts the model output to fp32 and the loss runs outside autocast, the raw loop runs it inside.

On a busy or small machine pass ``--threads 1`` and more, shorter rounds (``--rounds 101 --steps
50``): the spread [p25, p75] of the per-round ratios, printed per row, says how far to trust a verdict.

Usage:
    python scripts/bench_overhead.py                              # all cases on CPU (+ CUDA if present)
    python scripts/bench_overhead.py --device cpu --rounds 15 --steps 300
    python scripts/bench_overhead.py --device cuda --cases gpt --json out/bench.json
    python scripts/bench_overhead.py --device cpu --cases gpt --gpt-on-cpu   # tiny GPT, smoke test only
    python scripts/bench_overhead.py --strategy fsdp,deepspeed2 --precision 16-mixed  # vs raw FSDP2 / DeepSpeed
                                                  # (handed to bench_multigpu.py; its flags apply)
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fabric_lite import Fabric

GOALS = {"tiny-mlp": 1.02, "gpt": 1.005}
CASES = ("tiny-mlp", "gpt")
AMP_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
PRECISIONS = ("32-true", *AMP_DTYPES)
NUM_BATCHES = 8
SEED = 1234


# ---------------------------------------------------------------------------------------- models
class TinyMLP(nn.Module):
    """32 -> 64 -> 64 -> 10: so small that a step is all kernel launches and Python."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class GPTConfig:
    num_layers: int = 6
    d_model: int = 512
    num_heads: int = 8
    seq_len: int = 256
    vocab_size: int = 8192
    batch_size: int = 16


GPT_CUDA = GPTConfig()
GPT_CPU_SMOKE = GPTConfig(num_layers=2, d_model=64, num_heads=4, seq_len=32, vocab_size=256, batch_size=4)


class Block(nn.Module):
    """Pre-norm decoder block: causal self-attention (scaled_dot_product_attention) and a GELU MLP."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.fc_out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time_, channels = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(channels, dim=2)
        shape = (batch, time_, self.num_heads, channels // self.num_heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, time_, channels))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))


class GPT(nn.Module):
    """A small GPT-style decoder with learned positions and a head tied to the token embedding."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config.d_model, config.num_heads) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# ------------------------------------------------------------------------------------ workloads
@dataclass
class Workload:
    """What one case needs: a model factory, the batches (on the device), a loss and an optimizer factory."""

    make_model: Callable[[], nn.Module]
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    default_steps: int
    description: str


def _classification_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target)


def _lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def make_workload(case: str, device: torch.device, gpt_config: GPTConfig) -> Workload:
    generator = torch.Generator().manual_seed(SEED + 1)
    if case == "tiny-mlp":
        batches = [
            (torch.randn(64, 32, generator=generator).to(device), torch.randint(0, 10, (64,), generator=generator).to(device))
            for _ in range(NUM_BATCHES)
        ]
        return Workload(
            make_model=TinyMLP,
            batches=batches,
            loss_fn=_classification_loss,
            make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),
            default_steps=300 if device.type == "cpu" else 200,
            description="MLP 32-64-64-10, batch 64, AdamW",
        )
    if case == "gpt":
        c = gpt_config
        batches = []
        for _ in range(NUM_BATCHES):
            tokens = torch.randint(0, c.vocab_size, (c.batch_size, c.seq_len + 1), generator=generator).to(device)
            batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
        return Workload(
            make_model=lambda: GPT(c),
            batches=batches,
            loss_fn=_lm_loss,
            make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=3e-4),
            default_steps=20 if device.type == "cuda" else 10,
            description=(
                f"GPT {c.num_layers}L d{c.d_model} h{c.num_heads} seq{c.seq_len} vocab{c.vocab_size} "
                f"batch{c.batch_size}, AdamW"
            ),
        )
    raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")


# ---------------------------------------------------------------------------------------- steps
Step = Callable[[torch.Tensor, torch.Tensor], None]


def make_raw_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Any, precision: str, device_type: str) -> Step:
    """The loop a careful user writes by hand, specialised per precision (no branches at run time)."""
    if precision == "32-true":

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    dtype = AMP_DTYPES[precision]
    if precision == "bf16-mixed":

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.autocast(device_type, dtype=dtype):
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    scaler = torch.amp.GradScaler(device_type)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device_type, dtype=dtype):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def make_fabric_step(fabric: Fabric, model: Any, optimizer: Any, loss_fn: Any) -> Step:
    """The same loop after the Fabric conversion: the set-up objects and ``fabric.backward``."""

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


class Runner:
    """Runs one side's steps through the batch list; each side keeps its own position in it."""

    def __init__(self, step: Step, batches: list[tuple[torch.Tensor, torch.Tensor]], sync: Callable[[], None]) -> None:
        self.step = step
        self.batches = batches
        self.sync = sync
        self.position = 0

    def run(self, num_steps: int) -> float:
        """Run ``num_steps`` steps and return the seconds they took (device work included)."""
        step, batches, n = self.step, self.batches, len(self.batches)
        start_at = self.position
        self.sync()
        start = time.perf_counter()
        for i in range(start_at, start_at + num_steps):
            x, y = batches[i % n]
            step(x, y)
        self.sync()
        elapsed = time.perf_counter() - start
        self.position = start_at + num_steps
        return elapsed


# ------------------------------------------------------------------------------------- measuring
@dataclass
class Row:
    case: str
    precision: str
    device: str
    description: str
    rounds: int
    steps: int
    raw_ms: float
    fabric_ms: float
    ratio_median_of_rounds: float
    ratio_of_medians: float
    ratio_p25: float
    ratio_p75: float
    ratio_of_minimums: float  # info: the least disturbed block of each side (noise only ever adds time)
    goal: float | None
    verdict: str
    within_noise: bool  # the goal lies inside [p25, p75] of the per-round ratios
    params_max_abs_diff: float
    params_allclose: bool
    params_match: bool | None  # the gated check: set for 32-true only
    params_recheck: str | None = None
    raw_ms_rounds: list[float] = field(default_factory=list)
    fabric_ms_rounds: list[float] = field(default_factory=list)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def compare_parameters(a: nn.Module, b: nn.Module) -> tuple[float, bool]:
    """(max |difference|, torch.allclose with default tolerances for every parameter pair)."""
    pairs = list(zip(a.parameters(), b.parameters()))
    assert len(pairs) == len(list(a.parameters())) == len(list(b.parameters()))
    max_diff = max((p.detach().float() - q.detach().float()).abs().max().item() for p, q in pairs)
    return max_diff, all(torch.allclose(p, q) for p, q in pairs)


def deterministic_recheck(case: str, device: torch.device, gpt_config: GPTConfig, num_steps: int = 10) -> tuple[bool, str]:
    """Train fresh raw and fabric models (32-true) with deterministic kernels only and compare them."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    workload = make_workload(case, device, gpt_config)
    with sdpa_kernel(SDPBackend.MATH):
        torch.manual_seed(SEED)
        raw_model = workload.make_model().to(device)
        step = make_raw_step(raw_model, workload.make_optimizer(raw_model), workload.loss_fn, "32-true", device.type)
        Runner(step, workload.batches, lambda: None).run(num_steps)
        torch.manual_seed(SEED)
        fabric_model = workload.make_model()
        fabric = Fabric(accelerator=device.type, devices=1, precision="32-true")
        model, optimizer = fabric.setup(fabric_model, workload.make_optimizer(fabric_model))
        Runner(make_fabric_step(fabric, model, optimizer, workload.loss_fn), workload.batches, lambda: None).run(num_steps)
    max_diff, allclose = compare_parameters(raw_model, fabric_model)
    verdict = "OK" if allclose else "MISMATCH"
    return allclose, f"re-check with deterministic kernels (math attention, {num_steps} steps): {verdict} (max |diff| = {max_diff:.3g})"


def measure(
    case: str,
    precision: str,
    device: torch.device,
    *,
    rounds: int,
    steps: int | None,
    warmup: int | None,
    gpt_config: GPTConfig,
) -> Row:
    workload = make_workload(case, device, gpt_config)
    num_steps = steps if steps is not None else workload.default_steps
    # One block of warm-up by default: allocator caches, autocast caches, lazy imports (zero_grad's dynamo guard).
    warmup = warmup if warmup is not None else max(5, num_steps)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.manual_seed(SEED)
    raw_model = workload.make_model().to(device)
    raw_optimizer = workload.make_optimizer(raw_model)
    raw = Runner(make_raw_step(raw_model, raw_optimizer, workload.loss_fn, precision, device.type), workload.batches, sync)

    torch.manual_seed(SEED)
    fabric_model = workload.make_model()
    fabric = Fabric(accelerator=device.type, devices=1, precision=precision)
    model, optimizer = fabric.setup(fabric_model, workload.make_optimizer(fabric_model))
    fab = Runner(make_fabric_step(fabric, model, optimizer, workload.loss_fn), workload.batches, sync)

    raw.run(warmup)
    fab.run(warmup)
    raw_times: list[float] = []
    fabric_times: list[float] = []
    # A full collection walks every object torch made at import (~0.1 s): freezing them keeps such pauses out of
    # the blocks, while the young-generation collections that each loop's own garbage causes still count.
    gc.collect()
    gc.freeze()
    try:
        for round_index in range(rounds):
            if round_index % 2 == 0:
                raw_times.append(raw.run(num_steps))
                fabric_times.append(fab.run(num_steps))
            else:
                fabric_times.append(fab.run(num_steps))
                raw_times.append(raw.run(num_steps))
    finally:
        gc.unfreeze()

    ratios = [f / r for f, r in zip(fabric_times, raw_times)]
    raw_ms = statistics.median(raw_times) / num_steps * 1e3
    fabric_ms = statistics.median(fabric_times) / num_steps * 1e3
    ratio = statistics.median(ratios)

    # Both models saw the same batches in the same order for the same number of steps.
    max_diff, allclose = compare_parameters(raw_model, fabric_model)  # setup moved the user's module in place
    params_match: bool | None = None
    recheck: str | None = None
    if precision == "32-true":
        params_match = allclose
        if not allclose and device.type == "cuda":
            # Some CUDA kernels (the fused attention backward among them) accumulate with atomics, so two identical
            # loops need not agree bit for bit, and Adam turns a flipped near-zero gradient into an lr-sized step.
            params_match, recheck = deterministic_recheck(case, device, gpt_config)

    goal = GOALS[case] if (case != "gpt" or device.type == "cuda") else None
    verdict = "n/a" if goal is None else ("PASS" if ratio <= goal else "FAIL")
    return Row(
        case=case,
        precision=precision,
        device=device.type,
        description=workload.description,
        rounds=rounds,
        steps=num_steps,
        raw_ms=raw_ms,
        fabric_ms=fabric_ms,
        ratio_median_of_rounds=ratio,
        ratio_of_medians=fabric_ms / raw_ms,
        ratio_p25=_quantile(ratios, 0.25),
        ratio_p75=_quantile(ratios, 0.75),
        ratio_of_minimums=min(fabric_times) / min(raw_times),
        goal=goal,
        verdict=verdict,
        within_noise=goal is not None and _quantile(ratios, 0.25) <= goal <= _quantile(ratios, 0.75),
        params_max_abs_diff=max_diff,
        params_allclose=allclose,
        params_match=params_match,
        params_recheck=recheck,
        raw_ms_rounds=[t / num_steps * 1e3 for t in raw_times],
        fabric_ms_rounds=[t / num_steps * 1e3 for t in fabric_times],
    )


# ------------------------------------------------------------------------------------ reporting
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'case':<9} {'precision':<10} {'device':<6} {'steps':>5} {'raw ms/step':>12} {'fabric ms/step':>15} "
        f"{'ratio(med rounds)':>17} {'[p25, p75]':>15} {'ratio(of medians)':>17} {'ratio(of mins)':>14} "
        f"{'goal':>7} {'result':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        goal = f"<={r.goal:g}" if r.goal is not None else "-"
        spread = f"[{r.ratio_p25:.3f}, {r.ratio_p75:.3f}]"
        print(
            f"{r.case:<9} {r.precision:<10} {r.device:<6} {r.steps:>5} {r.raw_ms:>12.4f} {r.fabric_ms:>15.4f} "
            f"{r.ratio_median_of_rounds:>17.4f} {spread:>15} {r.ratio_of_medians:>17.4f} {r.ratio_of_minimums:>14.4f} "
            f"{goal:>7} {r.verdict + ('*' if r.within_noise else ''):>6}"
        )


def print_correctness(rows: list[Row]) -> bool:
    print("\ncorrectness: raw and fabric models after identical batches (same seed, same steps)")
    ok = True
    for r in rows:
        if r.params_match is None:
            # Fabric casts the model output to fp32 and computes the loss outside autocast; the raw loop computes
            # it inside autocast. Both usually give the same numbers, but that is not a promise: not gated.
            close = "OK" if r.params_allclose else "differs"
            note = f"torch.allclose: {close} (info, not gated) (max |diff| = {r.params_max_abs_diff:.3g})"
        else:
            note = f"torch.allclose: {'OK' if r.params_allclose else 'MISMATCH'} (max |diff| = {r.params_max_abs_diff:.3g})"
            if r.params_recheck is not None:
                note += f"; not bitwise deterministic on CUDA, {r.params_recheck}"
            ok = ok and r.params_match
        print(f"  {r.case:<9} {r.precision:<10} {r.device:<6} {note}")
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per case (default 15)")
    parser.add_argument("--steps", type=int, default=None, help="steps timed per round and side (default: per case)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per side first (default: one round's steps, at least 5)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="auto: CPU, plus CUDA if present")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--precisions", default=None, help="comma-separated (default: 32-true,bf16-mixed, +16-mixed on CUDA)")
    parser.add_argument("--gpt-on-cpu", action="store_true", help="run a tiny GPT on CPU (smoke test; no goal)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads(N) first (default: leave torch's default)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.steps is not None and args.steps < 1) or (args.threads is not None and args.threads < 1):
        parser.error("--rounds, --steps and --threads must be at least 1")
    if args.precisions is not None:
        args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
        for precision in args.precisions:
            if precision not in PRECISIONS:
                parser.error(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in args.cases:
        if case not in CASES:
            parser.error(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--strategy" in argv:
        # Sharded strategies need a process group and a raw FSDP2 / DeepSpeed side: bench_multigpu.py measures them
        # the same way (interleaved rounds, ratio per round), here at world size 1 unless a launcher made more ranks.
        i = argv.index("--strategy")
        from bench_multigpu import main as sharded_main

        return sharded_main(["--strategies", argv[i + 1], *argv[:i], *argv[i + 2:]])
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("cpu", "auto"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda", torch.cuda.current_device()))

    print(f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"python:  {platform.python_version()}   torch: {torch.__version__}   threads: {torch.get_num_threads()}")
    for device in devices:
        print(f"device:  {device.type} = {_device_name(device)}")
    print(f"rounds:  {args.rounds} (interleaved, first side alternates)")

    rows: list[Row] = []
    skipped: list[str] = []
    for device in devices:
        precisions = list(args.precisions) if args.precisions else ["32-true", "bf16-mixed"]
        if args.precisions is None and device.type == "cuda":
            precisions.append("16-mixed")
        for case in args.cases:
            gpt_config = GPT_CUDA
            if case == "gpt" and device.type == "cpu":
                if not args.gpt_on_cpu:
                    skipped.append("gpt on cpu: skipped, the GPT goal is for CUDA (pass --gpt-on-cpu for a tiny smoke run)")
                    continue
                gpt_config = GPT_CPU_SMOKE
            for precision in precisions:
                if precision == "16-mixed" and device.type == "cpu":
                    skipped.append(f"{case} 16-mixed on cpu: skipped, fp16 autocast with a GradScaler is a CUDA recipe")
                    continue
                row = measure(
                    case, precision, device, rounds=args.rounds, steps=args.steps, warmup=args.warmup, gpt_config=gpt_config
                )
                rows.append(row)
                print(f"  done: {case} {precision} {device.type}: {row.description}", flush=True)

    print()
    print_table(rows)
    for line in skipped:
        print(f"note: {line}")
    correct = print_correctness(rows)
    missed = [r for r in rows if r.verdict == "FAIL"]
    passed = sum(r.verdict == "PASS" for r in rows)
    print(f"\ngoals: {passed} PASS, {len(missed)} FAIL (verdict on the median of the per-round ratios)")
    if any(r.within_noise for r in rows):
        print("* the goal lies inside [p25, p75] of that row's per-round ratios: the verdict is within this run's noise")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "devices": {d.type: _device_name(d) for d in devices},
            "rounds": args.rounds,
            "rows": [asdict(r) for r in rows],
            "skipped": skipped,
            "params_match": correct,
        }
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    if not correct:
        return 1
    if args.strict and missed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
