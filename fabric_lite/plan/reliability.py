"""Plan steps for reliability settings: the Preemption plugin and the collective timeout (``FABRIC_LITE_COLLECTIVE_TIMEOUT``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fabric_lite.errors import ConfigurationError, FabricEnvironmentError
from fabric_lite.utilities.preemption import Preemption

#: Seconds a collective may wait for its peers, handed to the script by ``fabric-run --collective-timeout``.
TIMEOUT_VARIABLE = "FABRIC_LITE_COLLECTIVE_TIMEOUT"


def preemption_plugin(items: list[Any]) -> Preemption | None:
    """The one Preemption plugin among ``Fabric(plugins=[...])``, if any."""
    found = [p for p in items if isinstance(p, Preemption)]
    if len(found) > 1:
        raise ConfigurationError(
            f"Fabric(plugins=[...]) received {len(found)} Preemption plugins; only one can handle the signals. "
            f"Fix: pass one Preemption(signals=(...)) listing every signal."
        )
    return found[0] if found else None


def collective_timeout(env: Mapping[str, str], strategy_instance: Any, reasons: dict[str, str]) -> float | None:
    """Seconds from ``FABRIC_LITE_COLLECTIVE_TIMEOUT`` (None when unset); a strategy's own timeout must agree."""
    raw = env.get(TIMEOUT_VARIABLE)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(
            f"{TIMEOUT_VARIABLE}={raw!r} is not a positive number of seconds. "
            f"Fix: {TIMEOUT_VARIABLE}=300 (or fabric-run --collective-timeout 300), or unset it for the default 30 minutes."
        )
    own = strategy_instance.arguments.get("timeout") if strategy_instance is not None else None
    if own is not None:
        if abs(own.total_seconds() - seconds) > 1e-6:
            name = type(strategy_instance).__name__
            raise ConfigurationError(
                f"{name}(timeout={own!r}) conflicts with {TIMEOUT_VARIABLE}={raw!r}. Fix: drop timeout=... from "
                f"{name}(...) to use the variable, or unset {TIMEOUT_VARIABLE} (fabric-run --collective-timeout)."
            )
    reasons["collective_timeout"] = f"from {TIMEOUT_VARIABLE}={raw}"
    return seconds


#: Integer variables a launcher sets for every process, as (name, lowest valid value).
_INT_VARIABLES = (
    ("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0), ("NODE_RANK", 0), ("GROUP_RANK", 0), ("LOCAL_WORLD_SIZE", 1),
    ("MASTER_PORT", 0), ("SLURM_NTASKS", 1), ("SLURM_PROCID", 0), ("SLURM_LOCALID", 0), ("SLURM_NODEID", 0),
)
_FIX = ("Fix: unset it to run one plain process, or start the script with fabric-run, torchrun or srun, which set "
        "every rank variable consistently.")


def check_environment(env: Mapping[str, str], environment: Any) -> None:
    """Refuse rank variables that are not integers or do not fit together, naming the variable (not a bare int() error)."""
    for name, lowest in _INT_VARIABLES:
        if name not in env:
            continue
        value = env[name]
        try:
            number = int(str(value).strip())
        except ValueError:
            number = None
        if number is None or number < lowest or (name == "MASTER_PORT" and number > 65535):
            expected = "a port number (0-65535)" if name == "MASTER_PORT" else f"an integer >= {lowest}"
            raise FabricEnvironmentError(
                f"The environment variable {name}={value!r} is not {expected}; the {environment.name or 'cluster'} "
                f"environment reads it to place this process. {_FIX}"
            )
    if not environment.creates_processes_externally:
        return
    world, rank, local = environment.world_size(), environment.global_rank(), environment.local_rank()
    if not 0 <= rank < world:
        raise FabricEnvironmentError(
            f"The {environment.name} environment says this process is rank {rank} of a world of {world} processes, "
            f"but ranks run from 0 to {world - 1}. {_FIX}"
        )
    local_world = environment.local_world_size()
    if local_world is not None and local >= local_world:
        raise FabricEnvironmentError(
            f"The {environment.name} environment says this process is local rank {local} of {local_world} processes "
            f"on this machine, but local ranks run from 0 to {local_world - 1}. {_FIX}"
        )
