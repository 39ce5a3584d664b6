"""Misuse that used to give silently wrong numbers now raises a clear error (one process)."""

from __future__ import annotations

import pytest
import torch

from fabric_lite import Fabric
from fabric_lite.errors import UsageError


def _loss(model):
    return model(torch.ones(4, 3)).sum()


def test_16_mixed_backward_without_a_set_up_optimizer_is_refused():
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # never given to Fabric
    model = fabric.setup_module(model)
    with pytest.raises(UsageError, match=r"precision='16-mixed' multiplies the loss by the GradScaler's scale, but no "
                                         r"optimizer was set up with Fabric.*Fix: model, optimizer = fabric.setup"):
        fabric.backward(_loss(model))
    assert all(p.grad is None for p in model.parameters())  # nothing was scaled into the gradients
    # the documented fix: set the optimizer up afterwards, then the step is unscaled and the weights stay finite
    optimizer = fabric.setup_optimizers(optimizer)
    fabric.backward(_loss(model))
    optimizer.step()  # through the GradScaler: an overflowing step is skipped, never applied
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_backward_without_an_optimizer_is_fine_when_nothing_is_scaled(precision):
    fabric = Fabric(accelerator="cpu", precision=precision)
    model = fabric.setup_module(torch.nn.Linear(3, 1))
    fabric.backward(_loss(model))
    assert model.weight.grad is not None
