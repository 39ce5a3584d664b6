"""Plan step 5 for precision: which plugin runs a precision under a strategy family, and the process-group backend.

One table, read here only: ``(strategy family, precision) -> plugin``. A family without a row for a
precision takes the plain PyTorch plugin of that name (``registry.PRECISIONS``). A plugin the user
passed is adapted once by its family's function (e.g. a MixedPrecision under FSDP gets a ShardedGradScaler).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fabric_lite.precision.base import Precision
from fabric_lite.registry import PRECISIONS, STRATEGIES, Entry

_DEEPSPEED = "fabric_lite.precision.deepspeed:DeepSpeedPrecision"
_FSDP = "fabric_lite.precision.fsdp:FSDPPrecision"
_XLA = "fabric_lite.precision.xla:XLAPrecision"

#: (family, precision) -> (factory, why). The "xla" family is that of the accelerator.
PLUGINS: dict[tuple[str, str], tuple[str, str]] = {
    **{("deepspeed", p): (_DEEPSPEED, "the DeepSpeed engine holds the half-precision weights itself")
       for p in ("bf16-mixed", "bf16-true", "16-mixed", "16-true")},
    **{("fsdp", p): (_FSDP, "FSDP casts the compute parameters; fp16 needs the ShardedGradScaler")
       for p in ("bf16-mixed", "16-mixed")},
    **{("xla", p): (_XLA, "XLA devices take the model's dtype and cut the graph after each step")
       for p in ("32-true", "16-true", "bf16-true")},
}
#: family -> the function that adapts a plugin the user passed (a MixedPrecision given to FSDP, ...).
ADAPTERS = {
    "deepspeed": "fabric_lite.precision.deepspeed:deepspeed_precision",
    "fsdp": "fabric_lite.precision.fsdp:fsdp_precision",
}
#: The families whose processes talk through a torch.distributed process group.
PROCESS_GROUP_FAMILIES = ("ddp", "fsdp", "deepspeed")


@dataclass(frozen=True)
class PrecisionPlugin:
    """The plugin the plan picked: a factory to call, or the user's plugin with the adapter to apply."""

    entry: Entry | None = None
    adapter: str | None = None
    instance: Precision | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        if self.instance is not None:
            return type(self.instance).__name__ + (f" via {self.adapter.rpartition(':')[2]}" if self.adapter else "")
        assert self.entry is not None
        return self.entry.target.rpartition(":")[2]

    def create(self, *, device: str) -> Precision:
        """Build (or adapt) the plugin; a new object each time, the user's is left as it was."""
        if self.instance is not None:
            if self.adapter is None:
                return self.instance
            return Entry("adapter", self.adapter).load()(self.instance)
        assert self.entry is not None
        return self.entry.create(device=device)


def strategy_family(strategy: Any) -> str:
    """The family of a strategy name or instance (its registered name's family; "" when unregistered)."""
    name = getattr(strategy, "name", strategy)
    canonical = STRATEGIES.canonical(name) if isinstance(name, str) else None
    return STRATEGIES.get(canonical, asked="").family if canonical else ""


def pick_plugin(
    family: str, accelerator: str, precision: str, instance: Precision | None, reasons: dict[str, str]
) -> PrecisionPlugin:
    """The precision plugin for ``precision`` under ``family`` on ``accelerator``, with its reason."""
    row_family = "xla" if accelerator == "xla" else family
    if instance is not None:
        adapter = ADAPTERS.get(row_family)
        reasons["precision_plugin"] = (
            f"the plugin passed, adapted for {row_family}" if adapter else "the plugin passed"
        )
        return PrecisionPlugin(adapter=adapter, instance=instance)
    row = PLUGINS.get((row_family, precision))
    if row is not None:
        target, why = row
        reasons["precision_plugin"] = f"{row_family} + {precision}: {why}"
        return PrecisionPlugin(entry=Entry(precision, target, {"precision": precision}))
    entry = PRECISIONS.get(precision, asked=precision)
    reasons["precision_plugin"] = f"{precision} in plain PyTorch" + (f" (no {family} row)" if family else "")
    return PrecisionPlugin(entry=entry)


def pick_backend(family: str, accelerator: str, strategy_instance: Any, reasons: dict[str, str]) -> str:
    """The torch.distributed backend of the process group ("none" for families without one)."""
    if family not in PROCESS_GROUP_FAMILIES:
        reasons["backend"] = "no process group: one process, or XLA's own runtime"
        return "none"
    given = strategy_instance.arguments.get("process_group_backend") if strategy_instance is not None else None
    if given:
        reasons["backend"] = "the strategy instance's process_group_backend"
        return str(given)
    backend = "nccl" if accelerator == "cuda" else "gloo"
    reasons["backend"] = f"{backend} is torch.distributed's backend for {accelerator} tensors"
    return backend
