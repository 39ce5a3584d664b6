"""The fit loop: set-up and resume, sanity check, epochs of training batches with validation, epoch ends, preemption."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import checkpointing
from fabric_lite.trainer import preemption as preempt
from fabric_lite.trainer.combined_loader import batches
from fabric_lite.trainer.loops import setup
from fabric_lite.trainer.loops.validation import run_sanity_check, run_validation
from fabric_lite.trainer.loops.hooks import call_hook, call_step, collect_step, finalize_loggers, log_metrics, log_step, on_exception, transfer_batch
from fabric_lite.trainer.loops.optimization import automatic_step, ends_accumulation, update_schedulers
from fabric_lite.trainer.states import get_rng, set_rng
from fabric_lite.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fabric_lite.trainer.datamodule import LightningDataModule
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer


def run_fit(trainer: Trainer, model: LightningModule, train_dataloaders: Any, val_dataloaders: Any,
            datamodule: LightningDataModule | None, ckpt_path: Any) -> None:
    """``Trainer.fit`` in this process (the tuner's trials call it too, with ``state.tuning`` set)."""
    state = trainer.state
    if trainer.auto_scale_batch_size and not state.tuning:
        trainer.tune(model, train_dataloaders, val_dataloaders, datamodule)  # its trial fits run in here too
    setup.attach(trainer, model, datamodule, "fit")
    was_in_fit, state.in_fit = state.in_fit, True
    state.should_stop = False
    state.preempted = False
    state.val_has_run = False
    setup.merge_model_callbacks(trainer, model)
    setup.prepare_and_setup(trainer, "fit")
    setup.setup_model(trainer, model, with_optimizers=True)
    train_loader = train_dataloaders if train_dataloaders is not None else setup.source(trainer, "train_dataloader")
    if train_loader is None:
        raise ConfigurationError(
            "Trainer.fit(model) found no training data: no train_dataloaders, no datamodule, and no "
            "model.train_dataloader(). Fix: trainer.fit(model, train_loader) or trainer.fit(model, datamodule=dm)."
        )
    val_loaders = val_dataloaders if val_dataloaders is not None else setup.source(trainer, "val_dataloader")
    state.train_dataloader, state.train_loader = setup.setup_train_data(trainer, train_loader)
    state.val_dataloaders = setup.setup_eval_data(trainer, val_loaders)
    state.num_training_batches = setup.limited(state.train_loader, trainer.limit_train_batches, "limit_train_batches")
    state.num_val_batches = [setup.limited(d, trainer.limit_val_batches, "limit_val_batches") for d in state.val_dataloaders]
    state.val_check_batch = setup.compute_val_check_batch(trainer)
    state.current_epoch, state.global_step, state.total_batch_idx, state.phase = 0, 0, 0, "epoch_done"
    state.batches_that_stepped = 0
    state.resume = None
    state.preemption = preempt.plugin_of(trainer)
    if ckpt_path is None and state.preemption is not None:
        ckpt_path = preempt.auto_resume_path(trainer)  # a requeued job continues where it was stopped
    if ckpt_path is not None:
        checkpointing.restore(trainer, checkpointing.resolve_ckpt_path(trainer, ckpt_path, "fit"), training=True)
    hparams = _hparams_to_log(model, trainer.datamodule)
    for logger in trainer.loggers:
        if hparams:
            logger.log_hyperparams(hparams)
    try:
        call_hook(trainer, "on_fit_start")
        run_sanity_check(trainer)
        state.results.stage = "train"
        state.stage = "train"
        call_hook(trainer, "on_train_start")
        _fit_loop(trainer)
        state.stage = "train"
        if not state.preempted:  # a preempted fit is not finished: no on_train_end / on_fit_end (as in Lightning)
            call_hook(trainer, "on_train_end")
            call_hook(trainer, "on_fit_end")
        setup.teardown(trainer, "fit")
    except BaseException as error:
        on_exception(trainer, error)
        raise
    finally:
        state.in_fit = was_in_fit
    finalize_loggers(trainer, "aborted" if state.preempted else "success")
    state.stage = None
    if state.preempted:
        preempt.requeue(trainer)
    else:
        preempt.discard(trainer)


def _hparams_to_log(model: LightningModule, datamodule: LightningDataModule | None) -> dict[str, Any]:
    """The module's saved hyperparameters and the data module's, merged as Lightning logs them at fit start."""
    hparams = dict(model.hparams) if getattr(model, "log_hyperparams_at_fit", True) else {}
    if datamodule is None or not getattr(datamodule, "log_hyperparams_at_fit", True):
        return hparams
    data_hparams = dict(getattr(datamodule, "hparams", {}) or {})
    clashing = sorted(k for k in hparams.keys() & data_hparams.keys() if hparams[k] != data_hparams[k])
    if clashing:
        raise ConfigurationError(
            f"The LightningModule and the LightningDataModule both saved the hyperparameters {clashing} with different "
            f"values, so the logged hyperparameters would be ambiguous. Fix: rename them in one of the two, or pass "
            f"logger=False to save_hyperparameters() in one of them."
        )
    return {**hparams, **data_hparams}


def _can_stop(trainer: Trainer) -> bool:
    return (trainer.min_epochs is None or trainer.current_epoch >= trainer.min_epochs) and (
        trainer.min_steps is None or trainer.global_step >= trainer.min_steps)


def _done(trainer: Trainer) -> bool:
    state = trainer.state
    if trainer.max_steps != -1 and state.global_step >= trainer.max_steps:
        return True
    if trainer.max_epochs != -1 and state.current_epoch >= trainer.max_epochs:
        return True
    if state.should_stop:
        if _can_stop(trainer):
            return True
        rank_zero_warn(
            f"Trainer was asked to stop at epoch {state.current_epoch}, but min_epochs={trainer.min_epochs} / "
            f"min_steps={trainer.min_steps} are not reached yet: training goes on."
        )
        state.should_stop = False
    return False


def _fit_loop(trainer: Trainer) -> None:
    state = trainer.state
    resume, state.resume = state.resume, None
    if resume is not None and resume["phase"] in ("epoch_batches_done", "epoch_end_hooks_done"):
        set_rng(resume["rng"])
        _end_epoch(trainer, run_hooks=resume["phase"] == "epoch_batches_done", results_lost=True)
        resume = None
    while not state.preempted and not _done(trainer):
        _train_epoch(trainer, resume)
        resume = None


def _train_epoch(trainer: Trainer, resume: dict[str, Any] | None) -> None:
    state = trainer.state
    model = state.lightning_module
    assert model is not None
    state.stage = "train"
    state.results.stage = "train"
    state.results.reset("train")
    model.train()
    state.phase = "in_epoch"
    state.batch_idx = 0
    skip = done = 0
    num_batches = state.num_training_batches
    loader_continues = resume is not None and resume.get("loader_continues", False)
    if resume is not None and resume["phase"] in ("in_epoch", "batch_done"):
        done = resume["batches_done"]
        if not loader_continues and done < num_batches:  # no loader state: replay the epoch's draw, skip the trained
            skip = done
            set_rng(resume["epoch_rng"])
    state.epoch_rng = get_rng()
    call_hook(trainer, "on_train_epoch_start")
    # A stateful loader (fabric_lite's set-up dataloaders) continues its interrupted epoch by itself:
    # same order, the trained batches dropped at the index level, the random state put back.
    iterator = batches(state.train_loader)  # several loaders: one batch of each (CombinedLoader's mode)
    stop_epoch = False
    for _ in range(skip):  # resume mid-epoch: the same order, the batches already trained skipped
        next(iterator)
    if done and not loader_continues:
        set_rng(resume["rng"])  # type: ignore[index]
    if done:
        state.batches_done = done
        if resume["phase"] == "batch_done" and _should_validate(trainer, done - 1):  # type: ignore[index]
            run_validation(trainer)  # the checkpoint was written before this batch's validation
    batch_idx = done
    while batch_idx < num_batches:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        state.batch_idx = batch_idx
        is_last = batch_idx + 1 == num_batches
        batch = transfer_batch(trainer, batch, 0)
        state.results.batch = batch
        response = call_hook(trainer, "on_train_batch_start", batch, batch_idx)
        if response == -1:
            break
        if model.automatic_optimization:
            outputs = automatic_step(trainer, batch, batch_idx, is_last)
        else:
            outputs = call_step(trainer, "training_step", batch, batch_idx)
        outputs = _batch_end_outputs(outputs, model.automatic_optimization, trainer.accumulate_grad_batches)
        state.total_batch_idx += 1
        stepped = not model.automatic_optimization or ends_accumulation(trainer, batch_idx, is_last)
        state.batches_that_stepped += int(stepped)
        state.batches_done = batch_idx + 1
        if is_last:
            update_schedulers(trainer, "epoch", plateau=False)
        state.phase = "batch_done"  # a checkpoint written now resumes with this batch's validation still due
        collected = collect_step(trainer)  # the bar shows this step's values in on_train_batch_end
        call_hook(trainer, "on_train_batch_end", outputs, batch, batch_idx)
        log_step(trainer, collected, stepped=stepped)
        state.phase = "in_epoch"
        if _should_validate(trainer, batch_idx):
            run_validation(trainer)
        batch_idx += 1
        if trainer.max_steps != -1 and state.global_step >= trainer.max_steps:
            stop_epoch = True
        if state.should_stop and _can_stop(trainer):
            stop_epoch = True
        # After an optimizer step only: gradients accumulated for a later step are not in a checkpoint.
        if state.preemption is not None and (not model.automatic_optimization or batch_idx % trainer.accumulate_grad_batches == 0
                                             or is_last) and trainer.fabric.should_stop():
            preempt.save(trainer, epoch_finished=is_last or stop_epoch)
            state.results.batch = None
            return
        if stop_epoch:
            break
    state.results.batch = None
    state.phase = "epoch_batches_done"
    _end_epoch(trainer, run_hooks=True, results_lost=False)


def _end_epoch(trainer: Trainer, *, run_hooks: bool, results_lost: bool) -> None:
    state = trainer.state
    state.stage = "train"
    state.results.stage = "train"
    logged, bar = state.results.epoch_values(stage="train")
    if run_hooks:
        # epoch values visible to the hooks (EarlyStopping on train_loss, the progress bar)
        state.progress_bar_metrics.update(bar)
        # Lightning's order: callbacks that do not monitor metrics, the module, then the monitoring ones
        # (ModelCheckpoint, EarlyStopping), which see what the module logged in its on_train_epoch_end.
        monitoring = [c for c in trainer.callbacks if c.monitors_metrics]
        others = [c for c in trainer.callbacks if c not in monitoring]
        call_hook(trainer, "on_train_epoch_end", callbacks=others)
        logged, bar = state.results.epoch_values(stage="train")  # now with the module's epoch-end values
        state.phase = "epoch_end_hooks_done"
        call_hook(trainer, "on_train_epoch_end", callbacks=monitoring, module=False)
    if logged and not results_lost:
        log_metrics(trainer, {**logged, "epoch": state.current_epoch})
    state.progress_bar_metrics.update(bar)
    update_schedulers(trainer, "epoch", plateau=True)
    state.results.reset("train")
    state.current_epoch += 1
    state.phase = "epoch_done"


def _batch_end_outputs(outputs: Any, automatic: bool, accumulate: int) -> Any:
    """The step output as Lightning hands it to ``on_train_batch_end``: a dict with the detached ``loss``.

    A tensor becomes ``{"loss": tensor}``, a dict keeps its keys. Under automatic optimisation the loss is
    the one backpropagated: divided by ``accumulate_grad_batches``. None (a skipped batch) stays None;
    Lightning 2.6 passes ``{}`` there, but callbacks here (the LR finder) read None as "no loss".
    """
    if outputs is None:
        return None
    if isinstance(outputs, torch.Tensor):
        outputs = {"loss": outputs}
    elif not isinstance(outputs, Mapping):
        return outputs  # automatic_step refused it already; manual optimisation passes it on
    outputs = dict(outputs)
    loss = outputs.get("loss")
    if isinstance(loss, torch.Tensor):
        if automatic and accumulate > 1:
            loss = loss / accumulate
        outputs["loss"] = loss.detach().clone() if automatic else loss.detach()
    return outputs


def _should_validate(trainer: Trainer, batch_idx: int) -> bool:
    state = trainer.state
    if state.val_check_batch == float("inf"):
        return False
    if trainer.check_val_every_n_epoch is not None and (state.current_epoch + 1) % trainer.check_val_every_n_epoch != 0:
        return False
    current = state.total_batch_idx - 1 if trainer.check_val_every_n_epoch is None else batch_idx
    return (current + 1) % state.val_check_batch == 0
