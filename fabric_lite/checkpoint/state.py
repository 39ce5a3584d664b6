"""Mapping the user's state dict (modules, optimizers, stateful objects, plain values) to a saveable dict and back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.optim import Optimizer

import fabric_lite.__about__ as about
from fabric_lite.checkpoint.mismatch import load_module_state, load_optimizer_state
from fabric_lite.errors import CheckpointError, ConfigurationError
from fabric_lite.wrappers import unwrap

if TYPE_CHECKING:
    from fabric_lite.strategies.base import Strategy

#: Key under which fabric_lite keeps its own metadata (format version, precision/GradScaler state).
META_KEY = "__fabric_lite__"


def _is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def to_saveable(
    state: Mapping[str, Any],
    strategy: Strategy,
    *,
    filter: Mapping[str, Callable[[str, Any], bool]] | None = None,
) -> dict[str, Any]:
    """Replace modules, optimizers and stateful objects in ``state`` by their state dicts."""
    if not isinstance(state, Mapping):
        raise ConfigurationError(
            f"fabric.save(path, state={type(state).__name__}) needs a dict of named objects. "
            f"Fix: fabric.save(path, {{'model': model, 'optimizer': optimizer, 'step': step}})."
        )
    if filter is not None:
        unknown = [key for key in filter if key not in state]
        if unknown or not all(callable(fn) for fn in filter.values()):
            raise ConfigurationError(
                f"fabric.save(..., filter={{{', '.join(map(repr, filter))}}}) must map keys of the state to callables "
                f"(name, value) -> bool; unknown keys: {unknown}. Valid keys: {', '.join(map(repr, state))}."
            )
    saveable: dict[str, Any] = {}
    for key, obj in state.items():
        obj = unwrap(obj)
        if isinstance(obj, nn.Module):
            value: Any = strategy.get_module_state_dict(obj)
        elif isinstance(obj, Optimizer):
            value = strategy.get_optimizer_state(obj)
        elif _is_stateful(obj):
            value = obj.state_dict()
        else:
            value = obj
        if filter is not None and key in filter and isinstance(value, Mapping):
            value = {name: item for name, item in value.items() if filter[key](name, item)}
        saveable[key] = value
    if META_KEY in saveable:
        raise ConfigurationError(f"fabric.save: the state key {META_KEY!r} is reserved. Fix: rename that entry.")
    meta: dict[str, Any] = {"version": about.__version__}
    precision_state = strategy.precision.state_dict()
    if precision_state:
        meta["precision"] = precision_state
    saveable[META_KEY] = meta
    return saveable


def _raw_hint(checkpoint: Mapping[str, Any], meta: Any) -> str:
    """A bare ``model.state_dict()`` file loaded with fabric.load: point to load_raw."""
    if meta or not checkpoint or not all(hasattr(v, "shape") for v in checkpoint.values()):
        return ""
    return "; this file holds a bare state dict (torch.save(model.state_dict())): use fabric.load_raw(path, model)"


def restore_state(
    checkpoint: Any,
    state: Mapping[str, Any] | nn.Module | Optimizer | None,
    strategy: Strategy,
    *,
    strict: bool,
    source: str,
) -> dict[str, Any]:
    """Load ``checkpoint`` into the objects of ``state`` in place; return what was not restored."""
    if isinstance(unwrap(state), (nn.Module, Optimizer)):  # load_raw
        target = unwrap(state)
        if isinstance(checkpoint, Mapping) and META_KEY in checkpoint:
            raise CheckpointError(
                f"fabric.load_raw({source!r}, ...) got a fabric_lite checkpoint (a dict of named objects), not a raw "
                f"state dict. Fix: use fabric.load({source!r}, {{'model': model, ...}})."
            )
        if isinstance(target, nn.Module):
            load_module_state(target, checkpoint, strict=strict, source=source, key=None)
        else:
            load_optimizer_state(state, checkpoint, source=source, key=None)
        return {}
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"fabric.load({source!r}) expected a dict of named objects but the file holds a "
            f"{type(checkpoint).__name__}. Fix: use fabric.load_raw(path, model) for a bare state dict."
        )
    checkpoint = dict(checkpoint)
    meta = checkpoint.pop(META_KEY, {})
    if state is None:
        return checkpoint
    if not isinstance(state, Mapping):
        raise ConfigurationError(
            f"fabric.load(path, state={type(state).__name__}) needs a dict of named objects to restore into. "
            f"Fix: fabric.load(path, {{'model': model, 'optimizer': optimizer}})."
        )
    missing = [key for key in state if key not in checkpoint]
    if strict and missing:
        raise CheckpointError(
            f"fabric.load({source!r}) cannot restore {', '.join(map(repr, missing))}: the checkpoint has no such key "
            f"(it has: {', '.join(map(repr, checkpoint)) or 'nothing'}). Fix: fix the key, or pass strict=False to "
            f"skip keys the checkpoint lacks{_raw_hint(checkpoint, meta)}."
        )
    for key, obj in state.items():
        if key not in checkpoint:
            continue
        inner = unwrap(obj)
        if isinstance(inner, nn.Module):
            load_module_state(inner, checkpoint.pop(key), strict=strict, source=source, key=key)
        elif isinstance(inner, Optimizer):  # the wrapper re-syncs itself with the optimizer
            load_optimizer_state(obj, checkpoint.pop(key), source=source, key=key)
        elif _is_stateful(obj):
            obj.load_state_dict(checkpoint.pop(key))
        else:
            state[key] = checkpoint.pop(key)  # type: ignore[index]
    if meta.get("precision"):
        strategy.precision.load_state_dict(meta["precision"])
    return checkpoint
