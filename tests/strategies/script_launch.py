"""The other end of launch_commands.py: inside a test script that ``command()`` started, make the Fabric from the
script's ``--strategy`` and ``--devices`` options and run the script's work on every rank, whichever launcher started
it (shared by strategies/_scripts/fail_one_rank.py and utilities/_scripts/preempt_train.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from fabric_lite import Fabric


def launch(run: Callable[..., Any], args: argparse.Namespace, *run_args: Any, **fabric_kwargs: Any) -> None:
    """``Fabric(**fabric_kwargs)``, with ``strategy=args.strategy`` and ``devices=args.devices`` added when given,
    then ``run(fabric, *run_args)`` on every rank: through ``fabric.launch(run, ...)`` for the spawn and fork
    launchers, after ``fabric.launch()`` otherwise (each rank runs the script: re-run, torchrun, fabric-run)."""
    if args.strategy:
        fabric_kwargs["strategy"] = args.strategy
    if args.devices:
        fabric_kwargs["devices"] = args.devices
    fabric = Fabric(**fabric_kwargs)
    if fabric.plan.launcher in ("spawn", "fork"):
        fabric.launch(run, *run_args)
    else:
        fabric.launch()
        run(fabric, *run_args)
