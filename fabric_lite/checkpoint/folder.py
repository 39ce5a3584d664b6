"""The folder protocol of sharded checkpoints: staging, a COMPLETE marker that lists every file's checksum, the
rename into place, recovery of a save killed part-way, and agreement so that every rank raises the same error.

A step that can fail on one rank only (rank 0 writing ``meta.pt``, one rank finding a damaged shard) is followed
by an all-gather of what each rank raised: if any rank failed, every rank raises the same CheckpointError instead
of one rank raising while the others wait in the next collective until the timeout.

A folder may be at an fsspec URL (``remote.RemotePath``): the same protocol runs through the store. Where its rename
is atomic (``file://``, ``memory://``) the staging folder is moved into place with ``fs.mv``. An object store (S3,
GCS) has no folder rename, so the folder is written in place: the old folder at the path is removed first (its
marker first), and the marker, written last, makes the new one complete; a save that fails part-way there leaves
no checkpoint at that path (loads and ``latest_checkpoint`` refuse a folder without its marker), so give each
save its own path (``step-100``) on such stores. Verifying checksums reads every file back from the store.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fabric_lite.checkpoint.disk import looks_like_a_failed_write, probe_folder, write_error
from fabric_lite.checkpoint.integrity import file_checksum, folder_problems, format_checksums, parse_checksums
from fabric_lite.checkpoint.remote import RemotePath, fsync_local, location
from fabric_lite.errors import CheckpointError, FabricLiteError

MARKER = "COMPLETE"
META_FILE = "meta.pt"
TITLE = "fabric_lite sharded checkpoint: complete"
KEPT = "The checkpoint at that path (if any) is unchanged and the unfinished folder was removed."
#: On a store without an atomic folder rename the folder is written in place (see :func:`save_folder`).
KEPT_IN_PLACE = ("The unfinished folder was removed; this store has no atomic rename, so a save writes in place "
                 "and a checkpoint that was at that path is gone if the save had begun writing.")
_T = TypeVar("_T")
#: A local folder, or one in an fsspec store (``remote.RemotePath`` offers the ``Path`` methods used here).
Folder = Path | RemotePath


def _in_place(path: Folder) -> bool:
    """Whether a sharded save to ``path`` is written in place: a store without an atomic rename (S3, GCS)."""
    return isinstance(path, RemotePath) and not path.renames_atomically


def _kept(path: Folder) -> str:
    return KEPT_IN_PLACE if _in_place(path) else KEPT


def _temporary_sibling(path: Folder, suffix: str) -> Folder:
    # Deterministic, so that every rank names the same folder without a broadcast.
    return path.parent / f".{path.name}.{suffix}"


# ----------------------------------------------------------------------------- agreement between ranks
def on_every_rank(fn: Callable[[], _T], *, asked: str, path: Path, world_size: int, gather: bool = False) -> Any:
    """Run ``fn`` on this rank and learn whether every rank succeeded; if one raised, every rank raises.

    The rank that failed raises its own error if it is fabric_lite's (a ConfigurationError stays one), else a
    CheckpointError from it; the others raise a CheckpointError with the failing rank's message. Returns this
    rank's result, or (``gather``) the list of every rank's result.
    """
    failure: Exception | None = None
    try:
        result: Any = fn()
        message = None
    except Exception as error:  # noqa: BLE001 - told to every rank, then raised again below
        failure, result, message = error, None, describe(error, asked=asked, path=path)
    outcomes = _gather((result if gather else None, message), world_size)
    failed = [(rank, text) for rank, (_, text) in enumerate(outcomes) if text is not None]
    if failed:
        if isinstance(failure, FabricLiteError):
            raise failure
        rank, message = failed[0]
        if world_size > 1 and not message.endswith("]"):
            more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
            message = message.rstrip(".") + f". [failed on rank {rank}{more}]"
        raise CheckpointError(message) from failure
    return [value for value, _ in outcomes] if gather else result


def _gather(obj: Any, world_size: int) -> list[Any]:
    if world_size <= 1:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def describe(error: BaseException, *, asked: str, path: Folder) -> str:
    """One message for what a rank raised: fabric_lite's own, a full or read-only disk in plain words, or the error."""
    if isinstance(error, CheckpointError):
        return str(error)
    if isinstance(path, RemotePath):
        return (f"{asked} failed: {type(error).__name__}: {_first_sentence(error)}. {_kept(path)} Fix: resolve that "
                f"error (check that the store is reachable and writable: credentials, bucket, quota) and save again")
    mapped = write_error(path, error, asked=asked, kept=KEPT)
    if mapped is None and looks_like_a_failed_write(error):  # its OSError may be lost: ask the disk itself
        probed = probe_folder(path.parent) if path.parent.is_dir() else None
        mapped = write_error(path, probed, asked=asked, kept=KEPT) if probed is not None else None
    if mapped is not None:
        return str(mapped)
    return (f"{asked} failed: {type(error).__name__}: {_first_sentence(error)}. Nothing was written at that path (a "
            f"checkpoint already there is unchanged). Fix: resolve that error (the rank that raised it shows its "
            f"traceback) and save again")


def _first_sentence(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")


def dcp_error(error: BaseException, *, asked: str, path: Path, reading: bool) -> CheckpointError:
    """DCP's CheckpointException (a BaseException that escapes ``except Exception``) as one CheckpointError.

    DCP gathers what every rank raised and raises on all of them, so every rank converts the same failures.
    """
    failures = []
    for rank, failure in sorted(getattr(error, "failures", {}).items()):
        failures.append((rank, failure[0] if isinstance(failure, tuple) else failure))
    for _, inner in failures:
        if isinstance(inner, CheckpointError):
            return inner
    rank, inner = failures[0] if failures else (0, error)
    if not reading:
        return CheckpointError(describe(inner, asked=asked, path=path) + f" [failed on rank {rank}]")
    return CheckpointError(
        f"{asked} could not read the sharded checkpoint {str(path)!r} (rank {rank}: {type(inner).__name__}: "
        f"{_first_sentence(inner)}). The folder is damaged, or was saved from other objects. Fix: load another checkpoint "
        f"(latest_checkpoint(folder) names the newest intact one), or save it again."
    )


# ----------------------------------------------------------------------------- saving
def save_folder(
    path: str | Path,
    write_shards: Callable[[Path], None],
    extra: dict[str, Any],
    *,
    rank: int,
    world_size: int,
) -> None:
    """Write a sharded checkpoint folder at ``path``; every rank calls this (it runs collectives).

    Args:
        write_shards: writes this rank's shards into the given staging folder (a DCP save: a collective).
        extra: small picklable values rank 0 writes to ``meta.pt``.
        rank, world_size: of this process; rank 0 writes ``meta.pt``, the marker, and renames.
    """
    from fabric_lite.checkpoint.io import atomic_save

    path = location(path, asked=f"fabric.save({str(path)!r})")
    asked = f"fabric.save({str(path)!r})"
    if path.is_file():
        raise CheckpointError(
            f"{asked} writes a sharded checkpoint, which is a folder, but that path is an existing "
            f"file. Fix: choose another path, delete the file, or use FSDPStrategy(state_dict_type='full') for one file."
        )
    # A store without an atomic rename (an object store) gets no staging folder: the folder is written in place and
    # its marker, written last, makes it complete; the old checkpoint at the path is removed (marker first) before.
    staging = path if _in_place(path) else _temporary_sibling(path, "partial")

    def together(fn: Callable[[], _T], gather: bool = False) -> Any:
        return on_every_rank(fn, asked=asked, path=path, world_size=world_size, gather=gather)

    def prepare() -> None:
        if rank == 0:
            recover(path)  # finish or clear what a save killed part-way left next to the path
            if staging == path:
                remove_folder(path)
            staging.mkdir(parents=True)
            atomic_save(extra, staging / META_FILE, asked=asked)

    def finish(shares: list[dict[str, tuple[int, int]]]) -> None:
        if rank == 0:
            checksums = {name: value for share in shares for name, value in share.items()}
            (staging / MARKER).write_text(f"{TITLE}\n{format_checksums(checksums)}")
            _sync_folder(staging)
            if staging != path:
                _move_into_place(staging, path)

    try:
        together(prepare)
        together(lambda: write_shards(staging))
        shares = together(lambda: checksum_share(staging, rank=rank, world_size=world_size), gather=True)
        together(lambda: finish(shares))
    except FabricLiteError:  # every rank knows the save failed, and none writes into the staging folder any more
        if rank == 0:
            remove_folder(staging)
        _gather(None, world_size)  # no rank returns before the unfinished folder is gone
        raise
    except BaseException:  # interrupted, or a collective broke: clean up without waiting for the others
        if rank == 0:
            remove_folder(staging)
        raise


def checksum_share(folder: Folder, *, rank: int, world_size: int) -> dict[str, tuple[int, int]]:
    """``(size, CRC-32)`` of this rank's share of the files in ``folder`` (every ``world_size``-th, by name)."""
    listed = folder.names() if isinstance(folder, RemotePath) else os.listdir(folder)
    names = sorted(name for name in listed if name != MARKER)
    return {name: file_checksum(folder / name) for name in names[rank::world_size]}


def _rename(source: Folder, target: Folder) -> None:
    if isinstance(source, RemotePath) and isinstance(target, RemotePath):
        source.fs.mv(source.path, target.path, recursive=True)  # local: a rename; memory: dictionary entries
    else:
        os.replace(source, target)  # type: ignore[arg-type]


def _sync_folder(folder: Folder) -> None:
    from fabric_lite.checkpoint.io import _fsync_dir

    if not isinstance(folder, RemotePath):
        _fsync_dir(folder)
    elif folder.is_local:
        fsync_local(folder.path)


def _move_into_place(staging: Folder, path: Folder) -> None:
    # os.replace cannot swap a folder onto a non-empty one: move the old checkpoint aside first,
    # so that at every moment one complete checkpoint exists under a known name.
    # Killed between the two renames, both siblings hold a marker: latest_checkpoint finds them and the
    # next save to this path finishes the move (recover).
    previous = _temporary_sibling(path, "previous")
    if path.exists():
        remove_folder(previous)
        _rename(path, previous)
    _rename(staging, path)
    _sync_folder(path.parent)
    remove_folder(previous)


def remove_folder(folder: Folder) -> None:
    """Delete a checkpoint folder, its marker first, so that a deletion cut short never looks complete."""
    try:
        (folder / MARKER).unlink()
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        return
    if isinstance(folder, RemotePath):
        try:
            if folder.exists():
                folder.fs.rm(folder.path, recursive=True)
        except (OSError, ValueError):  # as rmtree(ignore_errors=True): what cannot be removed stays
            pass
        return
    shutil.rmtree(folder, ignore_errors=True)


def recover(path: Folder) -> None:
    """Finish the rename of a save killed after its marker, or clear a staging folder it left unfinished."""
    staging, previous = _temporary_sibling(path, "partial"), _temporary_sibling(path, "previous")
    if (staging / MARKER).is_file():
        _move_into_place(staging, path)  # complete, only its rename was cut short
    elif not path.exists() and (previous / MARKER).is_file():
        _rename(previous, path)
    remove_folder(staging)
    remove_folder(previous)


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint file or folder, local or at an fsspec URL (a folder's marker first); nothing there is fine.

    For callers that keep the best k checkpoints (the Trainer's ModelCheckpoint) and may be given a URL folder.
    """
    target = location(path, asked=f"remove_checkpoint({str(path)!r})")
    if target.is_dir():
        remove_folder(target)
    elif isinstance(target, RemotePath):
        if target.exists():
            target.fs.rm_file(target.path)
    else:
        target.unlink(missing_ok=True)


def checkpoint_exists(path: str | Path) -> bool:
    """Whether a file or folder is at ``path`` (local, or an fsspec URL: ``os.path.exists`` says False for any URL)."""
    return location(path, asked=f"checkpoint_exists({str(path)!r})").exists()


# ----------------------------------------------------------------------------- loading
def require_complete(path: str | Path | RemotePath, *, asked: str) -> Folder:
    """Return ``path`` if it is a complete sharded checkpoint folder, else raise a CheckpointError saying why."""
    path = path if isinstance(path, RemotePath) else location(path, asked=asked)
    if not path.is_dir():
        why = "it is a file (a single-file checkpoint needs no consolidation)" if path.is_file() else "it does not exist"
        raise CheckpointError(f"{asked} needs a sharded checkpoint folder, but {why}. Fix: check the path.")
    if (path / MARKER).is_file() and (path / META_FILE).is_file():
        return path
    if (path / ".metadata").exists() or any(path.glob("*.distcp")):
        raise CheckpointError(
            f"{asked} got an incomplete sharded checkpoint: the folder has no {MARKER!r} marker (or no {META_FILE!r}), "
            f"so the save that wrote it did not finish. Fix: load an earlier checkpoint, or save again."
        )
    raise CheckpointError(
        f"{asked} got a folder that is not a checkpoint: it holds no {MARKER!r} marker and no DCP shards. "
        f"Fix: pass a folder written by fabric.save with strategy='fsdp', or a checkpoint file."
    )


def marker_checksums(folder: Folder) -> dict[str, tuple[int, int]] | None:
    """The checksums the folder's marker lists, or ``None`` for a marker without them (older fabric_lite, DeepSpeed)."""
    try:
        return parse_checksums((folder / MARKER).read_text(errors="replace"))
    except OSError:
        return None


def verification_problems(folder: Folder, *, rank: int = 0, world_size: int = 1) -> list[str]:
    """What differs from the marker's checksums, each rank checking every ``world_size``-th file; gathered on all ranks."""
    checksums = marker_checksums(folder)
    if checksums is None:
        return []  # nothing to check against: loads as before checksums existed
    names = sorted(checksums)
    mine = folder_problems(folder, {name: checksums[name] for name in names[rank::world_size]})
    return [problem for share in _gather(mine, world_size) for problem in share]


def verify_folder(folder: Folder, *, asked: str, rank: int = 0, world_size: int = 1) -> None:
    """Raise the same CheckpointError on every rank if a file of the folder differs from the marker's checksums."""
    problems = verification_problems(folder, rank=rank, world_size=world_size)
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{asked} refused the sharded checkpoint {str(folder)!r}: {'; '.join(problems[:3])}{more}. Its files were "
            f"cut off or changed after the save finished. Fix: load another checkpoint (latest_checkpoint(folder) "
            f"names the newest intact one), or save it again."
        )


# Public names for the other folder protocols (checkpoint/deepspeed.py) that stage and rename the same way.
temporary_sibling = _temporary_sibling
move_into_place = _move_into_place
