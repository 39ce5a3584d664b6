"""Batch-size search: the largest batch size whose training (or evaluation) steps fit in memory, agreed by every rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.errors import ConfigurationError, UsageError, choices_error
from fabric_lite.trainer.datamodule import LightningDataModule
from fabric_lite.trainer.flags import BATCH_SIZE_MODES
from fabric_lite.trainer.loops import evaluation, fit
from fabric_lite.trainer.tuning import trials
from fabric_lite.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

METHODS = ("fit", "validate", "test", "predict")


def scale_batch_size(trainer: Trainer, model: LightningModule, train_dataloaders: Any, val_dataloaders: Any, dataloaders: Any,
                     datamodule: LightningDataModule | None, method: str, mode: str, steps_per_trial: int, init_val: int,
                     max_trials: int, batch_arg_name: str) -> int | None:
    """:meth:`fabric_lite.trainer.tuner.Tuner.scale_batch_size` (its docstring is the manual)."""
    if isinstance(train_dataloaders, LightningDataModule):
        datamodule, train_dataloaders = train_dataloaders, None
    call = f"Tuner.scale_batch_size(mode={mode!r}, method={method!r})"
    if mode not in BATCH_SIZE_MODES:
        raise choices_error(asked=f"Tuner.scale_batch_size(mode={mode!r})", kind="mode", choices=BATCH_SIZE_MODES)
    if method not in METHODS:
        raise choices_error(asked=f"Tuner.scale_batch_size(method={method!r})", kind="method", choices=METHODS)
    for name, value, minimum in (("steps_per_trial", steps_per_trial, 1), ("init_val", init_val, 1), ("max_trials", max_trials, 1)):
        trials.check_int(f"Tuner.scale_batch_size({name}={value!r})", value, minimum)
    direct = train_dataloaders if method == "fit" else dataloaders
    if direct is not None:
        hook = "train_dataloader" if method == "fit" else {"validate": "val_dataloader"}.get(method, f"{method}_dataloader")
        raise ConfigurationError(
            f"{call} got {'train_dataloaders' if method == 'fit' else 'dataloaders'}=<a loader you built>, whose batch "
            f"size the tuner cannot change. Fix: build the loader in model.{hook}() (or a LightningDataModule's) from "
            f"self.{batch_arg_name}, and pass the model (or datamodule=dm) without loaders."
        )
    holders = trials.holders(model, datamodule, batch_arg_name)
    if not holders:
        raise ConfigurationError(
            f"{call} looked for the attribute {batch_arg_name!r} on the model, model.hparams and the datamodule, and "
            f"found it on none. Fix: set self.{batch_arg_name} = 32 (or save_hyperparameters() with a {batch_arg_name} "
            f"argument) in __init__ and read it in train_dataloader(), or pass batch_arg_name='<your attribute>'."
        )
    if method != "fit" and trainer.world_size > 1:
        raise ConfigurationError(
            f"{call} with {trainer.world_size} processes: evaluation loops split data unevenly and end with a "
            f"collective, so one rank running out of memory would leave the others waiting. Fix: method='fit' "
            f"(training steps need more memory than evaluation), or tune in one process."
        )
    trials.check_distributed(trainer, call)
    if trainer.fast_dev_run:
        rank_zero_warn(f"{call} is skipped under Trainer(fast_dev_run=...): the run is a quick check, not tuned.")
        return None
    trials.ensure_launched(trainer, call)

    def trial(size: int) -> bool:
        trials.set_holders(holders, batch_arg_name, size)
        fitted = run_trial(trainer, model, datamodule, val_dataloaders, method, snapshot)
        rank_zero_info(f"Batch size {size} succeeded" if fitted else f"Batch size {size} failed: out of memory")
        return fitted

    original = [holder[key] if isinstance(holder, dict) else getattr(holder, key) for holder, key in holders]
    try:
        with trials.isolated(trainer, **trials.trial_flags(method, steps_per_trial)), \
                trials.snapshot(trainer, method == "fit") as snapshot:
            found, tried = search(trial, mode, init_val, max_trials, lambda: _samples_per_rank(trainer, method))
    except BaseException:
        _put_back(holders, original)
        raise
    if found == 0:
        _put_back(holders, original)
        smallest = min(tried)
        raise UsageError(
            f"{call}: every batch size tried ran out of memory ({', '.join(map(str, tried))}), so none fits"
            + (" (even batch_size=1)" if smallest == 1 else f" within max_trials={max_trials}") + ". Fix: "
            + ("use less memory per sample (a smaller model or input, precision='bf16-mixed', activation "
               "checkpointing) or a device with more memory." if smallest == 1 else
               f"start lower (init_val={max(1, smallest // 2)}) or allow more trials.")
        )
    trials.set_holders(holders, batch_arg_name, found)
    rank_zero_info(f"Finished batch size finder, will continue with full run using batch size {found} "
                   f"(mode {mode!r}, tried: {', '.join(map(str, tried))})")
    return found


def run_trial(trainer: Trainer, model: LightningModule, datamodule: LightningDataModule | None, val_dataloaders: Any,
              method: str, snapshot: trials.Snapshot) -> bool:
    """Run one trial on every rank; True when it fitted in memory on all of them (one all_reduce(MAX))."""
    guard = trials.TrialGuard(snapshot)
    failure: Exception | None = None
    code = 0  # 0 fitted, 1 out of memory, 2 another error
    trainer.callbacks = [guard]
    try:
        if method == "fit":
            fit.run_fit(trainer, model, None, val_dataloaders, datamodule, None)
        elif method == "predict":
            evaluation.run_predict(trainer, model, None, datamodule, False, None)
        else:
            evaluation.run_eval(trainer, method, model, None, None, False, datamodule)
    except Exception as error:  # noqa: BLE001 - decided below, together with the other ranks
        if trials.is_oom_error(error):
            code = 1
        else:
            code, failure = 2, error
    finally:
        guard.close()
    for parameter in model.parameters():
        parameter.grad = None
    if code == 1:
        trials.free_memory()  # the failed step's tensors are unreachable once the exception is gone
    if trainer.world_size > 1:
        trials.reset_forward_buffer_sync(trainer)
        code = int(trainer.fabric.all_reduce(torch.tensor(float(code)), reduce_op="max").item())
    if code == 2:
        if failure is not None:
            raise failure
        raise UsageError(
            "Tuner.scale_batch_size: another rank failed in a trial with an error that is not out of memory "
            "(its traceback is in that rank's output). Fix: the error that rank reports."
        )
    return code == 0


def search(trial: Callable[[int], bool], mode: str, init_val: int, max_trials: int,
           samples: Callable[[], int | None]) -> tuple[int, list[int]]:
    """The size search; returns (largest size that fitted or 0, sizes tried in order)."""
    size, low, high = init_val, 0, None  # low: largest success; high: smallest failure
    tried: list[int] = []
    while len(tried) < max_trials:
        fitted = trial(size)
        tried.append(size)
        if fitted:
            limit = samples()
            if limit is not None and size >= limit:  # one batch holds every sample: larger ones are the same
                low = max(low, min(size, limit))
                break
            low = max(low, size)
            if high is None:
                size = size * 2 if limit is None else min(size * 2, limit)
                continue
        else:
            high = size if high is None else min(high, size)
            if size == 1:
                break
            if low == 0:  # nothing fitted yet: halve (both modes)
                size = size // 2
                continue
        if mode == "power" or high - low <= 1:  # type: ignore[operator]
            break
        size = (low + high) // 2  # type: ignore[operator]
    return low, tried


def _samples_per_rank(trainer: Trainer, method: str) -> int | None:
    """How many samples this rank's loader of the last trial holds (its sampler's length), if known."""
    loaders = {"fit": [trainer.train_dataloader], "validate": trainer.val_dataloaders, "test": trainer.test_dataloaders,
               "predict": trainer.predict_dataloaders}[method]
    try:
        return len(loaders[0].sampler)
    except (AttributeError, TypeError, IndexError):
        return None


def _put_back(holders: list[tuple[Any, str]], values: list[Any]) -> None:
    for holder, value in zip(holders, values):
        trials.set_holders([holder], None, value)
