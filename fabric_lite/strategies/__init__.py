"""Strategies: where modules live, how they are wrapped and sharded, how processes talk."""

from fabric_lite.strategies.base import Strategy
from fabric_lite.strategies.single_device import SingleDeviceStrategy

__all__ = ["SingleDeviceStrategy", "Strategy"]
