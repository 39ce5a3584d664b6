"""Profiler: the interface every profiler follows (Lightning's ``lightning.pytorch.profilers.Profiler``), and PassThroughProfiler.

The Trainer times each hook and step call (``loops/hooks.py``: the action is the hook's name, such as
``training_step`` or ``on_train_batch_end``) and each training epoch and batch (``run_training_epoch``,
``run_training_batch``). At the end of every ``fit`` / ``validate`` / ``test`` / ``predict`` it calls
:meth:`Profiler.describe`, which writes :meth:`Profiler.summary` to ``dirpath/<stage>-<filename>.txt`` when a
``filename`` is given, else logs it through the ``fabric_lite`` logger (rank 0; stderr by default).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Generator
from contextlib import contextmanager

from fabric_lite.utilities.rank_zero import rank_zero_info


class Profiler(ABC):
    """Record named actions (``start``/``stop`` or ``with profiler.profile(name):``) and report on them.

    Args:
        dirpath: folder of the report file (and of the PyTorch profiler's trace); default: the Trainer's
            ``log_dir``.
        filename: the report's file name (without ``.txt``); None logs the report instead of writing it.
    """

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str | None = None) -> None:
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self._stage: str | None = None
        self._local_rank: int | None = None
        self._log_dir: str | None = None

    @abstractmethod
    def start(self, action_name: str) -> None:
        """Start recording ``action_name``."""

    @abstractmethod
    def stop(self, action_name: str) -> None:
        """Stop recording ``action_name`` (the latest start of that name)."""

    @abstractmethod
    def summary(self) -> str:
        """The report's text."""

    @contextmanager
    def profile(self, action_name: str) -> Generator[str, None, None]:
        """Record the block as ``action_name``.

        Example:
            >>> from fabric_lite.trainer.profilers import SimpleProfiler
            >>> profiler = SimpleProfiler()
            >>> with profiler.profile("load"):
            ...     pass
            >>> len(profiler.recorded_durations["load"])
            1
        """
        self.start(action_name)
        try:
            yield action_name
        finally:
            self.stop(action_name)

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """Called by the Trainer when a run starts: its stage, this process's rank (several processes only), log_dir."""
        self._stage = stage
        self._local_rank = local_rank
        self._log_dir = log_dir
        if self.dirpath is None and log_dir is not None:
            self.dirpath = os.fspath(log_dir)

    def teardown(self, stage: str | None) -> None:
        """Called after :meth:`describe` at the end of a run."""

    def _prepare_filename(self, action_name: str | None = None, extension: str = ".txt", split_token: str = "-") -> str:
        parts = [p for p in (self._stage, self.filename) if p]
        if self._local_rank is not None:
            parts.append(str(self._local_rank))
        if action_name is not None:
            parts.append(action_name)
        return split_token.join(parts or ["profile"]) + extension

    def describe(self) -> None:
        """Write or log :meth:`summary` (a file per stage when ``filename`` is set; several processes: one per rank)."""
        text = self.summary()
        if text:
            if self.filename is not None:
                directory = self.dirpath or os.getcwd()
                os.makedirs(directory, exist_ok=True)
                with open(os.path.join(directory, self._prepare_filename()), "a", encoding="utf-8") as stream:
                    stream.write(text + os.linesep)
            else:
                rank_zero_info(text)
        self.teardown(self._stage)


class PassThroughProfiler(Profiler):
    """Records nothing (``Trainer(profiler=None)``, the default): every call is a no-op."""

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def summary(self) -> str:
        return ""
