"""Every Trainer flag on a real tiny run: what it changes is measured (batches run, gradients, LR, files), plus errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from trainer_helpers import Counter, Regressor, loader, quiet_trainer

from fabric_lite.errors import ConfigurationError, UsageError
from fabric_lite.loggers import CSVLogger
from fabric_lite.trainer import Trainer
from fabric_lite.trainer.callbacks import (
    Callback,
    EarlyStopping,
    GradNormMonitor,
    ModelCheckpoint,
    ProgressBar,
    StochasticWeightAveraging,
)


class GradRecorder(Callback):
    def __init__(self) -> None:
        self.grads: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append(torch.cat([p.grad.flatten().clone() for p in pl_module.parameters()]))


class ClipRecorder(Regressor):
    """Records the gradient after clipping (right before the step) and its norm before."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.after: list[torch.Tensor] = []
        self.before: list[float] = []

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.before.append(float(torch.cat([p.grad.flatten() for p in self.parameters()]).norm()))
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.after.append(torch.cat([p.grad.flatten().clone() for p in self.parameters()]))


def test_accumulate_4_gives_the_gradient_of_a_4x_batch(tmp_path):
    small, big = GradRecorder(), GradRecorder()
    quiet_trainer(tmp_path, max_steps=1, accumulate_grad_batches=4, callbacks=[small]).fit(Regressor(), loader(16, 4))
    quiet_trainer(tmp_path, max_steps=1, callbacks=[big]).fit(Regressor(), loader(16, 16))
    assert len(small.grads) == len(big.grads) == 1
    torch.testing.assert_close(small.grads[0], big.grads[0], rtol=1e-5, atol=1e-6)


def test_accumulation_steps_once_per_window_and_at_the_epoch_end(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=2, accumulate_grad_batches=3)
    trainer.fit(Regressor(), loader(20, 4))  # 5 batches: windows of 3 and 2 -> 2 steps per epoch
    assert trainer.global_step == 4


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_bounds_the_gradient(tmp_path, algorithm):
    model = ClipRecorder(lr=0.001)
    quiet_trainer(tmp_path, max_steps=3, gradient_clip_val=0.5, gradient_clip_algorithm=algorithm).fit(model, loader(12, 4))
    assert min(model.before) > 0.5  # clipping really had work to do
    for grad in model.after:
        if algorithm == "norm":
            assert grad.norm() <= 0.5 + 1e-5
        else:
            assert grad.abs().max() <= 0.5 + 1e-7


def test_max_and_min_epochs_and_steps(tmp_path):
    counter = Counter()
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[counter])
    trainer.fit(Regressor(), loader(16, 4))
    assert (trainer.current_epoch, trainer.global_step, counter.train_batches) == (3, 12, 12)
    trainer = quiet_trainer(tmp_path, max_steps=6, max_epochs=10)
    trainer.fit(Regressor(), loader(16, 4))
    assert (trainer.global_step, trainer.current_epoch) == (6, 2)  # stops mid-epoch 1 (epoch counter then advances)

    class StopAtOnce(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    trainer = quiet_trainer(tmp_path, max_epochs=10, min_epochs=3, callbacks=[StopAtOnce()])
    with pytest.warns(UserWarning, match="min_epochs=3"):
        trainer.fit(Regressor(), loader(8, 4))
    assert trainer.current_epoch == 3
    trainer = quiet_trainer(tmp_path, max_epochs=10, min_steps=5, callbacks=[StopAtOnce()])
    with pytest.warns(UserWarning, match="min_steps=5 are not reached yet"):
        trainer.fit(Regressor(), loader(8, 4))
    assert trainer.global_step == 6  # 2 per epoch: the first epoch end at or past 5 steps


@pytest.mark.parametrize(
    ("flags", "val_runs", "val_batches"),
    [
        ({"val_check_interval": 0.5}, 4, 8),  # twice per epoch, 2 epochs
        ({"val_check_interval": 2}, 4, 8),  # every 2 of 4 batches
        ({"check_val_every_n_epoch": 2, "max_epochs": 4}, 2, 4),
        ({"check_val_every_n_epoch": None, "val_check_interval": 3, "max_epochs": 3}, 4, 8),  # 12 batches: 3, 6, 9, 12
        ({"limit_val_batches": 1}, 2, 2),
        ({"limit_val_batches": 0.5}, 2, 2),
        ({"limit_val_batches": 0}, 0, 0),
    ],
)
def test_validation_scheduling_and_limits(tmp_path, flags, val_runs, val_batches):
    counter = Counter()
    flags = {"max_epochs": 2, **flags}
    quiet_trainer(tmp_path, callbacks=[counter], **flags).fit(Regressor(), loader(16, 4), loader(8, 4))
    assert (counter.val_runs, counter.val_batches) == (val_runs, val_batches)


@pytest.mark.parametrize(("steps", "expected"), [(0, 0), (2, 2), (-1, 3), (None, 2)])
def test_num_sanity_val_steps(tmp_path, steps, expected):
    counter = Counter()
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1, num_sanity_val_steps=steps, callbacks=[counter]).fit(
        Regressor(), loader(4, 4), loader(12, 4))
    assert counter.sanity_batches == expected


@pytest.mark.parametrize(("limit", "expected"), [(0.5, 4), (3, 3), (1.0, 8), (0.01, 1)])
def test_limit_train_test_predict_batches(tmp_path, limit, expected):
    counter = Counter()
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=limit, limit_test_batches=limit,
                            limit_predict_batches=limit, callbacks=[counter])
    model = Regressor()
    trainer.fit(model, loader(32, 4))
    trainer.test(model, loader(32, 4), verbose=False)
    predictions = trainer.predict(model, loader(32, 4))
    assert (counter.train_batches, counter.test_batches, counter.predict_batches, len(predictions)) == (expected,) * 4


def test_train_percent_check_is_limit_train_batches(tmp_path):
    counter = Counter()
    with pytest.warns(DeprecationWarning, match="train_percent_check=...\\) is an older spelling: use limit_train_batches"):
        trainer = quiet_trainer(tmp_path, max_epochs=1, train_percent_check=0.25, callbacks=[counter])
    trainer.fit(Regressor(), loader(32, 4))
    assert counter.train_batches == 2


@pytest.mark.parametrize(("value", "batches"), [(True, 1), (3, 3)])
def test_fast_dev_run(tmp_path, value, batches):
    counter = Counter()
    trainer = Trainer(accelerator="cpu", default_root_dir=str(tmp_path), fast_dev_run=value, callbacks=[counter],
                      enable_progress_bar=False, max_epochs=5)
    model = Regressor()
    trainer.fit(model, loader(32, 4), loader(32, 4))
    trainer.test(model, loader(32, 4), verbose=False)
    assert (counter.train_batches, counter.val_batches, counter.sanity_batches, counter.test_batches) == (batches, batches, 0, batches)
    assert trainer.current_epoch == 1 and not trainer.loggers
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))


def test_overfit_batches_repeats_the_same_unshuffled_batches(tmp_path):
    seen: list[list[float]] = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[0][:, 0].tolist())

    counter = Counter()
    with pytest.warns(UserWarning, match="turns shuffling of the training data off"):
        quiet_trainer(tmp_path, max_epochs=2, overfit_batches=2, callbacks=[Record(), counter]).fit(
            Regressor(), loader(32, 4, shuffle=True), loader(32, 4))
    assert len(seen) == 4 and seen[:2] == seen[2:]
    assert seen[0] == [loader(32, 4).dataset[i][0][0].item() for i in range(4)]  # the first batches, in order
    assert counter.val_batches == 4  # limit_val_batches follows overfit_batches


def test_log_every_n_steps_and_the_csv_logger(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=3, logger=logger)
    # 6 steps: the 3rd and 6th batches are logged, at Lightning's steps (the batches that stepped before each): 2 and 5
    trainer.fit(Regressor(), loader(24, 4))
    rows = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    step_rows = [r for r in rows[1:] if r.split(",")[header.index("train_loss_step")]]
    assert [int(r.split(",")[0]) for r in step_rows] == [2, 5]
    epoch_rows = [r for r in rows[1:] if r.split(",")[header.index("train_loss_epoch")]]
    assert [int(r.split(",")[0]) for r in epoch_rows] == [5]  # the epoch's values at its last batch's step
    assert (tmp_path / "run" / "version_0" / "hparams.json").exists() or (tmp_path / "run" / "version_0" / "hparams.yaml").exists()


def test_tensorboard_logger_and_default_logger(tmp_path):
    pytest.importorskip("tensorboardX")
    from fabric_lite.loggers import TensorBoardLogger

    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=TensorBoardLogger(tmp_path / "tb"))
    trainer.fit(Regressor(), loader(8, 4))
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))
    trainer = quiet_trainer(tmp_path / "default", max_epochs=1, logger=True)
    trainer.fit(Regressor(), loader(8, 4))
    assert isinstance(trainer.logger, TensorBoardLogger)  # the default when TensorBoard can be written, as in Lightning
    assert list((tmp_path / "default" / "lightning_logs" / "version_0").glob("events.out.tfevents*"))
    assert trainer.log_dir == str(tmp_path / "default" / "lightning_logs" / "version_0")


def test_checkpointing_and_progress_bar_switches(tmp_path, capsys):
    trainer = Trainer(accelerator="cpu", default_root_dir=str(tmp_path), max_epochs=1, logger=False,
                      callbacks=[ProgressBar(plain=True)])
    trainer.fit(Regressor(), loader(8, 4))
    assert [p.name for p in tmp_path.rglob("*.ckpt")] == ["epoch=0-step=2.ckpt"]  # the default ModelCheckpoint
    assert (tmp_path / "checkpoints" / "epoch=0-step=2.ckpt").exists()  # default_root_dir without a logger
    assert "Epoch 0: 2 batches, step 2  train_loss_step" in capsys.readouterr().out
    trainer = Trainer(accelerator="cpu", default_root_dir=str(tmp_path / "off"), max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(Regressor(), loader(8, 4))
    assert not (tmp_path / "off").exists() and not capsys.readouterr().out
    assert not any(isinstance(c, (ModelCheckpoint, ProgressBar)) for c in trainer.callbacks)


def test_deterministic_and_benchmark(tmp_path):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    try:
        quiet_trainer(tmp_path, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        quiet_trainer(tmp_path, deterministic="warn")
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        quiet_trainer(tmp_path, deterministic=False, benchmark=True)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
        torch.backends.cudnn.deterministic = False


def test_fabric_arguments_reach_fabric(tmp_path):
    dtypes: list[torch.dtype] = []

    class Probe(Regressor):
        def training_step(self, batch, batch_idx):
            dtypes.append(self(batch[0]).dtype)
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_steps=1, precision="bf16-mixed", strategy="single_device", num_nodes=1)
    trainer.fit(Probe(), loader(4, 4))
    assert dtypes == [torch.bfloat16]
    assert (trainer.fabric.plan.accelerator, trainer.fabric.plan.strategy, trainer.fabric.plan.precision) == (
        "cpu", "single_device", "bf16-mixed")


# ------------------------------------------------------------------------------ older spellings
def test_lr_scheduler_milestones_cut_the_lr_by_10_at_the_listed_epochs(tmp_path):
    lrs: list[float] = []

    class LR(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            pass

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    with pytest.warns(DeprecationWarning, match="lr_scheduler_milestones"):
        trainer = quiet_trainer(tmp_path, max_epochs=5, lr_scheduler_milestones="1, 3", callbacks=[LR()])
    trainer.fit(Regressor(lr=0.5), loader(4, 4))
    assert lrs == pytest.approx([0.5, 0.05, 0.05, 0.005, 0.005])


def test_epoch_aliases_early_stop_and_gradient_clip(tmp_path):
    with pytest.warns(DeprecationWarning) as record:
        trainer = quiet_trainer(tmp_path, min_nb_epochs=2, max_nb_epochs=3, gradient_clip=0.25, enable_early_stop=False,
                                callbacks=[EarlyStopping(monitor="val_loss")])
    assert {str(w.message).split("(")[1].split("=")[0] for w in record} >= {"min_nb_epochs", "max_nb_epochs", "gradient_clip", "enable_early_stop"}
    assert (trainer.min_epochs, trainer.max_epochs, trainer.gradient_clip_val) == (2, 3, 0.25)
    assert trainer.early_stopping_callback is None
    trainer.fit(Regressor(), loader(8, 4))
    assert trainer.current_epoch == 3
    with pytest.warns(DeprecationWarning):
        trainer = quiet_trainer(tmp_path, enable_early_stop=True, gradient_clip=0)
    assert trainer.early_stopping_callback.monitor == "val_loss" and trainer.gradient_clip_val is None
    twice = r"Trainer\(max_nb_epochs=3, max_epochs=5\) gives the same setting twice"
    with pytest.raises(ConfigurationError, match=twice), pytest.warns(DeprecationWarning):
        quiet_trainer(tmp_path, max_nb_epochs=3, max_epochs=5)


def test_track_grad_norm_logs_the_p_norm_of_the_gradients(tmp_path):
    with pytest.warns(DeprecationWarning, match="track_grad_norm"):
        trainer = quiet_trainer(tmp_path, max_steps=2, track_grad_norm=2, log_every_n_steps=1,
                                callbacks=[recorder := GradRecorder()])
    trainer.fit(Regressor(), loader(8, 4))
    (monitor,) = [c for c in trainer.callbacks if isinstance(c, GradNormMonitor)]
    for logged, grads in zip(monitor.history, recorder.grads):
        assert logged["grad_2.0_norm_total"] == pytest.approx(float(grads.norm()), rel=1e-5)
    assert set(monitor.history[0]) == {"grad_2.0_norm/layer.weight", "grad_2.0_norm/layer.bias", "grad_2.0_norm_total"}
    assert trainer.logged_metrics["grad_2.0_norm_total"] == pytest.approx(monitor.history[-1]["grad_2.0_norm_total"])


def test_gradient_norms_are_unscaled_under_16_mixed(tmp_path):
    norms = {}
    for precision in ("32-true", "16-mixed"):
        monitor = GradNormMonitor(norm_type=2)
        # lr=0: the same gradient every step; the GradScaler skips its first steps (inf) while it backs off
        quiet_trainer(tmp_path, max_steps=12, precision=precision, callbacks=[monitor]).fit(Regressor(lr=0.0), loader(8, 8))
        norms[precision] = [h["grad_2.0_norm_total"] for h in monitor.history]
    finite = [n for n in norms["16-mixed"] if math.isfinite(n)]
    assert finite, norms
    for norm in finite:  # not multiplied by the loss scale
        assert norm == pytest.approx(norms["32-true"][0], rel=2e-2)


def test_log_gpu_memory_stochastic_weight_avg_and_auto_scale_batch_size(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = quiet_trainer(tmp_path, log_gpu_memory="min_max", stochastic_weight_avg=True, auto_scale_batch_size="binsearch")
    messages = [str(w.message) for w in caught]
    assert any("log_gpu_memory" in m and "older spelling" in m for m in messages)
    if not torch.cuda.is_available():
        assert any("no CUDA device is available, so no GPU memory is logged" in m for m in messages)
    assert any(isinstance(c, StochasticWeightAveraging) for c in trainer.callbacks)
    assert trainer.auto_scale_batch_size == "binsearch"
    if trainer.tuner is None:
        with pytest.raises(UsageError, match=r"auto_scale_batch_size='binsearch'\) / trainer.tune\(\) needs the tuner"):
            trainer.fit(Regressor(), loader(8, 4))


def test_gpus_and_auto_select_gpus(tmp_path):
    with pytest.raises(ConfigurationError, match=r"auto_select_gpus=True\) needs a number of GPUs"), pytest.warns(DeprecationWarning):
        quiet_trainer(tmp_path, auto_select_gpus=True, accelerator="auto")
    twice = r"Trainer\(gpus=2, accelerator='cpu', devices=1\) asks for the hardware twice"
    with pytest.raises(ConfigurationError, match=twice), pytest.warns(DeprecationWarning):
        quiet_trainer(tmp_path, gpus=2)
    with pytest.raises(ConfigurationError, match="is not a GPU count"), pytest.warns(DeprecationWarning):
        quiet_trainer(tmp_path, gpus=-2, accelerator="auto", devices="auto")
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="(?i)cuda"), pytest.warns(DeprecationWarning):
            Trainer(gpus=1, logger=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_gpus_select_cuda_devices(tmp_path):
    with pytest.warns(DeprecationWarning):
        trainer = Trainer(gpus=1, auto_select_gpus=True, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    assert trainer.fabric.device.type == "cuda"


# ------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"max_epochs": -2}, r"Trainer\(max_epochs=-2\) is not an int >= -1. Fix: pass an int such as max_epochs=10"),
        ({"accumulate_grad_batches": 0}, r"Trainer\(accumulate_grad_batches=0\) is not an int >= 1"),
        ({"gradient_clip_algorithm": "l2"}, r"Trainer\(gradient_clip_algorithm='l2'\) is not a known gradient_clip_algorithm. Choose one of: 'norm', 'value'"),
        ({"gradient_clip_val": -1}, r"Trainer\(gradient_clip_val=-1\) is not a number >= 0"),
        ({"val_check_interval": 1.5}, r"val_check_interval=1.5\) is neither a fraction"),
        ({"limit_train_batches": 1.5}, r"limit_train_batches=1.5\) is a float outside \[0.0, 1.0\]"),
        ({"limit_val_batches": -1}, r"limit_val_batches=-1\) is a negative number of batches"),
        ({"overfit_batches": "all"}, r"overfit_batches='all'\) is neither a fraction nor a count"),
        ({"num_sanity_val_steps": -2}, r"num_sanity_val_steps=-2\) is not an int >= -1"),
        ({"fast_dev_run": -1}, r"fast_dev_run=-1\) is neither a bool nor a number of batches"),
        ({"deterministic": "yes"}, r"deterministic='yes'\) is not a known deterministic. Choose one of: True, False, 'warn'"),
        ({"log_every_n_steps": 0}, r"log_every_n_steps=0\) is not an int >= 1"),
        ({"callbacks": [object()]}, r"holds an object that is not a Callback"),
        ({"max_epoch": 3}, r"unknown flag\(s\): 'max_epoch' \(did you mean 'max_epochs'\?\). Fix: use one of: .*max_epochs"),
    ],
)
def test_bad_values_name_the_flag_and_the_fix(tmp_path, flags, message):
    with pytest.raises(ConfigurationError, match=message):
        quiet_trainer(tmp_path, **flags)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"auto_scale_batch_size": "linear"}, r"auto_scale_batch_size='linear'\) is not a known auto_scale_batch_size. Choose one of: 'power', 'binsearch'"),
        ({"log_gpu_memory": "max"}, r"log_gpu_memory='max'\) is not a known log_gpu_memory. Choose one of: 'all', 'min_max'"),
        ({"track_grad_norm": "two"}, r"track_grad_norm='two'\) is not a p-norm order"),
        ({"lr_scheduler_milestones": "a,b"}, r"lr_scheduler_milestones='a,b'\) is not a list of epochs"),
    ],
)
def test_bad_legacy_values(tmp_path, flags, message):
    with pytest.raises(ConfigurationError, match=message), pytest.warns(DeprecationWarning):
        quiet_trainer(tmp_path, **flags)


def test_val_check_interval_longer_than_the_epoch(tmp_path):
    with pytest.raises(ConfigurationError, match=r"val_check_interval=10\) is more than the 2 training batches"):
        quiet_trainer(tmp_path, val_check_interval=10).fit(Regressor(), loader(8, 4), loader(8, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_log_gpu_memory_logs_cuda_memory(tmp_path):
    with pytest.warns(DeprecationWarning):
        trainer = quiet_trainer(tmp_path, accelerator="cuda", max_steps=2, log_gpu_memory="min_max", log_every_n_steps=1)
    trainer.fit(Regressor(), loader(8, 4))
    assert trainer.logged_metrics["max_gpu_mem"] >= trainer.logged_metrics["min_gpu_mem"] > 0
