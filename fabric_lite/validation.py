"""Checks on what users pass to Fabric's methods, each failing with one clear error and its fix."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric_lite.errors import ConfigurationError
from fabric_lite.wrappers import FabricDataLoader, FabricModule, FabricOptimizer


def check_module(module: Any, method: str) -> None:
    """A model passed to setup/setup_module: a torch Module not set up before."""
    if isinstance(module, FabricModule):
        raise ConfigurationError(
            f"fabric.{method}(model) got a model that is already set up. Fix: pass each model to setup only once."
        )
    if not isinstance(module, nn.Module):
        raise ConfigurationError(
            f"fabric.{method}() needs a torch.nn.Module first, got {type(module).__name__}. "
            f"Fix: fabric.{method}(model{', optimizer' if method == 'setup' else ''})."
        )


def check_optimizers(optimizers: Sequence[Any], method: str) -> None:
    """Optimizers passed to setup/setup_optimizers: torch optimizers not set up before."""
    for optimizer in optimizers:
        if isinstance(optimizer, FabricOptimizer):
            raise ConfigurationError(
                f"fabric.{method}() got an optimizer that is already set up. Fix: pass each optimizer only once."
            )
        if not isinstance(optimizer, Optimizer):
            raise ConfigurationError(
                f"fabric.{method}() got a {type(optimizer).__name__} where an optimizer was expected. "
                f"Fix: pass torch.optim optimizers after the model; pass an LR scheduler as scheduler=..."
            )


def check_dataloaders(dataloaders: Sequence[Any]) -> None:
    """Dataloaders passed to setup_dataloaders: at least one, each a torch DataLoader not set up before."""
    if not dataloaders:
        raise ConfigurationError(
            "fabric.setup_dataloaders() got no dataloader. Fix: fabric.setup_dataloaders(train_loader, val_loader)."
        )
    for loader in dataloaders:
        if isinstance(loader, FabricDataLoader):
            raise ConfigurationError(
                "fabric.setup_dataloaders() got a dataloader that is already set up. Fix: pass each dataloader once."
            )
        if not isinstance(loader, DataLoader):
            raise ConfigurationError(
                f"fabric.setup_dataloaders() got a {type(loader).__name__}, but only torch.utils.data.DataLoader is "
                f"supported. Fix: wrap your data in DataLoader(dataset, batch_size=...)."
            )


def check_launch_function(function: Any, *, given: bool) -> None:
    """fabric.launch(function): a callable that accepts the Fabric object as its first argument."""
    if not callable(function):
        raise ConfigurationError(
            f"fabric.launch({function!r}) needs a function. Fix: fabric.launch() or fabric.launch(train) where "
            f"train(fabric, ...) is your training function."
        )
    if given and not _accepts_an_argument(function):
        raise ConfigurationError(
            f"fabric.launch({getattr(function, '__name__', function)}) : the function takes no argument, but the "
            f"launcher passes the Fabric object first. Fix: def {getattr(function, '__name__', 'train')}(fabric): ..."
        )


def _accepts_an_argument(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters)
