"""LoopState: everything a run changes (progress, set-up objects, metrics, resume bookkeeping), in one dataclass.

The Trainer exposes the Lightning-named fields as properties (``trainer.current_epoch`` ...) and the whole
object as ``trainer.state``; checkpointing, preemption and the tuner read and write it there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: fields exposed as Trainer properties under the same name (Lightning's public Trainer attributes)
PUBLIC_FIELDS = (
    "current_epoch", "global_step", "should_stop", "preempted", "sanity_checking", "stage", "callback_metrics",
    "logged_metrics", "progress_bar_metrics", "lightning_module", "datamodule", "optimizers", "lr_scheduler_configs",
    "num_training_batches", "num_val_batches", "num_sanity_val_batches", "num_test_batches", "num_predict_batches",
    "train_dataloader", "val_dataloaders", "test_dataloaders", "predict_dataloaders", "val_check_batch",
)


@dataclass
class LoopState:
    """The state of the running (or last) fit / validate / test / predict call."""

    # ---- progress and what callbacks read (Lightning's names)
    current_epoch: int = 0
    global_step: int = 0
    should_stop: bool = False
    preempted: bool = False  # the last fit stopped on a preemption signal (Preemption plugin)
    sanity_checking: bool = False
    stage: str | None = None
    callback_metrics: dict[str, Any] = field(default_factory=dict)
    logged_metrics: dict[str, float] = field(default_factory=dict)
    progress_bar_metrics: dict[str, float] = field(default_factory=dict)
    lightning_module: Any = None
    datamodule: Any = None
    optimizers: list[Any] = field(default_factory=list)
    lr_scheduler_configs: list[Any] = field(default_factory=list)
    num_training_batches: int | float = 0
    num_val_batches: list[int | float] = field(default_factory=list)
    num_sanity_val_batches: list[int | float] = field(default_factory=list)
    num_test_batches: list[int | float] = field(default_factory=list)
    num_predict_batches: list[int | float] = field(default_factory=list)
    train_dataloader: Any = None
    val_dataloaders: list[Any] = field(default_factory=list)
    test_dataloaders: list[Any] = field(default_factory=list)
    predict_dataloaders: list[Any] = field(default_factory=list)
    val_check_batch: int | float = math.inf  # validate after every this many training batches
    # ---- the loops' own bookkeeping
    train_loader: Any = None  # what the fit loop draws training batches from (the loader, or several combined)
    model: Any = None  # the Fabric-set-up model (trainer.model)
    setup_for: Any = None  # the LightningModule that ``model`` wraps: a second run of it is not set up again
    results: Any = None  # the Results of ``self.log`` calls for the running loop
    batch_idx: int = 0
    total_batch_idx: int = 0  # training batches run over all epochs
    # Training batches that ended in an optimizer step (every batch under manual optimisation): the loggers' step,
    # Lightning's convention (a batch's values at the count before it, 0, 1, ...; one per batch with two optimizers)
    batches_that_stepped: int = 0
    batches_done: int = 0  # batches the training loader handed out in its current (or last) epoch
    phase: str = "epoch_done"  # where a checkpoint written now resumes: in_epoch, batch_done, epoch_batches_done, ...
    resume: dict[str, Any] | None = None  # what restore() found, consumed by the fit loop
    epoch_rng: dict[str, Any] | None = None  # the RNG at the epoch's start (replayed by a mid-epoch resume)
    in_fit: bool = False
    val_has_run: bool = False  # a validation batch (not the sanity check's) ran in this fit (ModelCheckpoint reads it)
    tuning: bool = False  # the tuner's trial fits run
    preemption: Any = None  # the Preemption plugin during a fit (not during tuner trials)
    needs_zero_grad: bool = False

    #: fields a tuner trial may change that stay valid afterwards: the model remains set up by Fabric
    KEPT_AFTER_TRIALS = ("model", "setup_for")
