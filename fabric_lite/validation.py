"""Checks on what users pass to Fabric's methods, each failing with one clear error and its fix."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric_lite.errors import ConfigurationError, UsageError
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


def check_optimizers(optimizers: Sequence[Any], method: str, *, required: bool = False) -> None:
    """Optimizers passed to setup/setup_optimizers: torch optimizers not set up before (at least one if ``required``)."""
    if required and not optimizers:
        raise ConfigurationError(f"fabric.{method}() got no optimizer. Fix: fabric.{method}(optimizer).")
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


def check_launched(plan: Any, launched: bool, method: str) -> None:
    """fabric.<method>() before fabric.launch() when launch() still has processes to start."""
    if not launched and plan.launcher not in ("none", "external"):
        raise UsageError(
            f"fabric.{method}() was called before fabric.launch(), but Fabric(strategy={plan.strategy!r}) runs "
            f"{plan.world_size} processes that launch() starts. Fix: call fabric.launch() right after "
            f"Fabric(...) (or fabric.launch(train) for spawn/fork strategies)."
        )


def backward_before_setup_error() -> UsageError:
    """fabric.backward(loss) before any fabric.setup(model, ...)."""
    return UsageError(
        "fabric.backward(loss) was called before fabric.setup(model, optimizer): the gradients would skip "
        "loss scaling and, with several processes, would not be synchronised. Fix: model, optimizer = "
        "fabric.setup(model, optimizer) before the training loop."
    )


def scaled_loss_without_optimizer_error(precision: str) -> UsageError:
    """fabric.backward(loss) scales the loss (GradScaler), but no optimizer set up with Fabric will unscale it."""
    return UsageError(
        f"fabric.backward(loss) under precision={precision!r} multiplies the loss by the "
        f"GradScaler's scale, but no optimizer was set up with Fabric, so optimizer.step() would apply "
        f"gradients that are too large by that factor and the weights would become inf. Fix: model, "
        f"optimizer = fabric.setup(model, optimizer) (or fabric.setup_optimizers(optimizer) after "
        f"fabric.setup_module(model)), and step that optimizer."
    )


def check_clip_arguments(clip_val: float | None, max_norm: float | None) -> None:
    """fabric.clip_gradients(...): exactly one of clip_val and max_norm."""
    if clip_val is not None and max_norm is not None:
        raise ConfigurationError(
            "fabric.clip_gradients(clip_val=..., max_norm=...) got both: they are two different algorithms. "
            "Fix: pass only one of clip_val (by value) or max_norm (by norm)."
        )
    if clip_val is None and max_norm is None:
        raise ConfigurationError(
            "fabric.clip_gradients(model, optimizer) needs clip_val or max_norm. "
            "Fix: fabric.clip_gradients(model, optimizer, max_norm=1.0) or clip_val=0.5."
        )


def check_set_up_module(module: Any, method: str) -> None:
    """fabric.<method>(model) for methods that need the model fabric.setup returned."""
    if not isinstance(module, FabricModule):
        raise ConfigurationError(
            f"fabric.{method}(model) needs the model returned by fabric.setup(...). "
            f"Fix: model = fabric.setup(model, ...); with fabric.{method}(model): ..."
        )


def no_logger_error() -> UsageError:
    """fabric.logger read on a Fabric made without loggers."""
    return UsageError(
        "fabric.logger was read, but this Fabric has no logger. "
        "Fix: Fabric(loggers=CSVLogger('logs')) or Fabric(loggers=[...])."
    )
