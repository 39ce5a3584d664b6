"""The tuner on real runs: batch-size scaling under a real memory cap (1 process and 2 DDP ranks), the LR finder, errors.

The memory cap is the kernel's: _scripts/tuner_memory.py lowers RLIMIT_AS in its own processes, so too
large a batch fails in torch's CPU allocator. Both launches start with the module and run alongside the
in-process tests; the two tests that read their reports come last.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from trainer_helpers import Regressor, loader, quiet_trainer, regression_data

from fabric_lite.errors import ConfigurationError, UsageError
from fabric_lite.trainer import LightningModule, Trainer, Tuner
from fabric_lite.trainer.tuner import LRFinder, is_oom_error

SCRIPT = str(Path(__file__).parent / "_scripts" / "tuner_memory.py")
# One malloc arena: glibc reserves 64 MiB of address space per extra arena, which a cap on address space would count.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "PYTHONUNBUFFERED": "1"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _launches(request, tmp_path_factory):
    """Start the one-process and the 2-rank launches when the module starts (if a selected test needs them), so
    that they run while the in-process tests do; ``capped`` waits for them."""
    wanted = any("capped" in item.fixturenames for item in request.session.items if item.module is request.module)
    out = tmp_path_factory.mktemp("tuner")
    runs = {kind: subprocess.Popen([sys.executable, SCRIPT, str(out / kind), kind], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=ENV) for kind in ("single", "ddp")} if wanted else {}
    yield out, runs
    for process in runs.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def capped(_launches):
    """The JSON reports of both launches (exit code and output for the failure message)."""
    out, runs = _launches
    outputs = {}
    for kind, process in runs.items():
        try:
            outputs[kind] = (process.communicate(timeout=300)[0], process.returncode)
        except subprocess.TimeoutExpired:
            process.kill()
            outputs[kind] = (process.communicate()[0], "timeout")
    reports = {}
    for kind, (text, code) in outputs.items():
        files = sorted((out / kind).glob("*.json")) if (out / kind).exists() else []
        reports[kind] = (code, text, [json.loads(f.read_text()) for f in files])
    return reports


def _reports(capped, kind, count):
    code, text, reports = capped[kind]
    assert code == 0 and len(reports) == count, f"{kind}: exit {code}\n{text[-4000:]}"
    return reports


class Sized(LightningModule):
    """A tiny regression whose batch size is an attribute; ``memory(batch)`` decides what a step allocates."""

    def __init__(self, batch_size: int = 2, samples: int = 64, bytes_per_sample: int = 0, fail_at: int | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.samples, self.bytes_per_sample, self.fail_at = samples, bytes_per_sample, fail_at
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)
        self.attempts: list[int] = []

    def train_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(self.samples), batch_size=self.batch_size, shuffle=True)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.attempts.append(self.batch_size)  # the trial's size (a last batch may be partial)
        if self.fail_at is not None and len(x) >= self.fail_at:
            raise ValueError("a bug in training_step, not memory")
        if self.bytes_per_sample:
            torch.empty(len(x) * self.bytes_per_sample, dtype=torch.uint8)  # real allocation
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trials(attempts: list[int]) -> list[int]:
    out: list[int] = []
    for size in attempts:
        if not out or out[-1] != size:
            out.append(size)
    return out


# ---------------------------------------------------------------------------------- batch size in this process
def test_dataset_size_bounds_the_search(tmp_path):
    model = Sized(samples=6)
    trainer = quiet_trainer(tmp_path)
    assert trainer.tuner.scale_batch_size(model, mode="power") == 6
    assert _trials(model.attempts) == [2, 4, 6]  # 8 would exceed the 6 samples: 6 is tried and kept
    assert model.batch_size == 6


def test_no_size_fits_raises_and_restores(tmp_path):
    model = Sized(bytes_per_sample=2**60)  # no allocator gives an exabyte: every size fails for real
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(tmp_path)
    with pytest.raises(UsageError, match=r"every batch size tried ran out of memory \(2, 1\), so none fits \(even batch_size=1\)\. Fix: use less memory"):
        trainer.tuner.scale_batch_size(model, mode="binsearch")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model.batch_size == 2 and os.listdir(tmp_path) == []  # the attribute is put back too


def test_other_errors_stop_the_search_and_restore(tmp_path):
    model = Sized(fail_at=8)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(tmp_path)
    callbacks, step = trainer.callbacks, trainer.global_step
    with pytest.raises(ValueError, match="a bug in training_step"):
        trainer.tuner.scale_batch_size(model, mode="power")
    assert _trials(model.attempts) == [2, 4, 8]  # sizes 2 and 4 trained 3 steps each before the bug
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert trainer.callbacks is callbacks and trainer.global_step == step and os.listdir(tmp_path) == []
    assert model.batch_size == 2


def test_validate_method_tunes_the_evaluation_loader(tmp_path):
    class Evaluated(Sized):
        def val_dataloader(self):
            return DataLoader(regression_data(self.samples), batch_size=self.batch_size)

        def validation_step(self, batch, batch_idx):
            x, _ = batch
            self.attempts.append(self.batch_size)
            # above 6 samples the step asks for an exabyte: a real allocator failure at a threshold set here
            torch.empty(2**60 if len(x) > 6 else len(x), dtype=torch.uint8)

    model = Evaluated()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(tmp_path)
    assert trainer.tuner.scale_batch_size(model, method="validate", mode="binsearch") == 6
    assert _trials(model.attempts) == [2, 4, 8, 6, 7] and model.batch_size == 6
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and trainer.val_dataloaders == []


def test_is_oom_error_on_real_errors():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**60, dtype=torch.uint8)
    assert is_oom_error(caught.value)
    assert is_oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom_error(MemoryError())
    assert not is_oom_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom_error(ValueError("out of memory"))


def test_fast_dev_run_skips_tuning(tmp_path):
    model = Sized()
    trainer = quiet_trainer(tmp_path, fast_dev_run=True)
    with pytest.warns(UserWarning, match=r"skipped under Trainer\(fast_dev_run=...\)"):
        assert trainer.tuner.scale_batch_size(model) is None
    assert model.batch_size == 2 and model.attempts == []


# ---------------------------------------------------------------------------------- learning-rate finder
def test_lr_find_suggests_a_sane_rate_saves_a_png_and_restores(tmp_path):
    model = Regressor(lr=0.05)  # hparams.lr
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    finder = Tuner(trainer).lr_find(model, loader(64, 64), min_lr=1e-4, max_lr=10.0, num_training=50)
    lrs, losses = finder.results["lr"], finder.results["loss"]
    assert lrs[0] == pytest.approx(1e-4) and all(a < b for a, b in itertools.pairwise(lrs))
    assert 10 < len(lrs) < 50 and losses[-1] > 4 * min(losses)  # the loss blew up above lr ~1: stopped early
    suggestion = finder.suggestion()
    assert 1e-2 <= suggestion <= 1.0  # full-batch SGD on this problem diverges above lr = 1
    assert model.hparams.lr == suggestion  # update_attr
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert trainer.global_step == 0 and trainer.callbacks == [] and trainer.lightning_module is None
    png = tmp_path / "lr_finder.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and finder.plot_path == str(png)
    assert [p.name for p in tmp_path.iterdir()] == ["lr_finder.png"]  # the temporary checkpoint is gone
    figure = finder.plot(suggest=True)
    assert figure.axes[0].get_xscale() == "log" and "suggested lr" in figure.axes[0].get_title()


def test_lr_find_linear_mode_attribute_and_plot_path(tmp_path):
    class WithAttribute(Regressor):
        def __init__(self):
            super().__init__()
            del self.hparams["lr"]
            self.learning_rate = 0.05

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.learning_rate)

    model = WithAttribute()
    trainer = quiet_trainer(tmp_path)
    result = trainer.tune(model, train_dataloaders=loader(32, 32),
                          lr_find_kwargs={"mode": "linear", "min_lr": 0.01, "max_lr": 0.5, "num_training": 20,
                                          "early_stop_threshold": None, "plot_path": tmp_path / "plots" / "lr.png"})
    finder = result["lr_find"]
    assert isinstance(finder, LRFinder) and len(finder.results["lr"]) == 20
    assert finder.results["lr"][-1] == pytest.approx(0.5) and finder.results["lr"][1] - finder.results["lr"][0] == pytest.approx(0.49 / 19)
    assert model.learning_rate == finder.suggestion() != 0.05
    assert (tmp_path / "plots" / "lr.png").read_bytes()[:8] == PNG_MAGIC


def test_lr_find_without_update_or_plot(tmp_path):
    model = Regressor(lr=0.05)
    trainer = quiet_trainer(tmp_path)
    finder = trainer.tuner.lr_find(model, loader(32, 32), num_training=5, update_attr=False, plot_path=False)
    assert model.hparams.lr == 0.05 and len(finder.results["loss"]) == 5
    assert finder.suggestion() is None  # 5 points minus the skipped first 10: nothing to rank
    assert os.listdir(tmp_path) == []


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the package absent, as on a machine without the extra
    finder = LRFinder("exponential", 1e-3, 1.0, 3)
    finder.results = {"lr": [1e-3, 3e-2, 1.0], "loss": [2.0, 1.0, 3.0]}
    with pytest.raises(ImportError, match=r"LRFinder.plot\(\) needs the package 'matplotlib', which is not installed. Fix: pip install 'torch-fabric-lite\[tuner\]' \(in a source checkout: pip install -e '\.\[tuner\]'\)"):
        finder.plot()
    with pytest.warns(UserWarning, match="The learning-rate finder's plot was not saved"):
        assert finder.save_plot(str(tmp_path / "lr.png")) is None
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------- errors
def test_scale_batch_size_errors(tmp_path):
    trainer = quiet_trainer(tmp_path)
    model = Sized()
    with pytest.raises(ConfigurationError, match=r"Tuner.scale_batch_size\(mode='linear'\) is not a known mode. Choose one of: power, binsearch"):
        trainer.tuner.scale_batch_size(model, mode="linear")
    with pytest.raises(ConfigurationError, match=r"method='train'\) is not a known method. Choose one of: fit, validate, test, predict"):
        trainer.tuner.scale_batch_size(model, method="train")
    with pytest.raises(ConfigurationError, match=r"Tuner.scale_batch_size\(steps_per_trial=0\) must be an integer >= 1\. Fix"):
        trainer.tuner.scale_batch_size(model, steps_per_trial=0)
    with pytest.raises(ConfigurationError, match=r"init_val=2.5\) must be an integer"):
        trainer.tuner.scale_batch_size(model, init_val=2.5)
    with pytest.raises(ConfigurationError, match=r"got train_dataloaders=<a loader you built>, whose batch size the tuner cannot change\. Fix: build the loader in model.train_dataloader\(\)"):
        trainer.tuner.scale_batch_size(model, loader(8, 2))
    with pytest.raises(ConfigurationError, match=r"looked for the attribute 'bs' on the model, model.hparams and the datamodule, and found it on none\. Fix"):
        trainer.tuner.scale_batch_size(model, batch_arg_name="bs")
    assert model.attempts == []


def test_distributed_refusals_before_any_process_starts(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spawn = quiet_trainer(tmp_path, strategy="ddp_spawn", devices=2)
        fsdp = quiet_trainer(tmp_path, strategy="fsdp", devices=2)
        ddp = quiet_trainer(tmp_path, strategy="ddp", devices=2)
    with pytest.raises(UsageError, match=r"called in the main process of strategy='ddp_spawn', whose processes exist only inside trainer.fit\(...\)\. Fix: Trainer\(auto_scale_batch_size=...\)"):
        spawn.tuner.scale_batch_size(Sized())
    with pytest.raises(ConfigurationError, match=r"with strategy='fsdp' on 2 processes: its training steps are collectives.*Fix: tune with strategy='ddp'"):
        fsdp.tuner.scale_batch_size(Sized())
    with pytest.raises(ConfigurationError, match=r"method='validate'\) with 2 processes: evaluation loops split data unevenly.*Fix: method='fit'"):
        ddp.tuner.scale_batch_size(Sized(), method="validate")


def test_lr_find_errors(tmp_path):
    trainer = quiet_trainer(tmp_path)
    model, data = Regressor(), loader(8, 4)
    cases = [
        ({"mode": "cosine"}, ConfigurationError, r"Tuner.lr_find\(mode='cosine'\) is not a known mode. Choose one of: exponential, linear"),
        ({"min_lr": 1.0, "max_lr": 0.1}, ConfigurationError, r"min_lr=1.0, max_lr=0.1\) needs 0 < min_lr < max_lr. Fix"),
        ({"num_training": 1}, ConfigurationError, r"num_training=1\) must be an integer >= 2"),
        ({"early_stop_threshold": 0}, ConfigurationError, r"early_stop_threshold=0\) must be a number > 0 or None. Fix"),
        ({"method": "test"}, ConfigurationError, r"method='test'\): the learning rate only matters while training. Fix: method='fit'"),
        ({"attr_name": "step_size"}, ConfigurationError, r"found no attribute 'step_size' on the model or its hparams.*Fix: set self.lr"),
    ]
    for kwargs, kind, message in cases:
        with pytest.raises(kind, match=message):
            trainer.tuner.lr_find(model, data, **kwargs)

    class NoRate(Regressor):
        def __init__(self):
            super().__init__()
            del self.hparams["lr"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ConfigurationError, match=r"found no attribute 'lr' or 'learning_rate' on the model or its hparams"):
        trainer.tuner.lr_find(NoRate(), data)

    class Manual(Regressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ConfigurationError, match=r"uses manual optimisation.*Fix: run the range test with automatic optimisation"):
        trainer.tuner.lr_find(Manual(), data)

    class NoOptimizer(Regressor):
        def configure_optimizers(self):
            return None

    with pytest.warns(UserWarning, match="returned no optimizer"), \
            pytest.raises(ConfigurationError, match=r"needs exactly one optimizer, but configure_optimizers returned 0\. Fix: return the optimizer"):
        trainer.tuner.lr_find(NoOptimizer(), data)
    assert os.listdir(tmp_path) == []


def test_tuner_is_exported_and_is_the_trainers():
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert isinstance(trainer.tuner, Tuner) and trainer.tuner.trainer is trainer


# ---------------------------------------------------------------------------------- batch size under a real cap
def test_batch_size_finder_one_process_under_memory_cap(capped):
    (r,) = _reports(capped, "single", 1)
    # the cap leaves room for 10 samples of 64 MiB: power keeps the last doubling that fitted, binsearch narrows
    assert (r["power"], r["power_trials"], r["power_attribute"]) == (8, [2, 4, 8, 16], 8)
    assert (r["binsearch"], r["binsearch_trials"]) == (10, [2, 4, 8, 16, 12, 10, 11])
    assert r["power_restored"] and r["binsearch_restored"]  # weights, Adam moments, step, epoch, RNG: torch.equal
    assert r["callbacks_restored"] and r["temp_files_left"] == []
    assert (r["hparams"], r["hparams_value"]) == (10, 10)  # model.hparams.batch_size
    assert (r["datamodule"], r["datamodule_value"]) == (8, 8)  # the datamodule's attribute
    assert (r["max_trials_2"], r["max_trials_2_trials"]) == (4, [2, 4])
    assert (r["from_32"], r["from_32_trials"]) == (8, [32, 16, 8])  # too large a start halves until one fits
    assert "found it on none. Fix: set self.batch_size = 32" in r["no_attribute_error"]
    # Trainer(auto_scale_batch_size="binsearch"): fit tunes first, then trains with the size found
    assert r["flag_attribute"] == 10 and r["flag_fit_batches"] == [10, 10]


def test_batch_size_finder_two_ranks_agree_on_the_tighter_cap(capped):
    r0, r1 = sorted(_reports(capped, "ddp", 2), key=lambda r: r["rank"])
    for r in (r0, r1):  # rank 0 fits 10 samples, rank 1 only 6: both take rank 1's answer
        assert r["world"] == 2
        assert (r["power"], r["power_trials"]) == (4, [2, 4, 8])
        assert (r["binsearch"], r["binsearch_trials"]) == (6, [2, 4, 8, 6, 7])
        assert r["attribute"] == 6 and r["power_restored"] and r["binsearch_restored"]
        assert r["fit_batches"] == [6, 6] and r["weights_changed"]
    assert r0["lr_curve"] == r1["lr_curve"] and len(r0["lr_curve"]["lr"]) == 15 and r0["lr_find_restored"]
    # a bug (not memory) on rank 1 in a trial: rank 1 raises it, rank 0 is told, nobody hangs, weights are put back
    assert r1["bug_error"] == "ValueError: a bug on rank 1"
    assert r0["bug_error"].startswith("UsageError: Tuner.scale_batch_size: another rank failed in a trial with an error that is not out of memory")
    assert r0["bug_restored"] and r1["bug_restored"]
    # after tuning, gradients are synchronised again: the ranks (different data) end with the same weights
    assert r0["weights_after_fit"] == r1["weights_after_fit"]
