"""Finding the newest complete checkpoint in a folder (to resume after a crash or a preemption).

Complete means what fabric_lite's writers guarantee: a file at its final name (``fabric.save`` renames a
fully written, fsync'ed temporary file into place) holding a whole torch zip archive, or a folder with a
``COMPLETE`` marker (sharded and DeepSpeed checkpoints write it after every rank's data). Temporary files
(``.name.*.tmp``) and folders without the marker are never returned.

Folders at fsspec URLs are searched the same way (``remote``). Candidates are verified newest first, and the first intact one is returned: a file must be a torch
archive whose checksums match (``integrity``), a folder must match the checksums its marker lists. Each
newer one that fails is skipped with a warning naming it and why; other files (logs, metrics) are ignored.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from fabric_lite.checkpoint.folder import MARKER, verification_problems
from fabric_lite.checkpoint.integrity import archive_problem
from fabric_lite.checkpoint.remote import RemotePath, location
from fabric_lite.errors import CheckpointError

_STAGED = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|previous)$")


def latest_checkpoint(folder: str | Path) -> Path | str | None:
    """The newest complete checkpoint (file or sharded folder) directly inside ``folder``, or ``None``.

    Newest is by modification time of the file or of the folder's ``COMPLETE`` marker; ties go to the
    name that sorts last in natural order (``step-10`` after ``step-9``). A newer file or folder that is
    damaged (cut off, changed after saving, not a torch checkpoint) is skipped with a warning saying why.
    If a sharded save was killed between its final two renames, the complete folder waiting under its staging name
    (``.NAME.partial``) is a candidate too; ``fabric.load`` reads it, and the next save to ``NAME``
    finishes the rename.

    ``folder`` may be an fsspec URL (``s3://bucket/run``, ``memory://run``): the same checks run on the store
    (reading each candidate newest first until one is intact), and the result is the URL of the checkpoint,
    a ``str`` to pass to ``fabric.load``. Newest is then by the store's modification time (``fs.modified``).

    Example:
        >>> import tempfile, torch
        >>> folder = tempfile.mkdtemp()
        >>> latest_checkpoint(folder) is None
        True
        >>> torch.save({"step": 1}, f"{folder}/step-1.ckpt")
        >>> latest_checkpoint(folder).name
        'step-1.ckpt'
    """
    folder = location(folder, asked=f"latest_checkpoint({folder!r})")
    if not folder.is_dir():
        raise CheckpointError(
            f"latest_checkpoint({str(folder)!r}) needs a folder of checkpoints, but "
            f"{'that is a file' if folder.exists() else 'it does not exist'}. "
            f"Fix: pass the folder you give fabric.save paths in (e.g. 'checkpoints')."
        )
    candidates: list[tuple[int, list[object], Path]] = []
    if isinstance(folder, Path):
        with os.scandir(folder) as entries:
            names = {entry.name for entry in entries}
    else:
        names = set(folder.names())
    for name in names:
        path = folder / name
        stamp = _complete_stamp(path, names)
        if stamp is not None:
            candidates.append((stamp, _natural(name), path))
    for _, _, path in sorted(candidates, key=lambda item: (item[0], item[1]), reverse=True):
        problem = _problem(path)
        if problem is None:
            return path.url if isinstance(path, RemotePath) else path
        warnings.warn(
            f"latest_checkpoint({str(folder)!r}) skipped {str(path)!r}: {problem}. Fix: delete it or move it out of "
            f"the folder once you no longer need it.",
            stacklevel=2,
        )
    return None


#: Names of files that are meant to be checkpoints: skipped with a warning when they are not intact.
_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".tar")


def _problem(path: Path | RemotePath) -> str | None:
    """Why the candidate at ``path`` is not an intact checkpoint, or ``None``."""
    try:
        if path.is_dir():
            if not (path / MARKER).is_file():
                return f"it has no {MARKER} marker, so the save that wrote it did not finish"
            problems = verification_problems(path)
            return f"its files do not match the checksums its COMPLETE marker lists ({'; '.join(problems[:3])})" \
                if problems else None
        with path.open("rb") as handle:
            head = handle.read(4)
            if head != b"PK\x03\x04":
                return "it is empty" if not head else "it is not a torch zip archive (cut off, damaged, or another format)"
            handle.seek(0)
            problem = archive_problem(handle)
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    return None if problem is None else f"it is not an intact torch checkpoint: {problem}"


def _complete_stamp(path: Path | RemotePath, names: set[str]) -> int | None:
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
            if (path / MARKER).is_file() or not _holds_shards(path):
                return (path / MARKER).stat().st_mtime_ns
            return path.stat().st_mtime_ns  # unfinished: a candidate only to be skipped with a warning
        if path.is_file() and _looks_like_checkpoint(path):
            return path.stat().st_mtime_ns
    except OSError:  # vanished while we looked (a save or a clean-up running right now), or no marker
        return None
    return None


def _natural(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _looks_like_checkpoint(path: Path | RemotePath) -> bool:
    """A checkpoint's name, or a zip archive's first bytes (torch.save's format) or a pickle's."""
    if path.name.endswith(_CHECKPOINT_SUFFIXES):
        return True
    with path.open("rb") as handle:
        head = handle.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def _holds_shards(path: Path | RemotePath) -> bool:
    return (path / ".metadata").exists() or any(path.glob("*.distcp"))
