"""Reading torch.distributed.checkpoint folders without running code from them.

DCP reads a folder's ``.metadata`` with plain ``pickle.load`` and its non-tensor entries (optimizer
hyperparameters, ...) with ``torch.load(weights_only=False)``, so a crafted folder could run code on load.
Here the metadata is unpickled with only DCP's own metadata types (and the few torch values inside them)
allowed, and non-tensor entries go through ``torch.load(weights_only=True)``. Tensor data is read by DCP
itself, already with ``weights_only=True``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    _EmptyStateDictLoadPlanner,
)

from fabric_lite.checkpoint.io import safe_globals
from fabric_lite.checkpoint.remote import RemotePath
from fabric_lite.errors import CheckpointError


def _allowed_globals() -> dict[tuple[str, str], Any]:
    from torch.distributed.checkpoint import filesystem, metadata

    allowed: ClassVar[dict[tuple[str, str], Any]] = {}
    for module in (metadata, filesystem):
        for name in dir(module):
            value = getattr(module, name)
            # DCP's metadata records: dataclasses (and one enum) defined in these two modules.
            if isinstance(value, type) and value.__module__ == module.__name__ and (
                hasattr(value, "__dataclass_fields__") or name == "_MEM_FORMAT_ENCODING"
            ):
                allowed[(module.__name__, name)] = value
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    allowed[("pathlib", "PosixPath")] = Path(".").__class__
    allowed[("pathlib", "WindowsPath")] = Path(".").__class__
    allowed[("pathlib", "Path")] = Path
    for name in dir(torch):
        value = getattr(torch, name)
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            allowed[("torch", name)] = value
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals DCP metadata legitimately contains."""

    allowed: ClassVar[dict[tuple[str, str], Any]] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in checkpoint metadata") from None


def read_metadata(folder: str | Path | RemotePath) -> Any:
    """A DCP folder's ``.metadata``, unpickled with only DCP's metadata types allowed; raises CheckpointError otherwise.

    Called before DCP starts too: DCP would wrap the error of its reader in its own exceptions.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    if not _MetadataUnpickler.allowed:
        _MetadataUnpickler.allowed = _allowed_globals()
    path = (folder if isinstance(folder, RemotePath) else Path(folder)) / ".metadata"
    try:
        with path.open("rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except pickle.UnpicklingError as error:
        if "is not allowed in checkpoint metadata" in str(error):
            raise _refused(repr(str(path)), error) from None
        raise _damaged(path, error) from None  # cut off or changed bytes, not a forbidden global
    except Exception as error:  # EOFError, OSError, or whatever a damaged pickle makes the unpickler raise
        raise _damaged(path, error) from None
    if not isinstance(metadata, Metadata):
        raise _refused(repr(str(path)), pickle.UnpicklingError(f"it holds a {type(metadata).__name__}, not DCP metadata"))
    return metadata


def _damaged(path: Path | RemotePath, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"fabric.load({str(path.parent)!r}) could not read {path.name} ({type(error).__name__}: {error}): the "
        f"folder is damaged. Fix: load another checkpoint (latest_checkpoint(folder) names the newest intact one)."
    )


class SafeFileSystemReader(FileSystemReader):
    """A ``FileSystemReader`` whose ``.metadata`` may hold nothing but DCP's metadata records."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = read_metadata(self.path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _safe_fsspec_reader(folder: RemotePath) -> Any:
    """An ``FsspecReader`` (a sharded folder at a URL) whose ``.metadata`` may hold nothing but DCP's metadata records.

    Made here because importing torch's fsspec reader imports fsspec, which a local-only user need not have.
    """
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    class SafeFsspecReader(FsspecReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata = read_metadata(folder)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFsspecReader(folder.url)


def plain_reader(path: str | Path | RemotePath) -> Any:
    """DCP's own reader for a local folder or one at a URL (it unpickles ``.metadata`` as it is: trusted folders only)."""
    if isinstance(path, RemotePath):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        return FsspecReader(path.url)
    return FileSystemReader(path)


def safe_reader(path: str | Path | RemotePath) -> Any:
    return _safe_fsspec_reader(path) if isinstance(path, RemotePath) else SafeFileSystemReader(path)


class _SafeBytes:
    """Planner mixin: non-tensor entries are read with ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        try:
            with torch.serialization.safe_globals(safe_globals()):
                obj = torch.load(value, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise _refused(f"the entry {read_item.dest_index.fqn!r}", error) from None
        fqn = read_item.dest_index.fqn
        if self.flatten_state_dict:  # type: ignore[attr-defined]
            set_element(self.original_state_dict, self.mappings[fqn], obj)  # type: ignore[attr-defined]
        else:
            self.state_dict[fqn] = obj  # type: ignore[attr-defined]


class SafeLoadPlanner(_SafeBytes, DefaultLoadPlanner):
    """``DefaultLoadPlanner`` reading non-tensor entries with ``weights_only=True``."""


class SafeEmptyStateDictLoadPlanner(_SafeBytes, _EmptyStateDictLoadPlanner):
    """The planner that rebuilds a whole state dict from the metadata (consolidation), reading safely."""


def _refused(what: str, error: Exception) -> CheckpointError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointError(
        f"fabric.load refused to unpickle {what} of a sharded checkpoint with weights_only=True: {first_line}. "
        f"It may contain code that would run on load. Fix: if you made this checkpoint yourself and trust it, "
        f"load it with weights_only=False: fabric.load(path, state, weights_only=False) or consolidate(..., "
        f"weights_only=False)."
    )


def reader_and_planner(path: str | Path | RemotePath, *, weights_only: bool, allow_partial_load: bool = False) -> tuple[Any, Any]:
    """The DCP storage reader and load planner for ``path``: safe ones unless ``weights_only=False``."""
    if not weights_only:
        return plain_reader(path), DefaultLoadPlanner(allow_partial_load=allow_partial_load)
    read_metadata(path)  # refuse a crafted .metadata with fabric_lite's own error, before DCP runs
    return safe_reader(path), SafeLoadPlanner(allow_partial_load=allow_partial_load)


def load_whole(folder: str | Path | RemotePath, *, weights_only: bool = True) -> dict[str, Any]:
    """Every entry of a DCP folder as one nested state dict of full tensors, in this process (no process group)."""
    # What torch's own dcp_to_torch_save does (dcp.load would copy back only keys the empty dict had).
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    if weights_only:
        read_metadata(folder)
    reader = safe_reader(folder) if weights_only else plain_reader(folder)
    planner = SafeEmptyStateDictLoadPlanner() if weights_only else _EmptyStateDictLoadPlanner()
    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
    return state
