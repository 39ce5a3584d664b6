"""Build the objects a Plan names: accelerator, precision, environment, strategy (wired together) and launcher.

Nothing here decides: every choice was made by the plan. The user's own objects are never changed: a strategy
instance is re-made from the arguments it was given (``strategy.arguments``) plus what the plan fills in.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fabric_lite.plan.model import Plan
from fabric_lite.registry import ACCELERATORS, ENVIRONMENTS, LAUNCHERS, STRATEGIES, accepted_parameters
from fabric_lite.strategies.base import Strategy


def instantiate(plan: Plan) -> Strategy:
    """Create the accelerator, precision, environment and strategy objects the plan names, wired together."""
    accelerator = plan.accelerator_instance or ACCELERATORS.get(plan.accelerator, asked=plan.accelerator).create()
    device_type = accelerator.get_device(plan.devices[0]).type if plan.accelerator != "xla" else "xla"
    assert plan.precision_plugin is not None, "resolve() always picks a precision plugin"
    precision = plan.precision_plugin.create(device=device_type)
    environment = plan.environment_instance or ENVIRONMENTS.get(plan.cluster_environment, asked="").create(
        num_processes=plan.num_devices, num_nodes=plan.num_nodes
    )
    planned: dict[str, Any] = {
        "accelerator": accelerator,
        "precision": precision,
        "cluster_environment": environment,
        "parallel_devices": [accelerator.get_device(i) for i in plan.devices],
        "num_nodes": plan.num_nodes,
    }
    if plan.backend != "none":
        planned["process_group_backend"] = plan.backend
    if plan.collective_timeout is not None:
        planned["timeout"] = timedelta(seconds=plan.collective_timeout)
    user = plan.strategy_instance
    if user is None:
        local_index = plan.devices[environment.local_rank() % plan.num_devices]
        planned["device"] = accelerator.get_device(local_index)
        return STRATEGIES.get(plan.strategy, asked=plan.strategy).create(**planned)
    given = dict(user.arguments)
    # The plan decided the precision (from the instance's own, adapted) and the collective timeout (checked
    # to agree with the instance's); an environment plugin beats the instance's; devices go with nodes.
    overrides = {"precision", "timeout"} | ({"cluster_environment"} if plan.environment_instance is not None else set())
    if given.get("parallel_devices"):
        planned.pop("num_nodes")
    else:
        overrides.add("num_nodes")
    fill = {k: v for k, v in planned.items() if k in overrides or given.get(k) is None}
    accepted = accepted_parameters(type(user))
    return type(user)(**{**given, **{k: v for k, v in fill.items() if k in accepted}})


def make_launcher(plan: Plan) -> Any:
    """The launcher object the plan names."""
    return LAUNCHERS.get(plan.launcher, asked=plan.launcher).create(
        num_processes=plan.num_devices, num_nodes=plan.num_nodes, strategy_name=plan.strategy
    )
