"""The validation loop (also the test loop): ``validation_step`` / ``test_step`` over the loaders, epoch metrics,
and its two uses inside fit: the sanity check before training and validation at ``val_check_interval``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.trainer.combined_loader import batches
from fabric_lite.trainer.loops.hooks import call_hook, call_module, call_step, log_metrics, transfer_batch

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer


def run_sanity_check(trainer: Trainer) -> None:
    state = trainer.state
    if not state.val_dataloaders or trainer.num_sanity_val_steps == 0 or not any(state.num_val_batches):
        return
    steps = trainer.num_sanity_val_steps
    state.num_sanity_val_batches = [n if steps == -1 else min(n, steps) for n in state.num_val_batches]
    state.sanity_checking = True
    call_hook(trainer, "on_sanity_check_start")
    evaluation_loop(trainer, "validate", state.val_dataloaders, state.num_sanity_val_batches, log=False)
    call_hook(trainer, "on_sanity_check_end")
    state.sanity_checking = False
    # Sanity values must not decide anything (checkpoints, early stopping, schedulers).
    state.callback_metrics.clear()


def run_validation(trainer: Trainer) -> None:
    """Validation inside fit (at ``val_check_interval``); the loop is back in its training stage afterwards."""
    state = trainer.state
    evaluation_loop(trainer, "validate", state.val_dataloaders, state.num_val_batches, log=True)
    state.stage = "train"
    state.results.stage = "train"


def evaluation_loop(trainer: Trainer, stage: str, loaders: list[Any], limits: list[int | float], *, log: bool) -> list[dict[str, float]]:
    """Run ``validation_step`` or ``test_step`` over ``loaders``; returns one dict of epoch metrics per loader."""
    state = trainer.state
    results = state.results
    prefix = "validation" if stage == "validate" else "test"
    was_stage = state.stage
    state.stage = stage
    results.stage = stage
    results.reset(stage)
    was_training = state.lightning_module.training
    call_module(trainer, f"on_{prefix}_model_eval")
    call_hook(trainer, f"on_{prefix}_start")
    outputs: list[dict[str, float]] = []
    grad_context = torch.inference_mode if trainer.inference_mode else torch.no_grad
    call_hook(trainer, f"on_{prefix}_epoch_start")
    several = len(loaders) > 1
    for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
        extra = (dataloader_idx,) if several else ()
        # Several loaders: each one's metrics are kept apart as "<name>/dataloader_idx_<i>" (Lightning's names).
        results.suffix = f"/dataloader_idx_{dataloader_idx}" if several else ""
        with grad_context():
            for batch_idx, batch in enumerate(batches(loader)):
                if batch_idx >= limit:
                    break
                batch = transfer_batch(trainer, batch, dataloader_idx)
                results.batch = batch
                call_hook(trainer, f"on_{prefix}_batch_start", batch, batch_idx, *extra)
                out = call_step(trainer, f"{prefix}_step", batch, batch_idx, *extra)
                call_hook(trainer, f"on_{prefix}_batch_end", out, batch, batch_idx, *extra)
                if not state.sanity_checking:
                    _log_eval_step(trainer, stage, dataloader_idx, log=log)
                    state.val_has_run = state.val_has_run or stage == "validate"
        results.batch = None
        if several:
            results.finish_loader()
    results.suffix = ""
    call_hook(trainer, f"on_{prefix}_epoch_end")
    logged, bar = results.epoch_values(stage=stage)
    for dataloader_idx in range(len(loaders)):
        tag = f"/dataloader_idx_{dataloader_idx}"
        outputs.append({k: v for k, v in logged.items() if not several or k.endswith(tag) or "/dataloader_idx_" not in k})
    if log and logged:
        log_metrics(trainer, {**logged, "epoch": state.current_epoch} if stage == "validate" else logged)
    if log:
        state.progress_bar_metrics.update(bar)
    results.reset(stage)
    call_hook(trainer, f"on_{prefix}_end")
    if was_training:
        call_module(trainer, f"on_{prefix}_model_train")
    state.stage = was_stage
    return outputs


def _log_eval_step(trainer: Trainer, stage: str, dataloader_idx: int, *, log: bool) -> None:
    """This evaluation batch's ``on_step`` values go to the loggers, as Lightning does: at a step that counts the
    batches of this loader run so far in this fit / validate / test call (not the global step), unsynced."""
    results = trainer.state.results
    key = (stage, dataloader_idx)
    step = results.eval_steps.get(key, 0)
    results.eval_steps[key] = step + 1
    logged = results.eval_step_values()
    if log and logged:
        log_metrics(trainer, logged, step=step)
