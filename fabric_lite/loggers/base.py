"""The ``Logger`` interface every fabric_lite logger implements, and the helpers loggers share.

Helpers: ``version_N`` folder numbering, hyperparameter conversion and flattening, metric-key
prefixes, and turning one-element tensors into Python floats.
"""

from __future__ import annotations

import importlib.util
import os
import re
from abc import ABC, abstractmethod
from argparse import Namespace
from enum import Enum
from typing import Any, Callable, Mapping

import torch
from torch import nn

from fabric_lite.errors import ConfigurationError

_VERSION_FOLDER = re.compile(r"^version_(\d+)$")


class Logger(ABC):
    """Base class of the experiment loggers (same names and signatures as ``lightning.fabric.loggers.Logger``).

    Example:
        >>> class PrintLogger(Logger):
        ...     name, version = "print", 0
        ...     def log_metrics(self, metrics, step=None):
        ...         print(step, dict(metrics))
        ...     def log_hyperparams(self, params, *args, **kwargs):
        ...         pass
        >>> PrintLogger().log_metrics({"loss": 0.5}, step=3)
        3 {'loss': 0.5}
    """

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment name."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The experiment version."""

    @property
    def root_dir(self) -> str | None:
        """The folder that holds the version folders, or None if the logger writes no local files."""
        return None

    @property
    def log_dir(self) -> str | None:
        """The folder this run writes into, or None if the logger writes no local files."""
        return None

    @property
    def group_separator(self) -> str:
        """The character that separates a metric group from its name, e.g. ``"train/loss"``."""
        return "/"

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record ``metrics`` (name -> number) at ``step``."""

    @abstractmethod
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Record the run's hyperparameters (a dict, possibly nested, or an ``argparse.Namespace``)."""

    def log_graph(self, model: nn.Module, input_array: torch.Tensor | None = None) -> None:
        """Record the model's computation graph; loggers that cannot do so ignore the call."""

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called by a checkpoint callback after it saved a file; loggers that upload checkpoints override it."""

    def save(self) -> None:
        """Write whatever is buffered to disk."""

    def finalize(self, status: str) -> None:
        """Finish the run (``status`` is e.g. "success", "failed" or "aborted"); the default saves."""
        self.save()


class FolderLogger(Logger):
    """A logger that writes into ``<root_dir>/<name>/<version>``: the name, version and folder logic loggers share.

    Args:
        root_dir: the folder that holds all experiments.
        name: the experiment name; None or "" puts the version folders directly in ``root_dir``.
        version: an int N gives folder ``version_N``, a str is the folder name, None picks the next free N.
        prefix: put in front of every metric name, joined with :attr:`LOGGER_JOIN_CHAR`.

    Example:
        >>> import tempfile
        >>> class Quiet(FolderLogger):
        ...     def log_metrics(self, metrics, step=None): pass
        ...     def log_hyperparams(self, params, *args, **kwargs): pass
        >>> logger = Quiet(tempfile.mkdtemp(), name="demo", version=3)
        >>> os.path.relpath(logger.log_dir, logger.root_dir)
        'version_3'
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self, root_dir: str | os.PathLike[str], name: str | None = "lightning_logs", version: int | str | None = None,
        prefix: str = "",
    ) -> None:
        self._root_dir = os.fspath(root_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        """The version; when none was given, the next free N is picked on first use and kept."""
        if self._version is None:
            self._version = next_version(self.root_dir)
        return self._version

    @property
    def root_dir(self) -> str:
        """The folder that holds the version folders: ``os.path.join(root_dir, name)``."""
        return os.path.join(self._root_dir, self.name)

    @property
    def log_dir(self) -> str:
        """The folder this run writes into: ``os.path.join(root_dir, name, version)``."""
        return os.path.join(self.root_dir, version_folder(self.version))

    def prefixed(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """``metrics`` with :attr:`prefix <FolderLogger>` and :attr:`LOGGER_JOIN_CHAR` in front of every key."""
        return add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)


class DummyExperiment:
    """Stands in for the real experiment object on processes other than global rank 0: every call does nothing."""

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        return self._nothing

    def __getitem__(self, index: Any) -> DummyExperiment:
        return self


def next_version(directory: str) -> int:
    """The next free number N for a ``version_N`` folder inside ``directory`` (0 if there is none yet).

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> os.makedirs(os.path.join(root, "version_4"))
        >>> next_version(root), next_version(os.path.join(root, "absent"))
        (5, 0)
    """
    if not os.path.isdir(directory):
        return 0
    numbers = [
        int(match.group(1))
        for entry in os.listdir(directory)
        if (match := _VERSION_FOLDER.match(entry)) and os.path.isdir(os.path.join(directory, entry))
    ]
    return max(numbers) + 1 if numbers else 0


def version_folder(version: int | str) -> str:
    """The folder name of a version: a string is used as given, a number N becomes ``version_N``.

    Example:
        >>> version_folder(3), version_folder("baseline")
        ('version_3', 'baseline')
    """
    return version if isinstance(version, str) else f"version_{version}"


def convert_params(params: Mapping[str, Any] | Namespace | None) -> dict[str, Any]:
    """Turn hyperparameters given as a mapping, an ``argparse.Namespace`` or None into a plain dict.

    Example:
        >>> convert_params(Namespace(lr=0.1)), convert_params(None)
        ({'lr': 0.1}, {})
    """
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return vars(params).copy()
    if isinstance(params, Mapping):
        return dict(params)
    raise ConfigurationError(
        f"log_hyperparams(params={type(params).__name__}) is not supported: params must be a dict or an "
        f"argparse.Namespace. Fix: pass a dict, e.g. log_hyperparams({{'lr': 0.1}})."
    )


def flatten_dict(params: Mapping[str, Any], delimiter: str = "/", parent_key: str = "") -> dict[str, Any]:
    """Flatten nested mappings (and Namespaces) into one level, joining the keys with ``delimiter``.

    Example:
        >>> flatten_dict({"optim": {"lr": 0.1, "betas": (0.9, 0.99)}, "seed": 1})
        {'optim/lr': 0.1, 'optim/betas': (0.9, 0.99), 'seed': 1}
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        full_key = f"{parent_key}{delimiter}{key}" if parent_key else str(key)
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_dict(value, delimiter, full_key))
        else:
            flat[full_key] = value
    return flat


def add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> dict[str, Any]:
    """Put ``prefix`` and ``separator`` in front of every key (no change if ``prefix`` is empty).

    Example:
        >>> add_prefix({"loss": 1.0}, "train", "-")
        {'train-loss': 1.0}
    """
    if not prefix:
        return dict(metrics)
    return {f"{prefix}{separator}{key}": value for key, value in metrics.items()}


def to_python_scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Replace one-element tensors by Python floats (recursing into dict values); other values stay.

    Example:
        >>> to_python_scalars({"loss": torch.tensor(0.5), "epoch": 2, "acc": {"val": torch.tensor([1])}})
        {'loss': 0.5, 'epoch': 2, 'acc': {'val': 1.0}}
    """
    converted: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            value = to_python_scalars(value)
        elif isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ConfigurationError(
                    f"log_metrics got a tensor of shape {tuple(value.shape)} for {key!r}, but a metric is one number. "
                    f"Fix: log a reduction such as {key}.mean(), or one key per element."
                )
            value = float(value.item())
        converted[key] = value
    return converted


def json_plain(value: Any) -> Any:
    """Turn a hyperparameter value into JSON-able data: tensors to numbers/lists, callables to their names, others
    that JSON cannot hold to ``str``; nesting (dicts, lists) is kept.

    Example:
        >>> json_plain({"lr": torch.tensor(0.5), "act": torch.relu, "betas": (0.9, 0.99), "ns": Namespace(a=1)})
        {'lr': 0.5, 'act': 'relu', 'betas': [0.9, 0.99], 'ns': {'a': 1}}
    """
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(key): json_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_plain(item) for item in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Enum):
        return json_plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value):
        return getattr(value, "__name__", None) or repr(value)
    return str(value)


def checkpoints_to_log(checkpoint_callback: Any, logged: dict[str, float]) -> list[tuple[float, str, Any, str]]:
    """The checkpoint files of a ModelCheckpoint that are new or changed since ``logged`` (path -> mtime).

    Returns ``(mtime, path, score, tag)`` sorted by time, where tag is "best" for the best model and "latest"
    otherwise; ``logged`` is not changed (the caller records what it uploaded).
    """
    found: dict[str, Any] = {}
    for path, score in dict(getattr(checkpoint_callback, "best_k_models", {}) or {}).items():
        found[path] = score
    for attribute in ("last_model_path", "best_model_path"):
        path = getattr(checkpoint_callback, attribute, "") or ""
        if path and path not in found:
            found[path] = getattr(checkpoint_callback, "best_model_score", None) if attribute == "best_model_path" else None
    best = getattr(checkpoint_callback, "best_model_path", "")
    new = []
    for path, score in found.items():
        if not os.path.isfile(path):
            continue
        mtime = os.path.getmtime(path)
        if logged.get(path) != mtime:
            new.append((mtime, path, score, "best" if path == best else "latest"))
    return sorted(new)


def module_importable(name: str) -> bool:
    """Whether ``import name`` can succeed, without importing it (a blocked or broken finder counts as absent).

    Example:
        >>> module_importable("os"), module_importable("no_such_module_here")
        (True, False)
    """
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
