"""Lightning-style plugin names (``lightning.fabric.plugins``) re-exported for an import swap."""

from fabric_lite.environments import ClusterEnvironment, LocalEnvironment, TorchElasticEnvironment
from fabric_lite.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision, TruePrecision

__all__ = [
    "ClusterEnvironment",
    "DoublePrecision",
    "HalfPrecision",
    "LocalEnvironment",
    "MixedPrecision",
    "Precision",
    "TorchElasticEnvironment",
    "TruePrecision",
]
