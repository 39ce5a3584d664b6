"""Rank-zero helpers: run a function, print or warn only on the process with global rank 0.

The current rank is a plain attribute (``rank_zero_only.rank``) that the strategy sets when it
knows it; before that it is read once from the usual launcher variables so that loggers created
before ``Fabric.launch()`` behave correctly in every process.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Any, Callable, TypeVar

log = logging.getLogger("fabric_lite")

T = TypeVar("T")


def _rank_from_environment() -> int:
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorate ``fn`` so that it runs only where ``rank_zero_only.rank == 0`` (returns None elsewhere).

    Example:
        >>> @rank_zero_only
        ... def hello():
        ...     return "hi"
        >>> hello()
        'hi'
    """

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T | None:
        if rank_zero_only.rank == 0:
            return fn(*args, **kwargs)
        return None

    return wrapped


rank_zero_only.rank = _rank_from_environment()  # type: ignore[attr-defined]


@rank_zero_only
def rank_zero_info(message: str) -> None:
    log.info(message)


@rank_zero_only
def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 3) -> None:
    warnings.warn(message, category, stacklevel=stacklevel)
