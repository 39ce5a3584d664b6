"""TrainerConfig: the Trainer's flags, checked and resolved once (defaults, fast_dev_run, overfit_batches) into a frozen value.

:func:`resolve` turns the constructor's keywords (current and older spellings) into the config, the
arguments of the Trainer's :class:`~fabric_lite.Fabric` and the callbacks that older flags ask for;
:func:`default_callbacks` adds checkpointing, early stopping, the progress bar, the model summary and the profiler's
hooks where switched on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer import flags as F
from fabric_lite.trainer.callbacks.base import Callback
from fabric_lite.trainer.profilers import PassThroughProfiler, resolve_profiler
from fabric_lite.utilities.rank_zero import rank_zero_warn


@dataclass(frozen=True)
class TrainerConfig:
    """The resolved flags of a Trainer (read them as ``trainer.<name>``; the tuner runs trials on a replaced copy)."""

    fast_dev_run: int
    max_epochs: int
    min_epochs: int | None
    max_steps: int
    min_steps: int | None
    limit_train_batches: int | float
    limit_val_batches: int | float
    limit_test_batches: int | float
    limit_predict_batches: int | float
    overfit_batches: int | float
    val_check_interval: int | float
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int
    log_every_n_steps: int
    accumulate_grad_batches: int
    gradient_clip_val: float | None
    gradient_clip_algorithm: str
    inference_mode: bool
    default_root_dir: str
    deterministic: bool | str | None
    benchmark: bool | None
    enable_checkpointing: bool
    enable_progress_bar: bool
    auto_scale_batch_size: str | None
    enable_early_stop: bool | None
    #: log a ModelSummary table at the start of fit (a ModelSummary callback is added unless one is passed)
    enable_model_summary: bool = True
    #: the Profiler (``PassThroughProfiler`` for ``profiler=None``); ``trainer.profiler``
    profiler: Any = None
    #: a time budget for fit (Lightning's: "DD:HH:MM:SS", a timedelta or a dict); a Timer callback enforces it
    max_time: Any = None
    #: run every stage under ``torch.autograd.set_detect_anomaly(True)`` (a NaN in backward names its operation)
    detect_anomaly: bool = False
    #: give each rank its share of the data (DistributedSampler); False: the loaders are used as given on every rank
    use_distributed_sampler: bool = True


def resolve(given: dict[str, Any], legacy: dict[str, Any]) -> tuple[TrainerConfig, dict[str, Any], list[Callback]]:
    """Check ``given`` (the keywords) and ``legacy`` (older spellings); returns (config, Fabric arguments, extra callbacks)."""
    profiler = resolve_profiler(given.get("profiler"))
    special = F.translate_legacy(given, legacy, list(given) + ["profiler"])
    g = given
    F.check_values(g)
    accelerator, devices = F.resolve_gpus(special.get("gpus"), bool(special.get("auto_select_gpus", False)),
                                          g["accelerator"], g["devices"])
    extra = _legacy_callbacks(special)
    for name in ("detect_anomaly", "use_distributed_sampler"):
        if not isinstance(g[name], bool):
            raise F.bad(name, g[name], "is not True or False", f"pass {name}=True or {name}=False.")
    if g["max_time"] is not None:
        from fabric_lite.trainer.callbacks.timer import Timer

        extra.append(Timer(duration=g["max_time"], interval="step"))  # as Lightning: checked after every step
    asbs = special.get("auto_scale_batch_size")
    if asbs is True:
        asbs = "power"
    if asbs not in (None, False):
        F.check_choice("auto_scale_batch_size", asbs, F.BATCH_SIZE_MODES)

    fast_dev_run, max_steps = int(g["fast_dev_run"]), g["max_steps"]
    v: dict[str, Any] = {
        "max_epochs": g["max_epochs"] if g["max_epochs"] is not None else (-1 if max_steps != -1 else 1000),
        "limit_train_batches": 1.0 if g["limit_train_batches"] is None else g["limit_train_batches"],
        "limit_val_batches": 1.0 if g["limit_val_batches"] is None else g["limit_val_batches"],
        "limit_test_batches": 1.0 if g["limit_test_batches"] is None else g["limit_test_batches"],
        "limit_predict_batches": 1.0 if g["limit_predict_batches"] is None else g["limit_predict_batches"],
        "val_check_interval": 1.0 if g["val_check_interval"] is None else g["val_check_interval"],
        "check_val_every_n_epoch": g["check_val_every_n_epoch"], "max_steps": max_steps,
        "num_sanity_val_steps": 2 if g["num_sanity_val_steps"] is None else g["num_sanity_val_steps"],
    }
    enable_checkpointing = True if g["enable_checkpointing"] is None else bool(g["enable_checkpointing"])
    logger = g["logger"]
    if g["overfit_batches"]:
        v["limit_train_batches"] = v["limit_val_batches"] = g["overfit_batches"]
    if fast_dev_run:
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
            v[name] = fast_dev_run
        v.update(max_epochs=1, max_steps=fast_dev_run, num_sanity_val_steps=0, val_check_interval=1.0, check_val_every_n_epoch=1)
        logger, enable_checkpointing = False, False
    root = os.fspath(g["default_root_dir"]) if g["default_root_dir"] is not None else os.getcwd()
    config = TrainerConfig(
        fast_dev_run=fast_dev_run, min_epochs=g["min_epochs"], min_steps=g["min_steps"], overfit_batches=g["overfit_batches"],
        log_every_n_steps=50 if g["log_every_n_steps"] is None else g["log_every_n_steps"],
        accumulate_grad_batches=g["accumulate_grad_batches"], gradient_clip_val=g["gradient_clip_val"] or None,
        gradient_clip_algorithm=g["gradient_clip_algorithm"] or "norm", inference_mode=g["inference_mode"],
        default_root_dir=root, deterministic=g["deterministic"], benchmark=g["benchmark"],
        enable_checkpointing=enable_checkpointing,
        enable_progress_bar=True if g["enable_progress_bar"] is None else bool(g["enable_progress_bar"]),
        auto_scale_batch_size=asbs or None, enable_early_stop=special.get("enable_early_stop"),
        enable_model_summary=True if g["enable_model_summary"] is None else bool(g["enable_model_summary"]),
        profiler=profiler, max_time=g["max_time"], detect_anomaly=g["detect_anomaly"],
        use_distributed_sampler=g["use_distributed_sampler"], **v,
    )
    if logger is None or logger is True:
        from fabric_lite.loggers import default_logger  # TensorBoard when installed, else CSV (as Lightning)

        loggers: list[Any] = [default_logger(root)]
    elif logger is False:
        loggers = []
    else:
        loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    fabric_arguments = {"accelerator": accelerator, "strategy": g["strategy"], "devices": devices, "num_nodes": g["num_nodes"],
                        "precision": g["precision"], "plugins": g["plugins"], "loggers": loggers}
    return config, fabric_arguments, extra


def apply_reproducibility(config: TrainerConfig) -> None:
    """``deterministic`` and ``benchmark``: torch's process-wide switches, set when the Trainer is made."""
    deterministic = config.deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's documented requirement
        torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif deterministic is False:
        torch.use_deterministic_algorithms(False)
    if config.benchmark is not None:
        if config.benchmark and deterministic:
            rank_zero_warn("Trainer(benchmark=True, deterministic=True): benchmark picks kernels by speed, which is not deterministic; benchmark wins for cuDNN.")
        torch.backends.cudnn.benchmark = bool(config.benchmark)


def _legacy_callbacks(special: dict[str, Any]) -> list[Callback]:
    extra: list[Callback] = []
    if special.get("lr_scheduler_milestones") is not None:
        from fabric_lite.trainer.callbacks.legacy import LRMilestones

        extra.append(LRMilestones(F.parse_milestones(special["lr_scheduler_milestones"])))
    track = special.get("track_grad_norm", -1)
    if track not in (-1, None):
        if not (isinstance(track, (int, float)) and not isinstance(track, bool) and track > 0) and track not in ("inf",):
            raise F.bad("track_grad_norm", track, "is not a p-norm order", "pass -1 (off), a number > 0 such as 2, or 'inf'.")
        from fabric_lite.trainer.callbacks.grad_norm import GradNormMonitor

        extra.append(GradNormMonitor(norm_type=track, legacy_names=True))
    if special.get("log_gpu_memory") is not None:
        F.check_choice("log_gpu_memory", special["log_gpu_memory"], F.GPU_MEMORY_MODES)
        from fabric_lite.trainer.callbacks.gpu_memory import GPUMemoryLogger

        extra.append(GPUMemoryLogger(mode=special["log_gpu_memory"]))
    if special.get("stochastic_weight_avg"):
        from fabric_lite.trainer.callbacks.swa import StochasticWeightAveraging

        extra.append(StochasticWeightAveraging())
    return extra


def default_callbacks(config: TrainerConfig, callbacks: Any, extra: list[Callback], checkpointing_flag: bool | None) -> list[Callback]:
    """The user's callbacks (checked), those of older flags, then the checkpointing, early stopping, progress bar,
    model summary and profiler defaults."""
    from fabric_lite.trainer.callbacks.checkpoint import ModelCheckpoint
    from fabric_lite.trainer.callbacks.early_stopping import EarlyStopping
    from fabric_lite.trainer.callbacks.model_summary import ModelSummary, RichModelSummary
    from fabric_lite.trainer.callbacks.progress import ProgressBar, TQDMProgressBar, tqdm_available
    from fabric_lite.trainer.callbacks.rich_progress import RichProgressBar
    from fabric_lite.trainer.profilers.trainer_hooks import ProfilerHooks

    callbacks = [] if callbacks is None else callbacks
    found: list[Callback] = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    for callback in found:
        if not isinstance(callback, Callback):
            raise F.bad("callbacks", callback, "holds an object that is not a Callback",
                        "subclass fabric_lite.trainer.Callback (or pass one of fabric_lite.trainer.callbacks).")
    found.extend(extra)
    if config.enable_early_stop is False:
        found = [c for c in found if not isinstance(c, EarlyStopping)]
    elif config.enable_early_stop and not any(isinstance(c, EarlyStopping) for c in found):
        found.append(EarlyStopping(monitor="val_loss", patience=3, mode="min", strict=False))
    if config.enable_checkpointing and not any(isinstance(c, ModelCheckpoint) for c in found):
        found.append(ModelCheckpoint())
    if not config.enable_checkpointing and any(isinstance(c, ModelCheckpoint) for c in found) and checkpointing_flag is False:
        raise ConfigurationError(
            "Trainer(enable_checkpointing=False, callbacks=[ModelCheckpoint(...)]) both turns checkpointing off and "
            "asks for it. Fix: drop enable_checkpointing=False, or the ModelCheckpoint callback."
        )
    bars = [c for c in found if isinstance(c, ProgressBar)]
    if len(bars) > 1:
        raise ConfigurationError(
            f"Trainer(callbacks=[...]) holds {len(bars)} progress bars ({', '.join(type(c).__name__ for c in bars)}); "
            f"only one can draw. Fix: pass one of them."
        )
    if bars and not config.enable_progress_bar:  # False only when passed so (None means True)
        raise ConfigurationError(
            f"Trainer(enable_progress_bar=False, callbacks=[{type(bars[0]).__name__}(...)]) both turns the progress bar "
            f"off and passes one. Fix: drop enable_progress_bar=False, or the {type(bars[0]).__name__} callback."
        )
    if config.enable_progress_bar and not bars:
        found.append(TQDMProgressBar() if tqdm_available() else ProgressBar())
    if config.enable_model_summary and not any(isinstance(c, ModelSummary) for c in found):
        rich_bar = any(isinstance(c, RichProgressBar) for c in found)
        found.append(RichModelSummary() if rich_bar else ModelSummary())
    if not isinstance(config.profiler, PassThroughProfiler):
        found.append(ProfilerHooks(config.profiler))
    return found
