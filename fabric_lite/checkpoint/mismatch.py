"""Loading saved state into a model or optimizer, with an error that names the mismatching keys when they differ.

torch's own errors (``Error(s) in loading state_dict``, ``loaded state dict contains a parameter group
that doesn't match``) are replaced by one CheckpointError: which entry of the checkpoint, which keys
and shapes differ, and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from fabric_lite.errors import CheckpointError

_MAX_LISTED = 6


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def shape_text(value: Any) -> str:
    """``"4x8"`` for a tensor (or anything with a ``shape``), the type's name otherwise."""
    shape = getattr(value, "shape", None)
    return "x".join(str(d) for d in shape) if shape is not None else type(value).__name__


def load_module_state(module: nn.Module, state: Any, *, strict: bool, source: str, key: str | None) -> None:
    """``module.load_state_dict(state, strict=strict)``, raising a CheckpointError that names the differing keys."""
    where = f"the checkpoint's {key!r}" if key is not None else "the state dict"
    call = f"fabric.load({source!r}, ...)" if key is not None else f"fabric.load_raw({source!r}, model)"
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{call} cannot load {where} into {type(module).__name__}: it holds a {type(state).__name__}, not a "
            f"state dict. Fix: load it under the key it was saved with."
        )
    try:
        module.load_state_dict(state, strict=strict)
        return
    except RuntimeError:
        pass
    own = {k: shape_text(v) for k, v in module.state_dict().items()}
    saved = {k: shape_text(v) for k, v in state.items()}
    raise mismatch_error(call, where, module, own=own, saved=saved, strict=strict, fallback="torch refused it")


def mismatch_error(
    call: str, where: str, module: nn.Module, *, own: Mapping[str, str], saved: Mapping[str, str], strict: bool,
    fallback: str = "",
) -> CheckpointError:
    """The one wording for a state that does not fit a module; ``own``/``saved`` map keys to shapes (``"4x8"``).

    Used for single files (after torch refused them) and for sharded folders (from DCP's metadata, before loading).
    """
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k} (checkpoint {saved[k]}, model {own[k]})" for k in own if k in saved and saved[k] != own[k]]
    parts = []
    if shapes:
        parts.append(f"shapes differ for {_listed(shapes)}")
    if strict and missing:
        parts.append(f"the checkpoint lacks {_listed(missing)}")
    if strict and unexpected:
        parts.append(f"the model has no {_listed(unexpected)}")
    return CheckpointError(
        f"{call} cannot load {where} into {type(module).__name__}: it was saved from a different model "
        f"({'; '.join(parts) or fallback}). Fix: build the model exactly as when it was saved"
        f"{'' if shapes else ', or pass strict=False to skip the keys that differ'}."
    )


def has_mismatch(own: Mapping[str, str], saved: Mapping[str, str], *, strict: bool) -> bool:
    """Whether :func:`mismatch_error` would list anything (shapes always count; keys only when ``strict``)."""
    if any(saved[k] != own[k] for k in own if k in saved):
        return True
    return strict and set(own) != set(saved)


def load_optimizer_state(optimizer: Any, state: Any, *, source: str, key: str | None) -> None:
    """``optimizer.load_state_dict(state)``, raising a CheckpointError when it belongs to other parameters."""
    where = f"the checkpoint's {key!r}" if key is not None else "the state dict"
    name = type(getattr(optimizer, "optimizer", optimizer)).__name__
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"fabric.load({source!r}, ...) cannot load {where} into the {name} optimizer: it was saved for other "
            f"parameters ({error}). Fix: create the optimizer over the same model and parameter groups as when it "
            f"was saved, or leave it out of the state to load only the model."
        ) from None
