"""DeepSpeed ZeRO (stages 0-3, optional CPU/NVMe offload): the engine owns wrapping, backward, step and checkpoints.

Processes, rendezvous and collectives are ParallelStrategy's (inherited): the process group is made the same
way and DeepSpeed is told that it exists. The options live in ``deepspeed_config.py``, the precision
plugin in ``precision/deepspeed.py``, the checkpoint folders in ``checkpoint/deepspeed.py``, and which engine
a module, optimizer or checkpoint state belongs to in ``deepspeed_engines.py``.
``deepspeed`` is imported only inside methods, so that ``import fabric_lite`` never pays for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

import torch
from torch import nn
from torch.optim import Optimizer

from fabric_lite.checkpoint import deepspeed as folders
from fabric_lite.checkpoint.deepspeed import (  # noqa: F401  re-exported: the names users and fabric-run import from here
    TAG,
    consolidate_deepspeed_checkpoint,
    deepspeed_available,
    is_deepspeed_checkpoint,
)
from fabric_lite.errors import ConfigurationError, UsageError, missing_package
from fabric_lite.precision.deepspeed import DeepSpeedPrecision, deepspeed_precision  # noqa: F401
from fabric_lite.strategies.parallel import ParallelStrategy
from fabric_lite.strategies.deepspeed_config import DeepSpeedConfig, load_config
from fabric_lite.strategies.deepspeed_engines import find_engine, find_engine_in_state
from fabric_lite.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


class DeepSpeedStrategy(ParallelStrategy):
    """Train with a DeepSpeed engine: ZeRO sharding of optimizer state (stage 1), gradients (2) and parameters (3).

    Args:
        config: a DeepSpeed config (dict, or the path of a JSON file). When given it is used as is (a copy),
            and only what it lacks is filled in: precision, ``train_micro_batch_size_per_gpu``,
            ``gradient_accumulation_steps``, ``gradient_clipping``, ``zero_allow_untested_optimizer``.
            When omitted, a ``zero_optimization`` section is made from the arguments below.
        stage: ZeRO stage: 0 (plain data parallel), 1 (optimizer state sharded), 2 (+ gradients), 3 (+ parameters).
        offload_optimizer: keep optimizer state (and the step) in CPU memory or on NVMe (stage 1-3).
        offload_parameters: keep parameters in CPU memory or on NVMe (stage 3).
        offload_optimizer_device, offload_params_device: ``"cpu"`` or ``"nvme"``.
        nvme_path: the folder on an NVMe drive used by ``"nvme"`` offloading.
        pin_memory: pin offloaded CPU memory (faster copies to the GPU).
        contiguous_gradients, overlap_comm, allgather_bucket_size, reduce_bucket_size, sub_group_size:
            ZeRO's tuning knobs, written into ``zero_optimization``.
        gradient_clipping: clip the global gradient norm to this value inside the engine's step
            (``fabric.clip_gradients`` cannot work under DeepSpeed).
        gradient_accumulation_steps: micro-batches per optimizer update: call ``fabric.backward`` and
            ``optimizer.step()`` every micro-batch; the engine steps on the boundary only.
        zero_allow_untested_optimizer: let ZeRO wrap any torch optimizer (DeepSpeed otherwise accepts only its own list).
        loss_scale, initial_scale_power, loss_scale_window, hysteresis, min_loss_scale: fp16 (CUDA) loss scaling;
            ``loss_scale=0`` means dynamic.
        exclude_frozen_parameters: leave parameters without gradients out of checkpoints.
        logging_level: the level of DeepSpeed's own logger (its INFO output is very chatty).
        **processes: ParallelStrategy's process arguments by keyword (filled in by the plan when omitted).

    Gradient accumulation: with ``gradient_accumulation_steps=N`` call ``fabric.backward(loss)`` and
    ``optimizer.step()`` on every micro-batch; the engine updates on every N-th and zeroes the gradients
    after each update. Do not call ``optimizer.zero_grad()`` between micro-batches then: as in plain
    PyTorch it drops the gradients accumulated so far (at stage 3 even those of earlier micro-batches).

    Example:
        >>> strategy = DeepSpeedStrategy(stage=3, gradient_clipping=1.0)  # doctest: +SKIP
        >>> fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy, precision="bf16-mixed")  # doctest: +SKIP
    """

    name = "deepspeed"
    local_steps_under_no_sync = False  # the engine reduces gradients in every backward

    def __init__(
        self,
        config: dict[str, Any] | str | Path | None = None,
        *,
        stage: int = 2,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        offload_optimizer_device: str = "cpu",
        offload_params_device: str = "cpu",
        nvme_path: str | Path = "/local_nvme",
        pin_memory: bool = False,
        contiguous_gradients: bool = True,
        overlap_comm: bool = True,
        allgather_bucket_size: int = 200_000_000,
        reduce_bucket_size: int = 200_000_000,
        sub_group_size: int = 1_000_000_000_000,
        gradient_clipping: float | None = None,
        gradient_accumulation_steps: int | None = None,
        zero_allow_untested_optimizer: bool = True,
        loss_scale: float = 0,
        initial_scale_power: int = 16,
        loss_scale_window: int = 1000,
        hysteresis: int = 2,
        min_loss_scale: int = 1,
        exclude_frozen_parameters: bool = False,
        logging_level: int = logging.WARNING,
        **processes: Any,
    ) -> None:
        if not deepspeed_available():
            raise missing_package("deepspeed", "deepspeed", "DeepSpeedStrategy")
        self.options = DeepSpeedConfig(
            config=load_config(config), stage=stage, offload_optimizer=offload_optimizer,
            offload_parameters=offload_parameters, offload_optimizer_device=offload_optimizer_device,
            offload_params_device=offload_params_device, nvme_path=str(nvme_path), pin_memory=pin_memory,
            zero_tuning={
                "contiguous_gradients": contiguous_gradients, "overlap_comm": overlap_comm,
                "allgather_bucket_size": allgather_bucket_size, "reduce_bucket_size": reduce_bucket_size,
                "sub_group_size": sub_group_size,
            },
            gradient_clipping=gradient_clipping, gradient_accumulation_steps=gradient_accumulation_steps,
            zero_allow_untested_optimizer=zero_allow_untested_optimizer,
            loss_scaling={
                "loss_scale": loss_scale, "initial_scale_power": initial_scale_power,
                "loss_scale_window": loss_scale_window, "hysteresis": hysteresis, "min_loss_scale": min_loss_scale,
            },
            exclude_frozen_parameters=exclude_frozen_parameters, logging_level=logging_level,
        )
        if processes.get("precision") is not None:
            processes["precision"] = deepspeed_precision(processes["precision"])
        super().__init__(**processes)
        if self.accelerator is not None:
            self.options.check_precision(self.precision.name, self.accelerator.name)
        self._engines: list[DeepSpeedEngine] = []
        self._trained: set[int] = set()  # ids of engines set up with an optimizer
        self._backward_pending: set[int] = set()  # ids of engines with a backward not yet followed by optimizer.step()
        self._micro_batch_size: int | None = None  # from the first dataloader, when it comes before the model

    # ------------------------------------------------------------------ options
    @property
    def stage(self) -> int:
        return self.options.stage

    @property
    def offload_optimizer(self) -> bool:
        return self.options.offload_optimizer

    @property
    def offload_parameters(self) -> bool:
        return self.options.offload_parameters

    @property
    def exclude_frozen_parameters(self) -> bool:
        return self.options.exclude_frozen_parameters

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage the engine runs (from the config when one was given)."""
        return self.options.zero_stage

    def engine_config(self, *, training: bool = True) -> dict[str, Any]:
        """The config handed to ``deepspeed.initialize``: the user's (or a made one), completed.

        Example:
            >>> DeepSpeedStrategy(stage=3).engine_config()["zero_optimization"]["stage"]  # doctest: +SKIP
            3
        """
        return self.options.engine_config(self.precision.name, micro_batch_size=self._micro_batch_size, training=training)

    # ------------------------------------------------------------------ set-up
    def setup_environment(self) -> None:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        deepspeed.utils.logging.logger.setLevel(self.options.logging_level)
        self.options.check_precision(self.precision.name, self.root_device.type)
        check_same_device(self.root_device.type, get_accelerator().device_name())
        # DeepSpeed's engine reads the local rank from this variable (engine.py, _set_distributed_vars);
        # our launchers set it, a single process without a launcher does not.
        os.environ.setdefault("LOCAL_RANK", str(self.local_rank))
        super().setup_environment()  # the process group, made as for DDP
        # DeepSpeed keeps its own handle on the process group: hand it ours instead of letting it make one.
        deepspeed.init_distributed(dist_backend=self.backend(), auto_mpi_discovery=False, timeout=self.timeout)

    def process_dataloader(self, dataloader: Any) -> Any:
        batch_size = getattr(dataloader, "batch_size", None)
        if self._micro_batch_size is None and isinstance(batch_size, int) and batch_size > 0:
            self._micro_batch_size = batch_size
        return dataloader

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        if len(optimizers) != 1:
            raise ConfigurationError(
                f"fabric.setup(model, {', '.join(f'optimizer{i + 1}' for i in range(len(optimizers)))}) under "
                f"DeepSpeedStrategy got {len(optimizers)} optimizers, but a DeepSpeed engine drives exactly one. "
                f"Fix: put every parameter group into one optimizer, e.g. torch.optim.AdamW([{{'params': a}}, "
                f"{{'params': b, 'lr': 1e-4}}]), and call fabric.setup(model, optimizer)."
            )
        engine = self._initialize_engine(module, optimizers[0])
        return engine, [engine.optimizer]

    def setup_module(self, module: nn.Module) -> nn.Module:
        """An engine without optimizer, for inference (stage 3 still partitions the parameters)."""
        return self._initialize_engine(module, None)

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        raise ConfigurationError(
            "fabric.setup_optimizers(optimizer) cannot work under DeepSpeedStrategy: the DeepSpeed engine is built "
            "from the model and its optimizer together. Fix: fabric.setup(model, optimizer) in one call."
        )

    def _initialize_engine(self, module: nn.Module, optimizer: Optimizer | None) -> DeepSpeedEngine:
        import argparse

        import deepspeed

        if self._engines and any(e.module is module for e in self._engines):
            raise UsageError(
                f"fabric.setup() got a {type(module).__name__} that is already inside a DeepSpeed engine. "
                f"Fix: set up each model once."
            )
        config = self.engine_config(training=optimizer is not None)
        # Only on CUDA does the engine need the device index; elsewhere it reads LOCAL_RANK.
        args = argparse.Namespace(device_rank=self.root_device.index) if self.root_device.type == "cuda" else None
        engine, _, _, _ = deepspeed.initialize(
            args=args,
            model=module,
            optimizer=optimizer,
            model_parameters=None if optimizer is not None else [],
            config=config,
            dist_init_required=False,
        )
        self._engines.append(engine)
        if optimizer is not None:
            self._trained.add(id(engine))
        return engine


    # --------------------------------------------------------- training steps
    def _engine_for(self, module: Any = None, optimizer: Any = None, *, asked: str) -> DeepSpeedEngine:
        """The engine that ``module`` (engine, FabricModule or user module) or ``optimizer`` belongs to."""
        return find_engine(self._engines, self._trained, module, optimizer, asked=asked)

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        engine = self._engine_for(module, asked="fabric.backward(loss)")
        if id(engine) not in self._trained:
            raise UsageError(
                "fabric.backward(loss) was called on a model set up without an optimizer (fabric.setup_module), "
                "which DeepSpeed builds for inference only. Fix: fabric.setup(model, optimizer)."
            )
        if id(engine) in self._backward_pending and self.zero_stage in (1, 2):
            # ZeRO 1-2 reduce the gradients into their partitions inside backward, keyed on the engine's own
            # micro-step count, which only optimizer.step() advances: a second backward before it silently
            # overwrites or misplaces the first one's gradients (seen: different weights than plain PyTorch).
            raise UsageError(
                f"fabric.backward(loss) was called twice without optimizer.step() in between, which ZeRO stage "
                f"{self.zero_stage} cannot accumulate (it would keep a different set of gradients than plain PyTorch). "
                f"Fix: DeepSpeedStrategy(gradient_accumulation_steps=N) and call fabric.backward(loss) and "
                f"optimizer.step() on every micro-batch (the engine updates on every N-th), or sum the losses and "
                f"call fabric.backward once."
            )
        engine.backward(tensor, *args, **kwargs)
        self._backward_pending.add(id(engine))

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        if kwargs.get("closure") is not None:
            raise ConfigurationError(
                "optimizer.step(closure) cannot work under DeepSpeedStrategy: the engine steps without re-evaluating "
                "the loss. Fix: call optimizer.step() after fabric.backward(loss)."
            )
        # Only on an accumulation boundary does this update; it also zeroes the gradients.
        engine = self._engine_for(optimizer=optimizer, asked="optimizer.step()")
        engine.step()
        self._backward_pending.discard(id(engine))
        return None

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        raise ConfigurationError(
            f"fabric.clip_gradients(model, optimizer, max_norm={max_norm}) cannot work under DeepSpeedStrategy: the "
            f"engine reduces, unscales and clips gradients inside its own step, where fabric cannot reach. Fix: "
            f"DeepSpeedStrategy(gradient_clipping={max_norm}) or set \"gradient_clipping\": {max_norm} in the DeepSpeed "
            f"config, and remove the clip_gradients call."
        )

    def clip_gradients_value(self, module: nn.Module, optimizer: Optimizer, clip_val: float) -> None:
        raise ConfigurationError(
            f"fabric.clip_gradients(model, optimizer, clip_val={clip_val}) cannot work under DeepSpeedStrategy: the "
            f"engine clips inside its own step, and only by the global norm. Fix: DeepSpeedStrategy(gradient_clipping=...) "
            f"or \"gradient_clipping\" in the DeepSpeed config (a norm), and remove the clip_gradients call."
        )

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> ContextManager[Any]:
        rank_zero_warn(
            "fabric.no_backward_sync(model) has no effect under DeepSpeedStrategy: ZeRO reduces gradients in every "
            "backward. For gradient accumulation use DeepSpeedStrategy(gradient_accumulation_steps=N) and call "
            "fabric.backward(loss) and optimizer.step() on every micro-batch."
        )
        return contextlib.nullcontext()

    # ------------------------------------------------------------- checkpoints
    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        from deepspeed import DeepSpeedEngine

        if isinstance(module, DeepSpeedEngine):
            module = module.module
        return module.state_dict()

    # ------------------------------------------------------------- checkpoints
    def is_trained(self, engine: Any) -> bool:
        """Whether ``engine`` was set up with an optimizer (else it was built for inference)."""
        return id(engine) in self._trained

    def save_checkpoint(
        self,
        path: str | Path,
        state: dict[str, Any],
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Save through the engine into a folder; every rank writes its shards (``checkpoint/deepspeed.py``)."""
        folders.save_checkpoint(self, path, state, filter)

    def load_checkpoint(
        self,
        path: str | Path,
        state: dict[str, Any] | nn.Module | Optimizer | None = None,
        strict: bool = True,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        """Restore the engine, its optimizer and the user's other state from a folder (``checkpoint/deepspeed.py``)."""
        return folders.load_checkpoint(self, path, state, strict=strict, weights_only=weights_only)

    def engine_in_state(self, state: Mapping[str, Any], *, asked: str) -> tuple[DeepSpeedEngine, str, str | None]:
        """The one engine in ``state``, its key, and the key of its optimizer (None when absent)."""
        return find_engine_in_state(self._engines, state, asked=asked)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(stage={self.zero_stage}, start_method={self.start_method!r}, "
            f"devices={len(self.parallel_devices)}, num_nodes={self.num_nodes}, precision={self.precision.name!r})"
        )


# ----------------------------------------------------------------------------- helpers
def check_same_device(fabric_device: str, deepspeed_device: str) -> None:
    """DeepSpeed places engines on the accelerator it detects by itself; refuse a run where that is not Fabric's."""
    if deepspeed_device != fabric_device:
        raise ConfigurationError(
            f"Fabric runs this process on {fabric_device}, but DeepSpeed detected the accelerator {deepspeed_device!r} "
            f"and would place the engine there. Fix: set DS_ACCELERATOR={fabric_device} before starting, or choose "
            f"Fabric(accelerator={deepspeed_device!r})."
        )

