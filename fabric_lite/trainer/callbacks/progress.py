"""Progress bars: ProgressBar (the base, and a plain one-line-per-epoch form) and TQDMProgressBar (the default).

TQDMProgressBar follows Lightning's bar: a "Sanity Checking" bar, a main "Epoch N" bar per training epoch
with the ``prog_bar=True`` metrics and ``v_num`` (the logger's version) in its postfix, a "Validation" bar
while validating, and "Testing" / "Predicting" bars; bars write to stdout and only global rank 0 draws.
``RichProgressBar`` (``callbacks/rich_progress.py``) draws the same with ``rich``.
"""

from __future__ import annotations

import math
import sys
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


class TQDMProgressBar(ProgressBar):
    """tqdm bars for sanity check, training, validation, test and predict (Lightning's default bar).

    Args:
        refresh_rate: redraw every this many batches (0: off).
        process_position: the line to draw on (several bars from several Trainers at once).
        leave: keep one finished "Epoch N" line per epoch (default: the bar is reused, one line for the fit).
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        if not tqdm_available():
            raise ModuleNotFoundError(
                "TQDMProgressBar needs the tqdm package, which is not installed. Fix: pip install tqdm, or use "
                "ProgressBar() (plain lines) or Trainer(enable_progress_bar=False)."
            )
        super().__init__(refresh_rate)
        self._process_position = process_position
        self._leave = leave
        self.train_progress_bar: Any = None
        self.val_progress_bar: Any = None
        self.test_progress_bar: Any = None
        self.predict_progress_bar: Any = None

    @property
    def process_position(self) -> int:
        return self._process_position

    def _bar(self, desc: str, position: int, leave: bool) -> Any:
        from tqdm import tqdm

        return tqdm(desc=desc, position=2 * self._process_position + position, disable=self.is_disabled, leave=leave,
                    dynamic_ncols=True, file=sys.stdout, smoothing=0)

    @staticmethod
    def _reset(bar: Any, total: Any, desc: str) -> None:
        bar.reset(total=_total(total))
        bar.set_description(desc, refresh=False)

    @staticmethod
    def _set_n(bar: Any, n: int) -> None:
        if not bar.disable:
            bar.n = n
            bar.refresh()

    def _close(self, name: str) -> None:
        bar = getattr(self, name)
        if bar is not None:
            bar.close()
            setattr(self, name, None)

    # ------------------------------------------------------------------------------------------ sanity check
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.val_progress_bar = self._bar(self.sanity_check_description, 0, leave=False)

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close("val_progress_bar")
        self.reset_dataloader_idx_tracker()

    # ------------------------------------------------------------------------------------------ training
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.train_progress_bar = self._bar(self.train_description, 0, leave=True)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._leave or self.train_progress_bar is None:
            self._close("train_progress_bar")
            self.train_progress_bar = self._bar(self.train_description, 0, leave=True)
        self._reset(self.train_progress_bar, self.total_train_batches, f"Epoch {trainer.current_epoch}")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # The previous step's prog_bar values are in trainer.progress_bar_metrics by now.
        if self.train_progress_bar is not None and not self.train_progress_bar.disable and batch_idx > 0:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(batch_idx + 1, bar.total):
            self._set_n(bar, batch_idx + 1)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.set_postfix(self.get_metrics(trainer, pl_module))
        if self._leave:
            self._close("train_progress_bar")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close("train_progress_bar")

    # ------------------------------------------------------------------------------------------ validation
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            standalone = trainer.state.stage == "validate" and not trainer.state.in_fit
            self.val_progress_bar = self._bar(self.validation_description, 1 if not standalone else 0, leave=standalone)

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if self.val_progress_bar is None or not self.has_dataloader_changed(dataloader_idx):
            return
        desc = self.sanity_check_description if trainer.sanity_checking else self.validation_description
        self._reset(self.val_progress_bar, self.total_val_batches_current_dataloader, f"{desc} DataLoader {dataloader_idx}")

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        bar = self.val_progress_bar
        if bar is not None and self._should_update(batch_idx + 1, bar.total):
            self._set_n(bar, batch_idx + 1)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._close("val_progress_bar")
        self.reset_dataloader_idx_tracker()
        if self.train_progress_bar is not None and not self.train_progress_bar.disable and trainer.state.in_fit:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    # ------------------------------------------------------------------------------------------ test / predict
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.test_progress_bar = self._bar(self.test_description, 0, leave=True)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        if self.test_progress_bar is not None and self.has_dataloader_changed(dataloader_idx):
            self._reset(self.test_progress_bar, self.total_test_batches_current_dataloader,
                        f"{self.test_description} DataLoader {dataloader_idx}")

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        bar = self.test_progress_bar
        if bar is not None and self._should_update(batch_idx + 1, bar.total):
            self._set_n(bar, batch_idx + 1)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close("test_progress_bar")
        self.reset_dataloader_idx_tracker()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.predict_progress_bar = self._bar(self.predict_description, 0, leave=True)

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        if self.predict_progress_bar is not None and self.has_dataloader_changed(dataloader_idx):
            self._reset(self.predict_progress_bar, self.total_predict_batches_current_dataloader,
                        f"{self.predict_description} DataLoader {dataloader_idx}")

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        bar = self.predict_progress_bar
        if bar is not None and self._should_update(batch_idx + 1, bar.total):
            self._set_n(bar, batch_idx + 1)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close("predict_progress_bar")
        self.reset_dataloader_idx_tracker()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        for name in ("val_progress_bar", "test_progress_bar", "predict_progress_bar", "train_progress_bar"):
            self._close(name)


def __getattr__(name: str) -> Any:
    # ``from lightning.pytorch.callbacks.progress import RichProgressBar`` ports as is (rich is imported only then).
    if name in ("RichProgressBar", "RichProgressBarTheme"):
        from fabric_lite.trainer.callbacks import rich_progress

        return getattr(rich_progress, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
