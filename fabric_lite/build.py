"""Build the objects a Plan names: accelerator, precision, environment, strategy (wired together) and launcher."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fabric_lite.plan.model import Plan
from fabric_lite.registry import ACCELERATORS, ENVIRONMENTS, LAUNCHERS, PRECISIONS, STRATEGIES
from fabric_lite.strategies.base import Strategy


def instantiate(plan: Plan) -> Strategy:
    """Create the accelerator, precision, environment and strategy objects the plan names, wired together."""
    accelerator = plan.accelerator_instance or ACCELERATORS.get(plan.accelerator, asked=plan.accelerator).create()
    device_type = accelerator.get_device(plan.devices[0]).type if plan.accelerator != "xla" else "xla"
    if plan.precision_instance is None and plan.accelerator == "xla":
        from fabric_lite.precision.xla import XLAPrecision  # casts like the true precisions, cuts the graph per step

        precision = XLAPrecision(plan.precision)
    else:
        precision = plan.precision_instance or PRECISIONS.get(plan.precision, asked=plan.precision).create(device=device_type)
    environment = plan.environment_instance or ENVIRONMENTS.get(plan.cluster_environment, asked="").create(
        num_processes=plan.num_devices, num_nodes=plan.num_nodes
    )
    if plan.strategy_instance is not None:
        strategy = plan.strategy_instance
        strategy.accelerator = strategy.accelerator or accelerator
        strategy.precision = precision
        # What the user did not give the instance comes from the plan: environment, devices, nodes.
        if plan.environment_instance is not None or not getattr(strategy, "_environment_given", True):
            strategy.cluster_environment = environment
        if plan.collective_timeout is not None and hasattr(strategy, "timeout"):
            strategy.timeout = timedelta(seconds=plan.collective_timeout)  # plan checked it agrees with the instance
        if not getattr(strategy, "_devices_given", True):
            strategy.parallel_devices = [accelerator.get_device(i) for i in plan.devices]
            strategy.num_nodes = plan.num_nodes
        return strategy
    local_index = plan.devices[environment.local_rank() % plan.num_devices]
    return STRATEGIES.get(plan.strategy, asked=plan.strategy).create(
        device=accelerator.get_device(local_index),
        accelerator=accelerator,
        precision=precision,
        cluster_environment=environment,
        parallel_devices=[accelerator.get_device(i) for i in plan.devices],
        num_nodes=plan.num_nodes,
        **({"timeout": timedelta(seconds=plan.collective_timeout)} if plan.collective_timeout is not None else {}),
    )


def make_launcher(plan: Plan) -> Any:
    """The launcher object the plan names."""
    return LAUNCHERS.get(plan.launcher, asked=plan.launcher).create(
        num_processes=plan.num_devices, num_nodes=plan.num_nodes, strategy_name=plan.strategy
    )
