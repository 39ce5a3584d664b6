"""Train until fabric.should_stop() says a preemption signal arrived on some rank; save that step and exit 0.

Each rank writes pid<rank> once set up, and stopped<rank>.json (the step it saved) when it stops. A
second run finds the checkpoint and writes resumed<rank>.json with the step it resumed from.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "strategies"))
from script_launch import launch

from fabric_lite.plugins import Preemption


def write(path, data):
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle)
    os.replace(path + ".tmp", path)


def run(fabric, out, max_steps):
    rank = fabric.global_rank
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    ckpt = os.path.join(out, "last.ckpt")
    start = 0
    if os.path.exists(ckpt):
        remainder = fabric.load(ckpt, {"model": model, "optimizer": optimizer})
        start = remainder["step"] + 1
        write(os.path.join(out, f"resumed{rank}.json"), {"step": remainder["step"], "start": start})
    with open(os.path.join(out, f"pid{rank}"), "w") as handle:
        handle.write(str(os.getpid()))
    for step in range(start, start + max_steps):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if fabric.should_stop():
            fabric.save(ckpt, {"model": model, "optimizer": optimizer, "step": step})
            write(os.path.join(out, f"stopped{rank}.json"), {"step": step, "signal": fabric._preemption.received})
            return
        time.sleep(0.02)
    write(os.path.join(out, f"finished{rank}.json"), {"step": step})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=3000)
    args = parser.parse_args()
    plugins = [Preemption(signals=("SIGTERM", "SIGUSR1"))]
    launch(run, args, args.out_dir, args.max_steps, accelerator="cpu", plugins=plugins)


if __name__ == "__main__":
    main()
