"""RichProgressBar: the progress bars drawn with ``rich`` (an optional package: ``pip install rich`` or the
``torch-fabric-lite[rich]`` extra).

The same stages as TQDMProgressBar (sanity check, "Epoch N", validation, test, predict), one ``rich`` task
each, with the ``prog_bar=True`` metrics and ``v_num`` beside the training bar; only global rank 0 draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fabric_lite.trainer.callbacks.progress_base import ProgressBar, _total

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer


def require_rich(what: str) -> None:
    """Raise a ModuleNotFoundError naming the install command when ``rich`` is missing."""
    try:
        import rich  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(
            f"{what} needs the rich package, which is not installed. Fix: pip install rich (or pip install "
            f"'torch-fabric-lite[rich]'), or use TQDMProgressBar / ModelSummary, which need no extra package."
        ) from None


@dataclass
class RichProgressBarTheme:
    """Styles of the parts of the rich bars (any ``rich`` style: ``"bold red"``, ``"#6206E0"``...), Lightning's fields.

    ``metrics_format`` formats float metrics and ``metrics_text_delimiter`` separates them
    (``v_num: 3 train_loss: 0.123``).
    """

    description: Any = ""
    progress_bar: Any = "#6206E0"
    progress_bar_finished: Any = "#6206E0"
    progress_bar_pulse: Any = "#6206E0"
    batch_progress: Any = ""
    time: Any = "dim"
    processing_speed: Any = "dim underline"
    metrics: Any = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


class RichProgressBar(ProgressBar):
    """Progress bars drawn by ``rich.progress``.

    Args:
        refresh_rate: redraw every this many batches (0: off).
        leave: keep one finished line per training epoch (default: one line reused for the fit).
        theme: a :class:`RichProgressBarTheme` (styles of each part, the metrics' format).
        console_kwargs: passed to ``rich.console.Console`` (for example ``{"file": buffer, "width": 120}``).
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, theme: Any = None,
                 console_kwargs: dict[str, Any] | None = None) -> None:
        require_rich("RichProgressBar")
        super().__init__(refresh_rate)
        self._leave = leave
        self.theme = theme if theme is not None else RichProgressBarTheme()
        self._console_kwargs = dict(console_kwargs or {})
        self.progress: Any = None
        self.train_progress_bar_id: Any = None
        self.val_progress_bar_id: Any = None
        self.test_progress_bar_id: Any = None
        self.predict_progress_bar_id: Any = None

    # ------------------------------------------------------------------------------------------ drawing
    def _start(self) -> None:
        if self.progress is not None or self.is_disabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        theme = self.theme
        self.progress = Progress(
            TextColumn("{task.description}", style=theme.description),
            BarColumn(complete_style=theme.progress_bar, finished_style=theme.progress_bar_finished,
                      pulse_style=theme.progress_bar_pulse),
            TextColumn("{task.completed}/{task.total}", style=theme.batch_progress),
            TimeElapsedColumn(), TextColumn("{task.fields[metrics]}", style=theme.metrics),
            console=Console(**self._console_kwargs), auto_refresh=False,
        )
        self.progress.start()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.refresh()
            self.progress.stop()
            self.progress = None
            self.train_progress_bar_id = self.val_progress_bar_id = None
            self.test_progress_bar_id = self.predict_progress_bar_id = None

    def _metrics_text(self, trainer: Trainer, pl_module: LightningModule) -> str:
        parts = []
        for name, value in self.get_metrics(trainer, pl_module).items():
            shown = f"{value:{self.theme.metrics_format}}" if isinstance(value, float) else str(value)
            parts.append(f"{name}: {shown}")
        return self.theme.metrics_text_delimiter.join(parts)

    def _add(self, description: str, total: Any) -> Any:
        self._start()
        if self.progress is None:
            return None
        task = self.progress.add_task(description, total=_total(total), metrics="")
        self.progress.refresh()
        return task

    def _remove(self, name: str) -> None:
        task = getattr(self, name)
        if task is not None and self.progress is not None:
            self.progress.remove_task(task)
            self.progress.refresh()
        setattr(self, name, None)

    def _advance(self, task: Any, n: int, metrics: str | None = None) -> None:
        if task is None or self.progress is None:
            return
        total = self.progress.tasks[[t.id for t in self.progress.tasks].index(task)].total
        if self._should_update(n, None if total is None else int(total)):
            fields = {"metrics": metrics} if metrics is not None else {}
            self.progress.update(task, completed=n, **fields)
            self.progress.refresh()

    # ------------------------------------------------------------------------------------------ hooks
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.val_progress_bar_id = self._add(self.sanity_check_description, None)

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove("val_progress_bar_id")
        self.reset_dataloader_idx_tracker()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        description = f"Epoch {trainer.current_epoch}"
        total = _total(self.total_train_batches)
        if self.train_progress_bar_id is None or self._leave:
            self.train_progress_bar_id = self._add(description, total)
        elif self.progress is not None:
            self.progress.reset(self.train_progress_bar_id, total=total, description=description, metrics="")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._advance(self.train_progress_bar_id, batch_idx + 1, self._metrics_text(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.train_progress_bar_id is not None and self.progress is not None:
            self.progress.update(self.train_progress_bar_id, metrics=self._metrics_text(trainer, pl_module))
            self.progress.refresh()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_progress_bar_id = self._add(self.validation_description, None)

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if self.val_progress_bar_id is None or self.progress is None or not self.has_dataloader_changed(dataloader_idx):
            return
        desc = self.sanity_check_description if trainer.sanity_checking else self.validation_description
        self.progress.reset(self.val_progress_bar_id, total=_total(self.total_val_batches_current_dataloader),
                            description=f"{desc} DataLoader {dataloader_idx}", metrics="")

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._advance(self.val_progress_bar_id, batch_idx + 1)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._remove("val_progress_bar_id")
        self.reset_dataloader_idx_tracker()
        if self.train_progress_bar_id is not None and self.progress is not None:
            self.progress.update(self.train_progress_bar_id, metrics=self._metrics_text(trainer, pl_module))
            self.progress.refresh()
        if not trainer.state.in_fit:
            self._stop()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.test_progress_bar_id = self._add(self.test_description, None)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        if self.test_progress_bar_id is not None and self.progress is not None and self.has_dataloader_changed(dataloader_idx):
            self.progress.reset(self.test_progress_bar_id, total=_total(self.total_test_batches_current_dataloader),
                                description=f"{self.test_description} DataLoader {dataloader_idx}", metrics="")

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._advance(self.test_progress_bar_id, batch_idx + 1)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.reset_dataloader_idx_tracker()
        self._stop()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.predict_progress_bar_id = self._add(self.predict_description, None)

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        if self.predict_progress_bar_id is not None and self.progress is not None and self.has_dataloader_changed(dataloader_idx):
            self.progress.reset(self.predict_progress_bar_id, total=_total(self.total_predict_batches_current_dataloader),
                                description=f"{self.predict_description} DataLoader {dataloader_idx}", metrics="")

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        self._advance(self.predict_progress_bar_id, batch_idx + 1)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.reset_dataloader_idx_tracker()
        self._stop()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop()
