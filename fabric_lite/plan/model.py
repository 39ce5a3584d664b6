"""The Plan: what will run, decided once, with the reason for each choice (built by ``fabric_lite.plan.resolve``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fabric_lite.accelerators import Accelerator
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.precision.base import Precision
from fabric_lite.plan.precision import PrecisionPlugin
from fabric_lite.strategies.base import Strategy


@dataclass(frozen=True)
class Plan:
    """What will run, decided once: names, device indices, sizes, the reasons, and any user instances."""

    accelerator: str
    strategy: str
    precision: str
    cluster_environment: str
    launcher: str
    devices: tuple[int, ...]
    num_nodes: int
    reasons: Mapping[str, str]
    #: (world size, processes per node) reported by an environment that made the processes, else None.
    external_sizes: tuple[int, int | None] | None = None
    devices_given: bool = True
    #: The job scheduler's variables (``SLURM_*``, and ``NODE_RANK``) seen at resolve time: the checks word
    #: their hints from them (e.g. the srun flags that would have worked).
    scheduler_env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    accelerator_instance: Accelerator | None = field(default=None, repr=False, compare=False)
    strategy_instance: Strategy | None = field(default=None, repr=False, compare=False)
    precision_instance: Precision | None = field(default=None, repr=False, compare=False)
    environment_instance: ClusterEnvironment | None = field(default=None, repr=False, compare=False)
    #: Seconds a collective may wait (FABRIC_LITE_COLLECTIVE_TIMEOUT), None: the strategy's own.
    collective_timeout: float | None = None
    #: The Preemption plugin (utilities/preemption.py), if one was passed.
    preemption_instance: Any = field(default=None, repr=False, compare=False)
    #: The precision plugin for (strategy family, precision), picked by ``plan/precision.py``.
    precision_plugin: PrecisionPlugin | None = field(default=None, compare=False)
    #: The torch.distributed backend of the process group, or "none".
    backend: str = "none"
    #: The strategy's family ("ddp", "fsdp", "deepspeed", "xla", "" for one plain process).
    strategy_family: str = ""

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def world_size(self) -> int:
        return self.num_devices * self.num_nodes

    def table(self) -> str:
        """The plan as an aligned text table: component, choice, reason."""
        rows = [
            ("accelerator", self.accelerator),
            ("strategy", self.strategy),
            ("precision", self.precision),
            ("precision_plugin", self.precision_plugin.name if self.precision_plugin is not None else "-"),
            ("backend", self.backend),
            ("cluster_environment", self.cluster_environment),
            ("launcher", self.launcher),
            ("devices", ",".join(map(str, self.devices))),
            ("num_nodes", str(self.num_nodes)),
        ]
        width = max(len(name) for name, _ in rows)
        choice_width = max(len(choice) for _, choice in rows)
        lines = [f"{'component'.ljust(width)}  {'choice'.ljust(choice_width)}  reason"]
        lines += [f"{name.ljust(width)}  {choice.ljust(choice_width)}  {self.reasons.get(name, '')}" for name, choice in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
