"""True-dtype precision (``16-true``, ``bf16-true``, ``64-true``): the whole model and its inputs live in one dtype."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator

import torch
from torch import nn

from fabric_lite.precision.base import Precision, cast_floating

_NAMES = {torch.float16: "16-true", torch.bfloat16: "bf16-true", torch.float64: "64-true"}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Set ``torch``'s default floating dtype inside the block and restore it afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class TruePrecision(Precision):
    """Parameters, buffers, inputs and the default dtype inside forward are all ``dtype``.

    Outputs are cast back to the default dtype (fp32) as Lightning Fabric does, so losses and
    metrics computed outside the model are not silently in low precision.

    Example:
        >>> p = TruePrecision(torch.bfloat16)
        >>> p.convert_module(torch.nn.Linear(2, 2)).weight.dtype
        torch.bfloat16
    """

    is_identity = False
    casts_input = True

    def __init__(self, dtype: torch.dtype) -> None:
        if dtype not in _NAMES:
            raise ValueError(f"TruePrecision(dtype={dtype}) is not supported. Choose one of: {list(_NAMES)}.")
        self.dtype = dtype
        self.name = _NAMES[dtype]

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(dtype=self.dtype)

    def forward_context(self) -> ContextManager[Any]:
        return default_dtype(self.dtype)

    def module_init_context(self) -> ContextManager[Any]:
        return default_dtype(self.dtype)

    def tensor_init_context(self) -> ContextManager[Any]:
        return default_dtype(self.dtype)

    def convert_input(self, data: Any) -> Any:
        return cast_floating(data, self.dtype)

    def convert_output(self, data: Any) -> Any:
        return cast_floating(data, torch.get_default_dtype())


class HalfPrecision(TruePrecision):
    """``16-true`` or ``bf16-true`` by name, as Lightning's plugin of that name."""

    def __init__(self, precision: str = "16-true") -> None:
        dtypes = {"16-true": torch.float16, "bf16-true": torch.bfloat16}
        if precision not in dtypes:
            raise ValueError(f"HalfPrecision({precision!r}) is not supported. Choose one of: {', '.join(dtypes)}.")
        super().__init__(dtypes[precision])


class DoublePrecision(TruePrecision):
    """``64-true``: float64 everywhere."""

    def __init__(self) -> None:
        super().__init__(torch.float64)
