"""Exact mid-epoch resume: the progress and random state of a dataloader returned by ``Fabric.setup_dataloaders``.

A loader's state (``loader.state_dict()``) holds, for one rank: the epochs started, the batches handed out in
the epoch in progress, the random state at the start of that epoch, the process's random state now (Python,
NumPy, torch, CUDA, the loader's and sampler's generators), each worker process's random state (Python, NumPy,
torch) before its next batch, and a stateful IterableDataset's own ``state_dict()`` (each worker's copy's).
``fabric.save`` gathers it from every rank into one entry (``checkpoint/orchestrate.py``) (``{"world_size": W, "ranks": [...]}``); on
``fabric.load`` each rank takes its own.

Guarantee: the next ``iter(loader)`` after ``fabric.load`` continues the epoch that was in progress when
``fabric.save`` ran, and the run is bit for bit the one that never stopped (same batches in the same order and
content, same draws of the training loop and of the workers), on every rank. It holds whether the save ran
inside the ``for batch in loader`` loop or after the loop was left (``break``, ``return`` from a function, an
exception: the iterator is then closed, the epoch stays in progress at the batches handed out). Left right
after the last batch of an epoch, the resumed iteration yields nothing and the next one starts the next epoch,
so a loop's own epoch counter (``for epoch in range(state["epoch"], E)``) stays in step. In the saving process
itself a new ``iter(loader)`` after leaving a loop starts a new epoch, as with a plain DataLoader.

How:

* The epoch's order is drawn again, not replayed: the random state at the start of the epoch is put back just
  for the draw (torch's DataLoader draws the worker base seed when the iterator is made, a shuffling sampler its
  permutation on its first index; DistributedSampler derives it from seed + epoch), and the state the checkpoint
  restored right after, so the training loop's own random stream is untouched.
* Batches already handed out are skipped at the index level: the sampler's first ``k * batch_size`` indices are
  dropped before any sample is read. With ``num_workers = n > 0`` workers take batches in turn from worker 0, so
  the resume starts at ``k - k % n`` and makes the ``k % n`` batches up to ``k`` again (dropped): each batch comes
  from the worker (id, seed, random state) that made it originally.
* Worker random state (``utilities/worker_rng.py``): each worker sends its state with every batch; the new
  workers of a resumed epoch (or of a persistent pool after an epoch end) start from the saved states, after
  torch's seeding and the user's ``worker_init_fn``.
* An IterableDataset has no indices to skip: if it has ``state_dict()`` / ``load_state_dict()`` (torchdata's
  Stateful protocol), its state is saved and put back, in the main process (``num_workers=0``) or in each
  worker's copy, before its next ``__iter__``. The dataset must continue there after ``load_state_dict`` (yielding
  nothing if that pass had ended) and start a new pass on any other ``__iter__``.

Limits: the same world size, batches per epoch and ``generator=`` arguments (a clear error otherwise). Random
draws inside workers are reproduced only with ``in_order=True`` (the default) and the same ``num_workers`` (not
checked for a map-style dataset: its batches are still exact); with ``persistent_workers=True``, not for a save in
the first ``num_workers`` batches of an epoch that follows one left early in the same process (prefetched batches
that were dropped advanced the workers). An IterableDataset resumes mid-epoch only if stateful, with the same
``num_workers`` and ``in_order=True`` (else a clear error).
Workers' CUDA generators are not saved. Up to ``num_workers - 1`` batches are read again on resume. A loop that
leaves every epoch early on purpose (a batch limit) and saves after leaving resumes inside the left epoch; put the
limit in the sampler (``RandomSampler(..., num_samples=limit * batch_size)``) so that epochs end by themselves.
Cost with workers: about 10 kB of random state per batch on the worker queue (none when a worker drew nothing).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset

from fabric_lite.errors import CheckpointError, ConfigurationError
from fabric_lite.utilities.rng_state import capture_rng, draw_base_seed, loader_generators, restore_rng
from fabric_lite.utilities.worker_rng import Tagged, WorkerStates, stateful_stream, tracks_workers, wrapped_for_pool

FORMAT = 1
#: Keys of the entry ``fabric.save`` writes for a loader: one state per rank (``checkpoint/orchestrate.py``).
RANKS_KEY = "ranks"
WORLD_KEY = "world_size"
_END = object()


# ----------------------------------------------------------------------------- skipping at the index level
class _ResumeAt:
    """Stands in for a sampler during the first draw of a resumed epoch, then steps aside.

    At the moment the loader first asks for indices (when the original epoch drew its order), it puts back
    the random state of that moment, lets the real sampler draw, drops the first ``skip`` indices, and
    restores the training loop's random state before any sample is read.
    """

    def __init__(self, inner: Any, skip: int, at_draw: dict[str, Any], now: dict[str, Any] | None, dataloader: DataLoader,
                 uninstall: Callable[[], None]) -> None:
        self.inner = inner
        self.skip = skip
        self.at_draw = at_draw
        self.now = now
        self.dataloader = dataloader
        self.uninstall = uninstall
        self.drawn = False

    def close(self) -> None:
        """Step aside without drawing (the loader never asked for an index): restore the loop's random state."""
        if not self.drawn:
            self.drawn = True
            self.uninstall()
            restore_rng(self.at_draw if self.now is None else self.now, generators=False)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __iter__(self) -> Iterator[Any]:
        self.drawn = True
        self.uninstall()
        restore_rng(self.at_draw, self.dataloader)
        iterator = itertools.islice(iter(self.inner), self.skip, None)
        first = next(iterator, _END)  # the sampler draws its order here
        if self.now is not None:  # None: the draw belongs to the loop's stream (a new epoch), as it did originally
            restore_rng(self.now, generators=False)
        if first is _END:
            return
        yield first
        yield from iterator


def _install(dataloader: DataLoader, skip_batches: int, at_draw: dict[str, Any], now: dict[str, Any] | None) -> _ResumeAt:
    """Put a :class:`_ResumeAt` where the loader reads its indices (until its first draw) and return it."""
    batch_sampler = dataloader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is BatchSampler:
        # The loader's own batching: drop whole batches' worth of indices from the sampler underneath.
        inner = batch_sampler.sampler

        def uninstall() -> None:
            batch_sampler.sampler = inner

        wrapper = _ResumeAt(inner, skip_batches * batch_sampler.batch_size, at_draw, now, dataloader, uninstall)
        batch_sampler.sampler = wrapper
        return wrapper
    # A custom batch sampler (skip whole batches) or no batching (one index per batch). DataLoader refuses
    # new samplers after construction; the swap lasts only until the first draw of this epoch.
    name = "batch_sampler" if batch_sampler is not None else "sampler"
    inner = getattr(dataloader, name)

    def uninstall_attribute() -> None:
        object.__setattr__(dataloader, name, inner)

    wrapper = _ResumeAt(inner, skip_batches, at_draw, now, dataloader, uninstall_attribute)
    object.__setattr__(dataloader, name, wrapper)
    return wrapper


# ----------------------------------------------------------------------------- progress of one loader
@dataclass
class _Pending:
    """A resume that the next ``iter(loader)`` carries out."""

    position: int
    epoch_start: dict[str, Any] | None  # None: a new epoch starts at the restored state
    pool_start: dict[str, Any] | None
    pool_fresh: bool
    worker_states: list[Any] | None = None  # per worker id: its random state before its next batch (None: seeded)


class LoaderProgress:
    """Counts epochs and batches of one dataloader and records what an exact resume needs.

    Used by ``FabricDataLoader``; ``iterate`` is its per-epoch iterator.
    """

    def __init__(self, *, rank: int = 0, world_size: int = 1) -> None:
        self.rank = rank
        self.world_size = world_size
        self.epochs_started = 0
        self.position = 0
        self.finished = True
        self.epoch_start: dict[str, Any] | None = None  # random state before the epoch's iterator was made
        self.pool_start: dict[str, Any] | None = None  # the same, for the epoch that made the worker pool in use
        self.pool_fresh = True
        self.workers = WorkerStates()
        self._pending: _Pending | None = None

    def next_epoch(self) -> int:
        """The epoch the next ``iterate`` runs (the interrupted one when resuming), for ``set_epoch``."""
        if self._pending is not None and self._pending.epoch_start is not None:
            return self.epochs_started - 1
        return self.epochs_started

    def iterate(self, dataloader: DataLoader) -> Iterator[Any]:
        pending, self._pending = self._pending, None
        resuming = pending is not None and pending.epoch_start is not None
        if not resuming:
            self.epochs_started += 1
        self.position = pending.position if pending is not None else 0
        self.finished = False
        wrapper: _ResumeAt | None = None
        exhausted = False
        drop = 0
        tracked = tracks_workers(dataloader)
        try:
            if pending is None:
                self._record_start(dataloader)
                if tracked:
                    with wrapped_for_pool(dataloader, None):
                        iterator = iter(dataloader)
                else:
                    iterator = iter(dataloader)
            else:
                if resuming and _known_length(dataloader) is not None and self.position >= _known_length(dataloader):
                    self._adopt(pending, capture_rng(dataloader, cuda=False))
                    if _persistent(dataloader) and getattr(dataloader, "_iterator", None) is None:
                        # The next epoch reuses the pool: same base seed, workers where they were.
                        self._pending = _Pending(0, None, self.pool_start, False, pending.worker_states)
                    exhausted = True
                    return  # the interrupted epoch had handed out every batch: nothing is left in it
                iterator, wrapper, drop = self._resume(dataloader, pending, tracked)
            for batch in iterator:
                if type(batch) is Tagged:
                    self.workers.record(self.epochs_started, self.position, batch)
                    batch = batch.batch
                self.position += 1
                if drop:  # made again only to bring its worker's random state to where it was
                    drop -= 1
                    continue
                yield batch
            exhausted = True
        finally:
            if wrapper is not None:
                wrapper.close()  # in case the loader never asked for an index
            # A loop left early (`break` or `return` close this generator; an exception) leaves the epoch in
            # progress at `position`: a checkpoint written now continues it. In this process the next
            # iter(loader) still starts a new epoch (``_pending`` is None), as with a plain DataLoader.
            self.finished = exhausted

    def _record_start(self, dataloader: DataLoader) -> None:
        persistent = _persistent(dataloader)
        # With persistent workers torch makes the pool (and draws the base seed) only on the first epoch.
        fresh = not persistent or getattr(dataloader, "_iterator", None) is None
        self.epoch_start = capture_rng(dataloader, cuda=False)
        if fresh:
            self.pool_start = self.epoch_start
            self.workers.reset()
        self.pool_fresh = fresh

    def _adopt(self, pending: _Pending, now: dict[str, Any]) -> None:
        self.epoch_start = pending.epoch_start if pending.epoch_start is not None else now
        self.pool_start = pending.pool_start if pending.pool_start is not None else self.epoch_start
        self.pool_fresh = pending.pool_fresh

    def _resume(self, dataloader: DataLoader, pending: _Pending, tracked: bool) -> tuple[Iterator[Any], _ResumeAt, int]:
        now = capture_rng(dataloader, cuda=False)  # what fabric.load restored: the training loop's state
        start = pending.epoch_start if pending.epoch_start is not None else now
        # The random state at the sampler's draw in the original epoch: the epoch start, advanced by the
        # base-seed draw when that epoch made its iterator.
        restore_rng(start, dataloader)
        if pending.pool_fresh:
            draw_base_seed(dataloader)
        at_draw = capture_rng(dataloader, cuda=False)
        # The iterator made now draws the same base seed (so the same worker seeds) as the original one.
        restore_rng(start if pending.pool_fresh else (pending.pool_start or start), dataloader)
        # Workers take batches in turn from worker 0 in a new pool: restart at the last multiple of num_workers
        # so that each batch is made by the worker (id, seed, random state) that made it originally, and make
        # the few batches between there and the position again (dropped, never handed out).
        skip = pending.position - pending.position % dataloader.num_workers if tracked else pending.position
        self.position = skip
        if tracked:
            self.workers.reset(self.epochs_started, pending.worker_states)
        # Mid-epoch the original draw happened before the checkpoint: afterwards the loop's state is put back.
        wrapper = _install(dataloader, skip, at_draw, now if pending.epoch_start is not None else None)
        try:
            if tracked:
                with wrapped_for_pool(dataloader, pending.worker_states):
                    iterator = iter(dataloader)
            else:
                iterator = iter(dataloader)
        except BaseException:
            wrapper.close()
            raise
        self._adopt(pending, now)
        return iterator, wrapper, pending.position - skip

    # ------------------------------------------------------------------------- state
    def state_dict(self, dataloader: DataLoader) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "epochs_started": self.epochs_started,
            "position": self.position,
            "finished": self.finished,
            "num_batches": _known_length(dataloader),
            "epoch_start": self.epoch_start,
            "pool_start": None if self.pool_start is self.epoch_start else self.pool_start,
            "pool_fresh": self.pool_fresh,
            "persistent": _persistent(dataloader),
            "rng": capture_rng(dataloader),
            "num_workers": dataloader.num_workers,
            "worker_states": self._worker_states(dataloader),
            "dataset": dataset_state(dataloader),
        }

    def _worker_states(self, dataloader: DataLoader) -> list[Any] | None:
        """Per worker: its state before its next batch (of the batch a resume restarts at, or of the next epoch)."""
        if not tracks_workers(dataloader) or self.epochs_started == 0:
            return None
        length = _known_length(dataloader)
        mid_epoch = not self.finished and (length is None or self.position < length)
        cut = self.position - self.position % dataloader.num_workers if mid_epoch else None
        return self.workers.before(self.epochs_started, cut, dataloader.num_workers)

    def load_state_dict(self, state: Mapping[str, Any], dataloader: DataLoader) -> None:
        state = self._own(state)
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            raise CheckpointError(
                f"loader.load_state_dict got {type(state).__name__} that is not a dataloader state of fabric_lite "
                f"(format {FORMAT}). Fix: pass the entry that fabric.save wrote for a loader from setup_dataloaders."
            )
        length = _known_length(dataloader)
        if state["num_batches"] is not None and length is not None and state["num_batches"] != length:
            raise CheckpointError(
                f"The checkpoint's dataloader had {state['num_batches']} batches per epoch on rank {self.rank}, this one "
                f"has {length}, so its position cannot be continued. Fix: build the dataset, batch_size, drop_last and "
                f"world size as in the run that saved it, or leave the loader out of the state you load."
            )
        in_progress = not state["finished"] and state["epochs_started"] > 0
        dataset = dataloader.dataset
        if in_progress and state["position"] > 0 and isinstance(dataset, IterableDataset):
            if not _stream_resumable(state, dataloader):
                raise ConfigurationError(
                    f"The checkpoint stopped an IterableDataset loader after {state['position']} batches; it can "
                    f"continue there only if the dataset has state_dict() and load_state_dict() (its position; with "
                    f"workers, each worker's copy has its own) and the loader keeps the num_workers of the run that "
                    f"saved ({state.get('num_workers')}) and in_order=True; here: {type(dataset).__name__}, "
                    f"num_workers={dataloader.num_workers}. Fix: add the two methods and keep num_workers, save at the "
                    f"end of an epoch, or use a map-style Dataset."
                )
        rng = state["rng"]
        if len(rng.get("generators", [])) != len(loader_generators(dataloader)):
            raise CheckpointError(
                f"The checkpoint's dataloader drew from {len(rng.get('generators', []))} torch.Generator(s) (its own and "
                f"its sampler's), this one from {len(loader_generators(dataloader))}. Fix: build the loader as in the run "
                f"that saved it (the same generator= arguments)."
            )
        restore_rng(rng, dataloader)
        if in_progress and state["position"] > 0 and state.get("dataset") is not None:
            dataset.load_state_dict(state["dataset"])  # type: ignore[attr-defined]  # its next iter continues
        self.epochs_started = int(state["epochs_started"])
        self.position = int(state["position"])
        self.finished = bool(state["finished"])
        epoch_start = state["epoch_start"]
        pool_start = state["pool_start"] if state["pool_start"] is not None else epoch_start
        workers = state.get("worker_states")
        if in_progress:
            self._pending = _Pending(self.position, epoch_start, pool_start, bool(state["pool_fresh"]), workers)
        elif state["persistent"] and pool_start is not None and _persistent(dataloader):
            # A new epoch, but the original run kept its worker pool: make the pool with the same base seed, and
            # its workers with the random states they had.
            self._pending = _Pending(0, None, pool_start, False, workers)
        else:
            self._pending = None

    def _own(self, state: Any) -> Any:
        """This rank's entry of a gathered state (a bare one-rank state passes through)."""
        if not isinstance(state, Mapping) or RANKS_KEY not in state:
            return state
        saved_world = int(state.get(WORLD_KEY, len(state[RANKS_KEY])))
        if saved_world != self.world_size:
            raise CheckpointError(
                f"The checkpoint holds dataloader states of {saved_world} process(es), but this run has "
                f"{self.world_size}: an exact resume continues each rank's own share of the data. Fix: resume with "
                f"{saved_world} process(es), or leave the dataloader out of the state you load to start a new epoch."
            )
        return state[RANKS_KEY][self.rank]


def _persistent(dataloader: DataLoader) -> bool:
    return dataloader.num_workers > 0 and bool(dataloader.persistent_workers)


def dataset_state(dataloader: DataLoader) -> Any:
    """A stateful IterableDataset's ``state_dict()`` where it is the loader's position: without worker processes."""
    if dataloader.num_workers > 0 or not stateful_stream(dataloader.dataset):
        return None
    return dataloader.dataset.state_dict()  # type: ignore[attr-defined]


def _stream_resumable(state: Mapping[str, Any], dataloader: DataLoader) -> bool:
    """Whether a checkpoint stopped in the middle of an IterableDataset can continue with ``dataloader``."""
    if not stateful_stream(dataloader.dataset) or state.get("num_workers") != dataloader.num_workers:
        return False
    if dataloader.num_workers == 0:
        return state.get("dataset") is not None
    return tracks_workers(dataloader) and state.get("worker_states") is not None


def _known_length(dataloader: DataLoader) -> int | None:
    try:
        return len(dataloader)
    except TypeError:
        return None
