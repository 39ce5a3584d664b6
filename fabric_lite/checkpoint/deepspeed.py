"""The DeepSpeed checkpoint-folder protocol: save through the engine into a staged folder, mark and rename it;
load it back (checked against an allow-list, resharded at another world size); consolidate it into one file.

Beside ``sharded.py`` (FSDP's torch.distributed.checkpoint folders); ``deepspeed_universal.py`` holds the
world-size change. ``deepspeed`` is imported only inside functions.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from fabric_lite.checkpoint.deepspeed_universal import (
    UNIVERSAL,
    check_reshardable,
    load_whole_weights,
    loading_universal,
    restore_unsharded,
    saved_layout,
    universal_folder,
)
from fabric_lite.checkpoint.folder import MARKER, move_into_place, temporary_sibling
from fabric_lite.checkpoint.io import atomic_save, fsync_dir
from fabric_lite.checkpoint.remote import refuse_folder
from fabric_lite.checkpoint.state import META_KEY, restore_state, to_saveable
from fabric_lite.errors import CheckpointError, ConfigurationError, missing_package

#: The tag (sub-folder) every checkpoint is written under, so that loading never depends on ``latest``.
TAG = "checkpoint"
#: The one key of DeepSpeed's ``client_state`` that holds the user's other state (DeepSpeed reserves
#: names such as ``optimizer``, ``module`` and ``global_steps`` at the top level).
CLIENT_KEY = "fabric_lite"


def save_checkpoint(
    strategy: Any,
    path: str | Path,
    state: dict[str, Any],
    filter: dict[str, Callable[[str, Any], bool]] | None = None,
) -> None:
    """Save through the engine's ``save_checkpoint`` into a folder; every rank writes its shards.

    The folder is written next to ``path`` under a temporary name, completed with a marker and renamed
    into place by rank 0 after every rank has finished, so a folder at ``path`` is always complete.
    """
    if filter is not None:
        raise ConfigurationError(
            "fabric.save(path, state, filter=...) is not supported under DeepSpeedStrategy: the engine writes its "
            "model and optimizer shards whole. Fix: save without filter, then consolidate and filter the file: "
            "consolidate_deepspeed_checkpoint(folder, output)."
        )
    refuse_folder(path, asked=f"fabric.save({path!r})", what="DeepSpeed checkpoints (folders the engine writes)")
    if not isinstance(state, Mapping):
        to_saveable(state, strategy)  # raises the standard error
    path = Path(strategy.broadcast(str(path)))  # every rank writes into rank 0's folder
    if path.is_file():
        raise CheckpointError(
            f"fabric.save({str(path)!r}) writes a DeepSpeed checkpoint, which is a folder, but that path is an "
            f"existing file. Fix: choose another path or delete the file."
        )
    engine, module_key, optimizer_key = strategy.engine_in_state(state, asked=f"fabric.save({str(path)!r}, state)")
    rest = {k: v for k, v in state.items() if k not in (module_key, optimizer_key)}
    client = to_saveable(rest, strategy)
    client[META_KEY] = {**client[META_KEY], "deepspeed": {"module": module_key, "optimizer": optimizer_key}}
    staging = temporary_sibling(path, "partial")
    if strategy.is_global_zero:
        shutil.rmtree(staging, ignore_errors=True)  # left by a save that crashed
        staging.mkdir(parents=True)
    strategy.barrier("deepspeed_save_start")
    engine.save_checkpoint(
        str(staging), tag=TAG, client_state={CLIENT_KEY: client},
        exclude_frozen_parameters=strategy.exclude_frozen_parameters,
    )
    strategy.barrier("deepspeed_save_written")  # every rank's shards are on disk before the marker says so
    if strategy.is_global_zero:
        (staging / MARKER).write_text("fabric_lite DeepSpeed checkpoint: complete\n")
        fsync_dir(staging)
        move_into_place(staging, path)

def load_checkpoint(
    strategy: Any,
    path: str | Path,
    state: dict[str, Any] | nn.Module | Optimizer | None = None,
    strict: bool = True,
    weights_only: bool = True,
) -> dict[str, Any]:
    """Restore the engine (and its optimizer, when ``state`` holds it) and the user's other state from a folder.

    DeepSpeed's files are pickles that ``torch.load(weights_only=True)`` cannot read; with ``weights_only=True``
    rank 0 first checks every file against an allow-list of DeepSpeed's own types and refuses anything else.

    At another data-parallel world size than the one saved, a ZeRO (stage 1-3) checkpoint loaded with its
    optimizer is converted once by DeepSpeed's ``ds_to_universal`` into ``<path>/universal`` and loaded from
    there: weights, Adam moments and steps exactly; buffers and frozen parameters from the original files.
    Without the optimizer in ``state`` (or for a model set up without one) the whole weights load at any world
    size from any optimizer's checkpoint, and the optimizer keeps its state.
    """
    refuse_folder(path, asked=f"fabric.load({path!r})", what="DeepSpeed checkpoints (folders the engine reads)")
    path = Path(strategy.broadcast(str(path)))
    source = str(path)
    if path.is_file():
        raise CheckpointError(
            f"fabric.load({source!r}) got a file, but DeepSpeedStrategy loads the checkpoint folders it saves. "
            f"Fix: pass the folder written by fabric.save, or load the file into a plain model without DeepSpeed."
        )
    folder = require_complete(path, asked=f"fabric.load({source!r})")
    if state is None or not isinstance(state, Mapping):
        what = "no state" if state is None else f"a {type(state).__name__}"
        raise ConfigurationError(
            f"fabric.load({source!r}) got a DeepSpeed checkpoint folder but {what} to load into: the engine "
            f"restores its shards in place. Fix: fabric.load(path, {{'model': model, 'optimizer': optimizer}}), "
            f"or make one file first: consolidate_deepspeed_checkpoint({source!r}, output)."
        )
    if weights_only:
        verdict = check_weights_only(folder) if strategy.is_global_zero else None
        verdict = strategy.broadcast(verdict)
        if verdict:
            raise CheckpointError(
                f"fabric.load({source!r}) refused to unpickle {verdict} with weights_only=True. It may contain "
                f"code that would run on load. Fix: if you made this checkpoint yourself and trust it, call "
                f"fabric.load(path, state, weights_only=False)."
            )
    engine, module_key, optimizer_key = strategy.engine_in_state(state, asked=f"fabric.load({source!r}, state)")
    trained = strategy.is_trained(engine)
    saved, stage = decided_by_rank_zero(strategy, lambda: saved_layout(folder / TAG))
    now = engine.seq_dp_world_size
    elsewhere = saved != now and stage > 0  # ZeRO shards cut for another data-parallel world size
    if not trained or (optimizer_key is None and elsewhere):
        # Inference, or weights only at another world size: the whole weights, whatever the stage and world size.
        load_path, client = str(folder), load_whole_weights(engine, folder, TAG, strict=strict, trained=trained)
    elif elsewhere and engine.zero_optimization():
        # The optimizer state too: DeepSpeed reshards it from its universal checkpoint, made once by rank 0.
        def convert() -> None:
            check_reshardable(folder / TAG, asked=f"fabric.load({source!r})", saved=saved, now=now)
            universal_folder(folder, TAG)
            # One made earlier came with the folder, maybe from someone else: checked like the folder itself.
            if weights_only and (verdict := check_weights_only(folder / UNIVERSAL)):
                raise CheckpointError(
                    f"fabric.load({source!r}) refused to unpickle {UNIVERSAL}/{verdict} with weights_only=True. "
                    f"It may contain code that would run on load. Fix: if you trust this checkpoint, call "
                    f"fabric.load(path, state, weights_only=False); else delete {str(folder / UNIVERSAL)!r}, "
                    f"and fabric.load makes it again from the checked files."
                )

        decided_by_rank_zero(strategy, convert)
        with loading_universal(engine):
            load_path, client = engine.load_checkpoint(
                str(folder / UNIVERSAL), tag=TAG, load_module_strict=strict,
                load_optimizer_states=True, load_lr_scheduler_states=False,
            )
        if load_path is not None:
            restore_unsharded(engine, folder, TAG)
    else:
        load_path, client = engine.load_checkpoint(
            str(folder), tag=TAG, load_module_strict=strict,
            load_optimizer_states=optimizer_key is not None, load_lr_scheduler_states=False,
        )
    if load_path is None or client is None:
        raise CheckpointError(
            f"fabric.load({source!r}): DeepSpeed could not load the checkpoint (see its log above). "
            f"Fix: pass a folder written by fabric.save under DeepSpeedStrategy."
        )
    if CLIENT_KEY in client:
        contents = dict(client[CLIENT_KEY])
    else:  # written by DeepSpeed (or Lightning) directly: the user's state is at the top level
        contents = {k: v for k, v in client.items() if k not in ("optimizer", "lr_scheduler")}
    rest = {k: v for k, v in state.items() if k not in (module_key, optimizer_key)}
    remainder = restore_state(contents, rest, strategy, strict=strict, source=source)
    for key, value in rest.items():
        state[key] = value  # plain values were replaced in ``rest``
    return remainder

def decided_by_rank_zero(strategy: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand every rank its result; when it raises, every rank raises its error
    (rank 0 the original, the others a CheckpointError with its text) instead of waiting in a collective."""
    result, failure = None, None
    if strategy.is_global_zero:
        try:
            result = fn()
        except Exception as raised:  # noqa: BLE001 - raised again below, once the other ranks are told
            failure = raised
    result, error = strategy.broadcast((result, None if failure is None else str(failure)))
    if failure is not None:
        raise failure
    if error is not None:
        raise CheckpointError(error)
    return result


def deepspeed_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("deepspeed") is not None
    except (ImportError, ValueError):  # a broken or blocked entry in sys.modules
        return False


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by DeepSpeed (complete or not); cheap, imports nothing.

    Lets ``fabric-run consolidate`` tell DeepSpeed folders from torch.distributed.checkpoint ones.
    """
    path = Path(path)
    return (path / TAG).is_dir() or (path / "latest").is_file()


def require_complete(path: str | Path, *, asked: str) -> Path:
    """Return ``path`` if it is a complete DeepSpeed checkpoint folder written by fabric_lite, else explain why not."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{asked} found no checkpoint folder at that path. Fix: check the path.")
    if (path / MARKER).is_file() and (path / TAG).is_dir():
        if any((path / TAG).glob("*model_states.pt")):
            return path
        raise CheckpointError(
            f"{asked} got a damaged DeepSpeed checkpoint: {str(path / TAG)!r} holds no model states file "
            f"(*model_states.pt), although the folder is marked complete. Fix: load another checkpoint, or save again."
        )
    if is_deepspeed_checkpoint(path):
        raise CheckpointError(
            f"{asked} got an incomplete DeepSpeed checkpoint: the folder has no {MARKER!r} marker, so the save that "
            f"wrote it did not finish. Fix: load an earlier checkpoint, or save again."
        )
    raise CheckpointError(
        f"{asked} got a folder that is not a DeepSpeed checkpoint of fabric_lite (no {MARKER!r} marker, no "
        f"{TAG!r} folder). Fix: pass a folder written by fabric.save under DeepSpeedStrategy."
    )


def _safe_deepspeed_globals() -> list[Any]:
    """DeepSpeed's own types that its checkpoint files hold besides tensors and containers."""
    from fabric_lite.checkpoint.io import safe_globals

    allowed = safe_globals()
    candidates = [
        ("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
        ("deepspeed.utils.tensor_fragment", ("fragment_address",)),
        ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
    ]
    import importlib

    for module_name, names in candidates:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        allowed += [getattr(module, n) for n in names if hasattr(module, n)]
    return allowed


def check_weights_only(folder: Path) -> str | None:
    """The first file of the checkpoint that ``torch.load(weights_only=True)`` refuses (with DeepSpeed's types
    allowed), with the reason; None when every file is safe to load."""
    import pickle

    allowed = _safe_deepspeed_globals()
    for file in sorted((folder / TAG).rglob("*.pt")):
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return f"{file.relative_to(folder)} ({first})"
    return None


def consolidate_deepspeed_checkpoint(folder: str | Path, output: str | Path, *, weights_only: bool = True) -> Path:
    """Merge a DeepSpeed checkpoint folder into one fp32 file, through DeepSpeed's own ``zero_to_fp32``.

    The file has the format of a single-file fabric_lite checkpoint: the model's full fp32 state dict
    under the key it was saved with (e.g. ``"model"``), the user's other saved values next to it. The
    optimizer state is not kept (it is sharded in DeepSpeed's layout). It loads with
    ``torch.load(output, weights_only=True)`` and with ``fabric.load`` under any strategy.
    Runs in one process without a process group; needs memory for the whole model.

    Args:
        folder: a folder written by ``fabric.save`` under DeepSpeedStrategy.
        output: the file to write (atomically).
        weights_only: refuse checkpoint files holding types other than DeepSpeed's own (see ``fabric.load``).

    Example:
        >>> consolidate_deepspeed_checkpoint("checkpoints/step-100", "step-100.ckpt")  # doctest: +SKIP
    """
    if not deepspeed_available():
        raise missing_package("deepspeed", "deepspeed", "consolidate_deepspeed_checkpoint")
    asked = f"consolidate_deepspeed_checkpoint({str(folder)!r})"
    folder = require_complete(folder, asked=asked)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if weights_only and (verdict := check_weights_only(folder)):
        raise CheckpointError(
            f"{asked} refused to unpickle {verdict} with weights_only=True. Fix: if you trust this checkpoint, "
            f"pass weights_only=False."
        )
    model_states = _model_states_file(folder / TAG)
    states = torch.load(model_states, map_location="cpu", weights_only=False)
    client = dict(states.get(CLIENT_KEY, {}))
    meta = dict(client.pop(META_KEY, {}))
    keys = meta.pop("deepspeed", {})
    if any((folder / TAG).glob("*optim_states.pt")) and _is_zero_checkpoint(folder / TAG):
        weights = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=TAG)
    else:  # ZeRO off: rank 0's model file holds the whole module
        weights = {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    weights = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    output = Path(output)
    atomic_save({keys.get("module") or "model": weights, **client, META_KEY: meta}, output)
    return output


def _model_states_file(tag_folder: Path) -> Path:
    # Rank 0's file: the whole module's buffers and the client state (ZeRO-3 writes one per rank).
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (tag_folder / name).is_file():
            return tag_folder / name
    return min(tag_folder.glob("*model_states.pt"))  # require_complete made sure there is one


def _is_zero_checkpoint(tag_folder: Path) -> bool:
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, ZERO_STAGE

    first = min(tag_folder.glob("*optim_states.pt"))
    optim = torch.load(first, map_location="cpu", weights_only=False, mmap=True)
    return ZERO_STAGE in optim.get(OPTIMIZER_STATE_DICT, {})
