"""The few exception types users catch, and the one helper that words a "not a valid choice" error.

Bad input raises a ``ValueError`` subclass, a broken environment a ``RuntimeError`` subclass and a
missing optional package an ``ImportError`` that names the pip extra (see ARCHITECTURE.md, "Error messages").
"""

from __future__ import annotations

from typing import Any, Iterable


class FabricLiteError(Exception):
    """Base class of every error fabric_lite raises on purpose."""


class ConfigurationError(FabricLiteError, ValueError):
    """The user asked for something that cannot work (unknown name, bad number, conflicting settings)."""


class FabricEnvironmentError(FabricLiteError, RuntimeError):
    """The machine or the process environment cannot do what was asked (device missing, bad cluster variables)."""


class UsageError(FabricLiteError, RuntimeError):
    """An API call made in the wrong order or on the wrong object (e.g. ``backward`` before ``setup``)."""


class CheckpointError(FabricLiteError, RuntimeError):
    """A checkpoint cannot be written, found, or loaded safely."""


class MissingPackageError(FabricLiteError, ImportError):
    """An optional package is needed; the message names the pip extra that installs it."""


def choices_error(asked: str, kind: str, choices: Iterable[Any], fix: str | None = None) -> ConfigurationError:
    """Build the standard "X is not a known KIND. Choose one of: ..." error.

    Args:
        asked: what the user wrote, as code, e.g. ``"Fabric(precision='17-mixed')"``.
        kind: the noun, e.g. ``"precision"``.
        choices: the valid names (read from a registry, never typed twice).
        fix: an optional extra sentence starting the fix.

    Example:
        >>> str(choices_error("Fabric(precision='17')", "precision", ["32-true", "bf16-mixed"]))
        "Fabric(precision='17') is not a known precision. Choose one of: 32-true, bf16-mixed."
    """
    listed = ", ".join(str(c) for c in choices)
    message = f"{asked} is not a known {kind}. Choose one of: {listed}."
    if fix:
        message += f" Fix: {fix}"
    return ConfigurationError(message)


def missing_package(package: str, extra: str, needed_for: str, hint: str | None = None) -> MissingPackageError:
    """The error for an absent optional dependency, naming the extra that installs it (``hint``: a second way)."""
    message = (
        f"{needed_for} needs the package '{package}', which is not installed. "
        f"Fix: pip install 'torch-fabric-lite[{extra}]' (in a source checkout: pip install -e '.[{extra}]')"
    )
    return MissingPackageError(message + (f"; {hint}." if hint else ""))
