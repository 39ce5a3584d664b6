"""Checkpoints of DTensor-sharded models: sharded folders (torch.distributed.checkpoint) or full files, and consolidation.

A sharded checkpoint is ONE folder at the user's path::

    ckpt/
      .metadata, __0_0.distcp, __1_0.distcp, ...   model and optimizer tensors, written by DCP from every rank
      meta.pt                                       plain values, stateful objects, fabric_lite metadata (rank 0)
      COMPLETE                                      the marker, written last: size and CRC-32 of every file

It is written into a temporary sibling folder and renamed into place by rank 0 after every rank has
finished, so a folder at the path is always complete; a folder without the marker is refused on load,
one whose files differ from the marker's checksums too (``folder`` holds this protocol). Strict loads
compare keys and shapes with DCP's metadata first and word a mismatch as single-file loads do.
Optimizer state inside the folder is keyed by parameter name (DCP's format); a consolidated or
"full" single file uses torch's own index-keyed format, so it loads into a plain optimizer too.

The path may be an fsspec URL: the shards then go through torch's ``FsspecWriter`` / ``FsspecReader`` and the
folder protocol runs on the store (see ``folder``). ``memory://`` is per process: sharded saves there work in one
process only; several processes need a store they share (``file://`` on a shared disk, ``s3://``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.optim import Optimizer

from fabric_lite.checkpoint.folder import (  # noqa: F401 - re-exported: the DeepSpeed strategy and tests use them
    MARKER,
    META_FILE,
    Folder,
    _move_into_place,
    _temporary_sibling,
    dcp_error,
    on_every_rank,
    recover,
    remove_folder,
    require_complete,
    save_folder,
    verify_folder,
)
from fabric_lite.checkpoint.io import atomic_save, load_checkpoint_file
from fabric_lite.checkpoint.mismatch import has_mismatch, mismatch_error
from fabric_lite.checkpoint.remote import RemotePath, location
from fabric_lite.checkpoint.state import META_KEY, restore_state, to_saveable
from fabric_lite.errors import CheckpointError, ConfigurationError
from fabric_lite.wrappers import FabricOptimizer, unwrap

if TYPE_CHECKING:
    from fabric_lite.strategies.base import Strategy

#: Finds the set-up model an optimizer updates (DCP names optimizer state after the model's parameters).
OwnerLookup = Callable[[Optimizer], nn.Module]
_OBJECTS = (nn.Module, Optimizer)

#: Inside ``meta.pt``'s fabric_lite metadata: which keys of the folder hold modules and optimizers.
SHARDED_KEY = "sharded"


def read_meta(path: Folder, *, weights_only: bool = True) -> tuple[dict[str, Any], list[str], list[str]]:
    """The folder's ``meta.pt`` (without the sharded bookkeeping), and its module and optimizer keys."""
    meta = load_checkpoint_file(path / META_FILE, weights_only=weights_only)
    info = dict(meta.get(META_KEY, {}))
    layout = info.pop(SHARDED_KEY, {})
    meta[META_KEY] = info
    return meta, list(layout.get("modules", [])), list(layout.get("optimizers", []))


def load_folder(path: Folder, tensors: dict[str, Any], *, strict: bool, weights_only: bool = True) -> None:
    """Fill the sharded state dicts in ``tensors`` in place from the folder (resharding to this world size).

    With ``weights_only`` (the default) the folder's metadata and non-tensor entries are read without
    running code from them (see ``safe_dcp``). DCP's failures become one CheckpointError on every rank.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from fabric_lite.checkpoint.safe_dcp import reader_and_planner

    reader, planner = reader_and_planner(path, weights_only=weights_only, allow_partial_load=not strict)
    try:
        dcp.load(tensors, storage_reader=reader, planner=planner)
    except CheckpointException as error:
        raise dcp_error(error, asked=f"fabric.load({str(path)!r})", path=path, reading=True) from None


def check_module_keys(path: Folder, templates: dict[str, Any], modules: dict[str, nn.Module], *, strict: bool,
                      weights_only: bool) -> None:
    """Compare each module's keys and shapes with the folder's DCP metadata; raise single-file loads' mismatch error.

    DCP itself loads a model with fewer layers silently and fails on more layers or other shapes with a long trace.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from fabric_lite.checkpoint.safe_dcp import plain_reader, read_metadata

    metadata = read_metadata(path) if weights_only else plain_reader(path).read_metadata()
    for key, module in modules.items():
        saved = {
            fqn[len(key) + 1:]: "x".join(map(str, entry.size)) if isinstance(entry, TensorStorageMetadata) else "bytes"
            for fqn, entry in metadata.state_dict_metadata.items() if fqn.startswith(f"{key}.")
        }
        own = {name: "x".join(map(str, value.shape)) if hasattr(value, "shape") else "bytes"
               for name, value in templates[key].items()}
        if has_mismatch(own, saved, strict=strict):
            where = f"the checkpoint's {key!r}"
            raise mismatch_error(f"fabric.load({str(path)!r}, ...)", where, module, own=own, saved=saved, strict=strict)


# ----------------------------------------------------------------------------- strategy entry points
def save_checkpoint(
    strategy: Strategy,
    path: str | Path,
    state: Mapping[str, Any],
    *,
    filter: Mapping[str, Callable[[str, Any], bool]] | None,
    full: bool,
    owner: OwnerLookup,
) -> None:
    """Save ``state`` of DTensor-sharded models: a folder from every rank, or (``full``) one file from rank 0.

    Every rank must call it: gathering and DCP writing are collectives.
    """
    if not isinstance(state, Mapping):
        to_saveable(state, strategy)  # raises the standard error
    objects = {key: unwrap(obj) for key, obj in state.items() if isinstance(unwrap(obj), _OBJECTS)}
    asked = f"fabric.save({str(path)!r})"
    target = location(path, asked=asked)

    def collect() -> dict[str, Any]:
        # Plain values, stateful objects, filter checks and fabric_lite's metadata: as every strategy does.
        saveable = to_saveable({k: ({} if k in objects else v) for k, v in state.items()}, strategy, filter=filter)
        for key, obj in objects.items():
            value = _state_dict_of(obj, full=full, owner=owner)
            if filter is not None and key in filter:
                value = {name: item for name, item in value.items() if filter[key](name, item)}
            saveable[key] = value
        return saveable

    if full:  # gathering full state dicts runs collectives: no agreement around it; rank 0 writes, all learn the outcome
        saveable = collect()
        on_every_rank(lambda: strategy.is_global_zero and atomic_save(saveable, path), asked=asked, path=target,
                      world_size=strategy.world_size)
        return
    # Sharded state dicts are local: a rank that fails here (a stateful object raising) must not leave the others
    # waiting in the save's first collective.
    saveable = on_every_rank(collect, asked=asked, path=target, world_size=strategy.world_size)
    extra = {key: value for key, value in saveable.items() if key not in objects}
    layout = {
        "modules": [k for k, o in objects.items() if isinstance(o, nn.Module)],
        "optimizers": [k for k, o in objects.items() if isinstance(o, Optimizer)],
    }
    extra[META_KEY] = {**extra[META_KEY], SHARDED_KEY: layout}
    tensors = {key: saveable[key] for key in objects}
    save_folder(path, lambda staging: _dcp_save(tensors, staging, target), extra, rank=strategy.global_rank,
                world_size=strategy.world_size)


def _dcp_save(tensors: dict[str, Any], staging: Folder, path: Folder) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        if isinstance(staging, RemotePath):  # torch's fsspec writer; fsync only where the store is a local disk
            from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

            dcp.save(tensors, storage_writer=FsspecWriter(staging.url, sync_files=staging.is_local))
        else:
            dcp.save(tensors, checkpoint_id=staging)
    except CheckpointException as error:  # raised on every rank: DCP gathers the failures
        raise dcp_error(error, asked=f"fabric.save({str(path)!r})", path=path, reading=False) from None


def load_checkpoint(
    strategy: Strategy,
    path: str | Path,
    state: Any,
    *,
    strict: bool,
    weights_only: bool,
    owner: OwnerLookup,
) -> dict[str, Any]:
    """Load a sharded folder (written at any world size) or a full file into DTensor-sharded models; every rank calls it."""
    path = location(path, asked=f"fabric.load({str(path)!r})")
    source = str(path)
    if path.is_dir():
        folder = require_complete(path, asked=f"fabric.load({source!r})")
        if state is None or isinstance(unwrap(state), _OBJECTS):
            what = "no state" if state is None else f"a bare {type(unwrap(state)).__name__}"
            raise ConfigurationError(
                f"fabric.load({source!r}) got a sharded checkpoint folder but {what} to load into: its shards can only "
                f"be read into set-up objects by name. Fix: fabric.load(path, {{'model': model, 'optimizer': optimizer}}), "
                f"or make one file first: fabric-run consolidate {source} --output FILE."
            )
        if not isinstance(state, Mapping):
            return restore_state({}, state, strategy, strict=strict, source=source)  # raises the standard error
        # Every rank checks its share of the files against the marker's checksums, and all raise if one finds damage.
        verify_folder(folder, asked=f"fabric.load({source!r})", rank=strategy.global_rank, world_size=strategy.world_size)
        meta, modules, optimizers = read_meta(folder, weights_only=weights_only)
        load = lambda requested: _load_sharded(folder, requested, strict, owner, weights_only)  # noqa: E731
        return _restore(strategy, meta, modules + optimizers, state, strict, source, load)
    checkpoint = load_checkpoint_file(path, weights_only=weights_only, map_location="cpu")
    if isinstance(unwrap(state), _OBJECTS) and not (isinstance(checkpoint, Mapping) and META_KEY in checkpoint):
        _load_full_entry(state, checkpoint, strict, owner)  # load_raw of a bare full state dict
        return {}
    if not isinstance(state, Mapping) or not isinstance(checkpoint, dict):
        return restore_state(checkpoint, state, strategy, strict=strict, source=source)
    keys = [k for k, obj in state.items() if k in checkpoint and isinstance(unwrap(obj), _OBJECTS)]
    contents = {k: v for k, v in checkpoint.items() if k not in keys}
    load = lambda requested: [_load_full_entry(o, checkpoint[k], strict, owner) for k, o in requested.items()]  # noqa: E731
    return _restore(strategy, contents, keys, state, strict, source, load)


def _restore(
    strategy: Strategy,
    contents: dict[str, Any],
    keys: list[str],
    state: Mapping[str, Any],
    strict: bool,
    source: str,
    load: Callable[[dict[str, Any]], Any],
) -> dict[str, Any]:
    """Plain values, stateful objects, precision and key checks go the common way; modules and optimizers to ``load``."""
    requested = {k: state[k] for k in keys if k in state and isinstance(unwrap(state[k]), _OBJECTS)}
    rest = {k: v for k, v in state.items() if k not in requested}
    remainder = restore_state({**{k: None for k in keys}, **contents}, rest, strategy, strict=strict, source=source)
    load(requested)
    for key, value in rest.items():
        state[key] = value  # type: ignore[index]
    return {k: v for k, v in remainder.items() if k not in keys}


def _state_dict_of(obj: nn.Module | Optimizer, *, full: bool, owner: OwnerLookup) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=full, cpu_offload=full)
    if isinstance(obj, nn.Module):
        return get_model_state_dict(obj, options=options)
    value = get_optimizer_state_dict(owner(obj), obj, options=options)
    return names_to_indices(value) if full else value


def _load_sharded(folder: Folder, requested: dict[str, Any], strict: bool, owner: OwnerLookup, weights_only: bool = True) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    templates = {key: _state_dict_of(unwrap(obj), full=False, owner=owner) for key, obj in requested.items()}
    modules = {key: unwrap(obj) for key, obj in requested.items() if isinstance(unwrap(obj), nn.Module)}
    check_module_keys(folder, templates, modules, strict=strict, weights_only=weights_only)
    load_folder(folder, templates, strict=strict, weights_only=weights_only)
    options = StateDictOptions(strict=strict)
    for key, obj in requested.items():
        inner = unwrap(obj)
        if isinstance(inner, nn.Module):
            set_model_state_dict(inner, templates[key], options=options)
        else:
            set_optimizer_state_dict(owner(inner), inner, templates[key], options=options)
            _share_optimizer_state(obj)


def _load_full_entry(obj: Any, value: Any, strict: bool, owner: OwnerLookup) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    inner = unwrap(obj)
    options = StateDictOptions(full_state_dict=True, strict=strict)
    if isinstance(inner, nn.Module):
        set_model_state_dict(inner, value, options=options)
        return
    model = owner(inner)
    # The file is index-keyed (torch's format); DCP wants names, in this optimizer's parameter order.
    template = get_optimizer_state_dict(model, inner)
    names = [name for group in template["param_groups"] for name in group["params"]]
    set_optimizer_state_dict(model, inner, indices_to_names(value, names), options=options)
    _share_optimizer_state(obj)


def _share_optimizer_state(optimizer: Any) -> None:
    # torch's load_state_dict replaces these containers; a FabricOptimizer shares them with its optimizer.
    if isinstance(optimizer, FabricOptimizer):
        optimizer.__dict__["state"] = optimizer.optimizer.state
        optimizer.__dict__["param_groups"] = optimizer.optimizer.param_groups


# ----------------------------------------------------------------------------- optimizer formats
def names_to_indices(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """DCP's name-keyed optimizer state dict -> torch's index-keyed one (as ``optimizer.state_dict()``)."""
    index: dict[str, int] = {}
    groups = []
    for group in state_dict.get("param_groups", []):
        ids = [index.setdefault(name, len(index)) for name in group["params"]]
        groups.append({**group, "params": ids})
    state = {index[name]: value for name, value in state_dict.get("state", {}).items()}
    return {"state": state, "param_groups": groups}


def indices_to_names(state_dict: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """torch's index-keyed optimizer state dict -> DCP's name-keyed one; ``names`` in the optimizer's parameter order."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state_dict.get("param_groups", [])]
    count = sum(len(g["params"]) for g in groups)
    if count != len(names):
        raise CheckpointError(
            f"The checkpoint's optimizer has {count} parameters but this optimizer has {len(names)}. "
            f"Fix: build the model and optimizer the same way as when the checkpoint was saved."
        )
    return {"state": {names[int(i)]: v for i, v in state_dict.get("state", {}).items()}, "param_groups": groups}


# ----------------------------------------------------------------------------- consolidation
def consolidate(folder: str | Path, output: str | Path, *, weights_only: bool = True) -> Path | RemotePath:
    """Merge a sharded checkpoint folder into one ``torch.load``-able file (the format of a "full" checkpoint).

    Runs in one process without a process group; needs memory for the whole checkpoint. With
    ``weights_only`` (the default) nothing in the folder can run code while it is read. Either path may
    be an fsspec URL (then the returned location's ``str`` is the output URL).

    Example:
        >>> consolidate("checkpoints/step-100", "step-100.ckpt")  # doctest: +SKIP
    """
    from torch.distributed.checkpoint.api import CheckpointException

    from fabric_lite.checkpoint.safe_dcp import load_whole

    folder = require_complete(folder, asked=f"consolidate({str(folder)!r})")
    verify_folder(folder, asked=f"consolidate({str(folder)!r})")
    output = location(output, asked=f"consolidate({str(folder)!r}, {str(output)!r})")
    meta, _, optimizer_keys = read_meta(folder, weights_only=weights_only)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        tensors = load_whole(folder, weights_only=weights_only)
    except CheckpointException as error:
        raise dcp_error(error, asked=f"consolidate({str(folder)!r})", path=folder, reading=True) from None
    for key in optimizer_keys:
        if key in tensors:
            tensors[key] = names_to_indices(tensors[key])
    atomic_save({**tensors, **meta}, output)
    return output
