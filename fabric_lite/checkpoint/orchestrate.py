"""What ``fabric.save`` / ``fabric.load`` do around the strategy: gather every rank's loader state, wait for all ranks.

The strategy writes and reads the files (one file, a sharded folder, a DeepSpeed folder); this module holds the
steps that are the same for every strategy, so that ``Fabric`` stays a thin facade.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

from fabric_lite.checkpoint.remote import is_url, resolve
from fabric_lite.errors import ConfigurationError
from fabric_lite.utilities.resume import RANKS_KEY, WORLD_KEY
from fabric_lite.wrappers import FabricDataLoader, unwrap

if TYPE_CHECKING:
    from fabric_lite.strategies.base import Strategy


class RankStates:
    """Every rank's state of one object, gathered for a checkpoint that rank 0 writes.

    Example:
        >>> RankStates([{"position": 3}]).state_dict()
        {'world_size': 1, 'ranks': [{'position': 3}]}
    """

    def __init__(self, states: list[Any]) -> None:
        self.states = states

    def state_dict(self) -> dict[str, Any]:
        return {WORLD_KEY: len(self.states), RANKS_KEY: self.states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.states = list(state[RANKS_KEY])


def gather_loader_states(state: Any, world_size: int) -> Any:
    """``state`` with every set-up dataloader replaced by the :class:`RankStates` of all ranks.

    Every rank must call it with the same keys (``fabric.save`` does): with several processes it runs
    one ``all_gather_object``. Without dataloaders in ``state`` it returns ``state`` itself.
    """
    if not isinstance(state, Mapping):
        return state
    keys = [key for key, value in state.items() if isinstance(value, FabricDataLoader)]
    if not keys:
        return state
    local = {key: state[key].state_dict() for key in keys}
    gathered: list[Any] = [local]
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, local)
    return {**state, **{key: RankStates([entry[key] for entry in gathered]) for key in keys}}


_COLLAPSED_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):/(?!/)")


def check_path(path: str | Path, method: str) -> None:
    """Check a checkpoint path before any rank writes: a URL must name a protocol fsspec has (and its package).

    A URL turned into a ``pathlib.Path`` has lost a slash (``s3:/bucket``) and would be written as a local
    folder named ``s3:``: refused, with the fix of passing the URL as a string.
    """
    if is_url(path):
        resolve(path, asked=f"fabric.{method}({path!r})")  # raises the missing-package / unknown-protocol error
        return
    collapsed = _COLLAPSED_URL.match(str(path)) if isinstance(path, PurePath) else None
    if collapsed is not None and collapsed["scheme"] in _known_protocols():
        scheme = collapsed["scheme"]
        raise ConfigurationError(
            f"fabric.{method}({path!r}) got a pathlib path that starts with '{scheme}:/': a URL made into a Path "
            f"loses a slash and would be written as a local folder named '{scheme}:'. Fix: pass the URL as a "
            f"string, e.g. '{scheme}://{str(path)[len(scheme) + 2:]}'."
        )


def _known_protocols() -> set[str]:
    try:
        from fsspec.registry import known_implementations
    except ImportError:
        return {"s3", "s3a", "gs", "gcs", "az", "abfs", "adl", "memory", "file", "hdfs", "http", "https"}
    return set(known_implementations)


def save(
    strategy: Strategy, path: str | Path, state: dict[str, Any], filter: dict[str, Callable[[str, Any], bool]] | None
) -> None:
    """``fabric.save``: a set-up dataloader goes in with every rank's position and random state (one gather)."""
    check_path(path, "save")
    strategy.save_checkpoint(path, gather_loader_states(state, strategy.world_size), filter=filter)
    strategy.barrier(name="save")


def load(strategy: Strategy, path: str | Path, state: Any, *, strict: bool, weights_only: bool, name: str = "load") -> Any:
    """``fabric.load`` (and ``load_raw`` with a bare module or optimizer as ``state``): restore, then wait for all."""
    check_path(path, name)
    remainder = strategy.load_checkpoint(path, state, strict=strict, weights_only=weights_only)
    strategy.barrier(name=name)
    return remainder


def load_raw(strategy: Strategy, path: str | Path, obj: Any, *, strict: bool, weights_only: bool) -> None:
    """``fabric.load_raw``: a bare state dict (``torch.save(model.state_dict())``) into a module or optimizer."""
    if not isinstance(unwrap(obj), (nn.Module, Optimizer)):
        raise ConfigurationError(
            f"fabric.load_raw(path, {type(obj).__name__}) only loads into a torch.nn.Module or an Optimizer. "
            f"Fix: use fabric.load(path, {{'name': obj}}) for other objects."
        )
    load(strategy, path, obj, strict=strict, weights_only=weights_only, name="load_raw")
