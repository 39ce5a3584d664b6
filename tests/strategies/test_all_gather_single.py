"""fabric.all_gather at world size 1: Lightning's documented shapes, and the stacked=True opt-in.

The 2-rank shapes (a leading world_size dimension, uneven concatenation) are tested with real gloo ranks
in tests/strategies/test_ddp.py and test_collectives.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from fabric_lite import Fabric


@pytest.fixture(scope="module")
def fabric() -> Fabric:
    return Fabric(accelerator="cpu", devices=1)


@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (0, 4)])
def test_a_tensor_comes_back_without_a_leading_dimension(fabric, shape):
    t = torch.arange(float(torch.Size(shape).numel())).reshape(shape)
    out = fabric.all_gather(t)
    assert out.shape == t.shape and out.dtype == t.dtype and out.device == fabric.device
    assert torch.equal(out, t)


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_stacked_adds_the_world_size_dimension_in_one_process(fabric, shape):
    t = torch.ones(shape, dtype=torch.bfloat16)
    out = fabric.all_gather(t, stacked=True)
    assert out.shape == (1, *shape) and out.dtype == torch.bfloat16 and torch.equal(out[0], t)
    assert fabric.all_gather(t, stacked=True, same_shape=True).shape == (1, *shape)


@pytest.mark.parametrize(("value", "dtype"), [(2.5, torch.float32), (7, torch.int64), (True, torch.bool)])
def test_a_python_number_becomes_a_scalar_tensor(fabric, value, dtype):
    out = fabric.all_gather(value)
    assert isinstance(out, torch.Tensor) and out.shape == () and out.dtype == dtype and out.item() == value
    assert fabric.all_gather(value, stacked=True).shape == (1,)


def test_collections_are_gathered_element_by_element(fabric):
    data = {"loss": 0.5, "preds": torch.ones(4, 2), "nested": [torch.zeros(3), (1, torch.tensor(2.0))]}
    out = fabric.all_gather(data)
    assert set(out) == {"loss", "preds", "nested"}
    assert out["loss"].shape == () and out["preds"].shape == (4, 2)
    assert out["nested"][0].shape == (3,) and isinstance(out["nested"][1], tuple)
    assert out["nested"][1][0].shape == () and out["nested"][1][1].shape == ()
    stacked = fabric.all_gather(data, stacked=True)
    assert stacked["loss"].shape == (1,) and stacked["preds"].shape == (1, 4, 2) and stacked["nested"][0].shape == (1, 3)


def test_gradients_flow_only_with_sync_grads(fabric):
    w = torch.ones(3, requires_grad=True)
    assert not fabric.all_gather(w * 2).requires_grad
    out = fabric.all_gather(w * 2, sync_grads=True)
    assert out.shape == (3,) and out.requires_grad
    out.sum().backward()
    assert torch.equal(w.grad, torch.full((3,), 2.0))
    w.grad = None
    fabric.all_gather(w * 3, sync_grads=True, stacked=True).sum().backward()
    assert torch.equal(w.grad, torch.full((3,), 3.0))


def test_ddp_with_one_process_gathers_through_the_process_group_with_the_same_shapes(tmp_path):
    # strategy="ddp", devices=1 initializes a real (gloo) process group of one rank; in a child process so
    # that this test process stays without one.
    code = textwrap.dedent(
        """
        import json, sys
        import torch, torch.distributed as dist
        from fabric_lite import Fabric

        fabric = Fabric(accelerator="cpu", strategy="ddp", devices=1)
        fabric.launch()
        w = torch.ones(2, requires_grad=True)
        fabric.all_gather(w * 3, sync_grads=True).sum().backward()
        print(json.dumps({
            "initialized": dist.is_initialized(), "world_size": fabric.world_size,
            "plain": list(fabric.all_gather(torch.ones(2, 3)).shape),
            "stacked": list(fabric.all_gather(torch.ones(2, 3), stacked=True).shape),
            "same_shape": list(fabric.all_gather(torch.ones(2, 3), same_shape=True).shape),
            "number": list(fabric.all_gather(2.5).shape),
            "grad": w.grad.tolist(),
        }))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "initialized": True, "world_size": 1, "plain": [2, 3], "stacked": [1, 2, 3], "same_shape": [2, 3],
        "number": [], "grad": [3.0, 3.0],
    }

