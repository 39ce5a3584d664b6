"""The Fabric facade in one process: every public method and property checked for behaviour."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric_lite import Fabric, is_wrapped, seed_everything
from fabric_lite.errors import ConfigurationError, UsageError
from fabric_lite.wrappers import FabricDataLoader, FabricModule, FabricOptimizer


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def data(n=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_properties_in_one_process():
    fabric = Fabric(accelerator="cpu")
    assert fabric.device == torch.device("cpu")
    assert (fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size) == (0, 0, 0, 1)
    assert fabric.is_global_zero is True
    assert fabric.loggers == []
    assert fabric.accelerator.name == "cpu"
    assert fabric.strategy.name == "single_device"


def test_logger_without_loggers_is_an_error():
    with pytest.raises(UsageError, match=re.escape("fabric.logger was read, but this Fabric has no logger.")):
        Fabric(accelerator="cpu").logger


def test_training_matches_raw_pytorch_exactly():
    x, y = data()
    raw = make_model()
    raw_opt = torch.optim.SGD(raw.parameters(), lr=0.1, momentum=0.9)
    fabric = Fabric(accelerator="cpu")
    model = copy.deepcopy(raw)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = fabric.setup(model, opt)
    for _ in range(5):
        raw_opt.zero_grad()
        nn.functional.cross_entropy(raw(x), y).backward()
        raw_opt.step()
        opt.zero_grad()
        fabric.backward(nn.functional.cross_entropy(model(x), y))
        opt.step()
    for a, b in zip(raw.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_setup_returns_wrappers_in_order_and_scheduler():
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    opt1 = torch.optim.SGD(model[0].parameters(), lr=0.1)
    opt2 = torch.optim.Adam(model[2].parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt1, step_size=1)
    fmodel, fopt1, fopt2, fsched = fabric.setup(model, opt1, opt2, scheduler=sched)
    assert isinstance(fmodel, FabricModule) and fmodel.module is model
    assert isinstance(fopt1, FabricOptimizer) and fopt1.optimizer is opt1
    assert isinstance(fopt2, torch.optim.Adam) and fopt2.optimizer is opt2
    assert fsched is sched
    assert all(is_wrapped(o) for o in (fmodel, fopt1, fopt2)) and not is_wrapped(model)


def test_setup_module_then_setup_optimizers():
    fabric = Fabric(accelerator="cpu")
    model = fabric.setup_module(make_model())
    assert isinstance(model, FabricModule)
    opt = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(opt, FabricOptimizer)
    a, b = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.2))
    assert a.param_groups[0]["lr"] == 0.1 and b.param_groups[0]["lr"] == 0.2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f, m, o: f.setup(f.setup(m)), "fabric.setup(model) got a model that is already set up."),
        (lambda f, m, o: f.setup_module(f.setup_module(m)), "fabric.setup_module(model) got a model that is already set up."),
        (lambda f, m, o: f.setup(m, f.setup_optimizers(o)), "fabric.setup() got an optimizer that is already set up."),
        (lambda f, m, o: f.setup("model"), "fabric.setup() needs a torch.nn.Module first, got str."),
        (lambda f, m, o: f.setup(m, o, torch.optim.lr_scheduler.StepLR(o, 1)),
         "fabric.setup() got a StepLR where an optimizer was expected. Fix: pass torch.optim optimizers after the model; pass an LR scheduler as scheduler=..."),
        (lambda f, m, o: f.setup_optimizers(), "fabric.setup_optimizers() got no optimizer."),
        (lambda f, m, o: f.setup_dataloaders(), "fabric.setup_dataloaders() got no dataloader."),
        (lambda f, m, o: f.setup_dataloaders([1, 2]), "fabric.setup_dataloaders() got a list, but only torch.utils.data.DataLoader is supported."),
        (lambda f, m, o: f.setup_dataloaders(f.setup_dataloaders(DataLoader(range(4)))),
         "fabric.setup_dataloaders() got a dataloader that is already set up."),
        (lambda f, m, o: f.clip_gradients(m, o), "fabric.clip_gradients(model, optimizer) needs clip_val or max_norm."),
        (lambda f, m, o: f.clip_gradients(m, o, clip_val=1, max_norm=1), "fabric.clip_gradients(clip_val=..., max_norm=...) got both"),
        (lambda f, m, o: f.no_backward_sync(m), "fabric.no_backward_sync(model) needs the model returned by fabric.setup(...)."),
        (lambda f, m, o: f.launch(3), "fabric.launch(3) needs a function."),
        (lambda f, m, o: f.launch(lambda: None), "the function takes no argument, but the launcher passes the Fabric object first."),
        (lambda f, m, o: f.all_reduce(torch.ones(1), reduce_op="avg"), "all_reduce(reduce_op='avg') is not a known reduction. Choose one of: sum, mean, max, min"),
        (lambda f, m, o: f.load_raw("x.pt", {"a": 1}), "fabric.load_raw(path, dict) only loads into a torch.nn.Module or an Optimizer."),
        (lambda f, m, o: f.log("loss", torch.ones(3)), "A logged tensor must hold exactly one value, but this one has shape (3,)."),
    ],
)
def test_misuse_errors(call, message):
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        call(fabric, model, opt)


def test_setup_dataloaders_moves_batches_and_keeps_order():
    fabric = Fabric(accelerator="cpu")
    x, y = data(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    wrapped = fabric.setup_dataloaders(loader)
    assert isinstance(wrapped, FabricDataLoader) and len(wrapped) == 3 and wrapped.batch_size == 4
    batches = list(wrapped)
    assert torch.equal(torch.cat([b[0] for b in batches]), x)
    a, b = fabric.setup_dataloaders(loader, DataLoader(TensorDataset(x, y), batch_size=5))
    assert len(a) == 3 and len(b) == 2


def test_setup_dataloaders_seeds_workers_when_asked():
    seed_everything(3, workers=True, verbose=False)
    try:
        fabric = Fabric(accelerator="cpu")
        loader = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=2, num_workers=2)
        wrapped = fabric.setup_dataloaders(loader)
        assert wrapped.worker_init_fn is not None
        first = [b[0].tolist() for b in wrapped]
        assert sorted(sum(first, [])) == list(range(8))
    finally:
        seed_everything(0, workers=False, verbose=False)


def test_backward_then_clip_by_norm_returns_the_norm():
    fabric = Fabric(accelerator="cpu")
    model = fabric.setup_module(make_model())
    opt = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = data()
    fabric.backward(nn.functional.cross_entropy(model(x), y) * 100)
    grads = [p.grad.clone() for p in model.parameters()]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    norm = fabric.clip_gradients(model, opt, max_norm=0.5)
    assert torch.allclose(norm, expected)
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert after <= 0.5 + 1e-5


def test_clip_by_value():
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = data()
    fabric.backward(nn.functional.cross_entropy(model(x), y) * 100)
    assert max(p.grad.abs().max() for p in model.parameters()) > 0.01
    assert fabric.clip_gradients(model, opt, clip_val=0.01) is None
    assert max(p.grad.abs().max() for p in model.parameters()) <= 0.01


def test_clip_gradients_raises_on_nonfinite_norm_in_fp32():
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for p in model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    with pytest.raises(RuntimeError, match="non-finite"):
        fabric.clip_gradients(model, opt, max_norm=1.0)
    assert torch.isinf(fabric.clip_gradients(model, opt, max_norm=1.0, error_if_nonfinite=False))


def test_collectives_are_identities_with_world_size_shapes():
    fabric = Fabric(accelerator="cpu")
    t = torch.arange(6.0).reshape(2, 3)
    gathered = fabric.all_gather(t)  # world size 1: no leading dimension (Lightning); stacked=True adds it
    assert gathered.shape == (2, 3) and torch.equal(gathered, t)
    assert fabric.all_gather(t, stacked=True).shape == (1, 2, 3)
    gathered = fabric.all_gather({"a": 1.5, "b": [torch.tensor(2)]})
    assert gathered["a"].shape == () and gathered["a"].item() == 1.5 and gathered["b"][0].shape == ()
    w = torch.ones(2, requires_grad=True)
    assert not fabric.all_gather(w).requires_grad and fabric.all_gather(w, sync_grads=True).requires_grad
    for op in ("sum", "mean", "max", "min"):
        reduced = fabric.all_reduce({"x": t, "n": 3}, reduce_op=op)
        assert torch.equal(reduced["x"], t) and reduced["n"].item() == 3
    assert fabric.broadcast({"obj": [1, 2]}, src=0) == {"obj": [1, 2]}
    assert torch.equal(fabric.broadcast(t), t)
    fabric.barrier()
    fabric.barrier("named")


def test_rank_zero_first_runs_the_block():
    fabric = Fabric(accelerator="cpu")
    ran = []
    with fabric.rank_zero_first():
        ran.append(1)
    with fabric.rank_zero_first(local=True):
        ran.append(2)
    assert ran == [1, 2]


def test_no_backward_sync_accumulates_gradients():
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = data()
    with fabric.no_backward_sync(model):
        fabric.backward(nn.functional.cross_entropy(model(x), y))
    first = [p.grad.clone() for p in model.parameters()]
    with fabric.no_backward_sync(model, enabled=False):
        fabric.backward(nn.functional.cross_entropy(model(x), y))
    assert all(torch.allclose(p.grad, 2 * g) for p, g in zip(model.parameters(), first))


def test_to_device_and_autocast():
    fabric = Fabric(accelerator="cpu", precision="bf16-mixed")
    batch = fabric.to_device({"x": torch.ones(2), "y": [torch.zeros(1)]})
    assert batch["x"].device.type == "cpu"
    assert isinstance(fabric.to_device(nn.Linear(2, 2)), nn.Linear)
    with fabric.autocast():
        out = nn.Linear(4, 4)(torch.ones(2, 4))
    assert out.dtype == torch.bfloat16


def test_print_only_on_local_rank_zero(capsys):
    Fabric(accelerator="cpu").print("hello", 3, sep="-")
    assert capsys.readouterr().out == "hello-3\n"


def test_init_module_and_init_tensor_use_precision_dtype():
    fabric = Fabric(accelerator="cpu", precision="bf16-true")
    with fabric.init_module():
        layer = nn.Linear(3, 3)
    assert layer.weight.dtype == torch.bfloat16
    with fabric.init_tensor():
        t = torch.empty(2)
    assert t.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32


def test_init_module_empty_init_skips_initialisation():
    fabric = Fabric(accelerator="cpu")
    torch.manual_seed(0)
    normal = nn.Linear(64, 64)
    with fabric.init_module(empty_init=True):
        torch.manual_seed(0)
        empty = nn.Linear(64, 64)
    torch.manual_seed(0)
    with fabric.init_module(empty_init=False):
        initialised = nn.Linear(64, 64)
    assert torch.equal(initialised.weight, normal.weight)
    assert not torch.equal(empty.weight, normal.weight)


def test_init_module_empty_init_does_not_call_nn_init():
    fabric = Fabric(accelerator="cpu")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with fabric.init_module(empty_init=True):
        nn.Linear(8, 8)
    # nn.init draws random numbers; skipping it leaves the generator untouched
    assert torch.equal(torch.get_rng_state(), state)
    with fabric.init_module(empty_init=False):
        nn.Linear(8, 8)
    assert not torch.equal(torch.get_rng_state(), state)


def test_launch_calls_function_with_fabric_and_returns_result():
    fabric = Fabric(accelerator="cpu")
    assert fabric.launch() is None
    assert fabric.launch(lambda f, a, b=0: (f.world_size, a, b), 5, b=6) == (1, 5, 6)


def test_call_invokes_callbacks_that_define_the_hook():
    class A:
        def __init__(self):
            self.seen = []

        def on_train_start(self, x, y=0):
            self.seen.append((x, y))

    class B:
        pass

    a = A()
    fabric = Fabric(accelerator="cpu", callbacks=[a, B()])
    fabric.call("on_train_start", 1, y=2)
    fabric.call("not_defined_anywhere")
    assert a.seen == [(1, 2)]
    single = A()
    Fabric(accelerator="cpu", callbacks=single).call("on_train_start", 7)
    assert single.seen == [(7, 0)]


def test_log_and_log_dict_reach_every_logger():
    class Memory:
        def __init__(self):
            self.rows = []

        def log_metrics(self, metrics, step=None):
            self.rows.append((metrics, step))

    first, second = Memory(), Memory()
    fabric = Fabric(accelerator="cpu", loggers=[first, second])
    fabric.log("loss", torch.tensor(0.5), step=3)
    fabric.log_dict({"a": 1, "b": torch.tensor([2.0])})
    assert first.rows == [({"loss": 0.5}, 3), ({"a": 1, "b": 2.0}, None)] == second.rows
    assert fabric.logger is first


def test_seed_everything_reproduces_random_streams():
    import random

    import numpy as np

    assert Fabric.seed_everything(123, verbose=False) == 123
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(123, verbose=False)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b


def test_seed_everything_rejects_out_of_range():
    with pytest.raises(ConfigurationError, match=re.escape("seed_everything(seed=-1) is out of range")):
        seed_everything(-1)


def test_sharded_model_is_deprecated_alias():
    fabric = Fabric(accelerator="cpu", precision="64-true")
    with pytest.warns(DeprecationWarning, match="use fabric.init_module"):
        with fabric.sharded_model():
            layer = nn.Linear(2, 2)
    assert layer.weight.dtype == torch.float64
