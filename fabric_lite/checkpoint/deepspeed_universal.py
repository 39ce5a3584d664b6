"""DeepSpeed checkpoints at another world size: DeepSpeed's universal checkpoint, made once inside the folder.

A ZeRO (stage 1-3) folder holds the optimizer state cut into as many shards as ranks saved it. On
another number of ranks the engine can only read it after DeepSpeed's own conversion
(``deepspeed.checkpoint.ds_to_universal``), which writes every parameter's fp32 weights and Adam
moments whole. The conversion is written once, into ``<folder>/universal`` (complete when renamed into
place, with its marker), so it goes away with the checkpoint it was made from. Weights alone need no
conversion: DeepSpeed's ``zero_to_fp32`` merges them whole, and they load at any world size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.checkpoint.io import fsync_dir
from fabric_lite.errors import CheckpointError

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

#: The sub-folder of a DeepSpeed checkpoint folder that holds its universal form.
UNIVERSAL = "universal"
MARKER = "COMPLETE"
#: The per-parameter optimizer state that ds_to_universal can reshard (it reads exactly these: Adam's).
_RESHARDABLE = {"exp_avg", "exp_avg_sq"}


def _load(file: Path) -> dict[str, Any]:
    # The caller has already checked the folder against the weights-only allow-list (or was told to trust it).
    return torch.load(file, map_location="cpu", weights_only=False, mmap=True)


def saved_layout(tag_folder: Path) -> tuple[int, int]:
    """(data-parallel world size, ZeRO stage) the checkpoint in ``tag_folder`` was saved with; stage 0: no ZeRO."""
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, ZERO_STAGE

    model_states = min(tag_folder.glob("*model_states.pt"))  # every rank's file records the same world size
    world_size = int(_load(model_states)["dp_world_size"])
    optim_files = sorted(tag_folder.glob("*optim_states.pt"))
    stage = int(_load(optim_files[0]).get(OPTIMIZER_STATE_DICT, {}).get(ZERO_STAGE, 0)) if optim_files else 0
    return world_size, stage


def check_reshardable(tag_folder: Path, *, asked: str, saved: int, now: int) -> None:
    """Raise unless DeepSpeed's conversion can reshard this checkpoint's optimizer state (Adam-style moments)."""
    from deepspeed.checkpoint.constants import BASE_OPTIMIZER_STATE, OPTIMIZER_STATE_DICT

    optim = _load(min(tag_folder.glob("*optim_states.pt")))[OPTIMIZER_STATE_DICT]
    base = optim.get(BASE_OPTIMIZER_STATE) or optim.get(OPTIMIZER_STATE_DICT) or {}  # stage 1-2, stage 3
    keys = sorted({key for group in base.get("state", {}).values() for key in group} - {"step"})
    if set(keys) == _RESHARDABLE:
        return
    why = (
        f"its optimizer state holds {', '.join(repr(k) for k in keys)}, and DeepSpeed's universal checkpoint "
        f"reshards only Adam-style state ('exp_avg', 'exp_avg_sq')"
        if keys else
        "it holds no optimizer state yet (it was saved before the first optimizer step), which DeepSpeed's "
        "universal checkpoint conversion needs"
    )
    raise CheckpointError(
        f"{asked} cannot load the optimizer state of a ZeRO checkpoint saved at world size {saved} at world size "
        f"{now}: {why}. Fix: load it at world size {saved}; or leave the optimizer out of the state to load the "
        f"weights alone (the optimizer keeps its own state): fabric.load(path, {{'model': model, ...}})."
    )


def universal_folder(folder: Path, tag: str) -> Path:
    """``<folder>/universal``, made by rank 0 from ``<folder>/<tag>`` if it is not there yet; returns its path.

    Atomic: written under a temporary name, marked complete, then renamed; what a conversion killed part-way
    left is removed first.
    """
    target = folder / UNIVERSAL
    if (target / MARKER).is_file():
        return target
    from deepspeed.checkpoint import ds_to_universal

    # Left by a conversion killed part-way: a folder without the marker was never renamed into place complete.
    staging = folder / f".{UNIVERSAL}.partial"
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=str(folder / tag), output_folder=str(staging / tag),
        # One process: forking a rank that holds a process group and DeepSpeed's threads is not safe.
        num_extract_workers=1, num_merge_workers=1,
        keep_temp_folder=False, strict=True,
        # fabric_lite's engines carry no Megatron tensor-parallel description; plain data parallel needs none.
        inject_missing_state=True,
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ds_to_universal.main(args)  # also writes staging/latest_universal, next to the tag folder
        (staging / MARKER).write_text("fabric_lite: DeepSpeed universal checkpoint, complete\n")
        fsync_dir(staging)
        os.replace(staging, target)
        fsync_dir(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def loading_universal(engine: DeepSpeedEngine) -> Iterator[None]:
    """Let an engine built without ``checkpoint: {load_universal: true}`` read one universal checkpoint.

    DeepSpeed reads this flag only while loading (engine.load_checkpoint and the ZeRO optimizers' loaders),
    so turning it on for one load is the same as building the engine with it, without rebuilding.
    """
    config = engine._config
    before = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        yield
    finally:
        config.load_universal_checkpoint = before


def restore_unsharded(engine: DeepSpeedEngine, folder: Path, tag: str) -> None:
    """Copy the saved buffers (e.g. BatchNorm statistics) and frozen parameters into the module: DeepSpeed's
    universal loader restores only the parameters its optimizer trains.

    Buffers are whole in every rank's file; frozen parameters come through DeepSpeed's ``zero_to_fp32``
    (lazily, so only they are read), and at stage 3 are gathered, written and partitioned again.
    """
    import deepspeed
    from deepspeed.checkpoint.constants import BUFFER_NAMES, FROZEN_PARAM_SHAPES
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    states = _load(min((folder / tag).glob("*model_states.pt")))
    with torch.no_grad():
        for name in states.get(BUFFER_NAMES) or []:
            if name in states["module"]:
                engine.module.get_buffer(name).copy_(states["module"][name])
        frozen = list(states.get(FROZEN_PARAM_SHAPES) or {})
        if not frozen:
            return
        saved = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag, lazy_mode=True)
        params = dict(engine.module.named_parameters())
        targets = [params[name] for name in frozen]
        with deepspeed.zero.GatheredParameters(targets, modifier_rank=0, enabled=hasattr(targets[0], "ds_id")):
            for name, param in zip(frozen, targets):
                param.data.copy_(saved[name].contiguous())


#: What DeepSpeed's own load leaves out of the client state it returns (engine.py, _load_checkpoint).
_ENGINE_KEYS = ("module", "optimizer", "lr_scheduler", "skipped_steps", "global_steps", "dp_world_size",
                "mp_world_size", "data_sampler", "random_ltd")


def load_whole_weights(
    engine: DeepSpeedEngine, folder: Path, tag: str, *, strict: bool, trained: bool
) -> dict[str, Any]:
    """Load the whole weights and buffers of any checkpoint into an engine, at any world size, leaving its
    optimizer state as it is; returns the client state as DeepSpeed's own load does.

    For engines set up without optimizer (inference), whose stage-3 load DeepSpeed's engine.load_checkpoint
    cannot do at all (it asks their parameter-offload "optimizer" for fp32 copies it does not have), and for
    weights-only loads at another world size. ZeRO shards are merged by DeepSpeed's ``zero_to_fp32``; a ``trained``
    engine (one with an optimizer) gets its fp32 master weights set from the same full fp32 values.
    """
    import deepspeed
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, ZERO_STAGE
    from deepspeed.utils import safe_set_full_fp32_param
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_folder = folder / tag
    states = _load(min(tag_folder.glob("*model_states.pt")))
    optim_files = sorted(tag_folder.glob("*optim_states.pt"))
    sharded = bool(optim_files) and ZERO_STAGE in _load(optim_files[0]).get(OPTIMIZER_STATE_DICT, {})
    weights = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag) if sharded else states["module"]
    params = list(engine.module.parameters())
    # Stage 3: every rank writes the gathered parameters, and rank 0's are partitioned again on exit.
    partitioned = bool(params) and hasattr(params[0], "ds_id")
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0, enabled=partitioned):
        engine.module.load_state_dict(weights, strict=strict)
    if trained:  # a no-op for parameters that are their own masters (no ZeRO, fp32)
        for name, param in engine.module.named_parameters():
            if param.requires_grad and name in weights:
                safe_set_full_fp32_param(param, weights[name].float())
    return {key: value for key, value in states.items() if key not in _ENGINE_KEYS}
