"""Code outside plan/ asks the launcher and the precision what they do instead of matching their names."""

from __future__ import annotations

import pytest

from fabric_lite import Fabric


@pytest.mark.parametrize(
    ("strategy", "devices", "new_processes", "interactive"),
    [
        ("auto", 1, False, True),
        ("ddp", 2, False, False),
        ("ddp_spawn", 2, True, False),
        ("ddp_fork", 2, True, True),
        ("ddp_notebook", 2, True, True),
    ],
)
def test_launcher_capabilities(strategy, devices, new_processes, interactive):
    launcher = Fabric(accelerator="cpu", devices=devices, strategy=strategy).launcher
    assert launcher.runs_function_in_new_processes is new_processes
    assert launcher.is_interactive_compatible is interactive


@pytest.mark.parametrize(("precision", "scales"), [("32-true", False), ("bf16-mixed", False), ("16-mixed", True), ("16-true", False)])
def test_precision_says_whether_it_scales_the_loss(precision, scales):
    assert Fabric(accelerator="cpu", precision=precision).strategy.precision.scales_loss() is scales
