"""Resolve the user's arguments plus the environment into a frozen Plan, with the reason for each choice.

All argument resolution happens here and only here (ARCHITECTURE.md, "Where each decision is made"):

1. Normalise: lower-case strings, map aliases; an instance beats a string; an instance plus a
   conflicting string is an error. ``FABRIC_LITE_*`` settings handed over by ``fabric-run`` are read here.
2. Accelerator: "auto" is the first available of xla, cuda, mps, cpu.
3. Environment: the first of torchelastic, lsf, mpi, slurm, kubeflow, xla whose ``detect()`` is true, else local.
4. Strategy: "auto" is single_device at world size 1, else the accelerator's default.
5. Precision and launcher: table look-ups.
6. Validate against one table of unsupported combinations, each with its fix.

``resolve`` reads nothing but its arguments: the environment and the device counts are passed in
(``env`` and ``available``) and default to ``os.environ`` and a probe of this process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from fabric_lite.accelerators import AUTO_ORDER, XLA_STRATEGIES, Accelerator, XLAAccelerator, probe_available
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.errors import ConfigurationError, FabricEnvironmentError, choices_error
from fabric_lite.precision.base import Precision
from fabric_lite.plan.checks import validate
from fabric_lite.plan.devices import resolve_devices, resolve_num_nodes
from fabric_lite.plan.model import Plan
from fabric_lite.plan.precision import pick_backend, pick_plugin, strategy_family
from fabric_lite.plan.reliability import check_environment, collective_timeout, preemption_plugin
from fabric_lite.registry import ACCELERATORS, ENVIRONMENTS, LAUNCHERS, PRECISIONS, STRATEGIES
from fabric_lite.strategies.base import Strategy
from fabric_lite.utilities.preemption import Preemption

__all__ = ["HANDOVER", "Plan", "resolve"]

#: The variables ``fabric-run`` uses to hand settings to the script, by Fabric argument.
HANDOVER = {
    "accelerator": "FABRIC_LITE_ACCELERATOR",
    "strategy": "FABRIC_LITE_STRATEGY",
    "devices": "FABRIC_LITE_DEVICES",
    "num_nodes": "FABRIC_LITE_NUM_NODES",
    "precision": "FABRIC_LITE_PRECISION",
}
_DEFAULTS: dict[str, Any] = {"accelerator": "auto", "strategy": "auto", "devices": "auto", "num_nodes": 1, "precision": None}

# The order in which environments are detected; the last always matches. A launcher that starts the training
# processes itself comes before the scheduler it may run under: torchrun's workers carry the variables of whatever
# started torchrun; jsrun's tasks may carry OpenMPI's too (same ranks, but LSF also names the hosts); and mpirun
# (OpenMPI, Intel MPI) inside a SLURM job starts its per-node daemons with srun, so its processes inherit a SLURM
# step's variables that count nodes, not processes. Kubeflow's pod variables are plain RANK/WORLD_SIZE, so any
# launcher that sets its own wins over them.
_ENVIRONMENT_ORDER = ("torchelastic", "lsf", "mpi", "slurm", "kubeflow", "xla", "local")
# strategy="auto" with more than one process, by accelerator.
_MULTI_PROCESS_DEFAULT = {"cpu": "ddp", "cuda": "ddp", "mps": "ddp", "xla": "xla"}
_SINGLE_PROCESS_DEFAULT = {"xla": "single_xla"}
# Strategies in which one process drives every device: nothing to launch whatever the device count.
_ONE_PROCESS_STRATEGIES = ("dp", "xla_spmd", "xla_fsdp")


def resolve(
    *,
    accelerator: str | Accelerator = "auto",
    strategy: str | Strategy = "auto",
    devices: int | str | Sequence[int] = "auto",
    num_nodes: int = 1,
    precision: str | int | None = None,
    plugins: Any = None,
    env: Mapping[str, str] | None = None,
    available: Mapping[str, int] | None = None,
) -> Plan:
    """Turn Fabric's constructor arguments into a Plan.

    Args:
        accelerator, strategy, devices, num_nodes, precision, plugins: as ``Fabric(...)``.
        env: the process environment (default ``os.environ``).
        available: device count per present accelerator (default: probe this process). Tests pass
            e.g. ``{"cpu": 1, "cuda": 4}`` to plan for hardware this machine lacks.

    Example:
        >>> plan = resolve(accelerator="cpu", precision="bf16", env={}, available={"cpu": 1})
        >>> plan.strategy, plan.precision
        ('single_device', 'bf16-mixed')
    """
    env = os.environ if env is None else env
    available = probe_available() if available is None else dict(available)
    reasons: dict[str, str] = {}
    given = {"accelerator": accelerator, "strategy": strategy, "devices": devices, "num_nodes": num_nodes, "precision": precision}
    given = _apply_handover(given, env, reasons)

    precision_plugin, environment_plugin = _split_plugins(plugins, given["precision"])
    preemption = preemption_plugin(list(plugins) if isinstance(plugins, (list, tuple)) else [plugins])
    accelerator_instance = given["accelerator"] if isinstance(given["accelerator"], Accelerator) else None
    strategy_instance = given["strategy"] if isinstance(given["strategy"], Strategy) else None

    accelerator_name = _resolve_accelerator(given["accelerator"], strategy_instance, available, reasons, given["strategy"])
    device_indices = resolve_devices(
        given["devices"], accelerator_name, available, reasons, asked=_asked("devices", given["devices"], reasons)
    )
    nodes = resolve_num_nodes(given["num_nodes"], reasons, asked=_asked("num_nodes", given["num_nodes"], reasons))
    environment_name = _resolve_environment(environment_plugin, env, reasons)
    world_size = len(device_indices) * nodes
    environment = environment_plugin or ENVIRONMENTS.get(environment_name, asked=environment_name).create(
        env=env, num_processes=len(device_indices), num_nodes=nodes
    )
    check_environment(env, environment)  # rank variables that are not integers or do not fit together
    external = environment.creates_processes_externally
    external_sizes = None
    if external:
        # Processes made by someone else: their count, not ours, decides one process or many.
        world_size = environment.world_size()
        external_sizes = (world_size, environment.local_world_size())
    strategy_name = _resolve_strategy(given["strategy"], accelerator_name, world_size, environment_name, reasons)
    if strategy_instance is not None and precision_plugin is None:
        precision_plugin = _strategy_precision(strategy_instance, given["precision"], reasons)
    precision_name = _resolve_precision(given["precision"], precision_plugin, reasons)
    family = strategy_family(strategy_instance if strategy_instance is not None else strategy_name)
    plugin = pick_plugin(family, accelerator_name, precision_name, precision_plugin, reasons)
    backend = pick_backend(family, accelerator_name, strategy_instance, reasons)
    launcher = _resolve_launcher(strategy_name, strategy_instance, external, environment_name, world_size, reasons)
    timeout_s = collective_timeout(env, strategy_instance, reasons)

    plan = Plan(
        accelerator=accelerator_name,
        strategy=strategy_name,
        precision=precision_name,
        cluster_environment=environment_name,
        launcher=launcher,
        devices=device_indices,
        num_nodes=nodes,
        reasons=reasons,
        external_sizes=external_sizes,
        devices_given=given["devices"] != "auto",
        scheduler_env={k: v for k, v in env.items() if k.startswith("SLURM_") or k == "NODE_RANK"},
        accelerator_instance=accelerator_instance,
        strategy_instance=strategy_instance,
        precision_instance=precision_plugin,
        precision_plugin=plugin,
        backend=backend,
        strategy_family=family,
        environment_instance=environment_plugin,
        collective_timeout=timeout_s,
        preemption_instance=preemption,
    )
    validate(plan)
    return plan


# --------------------------------------------------------------------------------- step 1
def _normalise(name: str, value: Any) -> Any:
    if name in ("accelerator", "strategy", "precision") and isinstance(value, str):
        return value.strip().lower()
    return value


def _apply_handover(given: dict[str, Any], env: Mapping[str, str], reasons: dict[str, str]) -> dict[str, Any]:
    """Take settings from FABRIC_LITE_* variables; an explicit argument that disagrees is an error."""
    result = {name: _normalise(name, value) for name, value in given.items()}
    for name, variable in HANDOVER.items():
        if variable not in env:
            continue
        handed = _normalise(name, env[variable])
        ours = result[name]
        if ours == _DEFAULTS[name] or ours is None:
            result[name] = handed
            reasons[name] = f"from {variable}={env[variable]} (set by fabric-run)"
        elif _instance_named(ours, handed, name):
            continue  # e.g. FSDPStrategy(...) in the script under fabric-run --strategy fsdp: the instance wins
        elif str(ours).replace(" ", "") != str(handed).replace(" ", "") and not _same_alias(name, ours, handed):
            raise ConfigurationError(
                f"Fabric({name}={given[name]!r}) conflicts with {variable}={env[variable]!r} set by fabric-run. "
                f"Fix: drop the argument from Fabric(...) to use the command-line value, or run "
                f"fabric-run with --{name.replace('_', '-')}={given[name]}."
            )
    return result


def _instance_named(value: Any, handed: Any, name: str) -> bool:
    """An Accelerator/Strategy/Precision instance whose registered name is the one handed over."""
    own = getattr(value, "name", None)
    return isinstance(value, (Accelerator, Strategy, Precision)) and bool(own) and (
        own == handed or _same_alias(name, own, handed)
    )


def _asked(name: str, value: Any, reasons: Mapping[str, str]) -> str:
    """How to name the user's request in an error: the argument, or the variable fabric-run set."""
    if reasons.get(name, "").startswith("from FABRIC_LITE_"):
        return f"{HANDOVER[name]}={value!r} (set by fabric-run)"
    return f"Fabric({name}={value!r})"


def _same_alias(name: str, a: Any, b: Any) -> bool:
    registry = {"precision": PRECISIONS, "strategy": STRATEGIES, "accelerator": ACCELERATORS}.get(name)
    return registry is not None and registry.canonical(a) is not None and registry.canonical(a) == registry.canonical(b)


def _split_plugins(plugins: Any, precision: Any) -> tuple[Precision | None, ClusterEnvironment | None]:
    if plugins is None:
        return None, None
    items = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    precision_plugins = [p for p in items if isinstance(p, Precision)]
    environments = [p for p in items if isinstance(p, ClusterEnvironment)]
    unknown = [p for p in items if not isinstance(p, (Precision, ClusterEnvironment, Preemption))]
    if unknown:
        raise ConfigurationError(
            f"Fabric(plugins=[{', '.join(type(p).__name__ for p in unknown)}]) is not a supported plugin. "
            f"Choose instances of: Precision, ClusterEnvironment, Preemption. Fix: pass precision names as precision='bf16-mixed'."
        )
    for kind, found in (("precision plugin", precision_plugins), ("cluster environment", environments)):
        if len(found) > 1:
            raise ConfigurationError(
                f"Fabric(plugins=[...]) received {len(found)} {kind}s ({', '.join(type(p).__name__ for p in found)}); "
                f"only one can be active. Fix: pass just one."
            )
    precision_plugin = precision_plugins[0] if precision_plugins else None
    if precision_plugin is not None and precision is not None:
        raise ConfigurationError(
            f"Fabric(precision={precision!r}, plugins=[{type(precision_plugin).__name__}(...)]) sets the precision "
            f"twice. Fix: drop precision=... and keep the plugin, or drop the plugin."
        )
    return precision_plugin, environments[0] if environments else None


# --------------------------------------------------------------------------------- step 2
def _resolve_accelerator(
    value: Any, strategy_instance: Strategy | None, available: Mapping[str, int], reasons: dict[str, str],
    strategy: Any = None,
) -> str:
    if isinstance(value, Accelerator):
        reasons.setdefault("accelerator", "an Accelerator instance was passed")
        return value.name or type(value).__name__
    if not isinstance(value, str):
        raise choices_error(f"Fabric(accelerator={value!r})", "accelerator", ["auto", "gpu", *ACCELERATORS.names()])
    strategy_device = _given_device(strategy_instance)
    if value == "auto":
        if _is_xla_strategy(strategy):
            if available.get("xla", 0) <= 0:
                raise XLAAccelerator.unavailable_error(_asked("strategy", strategy, reasons))
            reasons.setdefault("accelerator", "auto: the strategy runs on XLA devices")
            return "xla"
        if strategy_device is not None:
            reasons.setdefault("accelerator", f"the device of the strategy instance ({strategy_device})")
            return strategy_device.type
        name = next(n for n in AUTO_ORDER if available.get(n, 0) > 0 or n == "cpu")
        reasons.setdefault("accelerator", f"auto: first available of {', '.join(AUTO_ORDER)}")
        return name
    if value == "gpu":
        for name in ("cuda", "mps"):
            if available.get(name, 0) > 0:
                reasons.setdefault("accelerator", f"'gpu' means the GPU present: {name}")
                return name
        raise FabricEnvironmentError(
            f"Fabric(accelerator='gpu') found no GPU: neither CUDA nor MPS is available in this process. "
            f"Available: {', '.join(sorted(available))}. Fix: use accelerator='cpu' or 'auto'."
        )
    name = ACCELERATORS.canonical(value)
    if name is None:
        raise choices_error(_asked("accelerator", value, reasons), "accelerator", ["auto", "gpu", *ACCELERATORS.names()])
    if available.get(name, 0) <= 0 and name == "xla":
        raise XLAAccelerator.unavailable_error(_asked("accelerator", value, reasons))
    if available.get(name, 0) <= 0 and name != "cpu":
        raise FabricEnvironmentError(
            f"Fabric(accelerator={value!r}) cannot run here: no {name} device is available in this process. "
            f"Available: {', '.join(sorted(available))}. Fix: use accelerator='auto' or one of those."
        )
    if strategy_device is not None and strategy_device.type != name:
        raise ConfigurationError(
            f"Fabric(accelerator={value!r}, strategy={type(strategy_instance).__name__}(device={str(strategy_device)!r})) "
            f"asks for two different devices. Fix: drop accelerator=..., or give the strategy a {name} device."
        )
    reasons.setdefault("accelerator", "requested")
    return name


def _given_device(strategy: Strategy | None) -> Any:
    """The device a strategy instance was given (``SingleDeviceStrategy(device=...)``), as a torch.device."""
    import inspect

    import torch

    parameters = inspect.signature(type(strategy).__init__).parameters if strategy is not None else {}
    if "device" not in parameters:
        return None
    device = strategy.arguments.get("device", parameters["device"].default)  # type: ignore[union-attr]
    if isinstance(device, int) and strategy.name in XLA_STRATEGIES:  # type: ignore[union-attr]
        return torch.device("xla", device)
    return device if isinstance(device, torch.device) else torch.device(device)


def _is_xla_strategy(value: Any) -> bool:
    """Whether a strategy name or instance is one of the XLA strategies (they need an XLA device)."""
    name = value.name if isinstance(value, Strategy) else STRATEGIES.canonical(value) if isinstance(value, str) else None
    return name in XLA_STRATEGIES


# --------------------------------------------------------------------------------- step 3
def _resolve_environment(plugin: ClusterEnvironment | None, env: Mapping[str, str], reasons: dict[str, str]) -> str:
    if plugin is not None:
        reasons["cluster_environment"] = "a ClusterEnvironment plugin was passed"
        return plugin.name or type(plugin).__name__
    for name in _ENVIRONMENT_ORDER:
        environment = ENVIRONMENTS.get(name, asked=name).load()
        if environment.detect(env):
            describe = getattr(environment, "describe", None)
            reasons["cluster_environment"] = (
                "no launcher variables found" if name == "local"
                else f"detected {name} variables" + (f": {describe(env)}" if describe is not None else "")
            )
            return name
    raise AssertionError("the local environment always matches")


# --------------------------------------------------------------------------------- step 4
def _resolve_strategy(value: Any, accelerator: str, world_size: int, environment: str, reasons: dict[str, str]) -> str:
    if isinstance(value, Strategy):
        reasons.setdefault("strategy", "a Strategy instance was passed")
        return value.name or type(value).__name__
    if not isinstance(value, str):
        raise choices_error(f"Fabric(strategy={value!r})", "strategy", ["auto", *STRATEGIES.names()])
    if value == "auto":
        if world_size == 1:
            name = _SINGLE_PROCESS_DEFAULT.get(accelerator, "single_device")
            reasons.setdefault("strategy", "auto: one process")
        else:
            name = _MULTI_PROCESS_DEFAULT.get(accelerator, "ddp")
            reasons.setdefault("strategy", f"auto: {world_size} processes on {accelerator}")
        if name not in STRATEGIES:
            raise ConfigurationError(
                f"Fabric(strategy='auto') chose {name!r} for {world_size} process(es) on {accelerator}, but this "
                f"version of fabric_lite does not provide it yet. Available strategies: {', '.join(STRATEGIES.names())}. "
                f"Fix: run one process (devices=1)."
            )
        return name
    entry = STRATEGIES.get(value, asked=_asked("strategy", value, reasons))
    reasons.setdefault("strategy", "requested")
    return entry.name


# --------------------------------------------------------------------------------- step 5
def _strategy_precision(strategy: Strategy, asked: Any, reasons: dict[str, str]) -> Precision | None:
    """A strategy instance's own precision plugin is used unless the user asked for another one."""
    if strategy.arguments.get("precision") is None:  # the instance was given no precision
        return None
    own = strategy.precision
    if asked is not None and PRECISIONS.canonical(asked) != own.name:
        raise ConfigurationError(
            f"Fabric(precision={asked!r}, strategy={type(strategy).__name__}(precision={type(own).__name__}('{own.name}'))) "
            f"sets the precision twice. Fix: drop precision=... or create the strategy without a precision."
        )
    reasons["precision"] = "the strategy instance's precision"
    return own


def _resolve_precision(value: Any, plugin: Precision | None, reasons: dict[str, str]) -> str:
    if plugin is not None:
        reasons.setdefault("precision", "a Precision plugin was passed")
        return plugin.name
    if value is None:
        reasons.setdefault("precision", "default: full fp32")
        return "32-true"
    entry = PRECISIONS.get(value, asked=_asked("precision", value, reasons))
    reasons.setdefault("precision", "requested" if str(value) == entry.name else f"alias {value!r} of {entry.name}")
    return entry.name


def _resolve_launcher(
    strategy: str,
    strategy_instance: Strategy | None,
    external: bool,
    environment: str,
    world_size: int,
    reasons: dict[str, str],
) -> str:
    if external:
        made_by = ("fabric_lite's subprocess launcher or another tool (RANK / LOCAL_RANK set)" if environment == "local"
                   else environment)
        reasons["launcher"] = f"processes already made by {made_by}"
        return "external"
    if strategy_instance is not None:
        method = getattr(strategy_instance, "start_method", "popen")
    else:
        method = STRATEGIES.get(strategy, asked=strategy).kwargs.get("start_method", "popen")
    if method == "xla":  # torch_xla makes the replicas (one per device; in this process for one device)
        reasons["launcher"] = "torch_xla.launch makes one replica per XLA device"
        return "xla"
    if world_size == 1 or strategy in _ONE_PROCESS_STRATEGIES:
        reasons["launcher"] = "one process: nothing to launch"
        return "none"
    name = "subprocess" if method == "popen" else method
    reasons["launcher"] = (
        "strategy re-runs the script once per extra local rank" if name == "subprocess" else f"strategy starts processes with {method}"
    )
    assert name in LAUNCHERS, name
    return name
