"""StochasticWeightAveraging: average the weights of the last epochs (torch.optim.swa_utils) and refresh BatchNorm at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.loops.hooks import transfer_batch

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

ANNEALING = ("cos", "linear")


class StochasticWeightAveraging(Callback):
    """From epoch ``swa_epoch_start`` on: switch the LR schedule to ``SWALR`` and average the weights after each epoch.

    At the end of fit the model holds the averaged weights, and BatchNorm statistics are recomputed
    over the training data with ``torch.optim.swa_utils.update_bn``.

    Args:
        swa_lrs: the SWA learning rate (one number, or one per parameter group); None keeps the current ones.
        swa_epoch_start: an epoch index (int) or a fraction of ``max_epochs`` (float in (0, 1]).
        annealing_epochs: epochs over which SWALR anneals to ``swa_lrs``.
        annealing_strategy: ``"cos"`` or ``"linear"``.
        avg_fn: custom averaging ``fn(averaged, current, num_averaged)`` (default: equal weights).

    Example:
        >>> StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2).swa_lrs
        0.01
    """

    def __init__(
        self,
        swa_lrs: float | list[float] | None = None,
        swa_epoch_start: float = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: str = "cos",
        avg_fn: Any = None,
        device: torch.device | str | None = None,
    ) -> None:
        if annealing_strategy not in ANNEALING:
            raise ConfigurationError(
                f"StochasticWeightAveraging(annealing_strategy={annealing_strategy!r}) is not known. Choose one of: cos, linear."
            )
        wrong_int = isinstance(swa_epoch_start, int) and swa_epoch_start < 0
        wrong_float = isinstance(swa_epoch_start, float) and not 0.0 < swa_epoch_start <= 1.0
        if wrong_int or wrong_float or isinstance(swa_epoch_start, bool):
            raise ConfigurationError(
                f"StochasticWeightAveraging(swa_epoch_start={swa_epoch_start!r}) is neither an epoch >= 0 nor a fraction in (0, 1]. "
                f"Fix: e.g. swa_epoch_start=0.8 or swa_epoch_start=5."
            )
        self.swa_lrs = swa_lrs
        self.swa_epoch_start = swa_epoch_start
        self.annealing_epochs = annealing_epochs
        self.annealing_strategy = annealing_strategy
        self.avg_fn = avg_fn
        self.device = device
        self.averaged: AveragedModel | None = None
        self._start_epoch = 0
        self._swalr = False  # the SWALR scheduler replaced the model's
        self._pending: dict[str, Any] | None = None  # averaged weights from a checkpoint, loaded at train start

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigurationError(
                f"StochasticWeightAveraging works with one optimizer; configure_optimizers returned {len(trainer.optimizers)}. "
                f"Fix: return one optimizer, or average the weights yourself."
            )
        if isinstance(self.swa_epoch_start, float):
            if trainer.max_epochs in (-1, None):
                raise ConfigurationError(
                    "StochasticWeightAveraging(swa_epoch_start=<fraction>) needs Trainer(max_epochs=...). Fix: pass an epoch index."
                )
            self._start_epoch = max(0, int(trainer.max_epochs * self.swa_epoch_start) - 1)
        else:
            self._start_epoch = self.swa_epoch_start

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch < self._start_epoch:
            return
        if self.averaged is None:
            self.averaged = AveragedModel(pl_module, device=self.device, avg_fn=self.avg_fn, use_buffers=False)
        if not self._swalr:
            optimizer = trainer.optimizers[0]
            swa_lr = self.swa_lrs if self.swa_lrs is not None else [g["lr"] for g in optimizer.param_groups]
            scheduler = SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=self.annealing_epochs,
                              anneal_strategy=self.annealing_strategy)
            from fabric_lite.trainer.optimizers import LRSchedulerConfig

            trainer.lr_scheduler_configs = [LRSchedulerConfig(scheduler=scheduler, interval="epoch")]
            self._swalr = True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.averaged is not None and trainer.current_epoch >= self._start_epoch:
            self.averaged.update_parameters(pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.averaged is None:
            return
        with torch.no_grad():
            for target, source in zip(pl_module.parameters(), self.averaged.module.parameters()):
                target.copy_(source.to(target.device))
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in pl_module.modules()):
            loader = trainer.train_dataloader
            was_training = pl_module.training
            update_bn(_inputs(trainer, loader), pl_module, device=trainer.fabric.device)
            pl_module.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        if self.averaged is None:
            return {}
        return {"averaged": self.averaged.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("averaged")

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        pass

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pending = self._pending
        if pending:
            self.averaged = AveragedModel(pl_module, device=self.device, avg_fn=self.avg_fn, use_buffers=False)
            self.averaged.load_state_dict(pending)
            self._pending = None


def _inputs(trainer: Trainer, loader: Any) -> Any:
    """The training batches after the module's transfer hooks, as update_bn wants them."""
    for index, batch in enumerate(loader):
        if index >= trainer.num_training_batches:
            break
        yield transfer_batch(trainer, batch, 0)
