"""Name -> factory tables with lazy imports; a miss lists the valid names.

Factories are given as ``"module:attribute"`` strings so that registering a strategy or accelerator
never imports its (possibly heavy, possibly absent) dependencies.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from fabric_lite.errors import choices_error


@dataclass(frozen=True)
class Entry:
    """One registered name: where its factory lives, its default arguments and a one-line description."""

    name: str
    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: For strategies: the family whose precision plugins and process-group backend the plan picks
    #: ("ddp", "fsdp", "deepspeed", "xla", or "" for one process without a process group).
    family: str = ""

    def load(self) -> Callable[..., Any]:
        module_name, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attribute)

    def create(self, **context: Any) -> Any:
        """Call the factory with its registered arguments plus those of ``context`` it accepts."""
        factory = self.load()
        accepted = {k: v for k, v in context.items() if k in accepted_parameters(factory)}
        return factory(**{**accepted, **self.kwargs})


def accepted_parameters(factory: Callable[..., Any]) -> set[str]:
    """The keyword names a factory takes by name: its named parameters, and for a class whose ``**kwargs`` forward
    its base's arguments, those (``positional_arguments``). Other ``**kwargs`` may mean something else (DDP's options).
    """
    named = set(inspect.signature(factory).parameters)
    return named | set(getattr(factory, "positional_arguments", ()))


class Registry:
    """A table of names for one kind of component (accelerator, strategy, precision, ...).

    Example:
        >>> reg = Registry("strategy")
        >>> reg.register("single_device", "fabric_lite.strategies.single_device:SingleDeviceStrategy")
        >>> "single_device" in reg
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str,
        target: str,
        *,
        aliases: tuple[Any, ...] = (),
        description: str = "",
        family: str = "",
        **kwargs: Any,
    ) -> None:
        self._entries[name] = Entry(name, target, dict(kwargs), description, family)
        for alias in aliases:
            self._aliases[str(alias).lower()] = name

    def canonical(self, name: Any) -> str | None:
        """The registered name for ``name`` or one of its aliases, or None."""
        key = str(name).strip().lower()
        if key in self._entries:
            return key
        return self._aliases.get(key)

    def get(self, name: Any, *, asked: str) -> Entry:
        canonical = self.canonical(name)
        if canonical is None:
            raise choices_error(asked, self.kind, self.names())
        return self._entries[canonical]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return self.canonical(name) is not None

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())


# ---------------------------------------------------------------------------------------------
# The tables. Names and aliases follow Lightning Fabric so that scripts move over unchanged.

ACCELERATORS = Registry("accelerator")
ACCELERATORS.register("cpu", "fabric_lite.accelerators:CPUAccelerator", description="the CPU; devices counts processes")
ACCELERATORS.register("cuda", "fabric_lite.accelerators:CUDAAccelerator", description="NVIDIA/AMD GPUs via torch.cuda")
ACCELERATORS.register("mps", "fabric_lite.accelerators:MPSAccelerator", description="Apple silicon GPU")
ACCELERATORS.register("xla", "fabric_lite.accelerators:XLAAccelerator", aliases=("tpu",), description="XLA devices via torch_xla")

STRATEGIES = Registry("strategy")
STRATEGIES.register(
    "single_device", "fabric_lite.strategies.single_device:SingleDeviceStrategy", description="one process, one device"
)
_DDP = "fabric_lite.strategies.ddp:DDPStrategy"
STRATEGIES.register("ddp", _DDP, family="ddp", start_method="popen", description="DDP; `python train.py` re-runs the script per rank")
STRATEGIES.register("ddp_spawn", _DDP, family="ddp", start_method="spawn", description="DDP in processes made by spawn")
STRATEGIES.register("ddp_fork", _DDP, family="ddp", start_method="fork", description="DDP in processes made by fork")
STRATEGIES.register("ddp_notebook", _DDP, family="ddp", start_method="fork", description="DDP from a notebook (fork)")
STRATEGIES.register(
    "ddp_find_unused_parameters_true", _DDP, family="ddp", start_method="popen", find_unused_parameters=True,
    description="DDP that tolerates parameters without gradients",
)
STRATEGIES.register(
    "ddp_spawn_find_unused_parameters_true", _DDP, family="ddp", start_method="spawn", find_unused_parameters=True,
    description="ddp_spawn that tolerates parameters without gradients",
)
STRATEGIES.register("dp", "fabric_lite.strategies.dp:DataParallelStrategy", description="DataParallel: one process, several GPUs")
STRATEGIES.register(
    "fsdp", "fabric_lite.strategies.fsdp:FSDPStrategy", family="fsdp", start_method="popen",
    description="FSDP2 (fully_shard): parameters, gradients and optimizer state sharded; `python train.py` re-runs the script per rank",
)
_DEEPSPEED = "fabric_lite.strategies.deepspeed:DeepSpeedStrategy"
_DEEPSPEED_POPEN = {"family": "deepspeed", "start_method": "popen"}
STRATEGIES.register("deepspeed", _DEEPSPEED, **_DEEPSPEED_POPEN, description="DeepSpeed ZeRO stage 2 (or your config)")
STRATEGIES.register("deepspeed_stage_1", _DEEPSPEED, **_DEEPSPEED_POPEN, stage=1, description="ZeRO-1: optimizer state sharded")
STRATEGIES.register("deepspeed_stage_2", _DEEPSPEED, **_DEEPSPEED_POPEN, stage=2, description="ZeRO-2: + gradients sharded")
STRATEGIES.register(
    "deepspeed_stage_2_offload", _DEEPSPEED, **_DEEPSPEED_POPEN, stage=2, offload_optimizer=True,
    description="ZeRO-2 with optimizer state in CPU memory",
)
STRATEGIES.register("deepspeed_stage_3", _DEEPSPEED, **_DEEPSPEED_POPEN, stage=3, description="ZeRO-3: + parameters sharded")
STRATEGIES.register(
    "deepspeed_stage_3_offload", _DEEPSPEED, **_DEEPSPEED_POPEN, stage=3, offload_optimizer=True,
    offload_parameters=True, description="ZeRO-3 with optimizer state and parameters in CPU memory",
)
STRATEGIES.register(
    "deepspeed_stage_3_offload_nvme", _DEEPSPEED, **_DEEPSPEED_POPEN, stage=3, offload_optimizer=True,
    offload_parameters=True, offload_optimizer_device="nvme", offload_params_device="nvme",
    description="ZeRO-3 with optimizer state and parameters on NVMe (set nvme_path)",
)
_XLA = "fabric_lite.strategies.xla"
STRATEGIES.register(
    "single_xla", f"{_XLA}:SingleDeviceXLAStrategy", family="xla",
    description="one XLA device (TPU core, or XLA's CPU device)",
)
STRATEGIES.register(
    "xla", f"{_XLA}:XLAStrategy", family="xla", start_method="xla",
    description="data parallel, one replica per XLA device, made by torch_xla.launch (`fabric.launch(train)`)",
)
STRATEGIES.register(
    "xla_spmd", f"{_XLA}_spmd:XLASPMDStrategy", family="xla", fsdp=False,
    description="SPMD data parallel over a mesh of all XLA devices, one process; parameters replicated",
)
STRATEGIES.register(
    "xla_fsdp", f"{_XLA}_spmd:XLASPMDStrategy", family="xla", fsdp=True,
    description="FSDPv2: SPMD over a mesh of all XLA devices, one process; parameters sharded",
)

LAUNCHERS = Registry("launcher")
LAUNCHERS.register("none", "fabric_lite.launchers.external:ExternalLauncher", description="one process")
LAUNCHERS.register("external", "fabric_lite.launchers.external:ExternalLauncher", description="processes already made")
LAUNCHERS.register("subprocess", "fabric_lite.launchers.subprocess:SubprocessLauncher", description="re-run the script")
for _method in ("spawn", "fork", "forkserver"):
    LAUNCHERS.register(_method, "fabric_lite.launchers.spawn:MultiProcessLauncher", start_method=_method)
LAUNCHERS.register("xla", "fabric_lite.launchers.xla:XLALauncher", description="torch_xla.launch: one replica per XLA device")

PRECISIONS = Registry("precision")
PRECISIONS.register("32-true", "fabric_lite.precision.base:Precision", aliases=(32, "32"), description="fp32")
PRECISIONS.register("64-true", "fabric_lite.precision.true:DoublePrecision", aliases=(64, "64"), description="fp64")
PRECISIONS.register(
    "16-mixed", "fabric_lite.precision.amp:MixedPrecision", aliases=(16, "16"), precision="16-mixed",
    description="fp16 autocast + GradScaler",
)
PRECISIONS.register(
    "bf16-mixed", "fabric_lite.precision.amp:MixedPrecision", aliases=("bf16",), precision="bf16-mixed",
    description="bf16 autocast",
)
PRECISIONS.register("16-true", "fabric_lite.precision.true:HalfPrecision", precision="16-true", description="fp16 weights")
PRECISIONS.register(
    "bf16-true", "fabric_lite.precision.true:HalfPrecision", precision="bf16-true", description="bf16 weights"
)

ENVIRONMENTS = Registry("cluster environment")
ENVIRONMENTS.register("torchelastic", "fabric_lite.environments.torchelastic:TorchElasticEnvironment")
ENVIRONMENTS.register("slurm", "fabric_lite.environments.slurm:SLURMEnvironment")
ENVIRONMENTS.register("lsf", "fabric_lite.environments.lsf:LSFEnvironment")
ENVIRONMENTS.register("mpi", "fabric_lite.environments.mpi:MPIEnvironment")
ENVIRONMENTS.register("kubeflow", "fabric_lite.environments.kubeflow:KubeflowEnvironment")
ENVIRONMENTS.register("xla", "fabric_lite.environments.xla:XLAEnvironment")
ENVIRONMENTS.register("local", "fabric_lite.environments.local:LocalEnvironment")
