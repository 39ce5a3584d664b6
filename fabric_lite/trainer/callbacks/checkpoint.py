"""ModelCheckpoint: save the best k checkpoints by a monitored metric (and/or the last), every n epochs or steps.

Files are written with ``trainer.save_checkpoint`` -> ``fabric.save``: atomic (a crash leaves the old
file or the complete new one), and a collective, so every rank calls it; rank 0's metrics decide
(broadcast), so the ranks never disagree about whether to save.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.checkpoint import checkpoint_exists, remove_checkpoint
from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

MODES = ("min", "max")
_FIELD = re.compile(r"\{([^{}:]+)(:[^{}]*)?\}")


class ModelCheckpoint(Callback):
    """Save checkpoints during fit (same arguments as Lightning's ``ModelCheckpoint``).

    Args:
        dirpath: folder for the files (default: ``<logger log_dir or default_root_dir>/checkpoints``).
        filename: a template such as ``"{epoch}-{val_loss:.2f}"`` -> ``epoch=3-val_loss=0.12.ckpt``
            (default ``"{epoch}-{step}"``); any logged metric, ``epoch`` and ``step`` may appear.
        monitor: the metric that ranks checkpoints; None keeps the latest.
        mode: ``"min"`` or ``"max"``: which direction is better.
        save_top_k: how many to keep (-1 all, 0 none but ``last``).
        save_last: also write ``last.ckpt`` each time.
        save_weights_only: only the model's weights.
        every_n_epochs / every_n_train_steps: how often to check (default: every epoch).
        save_on_train_epoch_end: check at the end of the training epoch instead of after validation
            (default: only when there is no validation).
        auto_insert_metric_name: write ``name=value`` (True) or just the value.

    Example:
        >>> ModelCheckpoint(monitor="val_loss", filename="{epoch}-{val_loss:.2f}").format_checkpoint_name(
        ...     {"epoch": 3, "step": 40, "val_loss": 0.1234})
        'epoch=3-val_loss=0.12.ckpt'
    """

    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    monitors_metrics = True

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | None = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ConfigurationError(f"ModelCheckpoint(mode={mode!r}) is not a known mode. Choose one of: min, max.")
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise ConfigurationError(
                f"ModelCheckpoint(save_top_k={save_top_k!r}) is not an int >= -1. Fix: -1 (keep all), 0 (none), or k >= 1."
            )
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ConfigurationError(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) cannot rank checkpoints without a metric. "
                f"Fix: pass monitor='val_loss' (a logged metric), or save_top_k=1 / -1."
            )
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigurationError(f"ModelCheckpoint({name}={value!r}) is not an int >= 0. Fix: e.g. {name}=1, or None.")
        if every_n_train_steps and every_n_epochs:
            raise ConfigurationError(
                f"ModelCheckpoint(every_n_train_steps={every_n_train_steps}, every_n_epochs={every_n_epochs}) sets two "
                f"schedules. Fix: pass only one of them."
            )
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_epochs = every_n_epochs if every_n_epochs is not None else (0 if every_n_train_steps else 1)
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.enable_version_counter = enable_version_counter
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.kth_best_model_path = ""
        self.kth_value: float | None = None
        self.last_model_path = ""
        self._last_global_step_saved = -1

    @property
    def state_key(self) -> str:
        return f"ModelCheckpoint{{monitor={self.monitor!r}, mode={self.mode!r}, every_n_train_steps={self.every_n_train_steps}, every_n_epochs={self.every_n_epochs}}}"

    # ------------------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.dirpath is None:
            base = trainer.log_dir if trainer.loggers else trainer.default_root_dir
            self.dirpath = os.path.join(base, "checkpoints")
        self.dirpath = trainer.fabric.broadcast(self.dirpath, src=0) if trainer.world_size > 1 else self.dirpath

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0 and not trainer.sanity_checking:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.state.in_fit:
            return  # trainer.validate() alone saves nothing
        if self._on_train_epoch_end(trainer) or self.every_n_train_steps or not self._epoch_due(trainer):
            return
        self._save(trainer)

    def _on_train_epoch_end(self, trainer: Trainer) -> bool:
        """Whether to save at the training epoch's end rather than after validation (Lightning's rule).

        Validation that runs once at the end of every epoch (``val_check_interval=1.0``,
        ``check_val_every_n_epoch=1``) has finished by then, so the epoch end sees its metrics and what the
        module logs in ``on_train_epoch_end``; validation at other intervals decides at its own end.
        """
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        if not trainer.val_dataloaders or not any(trainer.num_val_batches) or trainer.val_check_batch == float("inf"):
            return True
        return trainer.check_val_every_n_epoch == 1 and trainer.val_check_interval == 1.0

    def _epoch_due(self, trainer: Trainer) -> bool:
        return bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # ------------------------------------------------------------------------------ saving
    def _save(self, trainer: Trainer) -> None:
        if trainer.global_step == self._last_global_step_saved or trainer.fast_dev_run:
            return
        self._last_global_step_saved = trainer.global_step
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        validated = trainer.state.val_has_run
        if trainer.world_size > 1:
            metrics, validated = trainer.fabric.broadcast((metrics, validated), src=0)  # rank 0 decides for everyone
        metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
        if self.monitor is not None and self.save_top_k != 0:
            if self.monitor not in metrics and not validated:
                # As in Lightning: before any validation ran (a metric it will log), warn and keep no top-k file yet.
                rank_zero_warn(
                    f"ModelCheckpoint(monitor={self.monitor!r}) could not find {self.monitor!r} among the logged metrics "
                    f"({', '.join(sorted(k for k in metrics if k not in ('epoch', 'step'))) or 'none'}) and no validation "
                    f"has run yet: no top-k checkpoint this time. Fix: self.log({self.monitor!r}, value) in your module."
                )
            elif self.monitor not in metrics:
                raise ConfigurationError(
                    f"ModelCheckpoint(monitor={self.monitor!r}) could not find {self.monitor!r} among the logged metrics "
                    f"({', '.join(sorted(k for k in metrics if k not in ('epoch', 'step')))}). "
                    f"Fix: self.log({self.monitor!r}, value) in your module, or monitor one of those."
                )
            else:
                self._save_top_k(trainer, metrics)
        elif self.monitor is None and self.save_top_k != 0:
            path = self._unique(self.format_checkpoint_name(metrics))
            previous = self.best_model_path
            trainer.save_checkpoint(path, weights_only=self.save_weights_only)
            if self.save_top_k == 1 and previous and previous != path:
                self._remove(trainer, previous)
            self.best_model_path = path
            self.best_k_models = {path: 0.0} if self.save_top_k == 1 else {**self.best_k_models, path: 0.0}
        if self.save_last:
            path = os.path.join(self.dirpath or ".", self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            trainer.save_checkpoint(path, weights_only=self.save_weights_only)
            self.last_model_path = path
        for logger in trainer.loggers:  # as in Lightning: loggers with log_model upload what was just saved
            hook = getattr(logger, "after_save_checkpoint", None)
            if hook is not None:
                hook(self)

    def _save_top_k(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        score = float(metrics[self.monitor])  # type: ignore[index]
        if math.isnan(score):
            score = math.inf if self.mode == "min" else -math.inf
        full = self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k
        if full:
            worst_path = self._worst()
            worst = self.best_k_models[worst_path]
            better = score < worst if self.mode == "min" else score > worst
            if not better:
                return
        path = self._unique(self.format_checkpoint_name(metrics))
        trainer.save_checkpoint(path, weights_only=self.save_weights_only)
        self.best_k_models[path] = score
        if full:
            self.best_k_models.pop(worst_path)
            if worst_path != path:
                self._remove(trainer, worst_path)
        pick = min if self.mode == "min" else max
        self.best_model_path = pick(self.best_k_models, key=self.best_k_models.__getitem__)
        self.best_model_score = torch.tensor(self.best_k_models[self.best_model_path])
        self.kth_best_model_path = self._worst()
        self.kth_value = self.best_k_models[self.kth_best_model_path]
        if self.verbose and trainer.is_global_zero:
            print(f"Epoch {trainer.current_epoch}, step {trainer.global_step}: {self.monitor}={score:.5g}, saved {path}")

    def _worst(self) -> str:
        pick = max if self.mode == "min" else min
        return pick(self.best_k_models, key=self.best_k_models.__getitem__)

    def _remove(self, trainer: Trainer, path: str) -> None:
        if trainer.is_global_zero and path != self.last_model_path:
            remove_checkpoint(path)  # a file or a sharded folder, local or at an fsspec URL (dirpath="s3://...")
        if trainer.world_size > 1:
            trainer.fabric.barrier("ModelCheckpoint.remove")

    def _unique(self, path: str) -> str:
        if not self.enable_version_counter or path in self.best_k_models:
            return path
        stem, version = path[: -len(self.FILE_EXTENSION)], 1
        candidate = path
        while checkpoint_exists(candidate) and candidate not in self.best_k_models:
            candidate = f"{stem}-v{version}{self.FILE_EXTENSION}"
            version += 1
        return candidate

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None) -> str:
        """The file path for ``metrics`` (``dirpath`` joined with the formatted template, plus ``.ckpt``)."""
        template = filename or self.filename or "{epoch}-{step}"
        values: dict[str, Any] = {}

        def field(match: re.Match[str]) -> str:
            name, spec = match.group(1), match.group(2) or ""
            key = f"f{len(values)}"
            value = metrics.get(name, 0)
            values[key] = float(value) if isinstance(value, torch.Tensor) else value
            if name in ("epoch", "step") and spec == "":
                values[key] = int(values[key])
            text = "{" + key + spec + "}"
            return f"{name}={text}" if self.auto_insert_metric_name else text

        name = _FIELD.sub(field, template).format(**values)
        return os.path.join(self.dirpath or "", name + self.FILE_EXTENSION)

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor, "best_model_score": None if self.best_model_score is None else float(self.best_model_score),
            "best_model_path": self.best_model_path, "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path, "last_model_path": self.last_model_path,
            "dirpath": self.dirpath, "last_global_step_saved": self._last_global_step_saved,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath") != self.dirpath:
            return  # another folder: the old files are not this callback's to manage
        self.best_model_path = state_dict["best_model_path"]
        score = state_dict["best_model_score"]
        self.best_model_score = None if score is None else torch.tensor(score)
        self.best_k_models = dict(state_dict["best_k_models"])
        self.kth_best_model_path = state_dict["kth_best_model_path"]
        self.last_model_path = state_dict["last_model_path"]
        self._last_global_step_saved = state_dict.get("last_global_step_saved", -1)
