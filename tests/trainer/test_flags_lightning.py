"""Lightning 2.x Trainer flags that ported scripts pass: max_time, detect_anomaly, use_distributed_sampler, profiler."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import Trainer

from trainer_helpers import Regressor, loader, quiet_trainer

SCRIPT = Path(__file__).parent / "_scripts" / "trainer_sampler_flag.py"


def test_the_flags_are_in_the_signature_as_in_lightning():
    parameters = inspect.signature(Trainer).parameters
    for name, default in (("profiler", None), ("max_time", None), ("detect_anomaly", False), ("use_distributed_sampler", True)):
        assert parameters[name].default == default, name


class NanInBackward(Regressor):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss + torch.sqrt(loss - loss)  # d sqrt(0) = inf, times 0: NaN in backward, a finite forward


def test_detect_anomaly_names_the_operation_that_made_nan(tmp_path):
    with pytest.raises(RuntimeError, match=r"Function '\w+Backward0' returned nan values"):
        quiet_trainer(tmp_path, max_epochs=1, detect_anomaly=True).fit(NanInBackward(), loader(8, 4))
    model = NanInBackward()
    quiet_trainer(tmp_path, max_epochs=1).fit(model, loader(8, 4))  # without the flag: no check (weights go NaN)
    assert torch.isnan(model.layer.weight).all()


class Slow(Regressor):
    def training_step(self, batch, batch_idx):
        time.sleep(0.05)
        return super().training_step(batch, batch_idx)


def test_max_time_stops_fit_when_the_budget_is_spent(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1000, max_time={"seconds": 0.5})
    start = time.monotonic()
    trainer.fit(Slow(), loader(16, 4))
    assert time.monotonic() - start < 30 and 3 <= trainer.global_step < 100, trainer.global_step


def test_bad_values_of_the_new_flags_are_refused_naming_the_fix(tmp_path):
    with pytest.raises(ConfigurationError, match=r"detect_anomaly.*Fix: pass detect_anomaly=True or detect_anomaly=False"):
        Trainer(accelerator="cpu", logger=False, detect_anomaly="yes")
    with pytest.raises(ConfigurationError, match=r"use_distributed_sampler.*Fix: pass use_distributed_sampler=True"):
        Trainer(accelerator="cpu", logger=False, use_distributed_sampler=1)


def test_use_distributed_sampler_false_gives_every_rank_the_loader_as_it_is(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=240,
                          env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    shares = [r["True"] for r in reports]
    assert len(shares[0]) == len(shares[1]) == 8 and sorted(shares[0] + shares[1]) == list(range(16))  # split
    assert all(r["False"] == list(range(16)) for r in reports)  # every rank: all 16 samples
