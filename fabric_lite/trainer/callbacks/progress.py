"""ProgressBar: a tqdm bar per training epoch with the ``prog_bar`` metrics, or one plain line per epoch without tqdm.

tqdm is optional (``pip install tqdm``); only global rank 0 prints.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from fabric_lite.trainer.callbacks.base import Callback

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer


class ProgressBar(Callback):
    """Show progress (added by ``Trainer(enable_progress_bar=True)``, the default).

    Args:
        refresh_rate: update the bar every this many batches.
        plain: force the plain-text form (one line per epoch), even when tqdm is installed.
    """

    def __init__(self, refresh_rate: int = 1, plain: bool | None = None) -> None:
        self.refresh_rate = max(1, int(refresh_rate))
        self.plain = plain if plain is not None else importlib.util.find_spec("tqdm") is None
        self._bar: Any = None

    def _metrics(self, trainer: Trainer) -> dict[str, str]:
        return {k: f"{v:.4g}" for k, v in trainer.progress_bar_metrics.items()}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or self.plain:
            return
        from tqdm import tqdm

        total = trainer.num_training_batches if trainer.num_training_batches != float("inf") else None
        self._bar = tqdm(total=total, desc=f"Epoch {trainer.current_epoch}", file=sys.stdout, dynamic_ncols=True, leave=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._bar is not None and (batch_idx + 1) % self.refresh_rate == 0:
            self._bar.update(self.refresh_rate)
            self._bar.set_postfix(self._metrics(trainer), refresh=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self._bar is not None:
            self._bar.set_postfix(self._metrics(trainer))
            self._bar.close()
            self._bar = None
        elif self.plain:
            shown = "  ".join(f"{k} {v}" for k, v in self._metrics(trainer).items())
            print(f"Epoch {trainer.current_epoch}: {trainer.num_training_batches} batches, step {trainer.global_step}  {shown}".rstrip(), flush=True)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
