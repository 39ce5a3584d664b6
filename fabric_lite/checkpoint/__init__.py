"""Checkpoints: atomic writes, safe (weights-only) loading, and mapping user state to and from files."""

from fabric_lite.checkpoint.io import atomic_save, load_checkpoint_file

__all__ = ["atomic_save", "load_checkpoint_file"]
