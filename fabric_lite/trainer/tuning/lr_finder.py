"""The learning-rate range test: a short fit whose learning rate grows step by step, the smoothed loss recorded."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.errors import ConfigurationError, choices_error, missing_package
from fabric_lite.trainer.datamodule import LightningDataModule
from fabric_lite.trainer.loops import fit
from fabric_lite.trainer.optimizers import loss_of
from fabric_lite.trainer.tuning import trials
from fabric_lite.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

LR_MODES = ("exponential", "linear")


def lr_find(trainer: Trainer, model: LightningModule, train_dataloaders: Any, val_dataloaders: Any, dataloaders: Any,
            datamodule: LightningDataModule | None, method: str, min_lr: float, max_lr: float, num_training: int, mode: str,
            early_stop_threshold: float | None, update_attr: bool, attr_name: str,
            plot_path: str | os.PathLike[str] | bool | None) -> LRFinder | None:
    """:meth:`fabric_lite.trainer.tuner.Tuner.lr_find` (its docstring is the manual)."""
    if isinstance(train_dataloaders, LightningDataModule):
        datamodule, train_dataloaders = train_dataloaders, None
    call = f"Tuner.lr_find(mode={mode!r})"
    if method != "fit":
        raise ConfigurationError(
            f"Tuner.lr_find(method={method!r}): the learning rate only matters while training. Fix: method='fit'."
        )
    if mode not in LR_MODES:
        raise choices_error(asked=f"Tuner.lr_find(mode={mode!r})", kind="mode", choices=LR_MODES)
    if not (isinstance(min_lr, (int, float)) and isinstance(max_lr, (int, float)) and 0 < min_lr < max_lr):
        raise ConfigurationError(
            f"Tuner.lr_find(min_lr={min_lr!r}, max_lr={max_lr!r}) needs 0 < min_lr < max_lr. Fix: e.g. min_lr=1e-6, max_lr=1.0."
        )
    trials.check_int(f"Tuner.lr_find(num_training={num_training!r})", num_training, 2)
    if early_stop_threshold is not None and not (isinstance(early_stop_threshold, (int, float)) and early_stop_threshold > 0):
        raise ConfigurationError(
            f"Tuner.lr_find(early_stop_threshold={early_stop_threshold!r}) must be a number > 0 or None. "
            f"Fix: e.g. 4.0 (stop once the loss is 4x the best), or None to run all num_training steps."
        )
    if dataloaders is not None:
        raise ConfigurationError(
            "Tuner.lr_find(dataloaders=...) is for evaluation methods; the range test trains. Fix: train_dataloaders=loader."
        )
    if not model.automatic_optimization:
        raise ConfigurationError(
            f"{call}: the model uses manual optimisation (automatic_optimization=False), so the tuner cannot read "
            f"the loss nor drive the optimizer's learning rate. Fix: run the range test with automatic optimisation."
        )
    holders = lr_holders(model, attr_name) if update_attr else []
    if update_attr and not holders:
        where = f"{attr_name!r}" if attr_name else "'lr' or 'learning_rate'"
        raise ConfigurationError(
            f"{call} with update_attr=True found no attribute {where} on the model or its hparams to write the "
            f"suggestion to. Fix: set self.lr (or self.learning_rate, or pass attr_name='<yours>') in __init__ and "
            f"read it in configure_optimizers(), or update_attr=False."
        )
    if trainer.fast_dev_run:
        rank_zero_warn(f"{call} is skipped under Trainer(fast_dev_run=...): the run is a quick check, not tuned.")
        return None
    trials.ensure_launched(trainer, call)
    lrs = lr_schedule(min_lr, max_lr, num_training, mode)
    finder = LRFinder(mode, min_lr, max_lr, num_training)
    flags = {"max_steps": num_training, "max_epochs": -1, "min_epochs": None, "min_steps": None,
             "limit_val_batches": 0, "num_sanity_val_steps": 0}
    with trials.isolated(trainer, **flags), trials.snapshot(trainer, True) as snapshot:
        recorder = LRRecorder(snapshot, lrs, early_stop_threshold, finder)
        trainer.callbacks = [recorder]
        try:
            fit.run_fit(trainer, model, train_dataloaders, val_dataloaders, datamodule, None)
        finally:
            recorder.close()
    suggestion = finder.suggestion()
    if update_attr:
        if suggestion is None:
            rank_zero_warn(f"{call} recorded too few finite losses to suggest a learning rate; {holders[0][1]!r} is unchanged.")
        else:
            trials.set_holders(holders, None, suggestion)
            rank_zero_info(f"Learning rate set to {suggestion}")  # Lightning's words
    if plot_path is not False:
        path = os.fspath(plot_path) if plot_path not in (None, True) else os.path.join(trainer.default_root_dir, "lr_finder.png")
        if trainer.is_global_zero:
            finder.save_plot(path)
    return finder


class LRFinder:
    """What :meth:`Tuner.lr_find` recorded: ``results`` ({"lr": [...], "loss": [...]}) with a suggestion and a plot.

    Example:
        >>> finder = LRFinder("exponential", 1e-4, 1.0, 4)
        >>> finder.results = {"lr": [1e-4, 1e-3, 1e-2, 1e-1], "loss": [1.0, 0.9, 0.5, 0.4]}
        >>> finder.suggestion(skip_begin=0, skip_end=0)
        0.001
    """

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        self.mode = mode
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.num_training = num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self.plot_path: str | None = None
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate where the (smoothed) loss falls fastest, or None with fewer than 2 usable points.

        ``skip_begin`` / ``skip_end`` leave out the first and last points (warm-up noise, divergence). The slope
        is taken against log10(lr) in exponential mode, against lr in linear mode.
        """
        lrs, losses = self.results["lr"], self.results["loss"]
        stop = len(losses) - skip_end
        points = [(i, lrs[i], losses[i]) for i in range(skip_begin, stop) if math.isfinite(losses[i])]
        self._optimal_idx = None
        if len(points) < 2:
            return None
        x = torch.tensor([math.log10(lr) if self.mode == "exponential" else lr for _, lr, _ in points], dtype=torch.float64)
        y = torch.tensor([loss for _, _, loss in points], dtype=torch.float64)
        (slope,) = torch.gradient(y, spacing=(x,))
        best = int(torch.argmin(slope))
        self._optimal_idx = points[best][0]
        return points[best][1]

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """Plot loss against learning rate (log axis in exponential mode); returns the matplotlib figure.

        ``suggest`` marks the suggestion; ``show`` opens a window (pyplot); ``ax`` draws into your axes.
        """
        try:
            import matplotlib  # noqa: F401  (lazy: an optional dependency)
        except ImportError:
            raise missing_package(package="matplotlib", extra="tuner", needed_for="LRFinder.plot()") from None
        if ax is not None:
            figure = ax.figure
        elif show:
            import matplotlib.pyplot as plt

            figure, ax = plt.subplots()
        else:
            # no pyplot: works without a display and keeps no global figure
            from matplotlib.figure import Figure

            figure = Figure()
            ax = figure.subplots()
        lrs, losses = self.results["lr"], self.results["loss"]
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest:
            lr = self.suggestion()
            if lr is not None and self._optimal_idx is not None:
                ax.plot(lr, losses[self._optimal_idx], markersize=10, marker="o", color="red")
                ax.set_title(f"suggested lr: {lr:.3g}")
        if show:
            import matplotlib.pyplot as plt

            plt.show()
        return figure

    def save_plot(self, path: str) -> str | None:
        """Write ``plot(suggest=True)`` as a PNG to ``path`` (returns it), or warn and return None without matplotlib."""
        try:
            figure = self.plot(suggest=True)
        except ImportError as error:
            rank_zero_warn(f"The learning-rate finder's plot was not saved: {error}")
            return None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        figure.savefig(path, format="png")
        self.plot_path = path
        return path


class LRRecorder(trials.TrialGuard):
    """Drives the learning rate per optimizer step and records the smoothed loss; stops on divergence."""

    beta = 0.98  # smoothing of the recorded loss (an exponential moving average, bias-corrected)

    def __init__(self, snapshot: trials.Snapshot, lrs: list[float], threshold: float | None, finder: LRFinder) -> None:
        super().__init__(snapshot)
        self.lrs, self.threshold, self.finder = lrs, threshold, finder
        self._optimizer: Any = None
        self._average = 0.0
        self._best = math.inf
        self._window: list[float] = []
        self._step = 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.quiet(trainer)
        self.snapshot.take()  # type: ignore[union-attr]
        if len(trainer.optimizers) != 1:
            raise ConfigurationError(
                f"Tuner.lr_find needs exactly one optimizer, but configure_optimizers returned {len(trainer.optimizers)}. "
                f"Fix: return the optimizer (e.g. torch.optim.SGD(self.parameters(), lr=self.lr)) from configure_optimizers."
            )
        trainer.lr_scheduler_configs = []  # the finder owns the learning rate during the test
        self._optimizer = trainer.optimizers[0]
        self._set_lr(self.lrs[0])
        self._seen_step = trainer.global_step

    def _set_lr(self, lr: float) -> None:
        for group in self._optimizer.param_groups:
            group["lr"] = lr

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = loss_of(outputs)
        if loss is not None:
            self._window.append(float(loss.detach()))
        if trainer.global_step == self._seen_step:  # accumulating: the optimizer has not stepped yet
            return
        self._seen_step = trainer.global_step
        value = sum(self._window) / len(self._window) if self._window else math.nan
        self._window = []
        if trainer.world_size > 1:  # one curve for all ranks, so that all stop at the same step
            value = float(trainer.fabric.all_reduce(torch.tensor(value), reduce_op="mean"))
        step = self._step
        self._average = self.beta * self._average + (1 - self.beta) * value
        smoothed = self._average / (1 - self.beta ** (step + 1))
        self.finder.results["lr"].append(self.lrs[step])
        self.finder.results["loss"].append(smoothed)
        self._step += 1
        if self._step < len(self.lrs):
            self._set_lr(self.lrs[self._step])
        diverged = not math.isfinite(smoothed) or (self.threshold is not None and step > 1 and smoothed > self.threshold * self._best)
        if diverged:
            trainer.should_stop = True
        elif smoothed < self._best:
            self._best = smoothed


def lr_schedule(min_lr: float, max_lr: float, num: int, mode: str) -> list[float]:
    if mode == "exponential":
        return [min_lr * (max_lr / min_lr) ** (i / (num - 1)) for i in range(num)]
    return [min_lr + (max_lr - min_lr) * i / (num - 1) for i in range(num)]


def lr_holders(model: Any, attr_name: str) -> list[tuple[Any, str]]:
    for name in [attr_name] if attr_name else ["lr", "learning_rate"]:
        found = trials.holders(model, None, name)
        if found:
            return found
    return []
