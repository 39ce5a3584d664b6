"""Plan step: parse ``devices`` and ``num_nodes`` against the devices this process can see."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabric_lite.errors import ConfigurationError, FabricEnvironmentError


def resolve_devices(
    value: Any, accelerator: str, available: Mapping[str, int], reasons: dict[str, str], *, asked: str
) -> tuple[int, ...]:
    """Device indices on this node for a ``devices`` argument (count, -1, "auto", indices or their string forms)."""
    count = available.get(accelerator, 0)
    is_cpu = accelerator == "cpu"
    if isinstance(value, str):
        raw = value.strip().replace(" ", "")
        is_list = raw.startswith("[") or "," in raw  # "0,1", "1," and "[1]" name indices; "2" is a count
        text = raw.strip("[]")
        parts = [part for part in text.split(",") if part]
        if text == "auto":
            value = "auto"
        elif not is_list and text.lstrip("-").isdigit():
            value = int(text)
        elif is_list and parts and all(part.isdigit() for part in parts):
            value = [int(part) for part in parts]
        else:
            raise ConfigurationError(
                f"{asked} is not a device count or a list of device indices. "
                f"Choose one of: 'auto', a positive int such as 2, -1 for all devices, or indices such as '0,1'."
            )
    if value == "auto":
        number = 1 if is_cpu else max(count, 1)
        reasons.setdefault("devices", "auto: one process on CPU" if is_cpu else f"auto: all {number} {accelerator} devices")
        return tuple(range(number))
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple)):
        raise ConfigurationError(
            f"{asked} has the wrong type ({type(value).__name__}). "
            f"Choose one of: 'auto', a positive int, -1 for all devices, or a list of indices."
        )
    if isinstance(value, int):
        if value == -1:
            if is_cpu:
                raise ConfigurationError(
                    f"{asked} means 'all devices', which is not defined for the CPU (devices counts processes). "
                    f"Fix: give the number of processes, e.g. devices=2."
                )
            reasons.setdefault("devices", f"-1: all {count} {accelerator} devices")
            return tuple(range(count))
        if value < -1:
            raise ConfigurationError(
                f"{asked} is negative. Choose one of: 'auto', a positive int, -1 for all devices, or a list of indices."
            )
        if value == 0:
            raise ConfigurationError(
                f"{asked} asks for no device at all. Fix: devices=1 (or more), or 'auto'."
            )
        if not is_cpu and value > count:
            raise FabricEnvironmentError(
                f"{asked} asks for {value} {accelerator} devices but only {count} are available. "
                f"Fix: devices={count} or devices=-1."
            )
        reasons.setdefault("devices", "requested")
        return tuple(range(value))
    indices = list(value)
    if is_cpu:
        raise ConfigurationError(
            f"{asked} lists device indices, but on the CPU devices counts processes. Fix: devices={len(indices)}."
        )
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ConfigurationError(f"{asked} must be a non-empty list of device indices. Fix: e.g. devices=[0, 1].")
    bad = [i for i in indices if not 0 <= i < count]
    if bad or len(set(indices)) != len(indices):
        raise FabricEnvironmentError(
            f"{asked} names {accelerator} devices that do not exist or repeat: {bad or indices}. "
            f"Available indices: {list(range(count))}. Fix: choose distinct indices from that list."
        )
    reasons.setdefault("devices", "requested indices")
    return tuple(indices)


def resolve_num_nodes(value: Any, reasons: dict[str, str], *, asked: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"{asked} must be a positive int. Fix: num_nodes=1 for one machine."
        )
    reasons.setdefault("num_nodes", "requested" if value != 1 else "default: one machine")
    return value
