"""LightningModule / LightningDataModule code as Lightning 2.x users write it runs under fabric_lite.trainer (issue 15).

Each test is written the way Lightning's docs write the feature (signatures without batch_idx, the optimizer_step
warm-up override, manual optimization, save_hyperparameters on a data module, load_from_checkpoint, Ctrl-C),
run for real on CPU with a few batches.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import LightningModule, Trainer


def _trainer(tmp_path: Any, **kwargs: Any) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, default_root_dir=str(tmp_path), enable_progress_bar=False, logger=False,
                    enable_checkpointing=False, num_sanity_val_steps=0, enable_model_summary=False)
    defaults.update(kwargs)
    return Trainer(**defaults)


def _data(n: int = 16, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def _loader(n: int = 16, batch_size: int = 4, seed: int = 0) -> DataLoader:
    return DataLoader(_data(n, seed), batch_size=batch_size)


class _Base(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.seen: list[tuple[Any, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


# ---------------------------------------------------------------------------------------------- 1. step signatures
class NoBatchIdx(_Base):
    """Every step without batch_idx (Lightning's GAN example writes training_step(self, batch))."""

    def training_step(self, batch):
        x, y = batch
        self.seen.append(("train",))
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch):
        self.seen.append(("val",))

    def test_step(self, batch):
        self.seen.append(("test",))

    def predict_step(self, batch):
        return self(batch[0])


def test_steps_without_batch_idx_run_in_fit_validate_test_and_predict(tmp_path):
    model = NoBatchIdx()
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, _loader(), _loader(8))
    trainer.validate(model, _loader(8), verbose=False)
    trainer.test(model, _loader(8), verbose=False)
    predictions = trainer.predict(model, _loader(8))
    assert model.seen == [("train",), ("train",), ("val",), ("val",), ("test",), ("test",)]  # limit_val_batches=1
    assert len(predictions) == 2 and predictions[0].shape == (4, 1)
    assert trainer.global_step == 2


class DataloaderIdx(_Base):
    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append(("val", batch_idx, dataloader_idx))

    def test_step(self, batch, batch_idx, dataloader_idx):  # required, as some users write it
        self.seen.append(("test", batch_idx, dataloader_idx))

    def predict_step(self, batch, *args):
        self.seen.append(("predict", *args))
        return self(batch[0])


def test_dataloader_idx_is_passed_with_several_loaders_and_defaults_to_0_with_one(tmp_path):
    model = DataloaderIdx()
    trainer = _trainer(tmp_path)
    trainer.validate(model, [_loader(4), _loader(8)], verbose=False)
    assert model.seen == [("val", 0, 0), ("val", 0, 1), ("val", 1, 1)]
    model.seen.clear()
    trainer.test(model, _loader(8), verbose=False)  # one loader, a required dataloader_idx: it is loader 0
    assert model.seen == [("test", 0, 0), ("test", 1, 0)]
    model.seen.clear()
    trainer.predict(model, [_loader(4), _loader(4)])
    assert model.seen == [("predict", 0, 0), ("predict", 0, 1)]


def test_several_loaders_and_a_step_without_dataloader_idx_is_refused_with_the_fix(tmp_path):
    model = NoBatchIdx()
    with pytest.raises(ConfigurationError, match=r"several val dataloaders, but NoBatchIdx.validation_step\(\) has no "
                                                 r"`dataloader_idx` argument.*def validation_step\(self, batch, batch_idx, "
                                                 r"dataloader_idx=0\)"):
        _trainer(tmp_path).validate(model, [_loader(4), _loader(4)], verbose=False)


def test_decorated_step_signature_is_read_through_functools_wraps(tmp_path):
    import functools

    def traced(fn):
        @functools.wraps(fn)
        def wrapper(self, *args):
            self.seen.append(("traced", len(args)))
            return fn(self, *args)
        return wrapper

    class Decorated(_Base):
        @traced
        def training_step(self, batch):
            return nn.functional.mse_loss(self(batch[0]), batch[1])

    model = Decorated()
    _trainer(tmp_path, max_steps=1).fit(model, _loader())
    assert model.seen == [("traced", 1)]


# ---------------------------------------------------------------------------------------------- 2. optimizer_step override
class WarmUp(_Base):
    """Lightning's documented LR warm-up: adjust pg["lr"] in optimizer_step, then step with the closure."""

    def __init__(self, lr: float = 0.1, warmup: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.calls: list[tuple[Any, ...]] = []

    def training_step(self, batch, batch_idx):
        self.calls.append(("training_step", batch_idx))
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        self.calls.append(("optimizer_zero_grad", epoch, batch_idx))
        optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        self.calls.append(("optimizer_step", epoch, batch_idx, isinstance(optimizer, torch.optim.SGD)))
        if self.trainer.global_step < self.hparams.warmup:
            scale = min(1.0, float(self.trainer.global_step + 1) / self.hparams.warmup)
            for pg in optimizer.param_groups:
                pg["lr"] = scale * self.hparams.lr
        optimizer.step(closure=optimizer_closure)
        self.calls.append(("lr", optimizer.param_groups[0]["lr"]))


def test_lr_warm_up_optimizer_step_override_runs_the_closure_and_sets_the_lr(tmp_path):
    model = WarmUp()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, _loader(16))
    steps = [c for c in model.calls if c[0] == "optimizer_step"]
    assert steps == [("optimizer_step", 0, i, True) for i in range(4)]
    assert [c[1] for c in model.calls if c[0] == "lr"] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1])
    # the closure runs inside optimizer.step: optimizer_step starts, then training_step, then zero_grad (Lightning's order)
    assert model.calls[:3] == [("optimizer_step", 0, 0, True), ("training_step", 0), ("optimizer_zero_grad", 0, 0)]
    assert trainer.global_step == 4


def test_accumulation_runs_the_closure_directly_and_calls_optimizer_step_at_the_window_end(tmp_path):
    model = WarmUp(warmup=0)
    trainer = _trainer(tmp_path, max_epochs=1, accumulate_grad_batches=3)
    trainer.fit(model, _loader(16))  # 4 batches: windows [0, 1, 2] and [3] (the epoch's last batch steps)
    names = [(c[0], c[-2] if c[0] == "optimizer_step" else c[-1]) for c in model.calls if c[0] != "lr"]
    assert names == [("training_step", 0), ("optimizer_zero_grad", 0), ("training_step", 1),
                     ("optimizer_step", 2), ("training_step", 2),
                     ("optimizer_step", 3), ("training_step", 3), ("optimizer_zero_grad", 3)]
    assert trainer.global_step == 2


def test_optimizer_step_that_never_runs_the_closure_is_refused(tmp_path):
    class Forgetful(WarmUp):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            optimizer.step()

    with pytest.raises(Exception, match=r"Forgetful.optimizer_step\(...\) returned without running the optimizer_closure.*"
                                        r"Fix: call optimizer.step\(closure=optimizer_closure\)"):
        _trainer(tmp_path, max_steps=1).fit(Forgetful(), _loader())


def test_closure_loss_is_returned_by_step_so_lbfgs_works(tmp_path):
    class WithLBFGS(_Base):
        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=5)

    model = WithLBFGS()
    data = _loader(16, batch_size=16)
    x, y = next(iter(data))
    before = nn.functional.mse_loss(model(x), y).item()
    _trainer(tmp_path, max_epochs=3).fit(model, data)
    assert nn.functional.mse_loss(model(x), y).item() < before * 0.1  # LBFGS re-evaluated the closure


# ---------------------------------------------------------------------------------------------- 3. optimizers() and manual
class ManualBoring(LightningModule):
    """Lightning's manual-optimization example: opt.step(closure) with manual_backward inside the closure."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.seen: list[Any] = []
        self.last: list[bool] = []

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        sch = self.lr_schedulers()
        self.seen.append((isinstance(opt, torch.optim.Optimizer), isinstance(opt, torch.optim.SGD), opt is self.optimizers()))

        def closure():
            loss = nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=0.01, gradient_clip_algorithm="value")
            self.seen.append(max(p.grad.abs().max().item() for p in self.parameters()))
            return loss

        opt.step(closure=closure)
        sch.step()
        self.seen.append(opt.param_groups[0]["lr"])
        self.last.append(self.trainer.is_last_batch)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


def test_manual_optimization_with_a_closure_clipping_and_a_scheduler_stepped_by_the_user(tmp_path):
    model = ManualBoring()
    before_step: list[int] = []

    class Steps(__import__("fabric_lite.trainer.callbacks", fromlist=["Callback"]).Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            before_step.append(trainer.global_step)

    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[Steps()])
    trainer.fit(model, _loader(12))
    checks, grads, lrs = model.seen[0::3], model.seen[1::3], model.seen[2::3]
    assert checks == [(True, True, True)] * 3
    assert all(g <= 0.01 + 1e-7 for g in grads)  # clipped by value inside the closure
    assert lrs == pytest.approx([0.05, 0.025, 0.0125])  # the user's sch.step() only: nothing stepped it again
    assert trainer.global_step == 3 and before_step == [0, 1, 2]  # the hook runs after the closure, before the step
    assert model.last == [False, False, True]  # trainer.is_last_batch


def test_optimizers_returns_a_list_of_optimizer_instances_with_several(tmp_path):
    class Two(_Base):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.other = nn.Linear(3, 1)

        def training_step(self, batch):
            a, b = self.optimizers()
            self.seen.append((type(a).__name__, type(b).__name__, isinstance(b, torch.optim.Adam), type(a.optimizer).__name__,
                              type(self.optimizers(use_pl_optimizer=False)[0]).__name__))
            a.step()
            b.step()

        def configure_optimizers(self):
            return torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.Adam(self.other.parameters())

    model = Two()
    trainer = _trainer(tmp_path, max_steps=4)
    trainer.fit(model, _loader(8))
    assert model.seen == [("LightningSGD", "LightningAdam", True, "SGD", "FabricSGD")] * 2
    import copy

    copied = copy.deepcopy(model.optimizers()[0])  # a class made at run time still copies
    assert type(copied).__name__ == "LightningSGD" and copied.param_groups[0]["lr"] == 0.1
    assert copied.param_groups[0]["params"][0] is not model.layer.weight
    assert trainer.global_step == 4  # every optimizer.step() counts under manual optimization, as in Lightning


def test_manual_step_errors_name_the_fix(tmp_path):
    class Bad(ManualBoring):
        def training_step(self, batch, batch_idx):
            self.optimizers().step(closure=1.0)

    with pytest.raises(ConfigurationError, match=r"optimizer.step\(closure=1.0\): the closure must be callable"):
        _trainer(tmp_path, max_steps=1).fit(Bad(), _loader())

    class BadClip(ManualBoring):
        def training_step(self, batch, batch_idx):
            self.clip_gradients(self.optimizers(), gradient_clip_val=1.0, gradient_clip_algorithm="max")

    with pytest.raises(ConfigurationError, match=r"gradient_clip_algorithm='max'\) is not a known algorithm. Choose one of: "
                                                 r"norm, value"):
        _trainer(tmp_path, max_steps=1).fit(BadClip(), _loader())


# ---------------------------------------------------------------------------------------------- 4. data module hparams
from fabric_lite.errors import CheckpointError  # noqa: E402
from fabric_lite.trainer import LightningDataModule  # noqa: E402


class RandomData(LightningDataModule):
    """A data module as Lightning's docs write one: hyperparameters saved in __init__, read from self.hparams."""

    def __init__(self, batch_size: int = 4, n: int = 16, note: str = "x") -> None:
        super().__init__()
        self.save_hyperparameters(ignore="note")
        self.restored: dict[str, Any] = {}

    def setup(self, stage):
        self.data = _data(self.hparams.n)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.hparams.batch_size)

    def state_dict(self):
        return {"seen": self.hparams.n}

    def load_state_dict(self, state_dict):
        self.restored = dict(state_dict)


def test_datamodule_save_hyperparameters_and_hparams_like_the_modules():
    dm = RandomData(batch_size=8)
    assert dm.hparams == {"batch_size": 8, "n": 16} and dm.hparams.batch_size == 8
    dm.hparams.batch_size = 2
    assert dm.hparams_initial == {"batch_size": 8, "n": 16}

    class Explicit(LightningDataModule):
        def __init__(self, a, b=2):
            super().__init__()
            self.save_hyperparameters("a")

    assert Explicit(1).hparams == {"a": 1}
    with pytest.raises(ConfigurationError, match=r"save_hyperparameters\('c'\): 'c' is not an argument of __init__. Fix: name one of: a\."):
        class Wrong(Explicit):
            def __init__(self, a):
                LightningDataModule.__init__(self)
                self.save_hyperparameters("c")
        Wrong(1)

    class NoSuper(LightningDataModule):  # forgot super().__init__(): hparams still work
        def __init__(self, size=3):
            self.save_hyperparameters()

    assert NoSuper().hparams.size == 3


# ---------------------------------------------------------------------------------------------- 5. load_from_checkpoint
class Lit(_Base):
    def __init__(self, hidden: int = 4, lr: float = 0.05, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Sequential(nn.Linear(3, hidden), nn.Linear(hidden, 1))
        self.loaded_keys: list[str] = []

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def on_load_checkpoint(self, checkpoint):
        self.loaded_keys = sorted(checkpoint)


def test_load_from_checkpoint_rebuilds_module_and_datamodule_from_saved_hparams(tmp_path):
    model, dm = Lit(hidden=6, lr=0.2), RandomData(batch_size=8, n=24)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    restored = Lit.load_from_checkpoint(path)
    assert restored.hparams == {"hidden": 6, "lr": 0.2, "backbone": None}
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)
    assert "hyper_parameters" in restored.loaded_keys and "hparams_name" in restored.loaded_keys
    assert restored.device == torch.device("cpu") and restored._trainer is None

    overridden = Lit.load_from_checkpoint(str(path), lr=0.5, map_location="cpu")
    assert overridden.hparams.lr == 0.5 and overridden.hparams.hidden == 6

    dm2 = RandomData.load_from_checkpoint(path, n=40)
    assert dm2.hparams == {"batch_size": 8, "n": 40} and dm2.restored == {"seen": 24}

    # hparams_file (a logger's hparams.yaml) replaces the checkpoint's values, keyword arguments still win
    hparams_file = tmp_path / "hparams.yaml"
    hparams_file.write_text("hidden: 6\nlr: 0.01\n")
    assert Lit.load_from_checkpoint(path, hparams_file=hparams_file).hparams.lr == 0.01

    # hparams overridden to another shape: the weights do not fit, load_state_dict says so
    with pytest.raises(RuntimeError, match="size mismatch"):
        Lit.load_from_checkpoint(path, hidden=5)


def test_load_from_checkpoint_errors_name_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"Lit.load_from_checkpoint\('.*missing.ckpt'\): no such file. Fix: pass the path"):
        Lit.load_from_checkpoint(tmp_path / "missing.ckpt")

    class NoHparams(_Base):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.layer = nn.Linear(3, width)

        def training_step(self, batch, batch_idx):
            return self(batch[0]).sum()

    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(NoHparams(1), _loader())
    trainer.save_checkpoint(tmp_path / "no_hparams.ckpt")
    with pytest.raises(ConfigurationError, match=r"cannot rebuild NoHparams: __init__ needs 'width', and the checkpoint's "
                                                 r"'hyper_parameters' do not hold them \(it holds: nothing.*Fix: pass them, e.g. "
                                                 r"NoHparams.load_from_checkpoint\(path, width=...\)"):
        NoHparams.load_from_checkpoint(tmp_path / "no_hparams.ckpt")
    assert NoHparams.load_from_checkpoint(tmp_path / "no_hparams.ckpt", width=1).layer.out_features == 1

    class NeedsBackbone(Lit):
        def __init__(self, backbone: nn.Module, hidden: int = 4) -> None:
            super().__init__(hidden=hidden)
            self.save_hyperparameters()
            self.backbone = backbone

    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(NeedsBackbone(nn.Identity()), _loader())
    trainer.save_checkpoint(tmp_path / "backbone.ckpt")
    with pytest.raises(ConfigurationError, match=r"__init__ needs 'backbone'.*it holds: hidden, lr; only plain values"):
        NeedsBackbone.load_from_checkpoint(tmp_path / "backbone.ckpt")
    assert NeedsBackbone.load_from_checkpoint(tmp_path / "backbone.ckpt", backbone=nn.Identity()).hparams.hidden == 4

    with pytest.raises(ConfigurationError, match=r"hparams_file='.*nope.yaml': no such file"):
        Lit.load_from_checkpoint(tmp_path / "backbone.ckpt", hparams_file=tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------- 6. Ctrl-C
def test_ctrl_c_ends_fit_gracefully_with_the_exception_hooks(tmp_path):
    """A real SIGINT to a real process running the Trainer: the call returns, hooks ran, trainer.interrupted is True."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "_scripts" / "interrupt_fit.py"
    process = subprocess.Popen([sys.executable, str(script), "fit"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "READY", line + process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["returned"] == "None" and lines["interrupted"] == "True" and lines["after"] == "ok"
    assert lines["events"].split(",") == ["callback.on_exception:KeyboardInterrupt", "logger.finalize:failed",
                                          "module.on_exception:KeyboardInterrupt", "datamodule.on_exception:KeyboardInterrupt"]
    assert "Traceback" not in err


def test_ctrl_c_to_rank_0_of_a_two_process_fit_runs_the_hooks_then_stops_every_rank(tmp_path):
    """Several processes: a rank that went on alone would wait in its next collective, so after the hooks the
    KeyboardInterrupt goes on to the launcher, which stops the job (exit by SIGINT, no process left)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = Path(__file__).parent / "_scripts" / "interrupt_fit.py"
    process = subprocess.Popen([sys.executable, str(script), "fit", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"})
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "READY", line + (process.stderr.read() if process.stderr else "")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode in (-signal.SIGINT, 128 + signal.SIGINT), err
    hooks = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("hook ")]
    assert hooks == ["callback.on_exception:KeyboardInterrupt", "logger.finalize:failed",
                     "module.on_exception:KeyboardInterrupt", "datamodule.on_exception:KeyboardInterrupt"]
    assert "returned" not in out and "rank 0 was interrupted (SIGINT); stopping the other ranks" in err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # anything left of the job's process group?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("a rank of the interrupted job was still running 10 s after rank 0 exited")


def test_keyboard_interrupt_in_test_and_predict_ends_the_call_with_the_hooks(tmp_path):
    class Interrupted(NoBatchIdx):
        def test_step(self, batch):
            raise KeyboardInterrupt

        predict_step = test_step

        def on_exception(self, exception):
            self.seen.append(type(exception).__name__)

    model, trainer = Interrupted(), _trainer(tmp_path)
    assert trainer.test(model, _loader(4), verbose=False) is None and trainer.interrupted
    assert trainer.predict(model, _loader(4)) is None and trainer.interrupted
    assert model.seen == ["KeyboardInterrupt", "KeyboardInterrupt"]


def test_other_exceptions_are_raised_again_after_the_hooks_and_interrupted_is_reset(tmp_path):
    class Boom(_Base):
        def __init__(self):
            super().__init__()
            self.hooked: list[str] = []

        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise ValueError("boom")
            return self(batch[0]).sum()

        def on_exception(self, exception):
            self.hooked.append(str(exception))

    model, trainer = Boom(), _trainer(tmp_path, max_epochs=1)
    with pytest.raises(ValueError, match="boom"):
        trainer.fit(model, _loader())
    assert trainer.interrupted and model.hooked == ["boom"]
    trainer.validate(NoBatchIdx(), _loader(4), verbose=False)
    assert not trainer.interrupted  # each call starts uninterrupted


def test_load_from_checkpoint_on_an_instance_is_refused_and_strict_loading_is_the_default(tmp_path):
    model = Lit()
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model, _loader())
    trainer.save_checkpoint(tmp_path / "lit.ckpt")
    with pytest.raises(TypeError, match=r"Lit.load_from_checkpoint was called on an instance.*Fix: call it on the class and "
                                        r"use the result: model = Lit.load_from_checkpoint\(path\)"):
        model.load_from_checkpoint(tmp_path / "lit.ckpt")
    with pytest.raises(TypeError, match=r"RandomData.load_from_checkpoint was called on an instance"):
        RandomData().load_from_checkpoint(tmp_path / "lit.ckpt")

    class Extended(Lit):  # one more layer than the checkpoint has
        def __init__(self, hidden: int = 4, lr: float = 0.05, backbone: nn.Module | None = None) -> None:
            super().__init__(hidden, lr, backbone)
            self.head = nn.Linear(1, 1)
            self.strict_loading = False

    loaded = Extended.load_from_checkpoint(tmp_path / "lit.ckpt")  # strict_loading=False: the new layer stays as built
    assert torch.equal(loaded.layer[0].weight, model.layer[0].weight)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"head.weight\""):
        Extended.load_from_checkpoint(tmp_path / "lit.ckpt", strict=True)


# ---------------------------------------------------------------------------------------------- other LightningModule API
class TimmLikeScheduler:
    """A scheduler that is not torch's: it needs the epoch (as timm's do), so the module overrides lr_scheduler_step."""

    def __init__(self, optimizer):
        self.optimizer, self.calls = optimizer, []

    def step(self, epoch):
        self.calls.append(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = 0.1 / (epoch + 2)

    def state_dict(self):  # Lightning requires these of any scheduler
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


class Utilities(_Base):
    def __init__(self):
        super().__init__()
        self.example_input_array = torch.randn(2, 3)
        self.gathered: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.gathered.append(self.all_gather(torch.tensor([float(batch_idx)])))
        self.print("step", batch_idx)
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": TimmLikeScheduler(opt), "interval": "epoch"}}

    def lr_scheduler_step(self, scheduler, metric):
        scheduler.step(epoch=self.current_epoch)


def test_lr_scheduler_step_freeze_print_all_gather_and_to_torchscript(tmp_path, capsys):
    model = Utilities()
    trainer = _trainer(tmp_path, max_epochs=2, limit_train_batches=2)
    trainer.fit(model, _loader())
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.calls == [0, 1] and trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 / 3)
    assert [g.tolist() for g in model.gathered] == [[0.0], [1.0], [0.0], [1.0]] and not model.on_gpu
    assert capsys.readouterr().out.count("step 1") == 2

    model.freeze()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.unfreeze()
    assert model.training and all(p.requires_grad for p in model.parameters())

    x = torch.randn(4, 3)
    scripted = model.to_torchscript(file_path=tmp_path / "model.pt")
    traced = model.to_torchscript(method="trace")
    assert torch.allclose(scripted(x), model(x)) and torch.allclose(traced(x), model(x))
    assert torch.allclose(torch.jit.load(str(tmp_path / "model.pt"))(x), model(x)) and model.training
    with pytest.raises(ConfigurationError, match=r"to_torchscript\(method='onnx'\) is not a known method. Choose one of: script, trace"):
        model.to_torchscript(method="onnx")
    model.example_input_array = None
    with pytest.raises(ConfigurationError, match=r"to_torchscript\(method='trace'\) needs an input to trace with. Fix: pass "
                                                 r"example_inputs="):
        model.to_torchscript(method="trace")


def test_datamodule_from_datasets_and_unknown_optimizer_config_keys(tmp_path):
    class WithBatchSize(LightningDataModule):
        def __init__(self, batch_size: int = 1, tag: str = ""):
            super().__init__()
            self.save_hyperparameters()

    dm = WithBatchSize.from_datasets(train_dataset=_data(16), val_dataset=[_data(8), _data(4)], batch_size=4, tag="t")
    assert dm.hparams == {"batch_size": 4, "tag": "t"}  # batch_size reaches __init__ when it takes it, num_workers does not
    model = DataloaderIdx()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4 and model.seen == [("val", 0, 0), ("val", 1, 0), ("val", 0, 1)]
    assert isinstance(dm.train_dataloader().sampler, torch.utils.data.RandomSampler)

    class Misspelt(_Base):
        def training_step(self, batch, batch_idx):
            return self(batch[0]).sum()

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_schduler": torch.optim.lr_scheduler.StepLR(opt, 1)}

    with pytest.warns(RuntimeWarning, match=r"configure_optimizers returned a dict with unknown keys \['lr_schduler'\], which "
                                            r"are ignored. Fix: use only the keys optimizer, lr_scheduler, monitor"):
        trainer = _trainer(tmp_path, max_steps=1)
        trainer.fit(Misspelt(), _loader())  # Lightning warns and runs on without the scheduler; so does this
    assert trainer.lr_scheduler_configs == []
