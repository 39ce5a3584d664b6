"""Plain words for a checkpoint that cannot be written: a full disk, a read-only file system, no permission, a quota.

torch.save hides the operating system's error behind its own (``unexpected pos 896 vs 790``); the
``OSError`` is found again in the exception's chain or, failing that, by a probe write to the same file.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import IO

from fabric_lite.errors import CheckpointError

_NO_PERMISSION = "save to a folder you may write to, or change the permissions of {folder}"
#: errno -> (what happened, the fix)
_PLAIN = {
    errno.ENOSPC: ("the disk is full", "free space on the disk of {folder} or save elsewhere"),
    errno.EDQUOT: ("your disk quota is used up", "free space within your quota or save elsewhere"),
    errno.EROFS: ("the file system is read-only", "save to a writable folder ({folder} is on a read-only mount)"),
    errno.EACCES: ("this user may not write there", _NO_PERMISSION),
    errno.EPERM: ("this user may not write there", _NO_PERMISSION),
}


def os_error_in(error: BaseException | None) -> OSError | None:
    """The first ``OSError`` with one of the errnos above in ``error``, its cause or its context."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno in _PLAIN:
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def probe(handle: IO[bytes]) -> OSError | None:
    """After torch.save failed on ``handle``: the ``OSError`` that flushing or one more write gets, if any.

    The probe writes into the temporary file that is about to be deleted, never into a checkpoint.
    """
    try:
        handle.flush()
        os.write(handle.fileno(), bytes(1 << 16))
        os.fsync(handle.fileno())
    except OSError as error:
        return error
    return None


def looks_like_a_failed_write(error: BaseException) -> bool:
    """torch's writer reports a failed write as ``unexpected pos`` (file handle) or an iostream error (path)."""
    text = str(error)
    return isinstance(error, OSError) or "unexpected pos" in text or "iostream error" in text


def probe_folder(folder: Path) -> OSError | None:
    """The ``OSError`` that writing a small file into ``folder`` gets, if any (for errors that lost theirs).

    Exceptions lose their chain when DCP gathers them from other ranks (pickling keeps no ``__context__``).
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=folder)
    except OSError as error:
        return error
    try:
        os.write(fd, bytes(1 << 16))
        os.fsync(fd)
    except OSError as error:
        return error
    finally:
        os.close(fd)
        os.unlink(name)
    return None


def write_error(path: str | Path, error: BaseException, *, asked: str, kept: str) -> CheckpointError | None:
    """A CheckpointError in plain words when ``error`` comes from a full, read-only or forbidden target, else ``None``.

    Args:
        asked: the call, e.g. ``"fabric.save('ckpt/last.ckpt')"``.
        kept: what is left at the target, e.g. ``"The previous checkpoint at that path is unchanged."``.
    """
    found = os_error_in(error)
    if found is None:
        return None
    what, fix = _PLAIN[found.errno]  # type: ignore[index]
    folder = repr(str(Path(path).parent))
    return CheckpointError(
        f"{asked} could not write {str(path)!r}: {what} ({found.strerror}). {kept} Fix: {fix.format(folder=folder)}."
    )
