"""Calling a hook by name on user callbacks: those without it are skipped, a non-callable one is warned about."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fabric_lite.utilities.rank_zero import rank_zero_warn


def call_hooks(callbacks: Iterable[Any], hook_name: str, *args: Any, **kwargs: Any) -> None:
    """Call ``hook_name(*args, **kwargs)`` on every callback that defines it, in order.

    Example:
        >>> class Printer:
        ...     def on_epoch_end(self, epoch): print("epoch", epoch)
        >>> call_hooks([Printer(), object()], "on_epoch_end", 3)
        epoch 3
    """
    for callback in callbacks:
        method = getattr(callback, hook_name, None)
        if method is None:
            continue
        if not callable(method):
            rank_zero_warn(f"Skipping callback {type(callback).__name__}.{hook_name}: it is not callable.")
            continue
        method(*args, **kwargs)
