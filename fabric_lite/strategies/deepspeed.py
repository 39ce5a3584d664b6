"""DeepSpeed ZeRO (stages 0-3, optional CPU/NVMe offload): the engine owns wrapping, backward, step and checkpoints.

Processes, rendezvous and collectives are DDP's (inherited): the process group is made the same
way and DeepSpeed is told that it exists. ``deepspeed`` is imported only inside methods, so that
``import fabric_lite`` never pays for it and works where it is absent.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

import torch
from torch import nn
from torch.optim import Optimizer

from fabric_lite.accelerators import Accelerator
from fabric_lite.checkpoint.deepspeed_universal import (
    UNIVERSAL,
    check_reshardable,
    load_whole_weights,
    loading_universal,
    restore_unsharded,
    saved_layout,
    universal_folder,
)
from fabric_lite.checkpoint.io import _fsync_dir, atomic_save
from fabric_lite.checkpoint.sharded import MARKER, _move_into_place, _temporary_sibling
from fabric_lite.checkpoint.state import META_KEY, restore_state, to_saveable
from fabric_lite.environments.base import ClusterEnvironment
from fabric_lite.errors import (
    CheckpointError,
    ConfigurationError,
    UsageError,
    choices_error,
    missing_package,
)
from fabric_lite.precision.base import Precision, cast_floating
from fabric_lite.precision.true import default_dtype
from fabric_lite.strategies.ddp import DEFAULT_TIMEOUT, DDPStrategy, StartMethod
from fabric_lite.utilities.rank_zero import rank_zero_warn
from fabric_lite.wrappers import FabricModule, FabricOptimizer

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

#: The tag (sub-folder) every checkpoint is written under, so that loading never depends on ``latest``.
TAG = "checkpoint"
#: The one key of DeepSpeed's ``client_state`` that holds the user's other state (DeepSpeed reserves
#: names such as ``optimizer``, ``module`` and ``global_steps`` at the top level).
CLIENT_KEY = "fabric_lite"
ZERO_STAGES = (0, 1, 2, 3)
OFFLOAD_DEVICES = ("cpu", "nvme")
#: Fabric precision -> the DeepSpeed config section that enables it (absent: full fp32).
_PRECISION_SECTIONS = {"bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16", "16-true": "fp16"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeepSpeedPrecision(Precision):
    """How a DeepSpeed engine runs a half precision: the engine keeps bf16/fp16 weights (and fp32 master
    weights in its optimizer) by itself; floating-point inputs are cast to that dtype and outputs back.

    No autocast: DeepSpeed's weights already are in the low dtype, as in Lightning's DeepSpeedPrecision.

    Example:
        >>> p = DeepSpeedPrecision("bf16-mixed")
        >>> p.convert_input(torch.ones(1)).dtype, p.convert_output(torch.ones(1, dtype=torch.bfloat16)).dtype
        (torch.bfloat16, torch.float32)
    """

    is_identity = False
    casts_input = True

    def __init__(self, precision: str) -> None:
        if precision not in _PRECISION_SECTIONS:
            raise choices_error(
                f"DeepSpeedPrecision({precision!r})", "DeepSpeed precision", ["32-true", *_PRECISION_SECTIONS]
            )
        self.name = precision
        self.dtype = _DTYPES[_PRECISION_SECTIONS[precision]]

    def convert_module(self, module: nn.Module) -> nn.Module:
        # "-mixed": DeepSpeed casts the module itself and keeps fp32 master weights; "-true" asks for it now.
        return module.to(dtype=self.dtype) if self.name.endswith("-true") else module

    def module_init_context(self) -> ContextManager[Any]:
        return default_dtype(self.dtype) if self.name.endswith("-true") else contextlib.nullcontext()

    def tensor_init_context(self) -> ContextManager[Any]:
        return self.module_init_context()

    def convert_input(self, data: Any) -> Any:
        return cast_floating(data, self.dtype)

    def convert_output(self, data: Any) -> Any:
        return cast_floating(data, torch.get_default_dtype())


def deepspeed_precision(plugin: Precision) -> Precision:
    """The plugin a DeepSpeed engine needs for the Fabric precision ``plugin`` (full fp32 stays as it is)."""
    if type(plugin) is Precision or isinstance(plugin, DeepSpeedPrecision):
        return plugin
    if plugin.name == "32-true":
        return plugin
    if plugin.name not in _PRECISION_SECTIONS:
        raise ConfigurationError(
            f"Fabric(strategy=DeepSpeedStrategy(...), precision={plugin.name!r}) is not supported: DeepSpeed trains in "
            f"fp32, bf16 or fp16 only. Choose one of: 32-true, {', '.join(_PRECISION_SECTIONS)}."
        )
    return DeepSpeedPrecision(plugin.name)


class DeepSpeedStrategy(DDPStrategy):
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
        accelerator, parallel_devices, cluster_environment, precision, process_group_backend, timeout,
            start_method, num_nodes: as DDPStrategy (filled in by the plan when omitted).

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
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = DEFAULT_TIMEOUT,
        start_method: StartMethod = "popen",
        num_nodes: int = 1,
    ) -> None:
        if not _deepspeed_available():
            raise missing_package("deepspeed", "deepspeed", "DeepSpeedStrategy")
        # Set before the base class assigns the precision: its setter validates against the config.
        self.config = _load_config(config)
        self._config_given = config is not None
        super().__init__(
            accelerator=accelerator, parallel_devices=parallel_devices, cluster_environment=cluster_environment,
            precision=precision, process_group_backend=process_group_backend, timeout=timeout,
            start_method=start_method, num_nodes=num_nodes,
        )
        if stage not in ZERO_STAGES:
            raise choices_error(f"DeepSpeedStrategy(stage={stage!r})", "ZeRO stage", ZERO_STAGES)
        for argument, device in (("offload_optimizer_device", offload_optimizer_device),
                                 ("offload_params_device", offload_params_device)):
            if device not in OFFLOAD_DEVICES:
                raise choices_error(f"DeepSpeedStrategy({argument}={device!r})", "offload device", OFFLOAD_DEVICES)
        if offload_parameters and stage != 3 and config is None:
            raise ConfigurationError(
                f"DeepSpeedStrategy(stage={stage}, offload_parameters=True): only ZeRO stage 3 partitions parameters, "
                f"so only stage 3 can offload them. Fix: stage=3, or offload_optimizer=True alone."
            )
        if gradient_accumulation_steps is not None and (
            not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1
        ):
            raise ConfigurationError(
                f"DeepSpeedStrategy(gradient_accumulation_steps={gradient_accumulation_steps!r}) must be a positive int. "
                f"Fix: gradient_accumulation_steps=4."
            )
        if gradient_clipping is not None and not gradient_clipping > 0:
            raise ConfigurationError(
                f"DeepSpeedStrategy(gradient_clipping={gradient_clipping!r}) must be a positive norm. "
                f"Fix: gradient_clipping=1.0, or leave it out to not clip."
            )
        self.stage = stage
        self.offload_optimizer = offload_optimizer
        self.offload_parameters = offload_parameters
        self.offload_optimizer_device = offload_optimizer_device
        self.offload_params_device = offload_params_device
        self.nvme_path = str(nvme_path)
        self.pin_memory = pin_memory
        self.zero_tuning = {
            "contiguous_gradients": contiguous_gradients,
            "overlap_comm": overlap_comm,
            "allgather_bucket_size": allgather_bucket_size,
            "reduce_bucket_size": reduce_bucket_size,
            "sub_group_size": sub_group_size,
        }
        self.gradient_clipping = gradient_clipping
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.zero_allow_untested_optimizer = zero_allow_untested_optimizer
        self.loss_scaling = {
            "loss_scale": loss_scale,
            "initial_scale_power": initial_scale_power,
            "loss_scale_window": loss_scale_window,
            "hysteresis": hysteresis,
            "min_loss_scale": min_loss_scale,
        }
        self.exclude_frozen_parameters = exclude_frozen_parameters
        self.logging_level = logging_level
        self._engines: list[DeepSpeedEngine] = []
        self._trained: set[int] = set()  # ids of engines set up with an optimizer
        self._micro_batch_size: int | None = None  # from the first dataloader, when it comes before the model
        self._check_config_against_arguments()

    # ------------------------------------------------------------------ precision
    @property  # type: ignore[override]
    def precision(self) -> Precision:
        return self._precision

    @precision.setter
    def precision(self, plugin: Precision) -> None:
        # The plan builds precisions for plain PyTorch (autocast, GradScaler); DeepSpeed needs its own.
        plugin = deepspeed_precision(plugin)
        self._precision = plugin
        if self.accelerator is not None:
            self._check_precision(self.accelerator.name)

    def _check_precision(self, device_type: str) -> None:
        """fp16 needs CUDA; a config that enables a dtype must agree with the Fabric precision."""
        name = self._precision.name
        wanted = _PRECISION_SECTIONS.get(name)
        sections = [s for s in ("bf16", "fp16") if _enabled(self.config.get(s))]
        if ("fp16" in sections or wanted == "fp16") and device_type != "cuda":
            asked = f"precision={name!r}" if wanted == "fp16" else "config={'fp16': {'enabled': True}}"
            raise ConfigurationError(
                f"Fabric(strategy=DeepSpeedStrategy(...), {asked}) cannot run on {device_type}: DeepSpeed's fp16 mode "
                f"(float16 weights with loss scaling) works on CUDA devices only. Fix: precision='bf16-mixed' "
                f"(or '32-true') on {device_type}, or accelerator='cuda'."
            )
        if sections and sections != [wanted]:
            enabled = ", ".join(f"{s!r}: {{'enabled': True}}" for s in sections)
            raise ConfigurationError(
                f"DeepSpeedStrategy(config={{{enabled}}}) conflicts with Fabric(precision={name!r}): the engine would "
                f"hold {'/'.join(sections)} weights while Fabric casts inputs for {name}. Fix: "
                f"precision='{'bf16-mixed' if sections == ['bf16'] else '16-mixed'}', or remove the section from the "
                f"config and let the precision fill it in."
            )

    # ------------------------------------------------------------------ set-up
    def setup_environment(self) -> None:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        deepspeed.utils.logging.logger.setLevel(self.logging_level)
        self._check_precision(self.root_device.type)
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

    def engine_config(self, *, training: bool = True) -> dict[str, Any]:
        """The config handed to ``deepspeed.initialize``: the user's (or a made one), completed.

        Example:
            >>> DeepSpeedStrategy(stage=3).engine_config()["zero_optimization"]["stage"]  # doctest: +SKIP
            3
        """
        config = copy.deepcopy(self.config) if self._config_given else {"zero_optimization": self._zero_section()}
        if self.gradient_accumulation_steps is not None:
            config.setdefault("gradient_accumulation_steps", self.gradient_accumulation_steps)
        if "train_batch_size" not in config:  # else DeepSpeed derives what is missing from it and the world size
            config.setdefault("train_micro_batch_size_per_gpu", self._micro_batch_size or 1)
            config.setdefault("gradient_accumulation_steps", 1)
        if self.gradient_clipping is not None:
            config.setdefault("gradient_clipping", self.gradient_clipping)
        config.setdefault("zero_allow_untested_optimizer", self.zero_allow_untested_optimizer)
        section = _PRECISION_SECTIONS.get(self.precision.name)
        if section == "bf16" and not _enabled(config.get("bf16")):
            config["bf16"] = {"enabled": True}
        elif section == "fp16" and not _enabled(config.get("fp16")):
            config["fp16"] = {"enabled": True, **self.loss_scaling}
        if training:
            return config
        # Without an optimizer ZeRO stages 1-2 refuse to build (they shard optimizer state); stage 3 still
        # partitions parameters, which is what large-model inference wants.
        inference = {k: config[k] for k in ("bf16", "fp16") if k in config}
        inference["train_micro_batch_size_per_gpu"] = config.get("train_micro_batch_size_per_gpu", 1)
        zero = config.get("zero_optimization") or {}
        if int(zero.get("stage", 0)) == 3:
            inference["zero_optimization"] = zero
            inference["zero_allow_untested_optimizer"] = config["zero_allow_untested_optimizer"]
        return inference

    def _zero_section(self) -> dict[str, Any]:
        section: dict[str, Any] = {"stage": self.stage}
        if self.stage > 0:
            section.update(self.zero_tuning)
        if self.offload_optimizer:
            section["offload_optimizer"] = {"device": self.offload_optimizer_device, "pin_memory": self.pin_memory}
            if self.offload_optimizer_device == "nvme":
                section["offload_optimizer"]["nvme_path"] = self.nvme_path
        if self.offload_parameters:
            section["offload_param"] = {"device": self.offload_params_device, "pin_memory": self.pin_memory}
            if self.offload_params_device == "nvme":
                section["offload_param"]["nvme_path"] = self.nvme_path
        return section

    def _check_config_against_arguments(self) -> None:
        for key, value in (("gradient_clipping", self.gradient_clipping),
                           ("gradient_accumulation_steps", self.gradient_accumulation_steps)):
            if value is not None and key in self.config and self.config[key] != value:
                raise ConfigurationError(
                    f"DeepSpeedStrategy({key}={value!r}, config={{{key!r}: {self.config[key]!r}, ...}}) sets {key} twice "
                    f"with different values. Fix: keep one of them."
                )

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage the engine runs (from the config when one was given)."""
        zero = self.config.get("zero_optimization") if self._config_given else {"stage": self.stage}
        return int((zero or {}).get("stage", 0))

    # --------------------------------------------------------- training steps
    def _engine_for(self, module: Any = None, optimizer: Any = None, *, asked: str) -> DeepSpeedEngine:
        """The engine that ``module`` (engine, FabricModule or user module) or ``optimizer`` belongs to."""
        from deepspeed import DeepSpeedEngine

        if isinstance(module, FabricModule):
            module = module._forward_module
        if isinstance(module, DeepSpeedEngine):
            return module
        if isinstance(optimizer, FabricOptimizer):
            optimizer = optimizer.optimizer
        for engine in self._engines:
            if (module is not None and engine.module is module) or (optimizer is not None and engine.optimizer is optimizer):
                return engine
        if module is not None or optimizer is not None:
            raise ConfigurationError(
                f"{asked} got a {type(module if module is not None else optimizer).__name__} that no DeepSpeed engine "
                f"holds. Fix: use the model and optimizer returned by fabric.setup(model, optimizer)."
            )
        # Without a hint, the one model being trained (models set up for inference take no steps).
        trained = [e for e in self._engines if id(e) in self._trained]
        if len(trained) == 1:
            return trained[0]
        if not trained:
            raise UsageError(f"{asked} was called before fabric.setup(model, optimizer). Fix: set the model up first.")
        raise ConfigurationError(
            f"{asked} cannot tell which of the {len(trained)} DeepSpeed models it is for. "
            f"Fix: fabric.backward(loss, model=model) with the model returned by fabric.setup(...)."
        )

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        engine = self._engine_for(module, asked="fabric.backward(loss)")
        if id(engine) not in self._trained:
            raise UsageError(
                "fabric.backward(loss) was called on a model set up without an optimizer (fabric.setup_module), "
                "which DeepSpeed builds for inference only. Fix: fabric.setup(model, optimizer)."
            )
        engine.backward(tensor, *args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        if kwargs.get("closure") is not None:
            raise ConfigurationError(
                "optimizer.step(closure) cannot work under DeepSpeedStrategy: the engine steps without re-evaluating "
                "the loss. Fix: call optimizer.step() after fabric.backward(loss)."
            )
        # Only on an accumulation boundary does this update; it also zeroes the gradients.
        self._engine_for(optimizer=optimizer, asked="optimizer.step()").step()
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

    def save_checkpoint(
        self,
        path: str | Path,
        state: dict[str, Any],
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Save through the engine's ``save_checkpoint`` into a folder; every rank writes its shards.

        The folder is written next to ``path`` under a temporary name, completed with a marker and renamed
        into place by rank 0 after every rank has finished, so a folder at ``path`` is always complete.
        """
        if filter is not None:
            raise ConfigurationError(
                "fabric.save(path, state, filter=...) is not supported under DeepSpeedStrategy: the engine writes its "
                "model and optimizer shards whole. Fix: save without filter, then consolidate and filter the file: "
                "consolidate_deepspeed_checkpoint(folder, output)."
            )
        if not isinstance(state, Mapping):
            to_saveable(state, self)  # raises the standard error
        path = Path(self.broadcast(str(path)))  # every rank writes into rank 0's folder
        if path.is_file():
            raise CheckpointError(
                f"fabric.save({str(path)!r}) writes a DeepSpeed checkpoint, which is a folder, but that path is an "
                f"existing file. Fix: choose another path or delete the file."
            )
        engine, module_key, optimizer_key = self._engine_in_state(state, asked=f"fabric.save({str(path)!r}, state)")
        rest = {k: v for k, v in state.items() if k not in (module_key, optimizer_key)}
        client = to_saveable(rest, self)
        client[META_KEY] = {**client[META_KEY], "deepspeed": {"module": module_key, "optimizer": optimizer_key}}
        staging = _temporary_sibling(path, "partial")
        if self.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)  # left by a save that crashed
            staging.mkdir(parents=True)
        self.barrier("deepspeed_save_start")
        engine.save_checkpoint(
            str(staging), tag=TAG, client_state={CLIENT_KEY: client},
            exclude_frozen_parameters=self.exclude_frozen_parameters,
        )
        self.barrier("deepspeed_save_written")  # every rank's shards are on disk before the marker says so
        if self.is_global_zero:
            (staging / MARKER).write_text("fabric_lite DeepSpeed checkpoint: complete\n")
            _fsync_dir(staging)
            _move_into_place(staging, path)

    def load_checkpoint(
        self,
        path: str | Path,
        state: dict[str, Any] | nn.Module | Optimizer | None = None,
        strict: bool = True,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        """Restore the engine (and its optimizer, when ``state`` holds it) and the user's other state from a folder.

        DeepSpeed's files are pickles that ``torch.load(weights_only=True)`` cannot read; with ``weights_only=True``
        rank 0 first checks every file against an allow-list of DeepSpeed's own types and refuses anything else.

        At another data-parallel world size than the one saved, a ZeRO (stage 1-3) checkpoint loaded with its
        optimizer is converted once by DeepSpeed's ``ds_to_universal`` into ``<path>/universal`` and loaded from
        there: weights, Adam moments and steps exactly; buffers and frozen parameters from the original files.
        Without the optimizer in ``state`` (or for a model set up without one) the whole weights load at any world
        size from any optimizer's checkpoint, and the optimizer keeps its state.
        """
        path = Path(self.broadcast(str(path)))
        source = str(path)
        if path.is_file():
            raise CheckpointError(
                f"fabric.load({source!r}) got a file, but DeepSpeedStrategy loads the checkpoint folders it saves. "
                f"Fix: pass the folder written by fabric.save, or load the file into a plain model without DeepSpeed."
            )
        folder = require_complete(path, asked=f"fabric.load({source!r})")
        if state is None or not isinstance(state, Mapping):
            what = "no state" if state is None else f"a {type(state).__name__}"
            raise ConfigurationError(
                f"fabric.load({source!r}) got a DeepSpeed checkpoint folder but {what} to load into: the engine "
                f"restores its shards in place. Fix: fabric.load(path, {{'model': model, 'optimizer': optimizer}}), "
                f"or make one file first: consolidate_deepspeed_checkpoint({source!r}, output)."
            )
        if weights_only:
            verdict = check_weights_only(folder) if self.is_global_zero else None
            verdict = self.broadcast(verdict)
            if verdict:
                raise CheckpointError(
                    f"fabric.load({source!r}) refused to unpickle {verdict} with weights_only=True. It may contain "
                    f"code that would run on load. Fix: if you made this checkpoint yourself and trust it, call "
                    f"fabric.load(path, state, weights_only=False)."
                )
        engine, module_key, optimizer_key = self._engine_in_state(state, asked=f"fabric.load({source!r}, state)")
        trained = id(engine) in self._trained
        saved, stage = self._decided_by_rank_zero(lambda: saved_layout(folder / TAG))
        now = engine.seq_dp_world_size
        elsewhere = saved != now and stage > 0  # ZeRO shards cut for another data-parallel world size
        if not trained or (optimizer_key is None and elsewhere):
            # Inference, or weights only at another world size: the whole weights, whatever the stage and world size.
            load_path, client = str(folder), load_whole_weights(engine, folder, TAG, strict=strict, trained=trained)
        elif elsewhere and engine.zero_optimization():
            # The optimizer state too: DeepSpeed reshards it from its universal checkpoint, made once by rank 0.
            def convert() -> None:
                check_reshardable(folder / TAG, asked=f"fabric.load({source!r})", saved=saved, now=now)
                universal_folder(folder, TAG)
                # One made earlier came with the folder, maybe from someone else: checked like the folder itself.
                if weights_only and (verdict := check_weights_only(folder / UNIVERSAL)):
                    raise CheckpointError(
                        f"fabric.load({source!r}) refused to unpickle {UNIVERSAL}/{verdict} with weights_only=True. "
                        f"It may contain code that would run on load. Fix: if you trust this checkpoint, call "
                        f"fabric.load(path, state, weights_only=False); else delete {str(folder / UNIVERSAL)!r}, "
                        f"and fabric.load makes it again from the checked files."
                    )

            self._decided_by_rank_zero(convert)
            with loading_universal(engine):
                load_path, client = engine.load_checkpoint(
                    str(folder / UNIVERSAL), tag=TAG, load_module_strict=strict,
                    load_optimizer_states=True, load_lr_scheduler_states=False,
                )
            if load_path is not None:
                restore_unsharded(engine, folder, TAG)
        else:
            load_path, client = engine.load_checkpoint(
                str(folder), tag=TAG, load_module_strict=strict,
                load_optimizer_states=optimizer_key is not None, load_lr_scheduler_states=False,
            )
        if load_path is None or client is None:
            raise CheckpointError(
                f"fabric.load({source!r}): DeepSpeed could not load the checkpoint (see its log above). "
                f"Fix: pass a folder written by fabric.save under DeepSpeedStrategy."
            )
        if CLIENT_KEY in client:
            contents = dict(client[CLIENT_KEY])
        else:  # written by DeepSpeed (or Lightning) directly: the user's state is at the top level
            contents = {k: v for k, v in client.items() if k not in ("optimizer", "lr_scheduler")}
        rest = {k: v for k, v in state.items() if k not in (module_key, optimizer_key)}
        remainder = restore_state(contents, rest, self, strict=strict, source=source)
        for key, value in rest.items():
            state[key] = value  # plain values were replaced in ``rest``
        return remainder

    def _decided_by_rank_zero(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 and hand every rank its result; when it raises, every rank raises its error
        (rank 0 the original, the others a CheckpointError with its text) instead of waiting in a collective."""
        result, failure = None, None
        if self.is_global_zero:
            try:
                result = fn()
            except Exception as raised:  # noqa: BLE001 - raised again below, once the other ranks are told
                failure = raised
        result, error = self.broadcast((result, None if failure is None else str(failure)))
        if failure is not None:
            raise failure
        if error is not None:
            raise CheckpointError(error)
        return result

    def _engine_in_state(self, state: Mapping[str, Any], *, asked: str) -> tuple[DeepSpeedEngine, str, str | None]:
        """The one engine in ``state``, its key, and the key of its optimizer (None when absent)."""
        from deepspeed import DeepSpeedEngine

        found: list[tuple[str, DeepSpeedEngine]] = []
        for key, obj in state.items():
            inner = obj._forward_module if isinstance(obj, FabricModule) else obj
            if isinstance(inner, DeepSpeedEngine):
                found.append((key, inner))
            elif isinstance(inner, nn.Module) and any(e.module is inner for e in self._engines):
                found.append((key, next(e for e in self._engines if e.module is inner)))
        if len(found) != 1:
            why = "holds no model set up by DeepSpeedStrategy" if not found else (
                f"holds {len(found)} DeepSpeed models ({', '.join(repr(k) for k, _ in found)}), and a checkpoint "
                f"folder stores one engine"
            )
            raise ConfigurationError(
                f"{asked}: the state {why}. Fix: pass the model returned by fabric.setup(model, optimizer), e.g. "
                f"{{'model': model, 'optimizer': optimizer, 'step': step}}, one model per checkpoint."
            )
        module_key, engine = found[0]
        optimizer_key = None
        for key, obj in state.items():
            inner = obj.optimizer if isinstance(obj, FabricOptimizer) else obj
            if engine.optimizer is not None and inner is engine.optimizer:
                optimizer_key = key
        return engine, module_key, optimizer_key

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


def _deepspeed_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("deepspeed") is not None
    except (ImportError, ValueError):  # a broken or blocked entry in sys.modules
        return False


def _enabled(section: Any) -> bool:
    return isinstance(section, Mapping) and section.get("enabled", False) in (True, "true", "auto")


def _load_config(config: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    if not isinstance(config, (str, Path)):
        raise ConfigurationError(
            f"DeepSpeedStrategy(config={type(config).__name__}) must be a dict or the path of a JSON file. "
            f"Fix: DeepSpeedStrategy(config='ds_config.json') or config={{'zero_optimization': {{'stage': 3}}}}."
        )
    path = Path(config)
    if not path.is_file():
        raise ConfigurationError(
            f"DeepSpeedStrategy(config={str(config)!r}) found no file there. Fix: check the path, or pass the config as a dict."
        )
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigurationError(
            f"DeepSpeedStrategy(config={str(config)!r}) is not valid JSON ({error}). Fix: correct the file."
        ) from None
    if not isinstance(loaded, dict):
        raise ConfigurationError(
            f"DeepSpeedStrategy(config={str(config)!r}) must hold a JSON object, not {type(loaded).__name__}. "
            f"Fix: write the config as {{\"zero_optimization\": {{\"stage\": 2}}, ...}}."
        )
    return loaded


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by DeepSpeed (complete or not); cheap, imports nothing.

    Lets ``fabric-run consolidate`` tell DeepSpeed folders from torch.distributed.checkpoint ones.
    """
    path = Path(path)
    return (path / TAG).is_dir() or (path / "latest").is_file()


def require_complete(path: str | Path, *, asked: str) -> Path:
    """Return ``path`` if it is a complete DeepSpeed checkpoint folder written by fabric_lite, else explain why not."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{asked} found no checkpoint folder at that path. Fix: check the path.")
    if (path / MARKER).is_file() and (path / TAG).is_dir():
        if any((path / TAG).glob("*model_states.pt")):
            return path
        raise CheckpointError(
            f"{asked} got a damaged DeepSpeed checkpoint: {str(path / TAG)!r} holds no model states file "
            f"(*model_states.pt), although the folder is marked complete. Fix: load another checkpoint, or save again."
        )
    if is_deepspeed_checkpoint(path):
        raise CheckpointError(
            f"{asked} got an incomplete DeepSpeed checkpoint: the folder has no {MARKER!r} marker, so the save that "
            f"wrote it did not finish. Fix: load an earlier checkpoint, or save again."
        )
    raise CheckpointError(
        f"{asked} got a folder that is not a DeepSpeed checkpoint of fabric_lite (no {MARKER!r} marker, no "
        f"{TAG!r} folder). Fix: pass a folder written by fabric.save under DeepSpeedStrategy."
    )


def _safe_deepspeed_globals() -> list[Any]:
    """DeepSpeed's own types that its checkpoint files hold besides tensors and containers."""
    from fabric_lite.checkpoint.io import safe_globals

    allowed = safe_globals()
    candidates = [
        ("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
        ("deepspeed.utils.tensor_fragment", ("fragment_address",)),
        ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
    ]
    import importlib

    for module_name, names in candidates:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        allowed += [getattr(module, n) for n in names if hasattr(module, n)]
    return allowed


def check_weights_only(folder: Path) -> str | None:
    """The first file of the checkpoint that ``torch.load(weights_only=True)`` refuses (with DeepSpeed's types
    allowed), with the reason; None when every file is safe to load."""
    import pickle

    allowed = _safe_deepspeed_globals()
    for file in sorted((folder / TAG).rglob("*.pt")):
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return f"{file.relative_to(folder)} ({first})"
    return None


def consolidate_deepspeed_checkpoint(folder: str | Path, output: str | Path, *, weights_only: bool = True) -> Path:
    """Merge a DeepSpeed checkpoint folder into one fp32 file, through DeepSpeed's own ``zero_to_fp32``.

    The file has the format of a single-file fabric_lite checkpoint: the model's full fp32 state dict
    under the key it was saved with (e.g. ``"model"``), the user's other saved values next to it. The
    optimizer state is not kept (it is sharded in DeepSpeed's layout). It loads with
    ``torch.load(output, weights_only=True)`` and with ``fabric.load`` under any strategy.
    Runs in one process without a process group; needs memory for the whole model.

    Args:
        folder: a folder written by ``fabric.save`` under DeepSpeedStrategy.
        output: the file to write (atomically).
        weights_only: refuse checkpoint files holding types other than DeepSpeed's own (see ``fabric.load``).

    Example:
        >>> consolidate_deepspeed_checkpoint("checkpoints/step-100", "step-100.ckpt")  # doctest: +SKIP
    """
    if not _deepspeed_available():
        raise missing_package("deepspeed", "deepspeed", "consolidate_deepspeed_checkpoint")
    asked = f"consolidate_deepspeed_checkpoint({str(folder)!r})"
    folder = require_complete(folder, asked=asked)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if weights_only and (verdict := check_weights_only(folder)):
        raise CheckpointError(
            f"{asked} refused to unpickle {verdict} with weights_only=True. Fix: if you trust this checkpoint, "
            f"pass weights_only=False."
        )
    model_states = _model_states_file(folder / TAG)
    states = torch.load(model_states, map_location="cpu", weights_only=False)
    client = dict(states.get(CLIENT_KEY, {}))
    meta = dict(client.pop(META_KEY, {}))
    keys = meta.pop("deepspeed", {})
    if any((folder / TAG).glob("*optim_states.pt")) and _is_zero_checkpoint(folder / TAG):
        weights = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=TAG)
    else:  # ZeRO off: rank 0's model file holds the whole module
        weights = {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    weights = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    output = Path(output)
    atomic_save({keys.get("module") or "model": weights, **client, META_KEY: meta}, output)
    return output


def _model_states_file(tag_folder: Path) -> Path:
    # Rank 0's file: the whole module's buffers and the client state (ZeRO-3 writes one per rank).
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (tag_folder / name).is_file():
            return tag_folder / name
    return min(tag_folder.glob("*model_states.pt"))  # require_complete made sure there is one


def _is_zero_checkpoint(tag_folder: Path) -> bool:
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, ZERO_STAGE

    first = min(tag_folder.glob("*optim_states.pt"))
    optim = torch.load(first, map_location="cpu", weights_only=False, mmap=True)
    return ZERO_STAGE in optim.get(OPTIMIZER_STATE_DICT, {})
