"""A small real disk to fill, shared by the checkpoint tests of write errors."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(parent: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted at ``parent / "disk"`` (a real file system that fills up), unmounted afterwards.

    Mounting needs root: otherwise the test is skipped with the reason."""
    disk = parent / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
