"""Tuner: the largest batch size that fits in memory (agreed by every rank) and the learning-rate range test.

Both run short nested fits through the Trainer with its side effects switched off (no callbacks,
loggers, checkpoints, validation or metric syncing), then put the weights, optimizers and Trainer
state back as they were (a temporary ``trainer.save_checkpoint`` taken before the first step).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import uuid
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.errors import (
    ConfigurationError,
    UsageError,
    choices_error,
    missing_package,
)
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.datamodule import LightningDataModule
from fabric_lite.trainer.flags import BATCH_SIZE_MODES
from fabric_lite.trainer.optimizers import loss_of
from fabric_lite.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fabric_lite.trainer.module import LightningModule
    from fabric_lite.trainer.trainer import Trainer

METHODS = ("fit", "validate", "test", "predict")
LR_MODES = ("exponential", "linear")
#: what an allocator says when it cannot allocate (CUDA's caching allocator, torch's CPU allocator, the C library)
OOM_MESSAGES = ("out of memory", "can't allocate memory", "DefaultCPUAllocator")
#: the Trainer attributes a trial may change and that are still valid afterwards: the model stays set up by Fabric
_KEPT = frozenset({"fabric", "_fabric_model", "_setup_for", "_tuner", "_spawned"})
_SPAWNING = ("spawn", "fork", "forkserver")


def is_oom_error(error: BaseException) -> bool:
    """Whether ``error`` says that memory ran out (``torch.OutOfMemoryError``, ``MemoryError`` or an allocator's message).

    Example:
        >>> is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
        True
        >>> is_oom_error(RuntimeError("shape mismatch"))
        False
    """
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in OOM_MESSAGES)


def free_memory() -> None:
    """Drop unreachable tensors and give cached CUDA blocks back (after an out-of-memory trial)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class Tuner:
    """Tune a model before training: ``scale_batch_size`` and ``lr_find`` (Lightning's names and signatures).

    Example:
        >>> from fabric_lite.trainer import Trainer
        >>> trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
        >>> tuner = Tuner(trainer)  # also trainer.tuner
        >>> tuner.trainer is trainer
        True
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def trainer(self) -> Trainer:
        return self._trainer

    # ------------------------------------------------------------------------------ batch size
    def scale_batch_size(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        method: str = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
    ) -> int | None:
        """Find the largest batch size whose training steps fit in memory; write it to the model and return it.

        Each trial sets ``batch_arg_name`` (on the model, ``model.hparams`` and/or the data module, wherever it
        exists), then runs ``steps_per_trial`` real steps of ``method`` through the Trainer; the loaders are
        built anew from ``train_dataloader()`` (model or data module), which reads the attribute. ``"power"``
        doubles from ``init_val`` until a trial runs out of memory (or ``max_trials`` trials, or the batch
        holds the whole dataset) and keeps the last size that fitted; ``"binsearch"`` then halves the gap
        between the last success and the first failure until they are neighbours. Out of memory is
        ``torch.OutOfMemoryError``, ``MemoryError`` or a ``RuntimeError`` of an allocator (for example
        ``DefaultCPUAllocator: can't allocate memory``); any other error stops the search.

        With several processes (DDP) every rank runs each trial, and one ``all_reduce(MAX)`` of an
        out-of-memory flag per trial makes every rank take the same decision, so all agree on the size
        that fits on the tightest rank. Trial steps skip the gradient all-reduce (``no_backward_sync``) and
        metric syncing, so a rank that fails early never leaves the others waiting in a collective (a
        ``training_step`` that runs collectives of its own is not supported there). Strategies whose steps
        are collectives by nature (FSDP, DeepSpeed) are refused with several processes.

        Afterwards the weights, the optimizers' state, the RNG and the Trainer's state are as before.
        Returns None (and tunes nothing) under ``fast_dev_run``.
        """
        trainer = self._trainer
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        call = f"Tuner.scale_batch_size(mode={mode!r}, method={method!r})"
        if mode not in BATCH_SIZE_MODES:
            raise choices_error(asked=f"Tuner.scale_batch_size(mode={mode!r})", kind="mode", choices=BATCH_SIZE_MODES)
        if method not in METHODS:
            raise choices_error(asked=f"Tuner.scale_batch_size(method={method!r})", kind="method", choices=METHODS)
        for name, value, minimum in (("steps_per_trial", steps_per_trial, 1), ("init_val", init_val, 1), ("max_trials", max_trials, 1)):
            _check_int(f"Tuner.scale_batch_size({name}={value!r})", value, minimum)
        direct = train_dataloaders if method == "fit" else dataloaders
        if direct is not None:
            hook = "train_dataloader" if method == "fit" else {"validate": "val_dataloader"}.get(method, f"{method}_dataloader")
            raise ConfigurationError(
                f"{call} got {'train_dataloaders' if method == 'fit' else 'dataloaders'}=<a loader you built>, whose batch "
                f"size the tuner cannot change. Fix: build the loader in model.{hook}() (or a LightningDataModule's) from "
                f"self.{batch_arg_name}, and pass the model (or datamodule=dm) without loaders."
            )
        holders = _holders(model, datamodule, batch_arg_name)
        if not holders:
            raise ConfigurationError(
                f"{call} looked for the attribute {batch_arg_name!r} on the model, model.hparams and the datamodule, and "
                f"found it on none. Fix: set self.{batch_arg_name} = 32 (or save_hyperparameters() with a {batch_arg_name} "
                f"argument) in __init__ and read it in train_dataloader(), or pass batch_arg_name='<your attribute>'."
            )
        if method != "fit" and trainer.world_size > 1:
            raise ConfigurationError(
                f"{call} with {trainer.world_size} processes: evaluation loops split data unevenly and end with a "
                f"collective, so one rank running out of memory would leave the others waiting. Fix: method='fit' "
                f"(training steps need more memory than evaluation), or tune in one process."
            )
        self._check_distributed(call)
        if trainer.fast_dev_run:
            rank_zero_warn(f"{call} is skipped under Trainer(fast_dev_run=...): the run is a quick check, not tuned.")
            return None
        self._ensure_launched(call)

        def trial(size: int) -> bool:
            _set_holders(holders, batch_arg_name, size)
            return self._trial(model, datamodule, val_dataloaders, method, steps_per_trial, snapshot)

        original = [holder[key] if isinstance(holder, dict) else getattr(holder, key) for holder, key in holders]
        try:
            with _isolated(trainer, **_trial_flags(method, steps_per_trial)), self._snapshot(method == "fit") as snapshot:
                found, tried = _search(trial, mode, init_val, max_trials, lambda: _samples_per_rank(trainer, method))
        except BaseException:
            _put_back(holders, original)
            raise
        if found == 0:
            _put_back(holders, original)
            smallest = min(tried)
            raise UsageError(
                f"{call}: every batch size tried ran out of memory ({', '.join(map(str, tried))}), so none fits"
                + (" (even batch_size=1)" if smallest == 1 else f" within max_trials={max_trials}") + ". Fix: "
                + ("use less memory per sample (a smaller model or input, precision='bf16-mixed', activation "
                   "checkpointing) or a device with more memory." if smallest == 1 else
                   f"start lower (init_val={max(1, smallest // 2)}) or allow more trials.")
            )
        _set_holders(holders, batch_arg_name, found)
        rank_zero_info(f"Tuner.scale_batch_size: batch size {found} fits ({mode}, trials: {', '.join(map(str, tried))}).")
        return found

    def _trial(self, model: LightningModule, datamodule: LightningDataModule | None, val_dataloaders: Any, method: str,
               steps_per_trial: int, snapshot: _Snapshot) -> bool:
        """Run one trial on every rank; True when it fitted in memory on all of them (one all_reduce(MAX))."""
        trainer = self._trainer
        guard = _TrialGuard(snapshot)
        failure: Exception | None = None
        code = 0  # 0 fitted, 1 out of memory, 2 another error
        trainer.callbacks = [guard]
        try:
            if method == "fit":
                trainer._fit_impl(model, None, val_dataloaders, datamodule, None)
            elif method == "predict":
                trainer._predict_impl(model, None, datamodule, False, None)
            else:
                trainer._eval_impl(method, model, None, None, False, datamodule)
        except Exception as error:  # noqa: BLE001 - decided below, together with the other ranks
            if is_oom_error(error):
                code = 1
            else:
                code, failure = 2, error
        finally:
            guard.close()
        for parameter in model.parameters():
            parameter.grad = None
        if code == 1:
            free_memory()  # the failed step's tensors are unreachable once the exception is gone
        if trainer.world_size > 1:
            _reset_ddp_buffer_sync(trainer)
            code = int(trainer.fabric.all_reduce(torch.tensor(float(code)), reduce_op="max").item())
        if code == 2:
            if failure is not None:
                raise failure
            raise UsageError(
                "Tuner.scale_batch_size: another rank failed in a trial with an error that is not out of memory "
                "(its traceback is in that rank's output). Fix: the error that rank reports."
            )
        return code == 0

    # ------------------------------------------------------------------------------ learning rate
    def lr_find(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        method: str = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
        *,
        plot_path: str | os.PathLike[str] | bool | None = None,
    ) -> LRFinder | None:
        """Range test: train ``num_training`` steps while the learning rate grows from ``min_lr`` to ``max_lr``.

        The loss of each step is recorded (smoothed, as Lightning does); the search stops early once the
        smoothed loss exceeds ``early_stop_threshold`` x the best one (None: never). The returned
        :class:`LRFinder` has ``results`` ({"lr": [...], "loss": [...]}), ``suggestion()`` (the steepest
        descent) and ``plot()``. With ``update_attr`` the suggestion is written to ``attr_name``, or to
        ``lr`` / ``learning_rate`` on the model or its hparams. The plot is saved as a PNG on rank 0 at
        ``plot_path`` (default ``<default_root_dir>/lr_finder.png``; ``False``: not saved; skipped with a
        warning if matplotlib is missing: ``pip install 'fabric-lite[tuner]'``). Weights, optimizer state,
        RNG and Trainer state are put back afterwards. Under DDP the per-step loss is averaged over ranks,
        so every rank records the same curve and stops at the same step.
        """
        trainer = self._trainer
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
        _check_int(f"Tuner.lr_find(num_training={num_training!r})", num_training, 2)
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
        holders = _lr_holders(model, attr_name) if update_attr else []
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
        self._ensure_launched(call)
        lrs = _lr_schedule(min_lr, max_lr, num_training, mode)
        finder = LRFinder(mode, min_lr, max_lr, num_training)
        flags = {"max_steps": num_training, "max_epochs": -1, "min_epochs": None, "min_steps": None,
                 "limit_val_batches": 0, "num_sanity_val_steps": 0, "should_stop": False, "_tuning": True}
        with _isolated(trainer, **flags), self._snapshot(True) as snapshot:
            recorder = _LRRecorder(snapshot, lrs, early_stop_threshold, finder)
            trainer.callbacks = [recorder]
            try:
                trainer._fit_impl(model, train_dataloaders, val_dataloaders, datamodule, None)
            finally:
                recorder.close()
        suggestion = finder.suggestion()
        if update_attr:
            if suggestion is None:
                rank_zero_warn(f"{call} recorded too few finite losses to suggest a learning rate; {holders[0][1]!r} is unchanged.")
            else:
                _set_holders(holders, None, suggestion)
                rank_zero_info(f"Tuner.lr_find: learning rate set to {suggestion:.3g}.")
        if plot_path is not False:
            path = os.fspath(plot_path) if plot_path not in (None, True) else os.path.join(trainer.default_root_dir, "lr_finder.png")
            if trainer.is_global_zero:
                finder.save_plot(path)
        return finder

    # ------------------------------------------------------------------------------ shared
    def _check_distributed(self, call: str) -> None:
        trainer = self._trainer
        # A trial must be free of collectives between its first and last step; the strategy says whether its
        # no_backward_sync gives that (DDP's no_sync does; sharded forwards and DeepSpeed's backward do not).
        local_steps = trainer.fabric.strategy.local_steps_under_no_sync
        if trainer.world_size > 1 and not local_steps:
            raise ConfigurationError(
                f"{call} with strategy={trainer.fabric.plan.strategy!r} on {trainer.world_size} processes: its training steps "
                f"are collectives (gathered parameters or reduced gradients), so a rank that runs out of memory would leave "
                f"the others waiting mid-step. Fix: tune with strategy='ddp' or in one process (a conservative size: "
                f"sharding needs less memory), then fit with this strategy."
            )

    def _ensure_launched(self, call: str) -> None:
        fabric = self._trainer.fabric
        if fabric.plan.launcher in _SPAWNING and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise UsageError(
                f"{call} was called in the main process of strategy={fabric.plan.strategy!r}, whose processes exist only "
                f"inside trainer.fit(...). Fix: Trainer(auto_scale_batch_size=...) and trainer.fit(model) (tuning runs "
                f"inside the processes), or strategy='ddp', whose processes re-run the script."
            )
        fabric.launch()

    @contextlib.contextmanager
    def _snapshot(self, enabled: bool) -> Generator[_Snapshot, None, None]:
        trainer = self._trainer
        snapshot = _Snapshot(trainer, enabled)
        try:
            yield snapshot
        finally:
            snapshot.restore_and_remove()


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


# ---------------------------------------------------------------------------------- trial machinery
class _Snapshot:
    """The state before the first trial step: a temporary Trainer checkpoint in default_root_dir, restored at the end."""

    def __init__(self, trainer: Trainer, enabled: bool) -> None:
        self.trainer = trainer
        self.enabled = enabled
        self.path: str | None = None

    def take(self) -> None:
        """Called at the first trial's on_fit_start (model and optimizers set up, no step taken): every rank."""
        if not self.enabled or self.path is not None:
            return
        trainer = self.trainer
        name = f".tuner_{uuid.uuid4().hex[:12]}.ckpt"
        if trainer.world_size > 1:
            name = trainer.fabric.broadcast(name, src=0)  # one file for all ranks (rank 0's name)
        path = os.path.join(trainer.default_root_dir, name)
        os.makedirs(trainer.default_root_dir, exist_ok=True)
        trainer.save_checkpoint(path)
        self.path = path

    def restore_and_remove(self) -> None:
        if self.path is None:
            return
        trainer, path = self.trainer, self.path
        self.path = None
        try:
            trainer.restore_checkpoint(path)  # weights, optimizer state, RNG (a collective: every rank is here)
            for parameter in trainer.lightning_module.parameters() if trainer.lightning_module is not None else []:
                parameter.grad = None
        finally:
            if trainer.is_global_zero:
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


class _TrialGuard(Callback):
    """The only callback of a trial: snapshot before the first step, metric logging off, gradient sync off (DDP)."""

    def __init__(self, snapshot: _Snapshot | None) -> None:
        self.snapshot = snapshot
        self._stack = contextlib.ExitStack()

    def _quiet(self, trainer: Trainer) -> None:
        # self.log calls become no-ops: their values would be synced (collectives) and logged at each step
        trainer._results.enabled = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._quiet(trainer)
        if self.snapshot is not None:
            self.snapshot.take()
        if trainer.world_size > 1:
            # Gradients stay local in a trial, so a rank that fails mid-step leaves nobody waiting in an
            # all-reduce; the agreement is one all_reduce after the trial (Tuner._trial).
            self._stack.enter_context(trainer.fabric.no_backward_sync(trainer._fabric_model))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._quiet(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._quiet(trainer)

    def close(self) -> None:
        self._stack.close()


class _LRRecorder(_TrialGuard):
    """Drives the learning rate per optimizer step and records the smoothed loss; stops on divergence."""

    beta = 0.98  # smoothing of the recorded loss (an exponential moving average, bias-corrected)

    def __init__(self, snapshot: _Snapshot, lrs: list[float], threshold: float | None, finder: LRFinder) -> None:
        super().__init__(snapshot)
        self.lrs, self.threshold, self.finder = lrs, threshold, finder
        self._optimizer: Any = None
        self._average = 0.0
        self._best = math.inf
        self._window: list[float] = []
        self._step = 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._quiet(trainer)
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


def _lr_schedule(min_lr: float, max_lr: float, num: int, mode: str) -> list[float]:
    if mode == "exponential":
        return [min_lr * (max_lr / min_lr) ** (i / (num - 1)) for i in range(num)]
    return [min_lr + (max_lr - min_lr) * i / (num - 1) for i in range(num)]


def _search(trial: Callable[[int], bool], mode: str, init_val: int, max_trials: int,
            samples: Callable[[], int | None]) -> tuple[int, list[int]]:
    """The size search; returns (largest size that fitted or 0, sizes tried in order)."""
    size, low, high = init_val, 0, None  # low: largest success; high: smallest failure
    tried: list[int] = []
    while len(tried) < max_trials:
        fitted = trial(size)
        tried.append(size)
        if fitted:
            limit = samples()
            if limit is not None and size >= limit:  # one batch holds every sample: larger ones are the same
                low = max(low, min(size, limit))
                break
            low = max(low, size)
            if high is None:
                size = size * 2 if limit is None else min(size * 2, limit)
                continue
        else:
            high = size if high is None else min(high, size)
            if size == 1:
                break
            if low == 0:  # nothing fitted yet: halve (both modes)
                size = size // 2
                continue
        if mode == "power" or high - low <= 1:  # type: ignore[operator]
            break
        size = (low + high) // 2  # type: ignore[operator]
    return low, tried


def _samples_per_rank(trainer: Trainer, method: str) -> int | None:
    """How many samples this rank's loader of the last trial holds (its sampler's length), if known."""
    loaders = {"fit": [trainer.train_dataloader], "validate": trainer.val_dataloaders, "test": trainer.test_dataloaders,
               "predict": trainer.predict_dataloaders}[method]
    try:
        return len(loaders[0].sampler)
    except (AttributeError, TypeError, IndexError):
        return None


def _trial_flags(method: str, steps: int) -> dict[str, Any]:
    if method == "fit":
        return {"max_steps": steps, "max_epochs": -1, "min_epochs": None, "min_steps": None, "limit_train_batches": 1.0,
                "limit_val_batches": 0, "num_sanity_val_steps": 0, "overfit_batches": 0.0, "accumulate_grad_batches": 1,
                "should_stop": False, "_tuning": True}
    limit = {"validate": "limit_val_batches", "test": "limit_test_batches", "predict": "limit_predict_batches"}[method]
    return {limit: steps, "_tuning": True}


@contextlib.contextmanager
def _isolated(trainer: Trainer, **flags: Any) -> Generator[None, None, None]:
    """Set ``flags`` on the Trainer and silence its loggers; afterwards every attribute is as before.

    Only the Fabric set-up of the model (``_KEPT``) outlives the trials: the model's parameters now
    belong to that set-up, and a later fit reuses it as after any fit.
    """
    saved = dict(vars(trainer))
    metrics = {key: dict(getattr(trainer, key)) for key in ("callback_metrics", "logged_metrics", "progress_bar_metrics")}
    # The Trainer logs through fabric.loggers; emptying that list (and refilling it) silences the trials.
    loggers = trainer.loggers
    kept_loggers = list(loggers)
    loggers.clear()
    for key, value in flags.items():
        setattr(trainer, key, value)
    try:
        yield
    finally:
        loggers[:] = kept_loggers
        for key in [k for k in vars(trainer) if k not in saved and k not in _KEPT]:
            delattr(trainer, key)
        for key, value in saved.items():
            if key not in _KEPT:
                setattr(trainer, key, value)
        for key, values in metrics.items():
            target = getattr(trainer, key)  # the same dict objects the Trainer's Results hold
            target.clear()
            target.update(values)


def _reset_ddp_buffer_sync(trainer: Trainer) -> None:
    # DDP broadcasts buffers in the first forward after a synced one and remembers that per rank; a rank
    # whose forward failed remembers otherwise. Setting the same flag on every rank keeps the next trial's
    # collectives matched (the broadcast sends rank 0's buffers, which every rank restores anyway).
    from torch.nn.parallel import DistributedDataParallel

    model = trainer._fabric_model
    for module in model.modules() if model is not None else []:
        if isinstance(module, DistributedDataParallel):
            module.require_forward_param_sync = True


def _holders(model: Any, datamodule: Any, name: str) -> list[tuple[Any, str]]:
    """Where ``name`` lives: the model, its hparams, the data module (all that have it are updated)."""
    found: list[tuple[Any, str]] = []
    if hasattr(model, name):
        found.append((model, name))
    hparams = getattr(model, "hparams", None)
    if isinstance(hparams, dict) and name in hparams:
        found.append((hparams, name))
    if datamodule is not None:
        if hasattr(datamodule, name):
            found.append((datamodule, name))
        dm_hparams = getattr(datamodule, "hparams", None)
        if isinstance(dm_hparams, dict) and name in dm_hparams:
            found.append((dm_hparams, name))
    return found


def _lr_holders(model: Any, attr_name: str) -> list[tuple[Any, str]]:
    for name in [attr_name] if attr_name else ["lr", "learning_rate"]:
        found = _holders(model, None, name)
        if found:
            return found
    return []


def _set_holders(holders: list[tuple[Any, str]], name: str | None, value: Any) -> None:
    for holder, key in holders:
        key = name or key
        if isinstance(holder, dict):
            holder[key] = value
        else:
            setattr(holder, key, value)


def _put_back(holders: list[tuple[Any, str]], values: list[Any]) -> None:
    for holder, value in zip(holders, values):
        _set_holders([holder], None, value)


def _check_int(call: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{call} must be an integer >= {minimum}. Fix: pass e.g. {max(minimum, 3)}.")
