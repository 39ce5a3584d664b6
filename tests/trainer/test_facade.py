"""The Trainer facade's public surface: a frozen TrainerConfig, one LoopState, Callback.monitors_metrics, tuner isolation."""

from __future__ import annotations

import dataclasses

import pytest
from trainer_helpers import Regressor, loader, quiet_trainer

from fabric_lite.trainer.callbacks import Callback
from fabric_lite.trainer.config import TrainerConfig
from fabric_lite.trainer.loops.state import LoopState
from fabric_lite.wrappers import FabricModule


def test_flags_resolve_once_into_a_frozen_config_that_the_trainer_reads(tmp_path):
    trainer = quiet_trainer(tmp_path, fast_dev_run=2, max_epochs=7)
    assert isinstance(trainer.config, TrainerConfig)
    # fast_dev_run overrides the limits, epochs and steps, once, in the config
    assert (trainer.max_epochs, trainer.max_steps, trainer.limit_val_batches) == (1, 2, 2)
    assert trainer.config.max_epochs == trainer.max_epochs
    with pytest.raises(dataclasses.FrozenInstanceError):
        trainer.config.max_epochs = 3  # type: ignore[misc]
    frozen = trainer.config
    trainer.limit_val_batches = 0  # assignable as on a Lightning Trainer: a new config, the old one untouched
    assert trainer.limit_val_batches == trainer.config.limit_val_batches == 0 and frozen.limit_val_batches == 2


def test_run_state_lives_in_one_loop_state_read_through_public_properties(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=3, val_check_interval=2)
    assert isinstance(trainer.state, LoopState) and trainer.model is None
    model = Regressor()
    trainer.fit(model, loader(), loader(8))
    assert isinstance(trainer.model, FabricModule) and trainer.model.module is model
    assert (trainer.current_epoch, trainer.global_step) == (trainer.state.current_epoch, trainer.state.global_step) == (2, 6)
    assert trainer.val_check_batch == 2 and trainer.num_training_batches == 3
    assert trainer.callback_metrics is trainer.state.callback_metrics and "val_loss" in trainer.callback_metrics
    trainer.should_stop = True  # writable, as in Lightning (callbacks set it)
    assert trainer.state.should_stop is True


class _EpochEndOrder(Callback):
    def __init__(self, log: list[str], name: str, monitors: bool) -> None:
        self.log, self.name, self.monitors_metrics = log, name, monitors

    def on_train_epoch_end(self, trainer, pl_module):
        self.log.append(self.name)


def test_a_callback_that_monitors_metrics_runs_after_the_modules_epoch_end(tmp_path):
    log: list[str] = []

    class LogsAtEpochEnd(Regressor):
        def on_train_epoch_end(self):
            log.append("module")

    callbacks = [_EpochEndOrder(log, "monitor", True), _EpochEndOrder(log, "plain", False)]
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=callbacks).fit(LogsAtEpochEnd(), loader())
    # the class attribute decides, not the class name: the monitoring callback runs after the module's hook
    assert log == ["plain", "module", "monitor"]


def test_tuner_trials_leave_config_callbacks_and_loop_state_as_they_were(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    model = Regressor()
    trainer.fit(model, loader())
    config, callbacks, step = trainer.config, trainer.callbacks, trainer.global_step
    trainer.tuner.lr_find(model, train_dataloaders=loader(), num_training=4, plot_path=False, update_attr=False)
    assert trainer.config is config and trainer.callbacks is callbacks
    assert trainer.global_step == step and not trainer.state.tuning and trainer.lightning_module is model
