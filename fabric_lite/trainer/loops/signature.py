"""Which of ``(batch, batch_idx, dataloader_idx)`` a ``*_step`` method takes, read from its signature (as Lightning 2.x does).

Lightning passes ``batch_idx`` only to a step that names it, takes ``*args`` or has at least two positional
parameters, so ``training_step(self, batch)`` works; ``dataloader_idx`` is passed only when there are several
loaders, and a step that cannot take it then is refused with the fix.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fabric_lite.errors import ConfigurationError

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class StepSignature:
    takes_batch_idx: bool
    takes_dataloader_idx: bool
    needs_dataloader_idx: bool  # a third positional parameter without a default


_CACHE: dict[Any, StepSignature] = {}


def _signature_of(method: Callable[..., Any]) -> StepSignature:
    key = getattr(method, "__func__", method)
    found = _CACHE.get(key)
    if found is not None:
        return found
    try:
        parameters = list(inspect.signature(method).parameters.values())  # bound: no self; follows __wrapped__
    except (TypeError, ValueError):  # no signature to read (a builtin): pass everything, as before
        return StepSignature(True, True, False)
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    names = [p.name for p in positional]
    takes_batch_idx = varargs or "batch_idx" in names or len(positional) >= 2
    takes_dataloader_idx = varargs or "dataloader_idx" in names or len(positional) >= 3
    needs = len(positional) >= 3 and positional[2].default is inspect.Parameter.empty
    found = StepSignature(takes_batch_idx, takes_dataloader_idx, needs)
    if len(_CACHE) < 1024:
        _CACHE[key] = found
    return found


def step_arguments(module: Any, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` (batch, batch_idx[, dataloader_idx]) cut or completed to what ``module.<name>`` accepts."""
    method = getattr(module, name, None)
    if method is None or len(args) < 2:
        return args
    signature = _signature_of(method)
    batch, batch_idx, rest = args[0], args[1], args[2:]
    if rest and not signature.takes_dataloader_idx:
        stage = {"validation_step": "val", "test_step": "test", "predict_step": "predict"}.get(name, "train")
        raise ConfigurationError(
            f"There are several {stage} dataloaders, but {type(module).__name__}.{name}() has no `dataloader_idx` "
            f"argument, so it cannot tell which loader a batch comes from. Fix: add it to the signature, e.g. "
            f"def {name}(self, batch, batch_idx, dataloader_idx=0), or pass one dataloader."
        )
    if not rest and signature.needs_dataloader_idx:
        rest = (0,)  # one loader and a step that requires the index: it is loader 0 (Lightning refuses; nothing is lost)
    if not signature.takes_batch_idx:
        return (batch, *rest)
    return (batch, batch_idx, *rest)
