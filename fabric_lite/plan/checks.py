"""Plan step 6: the one table of unsupported combinations, each with its fix."""

from __future__ import annotations

from typing import Callable

from fabric_lite.accelerators import XLA_STRATEGIES
from fabric_lite.errors import ConfigurationError
from fabric_lite.plan.model import Plan
from fabric_lite.plan.slurm import CHECKS as SLURM_CHECKS
from fabric_lite.precision.deepspeed import PRECISION_SECTIONS

# (predicate, message) pairs; the message is "what you asked -> why -> Fix:".
_UNSUPPORTED: list[tuple[Callable[[Plan], bool], Callable[[Plan], str]]] = [
    (
        lambda p: p.strategy == "single_device" and p.world_size > 1,
        lambda p: (
            f"Fabric(strategy='single_device', devices={p.num_devices}, num_nodes={p.num_nodes}) asks for "
            f"{p.world_size} processes, but single_device runs exactly one. Fix: devices=1, or a multi-process strategy."
        ),
    ),
    (
        lambda p: p.accelerator == "mps" and p.precision == "64-true",
        lambda p: (
            "Fabric(accelerator='mps', precision='64-true') cannot work: MPS has no float64. "
            "Fix: precision='32-true', or accelerator='cpu' for float64."
        ),
    ),
    (
        lambda p: p.accelerator == "mps" and p.num_devices > 1,
        lambda p: f"Fabric(accelerator='mps', devices={p.num_devices}): a Mac has one MPS device. Fix: devices=1.",
    ),
]


def _external_mismatch(p: Plan) -> bool:
    if p.external_sizes is None or not p.devices_given or p.strategy == "dp":
        return False
    world, per_node = p.external_sizes
    return world != p.world_size or (per_node is not None and per_node != p.num_devices)


_UNSUPPORTED += [
    (
        lambda p: p.strategy == "dp" and p.accelerator != "cuda",
        lambda p: f"Fabric(strategy='dp', accelerator={p.accelerator!r}): DataParallel splits batches over CUDA GPUs. "
        f"Fix: strategy='ddp' for several {p.accelerator} processes, or accelerator='cuda'.",
    ),
    *SLURM_CHECKS,  # before the generic size check: they name the srun flags
    (
        _external_mismatch,
        lambda p: (
            f"Fabric(devices={p.num_devices}, num_nodes={p.num_nodes}) expects {p.world_size} processes "
            f"({p.num_devices} per node), but {p.cluster_environment} started {p.external_sizes[0]}"  # type: ignore[index]
            + (f" ({p.external_sizes[1]} per node)" if p.external_sizes and p.external_sizes[1] else "")  # type: ignore[index]
            + ". Fix: make them agree, e.g. srun --ntasks-per-node=DEVICES -N NUM_NODES, or torchrun "
            "--nproc-per-node=DEVICES --nnodes=NUM_NODES, or pass the matching devices/num_nodes to Fabric."
        ),
    ),
]


_XLA_PRECISIONS = ("32-true", "16-true", "bf16-true")
_UNSUPPORTED += [
    (
        lambda p: p.accelerator == "xla" and p.precision not in _XLA_PRECISIONS,
        lambda p: (
            f"Fabric(accelerator='xla', precision={p.precision!r}) cannot work: XLA devices take the model's dtype "
            f"(no autocast or GradScaler here). Choose one of: {', '.join(_XLA_PRECISIONS)}. "
            f"Fix: precision='bf16-true' for half precision on XLA."
        ),
    ),
    (
        lambda p: p.strategy in XLA_STRATEGIES and p.accelerator != "xla",
        lambda p: (
            f"Fabric(strategy={p.strategy!r}, accelerator={p.accelerator!r}): {p.strategy} runs on XLA devices only. "
            f"Fix: accelerator='xla' (or 'auto') with PJRT_DEVICE set, or strategy='ddp' for {p.accelerator} processes."
        ),
    ),
    (
        lambda p: p.accelerator == "xla" and p.strategy not in XLA_STRATEGIES,
        lambda p: (
            f"Fabric(accelerator='xla', strategy={p.strategy!r}): {p.strategy} does not run on XLA devices. "
            f"Choose one of: {', '.join(XLA_STRATEGIES)}."
        ),
    ),
    (
        lambda p: p.strategy == "single_xla" and p.world_size > 1,
        lambda p: (
            f"Fabric(strategy='single_xla', devices={p.num_devices}) asks for {p.world_size} XLA devices, but single_xla "
            f"runs on exactly one. Fix: devices=1, or strategy='xla' (one replica per device), 'xla_spmd' or 'xla_fsdp'."
        ),
    ),
    (
        lambda p: p.strategy in ("xla_spmd", "xla_fsdp") and p.num_nodes > 1,
        lambda p: (
            f"Fabric(strategy={p.strategy!r}, num_nodes={p.num_nodes}): this SPMD strategy builds a mesh of one host's "
            f"devices. Fix: num_nodes=1, or strategy='xla' for one replica per device across hosts."
        ),
    ),
]


_DEEPSPEED_PRECISIONS = ("32-true", *PRECISION_SECTIONS)
_UNSUPPORTED += [
    (
        lambda p: p.strategy_family == "deepspeed" and p.precision not in _DEEPSPEED_PRECISIONS,
        lambda p: (
            f"Fabric(strategy=DeepSpeedStrategy(...), precision={p.precision!r}) is not supported: DeepSpeed trains in "
            f"fp32, bf16 or fp16 only. Choose one of: {', '.join(_DEEPSPEED_PRECISIONS)}."
        ),
    ),
]


def validate(plan: Plan) -> None:
    """Raise the error of the first unsupported combination the plan contains."""
    for predicate, message in _UNSUPPORTED:
        if predicate(plan):
            raise ConfigurationError(message(plan))
