"""Lightning-style plugin names (``lightning.fabric.plugins``) re-exported for an import swap."""

from fabric_lite.environments import ClusterEnvironment, LocalEnvironment, TorchElasticEnvironment
from fabric_lite.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision, TruePrecision
from fabric_lite.utilities.preemption import Preemption

__all__ = [
    "ClusterEnvironment",
    "DoublePrecision",
    "HalfPrecision",
    "LocalEnvironment",
    "MixedPrecision",
    "Precision",
    "Preemption",
    "TorchElasticEnvironment",
    "TruePrecision",
]
