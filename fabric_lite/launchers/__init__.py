"""Launchers: how the processes of a run are made (spawn/fork, re-running the script, or nobody: external)."""

from fabric_lite.launchers.base import Launcher
from fabric_lite.launchers.external import ExternalLauncher

__all__ = ["ExternalLauncher", "Launcher"]
