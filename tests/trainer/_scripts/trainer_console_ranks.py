"""Run by test_progress.py on 2 CPU processes (DDP, gloo): what each rank prints and writes.

    python trainer_console_ranks.py OUT_DIR     (the Trainer re-runs this script for rank 1)

Every rank writes OUT_DIR/rank<r>.json: whether its progress bar was enabled and the time limit it reached.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer_helpers import Regressor, loader

from fabric_lite.trainer import Trainer, seed_everything
from fabric_lite.trainer.callbacks import TQDMProgressBar
from fabric_lite.trainer.profilers import SimpleProfiler

out = Path(sys.argv[1])
seed_everything(7)
bar = TQDMProgressBar()
trainer = Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=2, logger=False, enable_checkpointing=False,
                  default_root_dir=str(out), callbacks=[bar], profiler=SimpleProfiler(dirpath=out, filename="perf"))
trainer.fit(Regressor(), loader(16, 4), loader(8, 4))
(out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"bar_enabled": bar.is_enabled, "step": trainer.global_step}))
