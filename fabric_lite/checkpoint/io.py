"""Atomic checkpoint files and safe loading.

A checkpoint appears at its path only when complete: it is written to a temporary file in the
same folder, flushed and fsync'ed, then renamed over the path (``os.replace`` is atomic on POSIX),
and the folder entry is fsync'ed too. Loading uses ``torch.load(weights_only=True)`` with the few
extra types fabric_lite itself stores allow-listed, so a crafted pickle cannot run code.

A path may also be an fsspec URL (``memory://``, ``file://``, ``s3://``...): the same archive, seal and checks,
written with a temporary name and ``fs.mv`` where the store renames atomically, else uploaded once to the final
key (object stores make an object visible only when its upload completes). See ``remote``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any

import torch

from fabric_lite.checkpoint.disk import os_error_in, probe, write_error
from fabric_lite.checkpoint.integrity import archive_problem, seal_archive
from fabric_lite.checkpoint.remote import RemotePath, SealingWriter, fsync_local, is_url, resolve
from fabric_lite.errors import CheckpointError


def atomic_save(obj: Any, path: str | Path | RemotePath, *, asked: str | None = None) -> None:
    """``torch.save(obj, path)`` such that ``path`` holds either the old file or the complete new one.

    A full disk, a read-only file system or a folder this user may not write raise a CheckpointError
    that says so in plain words; the old file stays and no temporary file is left.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> atomic_save({"x": 1}, os.path.join(d, "a.ckpt"))
        >>> sorted(os.listdir(d))
        ['a.ckpt']
    """
    if isinstance(path, RemotePath) or is_url(path):
        asked = asked or f"fabric.save({str(path)!r})"
        _save_remote(obj, path if isinstance(path, RemotePath) else resolve(path, asked=asked), asked=asked)
        return
    path = Path(path)
    asked = asked or f"fabric.save({str(path)!r})"
    if path.is_dir():
        raise CheckpointError(
            f"{asked} cannot write a file there: that path is an existing folder. "
            f"Fix: choose a file path such as {str(path / 'last.ckpt')!r}."
        )
    kept = "The checkpoint at that path (if any) is unchanged and no partial file was left."
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise (write_error(path, error, asked=asked, kept=kept) or error) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint gets the permissions open() would give
        with os.fdopen(fd, "w+b") as handle:
            try:
                torch.save(obj, handle)
                seal_archive(handle)  # the checksum of the archive's index, checked by load_checkpoint_file
                handle.flush()
                os.fsync(handle.fileno())
            except RuntimeError as error:  # torch's writer reports a failed write as 'unexpected pos ...'
                found = None if os_error_in(error) else probe(handle)
                if found is not None:
                    raise found from error
                raise
        os.replace(tmp_name, path)
    except BaseException as error:
        with _ignore_missing():
            os.unlink(tmp_name)
        mapped = write_error(path, error, asked=asked, kept=kept) if isinstance(error, Exception) else None
        if mapped is not None:
            raise mapped from None
        raise
    fsync_dir(path.parent)


def _save_remote(obj: Any, target: RemotePath, *, asked: str) -> None:
    """``atomic_save`` to a URL: a temporary name and an atomic ``mv`` where the store has one, else one upload.

    See ``remote`` for what each kind of store guarantees.
    """
    fs = target.fs
    if fs.isdir(target.path):
        raise CheckpointError(
            f"{asked} cannot write a file there: that URL is an existing folder. "
            f"Fix: choose a file path such as {str(target.child('last.ckpt'))!r}."
        )
    kept = "The checkpoint at that URL (if any) is unchanged and no temporary file was left."
    staged: RemotePath | None = None
    try:
        fs.makedirs(target.parent.path, exist_ok=True)
        if target.renames_atomically:
            staged = target.parent.child(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
            handle = fs.open(staged.path, "wb")
            try:
                writer = SealingWriter(handle)
                torch.save(obj, writer)
                writer.finish()
                handle.flush()
                if target.is_local:
                    os.fsync(handle.fileno())
            finally:
                handle.close()
            fs.mv(staged.path, target.path)
            staged = None
        else:  # an object store: the complete, sealed archive is uploaded once to the final key
            with tempfile.TemporaryDirectory(prefix="fabric_lite-upload-") as spool:
                local = os.path.join(spool, target.name)
                with open(local, "w+b") as handle:
                    torch.save(obj, handle)
                    seal_archive(handle)
                fs.put_file(local, target.path)
    except BaseException as error:
        if staged is not None:
            _remove_quietly(fs, staged.path)
        if not isinstance(error, Exception) or isinstance(error, CheckpointError):
            raise
        mapped = write_error(target.path, error, asked=asked, kept=kept) if target.is_local else None
        if mapped is not None:  # file:// on a full, read-only or forbidden disk: said as for a local path
            raise mapped from None
        raise CheckpointError(
            f"{asked} could not write {target.url!r}: {type(error).__name__}: {_first_line(error)}. {kept} "
            f"Fix: check that the store is reachable and writable (credentials, bucket, quota), then save again."
        ) from error
    if target.is_local:
        fsync_local(target.parent.path)


def _remove_quietly(fs: Any, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0] or "no message"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
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


_fsync_dir = fsync_dir  # the former name, still used inside checkpoint/folder.py


def _check_format(path: Path) -> bytes:
    """Refuse a file that is no torch checkpoint at all (empty, another format) before unpickling it; return its head."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as error:
        raise _unreadable(path, f"it cannot be opened ({error.strerror})") from None
    return _check_head(head, str(path), str(path.parent))


def _check_head(head: bytes, shown: str, folder: str) -> bytes:
    if not head:
        raise CheckpointError(
            f"fabric.load({shown!r}) got an empty file (0 bytes): a save or copy that was cut off. "
            f"Fix: load another checkpoint from {folder!r} (fabric.save writes atomically, so an older one "
            f"is complete)."
        )
    # torch.save writes a zip archive (b"PK\x03\x04"); its legacy format and plain pickles start with PROTO (0x80).
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        raise CheckpointError(
            f"fabric.load({shown!r}) got a file that is not a torch checkpoint: it is neither a zip archive "
            f"(torch.save's format) nor a pickle (it starts with {head!r}). It is damaged or of another format. "
            f"Fix: pass a file written by fabric.save or torch.save, or load another checkpoint from {folder!r}."
        )
    return head


def _unreadable(path: Path | RemotePath, problem: str) -> CheckpointError:
    return CheckpointError(
        f"fabric.load({str(path)!r}) could not read the file: {problem}. It is not a complete torch checkpoint: it was "
        f"cut off or changed after it was written, or is of another kind. Fix: load another checkpoint from "
        f"{str(path.parent)!r} (latest_checkpoint(folder) names the newest intact one), or save it again."
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


def load_checkpoint_file(path: str | Path | RemotePath, *, weights_only: bool = True, map_location: Any = "cpu") -> Any:
    """Load a file written by :func:`atomic_save` (or ``torch.save``), refusing arbitrary code by default.

    Args:
        path: the checkpoint file.
        weights_only: keep ``True`` unless you trust the file: ``False`` lets pickle run any code in it.
        map_location: where tensors are loaded (CPU by default; the strategy moves them afterwards).
    """
    if isinstance(path, RemotePath):
        return _load_remote(path, weights_only, map_location)
    if is_url(path):
        return _load_remote(resolve(path, asked=f"fabric.load({path!r})"), weights_only, map_location)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"fabric.load({str(path)!r}) found no checkpoint: the path does not exist. "
            f"Fix: check the path, or list the folder {str(path.parent)!r} for saved checkpoints."
        )
    if path.is_dir():
        raise _folder_error(str(path), sharded=(path / "COMPLETE").is_file())
    if _check_format(path) == b"PK\x03\x04":
        problem = archive_problem(path)  # before torch reads it: torch never checks the archive's CRC-32s
        if problem is not None:
            raise _unreadable(path, problem)
    return _torch_load(path, path, weights_only, map_location)


def _load_remote(source: RemotePath, weights_only: bool, map_location: Any) -> Any:
    """``load_checkpoint_file`` of a URL: the same checks, on the store's file object (no local copy)."""
    fs, shown = source.fs, source.url
    try:
        info = fs.info(source.path)
    except FileNotFoundError:
        raise CheckpointError(
            f"fabric.load({shown!r}) found no checkpoint: nothing exists at that URL. "
            f"Fix: check the URL, or list {str(source.parent)!r} for saved checkpoints (fs.ls)."
        ) from None
    if info.get("type") == "directory":
        raise _folder_error(shown, sharded=fs.isfile(source.child("COMPLETE").path))
    try:
        with fs.open(source.path, "rb") as handle:
            head = _check_head(handle.read(4), shown, str(source.parent))
            if head == b"PK\x03\x04":
                handle.seek(0)
                problem = archive_problem(handle)
                if problem is not None:
                    raise _unreadable(source, problem)
            handle.seek(0)
            return _torch_load(handle, source, weights_only, map_location)
    except OSError as error:
        raise _unreadable(source, f"it cannot be read ({type(error).__name__}: {_first_line(error)})") from None


def _folder_error(shown: str, *, sharded: bool) -> CheckpointError:
    if sharded:
        return CheckpointError(
            f"fabric.load({shown!r}) got a sharded checkpoint folder, which this strategy cannot read. "
            f"Fix: load it with the strategy that wrote it ('fsdp' or a DeepSpeed strategy), or convert it once: "
            f"fabric-run consolidate {shown} --output FILE."
        )
    return CheckpointError(
        f"fabric.load({shown!r}) got a folder, but this strategy saves single-file checkpoints. "
        f"Fix: pass the checkpoint file inside it."
    )


def _torch_load(source: Path | IO[bytes], path: Path | RemotePath, weights_only: bool, map_location: Any) -> Any:
    try:
        if not weights_only:
            return torch.load(source, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"fabric.load({str(path)!r}) refused to unpickle this file with weights_only=True: {first_line} "
            f"It may contain code that would run on load. Fix: if you made this file yourself and trust it, "
            f"call fabric.load(path, weights_only=False)."
        ) from None
    except Exception as error:  # a damaged legacy (non-zip) file can make torch raise nearly anything
        reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0] or "the file ended too early"
        raise _unreadable(path, f"torch.load failed ({type(error).__name__}: {reason})") from None
