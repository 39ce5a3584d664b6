"""Trial isolation: short nested runs through the Trainer's loops with side effects off, and the state put back after.

A trial runs with the Trainer's config replaced (few steps, no validation), a single guard callback (no
loggers, no metric syncing, no gradient all-reduce) and a snapshot checkpoint taken before its first step;
afterwards the config, callbacks, loop state, metrics, weights, optimizer state and RNG are as before.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import os
import shutil
import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.errors import ConfigurationError, UsageError
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.loops.state import LoopState
from fabric_lite.trainer.profilers import PassThroughProfiler

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

#: what an allocator says when it cannot allocate (CUDA's caching allocator, torch's CPU allocator, the C library)
OOM_MESSAGES = ("out of memory", "can't allocate memory", "DefaultCPUAllocator")
#: the loop state's metric dicts: the same objects stay (Results hold them), their contents are put back
METRIC_FIELDS = ("callback_metrics", "logged_metrics", "progress_bar_metrics")


def is_oom_error(error: BaseException) -> bool:
    """Whether ``error`` says that memory ran out (``torch.OutOfMemoryError``, ``MemoryError`` or an allocator's message).

    Example:
        >>> is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
        True
        >>> is_oom_error(RuntimeError("shape mismatch"))
        False
    """
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in OOM_MESSAGES)


def free_memory() -> None:
    """Drop unreachable tensors and give cached CUDA blocks back (after an out-of-memory trial)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def trial_flags(method: str, steps: int) -> dict[str, Any]:
    """The config a trial of ``steps`` steps of ``method`` runs with."""
    if method == "fit":
        return {"max_steps": steps, "max_epochs": -1, "min_epochs": None, "min_steps": None, "limit_train_batches": 1.0,
                "limit_val_batches": 0, "num_sanity_val_steps": 0, "overfit_batches": 0.0, "accumulate_grad_batches": 1}
    limit = {"validate": "limit_val_batches", "test": "limit_test_batches", "predict": "limit_predict_batches"}[method]
    return {limit: steps}


@contextlib.contextmanager
def isolated(trainer: Trainer, **flags: Any) -> Generator[None, None, None]:
    """Run with ``flags`` replacing config values and the loggers silenced; afterwards all is as before.

    Only the Fabric set-up of the model (``LoopState.KEPT_AFTER_TRIALS``) outlives the trials: the model's
    parameters now belong to that set-up, and a later fit reuses it as after any fit.
    """
    config, callbacks, state = trainer.config, trainer.callbacks, trainer.state
    saved = copy.copy(state)
    metrics = {name: dict(getattr(state, name)) for name in METRIC_FIELDS}
    # The Trainer logs through fabric.loggers; emptying that list (and refilling it) silences the trials.
    loggers = trainer.loggers
    kept_loggers = list(loggers)
    loggers.clear()
    # Trials are not part of the run the user profiles: their hooks and steps go to a profiler that records nothing.
    trainer.config = dataclasses.replace(config, **{"profiler": PassThroughProfiler(), **flags})
    state.should_stop, state.tuning = False, True
    try:
        yield
    finally:
        loggers[:] = kept_loggers
        trainer.config, trainer.callbacks = config, callbacks
        for field in dataclasses.fields(LoopState):
            if field.name not in LoopState.KEPT_AFTER_TRIALS:
                setattr(state, field.name, getattr(saved, field.name))
        for name, values in metrics.items():
            target = getattr(state, name)
            target.clear()
            target.update(values)


def check_distributed(trainer: Trainer, call: str) -> None:
    # A trial must be free of collectives between its first and last step; the strategy says whether its
    # no_backward_sync gives that (DDP's no_sync does; sharded forwards and DeepSpeed's backward do not).
    if trainer.world_size > 1 and not trainer.fabric.strategy.local_steps_under_no_sync:
        raise ConfigurationError(
            f"{call} with strategy={trainer.fabric.plan.strategy!r} on {trainer.world_size} processes: its training steps "
            f"are collectives (gathered parameters or reduced gradients), so a rank that runs out of memory would leave "
            f"the others waiting mid-step. Fix: tune with strategy='ddp' or in one process (a conservative size: "
            f"sharding needs less memory), then fit with this strategy."
        )


def ensure_launched(trainer: Trainer, call: str) -> None:
    fabric = trainer.fabric
    if fabric.launcher.runs_function_in_new_processes and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise UsageError(
            f"{call} was called in the main process of strategy={fabric.plan.strategy!r}, whose processes exist only "
            f"inside trainer.fit(...). Fix: Trainer(auto_scale_batch_size=...) and trainer.fit(model) (tuning runs "
            f"inside the processes), or strategy='ddp', whose processes re-run the script."
        )
    fabric.launch()


def reset_forward_buffer_sync(trainer: Trainer) -> None:
    # DDP broadcasts buffers in the first forward after a synced one and remembers that per rank; a rank
    # whose forward failed remembers otherwise. Setting the same flag on every rank keeps the next trial's
    # collectives matched (the broadcast sends rank 0's buffers, which every rank restores anyway).
    model = trainer.model
    if model is None or not trainer.fabric.strategy.local_steps_under_no_sync:
        return
    for module in model.modules():
        if hasattr(module, "require_forward_param_sync"):  # torch's DistributedDataParallel flag
            module.require_forward_param_sync = True


class Snapshot:
    """The state before the first trial step: a temporary Trainer checkpoint in default_root_dir, restored at the end."""

    def __init__(self, trainer: Trainer, enabled: bool) -> None:
        self.trainer = trainer
        self.enabled = enabled
        self.path: str | None = None

    def take(self) -> None:
        """Called at the first trial's on_fit_start (model and optimizers set up, no step taken): every rank."""
        if not self.enabled or self.path is not None:
            return
        trainer = self.trainer
        name = f".tuner_{uuid.uuid4().hex[:12]}.ckpt"
        if trainer.world_size > 1:
            name = trainer.fabric.broadcast(name, src=0)  # one file for all ranks (rank 0's name)
        path = os.path.join(trainer.default_root_dir, name)
        os.makedirs(trainer.default_root_dir, exist_ok=True)
        trainer.save_checkpoint(path)
        self.path = path

    def restore_and_remove(self) -> None:
        if self.path is None:
            return
        trainer, path = self.trainer, self.path
        self.path = None
        try:
            trainer.restore_checkpoint(path)  # weights, optimizer state, RNG (a collective: every rank is here)
            for parameter in trainer.lightning_module.parameters() if trainer.lightning_module is not None else []:
                parameter.grad = None
        finally:
            if trainer.is_global_zero:
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@contextlib.contextmanager
def snapshot(trainer: Trainer, enabled: bool) -> Generator[Snapshot, None, None]:
    """A :class:`Snapshot` restored (and its file removed) when the block ends, however it ends."""
    taken = Snapshot(trainer, enabled)
    try:
        yield taken
    finally:
        taken.restore_and_remove()


class TrialGuard(Callback):
    """The only callback of a trial: snapshot before the first step, metric logging off, gradient sync off (DDP)."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot
        self.stack = contextlib.ExitStack()

    def quiet(self, trainer: Trainer) -> None:
        # self.log calls become no-ops: their values would be synced (collectives) and logged at each step
        trainer.state.results.enabled = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.quiet(trainer)
        if self.snapshot is not None:
            self.snapshot.take()
        if trainer.world_size > 1:
            # Gradients stay local in a trial, so a rank that fails mid-step leaves nobody waiting in an
            # all-reduce; the agreement is one all_reduce after the trial (see batch_size.run_trial).
            self.stack.enter_context(trainer.fabric.no_backward_sync(trainer.model))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.quiet(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.quiet(trainer)

    def close(self) -> None:
        self.stack.close()


def holders(model: Any, datamodule: Any, name: str) -> list[tuple[Any, str]]:
    """Where ``name`` lives: the model, its hparams, the data module (all that have it are updated)."""
    found: list[tuple[Any, str]] = []
    if hasattr(model, name):
        found.append((model, name))
    hparams = getattr(model, "hparams", None)  # any object may be passed: hparams is optional
    if isinstance(hparams, dict) and name in hparams:
        found.append((hparams, name))
    if datamodule is not None:
        if hasattr(datamodule, name):
            found.append((datamodule, name))
        dm_hparams = getattr(datamodule, "hparams", None)
        if isinstance(dm_hparams, dict) and name in dm_hparams:
            found.append((dm_hparams, name))
    return found


def set_holders(found: list[tuple[Any, str]], name: str | None, value: Any) -> None:
    for holder, key in found:
        key = name or key
        if isinstance(holder, dict):
            holder[key] = value
        else:
            setattr(holder, key, value)


def check_int(call: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{call} must be an integer >= {minimum}. Fix: pass e.g. {max(minimum, 3)}.")
