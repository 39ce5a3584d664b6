"""Trainer flags under DeepSpeed that the engine must carry out itself (as in Lightning): gradient_clip_val and
accumulate_grad_batches go into the engine's config.

fabric.clip_gradients cannot reach DeepSpeed's gradients, so before this the first step raised a ConfigurationError
about fabric.clip_gradients. And ZeRO reduces gradients in every backward: two backward passes before one engine step
at stage 2 kept only the last micro-batch's gradients, a silently different run. Now one process under DeepSpeed
clips and accumulates like the single-device Trainer does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("deepspeed", reason="DeepSpeedStrategy needs deepspeed: pip install 'torch-fabric-lite[deepspeed]'")

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from fabric_lite.trainer import LightningModule, Trainer

    class Model(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)
            self.losses = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y) * 100  # large gradients: clipping matters
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    strategy, algorithm, accumulate, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if steps != "-":
        from fabric_lite.strategies import DeepSpeedStrategy
        strategy = DeepSpeedStrategy(stage=2, gradient_accumulation_steps=int(steps))
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 8), torch.randn(32, 1))
    torch.manual_seed(1)
    model = Model()
    trainer = Trainer(accelerator="cpu", devices=1, strategy=strategy, max_epochs=2, gradient_clip_val=0.5,
                      gradient_clip_algorithm=algorithm, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    try:
        trainer.fit(model, DataLoader(data, batch_size=8))
    except Exception as error:
        print("ERROR", type(error).__name__, error)
        sys.exit(3)
    clipping = getattr(getattr(trainer.strategy, "options", None), "gradient_clipping", None)
    weights = [p.detach().float().flatten().tolist() for p in model.parameters()]
    print("RESULT" + json.dumps({"losses": model.losses, "clipping": clipping, "step": trainer.global_step, "weights": weights}))
''')
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning",
       "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/fabric_lite/torch_extensions"))}


def run(tmp_path, strategy, algorithm="norm", accumulate=1, steps="-"):
    script = tmp_path / "clip.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), strategy, algorithm, str(accumulate), steps], capture_output=True,
                          text=True, timeout=300, env=ENV, check=False)


def result(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[6:])


def test_gradient_clip_val_is_handed_to_the_deepspeed_engine_and_clips_like_single_device(tmp_path):
    reference = result(run(tmp_path, "auto"))
    deepspeed = result(run(tmp_path, "deepspeed_stage_2"))
    assert deepspeed["clipping"] == 0.5
    torch.testing.assert_close(torch.tensor(deepspeed["losses"]), torch.tensor(reference["losses"]), rtol=1e-4, atol=1e-4)


def test_clipping_by_value_under_deepspeed_is_refused_naming_the_fix(tmp_path):
    proc = run(tmp_path, "deepspeed_stage_2", "value")
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gradient_clip_algorithm='value') cannot work under DeepSpeed" in proc.stdout
    assert "Fix: gradient_clip_algorithm='norm'" in proc.stdout


def test_accumulate_grad_batches_under_zero_2_updates_like_single_device(tmp_path):
    reference = result(run(tmp_path, "auto", accumulate=2))
    deepspeed = result(run(tmp_path, "deepspeed_stage_2", accumulate=2))
    assert deepspeed["step"] == reference["step"] == 4  # 2 epochs of 4 batches, one update per 2
    # before: stage 2 kept only the second micro-batch's gradients of each pair (losses differed from step 2 on)
    torch.testing.assert_close(torch.tensor(deepspeed["losses"]), torch.tensor(reference["losses"]), rtol=1e-4, atol=1e-5)
    for got, want in zip(deepspeed["weights"], reference["weights"]):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)


def test_accumulation_that_disagrees_with_the_deepspeed_config_is_refused(tmp_path):
    proc = run(tmp_path, "deepspeed", accumulate=2, steps="4")
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Trainer(accumulate_grad_batches=2) and the DeepSpeed gradient_accumulation_steps=4 disagree" in proc.stdout
    assert "Fix: set one of them only" in proc.stdout
