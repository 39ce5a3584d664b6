"""Profilers with Lightning's names (``lightning.pytorch.profilers``): ``Trainer(profiler="simple" | "advanced" | "pytorch")``
or a profiler object; the report is written or logged at the end of each run."""

from __future__ import annotations

from typing import Any

from fabric_lite.errors import ConfigurationError
from fabric_lite.trainer.profilers.advanced import AdvancedProfiler
from fabric_lite.trainer.profilers.base import PassThroughProfiler, Profiler
from fabric_lite.trainer.profilers.pytorch import PyTorchProfiler
from fabric_lite.trainer.profilers.simple import SimpleProfiler

#: ``Trainer(profiler=<name>)`` -> the class made with its defaults
PROFILERS: dict[str, type[Profiler]] = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}


def resolve_profiler(value: Any) -> Profiler:
    """``Trainer(profiler=...)``: None -> PassThroughProfiler, a name -> that profiler, a Profiler -> itself.

    Example:
        >>> type(resolve_profiler("simple")).__name__
        'SimpleProfiler'
    """
    if value is None:
        return PassThroughProfiler()
    if isinstance(value, Profiler):
        return value
    if isinstance(value, str) and value.lower() in PROFILERS:
        return PROFILERS[value.lower()]()
    raise ConfigurationError(
        f"Trainer(profiler={value!r}) is not a known profiler. Choose one of: {', '.join(map(repr, PROFILERS))}, None, "
        f"or an instance such as SimpleProfiler(dirpath=..., filename=...) (from fabric_lite.trainer.profilers)."
    )


__all__ = ["PROFILERS", "AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler",
           "resolve_profiler"]
