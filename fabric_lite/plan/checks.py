"""Plan step 6: the one table of unsupported combinations, each with its fix."""

from __future__ import annotations

from typing import Callable

from fabric_lite.errors import ConfigurationError
from fabric_lite.plan.model import Plan
from fabric_lite.plan.slurm import CHECKS as SLURM_CHECKS

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


def validate(plan: Plan) -> None:
    """Raise the error of the first unsupported combination the plan contains."""
    for predicate, message in _UNSUPPORTED:
        if predicate(plan):
            raise ConfigurationError(message(plan))
