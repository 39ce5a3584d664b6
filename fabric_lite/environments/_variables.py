"""Reading a launcher's rank variables with errors that name the variable, its value and the fix."""

from __future__ import annotations

from collections.abc import Mapping

from fabric_lite.errors import FabricEnvironmentError


def read_int(env: Mapping[str, str], name: str, *, lowest: int, environment: str, fix: str) -> int:
    """``env[name]`` as an integer ``>= lowest``; a missing or bad value is a FabricEnvironmentError naming it.

    Example:
        >>> read_int({"PMI_RANK": "3"}, "PMI_RANK", lowest=0, environment="mpi", fix="")
        3
    """
    raw = env.get(name)
    if raw is None:
        raise FabricEnvironmentError(
            f"The {environment} environment was detected but {name} is not set, so this process cannot be placed. {fix}"
        )
    try:
        value: int | None = int(str(raw).strip())
    except ValueError:
        value = None
    if value is None or value < lowest:
        raise FabricEnvironmentError(
            f"The environment variable {name}={raw!r} is not an integer >= {lowest}; the {environment} environment "
            f"reads it to place this process. {fix}"
        )
    return value


def check_below(
    rank_name: str, rank: int, size_name: str, size: int, *, environment: str, fix: str, what: str = "rank"
) -> None:
    """Refuse ``rank >= size`` (e.g. ``OMPI_COMM_WORLD_RANK=2`` with ``OMPI_COMM_WORLD_SIZE=2``), naming both variables."""
    if rank >= size:
        raise FabricEnvironmentError(
            f"The {environment} environment reads {what} {rank_name}={rank} and size {size_name}={size}, but a "
            f"{what} must be below the size (0 to {size - 1}). {fix}"
        )
