"""Preemption in the Trainer: every rank stops at the same optimizer step, saves one exact checkpoint, and resumes from it.

With ``Trainer(plugins=[Preemption()])`` the fit loop asks ``fabric.should_stop()`` (one ``all_reduce``) after each
optimizer step. When any rank got a signal, every rank writes ``<default_root_dir>/checkpoints/preempted.ckpt``
with ``trainer.save_checkpoint`` (the mid-epoch position included), fit returns, and global rank 0 requeues a
SLURM job. A later ``fit`` with the plugin and ``ckpt_path=None`` resumes from that file by itself; a fit that
runs to its end deletes it, so it exists exactly while a run in that folder is unfinished.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer

#: The file name, inside ``<default_root_dir>/checkpoints``, of the checkpoint a preempted fit writes.
PREEMPTED_NAME = "preempted.ckpt"


def checkpoint_path(default_root_dir: str) -> str:
    """Where a preempted fit saves: a fixed place under ``default_root_dir`` (a logger's versioned folder would
    change between the preempted run and its requeued successor, so that one could not find it)."""
    return os.path.join(default_root_dir, "checkpoints", PREEMPTED_NAME)


def plugin_of(trainer: Trainer) -> Any:
    """The Preemption plugin the Trainer's Fabric was given, or None (also while the tuner runs its trial fits)."""
    if trainer.state.tuning:
        return None
    return trainer.fabric.plan.preemption_instance


def auto_resume_path(trainer: Trainer) -> str | None:
    """``fit(ckpt_path=None)`` with the plugin: the preemption checkpoint if there is one (rank 0's view decides)."""
    path = trainer.preemption_ckpt_path
    found = os.path.exists(path)
    if trainer.world_size > 1:
        found = bool(trainer.fabric.broadcast(found, src=0))
    if found and trainer.is_global_zero:
        print(f"Trainer: resuming from the preemption checkpoint {path} (fit(ckpt_path=None) with the Preemption plugin)",
              flush=True)
    return path if found else None


def save(trainer: Trainer, *, epoch_finished: bool) -> None:
    """Write the preemption checkpoint on every rank (a collective), at the step all ranks agreed on."""
    # "epoch_batches_done": the resumed fit runs the epoch-end hooks first; "in_epoch": it continues with the next batch.
    trainer.state.phase = "epoch_batches_done" if epoch_finished else "in_epoch"
    path = trainer.preemption_ckpt_path
    trainer.save_checkpoint(path)
    if trainer.world_size > 1:
        trainer.fabric.barrier("preemption_checkpoint")  # every rank's part is on disk before anyone requeues
    trainer.state.preempted = True
    if trainer.is_global_zero:
        print(f"Trainer: preempted, every rank stopped at epoch {trainer.current_epoch} step {trainer.global_step}; saved "
              f"{path}. Fit ends here; fit(ckpt_path='last') or a new fit with the plugin resumes from it.", flush=True)


def requeue(trainer: Trainer) -> None:
    """Requeue the SLURM job now (global rank 0; a no-op outside SLURM or with ``requeue=False``).

    Done at the end of fit rather than at exit: code after ``fit`` in the user's script could otherwise outlive the
    grace period and be killed before the plugin's exit handler runs.
    """
    plugin = trainer.fabric.plan.preemption_instance
    if plugin is not None and plugin.stop_agreed and plugin.requeue_mode is not False:
        plugin.requeue()


def discard(trainer: Trainer) -> None:
    """A fit that reached its end: remove the preemption checkpoint so that no later fit resumes from it."""
    path = trainer.preemption_ckpt_path
    if trainer.state.tuning or not trainer.is_global_zero or not os.path.exists(path):
        return
    if os.path.isdir(path):  # a sharded checkpoint is a folder
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.remove(path)
