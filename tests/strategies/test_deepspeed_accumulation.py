"""Gradient accumulation under DeepSpeed ZeRO 1-2 with Fabric: two fabric.backward calls before one optimizer.step()
kept a different set of gradients than plain PyTorch (silently different weights); now refused with the fix, and the
fix (gradient_accumulation_steps=N, a step on every micro-batch) gives plain PyTorch's weights."""

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
    from fabric_lite import Fabric
    from fabric_lite.strategies import DeepSpeedStrategy

    mode = sys.argv[1]
    strategy = "auto" if mode == "plain" else DeepSpeedStrategy(
        stage=2, gradient_accumulation_steps=2 if mode == "engine" else None)
    fabric = Fabric(accelerator="cpu", devices=1, strategy=strategy)
    fabric.launch()
    torch.manual_seed(1)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    torch.manual_seed(0)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    try:
        for step in range(3):
            for half in (0, 1):
                loss = torch.nn.functional.mse_loss(model(x[half * 8:(half + 1) * 8]), y[half * 8:(half + 1) * 8])
                if mode == "engine":  # the engine divides by gradient_accumulation_steps and updates on every 2nd step
                    fabric.backward(loss)
                    optimizer.step()
                else:  # the plain-PyTorch habit: two backward passes, then one step
                    fabric.backward(loss / 2)
            if mode != "engine":
                optimizer.step()
                optimizer.zero_grad()
    except Exception as error:
        print("ERROR", type(error).__name__, error)
        sys.exit(3)
    print("RESULT" + json.dumps([p.detach().float().flatten().tolist() for p in model.parameters()]))
''')
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning",
       "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/fabric_lite/torch_extensions"))}


def run(tmp_path, mode):
    script = tmp_path / "accumulate.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=300, env=ENV,
                          check=False)


def weights(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[6:])


def test_two_backward_passes_before_a_step_under_zero_2_are_refused_with_the_fix(tmp_path):
    proc = run(tmp_path, "habit")
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fabric.backward(loss) was called twice without optimizer.step() in between, which ZeRO stage 2" in proc.stdout
    assert "Fix: DeepSpeedStrategy(gradient_accumulation_steps=N)" in proc.stdout


def test_the_fix_accumulates_like_plain_pytorch(tmp_path):
    plain, engine = weights(run(tmp_path, "plain")), weights(run(tmp_path, "engine"))
    for got, want in zip(engine, plain):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-6)
