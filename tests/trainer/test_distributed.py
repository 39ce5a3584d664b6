"""The Trainer on 2 real CPU processes (gloo): a DDP fit and an FSDP fit, validation counted once per sample, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_helpers import Regressor, loader, quiet_trainer

SCRIPT = str(Path(__file__).parent / "_scripts" / "trainer_distributed.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def launch(tmp_path: Path, strategies: str) -> dict[str, tuple[dict, dict]]:
    """One launch of 2 processes runs every strategy in turn (process start-up is most of the cost)."""
    result = subprocess.run([sys.executable, SCRIPT, str(tmp_path), strategies], capture_output=True, text=True, check=False,
                            timeout=300, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    return {s: tuple(json.loads((tmp_path / s / f"{s}_rank{r}.json").read_text()) for r in (0, 1)) for s in strategies.split(",")}


def reference(tmp_path: Path) -> list[list[float]]:
    """One process with the global batch (8 = the two ranks' 4 + 4, which the distributed sampler interleaves)."""
    model = Regressor(lr=0.01)
    torch.manual_seed(0)
    model.layer.reset_parameters()
    quiet_trainer(tmp_path, max_epochs=2).fit(model, loader(32, 8))
    return [model.layer.weight.flatten().tolist(), model.layer.bias.flatten().tolist()]


def test_two_process_ddp_and_fsdp_fits(tmp_path):
    reports = launch(tmp_path, "ddp,fsdp")
    expected_weights = reference(tmp_path / "ref")
    for strategy, (r0, r1) in reports.items():
        assert (r0["world"], r0["strategy"]) == (2, {"ddp": "DDPStrategy", "fsdp": "FSDPStrategy"}[strategy])
        assert r0["weights"] == r1["weights"], strategy
        for got, want in zip(r0["weights"], expected_weights):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-6)
        assert r0["global_step"] == r1["global_step"] == 8
        for r in (r0, r1):
            assert r["best"] == r0["best"]
            assert r["mid_epoch_resume_exact"], strategy  # shuffled, resumed at batch 2 of epoch 1: bit for bit
            assert r["epoch_end_resume_exact"], strategy  # resumed after epoch 0: the sampler's epoch 1 shuffle
    (d0, d1), (f0, f1) = reports["ddp"], reports["fsdp"]
    for r in (d0, d1):
        # DDP: every validation sample once (7 over 2 ranks, batches of 2), weighted and summed across ranks
        assert r["validated"]["samples"] == 7.0
        assert r["validated"]["sample_mean"] == pytest.approx(3.0)
    assert (d0["val_batches_seen"], d1["val_batches_seen"]) == (6, 6)  # 2 batches (4 and 3 samples) x (2 epochs + validate)
    assert d0["last_is"] == "file"
    for r in (f0, f1):
        # FSDP: a forward is a collective, so evaluation is padded to equal batches like Lightning: 8 samples,
        # the first one (0.0) twice
        assert r["validated"]["samples"] == 8.0
        assert r["validated"]["sample_mean"] == pytest.approx(21.0 / 8)
    assert f0["last_is"] == "dir"  # a sharded checkpoint folder, written by both ranks
