"""ProfilerHooks: how a Trainer drives its profiler (set up at each run's ``setup``, epochs and batches timed, the report
written at ``teardown`` or on an exception). Added by ``Trainer(profiler=...)``; each hook and step call is timed by
``loops/hooks.py`` itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.profilers.base import Profiler

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer


class ProfilerHooks(Callback):
    """The Trainer's side of profiling (internal; users pass ``Trainer(profiler=...)``)."""

    def __init__(self, profiler: Profiler) -> None:
        self.profiler = profiler
        self._open: list[str] = []

    def _start(self, action: str) -> None:
        self.profiler.start(action)
        self._open.append(action)

    def _stop(self, action: str) -> None:
        if action in self._open:
            self._open.remove(action)
            self.profiler.stop(action)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.profiler.setup(stage, trainer.local_rank if trainer.world_size > 1 else None, trainer.log_dir)
        register = getattr(self.profiler, "register_module_names", None)
        if register is not None:
            register(pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("run_training_epoch")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop("run_training_epoch")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._start("run_training_batch")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stop("run_training_batch")

    def _report(self) -> None:
        for action in reversed(self._open):  # a run cut short leaves its epoch and batch open
            self.profiler.stop(action)
        self._open.clear()
        self.profiler.describe()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._report()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._report()
