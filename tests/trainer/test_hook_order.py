"""The order of every hook in a real fit / validate / test / predict, compared with Lightning's documented order."""

from __future__ import annotations

from typing import Any

import torch
from trainer_helpers import Regressor, loader, quiet_trainer

from fabric_lite.trainer.callbacks import Callback

CALLBACK_HOOKS = [
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_start",
    "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end", "on_test_start", "on_test_end",
    "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end", "on_predict_start",
    "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_batch_start",
    "on_predict_batch_end", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad", "on_save_checkpoint", "on_load_checkpoint",
]
MODULE_ONLY = [
    "configure_optimizers", "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
    "training_step", "validation_step", "test_step", "predict_step", "optimizer_zero_grad", "backward",
    "configure_gradient_clipping", "optimizer_step", "on_validation_model_eval", "on_validation_model_train",
    "on_test_model_eval", "on_test_model_train", "on_predict_model_eval", "prepare_data",
]


def recorder(log: list[str]) -> Callback:
    class Recorder(Callback):
        pass

    for name in CALLBACK_HOOKS:
        def hook(self, trainer, pl_module, *args, _name=name, **kwargs):
            log.append(f"Callback.{_name}")
        setattr(Recorder, name, hook)
    return Recorder()


class HookedModel(Regressor):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.calls = log

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self(batch[0])


for _name in CALLBACK_HOOKS + MODULE_ONLY:
    def _wrap(name: str) -> None:
        original = getattr(HookedModel, name, None)
        if original is None:
            return  # a callback-only hook (on_sanity_check_start, ...): the module has none

        def method(self, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return original(self, *args, **kwargs)

        setattr(HookedModel, name, method)

    _wrap(_name)


def batch_hooks(train: bool, first_in_window: bool = True, boundary: bool = True) -> list[str]:
    hooks = ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
             "Callback.on_train_batch_start", "on_train_batch_start"]
    if boundary:
        # Lightning calls optimizer_step(epoch, batch_idx, optimizer, optimizer_closure) at a step, and the closure
        # it runs makes the calls below (this recorder notes a call when it starts; Lightning's own test notes it
        # when it returns, which lists optimizer_step last)
        hooks += ["optimizer_step"]
    hooks += ["training_step"]
    if first_in_window:
        hooks += ["Callback.on_before_zero_grad", "on_before_zero_grad", "optimizer_zero_grad"]
    hooks += ["Callback.on_before_backward", "on_before_backward", "backward", "Callback.on_after_backward", "on_after_backward"]
    if boundary:
        hooks += ["Callback.on_before_optimizer_step", "on_before_optimizer_step", "configure_gradient_clipping"]
    hooks += ["Callback.on_train_batch_end", "on_train_batch_end"]
    return hooks


def eval_hooks(prefix: str, step: str, batches: int, model_train: bool = True) -> list[str]:
    hooks = [f"on_{prefix}_model_eval", f"Callback.on_{prefix}_start", f"on_{prefix}_start",
             f"Callback.on_{prefix}_epoch_start", f"on_{prefix}_epoch_start"]
    for _ in range(batches):
        hooks += ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
                  f"Callback.on_{prefix}_batch_start", f"on_{prefix}_batch_start", step,
                  f"Callback.on_{prefix}_batch_end", f"on_{prefix}_batch_end"]
    hooks += [f"Callback.on_{prefix}_epoch_end", f"on_{prefix}_epoch_end", f"Callback.on_{prefix}_end", f"on_{prefix}_end"]
    if model_train:
        hooks += [f"on_{prefix}_model_train"]
    return hooks


def test_fit_hook_order_matches_lightning(tmp_path):
    """Reference: Lightning's docs ("Hooks" pseudocode of LightningModule, callbacks before the module)."""
    log: list[str] = []
    model = HookedModel(log)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1,
                            callbacks=[recorder(log)], accumulate_grad_batches=2)
    trainer.fit(model, loader(16), loader(8))
    expected = [
        "prepare_data", "Callback.setup", "setup", "configure_optimizers",
        "Callback.on_fit_start", "on_fit_start",
        "Callback.on_sanity_check_start", *eval_hooks("validation", "validation_step", 1),
        "Callback.on_sanity_check_end",
        "Callback.on_train_start", "on_train_start",
        "Callback.on_train_epoch_start", "on_train_epoch_start",
        *batch_hooks(True, first_in_window=True, boundary=False),
        *batch_hooks(True, first_in_window=False, boundary=True),
        *eval_hooks("validation", "validation_step", 1),
        "Callback.on_train_epoch_end", "on_train_epoch_end",
        "Callback.on_train_end", "on_train_end", "Callback.on_fit_end", "on_fit_end",
        "Callback.teardown", "teardown",
    ]
    assert log == expected


def test_validate_test_predict_hook_order(tmp_path):
    log: list[str] = []
    model = HookedModel(log)
    trainer = quiet_trainer(tmp_path, callbacks=[recorder(log)])
    trainer.validate(model, loader(8), verbose=False)
    assert log == ["prepare_data", "Callback.setup", "setup", *eval_hooks("validation", "validation_step", 2),
                   "Callback.teardown", "teardown"]
    log.clear()
    trainer.test(model, loader(4), verbose=False)
    assert log == ["prepare_data", "Callback.setup", "setup", *eval_hooks("test", "test_step", 1),
                   "Callback.teardown", "teardown"]
    log.clear()
    predictions = trainer.predict(model, loader(8))
    batch = ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
             "Callback.on_predict_batch_start", "on_predict_batch_start", "predict_step",
             "Callback.on_predict_batch_end", "on_predict_batch_end"]
    assert log == ["prepare_data", "Callback.setup", "setup", "on_predict_model_eval", "Callback.on_predict_start", "on_predict_start",
                   "Callback.on_predict_epoch_start", "on_predict_epoch_start", *batch, *batch,
                   "Callback.on_predict_epoch_end", "on_predict_epoch_end", "Callback.on_predict_end", "on_predict_end",
                   "Callback.teardown", "teardown"]
    assert [p.shape for p in predictions] == [torch.Size([4, 1])] * 2


def test_checkpoint_hooks_run_on_save_and_load(tmp_path):
    log: list[str] = []
    model = HookedModel(log)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[recorder(log)])
    trainer.fit(model, loader(4))
    log.clear()
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    assert log == ["Callback.on_save_checkpoint", "on_save_checkpoint"]
    log.clear()
    trainer.fit(model, loader(4), ckpt_path=tmp_path / "a.ckpt")
    assert log.index("Callback.on_load_checkpoint") < log.index("on_load_checkpoint") < log.index("Callback.on_fit_start")
