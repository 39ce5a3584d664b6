"""Callbacks users import from lightning.pytorch.callbacks: Timer, LearningRateFinder, BatchSizeFinder; the exports;
the fabric_lite logger's set-up (its default stderr output, "Seed set to N" on rank 0 only, is checked on two real
processes in test_progress.py::test_only_rank_zero_draws_logs_and_reports_each_rank_profiles)."""

from __future__ import annotations

import io
import logging
import time
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader
from trainer_helpers import Regressor, loader, quiet_trainer, regression_data

import fabric_lite.trainer.callbacks as callbacks
from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import Tuner
from fabric_lite.trainer.callbacks import BatchSizeFinder, LearningRateFinder, ModelCheckpoint, Timer


@pytest.fixture
def fabric_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("fabric_lite")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


class Slow(Regressor):
    def training_step(self, batch, batch_idx):
        time.sleep(0.02)
        return super().training_step(batch, batch_idx)


def test_lightning_callback_names_are_exported():
    for name in ("BatchSizeFinder", "LearningRateFinder", "LearningRateMonitor", "ModelSummary", "RichModelSummary",
                 "RichProgressBar", "TQDMProgressBar", "ProgressBar", "Timer", "ModelCheckpoint", "EarlyStopping",
                 "StochasticWeightAveraging", "Callback"):
        assert name in callbacks.__all__ and isinstance(getattr(callbacks, name), type), name
    from fabric_lite.trainer import seed_everything  # noqa: F401  (Lightning users import it from the trainer package)


def test_timer_stops_training_when_the_budget_is_spent(tmp_path, fabric_log):
    timer = Timer(duration={"seconds": 0.15})
    trainer = quiet_trainer(tmp_path, max_epochs=50, callbacks=[timer])
    trainer.fit(Slow(), loader(16, 4), loader(8, 4))
    assert 0 < trainer.global_step < 200 and trainer.current_epoch < 49  # stopped long before max_epochs
    assert 0.15 <= timer.time_elapsed("train") < 10 and timer.time_remaining("train") <= 0
    assert timer.time_elapsed("validate") > 0 and timer.start_time("validate") is not None
    assert "Time limit reached. Elapsed time is 0:00:00. Signaling Trainer to stop." in fabric_log.getvalue()
    trainer.test(Regressor(), loader(8, 4), verbose=False)
    assert timer.time_elapsed("test") > 0 and timer.end_time("test") >= timer.start_time("test")


def test_timer_epoch_interval_stops_at_an_epoch_end(tmp_path):
    timer = Timer(duration=timedelta(seconds=0.1), interval="epoch", verbose=False)
    trainer = quiet_trainer(tmp_path, max_epochs=50, callbacks=[timer])
    trainer.fit(Slow(), loader(16, 4))
    assert trainer.global_step % 4 == 0 and 4 <= trainer.global_step < 200


def test_timer_budget_survives_a_resume(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(tmp_path, max_epochs=50, callbacks=[Timer(duration={"seconds": 0.1}), checkpoint])
    trainer.fit(Slow(), loader(16, 4))
    stopped_at = trainer.global_step
    assert 0 < stopped_at < 200
    resumed = Timer(duration={"seconds": 0.1})
    trainer = quiet_trainer(tmp_path, max_epochs=50, callbacks=[resumed])
    trainer.fit(Slow(), loader(16, 4), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == stopped_at  # the spent budget came back with the checkpoint: no step more
    assert resumed.time_elapsed("train") >= 0.1
    fresh = Timer()
    fresh.load_state_dict({"time_elapsed": {"train": 0.6}})
    assert fresh.time_elapsed("train") == pytest.approx(0.6) and fresh.state_dict()["time_elapsed"]["train"] == pytest.approx(0.6)


def test_timer_arguments_are_checked():
    assert Timer(duration="01:02:03:04").duration == timedelta(days=1, hours=2, minutes=3, seconds=4)
    assert Timer().duration is None and Timer().time_remaining() is None
    with pytest.raises(ConfigurationError, match=r"Timer\(duration='12:00'\) is not a duration in the form 'DD:HH:MM:SS'"):
        Timer(duration="12:00")
    with pytest.raises(ConfigurationError, match=r"Timer\(duration=\{'hour': 1\}\) is not a set of timedelta arguments"):
        Timer(duration={"hour": 1})
    with pytest.raises(ConfigurationError, match=r"Timer\(duration=5\) is not a duration. Fix: pass 'DD:HH:MM:SS'"):
        Timer(duration=5)
    with pytest.raises(ConfigurationError, match=r"Timer\(interval='batch'\) is not a known interval. Choose one of: 'step', 'epoch'"):
        Timer(interval="batch")
    with pytest.raises(ConfigurationError, match=r"Timer.time_elapsed\(stage='training'\) is not a known stage"):
        Timer().time_elapsed("training")


def test_learning_rate_finder_tunes_then_trains_with_the_suggestion(tmp_path, fabric_log):
    finder = LearningRateFinder(min_lr=1e-4, max_lr=1.0, num_training_steps=20)
    model = Regressor()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[finder])
    trainer.fit(model, loader(32, 4))
    suggestion = finder.optimal_lr.suggestion()
    assert suggestion is not None and model.hparams.lr == suggestion
    assert trainer.optimizers[0].param_groups[0]["lr"] == suggestion  # the fit's optimizer was configured again
    assert trainer.global_step == 8  # one epoch of 8 batches: the 20 sweep steps do not count
    assert f"Learning rate set to {suggestion}" in fabric_log.getvalue()
    # the same sweep as the Tuner's on the same start
    reference = Tuner(quiet_trainer(tmp_path / "ref", max_epochs=1)).lr_find(
        Regressor(), loader(32, 4), min_lr=1e-4, max_lr=1.0, num_training=20, plot_path=False)
    assert reference.results["lr"] == finder.optimal_lr.results["lr"]
    assert reference.suggestion() == pytest.approx(suggestion)
    with pytest.raises(ConfigurationError, match=r"LearningRateFinder\(mode='cubic'\) is not a known mode. Choose one of: exponential, linear"):
        LearningRateFinder(mode="cubic")


class SizedRegressor(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 2

    def train_dataloader(self):
        return DataLoader(regression_data(32), batch_size=self.batch_size)


def test_batch_size_finder_trains_with_the_size_found(tmp_path, fabric_log):
    finder = BatchSizeFinder(mode="power", steps_per_trial=1)
    model = SizedRegressor()
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[finder])
    trainer.fit(model)
    # no size runs out of memory on this CPU: doubling stops when one batch holds all 32 samples
    assert finder.optimal_batch_size == model.batch_size == 32
    assert trainer.num_training_batches == 1 and trainer.global_step == 2  # the fit used the new loader
    lines = fabric_log.getvalue().splitlines()
    assert [line for line in lines if line.startswith("Batch size")] == [f"Batch size {n} succeeded" for n in (2, 4, 8, 16, 32)]
    assert "Finished batch size finder, will continue with full run using batch size 32 (mode 'power', tried: 2, 4, 8, 16, 32)" in lines
    with pytest.raises(ConfigurationError, match=r"BatchSizeFinder found no train_dataloader\(\) on the model or data module"):
        quiet_trainer(tmp_path, max_epochs=1, callbacks=[BatchSizeFinder()]).fit(Regressor(), loader(8, 4))
    with pytest.raises(ConfigurationError, match=r"BatchSizeFinder\(mode='linear'\) is not a known mode. Choose one of: power, binsearch"):
        BatchSizeFinder(mode="linear")


def test_logger_defers_to_an_application_that_configured_logging():
    from fabric_lite.utilities.console import configure_logger

    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s|%(levelname)s|%(message)s"))
    root.addHandler(handler)
    try:
        logger = configure_logger("fabric_lite.probe_configured")
        assert logger.level == logging.INFO and logger.handlers == [] and logger.propagate
        logger.info("Seed set to 3")
        assert "fabric_lite.probe_configured|INFO|Seed set to 3\n" in stream.getvalue()  # once, through the app's handler
        assert configure_logger("fabric_lite.probe_configured") is logger and logger.handlers == []
    finally:
        root.removeHandler(handler)


def test_learning_rate_monitor_names_param_groups_as_lightning(tmp_path):
    """Keys as Lightning writes them: lr-SGD/<group name>, lr-SGD/pg<i> for unnamed groups, -momentum, -1 for a repeat."""
    from fabric_lite.loggers import CSVLogger
    from fabric_lite.trainer.callbacks import LearningRateMonitor

    class Groups(Regressor):
        def configure_optimizers(self):
            return torch.optim.SGD([{"params": [self.layer.weight], "name": "weights"},
                                    {"params": [self.layer.bias], "lr": 0.01}], lr=0.1, momentum=0.9)

    monitor = LearningRateMonitor(log_momentum=True)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[monitor], logger=CSVLogger(tmp_path))
    trainer.fit(Groups(), loader(8, 4))
    assert monitor.lrs == {"lr-SGD/weights": [0.1], "lr-SGD/pg2": [0.01]}
    header = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"lr-SGD/weights", "lr-SGD/pg2", "lr-SGD/weights-momentum", "lr-SGD/pg2-momentum"} <= set(header)
