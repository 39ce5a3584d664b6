"""Random state of a process and of a dataloader's generators, as plain values and tensors (``weights_only`` safe).

The one place that captures and restores random state: ``capture_rng`` / ``restore_rng`` for a process (Python,
NumPy, torch, CUDA) and, given a dataloader, the torch generators it and its samplers draw from. Used by the
exact dataloader resume (``utilities/resume.py``, ``utilities/worker_rng.py``) and by the Trainer's checkpoints.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

__all__ = ["capture_rng", "draw_base_seed", "loader_generators", "restore_rng"]


def loader_generators(dataloader: DataLoader) -> list[torch.Generator]:
    """The torch generators a loader draws from: its own (worker base seed), then those of its sampler chain."""
    found: list[torch.Generator] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if obj is None or depth > 4 or id(obj) in seen:
            return
        seen.add(id(obj))
        generator = getattr(obj, "generator", None)
        if isinstance(generator, torch.Generator) and id(generator) not in seen:
            seen.add(id(generator))
            found.append(generator)
        for name in ("sampler", "batch_sampler"):
            visit(getattr(obj, name, None), depth + 1)
        inner = getattr(obj, "dataset", None)  # DistributedSamplerWrapper keeps the user's sampler there
        visit(getattr(inner, "sampler", None), depth + 1)

    generator = getattr(dataloader, "generator", None)
    if isinstance(generator, torch.Generator):
        seen.add(id(generator))
        found.append(generator)
    visit(getattr(dataloader, "sampler", None), 0)
    visit(getattr(dataloader, "batch_sampler", None), 0)
    return found


def capture_rng(dataloader: DataLoader | None = None, *, cuda: bool = True) -> dict[str, Any]:
    """The process's random state as plain values and tensors (loadable with ``weights_only=True``).

    Example:
        >>> state = capture_rng()
        >>> a = torch.rand(1); restore_rng(state); torch.equal(a, torch.rand(1))
        True
    """
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
        state["numpy"] = [str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    except ImportError:
        pass
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    if dataloader is not None:
        state["generators"] = [g.get_state() for g in loader_generators(dataloader)]
    return state


def restore_rng(
    state: Mapping[str, Any] | None, dataloader: DataLoader | None = None, *, generators: bool = True
) -> None:
    """Put back what :func:`capture_rng` recorded (the loader's generators too when ``generators``).

    ``None`` or an empty mapping (a checkpoint saved without random state) changes nothing.
    """
    if not state:
        return
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        try:
            import numpy as np

            name, keys, pos, has_gauss, cached = state["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
        except ImportError:
            pass
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generators and dataloader is not None and "generators" in state:
        for generator, value in zip(loader_generators(dataloader), state["generators"]):
            generator.set_state(value)


def draw_base_seed(dataloader: DataLoader) -> None:
    """Advance the random state by the draw torch makes when a loader's iterator (and worker pool) is made."""
    # What torch's _BaseDataLoaderIter.__init__ draws (the workers' base seed).
    torch.empty((), dtype=torch.int64).random_(generator=dataloader.generator)
