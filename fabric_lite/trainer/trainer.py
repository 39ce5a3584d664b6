"""Trainer: runs a LightningModule's fit / validate / test / predict loops on the public Fabric API only.

Fabric does the devices, precision, strategy and processes; the Trainer does the loop: hooks in
Lightning's order, gradient accumulation and clipping, schedulers, validation scheduling, limits,
logging (``self.log``), callbacks and checkpoints with resume.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from fabric_lite.errors import ConfigurationError, UsageError
from fabric_lite.fabric import Fabric
from fabric_lite.trainer import checkpointing
from fabric_lite.trainer import flags as F
from fabric_lite.trainer import preemption as preempt
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.datamodule import LightningDataModule
from fabric_lite.trainer.module import LightningModule
from fabric_lite.trainer.optimizers import LRSchedulerConfig, loss_of, parse_optimizers
from fabric_lite.trainer.results import Results
from fabric_lite.trainer.states import get_rng, set_rng
from fabric_lite.utilities.rank_zero import rank_zero_warn

STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")
#: callbacks that decide on monitored metrics run after the module's on_train_epoch_end (Lightning's rule)
MONITORING = ("ModelCheckpoint", "EarlyStopping")


class Trainer:
    """Run a :class:`~fabric_lite.trainer.LightningModule` (Lightning's Trainer flags; Fabric underneath).

    Example:
        >>> trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                   enable_progress_bar=False)
        >>> trainer.max_epochs
        1
    """

    def __init__(
        self,
        *,
        accelerator: Any = "auto",
        strategy: Any = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        plugins: Any = None,
        logger: Any = None,
        callbacks: list[Callback] | Callback | None = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        limit_train_batches: float | None = None,
        limit_val_batches: float | None = None,
        limit_test_batches: float | None = None,
        limit_predict_batches: float | None = None,
        overfit_batches: float = 0.0,
        val_check_interval: float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        **legacy: Any,
    ) -> None:
        given = dict(locals())
        given.pop("self")
        given.pop("legacy")
        valid = list(given)
        special = F.translate_legacy(given, legacy, valid)
        self._flags = given
        g = given
        F.check_values(g)
        vci, fdr = g["val_check_interval"], g["fast_dev_run"]

        # ---------------------------------------------------------------- older spellings that need more than a rename
        accelerator, devices = F.resolve_gpus(special.get("gpus"), bool(special.get("auto_select_gpus", False)),
                                              g["accelerator"], g["devices"])
        self._special = special
        extra_callbacks: list[Callback] = []
        if special.get("lr_scheduler_milestones") is not None:
            from fabric_lite.trainer.callbacks.legacy import LRMilestones

            extra_callbacks.append(LRMilestones(F.parse_milestones(special["lr_scheduler_milestones"])))
        track = special.get("track_grad_norm", -1)
        if track not in (-1, None):
            if not (isinstance(track, (int, float)) and not isinstance(track, bool) and track > 0) and track not in ("inf",):
                raise F.bad("track_grad_norm", track, "is not a p-norm order", "pass -1 (off), a number > 0 such as 2, or 'inf'.")
            from fabric_lite.trainer.callbacks.grad_norm import GradNormMonitor

            extra_callbacks.append(GradNormMonitor(norm_type=track, legacy_names=True))
        if special.get("log_gpu_memory") is not None:
            F.check_choice("log_gpu_memory", special["log_gpu_memory"], F.GPU_MEMORY_MODES)
            from fabric_lite.trainer.callbacks.gpu_memory import GPUMemoryLogger

            extra_callbacks.append(GPUMemoryLogger(mode=special["log_gpu_memory"]))
        if special.get("stochastic_weight_avg"):
            from fabric_lite.trainer.callbacks.swa import StochasticWeightAveraging

            extra_callbacks.append(StochasticWeightAveraging())
        asbs = special.get("auto_scale_batch_size")
        if asbs is True:
            asbs = "power"
        if asbs not in (None, False):
            F.check_choice("auto_scale_batch_size", asbs, F.BATCH_SIZE_MODES)
        self.auto_scale_batch_size: str | None = asbs or None
        self._enable_early_stop = special.get("enable_early_stop")

        # ---------------------------------------------------------------- debugging flags
        fast_dev_run = int(fdr)
        self.fast_dev_run = fast_dev_run
        self.max_epochs = g["max_epochs"]
        self.min_epochs = g["min_epochs"]
        self.max_steps = g["max_steps"]
        self.min_steps = g["min_steps"]
        if self.max_epochs is None:
            self.max_epochs = -1 if self.max_steps != -1 else 1000
        self.limit_train_batches = 1.0 if g["limit_train_batches"] is None else g["limit_train_batches"]
        self.limit_val_batches = 1.0 if g["limit_val_batches"] is None else g["limit_val_batches"]
        self.limit_test_batches = 1.0 if g["limit_test_batches"] is None else g["limit_test_batches"]
        self.limit_predict_batches = 1.0 if g["limit_predict_batches"] is None else g["limit_predict_batches"]
        self.overfit_batches = g["overfit_batches"]
        self.val_check_interval = 1.0 if vci is None else vci
        self.check_val_every_n_epoch = g["check_val_every_n_epoch"]
        self.num_sanity_val_steps = 2 if g["num_sanity_val_steps"] is None else g["num_sanity_val_steps"]
        self.log_every_n_steps = 50 if g["log_every_n_steps"] is None else g["log_every_n_steps"]
        enable_checkpointing = True if g["enable_checkpointing"] is None else bool(g["enable_checkpointing"])
        enable_progress_bar = True if g["enable_progress_bar"] is None else bool(g["enable_progress_bar"])
        logger = g["logger"]
        if self.overfit_batches:
            self.limit_train_batches = self.overfit_batches
            self.limit_val_batches = self.overfit_batches
        if fast_dev_run:
            for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
                setattr(self, name, fast_dev_run)
            self.max_epochs, self.max_steps, self.num_sanity_val_steps = 1, fast_dev_run, 0
            self.val_check_interval, self.check_val_every_n_epoch = 1.0, 1
            logger, enable_checkpointing = False, False
        self.accumulate_grad_batches = g["accumulate_grad_batches"]
        self.gradient_clip_val = g["gradient_clip_val"] or None
        self.gradient_clip_algorithm = g["gradient_clip_algorithm"] or "norm"
        self.inference_mode = g["inference_mode"]
        self._default_root_dir = os.fspath(g["default_root_dir"]) if g["default_root_dir"] is not None else os.getcwd()

        # ---------------------------------------------------------------- reproducibility and speed
        deterministic = g["deterministic"]
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's documented requirement
            torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif deterministic is False:
            torch.use_deterministic_algorithms(False)
        if g["benchmark"] is not None:
            if g["benchmark"] and deterministic:
                rank_zero_warn("Trainer(benchmark=True, deterministic=True): benchmark picks kernels by speed, which is not deterministic; benchmark wins for cuDNN.")
            torch.backends.cudnn.benchmark = bool(g["benchmark"])
        self.deterministic, self.benchmark = deterministic, g["benchmark"]

        # ---------------------------------------------------------------- loggers, Fabric, callbacks
        if logger is None or logger is True:
            from fabric_lite.loggers import CSVLogger

            loggers: list[Any] = [CSVLogger(self._default_root_dir)]
        elif logger is False:
            loggers = []
        else:
            loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
        self._fabric_arguments = {"accelerator": accelerator, "strategy": strategy, "devices": devices, "num_nodes": num_nodes,
                                  "precision": precision, "plugins": plugins, "loggers": loggers}
        self.fabric = Fabric(**self._fabric_arguments)
        self._spawned = False
        plan = self.fabric.plan
        self._unscale_before_step = plan.precision == "16-mixed" and not str(plan.strategy).startswith("deepspeed")
        callbacks = [] if callbacks is None else callbacks
        self.callbacks: list[Callback] = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise F.bad("callbacks", callback, "holds an object that is not a Callback",
                            "subclass fabric_lite.trainer.Callback (or pass one of fabric_lite.trainer.callbacks).")
        self.callbacks.extend(extra_callbacks)
        from fabric_lite.trainer.callbacks.checkpoint import ModelCheckpoint
        from fabric_lite.trainer.callbacks.early_stopping import EarlyStopping
        from fabric_lite.trainer.callbacks.progress import ProgressBar

        if self._enable_early_stop is False:
            self.callbacks = [c for c in self.callbacks if not isinstance(c, EarlyStopping)]
        elif self._enable_early_stop and not any(isinstance(c, EarlyStopping) for c in self.callbacks):
            self.callbacks.append(EarlyStopping(monitor="val_loss", patience=3, mode="min", strict=False))
        if enable_checkpointing and not any(isinstance(c, ModelCheckpoint) for c in self.callbacks):
            self.callbacks.append(ModelCheckpoint())
        if not enable_checkpointing and any(isinstance(c, ModelCheckpoint) for c in self.callbacks) and g["enable_checkpointing"] is False:
            raise ConfigurationError(
                "Trainer(enable_checkpointing=False, callbacks=[ModelCheckpoint(...)]) both turns checkpointing off and "
                "asks for it. Fix: drop enable_checkpointing=False, or the ModelCheckpoint callback."
            )
        if enable_progress_bar and not any(isinstance(c, ProgressBar) for c in self.callbacks):
            self.callbacks.append(ProgressBar())
        self.enable_checkpointing, self.enable_progress_bar = enable_checkpointing, enable_progress_bar

        # ---------------------------------------------------------------- run state
        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
        self.preempted = False  # the last fit stopped on a preemption signal (Preemption plugin)
        self.sanity_checking = False
        self.stage: str | None = None
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.logged_metrics: dict[str, float] = {}
        self.progress_bar_metrics: dict[str, float] = {}
        self.lightning_module: LightningModule | None = None
        self.datamodule: LightningDataModule | None = None
        self.optimizers: list[Any] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self.num_training_batches: int | float = 0
        self.num_val_batches: list[int | float] = []
        self.num_sanity_val_batches: list[int | float] = []
        self.num_test_batches: list[int | float] = []
        self.num_predict_batches: list[int | float] = []
        self.train_dataloader: Any = None
        self.val_dataloaders: list[Any] = []
        self.test_dataloaders: list[Any] = []
        self.predict_dataloaders: list[Any] = []
        self._fabric_model: Any = None
        self._setup_for: LightningModule | None = None
        self._results = Results(self.fabric, self.callback_metrics)
        self._batch_idx = 0
        self._total_batch_idx = 0
        self._phase = "epoch_done"
        self._resume: dict[str, Any] | None = None
        self._epoch_rng: dict[str, Any] | None = None
        self._tuner: Any = None
        self._in_fit = False
        self._tuning = False
        self._preemption: Any = None  # the Preemption plugin during a fit (not during tuner trials)

    # ------------------------------------------------------------------------------ read-only views
    @property
    def default_root_dir(self) -> str:
        return self._default_root_dir

    @property
    def preemption_ckpt_path(self) -> str:
        """Where a fit stopped by ``plugins=[Preemption()]`` saves: ``<default_root_dir>/checkpoints/preempted.ckpt``."""
        return preempt.checkpoint_path(self._default_root_dir)

    @property
    def loggers(self) -> list[Any]:
        return self.fabric.loggers

    @property
    def logger(self) -> Any:
        return self.fabric.loggers[0] if self.fabric.loggers else None

    @property
    def log_dir(self) -> str:
        """The first logger's folder (``default_root_dir`` without a logger)."""
        logger = self.logger
        directory = getattr(logger, "log_dir", None) if logger is not None else None
        return directory or self._default_root_dir

    @property
    def world_size(self) -> int:
        return self.fabric.world_size

    @property
    def global_rank(self) -> int:
        return self.fabric.global_rank

    @property
    def local_rank(self) -> int:
        return self.fabric.local_rank

    @property
    def node_rank(self) -> int:
        return self.fabric.node_rank

    @property
    def is_global_zero(self) -> bool:
        return self.fabric.is_global_zero

    @property
    def strategy(self) -> Any:
        return self.fabric.strategy

    @property
    def training(self) -> bool:
        return self.stage == "train"

    @property
    def validating(self) -> bool:
        return self.stage == "validate"

    @property
    def testing(self) -> bool:
        return self.stage == "test"

    @property
    def predicting(self) -> bool:
        return self.stage == "predict"

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        from fabric_lite.trainer.callbacks.checkpoint import ModelCheckpoint

        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Any:
        found = self.checkpoint_callbacks
        return found[0] if found else None

    @property
    def early_stopping_callback(self) -> Any:
        from fabric_lite.trainer.callbacks.early_stopping import EarlyStopping

        found = [c for c in self.callbacks if isinstance(c, EarlyStopping)]
        return found[0] if found else None

    @property
    def tuner(self) -> Any:
        """The batch-size / learning-rate tuner for this Trainer (``fabric_lite.trainer.tuner.Tuner``), or None if absent."""
        if self._tuner is None:
            try:
                from fabric_lite.trainer.tuner import Tuner  # type: ignore[import-not-found]
            except ImportError:
                return None
            self._tuner = Tuner(self)
        return self._tuner

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps the fit will make (for schedulers such as OneCycleLR); known once the loaders are set up."""
        per_epoch = math.ceil(self.num_training_batches / self.accumulate_grad_batches) if self.num_training_batches != float("inf") else float("inf")
        total = per_epoch * self.max_epochs if self.max_epochs != -1 else float("inf")
        return min(total, self.max_steps) if self.max_steps != -1 else total

    # ------------------------------------------------------------------------------ entry points
    def fit(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train ``model``; ``ckpt_path`` resumes model, optimizers, schedulers, counters and callback states."""
        self._check_model(model, "fit")
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        self._check_data("fit", train_dataloaders, datamodule)
        return self._launch("_fit_impl", model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)

    def tune(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
             datamodule: LightningDataModule | None = None, scale_batch_size_kwargs: dict[str, Any] | None = None,
             lr_find_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the tuner (``trainer.tuner``): the batch-size scaler when ``auto_scale_batch_size`` is set, the LR finder
        when ``lr_find_kwargs`` is given. ``fit`` calls this first when ``auto_scale_batch_size`` is set.

        The tuner is ``fabric_lite.trainer.tuner.Tuner(trainer)``; it calls
        ``scale_batch_size(model, train_dataloaders=, val_dataloaders=, datamodule=, mode=, **scale_batch_size_kwargs)``
        and ``lr_find(model, train_dataloaders=, val_dataloaders=, datamodule=, **lr_find_kwargs)``, and may use
        :meth:`save_checkpoint` / :meth:`restore_checkpoint` and nested :meth:`fit` calls (they do not tune again).
        """
        tuner = self.tuner
        if tuner is None:
            raise UsageError(
                f"Trainer(auto_scale_batch_size={self.auto_scale_batch_size!r}) / trainer.tune() needs the tuner "
                f"(fabric_lite.trainer.tuner), which this installation does not have. Fix: drop the flag, or "
                f"install a fabric_lite version that ships fabric_lite.trainer.tuner."
            )
        data = {"train_dataloaders": train_dataloaders, "val_dataloaders": val_dataloaders, "datamodule": datamodule}
        result: dict[str, Any] = {}
        self._tuning = True
        try:
            if self.auto_scale_batch_size:
                result["scale_batch_size"] = tuner.scale_batch_size(
                    model, mode=self.auto_scale_batch_size, **data, **(scale_batch_size_kwargs or {}))
            if lr_find_kwargs is not None:
                result["lr_find"] = tuner.lr_find(model, **data, **lr_find_kwargs)
        finally:
            self._tuning = False
        return result

    def validate(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: Any = None,
                 verbose: bool = True, datamodule: LightningDataModule | None = None) -> list[dict[str, float]]:
        """Run the validation loop once; returns one dict of epoch metrics per dataloader."""
        return self._launch("_eval_impl", "validate", model, dataloaders, ckpt_path, verbose, datamodule)

    def test(self, model: LightningModule | None = None, dataloaders: Any = None, ckpt_path: Any = None,
             verbose: bool = True, datamodule: LightningDataModule | None = None) -> list[dict[str, float]]:
        """Run the test loop; ``ckpt_path`` is ``"best"``, ``"last"``, a path, or None (the weights in memory)."""
        return self._launch("_eval_impl", "test", model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(self, model: LightningModule | None = None, dataloaders: Any = None, datamodule: LightningDataModule | None = None,
                return_predictions: bool = True, ckpt_path: Any = None) -> list[Any] | None:
        """Run ``predict_step`` over the data; returns this process's outputs (a list per dataloader if several)."""
        return self._launch("_predict_impl", model, dataloaders, datamodule, return_predictions, ckpt_path)

    def _launch(self, method: str, *args: Any) -> Any:
        if self.fabric.plan.launcher in ("spawn", "fork", "forkserver"):
            if self._spawned:  # each call starts its processes anew (as Lightning's ddp_spawn does): a fresh Fabric
                self.fabric = Fabric(**self._fabric_arguments)
                self._setup_for = None
            self._spawned = True
            output = self.fabric.launch(_run_spawned, self, method, args)
            # Bytes written by our own rank 0 (tensors cannot cross a queue once their process has exited).
            result, state = torch.load(io.BytesIO(output), weights_only=False) if output is not None else (None, None)
            model = args[0] if method != "_eval_impl" else args[1]
            if state is not None and isinstance(model, LightningModule):
                model.load_state_dict(state)  # the parent's copy gets the trained weights, as Lightning does
            return result
        self.fabric.launch()
        return getattr(self, method)(*args)

    def _check_model(self, model: Any, method: str) -> None:
        if not isinstance(model, LightningModule):
            raise ConfigurationError(
                f"Trainer.{method}(model={type(model).__name__}) needs a fabric_lite.trainer.LightningModule. "
                f"Fix: subclass LightningModule (from fabric_lite.trainer import LightningModule)."
            )

    def _check_data(self, method: str, dataloaders: Any, datamodule: Any) -> None:
        if dataloaders is not None and datamodule is not None:
            raise ConfigurationError(
                f"Trainer.{method}(dataloaders, datamodule=...) got both. Fix: pass either dataloaders or datamodule."
            )

    # ------------------------------------------------------------------------------ hooks
    def _call_hook(self, name: str, *args: Any, module: bool = True, callbacks: Iterable[Callback] | None = None) -> Any:
        """Callbacks first (in the given order), then the LightningModule; returns the module's answer."""
        previous = self._results.hook
        self._results.hook = name
        try:
            pl_module = self.lightning_module
            for callback in self.callbacks if callbacks is None else callbacks:
                getattr(callback, name)(self, pl_module, *args)
            method = getattr(pl_module, name, None) if module and pl_module is not None else None
            return method(*args) if method is not None else None
        finally:
            self._results.hook = previous

    def _call_module(self, name: str, *args: Any) -> Any:
        previous = self._results.hook
        self._results.hook = name
        try:
            return getattr(self.lightning_module, name)(*args)
        finally:
            self._results.hook = previous

    def _attach(self, model: LightningModule, datamodule: LightningDataModule | None, stage: str) -> None:
        model.trainer = self
        self.lightning_module = model
        self.datamodule = datamodule
        if datamodule is not None:
            datamodule.trainer = self
        self.stage = stage
        self._results = Results(self.fabric, self.callback_metrics)
        self._results.stage = "train" if stage == "fit" else stage

    def _prepare_and_setup(self, stage: str) -> None:
        model, datamodule = self.lightning_module, self.datamodule
        for target in (datamodule, model):
            if target is None or not callable(getattr(target, "prepare_data", None)):
                continue
            per_node = getattr(target, "prepare_data_per_node", True)
            if (self.local_rank == 0) if per_node else self.is_global_zero:
                target.prepare_data()
        if self.world_size > 1:
            self.fabric.barrier("prepare_data")
        if datamodule is not None:
            datamodule.setup(stage)
        self._call_hook("setup", stage)

    def _teardown(self, stage: str) -> None:
        if self.datamodule is not None:
            self.datamodule.teardown(stage)
        self._call_hook("teardown", stage)

    # ------------------------------------------------------------------------------ fit
    def _fit_impl(self, model: LightningModule, train_dataloaders: Any, val_dataloaders: Any,
                  datamodule: LightningDataModule | None, ckpt_path: Any) -> None:
        if self.auto_scale_batch_size and not self._tuning:
            self.tune(model, train_dataloaders, val_dataloaders, datamodule)  # its trial fits run in here too
        self._attach(model, datamodule, "fit")
        was_in_fit, self._in_fit = self._in_fit, True
        self.should_stop = False
        self.preempted = False
        self._merge_model_callbacks(model)
        self._prepare_and_setup("fit")
        self._setup_model(model, with_optimizers=True)
        train_loader = train_dataloaders if train_dataloaders is not None else self._source("train_dataloader")
        if train_loader is None:
            raise ConfigurationError(
                "Trainer.fit(model) found no training data: no train_dataloaders, no datamodule, and no "
                "model.train_dataloader(). Fix: trainer.fit(model, train_loader) or trainer.fit(model, datamodule=dm)."
            )
        val_loaders = val_dataloaders if val_dataloaders is not None else self._source("val_dataloader")
        self.train_dataloader = self._setup_loader(train_loader, train=True)
        self.val_dataloaders = [self._setup_loader(d, train=False) for d in _as_list(val_loaders)]
        self.num_training_batches = _limited(self.train_dataloader, self.limit_train_batches, "limit_train_batches")
        self.num_val_batches = [_limited(d, self.limit_val_batches, "limit_val_batches") for d in self.val_dataloaders]
        self._val_check_batch = self._compute_val_check_batch()
        self.current_epoch, self.global_step, self._total_batch_idx, self._phase = 0, 0, 0, "epoch_done"
        self._resume = None
        self._preemption = preempt.plugin_of(self)
        if ckpt_path is None and self._preemption is not None:
            ckpt_path = preempt.auto_resume_path(self)  # a requeued job continues where it was stopped
        if ckpt_path is not None:
            self._restore(self._resolve_ckpt_path(ckpt_path, "fit"), training=True)
        for lg in self.loggers:
            hparams = dict(model.hparams)
            if hparams and getattr(model, "_log_hyperparams", True):
                lg.log_hyperparams(hparams)
        try:
            self._call_hook("on_fit_start")
            self._run_sanity_check()
            self._results.stage = "train"
            self.stage = "train"
            self._call_hook("on_train_start")
            self._fit_loop()
            self.stage = "train"
            if not self.preempted:  # a preempted fit is not finished: no on_train_end / on_fit_end (as in Lightning)
                self._call_hook("on_train_end")
                self._call_hook("on_fit_end")
            self._teardown("fit")
        except BaseException as error:
            self._on_exception(error)
            raise
        finally:
            self._in_fit = was_in_fit
        self._finalize_loggers("aborted" if self.preempted else "success")
        self.stage = None
        if self.preempted:
            preempt.requeue(self)
        else:
            preempt.discard(self)

    def _merge_model_callbacks(self, model: LightningModule) -> None:
        extra = model.configure_callbacks() or []
        extra = list(extra) if isinstance(extra, (list, tuple)) else [extra]
        if extra:
            types = {type(c) for c in extra}
            self.callbacks = [c for c in self.callbacks if type(c) not in types] + extra

    def _source(self, hook: str) -> Any:
        if self.datamodule is not None:
            return getattr(self.datamodule, hook)()
        method = getattr(self.lightning_module, hook, None)
        return method() if callable(method) else None

    def _setup_model(self, model: LightningModule, *, with_optimizers: bool) -> None:
        if with_optimizers:
            optimizers, configs = parse_optimizers(self._call_module("configure_optimizers"))
            if not optimizers:
                rank_zero_warn("configure_optimizers returned no optimizer: fit runs training_step without stepping anything.")
            if len(optimizers) > 1 and model.automatic_optimization:
                raise ConfigurationError(
                    f"configure_optimizers returned {len(optimizers)} optimizers, but automatic optimisation steps one. "
                    f"Fix: set self.automatic_optimization = False in __init__ and step them in training_step "
                    f"(opt_g, opt_d = self.optimizers(); self.manual_backward(loss); opt_g.step()), or return one optimizer."
                )
        else:
            optimizers, configs = [], []
        if self._setup_for is not model:
            setup = self.fabric.setup(model, *optimizers)
            fabric_model, fabric_optimizers = (setup, []) if not optimizers else (setup[0], list(setup[1:]))
            for name in STEP_METHODS:
                fabric_model.mark_forward_method(name)
            self._fabric_model, self._setup_for = fabric_model, model
        else:
            fabric_optimizers = []
            if optimizers:
                wrapped = self.fabric.setup_optimizers(*optimizers)
                fabric_optimizers = list(wrapped) if isinstance(wrapped, tuple) else [wrapped]
        if with_optimizers:
            self.optimizers = fabric_optimizers
            self.lr_scheduler_configs = configs

    def _setup_loader(self, loader: Any, *, train: bool) -> Any:
        if isinstance(loader, DataLoader) and train and self.overfit_batches and isinstance(loader.sampler, RandomSampler):
            rank_zero_warn("Trainer(overfit_batches=...) turns shuffling of the training data off, so the same batches repeat.")
            loader = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                                collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last)
        if not isinstance(loader, DataLoader):
            return loader  # an iterable the user shards themselves
        # Batches are moved by the Trainer, between on_before_batch_transfer and on_after_batch_transfer.
        # Evaluation splits without padding so that each sample counts once, except where a forward pass is
        # itself a collective (sharded parameters): there every rank must run the same number of batches.
        even = train or getattr(self.fabric.strategy, "collective_forward", False)
        return self.fabric.setup_dataloaders(loader, move_to_device=False, even_batches=even)

    def _compute_val_check_batch(self) -> int | float:
        if not self.val_dataloaders or not any(self.num_val_batches):
            return float("inf")
        vci = self.val_check_interval
        if isinstance(vci, float):
            if self.num_training_batches == float("inf"):
                if vci != 1.0:
                    raise F.bad("val_check_interval", vci, "is a fraction, but the training data has no length",
                                "pass a number of batches, e.g. val_check_interval=100.")
                return float("inf")
            return max(1, int(self.num_training_batches * vci))
        if self.check_val_every_n_epoch is not None and vci > self.num_training_batches:
            raise F.bad("val_check_interval", vci, f"is more than the {self.num_training_batches} training batches of an epoch",
                        f"pass at most {self.num_training_batches}, or check_val_every_n_epoch=None to count batches across epochs.")
        return vci

    # ------------------------------------------------------------------------------ the epoch loop
    def _can_stop(self) -> bool:
        return (self.min_epochs is None or self.current_epoch >= self.min_epochs) and (
            self.min_steps is None or self.global_step >= self.min_steps)

    def _done(self) -> bool:
        if self.max_steps != -1 and self.global_step >= self.max_steps:
            return True
        if self.max_epochs != -1 and self.current_epoch >= self.max_epochs:
            return True
        if self.should_stop:
            if self._can_stop():
                return True
            rank_zero_warn(
                f"Trainer was asked to stop at epoch {self.current_epoch}, but min_epochs={self.min_epochs} / "
                f"min_steps={self.min_steps} are not reached yet: training goes on."
            )
            self.should_stop = False
        return False

    def _fit_loop(self) -> None:
        resume = self._resume
        self._resume = None
        if resume is not None and resume["phase"] in ("epoch_batches_done", "epoch_end_hooks_done"):
            set_rng(resume["rng"])
            self._end_epoch(run_hooks=resume["phase"] == "epoch_batches_done", results_lost=True)
            resume = None
        while not self.preempted and not self._done():
            self._train_epoch(resume)
            resume = None

    def _train_epoch(self, resume: dict[str, Any] | None) -> None:
        model = self.lightning_module
        assert model is not None
        self.stage = "train"
        self._results.stage = "train"
        self._results.reset("train")
        model.train()
        self._phase = "in_epoch"
        self._batch_idx = 0
        skip = done = 0
        num_batches = self.num_training_batches
        loader_continues = resume is not None and resume.get("loader_continues", False)
        if resume is not None and resume["phase"] in ("in_epoch", "batch_done"):
            done = resume["batches_done"]
            if not loader_continues and done < num_batches:  # no loader state: replay the epoch's draw, skip the trained
                skip = done
                set_rng(resume["epoch_rng"])
        self._epoch_rng = get_rng()
        self._call_hook("on_train_epoch_start")
        # A stateful loader (fabric_lite's set-up dataloaders) continues its interrupted epoch by itself:
        # same order, the trained batches dropped at the index level, the random state put back.
        iterator = iter(self.train_dataloader)
        stop_epoch = False
        for batch_idx in range(skip):  # resume mid-epoch: the same order, the batches already trained skipped
            next(iterator)
        if done and not loader_continues:
            set_rng(resume["rng"])  # type: ignore[index]
        if done:
            self._batches_done = done
            if resume["phase"] == "batch_done" and self._should_validate(done - 1):  # type: ignore[index]
                self._run_validation()  # the checkpoint was written before this batch's validation
        batch_idx = done
        while batch_idx < num_batches:
            try:
                batch = next(iterator)
            except StopIteration:
                break
            self._batch_idx = batch_idx
            is_last = batch_idx + 1 == num_batches
            batch = self._transfer(batch, 0)
            self._results.batch = batch
            response = self._call_hook("on_train_batch_start", batch, batch_idx)
            if response == -1:
                break
            if model.automatic_optimization:
                outputs = self._automatic_step(batch, batch_idx, is_last)
            else:
                outputs = self._call_step("training_step", batch, batch_idx)
            self._total_batch_idx += 1
            self._batches_done = batch_idx + 1
            if is_last:
                self._update_schedulers("epoch", plateau=False)
            self._phase = "batch_done"  # a checkpoint written now resumes with this batch's validation still due
            self._call_hook("on_train_batch_end", outputs, batch, batch_idx)
            self._log_step()
            self._phase = "in_epoch"
            if self._should_validate(batch_idx):
                self._run_validation()
            batch_idx += 1
            if self.max_steps != -1 and self.global_step >= self.max_steps:
                stop_epoch = True
            if self.should_stop and self._can_stop():
                stop_epoch = True
            # After an optimizer step only: gradients accumulated for a later step are not in a checkpoint.
            if self._preemption is not None and (not model.automatic_optimization or batch_idx % self.accumulate_grad_batches == 0
                                                 or is_last) and self.fabric.should_stop():
                preempt.save(self, epoch_finished=is_last or stop_epoch)
                self._results.batch = None
                return
            if stop_epoch:
                break
        self._results.batch = None
        self._phase = "epoch_batches_done"
        self._end_epoch(run_hooks=True, results_lost=False)

    def _end_epoch(self, *, run_hooks: bool, results_lost: bool) -> None:
        self.stage = "train"
        self._results.stage = "train"
        if run_hooks:
            # epoch means visible to the hooks (EarlyStopping on train_loss, the progress bar)
            self.progress_bar_metrics.update(self._results.epoch_values(stage="train")[1])
            monitoring = [c for c in self.callbacks if type(c).__name__ in MONITORING or getattr(c, "_monitoring", False)]
            others = [c for c in self.callbacks if c not in monitoring]
            self._call_hook("on_train_epoch_end", callbacks=others)
            self._phase = "epoch_end_hooks_done"
            self._call_hook("on_train_epoch_end", callbacks=monitoring, module=False)
        logged, bar = self._results.epoch_values(stage="train")
        if logged and not results_lost:
            self._log_metrics({**logged, "epoch": self.current_epoch})
        self.progress_bar_metrics.update(bar)
        self._update_schedulers("epoch", plateau=True)
        self._results.reset("train")
        self.current_epoch += 1
        self._phase = "epoch_done"

    def _should_validate(self, batch_idx: int) -> bool:
        if self._val_check_batch == float("inf"):
            return False
        if self.check_val_every_n_epoch is not None and (self.current_epoch + 1) % self.check_val_every_n_epoch != 0:
            return False
        current = self._total_batch_idx - 1 if self.check_val_every_n_epoch is None else batch_idx
        return (current + 1) % self._val_check_batch == 0

    def _transfer(self, batch: Any, dataloader_idx: int) -> Any:
        hooks = [self.lightning_module] + ([self.datamodule] if self.datamodule is not None else [])
        for target in hooks:
            batch = target.on_before_batch_transfer(batch, dataloader_idx)
        batch = self.lightning_module.transfer_batch_to_device(batch, self.fabric.device, dataloader_idx)
        for target in hooks:
            batch = target.on_after_batch_transfer(batch, dataloader_idx)
        return batch

    def _call_step(self, name: str, *args: Any) -> Any:
        previous = self._results.hook
        self._results.hook = name
        try:
            return getattr(self._fabric_model, name)(*args)
        finally:
            self._results.hook = previous

    def _automatic_step(self, batch: Any, batch_idx: int, is_last: bool) -> Any:
        model, fabric_model = self.lightning_module, self._fabric_model
        optimizer = self.optimizers[0] if self.optimizers else None
        accumulate = self.accumulate_grad_batches
        boundary = (batch_idx + 1) % accumulate == 0 or is_last
        with self.fabric.no_backward_sync(fabric_model, enabled=not boundary and self.world_size > 1):
            outputs = self._call_step("training_step", batch, batch_idx)
            loss = loss_of(outputs)
            if loss is None or optimizer is None:
                return outputs
            if batch_idx % accumulate == 0 or self._needs_zero_grad:
                self._call_hook("on_before_zero_grad", optimizer)
                model.optimizer_zero_grad(self.current_epoch, batch_idx, optimizer)
                self._needs_zero_grad = False
            scaled = loss / accumulate if accumulate > 1 else loss
            self._call_hook("on_before_backward", scaled)
            model.backward(scaled)
            self._call_hook("on_after_backward")
        if boundary:
            if self._unscale_before_step:
                # As in Lightning, hooks see unscaled gradients under a GradScaler: clipping at an infinite norm
                # unscales them (once per step; the real clipping after the hook does not unscale again).
                self.fabric.clip_gradients(fabric_model, optimizer, max_norm=float("inf"), error_if_nonfinite=False)
            self._call_hook("on_before_optimizer_step", optimizer)
            self._call_module("configure_gradient_clipping", optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)
            model.optimizer_step(self.current_epoch, batch_idx, optimizer)
            self._after_optimizer_step()
            self._needs_zero_grad = True
        return outputs

    _needs_zero_grad = False

    def _after_optimizer_step(self) -> None:
        self.global_step += 1
        self._update_schedulers("step", plateau=True)

    def _update_schedulers(self, interval: str, *, plateau: bool) -> None:
        for config in self.lr_scheduler_configs:
            if config.interval != interval or (config.reduce_on_plateau and not plateau):
                continue
            if interval == "epoch" and not plateau and config.reduce_on_plateau:
                continue
            if interval == "epoch" and plateau and not config.reduce_on_plateau:
                continue
            counter = self.global_step if interval == "step" else self.current_epoch + 1
            if counter % config.frequency != 0:
                continue
            if config.reduce_on_plateau:
                value = self.callback_metrics.get(config.monitor or "")
                if value is None:
                    if config.strict:
                        raise ConfigurationError(
                            f"The ReduceLROnPlateau scheduler monitors {config.monitor!r}, which no self.log call recorded "
                            f"(recorded: {', '.join(sorted(self.callback_metrics)) or 'nothing'}). Fix: log it, or set "
                            f"'monitor' in the lr_scheduler config to one of those."
                        )
                    rank_zero_warn(f"ReduceLROnPlateau: {config.monitor!r} was not logged; the scheduler did not step.")
                    continue
                config.scheduler.step(float(value))
            else:
                config.scheduler.step()

    # ------------------------------------------------------------------------------ evaluation loops
    def _run_sanity_check(self) -> None:
        if not self.val_dataloaders or self.num_sanity_val_steps == 0 or not any(self.num_val_batches):
            return
        steps = self.num_sanity_val_steps
        self.num_sanity_val_batches = [n if steps == -1 else min(n, steps) for n in self.num_val_batches]
        self.sanity_checking = True
        self._call_hook("on_sanity_check_start")
        self._evaluation_loop("validate", self.val_dataloaders, self.num_sanity_val_batches, log=False)
        self._call_hook("on_sanity_check_end")
        self.sanity_checking = False
        # Sanity values must not decide anything (checkpoints, early stopping, schedulers).
        for key in [k for k in self.callback_metrics]:
            del self.callback_metrics[key]

    def _run_validation(self) -> None:
        self._evaluation_loop("validate", self.val_dataloaders, self.num_val_batches, log=True)
        self.stage = "train"
        self._results.stage = "train"

    def _evaluation_loop(self, stage: str, loaders: list[Any], limits: list[int | float], *, log: bool) -> list[dict[str, float]]:
        prefix = "validation" if stage == "validate" else "test"
        was_stage = self.stage
        self.stage = stage
        self._results.stage = stage
        self._results.reset(stage)
        model = self.lightning_module
        was_training = model.training
        self._call_module(f"on_{prefix}_model_eval")
        self._call_hook(f"on_{prefix}_start")
        outputs: list[dict[str, float]] = []
        grad_context = torch.inference_mode if self.inference_mode else torch.no_grad
        self._call_hook(f"on_{prefix}_epoch_start")
        several = len(loaders) > 1
        for dataloader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            extra = (dataloader_idx,) if several else ()
            # Several loaders: each one's metrics are kept apart as "<name>/dataloader_idx_<i>" (Lightning's names).
            self._results.suffix = f"/dataloader_idx_{dataloader_idx}" if several else ""
            with grad_context():
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= limit:
                        break
                    batch = self._transfer(batch, dataloader_idx)
                    self._results.batch = batch
                    self._call_hook(f"on_{prefix}_batch_start", batch, batch_idx, *extra)
                    out = self._call_step(f"{prefix}_step" if prefix == "test" else "validation_step", batch, batch_idx, *extra)
                    self._call_hook(f"on_{prefix}_batch_end", out, batch, batch_idx, *extra)
            self._results.batch = None
        self._results.suffix = ""
        self._call_hook(f"on_{prefix}_epoch_end")
        logged, bar = self._results.epoch_values(stage=stage)
        for dataloader_idx in range(len(loaders)):
            tag = f"/dataloader_idx_{dataloader_idx}"
            outputs.append({k: v for k, v in logged.items() if not several or k.endswith(tag) or "/dataloader_idx_" not in k})
        if log and logged:
            self._log_metrics({**logged, "epoch": self.current_epoch} if stage == "validate" else logged)
        if log:
            self.progress_bar_metrics.update(bar)
        self._results.reset(stage)
        self._call_hook(f"on_{prefix}_end")
        if was_training:
            self._call_module(f"on_{prefix}_model_train")
        self.stage = was_stage
        return outputs

    def _eval_impl(self, stage: str, model: LightningModule | None, dataloaders: Any, ckpt_path: Any, verbose: bool,
                   datamodule: LightningDataModule | None) -> list[dict[str, float]]:
        model = self._model_for(stage, model)
        self._check_data(stage, dataloaders, datamodule)
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        self._attach(model, datamodule, stage)
        self._prepare_and_setup(stage)
        self._setup_model(model, with_optimizers=False)
        if ckpt_path is not None:
            self._restore(self._resolve_ckpt_path(ckpt_path, stage), training=False)
        hook = "val_dataloader" if stage == "validate" else "test_dataloader"
        loaders = dataloaders if dataloaders is not None else self._source(hook)
        if loaders is None:
            raise ConfigurationError(
                f"Trainer.{stage}(model) found no data: no dataloaders, no datamodule, no model.{hook}(). "
                f"Fix: trainer.{stage}(model, dataloaders=loader) or datamodule=dm."
            )
        wrapped = [self._setup_loader(d, train=False) for d in _as_list(loaders)]
        limit = self.limit_val_batches if stage == "validate" else self.limit_test_batches
        counts = [_limited(d, limit, "limit_val_batches" if stage == "validate" else "limit_test_batches") for d in wrapped]
        if stage == "validate":
            self.val_dataloaders, self.num_val_batches = wrapped, counts
        else:
            self.test_dataloaders, self.num_test_batches = wrapped, counts
        try:
            results = self._evaluation_loop(stage, wrapped, counts, log=True)
            self._teardown(stage)
        except BaseException as error:
            self._on_exception(error)
            raise
        if verbose and self.is_global_zero:
            for index, metrics in enumerate(results):
                shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
                print(f"{stage} results (dataloader {index}): {shown or 'nothing logged'}")
        self._finalize_loggers("success")
        self.stage = None
        return results

    def _predict_impl(self, model: LightningModule | None, dataloaders: Any, datamodule: LightningDataModule | None,
                      return_predictions: bool, ckpt_path: Any) -> list[Any] | None:
        model = self._model_for("predict", model)
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        self._check_data("predict", dataloaders, datamodule)
        self._attach(model, datamodule, "predict")
        self._prepare_and_setup("predict")
        self._setup_model(model, with_optimizers=False)
        if ckpt_path is not None:
            self._restore(self._resolve_ckpt_path(ckpt_path, "predict"), training=False)
        loaders = dataloaders if dataloaders is not None else self._source("predict_dataloader")
        if loaders is None:
            raise ConfigurationError(
                "Trainer.predict(model) found no data. Fix: trainer.predict(model, dataloaders=loader) or datamodule=dm."
            )
        wrapped = [self._setup_loader(d, train=False) for d in _as_list(loaders)]
        self.predict_dataloaders = wrapped
        self.num_predict_batches = [_limited(d, self.limit_predict_batches, "limit_predict_batches") for d in wrapped]
        several = len(wrapped) > 1
        all_predictions: list[list[Any]] = []
        grad_context = torch.inference_mode if self.inference_mode else torch.no_grad
        try:
            self._call_module("on_predict_model_eval")
            self._call_hook("on_predict_start")
            self._call_hook("on_predict_epoch_start")
            for dataloader_idx, (loader, limit) in enumerate(zip(wrapped, self.num_predict_batches)):
                extra = (dataloader_idx,) if several else ()
                predictions: list[Any] = []
                with grad_context():
                    for batch_idx, batch in enumerate(loader):
                        if batch_idx >= limit:
                            break
                        batch = self._transfer(batch, dataloader_idx)
                        self._call_hook("on_predict_batch_start", batch, batch_idx, *extra)
                        out = self._call_step("predict_step", batch, batch_idx, *extra)
                        self._call_hook("on_predict_batch_end", out, batch, batch_idx, *extra)
                        if return_predictions:
                            predictions.append(out)
                all_predictions.append(predictions)
            self._call_hook("on_predict_epoch_end")
            self._call_hook("on_predict_end")
            self._teardown("predict")
        except BaseException as error:
            self._on_exception(error)
            raise
        self.stage = None
        if not return_predictions:
            return None
        return all_predictions[0] if not several else all_predictions

    def _model_for(self, stage: str, model: LightningModule | None) -> LightningModule:
        if model is None:
            if self.lightning_module is None:
                raise ConfigurationError(
                    f"Trainer.{stage}() got no model and this Trainer has not run one yet. Fix: trainer.{stage}(model, ...)."
                )
            return self.lightning_module
        self._check_model(model, stage)
        return model

    # ------------------------------------------------------------------------------ logging
    def _log_step(self) -> None:
        logged, bar = self._results.step_values(sync=True)
        self.progress_bar_metrics.update(bar)
        if logged and self._total_batch_idx % self.log_every_n_steps == 0:
            self._log_metrics(logged)

    def _log_metrics(self, metrics: Mapping[str, float]) -> None:
        self.logged_metrics.update(metrics)
        if self.loggers and not self.sanity_checking:
            self.fabric.log_dict(dict(metrics), step=self.global_step)

    def _finalize_loggers(self, status: str) -> None:
        for lg in self.loggers:
            lg.finalize(status)

    def _on_exception(self, error: BaseException) -> None:
        for callback in self.callbacks:
            callback.on_exception(self, self.lightning_module, error)
        self._finalize_loggers("failed")
        self.stage = None

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filepath: str | os.PathLike[str], weights_only: bool = False) -> None:
        """Write model, optimizers, schedulers, counters, RNG, loader position and callback states (``fabric.save``, atomic).

        Every process must call it (a collective). The tuner and resume use :meth:`restore_checkpoint`.
        """
        checkpointing.save_checkpoint(self, filepath, weights_only)

    def restore_checkpoint(self, filepath: str | os.PathLike[str]) -> None:
        """Load a checkpoint written by :meth:`save_checkpoint` into the running model, optimizers and Trainer state."""
        checkpointing.restore(self, os.fspath(filepath), training=bool(self.optimizers))

    def _resolve_ckpt_path(self, ckpt_path: Any, stage: str) -> str:
        return checkpointing.resolve_ckpt_path(self, ckpt_path, stage)

    def _restore(self, path: str, *, training: bool) -> None:
        checkpointing.restore(self, path, training=training)


def _run_spawned(fabric: Fabric, trainer: Trainer, method: str, args: tuple[Any, ...]) -> Any:
    """The function each spawned process runs: the Trainer method, then rank 0's result and weights for the parent."""
    trainer.fabric = fabric
    trainer._results = Results(fabric, trainer.callback_metrics)
    result = getattr(trainer, method)(*args)
    model = trainer.lightning_module
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()} if model is not None else None
    buffer = io.BytesIO()
    torch.save((result, weights), buffer)
    return buffer.getvalue()


def _as_list(loaders: Any) -> list[Any]:
    if loaders is None:
        return []
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def _limited(loader: Any, limit: float, flag: str) -> int | float:
    try:
        total: int | float = len(loader)
    except TypeError:
        total = float("inf")
    if F.is_int(limit):
        return min(int(limit), total)
    if total == float("inf"):
        if limit not in (0.0, 1.0):
            raise F.bad(flag, limit, "is a fraction, but the dataloader has no length", f"pass a number of batches, e.g. {flag}=100.")
        return total if limit == 1.0 else 0
    count = int(total * limit)
    if count == 0 and limit > 0 and total > 0:
        count = 1  # a small fraction of a small loader still runs one batch
    return count


