"""Atomic checkpoint files and safe loading.

A checkpoint appears at its path only when complete: it is written to a temporary file in the
same folder, flushed and fsync'ed, then renamed over the path (``os.replace`` is atomic on POSIX),
and the folder entry is fsync'ed too. Loading uses ``torch.load(weights_only=True)`` with the few
extra types fabric_lite itself stores allow-listed, so a crafted pickle cannot run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from fabric_lite.errors import CheckpointError


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` such that ``path`` holds either the old file or the complete new one.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> atomic_save({"x": 1}, os.path.join(d, "a.ckpt"))
        >>> sorted(os.listdir(d))
        ['a.ckpt']
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"fabric.save({str(path)!r}) cannot write a file there: that path is an existing folder. "
            f"Fix: choose a file path such as {str(path / 'last.ckpt')!r}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint gets the permissions open() would give
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with _ignore_missing():
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _ignore_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, FileNotFoundError)


def _check_format(path: Path) -> None:
    """Refuse a file that is no torch checkpoint at all (empty, damaged, another format) before unpickling it."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise CheckpointError(
            f"fabric.load({str(path)!r}) got an empty file (0 bytes): a save or copy that was cut off. "
            f"Fix: load another checkpoint from {str(path.parent)!r} (fabric.save writes atomically, so an older one "
            f"is complete)."
        )
    # torch.save writes a zip archive (b"PK\x03\x04"); its legacy format and plain pickles start with PROTO (0x80).
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        raise CheckpointError(
            f"fabric.load({str(path)!r}) got a file that is not a torch checkpoint: it is neither a zip archive "
            f"(torch.save's format) nor a pickle (it starts with {head!r}). It is damaged or of another format. "
            f"Fix: pass a file written by fabric.save or torch.save, or load another checkpoint from {str(path.parent)!r}."
        )


def safe_globals() -> list[Any]:
    """Types fabric_lite's own checkpoints may contain beyond what ``weights_only`` allows by itself."""
    allowed: list[Any] = []
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allowed += [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
        allowed += [type(np.dtype(t)) for t in (np.float32, np.float64, np.int64, np.int32, np.bool_)]
    except (ImportError, AttributeError):
        pass
    return allowed


def load_checkpoint_file(path: str | Path, *, weights_only: bool = True, map_location: Any = "cpu") -> Any:
    """Load a file written by :func:`atomic_save` (or ``torch.save``), refusing arbitrary code by default.

    Args:
        path: the checkpoint file.
        weights_only: keep ``True`` unless you trust the file: ``False`` lets pickle run any code in it.
        map_location: where tensors are loaded (CPU by default; the strategy moves them afterwards).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"fabric.load({str(path)!r}) found no checkpoint: the path does not exist. "
            f"Fix: check the path, or list the folder {str(path.parent)!r} for saved checkpoints."
        )
    if path.is_dir():
        if (path / "COMPLETE").is_file():
            raise CheckpointError(
                f"fabric.load({str(path)!r}) got a sharded checkpoint folder, which this strategy cannot read. "
                f"Fix: load it with the strategy that wrote it ('fsdp' or a DeepSpeed strategy), or convert it once: "
                f"fabric-run consolidate {path} --output FILE."
            )
        raise CheckpointError(
            f"fabric.load({str(path)!r}) got a folder, but this strategy saves single-file checkpoints. "
            f"Fix: pass the checkpoint file inside it."
        )
    _check_format(path)
    try:
        if not weights_only:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"fabric.load({str(path)!r}) refused to unpickle this file with weights_only=True: {first_line} "
            f"It may contain code that would run on load. Fix: if you made this file yourself and trust it, "
            f"call fabric.load(path, weights_only=False)."
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError) as error:
        reason = str(error).strip().split(". ")[0] or "the file ended too early"
        raise CheckpointError(
            f"fabric.load({str(path)!r}) could not read the file ({type(error).__name__}: {reason}); it may be truncated. "
            f"It is not a complete torch checkpoint. Fix: load another checkpoint from {str(path.parent)!r}."
        ) from None
