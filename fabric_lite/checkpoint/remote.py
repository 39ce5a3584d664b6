"""Checkpoint paths that are URLs (``memory://``, ``file://``, ``s3://``, ``gs://``, ...), read and written through fsspec.

A URL resolves to an fsspec file system and the path inside it (:func:`resolve`); a protocol fsspec does not know,
or whose package is missing (``s3fs`` for ``s3://``), is refused with the package to install. What stays true:

* Single files: on a file system whose rename is atomic (``file://``, ``memory://``) a checkpoint is written to a
  temporary name next to the target and moved over it, as for local paths (``file://`` is also fsync'ed). On other
  stores (object stores: S3, GCS, Azure) there is no rename: the complete archive is written to a local temporary
  file and uploaded once to the final key. S3 and GCS make an object visible only when its upload completes (one
  PUT, or the completion of a multipart upload), so a reader sees the old object or the whole new one; on stores
  without that guarantee atomicity is theirs to give. Either way a failed save leaves no temporary object.
* Integrity: the archive's seal (``integrity``) is written the same way (:class:`SealingWriter` computes it while
  streaming), and a loaded remote file gets the same checks as a local one: a cut-off or changed remote object
  raises the same CheckpointError, naming the URL.

``memory://`` lives in one process: ranks of a multi-process job each see their own, so sharded saves there work in
one process only (use ``file://`` or a real store across processes).

This module holds only where a URL points; ``io`` reads and writes the files, ``folder`` the sharded folders.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

from fabric_lite.checkpoint.integrity import _SEAL
from fabric_lite.errors import ConfigurationError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*(://|::)")
#: Protocols whose ``mv`` of a file is atomic: a rename (local) or one dictionary assignment (memory).
RENAMING = frozenset({"file", "local", "memory"})
#: For the error on an unknown protocol: the common ones and the package each needs.
_COMMON = "file://, memory://, s3:// (pip install s3fs), gs:// (pip install gcsfs), az:// (pip install adlfs)"


def is_url(path: Any) -> bool:
    """Whether ``path`` is a URL (``s3://bucket/x``, or a chained ``simplecache::s3://...``) rather than a local path.

    Example:
        >>> is_url("s3://bucket/last.ckpt"), is_url("runs/run:1/last.ckpt")
        (True, False)
    """
    return isinstance(path, str) and _URL.match(path) is not None


def scheme_of(url: str) -> str:
    return re.split(r"://|::", url, maxsplit=1)[0]


@dataclass(frozen=True)
class RemotePath:
    """A location inside an fsspec file system: the file system, its own path, and the URL as the user wrote it."""

    fs: Any
    path: str
    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        head, _, rest = self.url.rpartition("://")
        rest = rest.rstrip("/")
        url = f"{head}://{rest.rsplit('/', 1)[0]}" if "/" in rest else f"{head}://"
        return RemotePath(self.fs, self.fs._parent(self.path), url)

    def child(self, name: str) -> RemotePath:
        url = self.url if self.url.endswith("://") else f"{self.url.rstrip('/')}/"  # 'memory://' + name at the root
        return RemotePath(self.fs, f"{self.path.rstrip('/')}/{name}", f"{url}{name}")

    def __truediv__(self, name: str) -> RemotePath:
        return self.child(name)

    # The few ``pathlib.Path`` methods the folder protocol uses, so that it runs on a store as on a disk.
    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if not exist_ok and self.fs.exists(self.path):
            raise FileExistsError(self.url)
        self.fs.makedirs(self.path, exist_ok=True)

    def open(self, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(self.path, mode)  # type: ignore[no-any-return]

    def read_text(self, errors: str = "strict") -> str:
        return bytes(self.fs.cat_file(self.path)).decode("utf-8", errors=errors)

    def write_text(self, text: str) -> None:
        self.fs.pipe_file(self.path, text.encode())

    def unlink(self) -> None:
        if not self.fs.isfile(self.path):
            raise FileNotFoundError(self.url)
        self.fs.rm_file(self.path)

    def stat(self) -> SimpleNamespace:
        """``st_size`` and ``st_mtime_ns`` (0 where the store keeps no modification time, e.g. a folder prefix)."""
        info = self.fs.info(self.path)  # FileNotFoundError when nothing is there
        try:
            stamp = self.fs.modified(self.path)
        except Exception:  # noqa: BLE001 - NotImplementedError, or a folder the store keeps no time for
            stamp = None
        mtime_ns = int(stamp.timestamp() * 1_000_000) * 1000 if stamp is not None else 0
        return SimpleNamespace(st_size=int(info.get("size") or 0), st_mtime_ns=mtime_ns)

    def glob(self, pattern: str) -> list[RemotePath]:
        return [self.child(found.rstrip("/").rsplit("/", 1)[-1]) for found in self.fs.glob(f"{self.path}/{pattern}")]

    def names(self) -> list[str]:
        """The names directly inside this folder (``os.listdir``)."""
        return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self.path, detail=False)]

    @property
    def renames_atomically(self) -> bool:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        return bool(RENAMING.intersection(protocols))

    @property
    def is_local(self) -> bool:
        """A ``file://`` URL: the path is a local one, which can be fsync'ed."""
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)


def resolve(url: str, *, asked: str) -> RemotePath:
    """The fsspec file system and path of ``url``; a ConfigurationError naming the package to install otherwise.

    Args:
        asked: the call, e.g. ``"fabric.save('s3://b/last.ckpt')"``, for the error.
    """
    scheme = scheme_of(url)
    try:
        import fsspec
        from fsspec.registry import known_implementations
    except ImportError:
        raise ConfigurationError(
            f"{asked} names a {scheme}:// URL, which fabric_lite reads and writes through fsspec, but fsspec is not "
            f"installed. Fix: pip install fsspec (and the package of the protocol, e.g. s3fs for s3://), or pass a "
            f"local path."
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as error:
        package = known_implementations.get(scheme, {}).get("class", "").split(".")[0]
        fix = f"pip install {package}" if package else "install the fsspec implementation of that protocol"
        raise ConfigurationError(
            f"{asked} names a {scheme}:// URL, but the package fsspec needs for {scheme}:// is not installed "
            f"({error}). Fix: {fix}, or pass a local path."
        ) from None
    except ValueError as error:
        if "Protocol not known" not in str(error):
            raise ConfigurationError(f"{asked}: fsspec cannot open that URL ({error}). Fix: check the URL.") from None
        raise ConfigurationError(
            f"{asked} names a {scheme}:// URL, but fsspec knows no file system for {scheme}://. Fix: use one of its "
            f"protocols ({_COMMON}; all of them: fsspec.available_protocols()), or pass a local path."
        ) from None
    return RemotePath(fs, path, url)


def location(path: Any, *, asked: str) -> Path | RemotePath:
    """A local ``Path``, or the :class:`RemotePath` of a URL (which offers the ``Path`` methods checkpoints use)."""
    return resolve(path, asked=asked) if is_url(path) else Path(path)


def refuse_folder(path: Any, *, asked: str, what: str) -> None:
    """Refuse a URL for a checkpoint kind that is written by code reading local paths only (DeepSpeed's engine)."""
    if is_url(path):
        raise ConfigurationError(
            f"{asked} names a {scheme_of(path)}:// URL, but {what} are written and read by code that takes local "
            f"paths only. Fix: save to a local or mounted path (e.g. a FUSE mount of the bucket) and copy the folder "
            f"with your storage tool."
        )


class SealingWriter:
    """A write-only stream for ``torch.save`` that seals the archive on the way (as ``integrity.seal_archive``).

    ``torch.save`` only writes, and the archive's index (the central directory) comes last, after the records'
    bytes. Large writes of record data pass straight on to ``handle`` (no copy); small writes, and from the first
    write that starts the index (its ``PK\\x01\\x02`` signature) everything after it, are held back (copied).
    :meth:`finish` finds the index in what is held, writes it with the seal in its zip comment, and returns whether
    it could (an index not held, e.g. larger than ``keep``, stays unsealed: the records' own CRC-32s are still
    checked on load).
    """

    def __init__(self, handle: IO[bytes], keep: int = 1 << 24, small: int = 1 << 16) -> None:
        self.handle, self.keep, self.small = handle, keep, small
        self.held: list[bytes] = []
        self.held_size = 0
        self.written = 0  # bytes passed on to handle

    def write(self, data: bytes) -> int:
        size = memoryview(data).nbytes
        in_index = bool(self.held) and self.held[0][:4] == _INDEX_ENTRY
        if size >= self.small and not in_index:
            self._release()
            if bytes(memoryview(data)[:4]) != _INDEX_ENTRY:
                self.handle.write(data)
                self.written += size
                return size
        self.held.append(bytes(data))  # torch passes memoryviews of buffers it reuses
        self.held_size += size
        if self.held_size > self.keep:
            self._release()
        return size

    def _release(self) -> None:
        if self.held:
            self.handle.write(b"".join(self.held))
            self.written += self.held_size
            self.held, self.held_size = [], 0

    def flush(self) -> None:
        return None

    def finish(self) -> bool:
        tail, sealed = bytearray(b"".join(self.held)), False
        start = _index_start(tail, self.written)
        if start is not None:
            comment = _SEAL + b"%08x" % zlib.crc32(tail[start - self.written:-2])
            tail = tail[:-2] + struct.pack("<H", len(comment)) + comment
            sealed = True
        self.handle.write(tail)
        self.written += len(tail)
        self.held, self.held_size = [], 0
        return sealed


_INDEX_ENTRY = b"PK\x01\x02"  # the signature of a central directory entry


def _index_start(tail: bytearray, base: int) -> int | None:
    """Where the central directory of the archive ending with ``tail`` starts (an offset in the whole archive).

    ``base`` is the archive offset of ``tail[0]``. ``None`` when the archive is not the plain one torch writes
    (an end record with no comment) or its index does not lie within ``tail``.
    """
    if len(tail) < 22 or tail[-22:-18] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
        return None
    (offset,) = struct.unpack("<I", tail[-6:-2])
    if offset == 0xFFFFFFFF:  # zip64: the locator before the end record points at the zip64 end record
        locator = tail[-42:-22]
        if len(locator) != 20 or locator[:4] != b"PK\x06\x07":
            return None
        record = struct.unpack("<Q", locator[8:16])[0] - base
        if record < 0 or tail[record:record + 4] != b"PK\x06\x06":
            return None
        (offset,) = struct.unpack("<Q", tail[record + 48:record + 56])
    return offset if offset >= base else None


def fsync_local(path: str) -> None:
    """fsync a ``file://`` target (file or folder), as the local writer does; ignores file systems that refuse."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
