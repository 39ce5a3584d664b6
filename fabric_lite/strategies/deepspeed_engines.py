"""Which of DeepSpeedStrategy's engines an object belongs to: a module, an optimizer, or a fabric.save/load state.

The strategy keeps the engines it built and the ids of those set up with an optimizer; these functions look
one up among them and, when none or several fit, raise an error that names the call and its fix.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from fabric_lite.errors import ConfigurationError, UsageError
from fabric_lite.wrappers import FabricModule, FabricOptimizer

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


def find_engine(
    engines: Sequence[DeepSpeedEngine], trained: Collection[int], module: Any = None, optimizer: Any = None, *,
    asked: str,
) -> DeepSpeedEngine:
    """The engine that ``module`` (engine, FabricModule or user module) or ``optimizer`` belongs to.

    Without either, the one engine whose id is in ``trained``; ``asked`` is the call named in the errors.
    """
    from deepspeed import DeepSpeedEngine

    if isinstance(module, FabricModule):
        module = module._forward_module
    if isinstance(module, DeepSpeedEngine):
        return module
    if isinstance(optimizer, FabricOptimizer):
        optimizer = optimizer.optimizer
    for engine in engines:
        if (module is not None and engine.module is module) or (optimizer is not None and engine.optimizer is optimizer):
            return engine
    if module is not None or optimizer is not None:
        raise ConfigurationError(
            f"{asked} got a {type(module if module is not None else optimizer).__name__} that no DeepSpeed engine "
            f"holds. Fix: use the model and optimizer returned by fabric.setup(model, optimizer)."
        )
    # Without a hint, the one model being trained (models set up for inference take no steps).
    trained_engines = [e for e in engines if id(e) in trained]
    if len(trained_engines) == 1:
        return trained_engines[0]
    if not trained_engines:
        raise UsageError(f"{asked} was called before fabric.setup(model, optimizer). Fix: set the model up first.")
    raise ConfigurationError(
        f"{asked} cannot tell which of the {len(trained_engines)} DeepSpeed models it is for. "
        f"Fix: fabric.backward(loss, model=model) with the model returned by fabric.setup(...)."
    )


def find_engine_in_state(
    engines: Sequence[DeepSpeedEngine], state: Mapping[str, Any], *, asked: str
) -> tuple[DeepSpeedEngine, str, str | None]:
    """The one engine in ``state``, its key, and the key of its optimizer (None when absent)."""
    from deepspeed import DeepSpeedEngine

    found: list[tuple[str, DeepSpeedEngine]] = []
    for key, obj in state.items():
        inner = obj._forward_module if isinstance(obj, FabricModule) else obj
        if isinstance(inner, DeepSpeedEngine):
            found.append((key, inner))
        elif isinstance(inner, nn.Module) and any(e.module is inner for e in engines):
            found.append((key, next(e for e in engines if e.module is inner)))
    if len(found) != 1:
        why = "holds no model set up by DeepSpeedStrategy" if not found else (
            f"holds {len(found)} DeepSpeed models ({', '.join(repr(k) for k, _ in found)}), and a checkpoint "
            f"folder stores one engine"
        )
        raise ConfigurationError(
            f"{asked}: the state {why}. Fix: pass the model returned by fabric.setup(model, optimizer), e.g. "
            f"{{'model': model, 'optimizer': optimizer, 'step': step}}, one model per checkpoint."
        )
    module_key, engine = found[0]
    optimizer_key = None
    for key, obj in state.items():
        inner = obj.optimizer if isinstance(obj, FabricOptimizer) else obj
        if engine.optimizer is not None and inner is engine.optimizer:
            optimizer_key = key
    return engine, module_key, optimizer_key
