"""ProgressBar: the base of the progress bars (Lightning's ``ProgressBar``) and, on its own, a plain one-line-per-epoch bar.

Kept apart from ``progress.py`` (TQDMProgressBar) so that ``rich_progress.py`` builds on it without an import
cycle (``progress.py`` re-exports RichProgressBar lazily, as ``lightning.pytorch.callbacks.progress`` does).
"""


from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks.base import Callback

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer


def tqdm_available() -> bool:
    """Whether tqdm can be imported (it is optional: without it the default bar is the plain ProgressBar)."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _total(value: Any) -> int | None:
    """A batch count for a bar: None when unknown (an iterable without a length)."""
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return None
    return int(value)


class ProgressBar(Callback):
    """The base of the progress bars (Lightning's ``ProgressBar``), and on its own a plain one: one line per epoch.

    Subclasses draw in the hooks; this class gives them the descriptions, the batch totals of the running
    stage, :meth:`get_metrics` and ``enable``/``disable`` (a bar is disabled on every rank but 0).

    Args:
        refresh_rate: redraw every this many batches (0 disables the bar).
        plain: from older code: True (or None) is this plain bar; False asked for tqdm, which is now
            ``TQDMProgressBar`` (an error says so).
    """

    sanity_check_description = "Sanity Checking"
    train_description = "Training"
    validation_description = "Validation"
    test_description = "Testing"
    predict_description = "Predicting"

    def __init__(self, refresh_rate: int = 1, plain: bool | None = None) -> None:
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ConfigurationError(
                f"{type(self).__name__}(refresh_rate={refresh_rate!r}) is not a number of batches. "
                f"Fix: pass an int >= 1 (0 turns the bar off)."
            )
        if plain is False and type(self) is ProgressBar:
            raise ConfigurationError(
                "ProgressBar(plain=False) asked for the tqdm bar, which is its own class now. "
                "Fix: TQDMProgressBar(refresh_rate=...) (or RichProgressBar()); ProgressBar() prints one plain line per epoch."
            )
        self._refresh_rate = refresh_rate
        self._enabled = refresh_rate > 0
        self._current_eval_dataloader_idx: int | None = None
        self._trainer: Trainer | None = None

    # ------------------------------------------------------------------------------------------ state
    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            raise ConfigurationError(f"{type(self).__name__}.trainer is read before the Trainer set it up. Fix: read it inside a hook.")
        return self._trainer

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        if not trainer.is_global_zero:
            self.disable()  # one bar for the whole job: rank 0's

    # ------------------------------------------------------------------------------------------ totals
    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.num_training_batches

    @property
    def total_val_batches_current_dataloader(self) -> int | float:
        trainer = self.trainer
        counts = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        index = self._current_eval_dataloader_idx or 0
        return counts[index] if index < len(counts) else 0

    @property
    def total_test_batches_current_dataloader(self) -> int | float:
        counts, index = self.trainer.num_test_batches, self._current_eval_dataloader_idx or 0
        return counts[index] if index < len(counts) else 0

    @property
    def total_predict_batches_current_dataloader(self) -> int | float:
        counts, index = self.trainer.num_predict_batches, self._current_eval_dataloader_idx or 0
        return counts[index] if index < len(counts) else 0

    def has_dataloader_changed(self, dataloader_idx: int) -> bool:
        changed = self._current_eval_dataloader_idx != dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return changed

    def reset_dataloader_idx_tracker(self) -> None:
        self._current_eval_dataloader_idx = None

    def _should_update(self, current: int, total: int | None) -> bool:
        return self.is_enabled and (current % self._refresh_rate == 0 or current == total)

    # ------------------------------------------------------------------------------------------ metrics
    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, int | float | str]:
        """What the bar shows: ``v_num`` (the first logger's version) and the ``self.log(..., prog_bar=True)`` values."""
        shown: dict[str, int | float | str] = {}
        version = getattr(trainer.logger, "version", None) if trainer.logger is not None else None
        if version not in (None, ""):
            shown["v_num"] = version[-4:] if isinstance(version, str) else version
        for name, value in trainer.progress_bar_metrics.items():
            shown[name] = value.item() if hasattr(value, "item") else value
        return shown

    def _metrics_text(self, trainer: Trainer, pl_module: LightningModule) -> str:
        parts = []
        for name, value in self.get_metrics(trainer, pl_module).items():
            parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
        return ", ".join(parts)

    # ------------------------------------------------------------------------------------------ plain form
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.is_disabled:
            return
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in self.get_metrics(trainer, pl_module).items())
        print(f"Epoch {trainer.current_epoch}: {trainer.num_training_batches} batches, step {trainer.global_step}  {shown}".rstrip(),
              flush=True)
