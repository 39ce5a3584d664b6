"""Timer: stop training once a time budget is spent, and tell how long each stage took (Lightning's ``Timer``)."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.utilities.rank_zero import rank_zero_info

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

INTERVALS = ("step", "epoch")
STAGES = ("train", "validate", "test", "predict", "sanity_check")
_DURATION = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})$")


def parse_duration(duration: Any) -> timedelta | None:
    """``"DD:HH:MM:SS"``, a ``timedelta``, a dict of ``timedelta`` keywords (``{"hours": 12}``) or None.

    Example:
        >>> parse_duration("00:12:00:00"), parse_duration({"minutes": 90})
        (datetime.timedelta(seconds=43200), datetime.timedelta(seconds=5400))
    """
    if duration is None or isinstance(duration, timedelta):
        return duration
    if isinstance(duration, str):
        match = _DURATION.match(duration.strip())
        if match is None:
            raise ConfigurationError(
                f"Timer(duration={duration!r}) is not a duration in the form 'DD:HH:MM:SS'. "
                f"Fix: e.g. Timer(duration='00:12:00:00') for 12 hours, or a timedelta, or a dict such as {{'hours': 12}}."
            )
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if isinstance(duration, dict):
        try:
            return timedelta(**duration)
        except TypeError as error:
            raise ConfigurationError(
                f"Timer(duration={duration!r}) is not a set of timedelta arguments ({error}). "
                f"Fix: use the keys days, hours, minutes, seconds, e.g. {{'hours': 12, 'minutes': 30}}."
            ) from None
    raise ConfigurationError(
        f"Timer(duration={duration!r}) is not a duration. Fix: pass 'DD:HH:MM:SS', a datetime.timedelta, or a dict "
        f"such as {{'hours': 12}}."
    )


class Timer(Callback):
    """Stop ``fit`` once ``duration`` has passed in training (checked every step or every epoch).

    Args:
        duration: the budget: ``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of its keywords; None only times.
        interval: ``"step"`` (check after every training batch) or ``"epoch"`` (after every epoch).
        verbose: log when the limit is reached.

    ``time_elapsed(stage)``, ``time_remaining(stage)``, ``start_time(stage)`` and ``end_time(stage)`` report
    in seconds for ``"train"``, ``"validate"``, ``"test"``, ``"predict"`` and ``"sanity_check"``. The training
    time already spent is saved in checkpoints, so a resumed fit spends only what is left. With several
    processes rank 0's clock decides (broadcast), so every rank stops after the same batch.

    Example:
        >>> Timer(duration="00:12:00:00").duration
        datetime.timedelta(seconds=43200)
    """

    def __init__(self, duration: str | timedelta | dict[str, int] | None = None, interval: str = "step", verbose: bool = True) -> None:
        self._duration = parse_duration(duration)
        if interval not in INTERVALS:
            raise ConfigurationError(f"Timer(interval={interval!r}) is not a known interval. Choose one of: 'step', 'epoch'.")
        self._interval = interval
        self._verbose = verbose
        self._start: dict[str, float | None] = {stage: None for stage in STAGES}
        self._end: dict[str, float | None] = {stage: None for stage in STAGES}
        self._offset = 0.0  # training seconds spent before a resume

    @property
    def duration(self) -> timedelta | None:
        return self._duration

    def _check_stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise ConfigurationError(f"Timer.time_elapsed(stage={stage!r}) is not a known stage. Choose one of: {', '.join(map(repr, STAGES))}.")

    def start_time(self, stage: str = "train") -> float | None:
        """When ``stage`` last started (``time.monotonic`` seconds), or None."""
        self._check_stage(stage)
        return self._start[stage]

    def end_time(self, stage: str = "train") -> float | None:
        self._check_stage(stage)
        return self._end[stage]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds ``stage`` ran (so far, if it runs now); training includes the time before a resume."""
        self._check_stage(stage)
        start, end = self._start[stage], self._end[stage]
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        return offset + ((end if end is not None else time.monotonic()) - start)

    def time_remaining(self, stage: str = "train") -> float | None:
        """Seconds left of ``duration`` (None without one)."""
        if self._duration is None:
            return None
        return self._duration.total_seconds() - self.time_elapsed(stage)

    def _begin(self, stage: str) -> None:
        self._start[stage], self._end[stage] = time.monotonic(), None

    def _finish(self, stage: str) -> None:
        self._end[stage] = time.monotonic()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begin("train")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("train")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begin("sanity_check" if trainer.sanity_checking else "validate")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("sanity_check" if trainer.sanity_checking else "validate")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begin("test")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("test")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begin("predict")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("predict")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._duration is not None:
            self._check(trainer)  # a resumed run whose budget is already spent stops at once

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._interval == "step" and self._duration is not None:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._interval == "epoch" and self._duration is not None:
            self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        assert self._duration is not None
        elapsed = self.time_elapsed("train")
        stop = elapsed >= self._duration.total_seconds()
        if trainer.world_size > 1:
            stop = bool(trainer.fabric.broadcast(stop, src=0))
        if stop:
            trainer.should_stop = True
            if self._verbose:
                rank_zero_info(f"Time limit reached. Elapsed time is {timedelta(seconds=int(elapsed))}. Signaling Trainer to stop.")

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in STAGES}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = float(state_dict.get("time_elapsed", {}).get("train", 0.0))
