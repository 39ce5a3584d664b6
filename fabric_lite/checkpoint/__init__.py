"""Checkpoints: atomic writes, integrity checks, safe (weights-only) loading, finding the latest intact one, and mapping user state to and from files.

Every path may be a local one or an fsspec URL (``s3://bucket/run/last.ckpt``, ``file://...``, ``memory://...``);
see ``checkpoint.remote`` for what each kind of store guarantees.
"""

from fabric_lite.checkpoint.folder import checkpoint_exists, remove_checkpoint
from fabric_lite.checkpoint.io import atomic_save, load_checkpoint_file
from fabric_lite.checkpoint.latest import latest_checkpoint

__all__ = ["atomic_save", "checkpoint_exists", "latest_checkpoint", "load_checkpoint_file", "remove_checkpoint"]
