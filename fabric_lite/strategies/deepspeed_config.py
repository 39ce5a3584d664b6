"""DeepSpeed's options as one frozen value, and the engine config built from them (``deepspeed.initialize(config=...)``).

Plain data, separate from the strategy's behaviour: ``DeepSpeedStrategy(...)`` validates its keywords into a
``DeepSpeedConfig``; ``engine_config`` completes the user's config (or makes one) for a precision and batch size.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric_lite.errors import ConfigurationError, choices_error
from fabric_lite.precision.deepspeed import PRECISION_SECTIONS

ZERO_STAGES = (0, 1, 2, 3)
OFFLOAD_DEVICES = ("cpu", "nvme")


@dataclass(frozen=True)
class DeepSpeedConfig:
    """Every option of ``DeepSpeedStrategy`` except the process arguments (see its docstring for their meaning).

    Example:
        >>> DeepSpeedConfig(stage=3).zero_stage
        3
    """

    config: Mapping[str, Any] | None = None  # the user's config (a copy), None: made from the options below
    stage: int = 2
    offload_optimizer: bool = False
    offload_parameters: bool = False
    offload_optimizer_device: str = "cpu"
    offload_params_device: str = "cpu"
    nvme_path: str = "/local_nvme"
    pin_memory: bool = False
    zero_tuning: Mapping[str, Any] = field(default_factory=dict)
    gradient_clipping: float | None = None
    gradient_accumulation_steps: int | None = None
    zero_allow_untested_optimizer: bool = True
    loss_scaling: Mapping[str, Any] = field(default_factory=dict)
    exclude_frozen_parameters: bool = False
    logging_level: int = logging.WARNING

    def __post_init__(self) -> None:
        if self.stage not in ZERO_STAGES:
            raise choices_error(f"DeepSpeedStrategy(stage={self.stage!r})", "ZeRO stage", ZERO_STAGES)
        for argument, device in (("offload_optimizer_device", self.offload_optimizer_device),
                                 ("offload_params_device", self.offload_params_device)):
            if device not in OFFLOAD_DEVICES:
                raise choices_error(f"DeepSpeedStrategy({argument}={device!r})", "offload device", OFFLOAD_DEVICES)
        if self.offload_parameters and self.stage != 3 and self.config is None:
            raise ConfigurationError(
                f"DeepSpeedStrategy(stage={self.stage}, offload_parameters=True): only ZeRO stage 3 partitions "
                f"parameters, so only stage 3 can offload them. Fix: stage=3, or offload_optimizer=True alone."
            )
        steps = self.gradient_accumulation_steps
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ConfigurationError(
                f"DeepSpeedStrategy(gradient_accumulation_steps={steps!r}) must be a positive int. "
                f"Fix: gradient_accumulation_steps=4."
            )
        if self.gradient_clipping is not None and not self.gradient_clipping > 0:
            raise ConfigurationError(
                f"DeepSpeedStrategy(gradient_clipping={self.gradient_clipping!r}) must be a positive norm. "
                f"Fix: gradient_clipping=1.0, or leave it out to not clip."
            )
        given = self.config or {}
        for key, value in (("gradient_clipping", self.gradient_clipping),
                           ("gradient_accumulation_steps", self.gradient_accumulation_steps)):
            if value is not None and key in given and given[key] != value:
                raise ConfigurationError(
                    f"DeepSpeedStrategy({key}={value!r}, config={{{key!r}: {given[key]!r}, ...}}) sets {key} twice "
                    f"with different values. Fix: keep one of them."
                )

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage the engine runs (from the config when one was given)."""
        zero = self.config.get("zero_optimization") if self.config is not None else {"stage": self.stage}
        return int((zero or {}).get("stage", 0))

    def enabled_sections(self) -> list[str]:
        """The half-precision sections (``bf16``, ``fp16``) the user's config enables."""
        return [s for s in ("bf16", "fp16") if enabled((self.config or {}).get(s))]

    def check_precision(self, name: str, device_type: str) -> None:
        """fp16 needs CUDA; a config that enables a dtype must agree with the Fabric precision."""
        wanted = PRECISION_SECTIONS.get(name)
        sections = self.enabled_sections()
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

    def engine_config(self, precision: str, *, micro_batch_size: int | None = None, training: bool = True) -> dict[str, Any]:
        """The config handed to ``deepspeed.initialize``: the user's (or a made one), completed."""
        config = copy.deepcopy(dict(self.config)) if self.config is not None else {"zero_optimization": self.zero_section()}
        if self.gradient_accumulation_steps is not None:
            config.setdefault("gradient_accumulation_steps", self.gradient_accumulation_steps)
        if "train_batch_size" not in config:  # else DeepSpeed derives what is missing from it and the world size
            config.setdefault("train_micro_batch_size_per_gpu", micro_batch_size or 1)
            config.setdefault("gradient_accumulation_steps", 1)
        # Not clipping is said explicitly: DeepSpeed's own default (1.0 in DeepSpeed 0.19) would clip every step unasked, and
        # a Trainer/Fabric run would then silently differ from the same run under DDP. Lightning's Trainer does the same.
        config.setdefault("gradient_clipping", self.gradient_clipping if self.gradient_clipping is not None else 0.0)
        config.setdefault("zero_allow_untested_optimizer", self.zero_allow_untested_optimizer)
        section = PRECISION_SECTIONS.get(precision)
        if section == "bf16" and not enabled(config.get("bf16")):
            config["bf16"] = {"enabled": True}
        elif section == "fp16" and not enabled(config.get("fp16")):
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

    def zero_section(self) -> dict[str, Any]:
        """The ``zero_optimization`` section made from the options (when no config was given)."""
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


def enabled(section: Any) -> bool:
    """Whether a DeepSpeed config section (``{"enabled": ...}``) is switched on."""
    return isinstance(section, Mapping) and section.get("enabled", False) in (True, "true", "auto")


def load_config(config: dict[str, Any] | str | Path | None) -> dict[str, Any] | None:
    """The user's config as a dict (a copy), read from JSON when given a path; None when not given."""
    if config is None:
        return None
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
