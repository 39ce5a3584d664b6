"""Checksums that tell a damaged checkpoint from a good one: torch archives' own CRC-32s, and sharded folders' file lists.

A single-file checkpoint is torch's zip archive, which already holds a CRC-32 of every record (``data.pkl``,
each tensor's bytes, ...): torch computes them while saving (``torch.utils.serialization.config.save.compute_crc32``)
but never checks them on load, so a changed byte loads wrong weights silently. They are checked here with
Python's ``zipfile`` before torch reads the file. The records' CRC-32s do not cover the archive's index (the
central directory: names, offsets, sizes, the CRC-32s themselves), so ``fabric.save`` seals it: the CRC-32 of
the bytes from the index to the end goes into the zip comment (a standard field every zip reader skips), which
costs a read of the small index instead of a second pass over the tensor bytes. A sharded folder's ``COMPLETE``
marker lists the size and CRC-32 of each of its files (see ``folder``).
"""

from __future__ import annotations

import contextlib
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO

_CHUNK = 1 << 24  # 16 MiB: large reads keep zipfile's per-call overhead negligible
_SEAL = b"fabric_lite crc32="


def seal_archive(handle: IO[bytes]) -> None:
    """Write the CRC-32 of the index of the torch archive just written to ``handle`` (read/write) into its zip comment.

    The checksum covers the bytes from the central directory up to the end-of-archive record's comment length.
    """
    size = handle.seek(0, 2)
    handle.seek(size - 22)
    if handle.read(4) != b"PK\x05\x06" or (handle.seek(size - 2), handle.read(2))[1] != b"\0\0":
        return  # not the plain archive torch writes (an end record with no comment): leave it as it is
    start = zipfile.ZipFile(handle).start_dir  # type: ignore[arg-type]
    comment = _SEAL + b"%08x" % _crc_of_range(handle, start, size - 2)
    handle.seek(size - 2)
    handle.write(struct.pack("<H", len(comment)) + comment)


def _crc_of_range(handle: IO[bytes], start: int, end: int) -> int:
    crc = 0
    handle.seek(start)
    while start < end:
        chunk = handle.read(min(_CHUNK, end - start))
        if not chunk:
            raise EOFError("the file ends inside its zip index")
        crc = zlib.crc32(chunk, crc)
        start += len(chunk)
    return crc


def _seal_problem(archive: zipfile.ZipFile, handle: IO[bytes]) -> str | None:
    comment = archive.comment
    if not comment.startswith(_SEAL):
        return None  # not sealed (written by torch.save or an older fabric_lite): the records' CRC-32s still count
    try:
        expected = int(comment[len(_SEAL):], 16)
    except ValueError:
        return "its seal (the checksum in the zip comment) is damaged"
    end = handle.seek(0, 2) - len(comment) - 2
    if _crc_of_range(handle, archive.start_dir, end) != expected:
        return "its index (the zip central directory) does not match the checksum saved with it"
    return None


def archive_problem(path: Path | IO[bytes]) -> str | None:
    """Why ``path`` is not an intact torch zip archive (a short phrase), or ``None`` when every record checks out.

    ``path`` may be a readable, seekable file object instead (a remote file opened through fsspec); it stays open.
    An archive written with ``compute_crc32=False`` holds no checksums (all zero): only its layout is checked.
    """
    opened = contextlib.nullcontext(path) if hasattr(path, "read") else open(path, "rb")
    try:
        with opened as handle, zipfile.ZipFile(handle) as archive:
            seal = _seal_problem(archive, handle)
            if seal is not None:
                return seal
            infos = archive.infolist()
            folders = {info.filename.split("/", 1)[0] for info in infos}
            if len(folders) != 1 or f"{next(iter(folders))}/data.pkl" not in {info.filename for info in infos}:
                return "it is a zip archive but not a torch checkpoint (torch.save writes one folder holding data.pkl)"
            if all(info.CRC == 0 for info in infos):  # compute_crc32=False (an empty record's CRC is 0 as well)
                return None
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                    return f"its record {info.filename!r} has a damaged header (torch stores records uncompressed)"
                with archive.open(info) as member:
                    while member.read(_CHUNK):
                        pass  # zipfile compares the CRC-32 at the end of the record
    except zipfile.BadZipFile as error:
        if str(error).startswith("Bad CRC-32"):
            return f"the checksum of its record {str(error).rsplit(' ', 1)[-1]} does not match its bytes"
        return f"its zip structure is broken ({error})"
    except Exception as error:  # anything a damaged archive makes zipfile raise: EOFError, ValueError, OSError, ...
        return f"its zip structure is broken ({type(error).__name__}: {error})"
    return None


def file_checksum(path: Path) -> tuple[int, int]:
    """``(size, CRC-32)`` of a file's bytes."""
    crc, size = 0, 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    # A local Path, or a location in an fsspec store (checkpoint.remote.RemotePath), which opens itself.
    with (open(path, "rb", buffering=0) if isinstance(path, Path) else path.open("rb")) as handle:
        while count := handle.readinto(buffer):  # type: ignore[attr-defined]
            crc = zlib.crc32(view[:count], crc)
            size += count
    return size, crc


def format_checksums(checksums: dict[str, tuple[int, int]]) -> str:
    """One line per file, ``crc32 size name``, sorted by name (the marker's body)."""
    return "".join(f"crc32 {crc:08x} {size} {name}\n" for name, (size, crc) in sorted(checksums.items()))


def parse_checksums(text: str) -> dict[str, tuple[int, int]] | None:
    """The ``name -> (size, CRC-32)`` lines of a marker, or ``None`` when it lists none (older or foreign markers)."""
    checksums: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[0] == "crc32":
            try:
                checksums[parts[3]] = (int(parts[2]), int(parts[1], 16))
            except ValueError:
                return {"": (-1, -1)}  # a damaged marker: nothing will match it
    return checksums or None


def folder_problems(folder: Path, checksums: dict[str, tuple[int, int]]) -> list[str]:
    """What differs between the files in ``folder`` and the ``checksums`` the marker lists for them."""
    problems = []
    for name, (size, crc) in sorted(checksums.items()):
        if not name:
            return ["its COMPLETE marker is damaged"]
        path = folder / name
        try:
            actual_size = path.stat().st_size
            if actual_size != size:
                problems.append(f"{name} has {actual_size} bytes but was written with {size}")
                continue
            if file_checksum(path)[1] != crc:
                problems.append(f"the checksum of {name} does not match its bytes")
        except FileNotFoundError:
            problems.append(f"{name} is missing")
        except OSError as error:
            problems.append(f"{name} cannot be read ({error.strerror})")
    return problems
