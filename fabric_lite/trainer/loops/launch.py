"""Starting a run: in this process, or (launchers that run a function in new processes) in fresh spawned ones."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.fabric import Fabric
from fabric_lite.trainer.module import LightningModule
from fabric_lite.trainer.results import Results

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer


def launch(trainer: Trainer, run: Callable[..., Any], model: Any, *args: Any) -> Any:
    """Run ``run(trainer, *args)`` on every process; the caller's ``model`` gets rank 0's trained weights when spawned."""
    if trainer.fabric.launcher.runs_function_in_new_processes:
        if trainer._spawned:  # each call starts its processes anew (as Lightning's ddp_spawn does): a fresh Fabric
            trainer.fabric = Fabric(**trainer._fabric_arguments)
            trainer.state.setup_for = None
        trainer._spawned = True
        output = trainer.fabric.launch(_run_spawned, trainer, run, args)
        # Bytes written by our own rank 0 (tensors cannot cross a queue once their process has exited).
        result, weights = torch.load(io.BytesIO(output), weights_only=False) if output is not None else (None, None)
        if weights is not None and isinstance(model, LightningModule):
            model.load_state_dict(weights)  # the parent's copy gets the trained weights, as Lightning does
        return result
    trainer.fabric.launch()
    return run(trainer, *args)


def _run_spawned(fabric: Fabric, trainer: Trainer, run: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """The function each spawned process runs: the loop, then rank 0's result and weights for the parent."""
    trainer.fabric = fabric
    trainer.state.results = Results(fabric, trainer.state.callback_metrics)
    result = run(trainer, *args)
    model = trainer.lightning_module
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()} if model is not None else None
    buffer = io.BytesIO()
    torch.save((result, weights), buffer)
    return buffer.getvalue()
