"""Run by test_tuner.py: the batch-size finder under a real memory cap, in one process or on 2 DDP ranks.

    python tuner_memory.py OUT_DIR single      one process, several scenarios; writes OUT_DIR/single.json
    python tuner_memory.py OUT_DIR ddp         2 processes (strategy='ddp', gloo; the Trainer re-runs this script
                                               for rank 1); rank r fits DDP_FITS[r] samples; writes ddp_rank<r>.json

The cap is real: after a warm-up fit, each process lowers its own soft RLIMIT_AS (address space) to its
current size plus room for ``fits + 0.5`` samples, and every training step allocates ``PER_SAMPLE`` bytes
per sample, so a larger batch fails inside torch's allocator (``DefaultCPUAllocator: can't allocate memory``).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer_helpers import regression_data

from fabric_lite.trainer import LightningDataModule, LightningModule, Trainer

PER_SAMPLE = 64 * 2**20
SINGLE_FITS = 10  # power from 2 -> 8 (16 fails); binsearch -> 10 (16, 12, 11 fail)
DDP_FITS = (10, 6)  # the ranks agree on the tighter one: power -> 4 (8 fails on rank 1); binsearch -> 6
NUM_SAMPLES = 64


class Probe(LightningModule):
    """A linear model whose training step needs PER_SAMPLE bytes per sample; its batch size is an attribute or an hparam."""

    def __init__(self, batch_size: int = 2, in_hparams: bool = False) -> None:
        super().__init__()
        if in_hparams:
            self.save_hyperparameters()
        else:
            self.batch_size = batch_size
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)
        self.attempts: list[int] = []
        self._optimizer = None

    def _batch_size(self) -> int:
        return self.hparams.batch_size if "batch_size" in self.hparams else self.batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(NUM_SAMPLES), batch_size=self._batch_size(), shuffle=True)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.attempts.append(len(x))
        scratch = torch.empty(len(x) * PER_SAMPLE, dtype=torch.uint8)  # the per-sample memory the cap counts
        scratch[0] = 1
        return nn.functional.mse_loss(self.layer(x), y) + 0.0 * scratch[0].float()

    def configure_optimizers(self):
        if self._optimizer is None:  # one Adam for every fit: its moments must survive tuning unchanged
            self._optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        return self._optimizer


class Data(LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 2

    def train_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(NUM_SAMPLES), batch_size=self.batch_size)


class NoBatchSize(Probe):
    def __init__(self) -> None:
        super().__init__()
        del self.batch_size

    def _batch_size(self) -> int:
        return 2


class BuggyOnRank1(Probe):
    """Rank 1's training step has a bug (not memory) from batch size 4 on: every rank must stop, none may hang."""

    def training_step(self, batch, batch_idx):
        if self.trainer.global_rank == 1 and len(batch[0]) >= 4:
            raise ValueError("a bug on rank 1")
        return super().training_step(batch, batch_idx)


def vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def cap(fits: int) -> None:
    """Leave room for ``fits`` samples (and half a sample of slack) above what this process uses now."""
    limit = vm_size() + int((fits + 0.5) * PER_SAMPLE)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def state(model: Probe, trainer: Trainer) -> dict:
    optimizer = model._optimizer
    return {"weights": [p.detach().clone() for p in model.parameters()],
            "moments": [v.clone() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)],
            "global_step": trainer.global_step, "epoch": trainer.current_epoch, "rng": torch.get_rng_state()}


def same(a: dict, b: dict) -> bool:
    return (all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"])) and len(a["moments"]) == len(b["moments"]) > 0
            and all(torch.equal(x, y) for x, y in zip(a["moments"], b["moments"])) and a["global_step"] == b["global_step"]
            and a["epoch"] == b["epoch"] and torch.equal(a["rng"], b["rng"]))


def trials(attempts: list[int]) -> list[int]:
    """The batch size of each trial (steps of one trial share it; a failed one stops at its first step)."""
    out: list[int] = []
    for size in attempts:
        if not out or out[-1] != size:
            out.append(size)
    return out


def make_trainer(root: Path, **kwargs) -> Trainer:
    return Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                   num_sanity_val_steps=0, default_root_dir=str(root), **kwargs)


def single(out: Path) -> None:
    report: dict = {}
    trainer = make_trainer(out / "root", devices=1)
    model = Probe()
    trainer.fit(model)  # warm-up: Adam has moments, the process has its threads and libraries
    callbacks = trainer.callbacks
    no_attribute = NoBatchSize()
    hparams_model = Probe(in_hparams=True)
    data, data_model = Data(), NoBatchSize()
    cap(SINGLE_FITS)
    before = state(model, trainer)
    model.attempts.clear()
    report["power"] = trainer.tuner.scale_batch_size(model, mode="power")
    report["power_trials"] = trials(model.attempts)
    report["power_attribute"] = model.batch_size
    report["power_restored"] = same(before, state(model, trainer))
    report["callbacks_restored"] = trainer.callbacks is callbacks
    report["temp_files_left"] = sorted(p.name for p in (out / "root").iterdir()) if (out / "root").exists() else []
    model.attempts.clear()
    report["binsearch"] = trainer.tuner.scale_batch_size(model, mode="binsearch")
    report["binsearch_trials"] = trials(model.attempts)
    report["binsearch_restored"] = same(before, state(model, trainer))
    report["hparams"] = trainer.tuner.scale_batch_size(hparams_model, mode="binsearch")
    report["hparams_value"] = hparams_model.hparams.batch_size
    report["datamodule"] = trainer.tuner.scale_batch_size(data_model, datamodule=data, mode="power")
    report["datamodule_value"] = data.batch_size
    model.attempts.clear()
    report["max_trials_2"] = trainer.tuner.scale_batch_size(model, mode="power", max_trials=2)
    report["max_trials_2_trials"] = trials(model.attempts)
    model.attempts.clear()
    report["from_32"] = trainer.tuner.scale_batch_size(model, mode="power", init_val=32)
    report["from_32_trials"] = trials(model.attempts)
    try:
        trainer.tuner.scale_batch_size(no_attribute, mode="power")
    except ValueError as error:
        report["no_attribute_error"] = str(error)
    # the older spelling: fit tunes first, then trains with the size found
    flagged = make_trainer(out / "flag", devices=1, auto_scale_batch_size="binsearch")
    model.attempts.clear()
    flagged.fit(model)
    report["flag_attribute"] = model.batch_size
    report["flag_fit_batches"] = model.attempts[-2:]
    (out / "single.json").write_text(json.dumps(report))


def ddp(out: Path) -> None:
    trainer = make_trainer(out / "root", devices=2, strategy="ddp")
    model = Probe()
    trainer.fit(model)  # starts rank 1 (a re-run of this script) and warms both up
    rank = trainer.global_rank
    cap(DDP_FITS[rank])
    before = state(model, trainer)
    report: dict = {"rank": rank, "world": trainer.world_size}
    model.attempts.clear()
    report["power"] = trainer.tuner.scale_batch_size(model, mode="power")
    report["power_trials"] = trials(model.attempts)
    report["power_restored"] = same(before, state(model, trainer))
    model.attempts.clear()
    report["binsearch"] = trainer.tuner.scale_batch_size(model, mode="binsearch")
    report["binsearch_trials"] = trials(model.attempts)
    report["binsearch_restored"] = same(before, state(model, trainer))
    report["attribute"] = model.batch_size
    # the LR finder on 2 ranks: the loss is averaged over ranks, so both record one curve (batch 6 fits both caps)
    finder = trainer.tuner.lr_find(model, min_lr=1e-3, max_lr=1.0, num_training=15, update_attr=False, plot_path=False)
    report["lr_curve"] = finder.results
    report["lr_find_restored"] = same(before, state(model, trainer))
    # a real fit with the agreed size: gradients are synchronised again, so both ranks end with the same weights
    model.attempts.clear()
    trainer.fit(model)
    report["fit_batches"] = model.attempts
    report["weights_after_fit"] = [p.detach().flatten().tolist() for p in model.parameters()]
    report["weights_changed"] = not all(torch.equal(a, p) for a, p in zip(before["weights"], model.parameters()))
    buggy = BuggyOnRank1()
    initial = [p.detach().clone() for p in buggy.parameters()]
    try:
        trainer.tuner.scale_batch_size(buggy, mode="power")
    except Exception as error:  # noqa: BLE001 - reported to the test
        report["bug_error"] = f"{type(error).__name__}: {error}"
    report["bug_restored"] = all(torch.equal(a, p) for a, p in zip(initial, buggy.parameters())) and buggy.batch_size == 2
    (out / f"ddp_rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    {"single": single, "ddp": ddp}[sys.argv[2]](out)
