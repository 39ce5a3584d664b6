"""Tuner: the largest batch size that fits in memory (agreed by every rank) and the learning-rate range test.

The public face of :mod:`fabric_lite.trainer.tuning`: the batch-size search (``tuning.batch_size``), the
learning-rate finder (``tuning.lr_finder``) and the isolation of their short trial runs (``tuning.trials``:
side effects off, and weights, optimizers and Trainer state put back afterwards).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fabric_lite.trainer.tuning import batch_size, lr_finder
from fabric_lite.trainer.tuning.lr_finder import LR_MODES, LRFinder
from fabric_lite.trainer.tuning.trials import OOM_MESSAGES, free_memory, is_oom_error

if TYPE_CHECKING:
    from fabric_lite.trainer.datamodule import LightningDataModule
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

METHODS = batch_size.METHODS
__all__ = ["LR_MODES", "METHODS", "OOM_MESSAGES", "LRFinder", "Tuner", "free_memory", "is_oom_error"]


class Tuner:
    """Tune a model before training: ``scale_batch_size`` and ``lr_find`` (Lightning's names and signatures).

    Example:
        >>> from fabric_lite.trainer import Trainer
        >>> trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
        >>> tuner = Tuner(trainer)  # also trainer.tuner
        >>> tuner.trainer is trainer
        True
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def trainer(self) -> Trainer:
        return self._trainer

    def scale_batch_size(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        method: str = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
    ) -> int | None:
        """Find the largest batch size whose training steps fit in memory; write it to the model and return it.

        Each trial sets ``batch_arg_name`` (on the model, ``model.hparams`` and/or the data module, wherever it
        exists), then runs ``steps_per_trial`` real steps of ``method`` through the Trainer; the loaders are
        built anew from ``train_dataloader()`` (model or data module), which reads the attribute. ``"power"``
        doubles from ``init_val`` until a trial runs out of memory (or ``max_trials`` trials, or the batch
        holds the whole dataset) and keeps the last size that fitted; ``"binsearch"`` then halves the gap
        between the last success and the first failure until they are neighbours. Out of memory is
        ``torch.OutOfMemoryError``, ``MemoryError`` or a ``RuntimeError`` of an allocator (for example
        ``DefaultCPUAllocator: can't allocate memory``); any other error stops the search.

        With several processes (DDP) every rank runs each trial, and one ``all_reduce(MAX)`` of an
        out-of-memory flag per trial makes every rank take the same decision, so all agree on the size
        that fits on the tightest rank. Trial steps skip the gradient all-reduce (``no_backward_sync``) and
        metric syncing, so a rank that fails early never leaves the others waiting in a collective (a
        ``training_step`` that runs collectives of its own is not supported there). Strategies whose steps
        are collectives by nature (FSDP, DeepSpeed) are refused with several processes.

        Afterwards the weights, the optimizers' state, the RNG and the Trainer's state are as before.
        Returns None (and tunes nothing) under ``fast_dev_run``.
        """
        return batch_size.scale_batch_size(self._trainer, model, train_dataloaders, val_dataloaders, dataloaders, datamodule,
                                           method, mode, steps_per_trial, init_val, max_trials, batch_arg_name)

    def lr_find(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        method: str = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
        *,
        plot_path: str | os.PathLike[str] | bool | None = None,
    ) -> LRFinder | None:
        """Range test: train ``num_training`` steps while the learning rate grows from ``min_lr`` to ``max_lr``.

        The loss of each step is recorded (smoothed, as Lightning does); the search stops early once the
        smoothed loss exceeds ``early_stop_threshold`` x the best one (None: never). The returned
        :class:`LRFinder` has ``results`` ({"lr": [...], "loss": [...]}), ``suggestion()`` (the steepest
        descent) and ``plot()``. With ``update_attr`` the suggestion is written to ``attr_name``, or to
        ``lr`` / ``learning_rate`` on the model or its hparams. The plot is saved as a PNG on rank 0 at
        ``plot_path`` (default ``<default_root_dir>/lr_finder.png``; ``False``: not saved; skipped with a
        warning if matplotlib is missing: ``pip install 'torch-fabric-lite[tuner]'``). Weights, optimizer state,
        RNG and Trainer state are put back afterwards. Under DDP the per-step loss is averaged over ranks,
        so every rank records the same curve and stops at the same step.
        """
        return lr_finder.lr_find(self._trainer, model, train_dataloaders, val_dataloaders, dataloaders, datamodule, method,
                                 min_lr, max_lr, num_training, mode, early_stop_threshold, update_attr, attr_name, plot_path)

    def tune(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
             datamodule: LightningDataModule | None = None, scale_batch_size_kwargs: dict[str, Any] | None = None,
             lr_find_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``trainer.tune`` runs: the batch-size scaler when ``Trainer(auto_scale_batch_size=...)`` is set, the LR
        finder when ``lr_find_kwargs`` is given; trial fits inside do not tune again."""
        trainer = self._trainer
        data = {"train_dataloaders": train_dataloaders, "val_dataloaders": val_dataloaders, "datamodule": datamodule}
        result: dict[str, Any] = {}
        trainer.state.tuning = True
        try:
            if trainer.auto_scale_batch_size:
                result["scale_batch_size"] = self.scale_batch_size(
                    model, mode=trainer.auto_scale_batch_size, **data, **(scale_batch_size_kwargs or {}))
            if lr_find_kwargs is not None:
                result["lr_find"] = self.lr_find(model, **data, **lr_find_kwargs)
        finally:
            trainer.state.tuning = False
        return result
