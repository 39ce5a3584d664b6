"""The six precisions through the public API: module dtypes, forward context, casting, scaling, clipping."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from fabric_lite import Fabric
from fabric_lite.errors import ConfigurationError
from fabric_lite.precision import HalfPrecision, MixedPrecision


class Probe(nn.Module):
    """Records the dtype of the activations inside forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.seen = []

    def forward(self, x, ids=None):
        h = self.fc(x)
        self.seen.append((x.dtype, h.dtype, torch.get_default_dtype(), None if ids is None else ids.dtype))
        return h

    def score(self, x):
        return self.fc(x).sum(-1)


@pytest.mark.parametrize(
    ("precision", "weight", "inside_input", "inside_act", "default_inside"),
    [
        ("32-true", torch.float32, torch.float32, torch.float32, torch.float32),
        ("64-true", torch.float64, torch.float64, torch.float64, torch.float64),
        ("16-true", torch.float16, torch.float16, torch.float16, torch.float16),
        ("bf16-true", torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.bfloat16),
        ("bf16-mixed", torch.float32, torch.float32, torch.bfloat16, torch.float32),
        ("16-mixed", torch.float32, torch.float32, torch.float16, torch.float32),
    ],
)
def test_forward_dtypes(precision, weight, inside_input, inside_act, default_inside):
    fabric = Fabric(accelerator="cpu", precision=precision)
    model = fabric.setup(Probe())
    out = model(torch.ones(2, 4), ids=torch.arange(2))
    assert model.fc.weight.dtype == weight
    assert model.module.seen[-1] == (inside_input, inside_act, default_inside, torch.int64)  # integer inputs untouched
    assert out.dtype == torch.float32  # outputs come back in the default dtype
    assert torch.get_default_dtype() == torch.float32  # restored after forward


@pytest.mark.parametrize("precision", ["32-true", "64-true", "16-true", "bf16-true", "bf16-mixed", "16-mixed"])
def test_training_steps_reduce_the_loss(precision):
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", precision=precision)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    # eps=1e-4: Adam's default 1e-8 underflows to zero in fp16 (a property of 16-true, not of fabric_lite)
    model, opt = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-4))
    x = torch.randn(64, 8)
    y = x.sum(-1, keepdim=True)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        fabric.clip_gradients(model, opt, max_norm=10.0)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_mark_forward_method_runs_under_the_precision_context():
    fabric = Fabric(accelerator="cpu", precision="bf16-mixed")
    model = fabric.setup(Probe())
    model.mark_forward_method("score")
    out = model.score(torch.ones(2, 4))
    assert out.dtype == torch.float32  # converted back
    model.mark_forward_method(model.module.score)  # a bound method is accepted too
    with torch.autocast("cpu", enabled=False):
        raw = model.module.score(torch.ones(2, 4))
    assert raw.dtype == torch.float32
    # forward is restored after the redirected call
    assert "forward" not in model.module.__dict__
    model(torch.ones(1, 4))
    assert model.module.seen[-1][1] == torch.bfloat16


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("forward", "mark_forward_method('forward') is not needed"),
        ("nope", "mark_forward_method('nope'): Probe has no method named 'nope'."),
        (3, "mark_forward_method(3) needs a method name or a bound method of the module."),
    ],
)
def test_mark_forward_method_errors(method, message):
    model = Fabric(accelerator="cpu").setup(Probe())
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        model.mark_forward_method(method)


def test_16_mixed_scales_the_loss_and_unscales_before_clipping():
    torch.manual_seed(0)
    assert Fabric(accelerator="cpu", precision="16-mixed").strategy.precision.scaler.get_scale() == 65536.0
    scale = 256.0  # small enough that fp16 activations' gradients do not overflow in this tiny model
    fabric = Fabric(accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=scale))])
    model = nn.Linear(4, 1)
    reference = nn.Linear(4, 1)
    reference.load_state_dict(model.state_dict())
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(8, 4)
    fabric.backward(model(x).float().pow(2).mean())
    with torch.autocast("cpu", dtype=torch.float16):
        ref_loss = reference(x).float().pow(2).mean()
    ref_loss.backward()
    # gradients are scaled after backward...
    assert torch.allclose(model.weight.grad, reference.weight.grad * scale, rtol=1e-2)
    norm = fabric.clip_gradients(model, opt, max_norm=1e9)
    # ...and unscaled before clipping: the returned norm is the true one
    true_norm = torch.linalg.vector_norm(torch.cat([reference.weight.grad.flatten(), reference.bias.grad.flatten()]))
    assert torch.allclose(norm, true_norm, rtol=1e-2)
    fabric.clip_gradients(model, opt, max_norm=1e9)  # a second clip in the same step is harmless
    opt.step()
    assert torch.allclose(model.weight, reference.weight - 0.1 * reference.weight.grad, rtol=1e-2, atol=1e-4)


def test_16_mixed_skips_a_step_with_inf_gradients_and_lowers_the_scale():
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    model = nn.Linear(2, 1)
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    fabric.backward(model(torch.ones(1, 2)).sum())
    model.weight.grad[0, 0] = float("inf")
    norm = fabric.clip_gradients(model, opt, max_norm=1.0)  # no error: the scaler will skip this step
    assert not torch.isfinite(norm)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert fabric.strategy.precision.scaler.get_scale() == 32768.0


def test_16_mixed_refuses_lbfgs():
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    model = nn.Linear(2, 1)
    model, opt = fabric.setup(model, torch.optim.LBFGS(model.parameters()))
    with pytest.raises(ConfigurationError, match=re.escape("precision='16-mixed' cannot step torch.optim.LBFGS")):
        opt.step(lambda: model(torch.ones(1, 2)).sum())


def test_lbfgs_closure_works_in_full_precision():
    fabric = Fabric(accelerator="cpu")
    model = nn.Linear(2, 1)
    model, opt = fabric.setup(model, torch.optim.LBFGS(model.parameters(), lr=0.5))
    x, y = torch.randn(16, 2), torch.randn(16, 1)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        return loss

    first = closure().item()
    for _ in range(5):
        opt.step(closure)
    assert closure().item() < first


def test_grad_scaler_state_is_saved_and_restored(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    fabric = Fabric(accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    model = fabric.setup(nn.Linear(2, 1))
    fabric.save(tmp_path / "a.ckpt", {"model": model})
    other = Fabric(accelerator="cpu", precision="16-mixed")
    model2 = other.setup(nn.Linear(2, 1))
    assert other.strategy.precision.scaler.get_scale() == 65536.0
    remainder = other.load(tmp_path / "a.ckpt", {"model": model2})
    assert remainder == {}
    assert other.strategy.precision.scaler.get_scale() == 1024.0


def test_explicit_scaler_is_used():
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    fabric = Fabric(accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert fabric.strategy.precision.scaler is scaler and fabric.plan.precision == "16-mixed"


def test_fsdp_precision_owns_the_sharded_grad_scaler():
    """precision/fsdp.py, not the FSDP strategy, makes the ShardedGradScaler and FSDP's compute dtype."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    from fabric_lite.plugins import FSDPPrecision
    from fabric_lite.precision.fsdp import fsdp_precision

    plugin = FSDPPrecision("16-mixed", "cpu")
    assert isinstance(plugin.scaler, ShardedGradScaler) and plugin.scales_loss()
    assert plugin.mixed_precision_policy().param_dtype == torch.float16
    assert FSDPPrecision("bf16-mixed", "cpu").scaler is None
    given = MixedPrecision("16-mixed", "cpu")
    adapted = fsdp_precision(given)
    assert isinstance(adapted, FSDPPrecision) and isinstance(adapted.scaler, ShardedGradScaler)
    assert type(given.scaler) is torch.amp.GradScaler  # the user's plugin is left as it was
    true = HalfPrecision("bf16-true")  # a true precision converts the module itself, also under FSDP
    assert fsdp_precision(true) is true
