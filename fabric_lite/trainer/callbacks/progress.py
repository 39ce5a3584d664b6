"""Progress bars: ProgressBar (the base, and a plain one-line-per-epoch form) and TQDMProgressBar (the default).

TQDMProgressBar follows Lightning's bar: a "Sanity Checking" bar, a main "Epoch N" bar per training epoch
with the ``prog_bar=True`` metrics and ``v_num`` (the logger's version) in its postfix, a "Validation" bar
while validating, and "Testing" / "Predicting" bars; bars write to stdout and only global rank 0 draws.
``RichProgressBar`` (``callbacks/rich_progress.py``) draws the same with ``rich``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from fabric_lite.trainer.callbacks.progress_base import ProgressBar, _total, tqdm_available

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

__all__ = ["ProgressBar", "TQDMProgressBar", "tqdm_available"]


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
