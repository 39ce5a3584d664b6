"""Mixed precision under FSDP2: parameters cast for compute by FSDP's ``MixedPrecisionPolicy``, fp16 scaled by a ShardedGradScaler.

With sharded gradients each rank sees only its shard's inf/nan, so the skip decision of fp16 loss
scaling must be all-reduced: ``ShardedGradScaler`` does that, a plain ``GradScaler`` does not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

from fabric_lite.precision.amp import MixedPrecision
from fabric_lite.precision.base import Precision

#: Fabric precision -> the dtype FSDP casts parameters to for compute (gradients are reduced in fp32).
PARAM_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class FSDPPrecision(MixedPrecision):
    """``16-mixed`` / ``bf16-mixed`` for FSDP: autocast in forward, bf16/fp16 compute parameters, fp32 reductions.

    Args:
        precision: ``"16-mixed"`` or ``"bf16-mixed"``.
        device: the device type (``"cuda"``, ``"cpu"``).
        scaler: a ``ShardedGradScaler`` for ``16-mixed``; one is created when omitted.

    Example:
        >>> p = FSDPPrecision("bf16-mixed", "cpu")
        >>> p.mixed_precision_policy().param_dtype
        torch.bfloat16
    """

    def __init__(self, precision: str, device: str, scaler: Any = None) -> None:
        if precision == "16-mixed" and scaler is None:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device=device)
        super().__init__(precision, device, scaler)

    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        """The policy ``fully_shard`` applies: compute in the low dtype, reduce gradients in fp32."""
        return MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[self.name], reduce_dtype=torch.float32)


def fsdp_precision(plugin: Precision) -> Precision:
    """The plugin FSDP needs for ``plugin``: a mixed precision gets FSDP's (a ShardedGradScaler carrying the
    given scaler's state); the true dtypes and fp32 are used as they are (they convert the module itself)."""
    if isinstance(plugin, FSDPPrecision) or not isinstance(plugin, MixedPrecision):
        return plugin
    scaler = None
    if plugin.scaler is not None:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler = ShardedGradScaler(device=plugin.device, enabled=plugin.scaler.is_enabled())
        if plugin.scaler.is_enabled():
            scaler.load_state_dict(plugin.scaler.state_dict())
    return FSDPPrecision(plugin.name, plugin.device, scaler)
