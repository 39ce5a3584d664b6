"""Skipping parameter initialisation when the weights will be overwritten anyway (``init_module(empty_init=True)``)."""

from __future__ import annotations

from typing import Any, Callable

from torch.overrides import TorchFunctionMode


class EmptyInit(TorchFunctionMode):
    """Inside this mode, ``torch.nn.init.*`` functions return their tensor untouched (memory stays uninitialised).

    Example:
        >>> import torch
        >>> with EmptyInit(enabled=True):
        ...     layer = torch.nn.Linear(2, 2)  # no kaiming_uniform_ pass over the weight
    """

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled

    def __enter__(self) -> Any:
        if not self.enabled:
            return self
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        if not self.enabled:
            return None
        return super().__exit__(*exc)

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)
