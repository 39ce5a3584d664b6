"""Trainer checkpoints: what ``save_checkpoint`` writes (through ``fabric.save``) and how fit resumes from it.

A checkpoint holds the model, optimizers, schedulers, epoch and step, the loop's phase (mid-epoch,
validation due, epoch end), random states, the set-up training loader's position, and the callbacks'
and data module's states. Plain values only, so ``fabric.load`` reads it with ``weights_only=True``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fabric_lite.checkpoint import checkpoint_exists
from fabric_lite.errors import CheckpointError, UsageError
from fabric_lite.trainer.loops.hooks import call_hook
from fabric_lite.trainer.states import get_rng, is_plain, set_rng
from fabric_lite.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer


def save_checkpoint(trainer: Trainer, filepath: str | os.PathLike[str], weights_only: bool = False) -> None:
    """Write model, optimizers, schedulers, counters, RNG and callback states with ``fabric.save`` (atomic).

    Every process must call it (a collective). The tuner and resume use :meth:`restore_checkpoint`.
    """
    state = trainer.state
    if trainer.model is None:
        raise UsageError("trainer.save_checkpoint(path) was called before any run set a model up. Fix: call it after trainer.fit(...).")
    saved: dict[str, Any] = {"model": trainer.model}
    extra: dict[str, Any] = {
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "fabric_lite_trainer": 1,
    }
    if not weights_only:
        for index, optimizer in enumerate(trainer.optimizers):
            saved[f"optimizer_{index}"] = optimizer
        if state.in_fit and callable(getattr(trainer.train_dataloader, "state_dict", None)):
            saved["train_dataloader"] = trainer.train_dataloader  # its position, epoch and random state
        extra["lr_schedulers"] = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
        extra["loops"] = {
            "phase": state.phase,
            "batches_done": state.batches_done if state.phase in ("in_epoch", "batch_done") else 0,
            "total_batch_idx": state.total_batch_idx,
            "batches_that_stepped": state.batches_that_stepped,
            "loader_position": state.batches_done,  # batches the loader handed out in its last epoch
            "epoch_rng": state.epoch_rng,
            "rng": get_rng(),
        }
        extra["callbacks"] = {c.state_key: c.state_dict() for c in trainer.callbacks}
        if trainer.datamodule is not None:
            extra["datamodule"] = trainer.datamodule.state_dict()
    model = trainer.lightning_module
    if model is not None:
        extra["hyper_parameters"] = {k: v for k, v in dict(model.hparams).items() if is_plain(v)}
        extra["hparams_name"] = "kwargs"  # Lightning's key: the hyperparameters are __init__'s keyword arguments
    datamodule = trainer.datamodule
    if datamodule is not None and getattr(datamodule, "hparams", None):
        extra["datamodule_hyper_parameters"] = {k: v for k, v in dict(datamodule.hparams).items() if is_plain(v)}
        extra["datamodule_hparams_name"] = "kwargs"
    if model is not None:
        call_hook(trainer, "on_save_checkpoint", extra)
    trainer.fabric.save(filepath, {**saved, **extra})


def _modified(path: str) -> float:
    """Modification time of a local checkpoint, or of one at an fsspec URL (0 when the store does not say)."""
    if "://" not in path:
        return os.path.getmtime(path)
    import fsspec

    fs, inner = fsspec.core.url_to_fs(path)
    try:
        stamp = fs.modified(inner)
    except (NotImplementedError, OSError):
        return 0.0
    return stamp.timestamp()


def resolve_ckpt_path(trainer: Trainer, ckpt_path: Any, stage: str) -> str:
    if ckpt_path in ("best", "last"):
        callback = trainer.checkpoint_callback
        path = "" if callback is None else callback.best_model_path if ckpt_path == "best" else callback.last_model_path
        if ckpt_path == "last":
            # A preempted fit's checkpoint counts as a "last" one (Lightning's hpc checkpoint does too): the newer wins.
            found = [p for p in (path, trainer.preemption_ckpt_path) if p and checkpoint_exists(p)]
            path = max(found, key=_modified) if found else path
        if not path:
            raise CheckpointError(
                f"Trainer.{stage}(ckpt_path={ckpt_path!r}) has no {ckpt_path} checkpoint to load: "
                + ("no ModelCheckpoint callback is configured" if callback is None else
                   f"ModelCheckpoint saved none yet{' (save_last is off)' if ckpt_path == 'last' else ''}")
                + (f", and there is no preemption checkpoint {trainer.preemption_ckpt_path}" if ckpt_path == "last" else "")
                + ". Fix: fit with ModelCheckpoint(" + ("save_last=True" if ckpt_path == "last" else "monitor=...") +
                ") first, pass a path, or ckpt_path=None to use the weights in memory."
            )
        return path
    path = os.fspath(ckpt_path)
    if not checkpoint_exists(path):  # a local path or an fsspec URL (ModelCheckpoint(dirpath="s3://..."))
        raise CheckpointError(
            f"Trainer.{stage}(ckpt_path={path!r}): no such file or folder. Fix: pass the path of a checkpoint, 'best' or 'last'."
        )
    return path


def restore(trainer: Trainer, path: str, *, training: bool) -> None:
    wanted: dict[str, Any] = {"model": trainer.model}
    if training:
        for index, optimizer in enumerate(trainer.optimizers):
            wanted[f"optimizer_{index}"] = optimizer
    remainder = trainer.fabric.load(path, wanted, strict=training)
    model = trainer.lightning_module
    for callback in trainer.callbacks:
        callback.on_load_checkpoint(trainer, model, remainder)
    if model is not None:
        model.on_load_checkpoint(remainder)
    if not training:
        return
    if "fabric_lite_trainer" not in remainder:
        raise CheckpointError(
            f"Trainer.fit(ckpt_path={path!r}) needs a checkpoint written by the Trainer (trainer.save_checkpoint or "
            f"ModelCheckpoint), but this one has no Trainer state. Fix: load its weights with fabric.load and fit from scratch."
        )
    schedulers = remainder.get("lr_schedulers", [])
    for config, scheduler_state in zip(trainer.lr_scheduler_configs, schedulers):
        config.scheduler.load_state_dict(scheduler_state)
    callback_states = remainder.get("callbacks", {})
    for callback in trainer.callbacks:
        if callback.state_key in callback_states:
            callback.load_state_dict(callback_states[callback.state_key])
    if trainer.datamodule is not None and "datamodule" in remainder:
        trainer.datamodule.load_state_dict(remainder["datamodule"])
    state = trainer.state
    state.current_epoch = int(remainder["epoch"])
    state.global_step = int(remainder["global_step"])
    loops = remainder.get("loops") or {}
    state.total_batch_idx = int(loops.get("total_batch_idx", 0))
    # older checkpoints lack it: the global step is the same count under automatic optimisation (Lightning's default too)
    state.batches_that_stepped = int(loops.get("batches_that_stepped", state.global_step))
    phase = loops.get("phase", "epoch_done")
    if phase in ("in_epoch", "batch_done") and loops.get("batches_done", 0) == 0:
        phase = "epoch_done"
    done = int(loops.get("batches_done", 0))
    loader_state = remainder.get("train_dataloader")
    loader_continues = False
    if phase in ("in_epoch", "batch_done") and 0 < done < trainer.num_training_batches and loader_state is not None \
            and callable(getattr(trainer.train_dataloader, "load_state_dict", None)):
        trainer.train_dataloader.load_state_dict(loader_state)  # the next iter continues the epoch exactly
        loader_continues = True
    elif loader_state is not None and callable(getattr(trainer.train_dataloader, "load_state_dict", None)) \
            and loops.get("loader_position") == _length(trainer.train_dataloader):
        # The loader's last epoch was complete: take its epoch count (a distributed sampler's shuffle follows it)
        # and let it see that nothing is left of that epoch, so the next iteration starts the next one.
        trainer.train_dataloader.load_state_dict(loader_state)
        for _ in trainer.train_dataloader:
            break
    elif phase in ("in_epoch", "batch_done") and 0 < done < trainer.num_training_batches and trainer.world_size > 1:
        rank_zero_warn(
            "Resuming mid-epoch with a loader that keeps no state: the batches already trained are skipped, but a "
            "distributed sampler restarts its shuffling epochs from 0, so the order may differ from the original run."
        )
    state.resume = None if phase == "epoch_done" else {
        "phase": phase, "batches_done": done, "loader_continues": loader_continues,
        "epoch_rng": loops.get("epoch_rng"), "rng": loops.get("rng"),
    }
    if phase == "epoch_done" and loops.get("rng") is not None:
        set_rng(loops["rng"])


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
