"""The XLA launcher: ``fabric.launch(train)`` through ``torch_xla.launch``, one replica per XLA device.

torch_xla makes the replicas itself: one process per TPU chip, or, on XLA's CPU device, one process
whose threads drive one device each. Every replica runs ``train(fabric)`` and rank 0's return
value comes back to the caller. torch_xla refuses to start once this process has used an XLA
device, so nothing here touches one before launching.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from fabric_lite.accelerators import XLAAccelerator
from fabric_lite.errors import ConfigurationError, FabricEnvironmentError

if TYPE_CHECKING:
    from fabric_lite.fabric import Fabric


class XLALauncher:
    """Start ``num_processes`` XLA replicas (1, or all devices: what torch_xla can start) and run the function in each.

    Args:
        num_processes: replicas on this host (``devices``).
        start_method: how torch_xla makes its processes (``"spawn"`` or ``"fork"``).
    """

    def __init__(
        self, *, num_processes: int, num_nodes: int = 1, start_method: str = "spawn", strategy_name: str = "xla"
    ) -> None:
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.start_method = start_method
        self.strategy_name = strategy_name

    @property
    def is_interactive_compatible(self) -> bool:
        return self.start_method == "fork"

    @property
    def runs_function_in_new_processes(self) -> bool:
        return self.num_processes > 1  # one replica runs in the calling process

    def launch(self, function: Callable[..., Any] | None, *args: Any, fabric: Fabric, **kwargs: Any) -> Any:
        single = self.num_processes == 1
        if function is None:
            if single:  # one replica: this process is it
                fabric._setup_environment()
                return None
            raise ConfigurationError(
                f"Fabric(strategy={self.strategy_name!r}, devices={self.num_processes}) starts its replicas through "
                f"torch_xla.launch, which runs a function in each, so fabric.launch() needs one. "
                f"Fix: def train(fabric): ...; fabric.launch(train)."
            )
        available = XLAAccelerator.device_count()
        if not single and self.num_processes != available:
            raise ConfigurationError(
                f"Fabric(strategy={self.strategy_name!r}, devices={self.num_processes}): torch_xla.launch starts "
                f"either one replica or one per XLA device ({available} here). "
                f"Fix: devices=1 or devices={available}, or change the device count (CPU_NUM_DEVICES on XLA's CPU device)."
            )
        import torch.multiprocessing as mp
        import torch_xla

        if not single and torch_xla._XLAC._xla_runtime_is_initialized():
            raise FabricEnvironmentError(
                f"Fabric(strategy={self.strategy_name!r}).launch() cannot start replicas: this process has used an "
                f"XLA device already, and torch_xla launches only from a process that has not. "
                f"Fix: create XLA tensors (fabric.device, model.to('xla')) only inside the launched function."
            )
        manager = None if single else mp.get_context(self.start_method).Manager()
        results: Any = queue.SimpleQueue() if manager is None else manager.Queue()
        try:
            torch_xla.launch(
                _run_replica,
                args=(function, args, kwargs, fabric, results),
                start_method=self.start_method,
                debug_single_process=single,
            )
        except BrokenProcessPool as error:
            raise FabricEnvironmentError(
                f"A replica process of Fabric(strategy={self.strategy_name!r}) died without a Python exception "
                f"(killed, or aborted by XLA: see its output above). Fix: read the first error above."
            ) from error
        finally:
            output = None if results.empty() else results.get()
            if manager is not None:
                manager.shutdown()
        return output


def _run_replica(
    index: int, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], fabric: Fabric, results: Any
) -> None:
    """The body of one replica (a process, or a thread of one on XLA's CPU device)."""
    fabric._launched = True
    fabric._environment_ready = False  # a copy of the parent's object (or shared by this process's threads)
    fabric._setup_environment()
    output = function(fabric, *args, **kwargs)
    if fabric.global_rank == 0:
        results.put(output)
