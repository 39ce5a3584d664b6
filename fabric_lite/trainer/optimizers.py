"""configure_optimizers' return shapes -> optimizers and scheduler configs (interval, frequency, monitor), checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import flags as F
from fabric_lite.utilities.rank_zero import rank_zero_warn


@dataclass
class LRSchedulerConfig:
    """One scheduler from ``configure_optimizers`` with when to step it."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None
    opt_idx: int = 0

    @property
    def reduce_on_plateau(self) -> bool:
        return isinstance(self.scheduler, ReduceLROnPlateau)


_INTERVALS = ("step", "epoch")


def _scheduler_config(item: Any, opt_idx: int, monitor: str | None) -> LRSchedulerConfig:
    if isinstance(item, Mapping):
        unknown = set(item) - {"scheduler", "interval", "frequency", "monitor", "strict", "name", "opt_idx", "reduce_on_plateau"}
        if "scheduler" not in item or unknown:
            raise ConfigurationError(
                f"configure_optimizers: the lr_scheduler config {dict(item)!r} "
                + ("has no 'scheduler'" if "scheduler" not in item else f"has unknown keys {sorted(unknown)}")
                + ". Fix: {'scheduler': sched, 'interval': 'epoch' or 'step', 'frequency': 1, 'monitor': 'val_loss'}."
            )
        config = LRSchedulerConfig(
            scheduler=item["scheduler"], interval=item.get("interval", "epoch"), frequency=item.get("frequency", 1),
            monitor=item.get("monitor", monitor), strict=item.get("strict", True), name=item.get("name"), opt_idx=opt_idx,
        )
    else:
        config = LRSchedulerConfig(scheduler=item, monitor=monitor, opt_idx=opt_idx)
    if config.interval not in _INTERVALS:
        raise ConfigurationError(
            f"configure_optimizers: 'interval': {config.interval!r} is not a known interval. Choose one of: step, epoch."
        )
    if not F.is_int(config.frequency) or config.frequency < 1:
        raise ConfigurationError(f"configure_optimizers: 'frequency': {config.frequency!r} is not an int >= 1. Fix: 'frequency': 1.")
    if config.reduce_on_plateau and not config.monitor:
        raise ConfigurationError(
            "configure_optimizers returned ReduceLROnPlateau without 'monitor', so it has no value to watch. "
            "Fix: return {'optimizer': opt, 'lr_scheduler': {'scheduler': sched, 'monitor': 'val_loss'}}."
        )
    return config


def parse_optimizers(returned: Any) -> tuple[list[Any], list[LRSchedulerConfig]]:
    """Every return shape of ``configure_optimizers`` -> (optimizers, scheduler configs)."""
    if returned is None:
        return [], []
    if isinstance(returned, torch.optim.Optimizer):
        return [returned], []
    if isinstance(returned, Mapping):
        returned = [returned]
    if isinstance(returned, (list, tuple)):
        if len(returned) == 2 and isinstance(returned[0], (list, tuple)):
            optimizers = list(returned[0])
            items = list(returned[1]) if isinstance(returned[1], (list, tuple)) else [returned[1]]
            configs = []
            for item in items:
                opt = (item["scheduler"] if isinstance(item, Mapping) else item).optimizer
                configs.append(_scheduler_config(item, _index_of(opt, optimizers), None))
            return _checked(optimizers), configs
        if all(isinstance(item, Mapping) for item in returned):
            optimizers, configs = [], []
            for index, item in enumerate(returned):
                unknown = set(item) - {"optimizer", "lr_scheduler", "monitor"}
                if unknown:  # a misspelt key drops the scheduler; Lightning warns (and runs on), so does this
                    rank_zero_warn(
                        f"configure_optimizers returned a dict with unknown keys {sorted(unknown)}, which are ignored. "
                        f"Fix: use only the keys optimizer, lr_scheduler, monitor (e.g. {{'optimizer': opt, 'lr_scheduler': sched}}).",
                        RuntimeWarning,
                    )
                if "optimizer" not in item:
                    raise ConfigurationError(
                        f"configure_optimizers returned a dict without 'optimizer' (keys: {', '.join(item)}). "
                        f"Fix: return {{'optimizer': opt, 'lr_scheduler': sched}}."
                    )
                optimizers.append(item["optimizer"])
                if item.get("lr_scheduler") is not None:
                    configs.append(_scheduler_config(item["lr_scheduler"], index, item.get("monitor")))
            return _checked(optimizers), configs
        return _checked(list(returned)), []
    raise ConfigurationError(
        f"configure_optimizers returned a {type(returned).__name__}, which is not an optimizer configuration. "
        f"Fix: return an optimizer, [optimizers], ([optimizers], [schedulers]), or "
        f"{{'optimizer': opt, 'lr_scheduler': {{'scheduler': sched, 'interval': 'epoch'}}}}."
    )


def _checked(optimizers: list[Any]) -> list[Any]:
    for optimizer in optimizers:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigurationError(
                f"configure_optimizers returned {type(optimizer).__name__} where an optimizer belongs. "
                f"Fix: return torch.optim optimizers (e.g. torch.optim.Adam(self.parameters()))."
            )
    return optimizers


def _index_of(optimizer: Any, optimizers: list[Any]) -> int:
    for index, candidate in enumerate(optimizers):
        if candidate is optimizer:
            return index
    return 0


def loss_of(outputs: Any) -> torch.Tensor | None:
    if outputs is None:
        return None
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        if "loss" not in outputs:
            raise ConfigurationError(
                f"training_step returned a dict without 'loss' (keys: {', '.join(map(str, outputs))}). "
                f"Fix: return {{'loss': loss, ...}} or the loss tensor itself."
            )
        return outputs["loss"]
    raise ConfigurationError(
        f"training_step returned a {type(outputs).__name__}; automatic optimisation needs the loss. "
        f"Fix: return the loss tensor, a dict with 'loss', or None to skip the batch."
    )
