"""Hook calls in Lightning's order (callbacks, then the module), step calls, batch transfer and metric logging."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fabric_lite.trainer.callbacks.base import Callback
    from fabric_lite.trainer.trainer import Trainer


@contextmanager
def _in_hook(trainer: Trainer, name: str) -> Iterator[None]:
    """Let ``self.log`` know which hook it is called from, and time the call as the profiler's action ``name``."""
    results = trainer.state.results
    previous = results.hook
    results.hook = name
    profiler = trainer.profiler  # the one in use when the call starts stops it (a tuner trial swaps it)
    profiler.start(name)
    try:
        yield
    finally:
        profiler.stop(name)
        results.hook = previous


def call_hook(trainer: Trainer, name: str, *args: Any, module: bool = True, callbacks: Iterable[Callback] | None = None) -> Any:
    """Callbacks first (in the given order), then the LightningModule; returns the module's answer."""
    with _in_hook(trainer, name):
        pl_module = trainer.lightning_module
        for callback in trainer.callbacks if callbacks is None else callbacks:
            getattr(callback, name)(trainer, pl_module, *args)
        method = getattr(pl_module, name, None) if module and pl_module is not None else None
        return method(*args) if method is not None else None


def call_module(trainer: Trainer, name: str, *args: Any) -> Any:
    """The LightningModule's ``name`` alone (``self.log`` inside knows which hook it is in)."""
    with _in_hook(trainer, name):
        return getattr(trainer.lightning_module, name)(*args)


def call_step(trainer: Trainer, name: str, *args: Any) -> Any:
    """``training_step`` & co. through the set-up model, so that the strategy's forward wrapping applies.

    The arguments are cut to what the step's signature takes (``training_step(self, batch)`` works, as in Lightning).
    """
    from fabric_lite.trainer.loops.signature import step_arguments

    args = step_arguments(trainer.lightning_module, name, args)
    with _in_hook(trainer, name):
        return getattr(trainer.model, name)(*args)


def transfer_batch(trainer: Trainer, batch: Any, dataloader_idx: int) -> Any:
    """on_before_batch_transfer, transfer_batch_to_device, on_after_batch_transfer, as Lightning calls them.

    Each of the three comes from the data module when it overrides that hook, else from the LightningModule.
    """
    module, datamodule = trainer.lightning_module, trainer.datamodule

    def owner(name: str) -> Any:
        if datamodule is not None:
            from fabric_lite.trainer.datamodule import LightningDataModule

            own = getattr(type(datamodule), name, None)
            if own is not None and own is not getattr(LightningDataModule, name, None):
                return datamodule
        return module

    batch = owner("on_before_batch_transfer").on_before_batch_transfer(batch, dataloader_idx)
    batch = owner("transfer_batch_to_device").transfer_batch_to_device(batch, trainer.fabric.device, dataloader_idx)
    return owner("on_after_batch_transfer").on_after_batch_transfer(batch, dataloader_idx)


def collect_step(trainer: Trainer) -> dict[str, float]:
    """This step's fresh values: the progress bar's are shown now (before on_train_batch_end, as in Lightning,
    where the bar reads the current step); the loggers' are returned for ``log_step``."""
    logged, bar = trainer.state.results.step_values(sync=True)
    trainer.progress_bar_metrics.update(bar)
    return logged


def log_step(trainer: Trainer, collected: Mapping[str, float] | None = None, *, stepped: bool = True) -> None:
    """Log this step's values (``collected`` before on_train_batch_end, plus any logged in that hook), as Lightning
    does: on batches that stepped the optimizer, every ``log_every_n_steps`` of them, with the epoch."""
    logged = {**(collected or {}), **collect_step(trainer)}
    if logged and stepped and trainer.state.batches_that_stepped % trainer.log_every_n_steps == 0:
        log_metrics(trainer, {**logged, "epoch": trainer.state.current_epoch})


def logging_step(trainer: Trainer) -> int:
    """The loggers' step, Lightning's: during fit, the training batches that stepped before the current one (the
    values of batch 0 and the validation after it are at 0); in a validate / test call after fit, all of them."""
    state = trainer.state
    return max(state.batches_that_stepped - 1, 0) if state.in_fit else state.batches_that_stepped


def log_metrics(trainer: Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """To the loggers at ``step`` (default: :func:`logging_step`)."""
    trainer.logged_metrics.update(metrics)
    if trainer.loggers and not trainer.sanity_checking:
        trainer.fabric.log_dict(dict(metrics), step=logging_step(trainer) if step is None else step)


def finalize_loggers(trainer: Trainer, status: str) -> None:
    for logger in trainer.loggers:
        logger.finalize(status)


def on_exception(trainer: Trainer, error: BaseException) -> None:
    for callback in trainer.callbacks:
        callback.on_exception(trainer, trainer.lightning_module, error)
    finalize_loggers(trainer, "failed")
    trainer.state.stage = None
