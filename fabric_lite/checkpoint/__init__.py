"""Checkpoints: atomic writes, integrity checks, safe (weights-only) loading, finding the latest intact one, and mapping user state to and from files."""

from fabric_lite.checkpoint.io import atomic_save, load_checkpoint_file
from fabric_lite.checkpoint.latest import latest_checkpoint

__all__ = ["atomic_save", "latest_checkpoint", "load_checkpoint_file"]
