"""CSVLogger: metrics to ``<root_dir>/<name>/<version>/metrics.csv`` and hyperparameters to a YAML/JSON file.

Every file is written whole to a temporary file and moved into place with ``os.replace``, so a
reader (or a crash) never sees a half-written file.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
from argparse import Namespace
from enum import Enum
from typing import IO, Any, Callable, Mapping

import torch

from fabric_lite.errors import ConfigurationError
from fabric_lite.loggers.base import DummyExperiment, FolderLogger, convert_params, flatten_dict, to_python_scalars
from fabric_lite.utilities.rank_zero import rank_zero_only, rank_zero_warn

STEP_KEY = "step"


def _atomic_write(path: str, write: Callable[[IO[str]], None]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then move it over ``path`` in one step."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp_path = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp_path, "w", newline="", encoding="utf-8") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def _plain(value: Any) -> Any:
    """Turn a hyperparameter value into plain data (dict, list, str, number, bool, None) for YAML/JSON."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Enum):
        return _plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value):
        return getattr(value, "__name__", None) or repr(value)
    return str(value)


class _MetricsWriter:
    """Buffers metric rows and writes ``metrics.csv``; the header widens when new metric names appear."""

    FILE_NAME = "metrics.csv"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.FILE_NAME)
        self.metrics: list[dict[str, Any]] = []  # rows not yet on disk
        self.metrics_keys: list[str] = [STEP_KEY]  # the header, in order of first appearance
        self._keys_on_disk: list[str] | None = None  # header of the file this writer wrote; None: not yet
        if os.path.isfile(self.metrics_file_path):
            rank_zero_warn(f"{self.metrics_file_path} already exists; the first save() of this logger replaces it.")

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        for key in metrics:
            if key not in self.metrics_keys:
                self.metrics_keys.append(key)
        self.metrics.append({STEP_KEY: step, **metrics})

    def save(self) -> None:
        if not self.metrics:
            return

        def write(out: IO[str]) -> None:
            writer = csv.DictWriter(out, fieldnames=self.metrics_keys, restval="")
            if self._keys_on_disk == self.metrics_keys:
                with open(self.metrics_file_path, newline="", encoding="utf-8") as old:
                    shutil.copyfileobj(old, out)
            else:
                writer.writeheader()
                if self._keys_on_disk is not None:
                    # New metric names appeared: copy the old rows under the wider header, blanks in the new columns.
                    with open(self.metrics_file_path, newline="", encoding="utf-8") as old:
                        writer.writerows(csv.DictReader(old))
            writer.writerows(self.metrics)

        _atomic_write(self.metrics_file_path, write)
        self._keys_on_disk = list(self.metrics_keys)
        self.metrics = []


class CSVLogger(FolderLogger):
    """Log metrics to a CSV file and hyperparameters to ``hparams.yaml`` (or ``hparams.json``).

    Files go to ``os.path.join(root_dir, name, version)``. ``metrics.csv`` has a ``step`` column and one
    column per metric name; rows are buffered and written every ``flush_logs_every_n_steps`` calls
    of ``log_metrics`` and on ``save()``/``finalize()``. Hyperparameters are written at once by
    ``log_hyperparams`` to ``hparams.yaml`` when PyYAML is installed, else to ``hparams.json``.
    Only the process with global rank 0 writes.

    Args:
        root_dir: the folder that holds all experiments.
        name: the experiment name; None or "" puts the version folders directly in ``root_dir``.
        version: an int N gives folder ``version_N``, a str is the folder name, None picks the next free N.
        prefix: put in front of every metric name, joined with ``"-"``.
        flush_logs_every_n_steps: how many ``log_metrics`` calls to buffer before writing.

    Example:
        >>> import tempfile
        >>> logger = CSVLogger(tempfile.mkdtemp(), name="demo")
        >>> logger.log_metrics({"loss": 0.25, "acc": 0.75}, step=0)
        >>> logger.finalize("success")
        >>> open(os.path.join(logger.log_dir, "metrics.csv")).read().split()
        ['step,loss,acc', '0,0.25,0.75']
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        if not isinstance(flush_logs_every_n_steps, int) or flush_logs_every_n_steps < 1:
            raise ConfigurationError(
                f"CSVLogger(flush_logs_every_n_steps={flush_logs_every_n_steps!r}) is not a positive int. "
                "Fix: pass 1 or more, e.g. flush_logs_every_n_steps=100."
            )
        super().__init__(root_dir, name, version, prefix)
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: _MetricsWriter | None = None
        self._num_logged = 0
        self._hparams: dict[str, Any] = {}
        self._hparams_format = "yaml" if importlib.util.find_spec("yaml") is not None else "json"

    @property
    def hparams_file(self) -> str:
        """Path of the hyperparameter file: ``hparams.yaml`` if PyYAML is installed, else ``hparams.json``."""
        return os.path.join(self.log_dir, f"hparams.{self._hparams_format}")

    @property
    def experiment(self) -> _MetricsWriter | DummyExperiment:
        """The metrics writer (a do-nothing stand-in on processes other than rank 0)."""
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
            return DummyExperiment()
        if self._experiment is None:
            self._experiment = _MetricsWriter(self.log_dir)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Buffer one row; ``step`` defaults to the number of rows logged before.

        Nested dicts become ``a/b`` columns.
        """
        metrics = flatten_dict(to_python_scalars(metrics), self.group_separator)
        metrics = self.prefixed(metrics)
        self.experiment.log_metrics(metrics, self._num_logged if step is None else step)
        self._num_logged += 1
        if self._num_logged % self._flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | None = None, *args: Any, **kwargs: Any) -> None:
        """Merge ``params`` into the recorded hyperparameters (nesting kept) and rewrite :attr:`hparams_file`."""
        self._hparams.update(_plain(convert_params(params)))
        if self._hparams_format == "yaml":
            import yaml

            _atomic_write(self.hparams_file, lambda out: yaml.safe_dump(self._hparams, out, sort_keys=False))
        else:
            _atomic_write(self.hparams_file, lambda out: json.dump(self._hparams, out, indent=2))

    @rank_zero_only
    def save(self) -> None:
        """Write the buffered metric rows."""
        if self._experiment is not None:
            self._experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
