"""CombinedLoader: several iterables (a list, tuple or dict of dataloaders) drawn from together, in Lightning's modes.

Same name, arguments and iteration as ``lightning.pytorch.utilities.combined_loader.CombinedLoader``
(importable from ``fabric_lite.trainer.utilities.combined_loader`` too). Iterating it yields
``(batch, batch_idx, dataloader_idx)``; ``batch`` has the shape of the collection given (a list of the
loaders' batches for a list, a dict for a dict), except in ``"sequential"`` mode, where each batch is
one loader's own. The Trainer uses it for a list or dict of training loaders (``"max_size_cycle"``) and
of evaluation loaders (``"sequential"``).

Modes:
    * ``min_size``: stop when the shortest iterable is exhausted.
    * ``max_size_cycle``: stop when the longest is exhausted, restarting the shorter ones.
    * ``max_size``: stop when the longest is exhausted; an exhausted iterable contributes None.
    * ``sequential``: each iterable in turn, to its end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fabric_lite.errors import ConfigurationError

MODES = ("min_size", "max_size_cycle", "max_size", "sequential")
_END = object()


def _length(iterable: Any) -> int | float:
    try:
        return len(iterable)
    except (TypeError, NotImplementedError):
        return float("inf")


def _flatten(tree: Any) -> tuple[list[Any], Any]:
    """The leaves (iterables) of a list / tuple / dict collection and a spec to rebuild its shape."""
    if isinstance(tree, Mapping):
        leaves: list[Any] = []
        children = []
        for key, value in tree.items():
            sub, spec = _flatten(value)
            leaves.extend(sub)
            children.append((key, spec, len(sub)))
        return leaves, ("dict", type(tree), children)
    if isinstance(tree, (list, tuple)):
        leaves = []
        children = []
        for value in tree:
            sub, spec = _flatten(value)
            leaves.extend(sub)
            children.append((None, spec, len(sub)))
        return leaves, ("seq", type(tree), children)
    return [tree], ("leaf", None, [])


def _unflatten(leaves: list[Any], spec: Any) -> Any:
    kind, container, children = spec
    if kind == "leaf":
        return leaves[0]
    parts = []
    start = 0
    for key, child, count in children:
        parts.append((key, _unflatten(leaves[start:start + count], child)))
        start += count
    if kind == "dict":
        values = {key: value for key, value in parts}
        return values if container is dict else container(values)
    values = [value for _, value in parts]
    return values if container is list else container(values)


class CombinedLoader(Iterable):
    """Draw from several iterables at once (or one after another), as Lightning's ``CombinedLoader``.

    Args:
        iterables: one iterable, or a list / tuple / dict of them (nested collections too).
        mode: ``"min_size"`` (default, as in Lightning), ``"max_size_cycle"``, ``"max_size"`` or ``"sequential"``.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> combined = CombinedLoader({"a": DataLoader(range(6), batch_size=4), "b": DataLoader(range(15), batch_size=5)},
        ...                           "max_size_cycle")
        >>> len(combined)
        3
        >>> [(batch["a"].tolist(), batch["b"].tolist()) for batch, _, _ in combined][2]
        ([0, 1, 2, 3], [10, 11, 12, 13, 14])
    """

    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in MODES:
            raise ConfigurationError(
                f"CombinedLoader(mode={mode!r}) is not a known mode. Choose one of: {', '.join(MODES)}."
            )
        self._iterables = iterables
        self._flattened, self._spec = _flatten(iterables)
        self._mode = mode
        self._limits: list[int | float] | None = None
        self._iterator: Iterator[tuple[Any, int, int]] | None = None

    # ------------------------------------------------------------------------------ Lightning's attributes
    @property
    def mode(self) -> str:
        return self._mode

    @property
    def iterables(self) -> Any:
        """The collection as given (with the set-up loaders once a Trainer has set them up)."""
        return self._iterables

    @property
    def flattened(self) -> list[Any]:
        """The iterables as a flat list (in the collection's order)."""
        return self._flattened

    @flattened.setter
    def flattened(self, flattened: list[Any]) -> None:
        if len(flattened) != len(self._flattened):
            raise ConfigurationError(
                f"CombinedLoader.flattened = <{len(flattened)} iterables>, but it holds {len(self._flattened)}. "
                f"Fix: assign a list of the same length."
            )
        self._flattened = list(flattened)
        self._iterables = _unflatten(self._flattened, self._spec)

    @property
    def limits(self) -> list[int | float] | None:
        """The most batches drawn from each iterable (None: no limit)."""
        return self._limits

    @limits.setter
    def limits(self, limits: int | float | list[int | float] | None) -> None:
        if isinstance(limits, (int, float)):
            limits = [limits] * len(self._flattened)
        elif limits is not None:
            limits = list(limits)
            if len(limits) != len(self._flattened):
                raise ConfigurationError(
                    f"CombinedLoader.limits got {len(limits)} values for {len(self._flattened)} iterables. "
                    f"Fix: one limit per iterable, or one number for all."
                )
        self._limits = limits

    @property
    def sampler(self) -> Any:
        return _unflatten([getattr(i, "sampler", None) for i in self._flattened], self._spec)

    @property
    def batch_sampler(self) -> Any:
        return _unflatten([getattr(i, "batch_sampler", None) for i in self._flattened], self._spec)

    # ------------------------------------------------------------------------------ length and iteration
    def _lengths(self) -> list[int | float]:
        lengths = [_length(i) for i in self._flattened]
        if self._limits is not None:
            lengths = [min(length, limit) for length, limit in zip(lengths, self._limits)]
        return lengths

    def __len__(self) -> int:
        """The number of batches one pass yields (per the mode, with the limits); TypeError if it is unknown."""
        total = self.length()
        if total == float("inf"):
            raise TypeError(
                "len(CombinedLoader) is unknown: one of its iterables has no length. "
                "Fix: use combined.length(), which answers inf there, or give every iterable a __len__."
            )
        return int(total)

    def length(self) -> int | float:
        """Like ``len`` but ``inf`` where an iterable has no length (Lightning's sized_len semantics)."""
        lengths = self._lengths()
        if not lengths:
            return 0
        if self._mode == "min_size":
            return min(lengths)
        if self._mode == "sequential":
            return sum(lengths)
        return max(lengths)

    def __iter__(self) -> CombinedLoader:
        self._iterator = self._sequential() if self._mode == "sequential" else self._together()
        return self

    def __next__(self) -> tuple[Any, int, int]:
        if self._iterator is None:
            iter(self)
        return next(self._iterator)  # type: ignore[arg-type]

    def reset(self) -> None:
        """Forget the running pass."""
        self._iterator = None

    def _together(self) -> Iterator[tuple[Any, int, int]]:
        iterables = self._flattened
        iterators = [iter(i) for i in iterables]
        total = self.length()  # the limits cap the number of batches, not the iterables (Lightning's rule)
        exhausted = [False] * len(iterators)
        batch_idx = 0
        while batch_idx < total and iterators:
            batch = []
            for index, iterator in enumerate(iterators):
                item = next(iterator, _END)
                if item is _END:
                    exhausted[index] = True
                    if self._mode == "min_size" or all(exhausted):
                        return
                    if self._mode == "max_size":
                        item = None
                    else:  # max_size_cycle: start this one again
                        iterators[index] = iter(iterables[index])
                        item = next(iterators[index], _END)
                        if item is _END:
                            return  # an empty iterable cannot be cycled
                batch.append(item)
            if self._mode == "max_size" and all(exhausted):
                return
            yield _unflatten(batch, self._spec), batch_idx, 0
            batch_idx += 1

    def _sequential(self) -> Iterator[tuple[Any, int, int]]:
        limits = self._limits or [float("inf")] * len(self._flattened)
        for dataloader_idx, (iterable, limit) in enumerate(zip(self._flattened, limits)):
            if limit <= 0:
                continue
            for batch_idx, batch in enumerate(iterable):
                yield batch, batch_idx, dataloader_idx
                if batch_idx + 1 >= limit:
                    break


def as_combined(loaders: Any, mode: str) -> CombinedLoader | None:
    """``loaders`` as a CombinedLoader: itself if it is one, a new one in ``mode`` for a list / tuple / dict, else None."""
    if isinstance(loaders, CombinedLoader):
        return loaders
    if isinstance(loaders, (list, tuple, Mapping)):
        return CombinedLoader(loaders, mode)
    return None


def batches(loader: Any) -> Iterator[Any]:
    """The batches of ``loader``: a CombinedLoader's without their (batch_idx, dataloader_idx), any other as it is."""
    if isinstance(loader, CombinedLoader):
        return (batch for batch, _, _ in loader)
    return iter(loader)
