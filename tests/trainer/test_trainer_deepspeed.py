"""The Trainer under DeepSpeed ZeRO stages 2 and 3 on 2 real CPU processes (gloo), against DDP on the same steps.

One launch of two processes runs Trainer(strategy="ddp"), then "deepspeed_stage_2" and "deepspeed_stage_3" (each
later Trainer joins the processes the first one made): the loss goes down, every step's loss and the final weights
equal DDP's (so ZeRO shards without changing the maths, and nothing clips unasked), and a fit resumed from the
checkpoint ModelCheckpoint saved mid-epoch ends where the uninterrupted fit did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed", reason="DeepSpeedStrategy needs deepspeed: pip install 'torch-fabric-lite[deepspeed]'")

from fabric_lite.strategies.deepspeed import DeepSpeedStrategy

SCRIPT = str(Path(__file__).parent / "_scripts" / "trainer_deepspeed.py")
STRATEGIES = ("ddp", "deepspeed_stage_2", "deepspeed_stage_3")
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning",  # torch's notes on DeepSpeed's collectives, once per call
    # DeepSpeed compiles a small communication op on first use: build it once per machine, not per run.
    "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/fabric_lite/torch_extensions")),
}


def close(got, want, what):
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-6, msg=lambda m: f"{what}: {m}")


def test_zero_stages_2_and_3_train_like_ddp_and_resume_from_model_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, SCRIPT, str(tmp_path), ",".join(STRATEGIES)], capture_output=True, text=True,
                            check=False, timeout=300, env=ENV)  # generous: the first run on a machine compiles the op
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    reports = {s: [json.loads((tmp_path / s / f"{s}_rank{r}.json").read_text()) for r in (0, 1)] for s in STRATEGIES}
    ddp = reports["ddp"]
    for strategy in ("deepspeed_stage_2", "deepspeed_stage_3"):
        for rank, (report, reference) in enumerate(zip(reports[strategy], ddp)):
            assert (report["rank"], report["world"], report["strategy"]) == (rank, 2, "DeepSpeedStrategy")
            assert report["global_step"] == 8 and report["checkpoints"] == ["epoch=1-step=5.ckpt"]
            losses = report["losses"]
            assert len(losses) == 8 and sum(losses[4:]) < sum(losses[:4]) / 2, (strategy, losses)  # it learns
            # The same maths as DDP, step by step (DeepSpeed's default clipping at norm 1.0 showed from step 3 on).
            close(losses, reference["losses"], f"{strategy} rank {rank} losses vs DDP")
            for got, want in zip(report["weights"], reference["weights"]):
                close(got, want, f"{strategy} rank {rank} weights vs DDP")
            # Resumed at step 5 from ModelCheckpoint's DeepSpeed folder: steps 6-8 and the end as uninterrupted.
            assert report["resumed_step"] == 8
            close(report["resumed_losses"], losses[5:], f"{strategy} rank {rank} resumed losses")
            for got, want in zip(report["resumed_weights"], report["weights"]):
                close(got, want, f"{strategy} rank {rank} resumed weights")
        assert reports[strategy][0]["weights"] == reports[strategy][1]["weights"], strategy  # ranks agree
    assert ddp[0]["losses"] != ddp[1]["losses"]  # each rank saw its own half of the data


def test_no_clipping_unless_asked():
    """DeepSpeed 0.19 clips at norm 1.0 when the config says nothing; unasked, the engine must not clip."""
    assert DeepSpeedStrategy(stage=2).engine_config()["gradient_clipping"] == 0.0
    assert DeepSpeedStrategy({"zero_optimization": {"stage": 3}}).engine_config()["gradient_clipping"] == 0.0
    assert DeepSpeedStrategy(stage=2, gradient_clipping=0.5).engine_config()["gradient_clipping"] == 0.5
    assert DeepSpeedStrategy({"gradient_clipping": 2.0}, stage=2).engine_config()["gradient_clipping"] == 2.0
