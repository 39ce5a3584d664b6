"""TensorBoardLogger: metrics, hyperparameters and the model graph as TensorBoard event files.

The writer is ``tensorboardX.SummaryWriter`` when tensorboardX is installed, else
``torch.utils.tensorboard.SummaryWriter`` (which needs the ``tensorboard`` package). Either is imported only
when the first event is written, so importing fabric_lite stays light.
"""

from __future__ import annotations

import numbers
import os
import warnings
from argparse import Namespace
from enum import Enum
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from fabric_lite.errors import ConfigurationError, missing_package
from fabric_lite.loggers.base import (
    DummyExperiment,
    FolderLogger,
    convert_params,
    flatten_dict,
    module_importable,
    to_python_scalars,
)
from fabric_lite.loggers.csv import HPARAMS_FILE, save_hparams_to_yaml
from fabric_lite.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter


def tensorboard_backend() -> str | None:
    """The package event files are written with: ``"tensorboardX"``, else ``"torch.utils.tensorboard"`` when the
    ``tensorboard`` package is installed, else None."""
    if module_importable("tensorboardX"):
        return "tensorboardX"
    if module_importable("tensorboard"):
        return "torch.utils.tensorboard"
    return None


def _hparam_value(value: Any) -> bool | int | float | str:
    """Reduce one (flattened) hyperparameter to a type the TensorBoard hparams plugin understands."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else str(value.tolist())
    if isinstance(value, (bool, int, float, str)):
        return value
    if callable(value):
        return getattr(value, "__name__", None) or repr(value)
    return str(value)


class TensorBoardLogger(FolderLogger):
    """Log to TensorBoard event files in ``os.path.join(root_dir, name, version[, sub_dir])``.

    The ``SummaryWriter`` (:attr:`experiment`) is created on the first write, and only on the process with
    global rank 0; other ranks write nothing. It is tensorboardX's when tensorboardX is installed, else
    ``torch.utils.tensorboard``'s (which needs the ``tensorboard`` package); both have the same methods
    (``add_scalar``, ``add_image``, ``add_histogram``, ...) and write the same event files.

    Args:
        root_dir: the folder that holds all experiments.
        name: the experiment name; None or "" puts the version folders directly in ``root_dir``.
        version: an int N gives folder ``version_N``, a str is the folder name, None picks the next free N.
        default_hp_metric: if ``log_hyperparams`` gets no metrics, log the placeholder ``hp_metric = -1``
            so that TensorBoard's HPARAMS tab has a column to show.
        prefix: put in front of every metric name, joined with ``"-"``.
        sub_dir: an extra folder below the version folder, e.g. to keep train and validation apart.
        **kwargs: passed on to ``SummaryWriter`` (e.g. ``flush_secs``, ``max_queue``).

    Raises:
        MissingPackageError: neither tensorboardX nor tensorboard is installed.

    Example:
        >>> import tempfile
        >>> logger = TensorBoardLogger(tempfile.mkdtemp())
        >>> logger.log_hyperparams({"lr": 0.1, "optim": {"name": "sgd"}})
        >>> logger.log_metrics({"loss": torch.tensor(0.5)}, step=1)
        >>> logger.finalize("success")
        >>> os.path.basename(logger.log_dir)
        'version_0'
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        backend = tensorboard_backend()
        if backend is None:
            raise missing_package(
                "tensorboardX", "tensorboard", "TensorBoardLogger",
                hint="or pip install tensorboard (then torch.utils.tensorboard writes the events)",
            )
        super().__init__(root_dir, name, version, prefix)
        self._backend = backend
        self._default_hp_metric = default_hp_metric
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._experiment: SummaryWriter | None = None
        self._num_logged = 0
        self._hparams: dict[str, Any] = {}

    @property
    def log_dir(self) -> str:
        """The folder the event files go to: ``root_dir/version[/sub_dir]``, with ``~`` and ``$VARS`` expanded."""
        log_dir = super().log_dir
        if self._sub_dir is not None:
            log_dir = os.path.join(log_dir, self._sub_dir)
        return os.path.expandvars(os.path.expanduser(log_dir))

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    @property
    def experiment(self) -> SummaryWriter | DummyExperiment:
        """The ``SummaryWriter``, made on first use (a do-nothing stand-in on ranks other than 0)."""
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
            return DummyExperiment()
        if self._experiment is None:
            if self._backend == "tensorboardX":
                from tensorboardX import SummaryWriter
            else:
                from torch.utils.tensorboard import SummaryWriter  # type: ignore[assignment]

            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Write each value with ``add_scalar``; a dict value is written with ``add_scalars``.

        ``step`` defaults to the number of ``log_metrics`` calls made before this one.
        """
        metrics = self.prefixed(to_python_scalars(metrics))
        step = self._num_logged if step is None else step
        for key, value in metrics.items():
            if isinstance(value, Mapping) and all(isinstance(v, numbers.Real) for v in value.values()):
                self.experiment.add_scalars(key, dict(value), step)
            elif isinstance(value, numbers.Real):
                self.experiment.add_scalar(key, value, step)
            else:
                raise ConfigurationError(
                    f"TensorBoardLogger.log_metrics({{{key!r}: {value!r}}}) cannot be logged: a metric must be a "
                    f"number, a one-element tensor, or a dict of those. Fix: log e.g. {{{key!r}: 0.5}}."
                )
        self._num_logged += 1

    @rank_zero_only
    def log_hyperparams(
        self,
        params: Mapping[str, Any] | Namespace | None,
        metrics: Mapping[str, float] | float | None = None,
    ) -> None:
        """Write ``params`` (nested dicts flattened to ``a/b`` keys) to TensorBoard's HPARAMS tab, and all
        hyperparameters logged so far (nesting kept) to ``<log_dir>/hparams.yaml``, as Lightning's Trainer logger does.

        Args:
            params: the hyperparameters.
            metrics: metrics to show next to them, logged at step 0; a bare number is named ``hp_metric``.
                None logs ``hp_metric = -1`` when ``default_hp_metric`` is true.
        """
        if self._backend == "tensorboardX":
            from tensorboardX.summary import hparams
        else:
            from torch.utils.tensorboard.summary import hparams  # type: ignore[no-redef]

        params = convert_params(params)
        self._hparams.update(params)
        save_hparams_to_yaml(os.path.join(self.log_dir, HPARAMS_FILE), self._hparams)
        flat = {key: _hparam_value(value) for key, value in flatten_dict(params).items()}
        if metrics is None:
            metrics = {"hp_metric": -1} if self._default_hp_metric else {}
        elif not isinstance(metrics, Mapping):
            metrics = {"hp_metric": metrics}
        if metrics:
            self.log_metrics(metrics, 0)
        metric_names = self.prefixed(metrics)
        # Written to this run's own file writer: SummaryWriter.add_hparams would open a separate run folder.
        writer = self.experiment._get_file_writer()
        for summary in hparams(flat, metric_names):
            writer.add_summary(summary)

    @rank_zero_only
    def log_graph(self, model: nn.Module, input_array: torch.Tensor | None = None) -> None:
        """Trace ``model`` on ``input_array`` (default: ``model.example_input_array``) and write its graph.

        Best effort: a model that cannot be traced gives a warning, not an error.
        """
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            rank_zero_warn(
                "TensorBoardLogger.log_graph(model) needs an example input to trace the model. "
                "Fix: call log_graph(model, input_array) or set model.example_input_array."
            )
            return
        try:
            with warnings.catch_warnings():
                # tensorboardX traces with torch.jit.trace, which torch now flags as deprecated; not the user's to fix.
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=DeprecationWarning)
                self.experiment.add_graph(model, input_array)
        except Exception as error:  # tracing fails for many models (data-dependent control flow, odd outputs)
            rank_zero_warn(f"TensorBoardLogger.log_graph could not trace the model, so no graph was written: {error}")

    @rank_zero_only
    def save(self) -> None:
        """Flush pending events to disk."""
        if self._experiment is not None:
            self._experiment.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush and close the writer; a later write opens a new event file."""
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
            self._experiment = None

    def __getstate__(self) -> dict[str, Any]:
        # The SummaryWriter holds threads and open files; a copy sent to another process makes its own.
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state
