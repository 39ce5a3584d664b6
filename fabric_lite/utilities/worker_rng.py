"""State of DataLoader worker processes: sent along with each batch, put back in the workers of a resumed epoch.

While a set-up loader with ``num_workers > 0`` makes its worker pool, its ``collate_fn`` and ``worker_init_fn``
are wrapped (see :func:`wrapped_for_pool`): each worker sends, with every batch, its Python / NumPy / torch random
state right after making that batch (and its copy's ``state_dict()`` for a stateful IterableDataset);
``LoaderProgress`` keeps the last two per worker. On resume the init function of each new worker puts back what
its namesake had before its next batch, after torch's seeding and the user's own ``worker_init_fn`` ran.
"""

from __future__ import annotations

import array
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


class Tagged:
    """A batch made in a worker, with the worker's id and its random state right after making it."""

    __slots__ = ("batch", "worker", "state", "dataset")

    def __init__(self, batch: Any, worker: int, state: dict[str, Any] | None, dataset: Any = None) -> None:
        self.batch, self.worker, self.state, self.dataset = batch, worker, state, dataset

    def pin_memory(self) -> Tagged:  # torch's pin-memory thread calls this on objects it does not know
        from torch.utils.data._utils.pin_memory import pin_memory

        return Tagged(pin_memory(self.batch), self.worker, self.state, self.dataset)


def stateful_stream(dataset: Any) -> bool:
    """Whether ``dataset`` is an IterableDataset that can say and restore where it is (torchdata's Stateful)."""
    return isinstance(dataset, IterableDataset) and all(
        callable(getattr(dataset, name, None)) for name in ("state_dict", "load_state_dict"))


def _compact_state() -> dict[str, Any]:
    """This process's random state as a few bytes objects: it crosses the worker queue inline (about 7.5 kB)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": (version, array.array("I", internal).tobytes(), gauss),
        "torch": torch.get_rng_state().numpy().tobytes(),
    }
    try:
        import numpy as np

        legacy = np.random.get_state(legacy=False)
        inner = legacy["state"]
        state["numpy"] = (inner["key"].tobytes(), int(inner["pos"]), int(legacy["has_gauss"]), float(legacy["gauss"]))
    except ImportError:
        pass
    return state


def portable_state(compact: dict[str, Any]) -> dict[str, Any]:
    """A worker's state as ``capture_rng`` writes it: plain values and tensors, loadable with ``weights_only=True``."""
    version, internal, gauss = compact["python"]
    state: dict[str, Any] = {
        "python": [version, array.array("I", internal).tolist(), gauss],
        "torch": torch.frombuffer(bytearray(compact["torch"]), dtype=torch.uint8),
    }
    if "numpy" in compact:
        import numpy as np

        keys, pos, has_gauss, cached = compact["numpy"]
        state["numpy"] = ["MT19937", torch.from_numpy(np.frombuffer(keys, dtype=np.uint32).astype(np.int64)), pos,
                          has_gauss, cached]
    return state


class CollateWithState:
    """``collate_fn`` of a worker pool: the user's collate, then the worker's random state attached (:class:`Tagged`).

    A state equal to the one the worker sent last travels as None (a dataset that draws nothing costs no transfer).
    """

    def __init__(self, collate_fn: Any) -> None:
        self.collate_fn = collate_fn
        self.last: dict[str, Any] | None = None

    def __call__(self, samples: Any) -> Any:
        batch = self.collate_fn(samples)
        info = get_worker_info()
        if info is None:
            return batch
        state = _compact_state()
        unchanged = state == self.last
        self.last = state
        dataset = info.dataset.state_dict() if stateful_stream(info.dataset) else None  # type: ignore[attr-defined]
        return Tagged(batch, info.id, None if unchanged else state, dataset)


class InitWithState:
    """``worker_init_fn`` of a worker pool: the user's (and fabric's seeding), then the saved state of this worker."""

    def __init__(self, init_fn: Any, states: list[Any] | None) -> None:
        self.init_fn = init_fn
        self.states = states

    def __call__(self, worker_id: int) -> None:
        if self.init_fn is not None:
            self.init_fn(worker_id)
        state = self.states[worker_id] if self.states is not None and worker_id < len(self.states) else None
        if state is None:
            return
        if "python" in state:
            from fabric_lite.utilities.rng_state import restore_rng

            restore_rng(state, generators=False)
        if state.get("dataset") is not None:
            get_worker_info().dataset.load_state_dict(state["dataset"])  # type: ignore[union-attr]


def tracks_workers(dataloader: DataLoader) -> bool:
    """Whether the worker states of ``dataloader`` are followed: worker processes that hand out batches in turn."""
    return dataloader.num_workers > 0 and getattr(dataloader, "in_order", True)


@contextmanager
def wrapped_for_pool(dataloader: DataLoader, states: list[Any] | None) -> Iterator[None]:
    """While a worker pool is made: its workers tag batches with their state and start from ``states`` (by id).

    torch copies ``collate_fn`` and ``worker_init_fn`` into the iterator when it is made, so the user's DataLoader
    keeps its own functions for any other use.
    """
    collate_fn, init_fn = dataloader.collate_fn, dataloader.worker_init_fn
    dataloader.collate_fn = CollateWithState(collate_fn)
    dataloader.worker_init_fn = InitWithState(init_fn, states)
    try:
        yield
    finally:
        dataloader.collate_fn, dataloader.worker_init_fn = collate_fn, init_fn


class WorkerStates:
    """The last two states each worker of the pool in use sent, with the (epoch, batch index) they followed."""

    def __init__(self) -> None:
        # worker id -> [(epoch, batch index, random state or None: as seeded, dataset state or None)]
        self.history: dict[int, list[tuple[int, int, dict[str, Any] | None, Any]]] = {}

    def reset(self, epoch: int = 0, states: list[Any] | None = None) -> None:
        """A new pool: nothing sent yet; workers started from ``states`` count as having sent them before any batch."""
        self.history = {o: [(epoch, -1, s, s.get("dataset"))] for o, s in enumerate(states or []) if s is not None}

    def record(self, epoch: int, index: int, tagged: Tagged) -> None:
        entries = self.history.setdefault(tagged.worker, [])
        state = tagged.state
        if state is None:  # unchanged since the worker's previous batch
            state = entries[-1][2] if entries else None
        entries.append((epoch, index, state, tagged.dataset))
        del entries[:-2]

    def before(self, epoch: int, cut: int | None, num_workers: int) -> list[Any]:
        """Each worker's state after its last batch before index ``cut`` of ``epoch`` (None: its latest), or None."""
        found: list[Any] = []
        for worker in range(num_workers):
            state = None
            for entry_epoch, index, value, dataset in reversed(self.history.get(worker, [])):
                if cut is None or entry_epoch < epoch or index < cut:
                    if value is None:
                        state = {}
                    elif isinstance(value.get("torch"), torch.Tensor):  # as restored: already portable
                        state = {key: item for key, item in value.items() if key != "dataset"}
                    else:
                        state = portable_state(value)
                    if dataset is not None:
                        state["dataset"] = dataset
                    state = state or None
                    break
            found.append(state)
        return found
