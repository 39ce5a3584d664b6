"""The DeepSpeed precision plugin: the engine holds bf16/fp16 weights itself; inputs are cast to that dtype.

Which DeepSpeed config section each Fabric precision enables (``PRECISION_SECTIONS``) lives here too, so the
plan, the config builder and the plugin read one table.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch
from torch import nn

from fabric_lite.errors import ConfigurationError, choices_error
from fabric_lite.precision.base import Precision, cast_floating
from fabric_lite.precision.true import default_dtype

#: Fabric precision -> the DeepSpeed config section that enables it (absent: full fp32).
PRECISION_SECTIONS = {"bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16", "16-true": "fp16"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeepSpeedPrecision(Precision):
    """How a DeepSpeed engine runs a half precision: the engine keeps bf16/fp16 weights (and fp32 master
    weights in its optimizer) by itself; floating-point inputs are cast to that dtype and outputs back.

    No autocast: DeepSpeed's weights already are in the low dtype, as in Lightning's DeepSpeedPrecision.

    Example:
        >>> p = DeepSpeedPrecision("bf16-mixed")
        >>> p.convert_input(torch.ones(1)).dtype, p.convert_output(torch.ones(1, dtype=torch.bfloat16)).dtype
        (torch.bfloat16, torch.float32)
    """

    is_identity = False
    casts_input = True

    def __init__(self, precision: str) -> None:
        if precision not in PRECISION_SECTIONS:
            raise choices_error(
                f"DeepSpeedPrecision({precision!r})", "DeepSpeed precision", ["32-true", *PRECISION_SECTIONS]
            )
        self.name = precision
        self.dtype = DTYPES[PRECISION_SECTIONS[precision]]

    def convert_module(self, module: nn.Module) -> nn.Module:
        # "-mixed": DeepSpeed casts the module itself and keeps fp32 master weights; "-true" asks for it now.
        return module.to(dtype=self.dtype) if self.name.endswith("-true") else module

    def module_init_context(self) -> ContextManager[Any]:
        return default_dtype(self.dtype) if self.name.endswith("-true") else contextlib.nullcontext()

    def tensor_init_context(self) -> ContextManager[Any]:
        return self.module_init_context()

    def convert_input(self, data: Any) -> Any:
        return cast_floating(data, self.dtype)

    def convert_output(self, data: Any) -> Any:
        return cast_floating(data, torch.get_default_dtype())


def deepspeed_precision(plugin: Precision) -> Precision:
    """The plugin a DeepSpeed engine needs for the Fabric precision ``plugin`` (full fp32 stays as it is)."""
    if type(plugin) is Precision or isinstance(plugin, DeepSpeedPrecision):
        return plugin
    if plugin.name == "32-true":
        return plugin
    if plugin.name not in PRECISION_SECTIONS:
        raise ConfigurationError(
            f"Fabric(strategy=DeepSpeedStrategy(...), precision={plugin.name!r}) is not supported: DeepSpeed trains in "
            f"fp32, bf16 or fp16 only. Choose one of: 32-true, {', '.join(PRECISION_SECTIONS)}."
        )
    return DeepSpeedPrecision(plugin.name)
