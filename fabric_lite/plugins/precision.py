"""Precision plugins under the names of ``lightning.fabric.plugins.precision``.

``FSDPPrecision`` loads on first access, so that importing this module never imports torch.distributed.fsdp.
``TruePrecision`` (``"32-true"``) is fabric_lite's own: Lightning's ``Precision`` base class plays that role there.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fabric_lite.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision, TruePrecision, XLAPrecision
from fabric_lite.precision.deepspeed import DeepSpeedPrecision

if TYPE_CHECKING:
    from fabric_lite.precision.fsdp import FSDPPrecision

__all__ = [
    "DeepSpeedPrecision",
    "DoublePrecision",
    "FSDPPrecision",
    "HalfPrecision",
    "MixedPrecision",
    "Precision",
    "TruePrecision",
    "XLAPrecision",
]


def __getattr__(name: str) -> Any:
    if name == "FSDPPrecision":
        value = importlib.import_module("fabric_lite.precision.fsdp").FSDPPrecision
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"FSDPPrecision"})
