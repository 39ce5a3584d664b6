"""Fabric's callbacks and loggers: ``fabric.call``, ``fabric.log``, ``fabric.log_dict``, ``fabric.loggers``, ``fabric.logger``.

A base class of :class:`~fabric_lite.Fabric`, as ``trainer/module_logging.py`` is of the LightningModule;
``Fabric(callbacks=..., loggers=...)`` fills in the two lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fabric_lite import validation
from fabric_lite.utilities.apply_func import convert_tensors_to_scalars
from fabric_lite.utilities.hooks import call_hooks


class CallbacksAndLoggersMixin:
    """The callback and logger methods of :class:`~fabric_lite.Fabric` (which sets ``_callbacks`` and ``_loggers``)."""

    if TYPE_CHECKING:
        _callbacks: list[Any]
        _loggers: list[Any]

    @property
    def loggers(self) -> list[Any]:
        return self._loggers

    @property
    def logger(self) -> Any:
        """The first logger (the main one)."""
        if not self._loggers:
            raise validation.no_logger_error()
        return self._loggers[0]

    def call(self, hook_name: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook_name(*args, **kwargs)`` on every callback that defines it."""
        call_hooks(self._callbacks, hook_name, *args, **kwargs)

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Log one scalar (number or one-element tensor) to every logger."""
        self.log_dict({name: value}, step=step)

    def log_dict(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log several scalars to every logger."""
        scalars = convert_tensors_to_scalars(dict(metrics))
        for logger in self._loggers:
            logger.log_metrics(metrics=scalars, step=step)
