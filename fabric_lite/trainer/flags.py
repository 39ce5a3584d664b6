"""Trainer flags: check each value, and turn the older spellings (``max_nb_epochs``, ``gpus``, ...) into the current ones.

Every bad value raises a :class:`~fabric_lite.errors.ConfigurationError` that names the flag, says
why, and lists the valid choices; an older spelling gives a ``DeprecationWarning`` naming its
replacement. Where an old and a new spelling are both given, the new one must agree or it is an error.
"""

from __future__ import annotations

import difflib
import numbers
import warnings
from typing import Any

import torch

from fabric_lite.errors import ConfigurationError

GRADIENT_CLIP_ALGORITHMS = ("norm", "value")
BATCH_SIZE_MODES = ("power", "binsearch")
GPU_MEMORY_MODES = ("all", "min_max")
DETERMINISTIC = (True, False, "warn")

#: old spelling -> the current flag it maps to (None: handled by a callback or a special rule)
LEGACY_FLAGS: dict[str, str | None] = {
    "lr_scheduler_milestones": None,
    "min_nb_epochs": "min_epochs",
    "max_nb_epochs": "max_epochs",
    "enable_early_stop": None,
    "gradient_clip": "gradient_clip_val",
    "track_grad_norm": None,
    "train_percent_check": "limit_train_batches",
    "log_gpu_memory": None,
    "stochastic_weight_avg": None,
    "auto_scale_batch_size": None,
    "gpus": None,
    "auto_select_gpus": None,
}


def bad(flag: str, value: Any, why: str, fix: str) -> ConfigurationError:
    return ConfigurationError(f"Trainer({flag}={value!r}) {why}. Fix: {fix}")


def unknown_flags(names: list[str], valid: list[str]) -> ConfigurationError:
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, valid, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ConfigurationError(
        f"Trainer({', '.join(n + '=...' for n in names)}) got unknown flag(s): {', '.join(hints)}. "
        f"Fix: use one of: {', '.join(sorted(valid))}."
    )


def deprecated(old: str, new: str) -> None:
    warnings.warn(f"Trainer({old}=...) is an older spelling: use {new} instead.", DeprecationWarning, stacklevel=4)


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(flag: str, value: Any, minimum: int, *, allow_none: bool = False, example: str = "1") -> None:
    if value is None and allow_none:
        return
    if not is_int(value) or value < minimum:
        raise bad(flag, value, f"is not an int >= {minimum}", f"pass an int such as {flag}={example}"
                  + (" or None" if allow_none else "") + ".")


def check_fraction_or_count(flag: str, value: Any) -> None:
    """A float in [0, 1] (fraction of the batches) or an int >= 0 (number of batches)."""
    if value is None:
        return
    if is_int(value):
        if value < 0:
            raise bad(flag, value, "is a negative number of batches", f"pass an int >= 0 (a count) or a float in [0.0, 1.0] (a fraction), e.g. {flag}=0.25.")
        return
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise bad(flag, value, "is a float outside [0.0, 1.0]", f"pass a fraction such as {flag}=0.25, or an int count such as {flag}=10.")
        return
    raise bad(flag, value, "is neither a fraction nor a count", f"pass a float in [0.0, 1.0] or an int >= 0, e.g. {flag}=10.")


def check_choice(flag: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigurationError(
            f"Trainer({flag}={value!r}) is not a known {flag}. Choose one of: {', '.join(map(repr, choices))}."
        )


def parse_milestones(value: Any) -> list[int]:
    """``'100, 200'`` or ``[100, 200]`` -> ``[100, 200]``."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        milestones = [int(str(item).strip()) for item in items if str(item).strip()]
    except (TypeError, ValueError):
        raise bad("lr_scheduler_milestones", value, "is not a list of epochs",
                  "pass epoch numbers, e.g. lr_scheduler_milestones=[100, 200] or '100, 200'.") from None
    if any(m < 0 for m in milestones):
        raise bad("lr_scheduler_milestones", value, "has a negative epoch", "pass epochs >= 0.")
    return sorted(milestones)


def translate_legacy(flags: dict[str, Any], legacy: dict[str, Any], valid: list[str]) -> dict[str, Any]:
    """Map older spellings onto ``flags`` in place; return the ones that need callbacks or special handling."""
    unknown = [name for name in legacy if name not in LEGACY_FLAGS]
    if unknown:
        raise unknown_flags(unknown, valid + list(LEGACY_FLAGS))
    special: dict[str, Any] = {}
    for old, value in legacy.items():
        new = LEGACY_FLAGS[old]
        if new is None:
            special[old] = value
            continue
        deprecated(old, new)
        if old == "gradient_clip" and value == 0:
            value = None
        current = flags.get(new)
        if current is not None and current != value:
            raise ConfigurationError(
                f"Trainer({old}={value!r}, {new}={current!r}) gives the same setting twice with different values "
                f"({old} is the older spelling of {new}). Fix: pass only {new}={value!r}."
            )
        flags[new] = value
    replacements = {
        "lr_scheduler_milestones": "a MultiStepLR(gamma=0.1) scheduler in configure_optimizers",
        "enable_early_stop": "callbacks=[EarlyStopping(monitor='val_loss')]",
        "track_grad_norm": "callbacks=[GradNormMonitor(norm_type=2)]",
        "log_gpu_memory": "callbacks=[GPUMemoryLogger()]",
        "stochastic_weight_avg": "callbacks=[StochasticWeightAveraging(swa_lrs=...)]",
        "auto_scale_batch_size": "Tuner(trainer).scale_batch_size(model)",
        "gpus": "accelerator='gpu', devices=N",
        "auto_select_gpus": "devices=[indices of free GPUs]",
    }
    for old in special:
        deprecated(old, replacements[old])
    return special


def resolve_gpus(gpus: Any, auto_select: bool, accelerator: Any, devices: Any) -> tuple[Any, Any]:
    """``gpus`` (count, list, '0,1' or -1) and ``auto_select_gpus`` -> (accelerator, devices) for Fabric."""
    if auto_select and not (is_int(gpus) and gpus != 0):
        raise bad("auto_select_gpus", auto_select, "needs a number of GPUs to pick",
                  "pass gpus=N (an int, or -1 for all) together with auto_select_gpus=True.")
    if gpus is None or gpus == 0 or gpus == []:
        return accelerator, devices
    if not (is_int(gpus) or isinstance(gpus, (list, tuple, str))) or (is_int(gpus) and gpus < -1):
        raise bad("gpus", gpus, "is not a GPU count, list of indices or -1",
                  "pass gpus=2 (a count), gpus=[0, 1] (indices) or gpus=-1 (all).")
    if accelerator not in ("auto", "gpu", "cuda") or devices != "auto":
        raise ConfigurationError(
            f"Trainer(gpus={gpus!r}, accelerator={accelerator!r}, devices={devices!r}) asks for the hardware twice. "
            f"Fix: pass only accelerator='gpu', devices={gpus!r} (gpus is the older spelling)."
        )
    if auto_select and is_int(gpus):
        gpus = pick_free_gpus(gpus)
    return "cuda", gpus


def pick_free_gpus(count: int) -> list[int]:
    """The first ``count`` CUDA devices (all for -1) on which a small allocation succeeds (not full, not exclusive-busy)."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = available if count == -1 else count
    free: list[int] = []
    for index in range(available):
        if len(free) == wanted:
            break
        try:
            torch.ones(1, device=f"cuda:{index}")
            free.append(index)
        except RuntimeError:
            continue
    if len(free) < wanted or wanted == 0:
        raise ConfigurationError(
            f"Trainer(gpus={count}, auto_select_gpus=True) found only {len(free)} usable GPU(s) of {available}. "
            f"Fix: ask for at most {len(free)} (gpus={len(free) or 'None'}), or free some GPUs."
        )
    return free


def check_values(g: dict[str, Any]) -> None:
    """Check every current-spelling flag of ``Trainer(...)`` (``g``: name -> value); raise on the first bad one."""
    check_int("num_nodes", g["num_nodes"], 1)
    check_int("max_epochs", g["max_epochs"], -1, allow_none=True, example="10")
    check_int("min_epochs", g["min_epochs"], 0, allow_none=True)
    check_int("max_steps", g["max_steps"], -1, example="1000")
    check_int("min_steps", g["min_steps"], 0, allow_none=True)
    check_int("accumulate_grad_batches", g["accumulate_grad_batches"], 1, example="4")
    check_int("num_sanity_val_steps", g["num_sanity_val_steps"], -1, allow_none=True, example="2")
    check_int("log_every_n_steps", g["log_every_n_steps"], 1, allow_none=True, example="50")
    check_int("check_val_every_n_epoch", g["check_val_every_n_epoch"], 1, allow_none=True)
    for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches", "overfit_batches"):
        check_fraction_or_count(name, g[name])
    if g["gradient_clip_val"] is not None and (
        not isinstance(g["gradient_clip_val"], (int, float)) or isinstance(g["gradient_clip_val"], bool) or g["gradient_clip_val"] < 0
    ):
        raise bad("gradient_clip_val", g["gradient_clip_val"], "is not a number >= 0",
                "pass e.g. gradient_clip_val=0.5 (0 or None: no clipping).")
    if g["gradient_clip_algorithm"] is not None:
        check_choice("gradient_clip_algorithm", g["gradient_clip_algorithm"], GRADIENT_CLIP_ALGORITHMS)
    if g["deterministic"] is not None:
        check_choice("deterministic", g["deterministic"], DETERMINISTIC)
    vci = g["val_check_interval"]
    if vci is not None and not (
        (is_int(vci) and vci >= 1) or (isinstance(vci, float) and 0.0 < vci <= 1.0)
    ):
        raise bad("val_check_interval", vci, "is neither a fraction of an epoch in (0.0, 1.0] nor a number of batches >= 1",
                "pass e.g. val_check_interval=0.25 (four times per epoch) or val_check_interval=100 (every 100 batches).")
    fdr = g["fast_dev_run"]
    if not (isinstance(fdr, bool) or (is_int(fdr) and fdr >= 0)):
        raise bad("fast_dev_run", fdr, "is neither a bool nor a number of batches",
                "pass fast_dev_run=True (one batch) or an int such as fast_dev_run=3.")
