"""Plain state the Trainer keeps in checkpoints: hyperparameter values and RNG states ``torch.load(weights_only=True)`` reads."""

from __future__ import annotations

from typing import Any

from fabric_lite.utilities.rng_state import capture_rng, restore_rng


def is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def get_rng() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA once initialised) RNG states: :func:`~fabric_lite.utilities.rng_state.capture_rng`."""
    return capture_rng()


def set_rng(state: dict[str, Any] | None) -> None:
    """Put back what :func:`get_rng` recorded (nothing when ``state`` is empty, as in a checkpoint from before a fit)."""
    if state:
        restore_rng(state)
