"""Trainer: runs a LightningModule's fit / validate / test / predict loops on the public Fabric API only.

A facade: the flags become a frozen :class:`~fabric_lite.trainer.config.TrainerConfig`, the run's state
lives in one :class:`~fabric_lite.trainer.loops.state.LoopState`, and the loops are the small modules of
:mod:`fabric_lite.trainer.loops` (setup, hooks, fit, optimization, evaluation, launch). Callbacks,
checkpointing, preemption and the tuner read the public properties below.
"""

from __future__ import annotations

import dataclasses

import math
import os
from typing import Any

from fabric_lite.fabric import Fabric
from fabric_lite.trainer import checkpointing
from fabric_lite.trainer import preemption as preempt
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.config import TrainerConfig, apply_reproducibility, default_callbacks, resolve
from fabric_lite.trainer.datamodule import LightningDataModule
from fabric_lite.trainer.loops import evaluation, fit, setup
from fabric_lite.trainer.loops.launch import launch
from fabric_lite.trainer.loops.state import PUBLIC_FIELDS, LoopState
from fabric_lite.trainer.module import LightningModule
from fabric_lite.trainer.results import Results


class Trainer:
    """Run a :class:`~fabric_lite.trainer.LightningModule` (Lightning's Trainer flags; Fabric underneath).

    Every flag reads as a property of ``trainer.config`` (``trainer.max_epochs``), and the run's state as a
    property of ``trainer.state`` (``trainer.current_epoch``, ``trainer.callback_metrics``); both sets are made
    at the end of this module from the fields of :class:`TrainerConfig` and ``loops.state.PUBLIC_FIELDS``.

    Example:
        >>> trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                   enable_progress_bar=False)
        >>> trainer.max_epochs
        1
    """

    def __init__(
        self,
        *,
        accelerator: Any = "auto",
        strategy: Any = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        plugins: Any = None,
        logger: Any = None,
        callbacks: list[Callback] | Callback | None = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        limit_train_batches: float | None = None,
        limit_val_batches: float | None = None,
        limit_test_batches: float | None = None,
        limit_predict_batches: float | None = None,
        overfit_batches: float = 0.0,
        val_check_interval: float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        profiler: Any = None,
        max_time: Any = None,
        detect_anomaly: bool = False,
        use_distributed_sampler: bool = True,
        **legacy: Any,
    ) -> None:
        given = dict(locals())
        given.pop("self")
        given.pop("legacy")
        #: the resolved flags (frozen; ``trainer.max_epochs`` & co. read it)
        self.config: TrainerConfig
        self.config, self._fabric_arguments, extra = resolve(given, legacy)
        apply_reproducibility(self.config)
        self.fabric = Fabric(**self._fabric_arguments)
        self._spawned = False
        self.callbacks: list[Callback] = default_callbacks(self.config, callbacks, extra, given["enable_checkpointing"])
        #: everything a run changes; ``trainer.current_epoch`` & co. read it
        self.state = LoopState()
        self.state.results = Results(self.fabric, self.state.callback_metrics)
        self._tuner: Any = None
        self._interrupted = False  # set by loops.launch when a run ends with an exception (Ctrl-C included)

    # ------------------------------------------------------------------------------ read-only views
    @property
    def model(self) -> Any:
        """The model as set up by Fabric (strategy- and precision-wrapped), or None before a run."""
        return self.state.model

    @property
    def interrupted(self) -> bool:
        """True when the last fit / validate / test / predict ended with an exception, Ctrl-C included (Lightning's name).

        Ctrl-C (KeyboardInterrupt) ends the call gracefully: the callbacks', module's and data module's
        ``on_exception`` hooks run, the loggers are finalized with "failed", and the call returns None, so the
        script goes on (Lightning 2.0-2.3 did this; 2.4+ exits the program with status 1 instead). In one rank of
        a multi-process job the interrupt goes on after the hooks and the launcher stops every rank.
        """
        return self._interrupted

    @property
    def is_last_batch(self) -> bool:
        """Whether the training batch being run is the epoch's last (Lightning's manual-optimization docs step
        schedulers with ``if self.trainer.is_last_batch: sch.step()``)."""
        return self.state.num_training_batches != 0 and self.state.batch_idx + 1 >= self.state.num_training_batches

    @property
    def preemption_ckpt_path(self) -> str:
        """Where a fit stopped by ``plugins=[Preemption()]`` saves: ``<default_root_dir>/checkpoints/preempted.ckpt``."""
        return preempt.checkpoint_path(self.default_root_dir)

    @property
    def loggers(self) -> list[Any]:
        return self.fabric.loggers

    @property
    def logger(self) -> Any:
        return self.fabric.loggers[0] if self.fabric.loggers else None

    @property
    def log_dir(self) -> str:
        """The first logger's folder (``default_root_dir`` without a logger)."""
        logger = self.logger
        directory = getattr(logger, "log_dir", None) if logger is not None else None  # not every logger has a folder
        return directory or self.default_root_dir

    world_size = property(lambda self: self.fabric.world_size)
    global_rank = property(lambda self: self.fabric.global_rank)
    local_rank = property(lambda self: self.fabric.local_rank)
    node_rank = property(lambda self: self.fabric.node_rank)
    is_global_zero = property(lambda self: self.fabric.is_global_zero)
    strategy = property(lambda self: self.fabric.strategy)
    training = property(lambda self: self.state.stage == "train")
    validating = property(lambda self: self.state.stage == "validate")
    testing = property(lambda self: self.state.stage == "test")
    predicting = property(lambda self: self.state.stage == "predict")

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        from fabric_lite.trainer.callbacks.checkpoint import ModelCheckpoint

        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Any:
        found = self.checkpoint_callbacks
        return found[0] if found else None

    @property
    def early_stopping_callback(self) -> Any:
        from fabric_lite.trainer.callbacks.early_stopping import EarlyStopping

        found = [c for c in self.callbacks if isinstance(c, EarlyStopping)]
        return found[0] if found else None

    @property
    def tuner(self) -> Any:
        """The batch-size / learning-rate tuner for this Trainer (``fabric_lite.trainer.tuner.Tuner``)."""
        if self._tuner is None:
            from fabric_lite.trainer.tuner import Tuner

            self._tuner = Tuner(self)
        return self._tuner

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps the fit will make (for schedulers such as OneCycleLR); known once the loaders are set up."""
        n = self.num_training_batches
        per_epoch = math.ceil(n / self.accumulate_grad_batches) if n != float("inf") else float("inf")
        total = per_epoch * self.max_epochs if self.max_epochs != -1 else float("inf")
        return min(total, self.max_steps) if self.max_steps != -1 else total

    # ------------------------------------------------------------------------------ entry points
    def fit(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: LightningDataModule | None = None, ckpt_path: str | os.PathLike[str] | None = None) -> None:
        """Train ``model``; ``ckpt_path`` resumes model, optimizers, schedulers, counters and callback states."""
        setup.check_model(model, "fit")
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        setup.check_data("fit", train_dataloaders, datamodule)
        return launch(self, fit.run_fit, model, model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)

    def tune(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
             datamodule: LightningDataModule | None = None, scale_batch_size_kwargs: dict[str, Any] | None = None,
             lr_find_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the tuner (``trainer.tuner``): the batch-size scaler when ``auto_scale_batch_size`` is set, the LR finder
        when ``lr_find_kwargs`` is given. ``fit`` calls this first when ``auto_scale_batch_size`` is set.

        The tuner calls ``scale_batch_size(model, train_dataloaders=, val_dataloaders=, datamodule=, mode=,
        **scale_batch_size_kwargs)`` and ``lr_find(model, train_dataloaders=, val_dataloaders=, datamodule=,
        **lr_find_kwargs)``; their trial fits do not tune again.
        """
        return self.tuner.tune(model, train_dataloaders, val_dataloaders, datamodule, scale_batch_size_kwargs, lr_find_kwargs)

    def validate(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: Any = None,
                 verbose: bool = True, datamodule: LightningDataModule | None = None) -> list[dict[str, float]]:
        """Run the validation loop once; returns one dict of epoch metrics per dataloader."""
        return launch(self, evaluation.run_eval, model, "validate", model, dataloaders, ckpt_path, verbose, datamodule)

    def test(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: Any = None,
             verbose: bool = True, datamodule: LightningDataModule | None = None) -> list[dict[str, float]]:
        """Run the test loop; ``ckpt_path`` is ``"best"``, ``"last"``, a path, or None (the weights in memory)."""
        return launch(self, evaluation.run_eval, model, "test", model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(self, model: LightningModule | None = None, dataloaders: Any = None, datamodule: LightningDataModule | None = None,
                return_predictions: bool = True, ckpt_path: Any = None) -> list[Any] | None:
        """Run ``predict_step`` over the data; returns this process's outputs (a list per dataloader if several)."""
        return launch(self, evaluation.run_predict, model, model, dataloaders, datamodule, return_predictions, ckpt_path)

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filepath: str | os.PathLike[str], weights_only: bool = False) -> None:
        """Write model, optimizers, schedulers, counters, RNG, loader position and callback states (``fabric.save``, atomic).

        Every process must call it (a collective). The tuner and resume use :meth:`restore_checkpoint`.
        """
        checkpointing.save_checkpoint(self, filepath, weights_only)

    def restore_checkpoint(self, filepath: str | os.PathLike[str]) -> None:
        """Load a checkpoint written by :meth:`save_checkpoint` into the running model, optimizers and Trainer state."""
        checkpointing.restore(self, os.fspath(filepath), training=bool(self.optimizers))


def _config_view(name: str) -> property:
    def set_value(self: Trainer, value: Any) -> None:
        # Flags stayed assignable (trainer.limit_val_batches = 0, as Lightning users write): a new frozen config.
        self.config = dataclasses.replace(self.config, **{name: value})

    return property(lambda self: getattr(self.config, name), set_value, doc=f"The resolved ``Trainer({name}=...)`` flag.")


def _state_view(name: str) -> property:
    def set_value(self: Trainer, value: Any) -> None:
        setattr(self.state, name, value)

    return property(lambda self: getattr(self.state, name), set_value, doc=f"``trainer.state.{name}`` (the running loop's).")


for _name in TrainerConfig.__dataclass_fields__:
    setattr(Trainer, _name, _config_view(_name))
for _name in PUBLIC_FIELDS:
    setattr(Trainer, _name, _state_view(_name))
