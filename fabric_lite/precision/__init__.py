"""Precision plugins: how modules are cast, how forward runs, how backward and step are scaled."""

from fabric_lite.precision.amp import MixedPrecision
from fabric_lite.precision.base import Precision
from fabric_lite.precision.true import DoublePrecision, HalfPrecision, TruePrecision
from fabric_lite.precision.xla import XLAPrecision

__all__ = ["DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision", "TruePrecision", "XLAPrecision"]
