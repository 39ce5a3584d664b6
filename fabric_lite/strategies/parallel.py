"""ParallelStrategy: one process per device, ranks from the cluster environment, a torch.distributed process group.

The base of DDP, FSDP and DeepSpeed. Their eight process arguments (accelerator, parallel_devices,
cluster_environment, precision, process_group_backend, timeout, start_method, num_nodes) are declared once,
here; what concerns the processes is kept as one frozen ``Processes`` value.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist

from fabric_lite.accelerators import Accelerator
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.errors import ConfigurationError, FabricEnvironmentError
from fabric_lite.precision.base import Precision
from fabric_lite.strategies.base import Strategy
from fabric_lite.utilities import distributed as collectives
from fabric_lite.utilities import gloo_exit, hang

#: How the processes are made: "popen" re-runs the script per rank, the others are torch.multiprocessing's.
StartMethod = Literal["popen", "spawn", "fork", "forkserver"]
START_METHODS = ("popen", "spawn", "fork", "forkserver")
DEFAULT_TIMEOUT = timedelta(minutes=30)
#: The shortest wait for all ranks to reach the rendezvous, whatever the collective timeout.
RENDEZVOUS_TIMEOUT = timedelta(minutes=5)
#: The process arguments, in the positional order of Lightning's constructors.
PROCESS_ARGUMENTS = (
    "accelerator", "parallel_devices", "cluster_environment", "precision", "process_group_backend", "timeout",
    "start_method", "num_nodes",
)


@dataclass(frozen=True)
class Processes:
    """How many processes on which devices, how they are made and how they talk: plain, validated data.

    Example:
        >>> Processes(parallel_devices=(torch.device("cpu"),) * 2, num_nodes=2).num_processes
        2
    """

    parallel_devices: tuple[torch.device, ...] = (torch.device("cpu"),)
    num_nodes: int = 1
    process_group_backend: str | None = None
    timeout: timedelta = DEFAULT_TIMEOUT
    start_method: StartMethod = "popen"
    owner: str = "DDPStrategy"  # the strategy class named in error messages

    def __post_init__(self) -> None:
        if self.start_method not in START_METHODS:
            raise ConfigurationError(
                f"{self.owner}(start_method={self.start_method!r}) is not a known start method. "
                f"Choose one of: {', '.join(START_METHODS)}."
            )
        check_timeout(self.timeout, self.owner)

    @property
    def num_processes(self) -> int:
        return len(self.parallel_devices)


class ParallelStrategy(Strategy):
    """One process per device: ranks from the cluster environment, a process group made in ``setup_environment``.

    Args:
        accelerator, precision, cluster_environment: filled in by the plan when omitted.
        parallel_devices: this machine's devices, indexed by local rank.
        process_group_backend: ``"gloo"`` (CPU default) or ``"nccl"`` (CUDA default); the plan decides it.
        timeout: how long a collective may wait before the job fails (default 30 minutes).
        start_method: ``"popen"`` (re-run the script), ``"spawn"``, ``"fork"`` or ``"forkserver"``.
        num_nodes: number of machines.
    """

    #: Names of the positional arguments subclasses forward with ``*args`` (recorded in ``strategy.arguments``).
    positional_arguments = PROCESS_ARGUMENTS

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = DEFAULT_TIMEOUT,
        start_method: StartMethod = "popen",
        num_nodes: int = 1,
    ) -> None:
        super().__init__(accelerator=accelerator, precision=precision, cluster_environment=cluster_environment)
        self.processes = Processes(
            parallel_devices=tuple(parallel_devices) if parallel_devices else (torch.device("cpu"),),
            num_nodes=num_nodes,
            process_group_backend=process_group_backend,
            timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
            start_method=start_method,
            owner=type(self).__name__,
        )

    # ----------------------------------------------------------------- options
    @property
    def parallel_devices(self) -> list[torch.device]:
        return list(self.processes.parallel_devices)

    @property
    def num_nodes(self) -> int:
        return self.processes.num_nodes

    @property
    def process_group_backend(self) -> str | None:
        return self.processes.process_group_backend

    @property
    def timeout(self) -> timedelta:
        return self.processes.timeout

    @property
    def start_method(self) -> StartMethod:
        return self.processes.start_method

    # ----------------------------------------------------------------- identity
    @property
    def num_processes(self) -> int:
        return self.processes.num_processes

    @property
    def root_device(self) -> torch.device:
        return self.processes.parallel_devices[self.local_rank % self.num_processes]

    @property
    def global_rank(self) -> int:
        return self.cluster_environment.global_rank()

    @property
    def local_rank(self) -> int:
        return self.cluster_environment.local_rank()

    @property
    def node_rank(self) -> int:
        return self.cluster_environment.node_rank()

    @property
    def world_size(self) -> int:
        return self.cluster_environment.world_size()

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    def backend(self) -> str:
        if self.process_group_backend:
            return self.process_group_backend
        return "nccl" if self.root_device.type == "cuda" else "gloo"

    # ------------------------------------------------------------------ set-up
    def setup_environment(self) -> None:
        super().setup_environment()
        self._init_process_group()

    def _init_process_group(self) -> None:
        if collectives.is_initialized():
            return
        env = self.cluster_environment
        address, port = env.main_address, env.main_port
        if port <= 0 and self.world_size == 1:
            port = collectives.find_free_port(address)  # a world of one meets only itself
        if port <= 0:
            raise FabricEnvironmentError(
                f"DDP on rank {self.global_rank} has no rendezvous port (MASTER_PORT is unset). "
                f"Fix: start the script with fabric-run, torchrun or python (fabric.launch() sets it), or set MASTER_PORT."
            )
        kwargs: dict[str, Any] = {}
        if self.root_device.type == "cuda":
            kwargs["device_id"] = self.root_device  # lets NCCL bind eagerly to this rank's GPU
        try:
            store = self._rendezvous_store(address, port)
            dist.init_process_group(
                self.backend(),
                store=store,
                rank=self.global_rank,
                world_size=self.world_size,
                timeout=self.timeout,
                **kwargs,
            )
            # Scripts rarely tear down themselves. A group left to the interpreter's exit is torn down during C++
            # static destruction, where gloo's worker threads are still joinable: std::terminate, SIGABRT, in about
            # 1 of 5 successful 2-rank runs (tests/strategies/test_ddp.py::test_a_run_that_ends_in_a_collective_exits_cleanly).
            # NCCL also warns when the group outlives main. The rank that hosts the store waits (briefly) until
            # the others have torn down: their groups still talk to the store while they do. Before any of
            # that, gloo's worker threads are let finish their last works (utilities/gloo_exit.py).
            hosts_store = self.global_rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True)
            atexit.register(_leave_process_group, store, self.global_rank, self.world_size, hosts_store)
            # A collective that times out prints every rank's stack before the job goes (utilities/hang.py).
            hang.start_monitor(address=address, port=port, rank=self.global_rank, world_size=self.world_size,
                               timeout=self.timeout)
        except dist.DistNetworkError as error:
            raise FabricEnvironmentError(
                f"DDP rank {self.global_rank} could not open the rendezvous at {address}:{port}: {error}. "
                f"The port may already be in use. Fix: choose a free port (fabric-run --main-port, or MASTER_PORT)."
            ) from None

    def _rendezvous_store(self, address: str, port: int) -> dist.Store:
        """The store the ranks meet at, as ``tcp://`` init makes it, but waiting at least RENDEZVOUS_TIMEOUT.

        A short collective timeout (seconds, to catch hangs quickly) must not also cut the rendezvous short:
        ranks start seconds apart on a loaded machine and minutes apart on a cluster.
        """
        # Under torchrun the agent already hosts the store at MASTER_PORT: every rank is a client then.
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
        store = dist.TCPStore(
            address, port, self.world_size, is_master=self.global_rank == 0 and not agent_store,
            timeout=max(self.timeout, RENDEZVOUS_TIMEOUT),
        )
        if agent_store:
            # The agent's store outlives restarts: each attempt needs keys of its own (as torch's tcp:// init
            # does), or restarted workers read the previous attempt's addresses and cannot connect.
            return dist.PrefixStore(f"/worker/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        return store

    # -------------------------------------------------------------- collectives
    def barrier(self, name: str | None = None) -> None:
        if not collectives.is_initialized():
            return
        if self.backend() == "nccl":
            dist.barrier(device_ids=[self.root_device.index])
        else:
            dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not collectives.is_initialized():
            return obj
        device = self.root_device if self.backend() == "nccl" else None
        return collectives.broadcast_object(obj, src=src, device=device)

    def all_gather(
        self, tensor: torch.Tensor, group: Any | None = None, sync_grads: bool = False, *, same_shape: bool = False
    ) -> torch.Tensor:
        if not collectives.is_initialized():
            return super().all_gather(tensor, group, sync_grads)
        return collectives.all_gather(tensor, group=group, sync_grads=sync_grads, same_shape=same_shape)

    def all_reduce(self, tensor: torch.Tensor, group: Any | None = None, reduce_op: Any = "mean") -> torch.Tensor:
        if not collectives.is_initialized():
            return tensor
        return collectives.all_reduce(tensor, group=group, reduce_op=reduce_op)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        if not collectives.is_initialized():
            return decision
        votes = collectives.all_reduce(torch.tensor(int(decision), device=self.root_device), reduce_op="sum")
        return bool(votes.item() == self.world_size) if all else bool(votes.item() > 0)

    def teardown(self) -> None:
        if collectives.is_initialized():
            dist.destroy_process_group()
        super().teardown()


def check_timeout(timeout: Any, owner: str) -> timedelta:
    """A collective timeout must be a positive ``datetime.timedelta`` (as in Lightning and torch.distributed)."""
    if not isinstance(timeout, timedelta):
        raise ConfigurationError(
            f"{owner}(timeout={timeout!r}) must be a datetime.timedelta, not {type(timeout).__name__}. "
            f"Fix: {owner}(timeout=datetime.timedelta(seconds={timeout if isinstance(timeout, (int, float)) else 300}))."
        )
    if timeout.total_seconds() <= 0:
        raise ConfigurationError(
            f"{owner}(timeout={timeout!r}) is not positive: every collective would fail at once. "
            f"Fix: {owner}(timeout=datetime.timedelta(minutes=30)) or another positive duration."
        )
    return timeout


#: How long the store's host waits at exit for the other ranks to tear down (a crashed peer never does).
EXIT_WAIT = timedelta(seconds=5)


def _leave_process_group(store: dist.Store, rank: int, world_size: int, hosts_store: bool) -> None:
    """At exit: tear this rank's group down, say so in the store; the store's host waits for everyone's word."""
    # First let gloo's workers drop their last works while the interpreter can still give them the GIL.
    gloo_exit.drain_workers()
    if collectives.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # at interpreter exit a peer may be gone already: nothing left to release
            pass
    try:
        # After an uncaught exception (sys.last_value) the others are being stopped: do not wait for them.
        if hosts_store and getattr(sys, "last_value", None) is None:
            store.wait([f"fabric_lite/left/{other}" for other in range(1, world_size)], EXIT_WAIT)
        elif not hosts_store:
            store.set(f"fabric_lite/left/{rank}", "1")
    except Exception:  # the host already gone, or a peer that crashed: nothing to wait for
        pass
