"""StochasticWeightAveraging: average the weights of the last epochs (torch.optim.swa_utils) and refresh BatchNorm at the end."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.combined_loader import batches
from fabric_lite.trainer.loops.hooks import call_step, transfer_batch

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

ANNEALING = ("cos", "linear")


class StochasticWeightAveraging(Callback):
    """Stochastic weight averaging with Lightning's timing: ``SWALR`` and averaging from the SWA start epoch on.

    The start epoch (0-based) is ``swa_epoch_start - 1`` for an int (the ``swa_epoch_start``-th epoch, counted
    from 1, as Lightning documents it) and ``int(max_epochs * swa_epoch_start) - 1`` for a fraction. As in
    Lightning, the weights are averaged at the *start* of each epoch from there to the last one, so the
    average holds the weights after epochs ``start - 1`` .. ``max_epochs - 2`` (the initial weights when
    the start is epoch 0). When fit reaches ``max_epochs`` (or runs without an epoch limit), the model gets
    the averaged weights and BatchNorm statistics are recomputed over the training data with
    ``torch.optim.swa_utils.update_bn`` (Lightning runs one extra forward-only epoch for that instead).

    Args:
        swa_lrs: the SWA learning rate (one number, or one per parameter group); None keeps the current ones.
        swa_epoch_start: the epoch to start at, counted from 1 (int >= 1), or a fraction of ``max_epochs``
            (float in (0, 1]).
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
        wrong_int = isinstance(swa_epoch_start, int) and swa_epoch_start < 1
        wrong_float = isinstance(swa_epoch_start, float) and not 0.0 < swa_epoch_start <= 1.0
        if wrong_int or wrong_float or isinstance(swa_epoch_start, bool):
            raise ConfigurationError(
                f"StochasticWeightAveraging(swa_epoch_start={swa_epoch_start!r}) is neither an epoch >= 1 (counted from 1, as "
                f"in Lightning) nor a fraction in (0, 1]. Fix: e.g. swa_epoch_start=0.8, or swa_epoch_start=1 to start at the first epoch."
            )
        self.swa_lrs = swa_lrs
        self.swa_epoch_start = swa_epoch_start
        self.annealing_epochs = annealing_epochs
        self.annealing_strategy = annealing_strategy
        self.avg_fn = avg_fn
        self.device = device
        self.averaged: AveragedModel | None = None
        self._start_epoch = 0  # 0-based
        self._end_epoch: float = math.inf  # the last epoch averaged (max_epochs - 1)
        self._latest_update_epoch = -1  # a resumed epoch does not average its start twice
        self._scheduler: SWALR | None = None
        self._pending: dict[str, Any] | None = None  # state from a checkpoint, used at train start
        self._scheduler_state: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigurationError(
                f"StochasticWeightAveraging works with one optimizer; configure_optimizers returned {len(trainer.optimizers)}. "
                f"Fix: return one optimizer, or average the weights yourself."
            )
        unlimited = trainer.max_epochs in (-1, None)
        if isinstance(self.swa_epoch_start, float):
            if unlimited:
                raise ConfigurationError(
                    "StochasticWeightAveraging(swa_epoch_start=<fraction>) needs Trainer(max_epochs=...). Fix: pass an epoch index."
                )
            self._start_epoch = max(0, int(trainer.max_epochs * self.swa_epoch_start) - 1)
        else:
            self._start_epoch = max(0, self.swa_epoch_start - 1)
        self._end_epoch = math.inf if unlimited else trainer.max_epochs - 1
        self._scheduler = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending and pending.get("averaged"):
            self.averaged = AveragedModel(pl_module, device=self.device, avg_fn=self.avg_fn, use_buffers=False)
            self.averaged.load_state_dict(pending["averaged"])
            self._latest_update_epoch = pending.get("latest_update_epoch", -1)
        self._scheduler_state = pending.get("scheduler") if pending else None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self._start_epoch <= epoch <= self._end_epoch:
            return
        if self._scheduler is None:
            optimizer = trainer.optimizers[0]
            swa_lr = self.swa_lrs if self.swa_lrs is not None else [g["lr"] for g in optimizer.param_groups]
            self._scheduler = SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=self.annealing_epochs,
                                    anneal_strategy=self.annealing_strategy)
            if getattr(self, "_scheduler_state", None):
                self._scheduler.load_state_dict(self._scheduler_state)
            from fabric_lite.trainer.optimizers import LRSchedulerConfig

            trainer.lr_scheduler_configs = [LRSchedulerConfig(scheduler=self._scheduler, interval="epoch")]
        if epoch > self._latest_update_epoch:
            if self.averaged is None:
                self.averaged = AveragedModel(pl_module, device=self.device, avg_fn=self.avg_fn, use_buffers=False)
            self.averaged.update_parameters(pl_module)  # the weights the previous epochs trained
            self._latest_update_epoch = epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # As in Lightning: only a fit that ran to its last epoch (or has no epoch limit) ends with the average.
        if self.averaged is None or not (trainer.current_epoch - 1 == self._end_epoch or self._end_epoch == math.inf):
            return
        with torch.no_grad():
            for target, source in zip(pl_module.parameters(), self.averaged.module.parameters()):
                target.copy_(source.to(target.device))
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in pl_module.modules()):
            was_training = pl_module.training
            if pl_module.automatic_optimization:
                _recompute_batchnorm(trainer, pl_module)
            else:  # a manual training_step steps its optimizers itself: the module's forward over the inputs
                update_bn(_inputs(trainer, trainer.state.train_loader), pl_module, device=trainer.fabric.device)
            pl_module.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        if self.averaged is None:
            return {}
        return {"averaged": self.averaged.state_dict(), "latest_update_epoch": self._latest_update_epoch,
                "scheduler": None if self._scheduler is None else self._scheduler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        pass


def _recompute_batchnorm(trainer: Trainer, pl_module: LightningModule) -> None:
    """BatchNorm statistics of the averaged weights: reset, then one pass of ``training_step`` over the training
    batches without backward or optimizer step (Lightning's extra epoch), with cumulative averages (momentum None)."""
    norms = [m for m in pl_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = {}
    for norm in norms:
        norm.reset_running_stats()
        momenta[norm], norm.momentum = norm.momentum, None
    pl_module.train()
    results = trainer.state.results
    was_enabled, results.enabled = results.enabled, False  # this pass logs nothing
    try:
        with torch.no_grad():
            for index, batch in enumerate(_inputs(trainer, trainer.state.train_loader)):
                call_step(trainer, "training_step", batch, index)
    finally:
        results.enabled = was_enabled
        for norm, momentum in momenta.items():
            norm.momentum = momentum


def _inputs(trainer: Trainer, loader: Any) -> Any:
    """The training batches after the module's transfer hooks, as update_bn wants them."""
    for index, batch in enumerate(batches(loader)):
        if index >= trainer.num_training_batches:
            break
        yield transfer_batch(trainer, batch, 0)
