"""Finding the newest complete checkpoint in a folder (to resume after a crash or a preemption).

Complete means what fabric_lite's writers guarantee: a file at its final name (``fabric.save`` renames a
fully written, fsync'ed temporary file into place) holding a whole torch zip archive, or a folder with a
``COMPLETE`` marker (sharded and DeepSpeed checkpoints write it after every rank's data). Temporary files
(``.name.*.tmp``) and folders without the marker are never returned.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from fabric_lite.checkpoint.sharded import MARKER
from fabric_lite.errors import CheckpointError

_STAGED = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|previous)$")


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint (file or sharded folder) directly inside ``folder``, or ``None``.

    Newest is by modification time of the file or of the folder's ``COMPLETE`` marker; ties go to the
    name that sorts last in natural order (``step-10`` after ``step-9``). If a sharded save was killed
    between its final two renames, the complete folder waiting under its staging name
    (``.NAME.partial``) is a candidate too; ``fabric.load`` reads it, and the next save to ``NAME``
    finishes the rename.

    Example:
        >>> import tempfile, torch
        >>> folder = tempfile.mkdtemp()
        >>> latest_checkpoint(folder) is None
        True
        >>> torch.save({"step": 1}, f"{folder}/step-1.ckpt")
        >>> latest_checkpoint(folder).name
        'step-1.ckpt'
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"latest_checkpoint({str(folder)!r}) needs a folder of checkpoints, but "
            f"{'that is a file' if folder.exists() else 'it does not exist'}. "
            f"Fix: pass the folder you give fabric.save paths in (e.g. 'checkpoints')."
        )
    candidates: list[tuple[int, list[object], Path]] = []
    with os.scandir(folder) as entries:
        names = {entry.name for entry in entries}
    for name in names:
        path = folder / name
        stamp = _complete_stamp(path, names)
        if stamp is not None:
            candidates.append((stamp, _natural(name), path))
    if not candidates:
        return None
    return max(candidates, key=lambda item: (item[0], item[1]))[2]


def _complete_stamp(path: Path, names: set[str]) -> int | None:
    """The modification time (ns) that dates a complete checkpoint at ``path``, or ``None`` if it is not one."""
    name = path.name
    try:
        if name.startswith("."):
            staged = _STAGED.match(name)
            # A staging folder is complete only once marked; the previous one stands in only while the
            # final name is missing (the save was killed between its two renames).
            if staged is None or (staged["kind"] == "previous" and staged["name"] in names):
                return None
            return (path / MARKER).stat().st_mtime_ns if path.is_dir() else None
        if path.is_dir():
            return (path / MARKER).stat().st_mtime_ns
        if path.is_file() and zipfile.is_zipfile(path):
            return path.stat().st_mtime_ns
    except OSError:  # vanished while we looked (a save or a clean-up running right now), or no marker
        return None
    return None


def _natural(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
