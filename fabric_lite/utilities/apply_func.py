"""Collection mapping: apply a function to every tensor in nested lists, tuples, dicts and dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

from fabric_lite.errors import ConfigurationError


def apply_to_collection(data: Any, dtype: type | tuple[type, ...], function: Callable[..., Any], **kwargs: Any) -> Any:
    """Return ``data`` with ``function`` applied to every element of type ``dtype``; structure is kept.

    Example:
        >>> apply_to_collection({"a": [1, 2]}, int, lambda x: x * 10)
        {'a': [10, 20]}
    """
    if isinstance(data, dtype):
        return function(data, **kwargs)
    if isinstance(data, Mapping):
        return type(data)({k: apply_to_collection(v, dtype, function, **kwargs) for k, v in data.items()})  # type: ignore[call-arg]
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply_to_collection(v, dtype, function, **kwargs) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(apply_to_collection(v, dtype, function, **kwargs) for v in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {
            f.name: apply_to_collection(getattr(data, f.name), dtype, function, **kwargs)
            for f in dataclasses.fields(data)
            if f.init
        }
        return dataclasses.replace(data, **changes)
    return data


def move_data_to_device(data: Any, device: torch.device | str | int) -> Any:
    """Move every tensor (and anything with a ``.to(device)``) in a collection to ``device``.

    Example:
        >>> move_data_to_device([torch.ones(1)], "cpu")[0].device
        device(type='cpu')
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    non_blocking = device.type == "cuda"

    def move(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device, non_blocking=non_blocking)

    return apply_to_collection(data, torch.Tensor, move)


def convert_to_tensors(data: Any, device: torch.device) -> Any:
    """Turn Python numbers into tensors and move all tensors to ``device``."""
    data = apply_to_collection(data, (int, float, bool), lambda x: torch.tensor(x, device=device))
    return move_data_to_device(data, device)


def convert_tensors_to_scalars(data: Any) -> Any:
    """Turn one-element tensors into Python numbers (for loggers); other tensors raise a clear error."""

    def to_item(value: torch.Tensor) -> Any:
        if value.numel() != 1:
            raise ConfigurationError(
                f"A logged tensor must hold exactly one value, but this one has shape {tuple(value.shape)}. "
                f"Fix: log a scalar, e.g. tensor.mean() or tensor.sum()."
            )
        return value.item()

    return apply_to_collection(data, torch.Tensor, to_item)


def is_sequence_of_tensors(data: Any) -> bool:
    return isinstance(data, Sequence) and all(isinstance(x, torch.Tensor) for x in data)
