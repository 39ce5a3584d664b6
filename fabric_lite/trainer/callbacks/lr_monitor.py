"""LearningRateMonitor: log each optimizer's learning rate (and momentum) per step or per epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks.base import Callback

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

INTERVALS = (None, "step", "epoch")


class LearningRateMonitor(Callback):
    """Log ``lr-<Optimizer>`` (``/pg<i>`` per parameter group when there are several, ``/<name>`` for a group with a
    ``"name"`` key; ``<name>`` from the scheduler config if given).

    Args:
        logging_interval: ``"step"``, ``"epoch"``, or None (each scheduler's own interval; per epoch without one).
        log_momentum: also log ``momentum`` (or Adam's ``beta1``).

    Example:
        >>> LearningRateMonitor(logging_interval="step").logging_interval
        'step'
    """

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False) -> None:
        if logging_interval not in INTERVALS:
            raise ConfigurationError(
                f"LearningRateMonitor(logging_interval={logging_interval!r}) is not known. Choose one of: None, 'step', 'epoch'."
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.loggers:
            raise ConfigurationError(
                "LearningRateMonitor was added, but Trainer(logger=False) has no logger to write to. "
                "Fix: pass a logger (e.g. the default, or CSVLogger) or remove the callback."
            )

    def _interval_of(self, trainer: Trainer, index: int) -> str:
        if self.logging_interval is not None:
            return self.logging_interval
        for config in trainer.lr_scheduler_configs:
            if config.opt_idx == index:
                return config.interval
        return "epoch"

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if (trainer.state.batches_that_stepped + 1) % trainer.log_every_n_steps == 0 or trainer.log_every_n_steps == 1:
            self._log(trainer, "step")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, "epoch")

    def _log(self, trainer: Trainer, interval: str) -> None:
        stats: dict[str, float] = {}
        names: dict[int, str] = {c.opt_idx: c.name for c in trainer.lr_scheduler_configs if c.name}
        counts: dict[str, int] = {}
        for index, optimizer in enumerate(trainer.optimizers):
            if self._interval_of(trainer, index) != interval:
                continue
            base = names.get(index) or f"lr-{type(getattr(optimizer, 'optimizer', optimizer)).__name__}"
            counts[base] = counts.get(base, 0) + 1
            if counts[base] > 1:
                base = f"{base}-{counts[base] - 1}"
            groups = optimizer.param_groups
            for group_index, group in enumerate(groups):
                # a param group's "name" names its key (Lightning's rule); unnamed groups are pg1, pg2, ...
                group_name = group.get("name") or (f"pg{group_index + 1}" if len(groups) > 1 else None)
                key = f"{base}/{group_name}" if group_name else base
                stats[key] = float(group["lr"])
                self.lrs.setdefault(key, []).append(float(group["lr"]))  # learning rates only, as Lightning's lrs
                if self.log_momentum:
                    momentum = group.get("momentum", group.get("betas", (0.0,))[0])
                    stats[key + "-momentum"] = float(momentum)
                if self.log_weight_decay:
                    stats[key + "-weight_decay"] = float(group.get("weight_decay", 0.0))
        if stats:
            trainer.fabric.log_dict(stats, step=trainer.state.batches_that_stepped)  # before this batch's (Lightning's)
