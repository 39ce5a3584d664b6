"""Module, optimizer and dataloader wrappers: pass-through behaviour, schedulers, hooks, samplers."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fabric_lite import Fabric


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.temperature = 1.0

    def forward(self, x):
        return self.fc(x) / self.temperature


def setup(precision=None):
    fabric = Fabric(accelerator="cpu", precision=precision)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    model, fopt = fabric.setup(net, opt)
    return fabric, net, opt, model, fopt


def test_module_attributes_pass_through_both_ways():
    _, net, _, model, _ = setup()
    assert model.temperature == 1.0 and model.fc is net.fc and model.module is net
    model.temperature = 2.0
    assert net.temperature == 2.0
    x = torch.ones(1, 3)
    assert torch.allclose(model(x), net.fc(x) / 2.0)
    model.new_attribute = 5  # not on the original: stays on the wrapper
    assert not hasattr(net, "new_attribute") and model.new_attribute == 5


def test_state_dict_has_the_users_keys():
    _, net, _, model, _ = setup()
    assert list(model.state_dict()) == list(net.state_dict()) == ["fc.weight", "fc.bias"]
    new = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    model.load_state_dict(new)
    assert torch.count_nonzero(net.fc.weight) == 0
    assert model.device == torch.device("cpu")
    assert len(list(model.parameters())) == 2


def test_hooks_on_the_wrapper_still_run():
    _, _, _, model, _ = setup()
    seen = []
    handle = model.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    model(torch.ones(4, 3))
    handle.remove()
    model(torch.ones(4, 3))
    assert seen == [torch.Size([4, 2])]


def test_optimizer_wrapper_shares_state_and_steps_once():
    _, net, opt, model, fopt = setup()
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    assert isinstance(fopt, torch.optim.SGD) and fopt.optimizer is opt
    assert fopt.param_groups is opt.param_groups and fopt.state is opt.state
    model(torch.ones(1, 3)).sum().backward()
    before = net.fc.weight.detach().clone()
    fopt.step()
    assert calls == [1]
    assert torch.allclose(net.fc.weight, before - net.fc.weight.grad)
    fopt.zero_grad()
    assert net.fc.weight.grad is None


def test_optimizer_wrapper_zero_grad_is_the_wrapped_optimizers_own():
    class KeepsOwnGrads(torch.optim.SGD):  # like DeepSpeed's ZeRO optimizer: gradients live outside param.grad
        def zero_grad(self, set_to_none=True):
            self.calls.append(set_to_none)
            super().zero_grad(set_to_none=set_to_none)

    fabric = Fabric(accelerator="cpu")
    net = Net()
    opt = KeepsOwnGrads(net.parameters(), lr=1.0)
    opt.calls = []
    model, fopt = fabric.setup(net, opt)
    model(torch.ones(1, 3)).sum().backward()
    fopt.zero_grad(set_to_none=False)
    fopt.zero_grad()
    assert opt.calls == [False, True]
    assert net.fc.weight.grad is None


def test_scheduler_created_after_setup_drives_the_optimizer():
    _, _, opt, model, fopt = setup()
    scheduler = torch.optim.lr_scheduler.StepLR(fopt, step_size=1, gamma=0.5)
    for _ in range(2):
        model(torch.ones(1, 3)).sum().backward()
        fopt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.25 == fopt.param_groups[0]["lr"]


def test_scheduler_created_before_setup_still_works():
    fabric = Fabric(accelerator="cpu")
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.1 ** epoch)
    model, fopt = fabric.setup(net, opt)
    model(torch.ones(1, 3)).sum().backward()
    fopt.step()
    scheduler.step()
    assert abs(fopt.param_groups[0]["lr"] - 0.1) < 1e-12


def test_optimizer_load_state_dict_keeps_wrapper_and_original_in_sync():
    _, net, opt, model, fopt = setup()
    adam_net = Net()
    adam = torch.optim.Adam(adam_net.parameters())
    fabric = Fabric(accelerator="cpu")
    amodel, fadam = fabric.setup(adam_net, adam)
    amodel(torch.ones(1, 3)).sum().backward()
    fadam.step()
    state = fadam.state_dict()
    other_net = Net()
    other = torch.optim.Adam(other_net.parameters())
    _, fother = Fabric(accelerator="cpu").setup(other_net, other)
    fother.load_state_dict(state)
    assert fother.state is other.state and len(other.state) == 2
    assert fother.state_dict()["state"][0]["step"] == 1


def test_add_param_group_is_seen_by_both():
    _, _, opt, _, fopt = setup()
    fopt.add_param_group({"params": [nn.Parameter(torch.ones(1))], "lr": 0.5})
    assert len(opt.param_groups) == 2


def test_dataloader_wrapper_sets_distributed_sampler_epoch():
    fabric = Fabric(accelerator="cpu")
    dataset = TensorDataset(torch.arange(8.0))
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = fabric.setup_dataloaders(DataLoader(dataset, sampler=sampler, batch_size=8), use_distributed_sampler=False)
    first = next(iter(loader))[0].tolist()
    assert sampler.epoch == 0
    second = next(iter(loader))[0].tolist()
    assert sampler.epoch == 1
    assert sorted(first) == sorted(second) == list(range(8)) and first != second


def test_dataloader_without_device_move_passes_attributes():
    fabric = Fabric(accelerator="cpu")
    raw = DataLoader(TensorDataset(torch.arange(6.0)), batch_size=4, drop_last=True)
    loader = fabric.setup_dataloaders(raw, move_to_device=False)
    assert loader.device is None and loader.drop_last is True and loader.dataset is raw.dataset
    assert len(loader) == 1 and [b[0].tolist() for b in loader] == [[0.0, 1.0, 2.0, 3.0]]
    assert loader.dataloader is raw
