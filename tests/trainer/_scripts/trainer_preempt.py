"""Run by test_preemption.py: a Trainer fit with the Preemption plugin that a real SIGUSR1 stops, then its resumption.

    python trainer_preempt.py OUT DEVICES interrupt   fit; rank SIGNAL_RANK writes pid<rank> at step STOP_AT and waits
                                                      for the test's signal; each rank writes stopped<rank>.json
    python trainer_preempt.py OUT DEVICES resume CKPT fit again (CKPT "auto": ckpt_path=None, or "last"), then an
                                                      uninterrupted fit in the same processes; each rank writes
                                                      resumed<rank>.json and its two sets of weights

With DEVICES=2 the Trainer's own launch (strategy="ddp") re-runs this script for rank 1 on CPU/gloo.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer_helpers import Regressor, loader

from fabric_lite.plugins import Preemption
from fabric_lite.trainer import Callback, Trainer

SIGNAL_RANK = int(os.environ.get("SIGNAL_RANK", "0"))
STOP_AT = int(os.environ.get("STOP_AT", "6"))


class Hooks(Callback):
    """Records the end-of-run hooks, and at step STOP_AT on SIGNAL_RANK waits (in the loop) for the test's signal."""

    def __init__(self, out: Path, wait: bool) -> None:
        self.out, self.wait, self.seen, self.start_step = out, wait, [], -1

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.wait and trainer.global_step == STOP_AT and trainer.global_rank == SIGNAL_RANK:
            plugin = trainer.fabric.plan.preemption_instance
            (self.out / f"pid{trainer.global_rank}").write_text(str(os.getpid()))
            deadline = time.time() + 120
            while plugin.received is None and time.time() < deadline:  # the other rank waits in its next collective
                time.sleep(0.01)

    def on_train_end(self, trainer, pl_module):
        self.seen.append("on_train_end")

    def on_fit_end(self, trainer, pl_module):
        self.seen.append("on_fit_end")

    def teardown(self, trainer, pl_module, stage):
        self.seen.append(f"teardown_{stage}")


def trainer_for(root: Path, devices: int, callbacks: list, plugins: list | None) -> Trainer:
    return Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=3,
                   logger=False, enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0,
                   default_root_dir=str(root), callbacks=callbacks, plugins=plugins)


def main(out: Path, devices: int, mode: str, ckpt: str | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Shuffled and with an epoch-dependent order under DDP: an exact resume needs the loader's position and RNG.
    data = loader(32, batch_size=4, shuffle=True)
    hooks = Hooks(out, wait=mode == "interrupt")
    trainer = trainer_for(out / "root", devices, [hooks], [Preemption(signals=("SIGTERM", "SIGUSR1"))])
    model = Regressor(lr=0.02)
    trainer.fit(model, data, ckpt_path=None if ckpt in (None, "auto") else ckpt)
    rank = trainer.global_rank
    report = {"rank": rank, "preempted": trainer.preempted, "global_step": trainer.global_step,
              "epoch": trainer.current_epoch, "hooks": hooks.seen, "start_step": hooks.start_step}
    if mode == "interrupt":
        (out / f"stopped{rank}.json").write_text(json.dumps(report))
        return
    reference = Regressor(lr=0.02)
    trainer_for(out / "reference", devices, [], None).fit(reference, data)
    torch.save({"resumed": model.state_dict(), "reference": reference.state_dict()}, out / f"weights{rank}.pt")
    (out / f"resumed{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
