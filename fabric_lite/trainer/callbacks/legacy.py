"""LRMilestones: the older ``Trainer(lr_scheduler_milestones=...)``: cut every learning rate by 10 at the listed epochs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fabric_lite.trainer.callbacks.base import Callback

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer


class LRMilestones(Callback):
    """At the start of each epoch listed in ``milestones`` (0-based), multiply each param group's ``lr`` by ``gamma``."""

    def __init__(self, milestones: list[int], gamma: float = 0.1) -> None:
        self.milestones = sorted(milestones)
        self.gamma = gamma

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        cuts = self.milestones.count(trainer.current_epoch)
        for _ in range(cuts):
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] *= self.gamma
