"""EarlyStopping: stop fit when a monitored metric has not improved for ``patience`` checks (min_epochs still hold)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

MODES = ("min", "max")


class EarlyStopping(Callback):
    """Set ``trainer.should_stop`` after ``patience`` checks without an improvement larger than ``min_delta``.

    Checked after each validation (or at the end of each training epoch when there is no validation,
    or with ``check_on_train_epoch_end=True``). Rank 0 decides and tells the others, so every process
    stops at the same step. The Trainer honours the stop only once ``min_epochs``/``min_steps`` are reached.

    Example:
        >>> EarlyStopping(monitor="val_loss", patience=2, mode="min").patience
        2
    """

    monitors_metrics = True

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigurationError(f"EarlyStopping(mode={mode!r}) is not a known mode. Choose one of: min, max.")
        if not isinstance(patience, int) or patience < 0:
            raise ConfigurationError(f"EarlyStopping(patience={patience!r}) is not an int >= 0. Fix: e.g. patience=3.")
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.check_on_train_epoch_end = check_on_train_epoch_end
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.stopping_reason: str | None = None

    @property
    def state_key(self) -> str:
        return f"EarlyStopping{{monitor={self.monitor!r}, mode={self.mode!r}}}"

    def _on_train_epoch_end_check(self, trainer: Trainer) -> bool:
        """Whether to check at the training epoch's end rather than after validation (Lightning's rule: at the
        epoch end when validation runs once per epoch, at its end, so a metric logged in ``on_train_epoch_end``
        counts too; without validation at the epoch end as well)."""
        if self.check_on_train_epoch_end is not None:
            return self.check_on_train_epoch_end
        if not trainer.val_dataloaders or not any(trainer.num_val_batches) or trainer.val_check_batch == float("inf"):
            return True
        return trainer.check_val_every_n_epoch == 1 and trainer.val_check_interval == 1.0

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._on_train_epoch_end_check(trainer):
            self._check(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.state.in_fit or self._on_train_epoch_end_check(trainer):
            return
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        if trainer.fast_dev_run:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if self.strict:
                raise ConfigurationError(
                    f"EarlyStopping(monitor={self.monitor!r}) could not find {self.monitor!r} among the logged metrics "
                    f"({', '.join(sorted(trainer.callback_metrics)) or 'none'}). Fix: self.log({self.monitor!r}, value), "
                    f"monitor one of those, or pass strict=False to skip the check."
                )
            rank_zero_warn(f"EarlyStopping: {self.monitor!r} was not logged; this check was skipped.")
            return
        stop, reason = self._decide(float(value))
        if trainer.world_size > 1:
            stop, reason = trainer.fabric.broadcast((stop, reason), src=0)
        if stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason = reason
            trainer.should_stop = True
            if self.verbose and trainer.is_global_zero:
                print(f"EarlyStopping at epoch {trainer.current_epoch}: {reason}")

    def _better(self, current: float, reference: float) -> bool:
        if self.mode == "min":
            return current < reference - self.min_delta
        return current > reference + self.min_delta

    def _decide(self, current: float) -> tuple[bool, str | None]:
        if self.check_finite and not math.isfinite(current):
            return True, f"{self.monitor} = {current} is not finite"
        if self.stopping_threshold is not None and not self._better(self.stopping_threshold, current) and (
            (current <= self.stopping_threshold) if self.mode == "min" else (current >= self.stopping_threshold)
        ):
            return True, f"{self.monitor} = {current} reached the stopping threshold {self.stopping_threshold}"
        if self.divergence_threshold is not None and (
            (current > self.divergence_threshold) if self.mode == "min" else (current < self.divergence_threshold)
        ):
            return True, f"{self.monitor} = {current} passed the divergence threshold {self.divergence_threshold}"
        if self._better(current, self.best_score):
            self.best_score = current
            self.wait_count = 0
            return False, None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, f"{self.monitor} did not improve by more than {self.min_delta} in {self.wait_count} checks (best {self.best_score:.6g})"
        return False, None

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch, "best_score": self.best_score,
                "patience": self.patience}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
