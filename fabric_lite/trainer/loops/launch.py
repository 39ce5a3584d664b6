"""Starting a run: in this process, or (launchers that run a function in new processes) in fresh spawned ones."""

from __future__ import annotations

import io
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from fabric_lite.fabric import Fabric
from fabric_lite.trainer.loops.hooks import on_exception
from fabric_lite.trainer.module import LightningModule
from fabric_lite.trainer.results import Results
from fabric_lite.utilities.rank_zero import rank_zero_info

if TYPE_CHECKING:
    from fabric_lite.trainer.trainer import Trainer


def launch(trainer: Trainer, run: Callable[..., Any], model: Any, *args: Any) -> Any:
    """Run ``run(trainer, *args)`` on every process; the caller's ``model`` gets rank 0's trained weights when spawned.

    The entry point of fit / validate / test / predict, so every exception passes here: the callbacks' ``on_exception``
    (if the loop did not call them yet), then the module's and the data module's, and ``trainer.interrupted`` becomes
    True. A ``KeyboardInterrupt`` (Ctrl-C) then ends the call gracefully: it returns None (a second Ctrl-C is ignored
    while the hooks run). Any other exception is raised again, and so is a KeyboardInterrupt in one of several
    processes of a job: a rank that went on alone would wait for the others in its next collective, so the launcher
    stops every rank as it does for Ctrl-C (Lightning 2.4+ ends the program there too). The parent of spawned ranks
    returns gracefully: the launcher has stopped them already.
    """
    trainer._interrupted = False
    spawning = trainer.fabric.launcher.runs_function_in_new_processes
    try:
        return _launch(trainer, run, model, *args)
    except BaseException as error:
        handle_exception(trainer, error)
        if isinstance(error, KeyboardInterrupt) and (spawning or trainer.world_size == 1):
            return None
        raise


def handle_exception(trainer: Trainer, error: BaseException) -> None:
    """Lightning's interrupt handling: mark the Trainer interrupted, call the exception hooks, finalize the loggers."""
    ignoring = isinstance(error, KeyboardInterrupt) and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignoring else None
    try:
        if isinstance(error, KeyboardInterrupt):
            rank_zero_info("Detected KeyboardInterrupt, attempting graceful shutdown ...")
        trainer._interrupted = True
        if trainer.state.stage is not None:  # the loop's own handler has not run (it resets the stage)
            on_exception(trainer, error)
        for target in (trainer.lightning_module, trainer.datamodule):
            hook = getattr(target, "on_exception", None) if target is not None else None
            if callable(hook):
                hook(error)
    finally:
        if ignoring:
            signal.signal(signal.SIGINT, previous)


def _launch(trainer: Trainer, run: Callable[..., Any], model: Any, *args: Any) -> Any:
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
    with torch.autograd.set_detect_anomaly(trainer.detect_anomaly):
        return run(trainer, *args)


def _run_spawned(fabric: Fabric, trainer: Trainer, run: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """The function each spawned process runs: the loop, then rank 0's result and weights for the parent."""
    trainer.fabric = fabric
    trainer.state.results = Results(fabric, trainer.state.callback_metrics)
    with torch.autograd.set_detect_anomaly(trainer.detect_anomaly):
        result = run(trainer, *args)
    model = trainer.lightning_module
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()} if model is not None else None
    buffer = io.BytesIO()
    torch.save((result, weights), buffer)
    return buffer.getvalue()
