"""FSDP2: parameters, gradients and optimizer state sharded over a DeviceMesh with ``fully_shard``.

Processes, rendezvous and collectives are ParallelStrategy's (inherited); this file adds the sharding, the
optimizer re-binding, meta-device materialisation, global-norm clipping and DCP checkpoints.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ContextManager, Union

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim import Optimizer

from fabric_lite.accelerators import Accelerator
from fabric_lite.checkpoint import sharded
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.errors import ConfigurationError, choices_error
from fabric_lite.precision.base import Precision
from fabric_lite.precision.fsdp import FSDPPrecision
from fabric_lite.strategies.parallel import ParallelStrategy

STATE_DICT_TYPES = ("sharded", "full")
#: A set of module classes, or a predicate on modules.
ModulePolicy = Union[set[type[nn.Module]], Callable[[nn.Module], bool], None]


class _ClassPolicy:
    """``isinstance(module, classes)``; a class rather than a lambda so that the strategy stays picklable (spawn)."""

    def __init__(self, classes: tuple[type[nn.Module], ...]) -> None:
        self.classes = classes

    def __call__(self, module: nn.Module) -> bool:
        return isinstance(module, self.classes)

    def __repr__(self) -> str:
        return "{" + ", ".join(c.__name__ for c in self.classes) + "}"


def _module_policy(policy: Any, argument: str) -> Callable[[nn.Module], bool] | None:
    if policy is None:
        return None
    if isinstance(policy, type) and issubclass(policy, nn.Module):
        policy = {policy}
    if isinstance(policy, (set, frozenset, list, tuple)) and policy:
        if all(isinstance(c, type) and issubclass(c, nn.Module) for c in policy):
            return _ClassPolicy(tuple(policy))
    elif callable(policy) and not isinstance(policy, type):
        return policy
    raise ConfigurationError(
        f"FSDPStrategy({argument}={policy!r}) must be a set of nn.Module classes or a callable(module) -> bool. "
        f"Fix: FSDPStrategy({argument}={{nn.TransformerEncoderLayer}}) or {argument}=lambda m: isinstance(m, Block)."
    )


class FSDPStrategy(ParallelStrategy):
    """Fully sharded data parallel on FSDP2 (``torch.distributed.fsdp.fully_shard``), one process per device.

    Args:
        auto_wrap_policy: modules sharded individually before the root: a set of module classes or a
            ``callable(module) -> bool``. Each such module gathers its parameters only around its own forward.
        activation_checkpointing_policy: modules whose activations are recomputed in backward (same forms).
        reshard_after_forward: free gathered parameters after forward (saves memory, re-gathers in backward).
        cpu_offload: keep sharded parameters, gradients and optimizer state in CPU memory (CUDA only).
        device_mesh: ``None`` shards over all processes; ``(replicate, shard)`` gives hybrid sharding (HSDP);
            an int ``n`` means ``(world_size // n, n)``; a ``DeviceMesh`` is used as is.
        state_dict_type: ``"sharded"`` saves one folder of shards through torch.distributed.checkpoint;
            ``"full"`` gathers one file on rank 0.
        The process arguments (positional, or by keyword) are ParallelStrategy's: devices, backend, timeout, ...

    Mixed precision follows the Fabric precision: ``bf16-mixed``/``16-mixed`` compute with bf16/fp16
    parameters and reduce gradients in fp32 (``precision/fsdp.py``, picked by the plan); ``*-true``
    precisions convert the module itself.

    Example:
        >>> strategy = FSDPStrategy(auto_wrap_policy={nn.TransformerEncoderLayer}, state_dict_type="full")
        >>> strategy.state_dict_type
        'full'
    """

    name = "fsdp"
    collective_forward = True  # each forward all-gathers the shards
    local_steps_under_no_sync = False

    def __init__(
        self,
        *args: Any,
        auto_wrap_policy: ModulePolicy = None,
        activation_checkpointing_policy: ModulePolicy = None,
        reshard_after_forward: bool | int = True,
        cpu_offload: bool = False,
        device_mesh: tuple[int, int] | int | Any = None,
        state_dict_type: str = "sharded",
        **processes: Any,
    ) -> None:
        super().__init__(*args, **processes)
        if state_dict_type not in STATE_DICT_TYPES:
            raise choices_error(
                f"FSDPStrategy(state_dict_type={state_dict_type!r})", "state dict type", STATE_DICT_TYPES,
                fix="state_dict_type='sharded' (one folder, every rank writes its shards) or 'full' (one file from rank 0).",
            )
        self.auto_wrap_policy = _module_policy(auto_wrap_policy, "auto_wrap_policy")
        self.activation_checkpointing_policy = _module_policy(activation_checkpointing_policy, "activation_checkpointing_policy")
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = bool(cpu_offload)
        self.device_mesh = device_mesh
        self.state_dict_type = state_dict_type
        self._mesh: Any = None
        self._modules: list[weakref.ref[nn.Module]] = []
        # id(parameter before sharding) -> (that parameter, its module, its name): re-binds optimizers made before setup.
        self._replaced: dict[int, tuple[weakref.ref[nn.Parameter], weakref.ref[nn.Module], str]] = {}
        self._mesh_shape(check_world=False)

    # ------------------------------------------------------------------ set-up
    def setup_environment(self) -> None:
        if self.cpu_offload and self.root_device.type != "cuda":
            raise ConfigurationError(
                f"FSDPStrategy(cpu_offload=True) needs CUDA: it keeps the shards in CPU memory and copies them to the "
                f"GPU for each step, but this run's device is {self.root_device.type}, where parameters live in CPU "
                f"memory already (and FSDP2 offloading does not run there). Fix: drop cpu_offload=True, or run on GPUs "
                f"with accelerator='cuda'."
            )
        shape, names = self._mesh_shape(check_world=True)  # fail before any process group exists
        super().setup_environment()
        if self._mesh is None:
            is_mesh = isinstance(self.device_mesh, DeviceMesh)
            self._mesh = self.device_mesh if is_mesh else init_device_mesh(self.root_device.type, shape, mesh_dim_names=names)

    def _mesh_shape(self, *, check_world: bool) -> tuple[tuple[int, ...], tuple[str, ...]]:
        spec = self.device_mesh
        if spec is None or isinstance(spec, DeviceMesh):
            return (self.world_size,), ("shard",)
        if isinstance(spec, int) and not isinstance(spec, bool) and spec > 0:
            shape: tuple[int, ...] = (max(self.world_size // spec, 1), spec)
        elif isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(n, int) and n > 0 for n in spec):
            shape = tuple(spec)
        else:
            raise ConfigurationError(
                f"FSDPStrategy(device_mesh={spec!r}) is not a mesh. Choose one of: None (shard over all processes), "
                f"(replicate, shard) with positive ints, an int shard-group size, or a DeviceMesh. Fix: device_mesh=(2, 4)."
            )
        if check_world and shape[0] * shape[1] != self.world_size:
            raise ConfigurationError(
                f"FSDPStrategy(device_mesh={spec!r}) asks for {shape[0]} replicas x {shape[1]} shards = "
                f"{shape[0] * shape[1]} processes, but this job has {self.world_size}. Fix: make replicate x shard "
                f"equal the world size, e.g. device_mesh=(1, {self.world_size})."
            )
        return shape, ("replicate", "shard")

    def module_to_device(self, module: nn.Module) -> nn.Module:
        if _has_meta(module):
            return module  # setup_module materialises each rank's shard only
        return module.to(self.root_device)

    def module_init_context(self, empty_init: bool | None = None) -> ContextManager[Any]:
        """With ``empty_init=True`` modules are built on the meta device: no memory until ``setup`` shards them."""
        if not empty_init:
            return super().module_init_context(empty_init)
        stack = contextlib.ExitStack()
        stack.enter_context(torch.device("meta"))
        stack.enter_context(self.precision.module_init_context())
        return stack

    def setup_module(self, module: nn.Module) -> nn.Module:
        if not isinstance(module, FSDPModule):  # a module the user sharded already is taken as is
            # Order: checkpoint wrappers first (they keep the parameter objects), then shard children
            # before their parents, then the root; materialise last, when each rank holds only its shard.
            self._apply_activation_checkpointing(module)
            originals = list(module.named_parameters())
            self._shard(module)
            module_ref = weakref.ref(module)
            for name, parameter in originals:
                self._replaced[id(parameter)] = (weakref.ref(parameter), module_ref, name)
        self._materialise(module)
        self._modules.append(weakref.ref(module))
        return module

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        """Point an optimizer made before setup at the sharded (DTensor) parameters, keeping its hyperparameters."""
        current: dict[int, dict[str, nn.Parameter]] = {}
        moved: dict[nn.Parameter, nn.Parameter] = {}
        for group in optimizer.param_groups:
            new_params = []
            for parameter in group["params"]:
                entry = self._replaced.get(id(parameter))
                module = entry[1]() if entry is not None and entry[0]() is parameter else None
                if module is not None:
                    named = current.setdefault(id(module), dict(module.named_parameters()))
                    moved[parameter] = named[entry[2]]  # type: ignore[index]
                new_params.append(moved.get(parameter, parameter))
            group["params"] = new_params
        for old, new in moved.items():
            if old in optimizer.state:  # e.g. state loaded before setup: shard it like its parameter
                optimizer.state[new] = {k: _shard_like(v, new) for k, v in optimizer.state.pop(old).items()}
        return optimizer

    def _apply_activation_checkpointing(self, module: nn.Module) -> None:
        if self.activation_checkpointing_policy is None:
            return
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        apply_activation_checkpointing(module, check_fn=self.activation_checkpointing_policy)

    def _shard(self, module: nn.Module) -> None:
        # FSDP's mixed precision casts the compute parameters; the true dtypes convert the module itself.
        policy = self.precision.mixed_precision_policy() if isinstance(self.precision, FSDPPrecision) else None
        kwargs: dict[str, Any] = {
            "mesh": self._mesh,
            "reshard_after_forward": self.reshard_after_forward,
            "mp_policy": policy or MixedPrecisionPolicy(),
            "offload_policy": CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy(),
        }
        if self.auto_wrap_policy is not None:
            # Children before parents: fully_shard takes the parameters no sharded descendant has claimed.
            for submodule in reversed(list(module.modules())):
                if submodule is not module and not isinstance(submodule, FSDPModule) and self.auto_wrap_policy(submodule):
                    fully_shard(submodule, **kwargs)
        fully_shard(module, **kwargs)

    def _materialise(self, module: nn.Module) -> None:
        if not _has_meta(module):
            return
        module.to_empty(device=torch.device("cpu") if self.cpu_offload else self.root_device)
        # Buffers of modules without reset_parameters stay uninitialised (as with Lightning's FSDP).
        with torch.no_grad(), self._shard_rng():
            for submodule in module.modules():
                reset = getattr(submodule, "reset_parameters", None)
                if callable(reset):
                    reset()

    @contextlib.contextmanager
    def _shard_rng(self) -> Iterator[None]:
        """Random init of shards that differ across the shard dimension and agree across replicas.

        On CUDA, DTensor's RNG tracker does this. On a CPU mesh DTensor falls back to the local
        generator, so every rank would draw the same numbers: each shard would repeat rank 0's rows.
        """
        if self._mesh.device_type != "cpu":
            yield
            return
        seed = self.broadcast(torch.initial_seed()) + self._mesh.get_local_rank(mesh_dim=self._mesh.ndim - 1)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="DTensor random operators may not have complete support")
            torch.manual_seed(seed)
            yield

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> ContextManager[Any]:
        if not isinstance(module, FSDPModule):
            raise ConfigurationError(
                "fabric.no_backward_sync(model) under FSDP needs the model returned by fabric.setup(...), "
                f"got a {type(module).__name__}. Fix: model = fabric.setup(model, optimizer)."
            )
        return _gradient_sync_off(module) if enabled else contextlib.nullcontext()

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        norm = super().clip_gradients_norm(module, optimizer, max_norm, norm_type, error_if_nonfinite)
        # clip_grad_norm_ over DTensor shards returns a DTensor; users expect the plain global norm.
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(
        self,
        path: str | Path,
        state: dict[str, Any],
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Sharded: one folder written by every rank through DCP. Full: one file gathered to rank 0. Every rank calls it."""
        sharded.save_checkpoint(self, path, state, filter=filter, full=self.state_dict_type == "full", owner=self._owner)

    def load_checkpoint(
        self,
        path: str | Path,
        state: dict[str, Any] | nn.Module | Optimizer | None = None,
        strict: bool = True,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        """Load a sharded folder (written at any world size) or a full file into sharded models and their optimizers."""
        return sharded.load_checkpoint(self, path, state, strict=strict, weights_only=weights_only, owner=self._owner)

    def _owner(self, optimizer: Optimizer) -> nn.Module:
        """The set-up model whose parameters the optimizer updates (DCP names optimizer state by its parameters)."""
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for ref in reversed(self._modules):
            module = ref()
            if module is not None and any(id(p) in ids for p in module.parameters()):
                return module
        raise ConfigurationError(
            f"fabric.save/load got a {type(optimizer).__name__} whose parameters belong to no model set up by this "
            f"FSDP strategy, so its state cannot be named. Fix: model, optimizer = fabric.setup(model, optimizer) "
            f"before saving or loading."
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(devices={len(self.parallel_devices)}, num_nodes={self.num_nodes}, "
            f"device_mesh={self.device_mesh!r}, state_dict_type={self.state_dict_type!r}, precision={self.precision.name!r})"
        )


def _has_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in module.parameters()) or any(t.is_meta for t in module.buffers())


def _shard_like(value: Any, parameter: nn.Parameter) -> Any:
    if isinstance(parameter, DTensor) and type(value) is torch.Tensor and value.dim() > 0 and value.shape == parameter.shape:
        return distribute_tensor(value.to(parameter.device), parameter.device_mesh, parameter.placements)
    return value


@contextlib.contextmanager
def _gradient_sync_off(module: FSDPModule) -> Iterator[None]:
    module.set_requires_gradient_sync(False)  # accumulate unsharded gradients locally, no reduce-scatter
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
