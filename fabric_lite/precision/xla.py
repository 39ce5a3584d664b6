"""XLA precision (``32-true``, ``16-true``, ``bf16-true``): the model's dtype, and a graph cut after every optimizer step.

torch_xla records operations lazily and compiles them into one graph; ``torch_xla.sync()`` after
``optimizer.step()`` cuts the graph once per step (what ``xm.optimizer_step(barrier=True)`` does),
so the same graph is compiled once and replayed. Half precision is a true dtype: the module and
its floating-point inputs are cast, as ``TruePrecision`` does (torch_xla deprecated the former
``XLA_USE_BF16`` switch in favour of converting the model). torch_xla is imported only when a
step runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from fabric_lite.errors import ConfigurationError
from fabric_lite.precision.true import TruePrecision

#: The precisions an XLA device takes, as Lightning's XLAPrecision.
XLA_PRECISIONS = {"32-true": torch.float32, "16-true": torch.float16, "bf16-true": torch.bfloat16}


class XLAPrecision(TruePrecision):
    """Precision plugin for XLA devices.

    Args:
        precision: ``"32-true"`` (default), ``"16-true"`` or ``"bf16-true"``.

    Example:
        >>> XLAPrecision("bf16-true").convert_module(torch.nn.Linear(2, 2)).weight.dtype
        torch.bfloat16
    """

    def __init__(self, precision: str = "32-true") -> None:
        if precision not in XLA_PRECISIONS:
            raise ConfigurationError(
                f"XLAPrecision({precision!r}) is not a precision XLA devices take. "
                f"Choose one of: {', '.join(XLA_PRECISIONS)}. Fix: precision='bf16-true' for half precision on XLA."
            )
        self.dtype = XLA_PRECISIONS[precision]
        self.name = precision
        # fp32 needs no casting: the wrappers then skip this plugin in forward.
        self.is_identity = precision == "32-true"
        self.casts_input = not self.is_identity

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        import torch_xla

        output = optimizer.step(**kwargs)
        torch_xla.sync()
        return output

    def plain_step(self) -> bool:
        return False
