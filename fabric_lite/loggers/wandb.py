"""WandbLogger: metrics, hyperparameters and (optionally) checkpoints to Weights & Biases, on the ``wandb`` package.

Same arguments as ``lightning.pytorch.loggers.WandbLogger``. ``wandb`` is imported only when the run is first
used, so importing fabric_lite stays light; it is an optional extra: ``pip install 'torch-fabric-lite[wandb]'``.
"""

from __future__ import annotations

import os
from argparse import Namespace
from typing import TYPE_CHECKING, Any, Literal, Mapping

from torch import nn

from fabric_lite.errors import ConfigurationError, missing_package
from fabric_lite.loggers.base import (
    DummyExperiment,
    Logger,
    add_prefix,
    checkpoints_to_log,
    convert_params,
    json_plain,
    module_importable,
    to_python_scalars,
)
from fabric_lite.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

STEP_METRIC = "trainer/global_step"


class WandbLogger(Logger):
    """Log to a Weights & Biases run (``wandb.init`` is called on first use, on global rank 0 only).

    Metrics logged with a ``step`` carry it as ``trainer/global_step``, which is the x-axis of every chart
    (as in Lightning). ``finalize`` does not end the run, so a ``trainer.test()`` after ``fit`` logs into the
    same run; the run ends at ``wandb.finish()`` or when the process exits. Offline runs
    (``offline=True`` or ``WANDB_MODE=offline``) are written under ``<save_dir>/wandb/offline-run-*`` and can be
    uploaded later with ``wandb sync``.

    Args:
        name: the run's display name.
        save_dir: the folder wandb writes its files into (``<save_dir>/wandb``).
        version: the run id, to resume a run (same as ``id``).
        offline: write locally only (``wandb.init(mode="offline")``).
        dir: same as ``save_dir`` (used when ``save_dir`` is None).
        id: the run id, to resume a run.
        anonymous: log anonymously (``anonymous="allow"``).
        project: the project; default ``$WANDB_PROJECT`` or ``"lightning_logs"``.
        log_model: upload checkpoints as artifacts: ``True`` at the end of training (every checkpoint when the
            callback keeps all, ``save_top_k=-1``), ``"all"`` as soon as each is saved; needs a connection.
        experiment: an existing ``wandb`` run to log into instead of starting one.
        prefix: put in front of every metric name, joined with ``"-"``.
        checkpoint_name: the artifact name of logged checkpoints (default ``model-<run id>``).
        **kwargs: passed on to ``wandb.init`` (e.g. ``settings=wandb.Settings(...)``, ``tags``, ``group``).

    Raises:
        MissingPackageError: wandb is not installed.
        ConfigurationError: ``log_model`` with ``offline=True`` (checkpoints cannot be uploaded offline).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike[str] | None = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike[str] | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: Literal["all"] | bool = False,
        experiment: Run | None = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not module_importable("wandb"):
            raise missing_package("wandb", "wandb", "WandbLogger")
        if offline and log_model:
            raise ConfigurationError(
                f"WandbLogger(offline=True, log_model={log_model!r}) cannot work: checkpoints are uploaded as "
                "artifacts, which needs a connection. Fix: pass offline=False to log checkpoints, or log_model=False."
            )
        if log_model not in (True, False, "all"):
            raise ConfigurationError(
                f"WandbLogger(log_model={log_model!r}) is not a known choice. Choose one of: False, True, 'all'."
            )
        folder = save_dir if save_dir is not None else dir
        self._save_dir = None if folder is None else os.fspath(folder)
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._checkpoint_name = checkpoint_name
        self._checkpoint_callbacks: dict[int, Any] = {}
        self._logged_checkpoints: dict[str, float] = {}
        self._wandb_init: dict[str, Any] = {
            "name": name,
            "project": project or os.environ.get("WANDB_PROJECT", "lightning_logs"),
            "dir": self._save_dir,
            "id": version or id,
            "resume": "allow",
            "anonymous": "allow" if anonymous else None,
        }
        if offline:
            self._wandb_init["mode"] = "offline"
        self._wandb_init.update(kwargs)

    @property
    def name(self) -> str | None:
        """The project name (the run's own name is ``logger.experiment.name``)."""
        return self._wandb_init["project"]

    @property
    def version(self) -> str | None:
        """The run id: the started run's, else the one given."""
        return self._experiment.id if self._experiment is not None else self._wandb_init["id"]

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    def experiment(self) -> Run | DummyExperiment:
        """The ``wandb`` run, started on first use (a do-nothing stand-in on ranks other than 0).

        A run already in progress in this process (``wandb.run``) is reused, with a warning.
        """
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
            return DummyExperiment()
        if self._experiment is None:
            import wandb

            if wandb.run is not None:
                rank_zero_warn(
                    "WandbLogger: a wandb run is already in progress in this process, so this logger logs into it. "
                    "Fix: call wandb.finish() before making the logger if you want a new run."
                )
                self._experiment = wandb.run
            else:
                if self._save_dir is not None:
                    os.makedirs(self._save_dir, exist_ok=True)
                self._experiment = wandb.init(**self._wandb_init)
                if getattr(self._experiment, "define_metric", None) is not None:
                    self._experiment.define_metric(STEP_METRIC)
                    self._experiment.define_metric("*", step_metric=STEP_METRIC, step_sync=True)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | None, *args: Any, **kwargs: Any) -> None:
        """Update the run's config with ``params`` (nesting kept; tensors, callables and objects made plain)."""
        self.experiment.config.update(json_plain(convert_params(params)), allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """``run.log(metrics)``, with ``trainer/global_step = step`` when a step is given."""
        metrics = add_prefix(to_python_scalars(metrics), self._prefix, self.LOGGER_JOIN_CHAR)
        if step is not None:
            metrics[STEP_METRIC] = step
        self.experiment.log(metrics)

    @rank_zero_only
    def log_table(
        self, key: str, columns: list[str] | None = None, data: list[list[Any]] | None = None, dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log a ``wandb.Table`` made of ``columns`` and ``data`` (rows) or of a pandas ``dataframe``."""
        import wandb

        self.log_metrics({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @rank_zero_only
    def log_text(
        self, key: str, columns: list[str] | None = None, data: list[list[str]] | None = None, dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log text as a table (same arguments as :meth:`log_table`)."""
        self.log_table(key, columns, data, dataframe, step)

    @rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: list[Any]) -> None:
        """Log ``images`` (tensors, arrays, PIL images or paths) under ``key``; each keyword is a list with one
        value per image, passed to ``wandb.Image`` (e.g. ``caption=["cat", "dog"]``)."""
        import wandb

        if not isinstance(images, list):
            raise ConfigurationError(
                f"WandbLogger.log_image(key={key!r}, images={type(images).__name__}) needs a list of images. "
                "Fix: pass images=[image] for one image."
            )
        for name, values in kwargs.items():
            if not isinstance(values, list) or len(values) != len(images):
                raise ConfigurationError(
                    f"WandbLogger.log_image({name}=...) needs a list with one value per image ({len(images)}). "
                    f"Fix: pass e.g. {name}={[f'{name} {i}' for i in range(len(images))]!r}."
                )
        per_image = [{name: values[i] for name, values in kwargs.items()} for i in range(len(images))]
        self.log_metrics({key: [wandb.Image(image, **extra) for image, extra in zip(images, per_image)]}, step)

    def watch(self, model: nn.Module, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = True) -> None:
        """Record gradients / parameters of ``model`` (``wandb.watch``)."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called after a ModelCheckpoint saved: upload now (``log_model="all"``) or remember it for ``finalize``."""
        if self._log_model == "all" or (self._log_model is True and getattr(checkpoint_callback, "save_top_k", 1) == -1):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Upload the remembered checkpoints when ``status == "success"``; the run itself stays open (see above)."""
        if status != "success" or self._experiment is None:
            return
        for callback in self._checkpoint_callbacks.values():
            self._log_checkpoints(callback)

    @rank_zero_only
    def _log_checkpoints(self, checkpoint_callback: Any) -> None:
        import wandb

        for mtime, path, score, tag in checkpoints_to_log(checkpoint_callback, self._logged_checkpoints):
            name = self._checkpoint_name or f"model-{self.experiment.id}"
            metadata = {"score": json_plain(score), "original_filename": os.path.basename(path)}
            artifact = wandb.Artifact(name=name, type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt")
            self.experiment.log_artifact(artifact, aliases=["latest", "best"] if tag == "best" else ["latest"])
            self._logged_checkpoints[path] = mtime

    def __getstate__(self) -> dict[str, Any]:
        # The run holds threads and a service connection; a copy sent to another process keeps the run id only.
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_wandb_init"] = {**self._wandb_init, "id": getattr(self._experiment, "id", None)}
        state["_experiment"] = None
        return state
