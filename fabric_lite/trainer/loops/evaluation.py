"""The evaluation entry points: ``Trainer.validate`` / ``Trainer.test`` (through the validation loop) and ``Trainer.predict``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import checkpointing
from fabric_lite.trainer.combined_loader import batches
from fabric_lite.trainer.datamodule import LightningDataModule
from fabric_lite.trainer.loops import setup
from fabric_lite.trainer.loops.hooks import call_hook, call_module, call_step, finalize_loggers, on_exception, transfer_batch
from fabric_lite.trainer.loops.validation import evaluation_loop

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer


def _prepare(trainer: Trainer, stage: str, model: LightningModule | None, dataloaders: Any,
             datamodule: LightningDataModule | None, ckpt_path: Any, hook: str) -> list[Any]:
    """Attach, set up and restore for an evaluation call; returns the set-up loaders."""
    model = setup.model_for(trainer, stage, model)
    if stage != "predict":
        setup.check_data(stage, dataloaders, datamodule)
    if isinstance(dataloaders, LightningDataModule):
        datamodule, dataloaders = dataloaders, None
    if stage == "predict":
        setup.check_data(stage, dataloaders, datamodule)
    setup.attach(trainer, model, datamodule, stage)
    setup.prepare_and_setup(trainer, stage)
    setup.setup_model(trainer, model, with_optimizers=False)
    if ckpt_path is not None:
        checkpointing.restore(trainer, checkpointing.resolve_ckpt_path(trainer, ckpt_path, stage), training=False)
    loaders = dataloaders if dataloaders is not None else setup.source(trainer, hook)
    if loaders is None:
        raise ConfigurationError(
            f"Trainer.{stage}(model) found no data: no dataloaders, no datamodule, no model.{hook}(). "
            f"Fix: trainer.{stage}(model, dataloaders=loader) or datamodule=dm."
        )
    return setup.setup_eval_data(trainer, loaders)


def run_eval(trainer: Trainer, stage: str, model: LightningModule | None, dataloaders: Any, ckpt_path: Any, verbose: bool,
             datamodule: LightningDataModule | None) -> list[dict[str, float]]:
    """``Trainer.validate`` / ``Trainer.test`` in this process."""
    state = trainer.state
    wrapped = _prepare(trainer, stage, model, dataloaders, datamodule, ckpt_path,
                       "val_dataloader" if stage == "validate" else "test_dataloader")
    limit, flag = ((trainer.limit_val_batches, "limit_val_batches") if stage == "validate"
                   else (trainer.limit_test_batches, "limit_test_batches"))
    counts = [setup.limited(d, limit, flag) for d in wrapped]
    if stage == "validate":
        state.val_dataloaders, state.num_val_batches = wrapped, counts
    else:
        state.test_dataloaders, state.num_test_batches = wrapped, counts
    try:
        results = evaluation_loop(trainer, stage, wrapped, counts, log=True)
        setup.teardown(trainer, stage)
    except BaseException as error:
        on_exception(trainer, error)
        raise
    if verbose and trainer.is_global_zero:
        for index, metrics in enumerate(results):
            shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
            print(f"{stage} results (dataloader {index}): {shown or 'nothing logged'}")
    finalize_loggers(trainer, "success")
    state.stage = None
    return results


def run_predict(trainer: Trainer, model: LightningModule | None, dataloaders: Any, datamodule: LightningDataModule | None,
                return_predictions: bool, ckpt_path: Any) -> list[Any] | None:
    """``Trainer.predict`` in this process: this rank's outputs (a list per dataloader if several)."""
    state = trainer.state
    wrapped = _prepare(trainer, "predict", model, dataloaders, datamodule, ckpt_path, "predict_dataloader")
    state.predict_dataloaders = wrapped
    state.num_predict_batches = [setup.limited(d, trainer.limit_predict_batches, "limit_predict_batches") for d in wrapped]
    several = len(wrapped) > 1
    all_predictions: list[list[Any]] = []
    grad_context = torch.inference_mode if trainer.inference_mode else torch.no_grad
    try:
        call_module(trainer, "on_predict_model_eval")
        call_hook(trainer, "on_predict_start")
        call_hook(trainer, "on_predict_epoch_start")
        for dataloader_idx, (loader, limit) in enumerate(zip(wrapped, state.num_predict_batches)):
            extra = (dataloader_idx,) if several else ()
            predictions: list[Any] = []
            with grad_context():
                for batch_idx, batch in enumerate(batches(loader)):
                    if batch_idx >= limit:
                        break
                    batch = transfer_batch(trainer, batch, dataloader_idx)
                    call_hook(trainer, "on_predict_batch_start", batch, batch_idx, *extra)
                    out = call_step(trainer, "predict_step", batch, batch_idx, *extra)
                    call_hook(trainer, "on_predict_batch_end", out, batch, batch_idx, *extra)
                    if return_predictions:
                        predictions.append(out)
            all_predictions.append(predictions)
        call_hook(trainer, "on_predict_epoch_end")
        call_hook(trainer, "on_predict_end")
        setup.teardown(trainer, "predict")
    except BaseException as error:
        on_exception(trainer, error)
        raise
    state.stage = None
    if not return_predictions:
        return None
    return all_predictions[0] if not several else all_predictions

