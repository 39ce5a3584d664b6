"""CSVLogger: metrics to ``<root_dir>/<name>/<version>/metrics.csv`` and hyperparameters to ``hparams.yaml``.

``metrics.csv`` grows by appending whole rows (one ``write()`` per flush); it is rewritten, through a
temporary file and ``os.replace``, only when a new metric name widens the header. ``hparams.yaml`` is
rewritten whole the same way. So a reader, or a kill, never sees a half-written file or a partial row.
"""

from __future__ import annotations

import csv
import io
import os
from argparse import Namespace
from typing import IO, Any, Callable, Mapping

import torch  # noqa: F401  (the docstring examples use it)

from fabric_lite.errors import ConfigurationError
from fabric_lite.loggers.base import (
    DummyExperiment,
    FolderLogger,
    convert_params,
    flatten_dict,
    json_plain,
    to_python_scalars,
)
from fabric_lite.utilities.rank_zero import rank_zero_only, rank_zero_warn

STEP_KEY = "step"
HPARAMS_FILE = "hparams.yaml"
_PLAIN_SCALARS = frozenset({float, int, bool, str})  # values written as they are (exact types: checks stay cheap)


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


def save_hparams_to_yaml(config_yaml: str | os.PathLike[str], hparams: Mapping[str, Any] | Namespace) -> None:
    """Write ``hparams`` (nesting kept, values made plain: tensors to numbers, tuples to lists) to a YAML file.

    The file is written to a temporary file and moved into place, so it is never half-written.
    Same name and argument order as ``lightning.pytorch.core.saving.save_hparams_to_yaml``.
    """
    import yaml  # a dependency of fabric_lite (pyproject); imported here to keep ``import fabric_lite`` light

    plain = json_plain(convert_params(hparams))
    _atomic_write(os.fspath(config_yaml), lambda out: yaml.safe_dump(plain, out, sort_keys=False))


def load_hparams_from_yaml(config_yaml: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a hyperparameter file written by :func:`save_hparams_to_yaml` (or by Lightning) back as a dict.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "hparams.yaml")
        >>> save_hparams_to_yaml(path, {"lr": torch.tensor(0.5), "optim": {"betas": (0.9, 0.99)}})
        >>> load_hparams_from_yaml(path)
        {'lr': 0.5, 'optim': {'betas': [0.9, 0.99]}}
    """
    import yaml

    path = os.fspath(config_yaml)
    if not os.path.isfile(path):
        raise ConfigurationError(
            f"load_hparams_from_yaml({path!r}): no such file. Fix: pass the hparams.yaml inside a logger's "
            "log_dir, e.g. os.path.join(logger.log_dir, 'hparams.yaml')."
        )
    with open(path, encoding="utf-8") as f:
        loaded = yaml.safe_load(f)
    return {} if loaded is None else dict(loaded)


class _MetricsWriter:
    """Buffers metric rows and appends them to ``metrics.csv``; the header widens when new metric names appear.

    Each flush formats its rows in memory and appends them with one ``write()`` on a descriptor opened with
    ``O_APPEND``, so the file's cost is linear in the rows written (no copy of what is already on disk).
    When a flush brings a metric name the header lacks, the file is rewritten once under the wider header
    (old rows get blanks in the new columns) into a temporary file that replaces it with ``os.replace``: a
    reader, or a kill, sees the old file or the new one, never a mix.

    After a kill at any moment the file is a valid CSV whose rows are all complete: rows still in the
    buffer are lost, written rows are whole, and the file ends with a row terminator, because the kernel
    finishes a ``write()`` to a local file that a process is killed during. (One exception: Linux may
    stop a write that spans several memory pages early when SIGKILL lands in the microseconds it takes;
    the last line then has no terminator and is the only incomplete one. Power loss is not covered:
    nothing is fsynced per flush.) A kill during a rewrite leaves the old file and a
    ``metrics.csv.tmp<pid>`` next to it.
    """

    FILE_NAME = "metrics.csv"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.FILE_NAME)
        self.metrics: list[dict[str, Any]] = []  # rows not yet on disk
        self.metrics_keys: list[str] = [STEP_KEY]  # the header, in order of first appearance
        self._known_keys: set[str] = {STEP_KEY}
        self._keys_on_disk: list[str] | None = None  # header of the file this writer wrote; None: not yet
        if os.path.isfile(self.metrics_file_path):
            rank_zero_warn(f"{self.metrics_file_path} already exists; the first save() of this logger replaces it.")

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        if not self._known_keys.issuperset(metrics):
            for key in metrics:
                if key not in self._known_keys:
                    self._known_keys.add(key)
                    self.metrics_keys.append(key)
        row = dict(metrics)
        row[STEP_KEY] = step
        self.metrics.append(row)

    def _format(self, rows: list[dict[str, Any]], header: bool) -> str:
        keys = self.metrics_keys
        out = io.StringIO()
        writer = csv.writer(out)
        if header:
            writer.writerow(keys)
        writer.writerows(map(row.get, keys) for row in rows)  # an absent name gives None, which csv writes as ""
        return out.getvalue()

    def save(self) -> None:
        if not self.metrics:
            return
        if self._keys_on_disk is not None and not os.path.isfile(self.metrics_file_path):
            rank_zero_warn(f"{self.metrics_file_path} was removed while logging; it starts again with the rows not yet written.")
            self._keys_on_disk = None
        if self._keys_on_disk is None:  # first flush: a fresh file (replacing any old one) with the header
            text = self._format(self.metrics, header=True)
            _atomic_write(self.metrics_file_path, lambda out: out.write(text))
        elif self._keys_on_disk != self.metrics_keys:
            self._rewrite_wider(self._format(self.metrics, header=False))
        else:
            _append(self.metrics_file_path, self._format(self.metrics, header=False).encode("utf-8"))
        self._keys_on_disk = list(self.metrics_keys)
        self.metrics = []

    def _rewrite_wider(self, new_rows: str) -> None:
        """Rewrite the file under the wider header: old rows padded with blanks, then ``new_rows``."""
        assert self._keys_on_disk is not None
        padding = [""] * (len(self.metrics_keys) - len(self._keys_on_disk))  # new names are always added at the end

        def write(out: IO[str]) -> None:
            writer = csv.writer(out)
            writer.writerow(self.metrics_keys)
            with open(self.metrics_file_path, newline="", encoding="utf-8") as old:
                reader = csv.reader(old)
                next(reader, None)  # the old header
                writer.writerows(row + padding for row in reader)
            out.write(new_rows)

        _atomic_write(self.metrics_file_path, write)


def _append(path: str, data: bytes) -> None:
    """Append ``data`` to ``path`` with as few ``write()`` calls as the kernel allows (one, for a local file)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class CSVLogger(FolderLogger):
    """Log metrics to a CSV file and hyperparameters to ``hparams.yaml``.

    Files go to ``os.path.join(root_dir, name, version)``. ``metrics.csv`` has a ``step`` column and one
    column per metric name; rows are buffered and written every ``flush_logs_every_n_steps`` calls
    of ``log_metrics`` and on ``save()``/``finalize()``; each flush appends its rows, and the file is
    rewritten only when a new metric name widens the header. After a kill the file is a valid CSV of
    complete rows (the rows still buffered are lost). Hyperparameters are written at once by
    ``log_hyperparams`` to ``hparams.yaml`` (read it back with :func:`load_hparams_from_yaml`).
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

    @property
    def hparams_file(self) -> str:
        """Path of the hyperparameter file: ``<log_dir>/hparams.yaml``."""
        return os.path.join(self.log_dir, HPARAMS_FILE)

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
        if not _PLAIN_SCALARS.issuperset(map(type, metrics.values())):  # else the fast path: plain numbers as given
            metrics = flatten_dict(to_python_scalars(metrics), self.group_separator)
        if self._prefix:
            metrics = self.prefixed(metrics)
        self.experiment.log_metrics(metrics, self._num_logged if step is None else step)
        self._num_logged += 1
        if self._num_logged % self._flush_logs_every_n_steps == 0:
            self.save()

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | None = None, *args: Any, **kwargs: Any) -> None:
        """Merge ``params`` into the recorded hyperparameters (nesting kept) and rewrite :attr:`hparams_file`."""
        self._hparams.update(json_plain(convert_params(params)))
        save_hparams_to_yaml(self.hparams_file, self._hparams)

    @rank_zero_only
    def save(self) -> None:
        """Write the buffered metric rows."""
        if self._experiment is not None:
            self._experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
