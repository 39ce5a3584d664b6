"""CUDA paths (run on a lent GPU; skipped with the reason on CPU-only machines)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite import Fabric
from fabric_lite.plan import resolve

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none"),
]


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 10))
    x = torch.randn(256, 32)
    y = torch.randint(0, 10, (256,))
    return model, x, y


def test_auto_picks_cuda_and_devices_forms():
    assert resolve(env={}).accelerator == "cuda"
    assert Fabric(accelerator="gpu", devices=1).device == torch.device("cuda", 0)
    assert Fabric(accelerator="cuda", devices=[0]).device == torch.device("cuda", 0)
    assert Fabric(accelerator="cuda", devices="0,").device == torch.device("cuda", 0)
    if torch.cuda.device_count() == 1:
        assert Fabric(accelerator="cuda", devices=-1).device == torch.device("cuda", 0)


def test_32_true_matches_raw_pytorch_on_cuda():
    model, x, y = model_and_data()
    raw = copy.deepcopy(model).cuda()
    raw_opt = torch.optim.AdamW(raw.parameters(), lr=1e-3)
    fabric = Fabric(accelerator="cuda", devices=1)
    fmodel, fopt = fabric.setup(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=64))
    for xb, yb in loader:
        assert xb.device.type == "cuda"
        fopt.zero_grad()
        fabric.backward(nn.functional.cross_entropy(fmodel(xb), yb))
        fopt.step()
        raw_opt.zero_grad()
        nn.functional.cross_entropy(raw(xb), yb).backward()
        raw_opt.step()
    for a, b in zip(raw.parameters(), fmodel.parameters()):
        assert a.device.type == "cuda" and torch.equal(a, b)


@pytest.mark.parametrize(
    ("precision", "weight_dtype", "activation_dtype"),
    [
        ("32-true", torch.float32, torch.float32),
        ("64-true", torch.float64, torch.float64),
        ("16-mixed", torch.float32, torch.float16),
        ("bf16-mixed", torch.float32, torch.bfloat16),
        ("16-true", torch.float16, torch.float16),
        ("bf16-true", torch.bfloat16, torch.bfloat16),
    ],
)
def test_every_precision_trains_on_cuda(precision, weight_dtype, activation_dtype):
    model, x, y = model_and_data()
    fabric = Fabric(accelerator="cuda", devices=1, precision=precision)
    seen = []
    model[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    fmodel, fopt = fabric.setup(model, torch.optim.AdamW(model.parameters(), lr=3e-3, eps=1e-4))
    x, y = fabric.to_device((x, y))
    losses = []
    for _ in range(40):
        fopt.zero_grad()
        out = fmodel(x)
        assert out.dtype == torch.float32
        loss = nn.functional.cross_entropy(out, y)
        fabric.backward(loss)
        fabric.clip_gradients(fmodel, fopt, max_norm=5.0)
        fopt.step()
        losses.append(loss.item())
    assert fmodel.module[0].weight.dtype == weight_dtype and seen[-1] == activation_dtype
    assert losses[-1] < 0.7 * losses[0], losses


def test_16_mixed_uses_a_cuda_grad_scaler_and_skips_overflow_steps():
    fabric = Fabric(accelerator="cuda", devices=1, precision="16-mixed")
    scaler = fabric.strategy.precision.scaler
    assert scaler.is_enabled() and scaler._device == "cuda"
    model = nn.Linear(4, 1)
    fmodel, fopt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in fmodel.parameters()]
    fabric.backward(fmodel(torch.ones(2, 4, device="cuda")).sum())
    fmodel.module.weight.grad[0, 0] = float("inf")
    fopt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, fmodel.parameters()))
    assert scaler.get_scale() == 32768.0


def test_init_module_builds_on_the_gpu_in_the_precision_dtype():
    fabric = Fabric(accelerator="cuda", devices=1, precision="bf16-true")
    with fabric.init_module(empty_init=True):
        layer = nn.Linear(1024, 1024)
    assert layer.weight.device.type == "cuda" and layer.weight.dtype == torch.bfloat16
    with fabric.init_tensor():
        t = torch.zeros(3)
    assert t.device.type == "cuda" and t.dtype == torch.bfloat16


def test_checkpoint_round_trip_on_cuda_and_optimizer_state_follows_setup(tmp_path):
    model, x, y = model_and_data()
    fabric = Fabric(accelerator="cuda", devices=1)
    fmodel, fopt = fabric.setup(model, torch.optim.Adam(model.parameters()))
    fabric.backward(nn.functional.cross_entropy(fmodel(x.cuda()), y.cuda()))
    fopt.step()
    fabric.save(tmp_path / "c.ckpt", {"model": fmodel, "optimizer": fopt, "step": 1})
    # a fresh CPU model + optimizer with state loaded before setup: setup moves both to the GPU
    model2, _, _ = model_and_data(seed=1)
    opt2 = torch.optim.Adam(model2.parameters())
    checkpoint = torch.load(tmp_path / "c.ckpt", weights_only=True)
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["optimizer"])
    fabric2 = Fabric(accelerator="cuda", devices=1)
    fmodel2, fopt2 = fabric2.setup(model2, opt2)
    assert fopt2.state[next(iter(fmodel2.parameters()))]["exp_avg"].device.type == "cuda"
    fopt2.step()  # would fail with mixed devices
    state = {"model": fmodel2, "optimizer": fopt2, "step": 0}
    fabric2.load(tmp_path / "c.ckpt", state)
    assert state["step"] == 1
    assert all(torch.equal(a, b) for a, b in zip(fmodel.parameters(), fmodel2.parameters()))


def test_collectives_return_cuda_tensors():
    fabric = Fabric(accelerator="cuda", devices=1)
    gathered = fabric.all_gather(3.0)
    assert gathered.device.type == "cuda" and gathered.shape == ()  # world size 1: a scalar tensor, as Lightning
    assert fabric.all_reduce(torch.ones(2), reduce_op="sum").device.type == "cuda"


def test_ddp_with_nccl_and_dp_on_one_gpu():
    model, x, y = model_and_data()
    reference = copy.deepcopy(model).cuda()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    ref_opt.zero_grad()
    nn.functional.cross_entropy(reference(x.cuda()), y.cuda()).backward()
    ref_opt.step()
    for strategy in ("ddp", "dp"):
        m = copy.deepcopy(model)
        fabric = Fabric(accelerator="cuda", devices=1, strategy=strategy)
        fabric.launch()
        fm, fo = fabric.setup(m, torch.optim.SGD(m.parameters(), lr=0.1))
        fabric.backward(nn.functional.cross_entropy(fm(x.cuda()), y.cuda()))
        fo.step()
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(reference.parameters(), fm.parameters())), strategy
        assert fabric.all_reduce(torch.ones(1, device="cuda"), reduce_op="sum").item() == 1.0
        fabric.strategy.teardown()


def test_fork_after_cuda_initialised_is_refused():
    import subprocess
    import sys

    code = (
        "import torch; torch.zeros(1, device='cuda')\n"
        "from fabric_lite import Fabric\n"
        "def f(fabric): pass\n"
        "Fabric(accelerator='cpu', devices=2, strategy='ddp_fork').launch(f)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "forks processes, but CUDA is already initialised in this process" in result.stderr


def test_16_mixed_backward_without_a_set_up_optimizer_is_refused_on_cuda():
    from fabric_lite.errors import UsageError

    fabric = Fabric(accelerator="cuda", devices=1, precision="16-mixed")
    model = nn.Linear(3, 1)
    raw_optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model = fabric.setup_module(model)
    with pytest.raises(UsageError, match="no optimizer was set up with Fabric"):
        fabric.backward(model(torch.ones(4, 3, device="cuda")).sum())
    optimizer = fabric.setup_optimizers(raw_optimizer)
    for _ in range(3):
        fabric.backward(model(torch.ones(4, 3, device="cuda")).sum())
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_all_gather_single_process_keeps_dtype_on_cuda():
    fabric = Fabric(accelerator="cuda", devices=1)
    out = fabric.all_gather(torch.ones(3, dtype=torch.bfloat16, device="cuda"))
    assert out.dtype == torch.bfloat16 and out.shape == (3,) and out.device.type == "cuda"
