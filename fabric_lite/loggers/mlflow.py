"""MLFlowLogger: metrics, parameters, tags and (optionally) checkpoints to an MLflow tracking store.

Same arguments as ``lightning.pytorch.loggers.MLFlowLogger``. It talks to the store through
``mlflow.tracking.MlflowClient`` only (no global ``mlflow`` state is changed), so ``mlflow-skinny`` is enough:
``pip install 'torch-fabric-lite[mlflow]'``. mlflow is imported when the run is first used.
"""

from __future__ import annotations

import os
import re
import time
from argparse import Namespace
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, Mapping

import torch

from fabric_lite.errors import ConfigurationError, missing_package
from fabric_lite.loggers.base import (
    DummyExperiment,
    Logger,
    add_prefix,
    checkpoints_to_log,
    convert_params,
    flatten_dict,
    json_plain,
    module_importable,
    to_python_scalars,
)
from fabric_lite.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

FILE_URI_PREFIX = "file:"
RUN_NAME_TAG = "mlflow.runName"  # mlflow.utils.mlflow_tags.MLFLOW_RUN_NAME
_BAD_METRIC_CHARACTERS = re.compile(r"[^a-zA-Z0-9_/. -]+")  # MLflow's allowed set for metric names
_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED", "aborted": "KILLED"}
MAX_PARAM_LENGTH = 500  # every MLflow since 1.28 stores at least this many characters of a parameter value


def _param_value(value: Any) -> Any:
    """A tensor becomes its number(s), a function or Enum its name/value; other values are written with ``str``."""
    if isinstance(value, (torch.Tensor, Enum)) or (callable(value) and not isinstance(value, type)):
        return json_plain(value)
    return value


class MLFlowLogger(Logger):
    """Log to an MLflow run: the experiment is found or created by name, the run is created on first use.

    Only the process with global rank 0 talks to the store. ``finalize(status)`` ends the run with MLflow's
    status (success -> FINISHED, failed -> FAILED, aborted -> KILLED).

    A ``file:`` tracking URI (the default, ``file:./mlruns`` from ``save_dir``) is MLflow's file store, which
    mlflow 3 keeps only behind ``MLFLOW_ALLOW_FILE_STORE=true``; the logger sets that variable for such a URI
    unless it is set already (to use a database instead, pass e.g. ``tracking_uri="sqlite:///mlflow.db"``).

    Args:
        experiment_name: the MLflow experiment (made if absent).
        run_name: the run's name (the ``mlflow.runName`` tag).
        tracking_uri: where the store is; default ``$MLFLOW_TRACKING_URI``, else ``file:<save_dir>``.
        tags: tags of the run.
        save_dir: the file store's folder when no tracking URI is given.
        log_model: log checkpoints as run artifacts: ``True`` at the end of training (every checkpoint when
            the callback keeps all, ``save_top_k=-1``), ``"all"`` as soon as each is saved.
        prefix: put in front of every metric name, joined with ``"-"``.
        artifact_location: where a newly made experiment keeps its artifacts.
        run_id: log into this existing run instead of creating one.
        synchronous: passed to ``MlflowClient.log_batch`` (mlflow >= 2.8); None: mlflow's default.

    Raises:
        MissingPackageError: mlflow (or mlflow-skinny) is not installed.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        save_dir: str | os.PathLike[str] | None = "./mlruns",
        log_model: Literal["all"] | bool = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        if not module_importable("mlflow"):
            raise missing_package("mlflow", "mlflow", "MLFlowLogger", hint="or pip install mlflow-skinny")
        if log_model not in (True, False, "all"):
            raise ConfigurationError(
                f"MLFlowLogger(log_model={log_model!r}) is not a known choice. Choose one of: False, True, 'all'."
            )
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking_uri:
            if save_dir is None:
                raise ConfigurationError(
                    "MLFlowLogger(tracking_uri=None, save_dir=None) has nowhere to write. "
                    "Fix: pass save_dir='./mlruns' or a tracking_uri such as 'sqlite:///mlflow.db'."
                )
            tracking_uri = FILE_URI_PREFIX + os.fspath(save_dir)
        self._tracking_uri = tracking_uri
        self._experiment_name = experiment_name
        self._experiment_id: str | None = None
        self._run_name = run_name
        self._run_id = run_id
        self.tags = dict(tags) if tags else {}
        self._log_model = log_model
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._log_batch_kwargs = {} if synchronous is None else {"synchronous": synchronous}
        self._client: MlflowClient | None = None
        self._checkpoint_callbacks: dict[int, Any] = {}
        self._logged_checkpoints: dict[str, float] = {}

    @property
    def experiment(self) -> MlflowClient | DummyExperiment:
        """The ``MlflowClient`` of the store, with this logger's run made on first use (a stand-in on ranks > 0).

        Use it with :attr:`run_id`, e.g. ``logger.experiment.log_text(logger.run_id, "text", "notes.txt")``.
        """
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
            return DummyExperiment()
        if self._client is not None:
            return self._client
        if self._tracking_uri.startswith(FILE_URI_PREFIX):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the class docstring
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self._tracking_uri)
        if self._run_id is not None:
            self._experiment_id = client.get_run(self._run_id).info.experiment_id
        else:
            found = client.get_experiment_by_name(self._experiment_name)
            if found is not None and found.lifecycle_stage != "deleted":
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = client.create_experiment(
                    self._experiment_name, artifact_location=self._artifact_location
                )
            tags = {str(key): str(value) for key, value in self.tags.items()}
            if self._run_name is not None:
                tags[RUN_NAME_TAG] = self._run_name
            self._run_id = client.create_run(self._experiment_id, tags=tags).info.run_id
        self._client = client
        return client

    @property
    def run_id(self) -> str | None:
        """The run's id (the run is made if it was not yet)."""
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        """The experiment's id (found or made if it was not yet)."""
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> str | None:
        """The experiment id (as Lightning's MLFlowLogger)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:
        """The run id."""
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """The file store's folder for a ``file:`` tracking URI, else None."""
        if self._tracking_uri.startswith(FILE_URI_PREFIX):
            return self._tracking_uri[len(FILE_URI_PREFIX):]
        return None

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | None, *args: Any, **kwargs: Any) -> None:
        """Log ``params`` as run parameters: nested keys joined with ``/``, values as text (cut to 500 characters)."""
        from mlflow.entities import Param

        flat = flatten_dict(convert_params(params))
        params_list = [Param(key, str(_param_value(value))[:MAX_PARAM_LENGTH]) for key, value in flat.items()]
        for start in range(0, len(params_list), 100):  # MLflow takes at most 100 parameters per batch
            self.experiment.log_batch(self.run_id, params=params_list[start:start + 100], **self._log_batch_kwargs)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log ``metrics`` at ``step`` (0 when None); a text value is skipped with a warning, as MLflow stores numbers.

        Characters MLflow refuses in a metric name are removed, with a warning.
        """
        from mlflow.entities import Metric

        metrics = add_prefix(flatten_dict(to_python_scalars(metrics)), self._prefix, self.LOGGER_JOIN_CHAR)
        timestamp = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            if isinstance(value, str):
                rank_zero_warn(f"MLFlowLogger.log_metrics skips {key}={value!r}: MLflow metrics are numbers.")
                continue
            clean = _BAD_METRIC_CHARACTERS.sub("", key)
            if clean != key:
                rank_zero_warn(
                    f"MLFlowLogger.log_metrics logs {key!r} as {clean!r}: MLflow allows only letters, digits and "
                    "'_', '/', '.', ' ', '-' in metric names.",
                    category=RuntimeWarning,
                )
            batch.append(Metric(clean, float(value), timestamp, step or 0))
        self.experiment.log_batch(self.run_id, metrics=batch, **self._log_batch_kwargs)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called after a ModelCheckpoint saved: log now (``log_model="all"``) or remember it for ``finalize``."""
        if self._log_model == "all" or (self._log_model is True and getattr(checkpoint_callback, "save_top_k", 1) == -1):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Log the remembered checkpoints, then end the run with MLflow's status for ``status``."""
        if self._client is None:
            return
        for callback in self._checkpoint_callbacks.values():
            self._log_checkpoints(callback)
        self._client.set_terminated(self.run_id, _STATUS.get(status, "FINISHED"))

    @rank_zero_only
    def _log_checkpoints(self, checkpoint_callback: Any) -> None:
        for mtime, path, score, tag in checkpoints_to_log(checkpoint_callback, self._logged_checkpoints):
            folder = f"checkpoints/{os.path.splitext(os.path.basename(path))[0]}"
            self.experiment.log_artifact(self.run_id, path, artifact_path=folder)
            self.experiment.log_dict(
                self.run_id, {"score": None if score is None else float(score), "tag": tag,
                              "original_filename": os.path.basename(path)}, f"{folder}/metadata.yaml",
            )
            self._logged_checkpoints[path] = mtime

    def __getstate__(self) -> dict[str, Any]:
        # The client holds connections; a copy sent to another process makes its own and logs into the same run.
        state = self.__dict__.copy()
        state["_client"] = None
        return state
