"""Hyperparameters shared by LightningModule and LightningDataModule: ``save_hyperparameters``, ``hparams`` and the
``load_from_checkpoint`` class method that rebuilds an object from them (Lightning 2.x names and arguments)."""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Mapping
from typing import Any

import torch

from fabric_lite.errors import CheckpointError, ConfigurationError


class AttributeDict(dict):
    """A dict whose keys read as attributes too: ``hparams.lr == hparams["lr"]``.

    Example:
        >>> AttributeDict(lr=0.1).lr
        0.1
    """

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as error:
            raise AttributeError(
                f"hparams has no {key!r}; it has: {', '.join(self) or 'nothing'}. "
                f"Fix: pass it to __init__ and call self.save_hyperparameters(), or read one of those."
            ) from error

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class restricted_classmethod(classmethod):
    """A classmethod that refuses a call on an instance (``model.load_from_checkpoint(path)`` returns a new object and
    leaves ``model`` as it was, a common slip; Lightning 2.x refuses it too)."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is not None:
            name = self.__func__.__name__

            def refused(*args: Any, **kwargs: Any) -> Any:  # reading the attribute stays fine (hasattr, TorchScript)
                raise TypeError(
                    f"{type(instance).__name__}.{name} was called on an instance, but it builds and returns a new object "
                    f"and leaves this one unchanged. Fix: call it on the class and use the result: "
                    f"model = {type(instance).__name__}.{name}(path)."
                )

            return refused
        return super().__get__(instance, owner)


class HyperparametersMixin:
    """``save_hyperparameters()``, ``hparams`` and ``hparams_initial`` (works without ``super().__init__()`` too)."""

    #: the checkpoint keys this class's hyperparameters are stored under (Lightning's names)
    _hparams_key = "hyper_parameters"
    _hparams_name_key = "hparams_name"

    @property
    def hparams(self) -> AttributeDict:
        if "_hparams" not in self.__dict__:
            self.__dict__["_hparams"] = AttributeDict()
        return self.__dict__["_hparams"]

    @property
    def hparams_initial(self) -> AttributeDict:
        """The hyperparameters as first saved (later changes to ``hparams`` do not show here)."""
        return copy.deepcopy(self.__dict__.get("_hparams_initial", AttributeDict()))

    def save_hyperparameters(self, *args: Any, ignore: list[str] | str | None = None, frame: Any = None, logger: bool = True) -> None:
        """Store the arguments of ``__init__`` in ``self.hparams`` (and log them at fit start).

        With no arguments every ``__init__`` argument is kept; pass names (``save_hyperparameters("lr")``)
        to keep some, a dict to give them explicitly, and ``ignore=[...]`` to leave some out.
        """
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        if len(args) == 1 and isinstance(args[0], Mapping):
            values = dict(args[0])
        else:
            caller = frame if frame is not None else inspect.currentframe().f_back  # type: ignore[union-attr]
            init_args = _init_arguments(caller)
            if args:
                unknown = [name for name in args if name not in init_args]
                if unknown:
                    raise ConfigurationError(
                        f"save_hyperparameters({', '.join(map(repr, args))}): {', '.join(map(repr, unknown))} is not an "
                        f"argument of __init__. Fix: name one of: {', '.join(init_args) or '(none)'}."
                    )
                values = {name: init_args[name] for name in args}
            else:
                values = init_args
        values = {k: v for k, v in values.items() if k not in ignored}
        self.hparams.update(values)
        self.__dict__["_hparams_initial"] = copy.deepcopy(AttributeDict(self.hparams))
        self.__dict__["log_hyperparams_at_fit"] = logger

    @classmethod
    def _from_checkpoint(cls, what: str, checkpoint_path: Any, map_location: Any, hparams_file: Any, weights_only: bool | None,
                         overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The object rebuilt from the checkpoint's hyperparameters (and ``overrides``), and the checkpoint."""
        from fabric_lite.checkpoint import load_checkpoint_file

        asked = f"{cls.__name__}.load_from_checkpoint({os.fspath(checkpoint_path)!r})" if isinstance(
            checkpoint_path, (str, os.PathLike)) else f"{cls.__name__}.load_from_checkpoint(...)"
        if isinstance(checkpoint_path, (str, os.PathLike)) and "://" not in os.fspath(checkpoint_path) \
                and not os.path.exists(checkpoint_path):
            raise CheckpointError(
                f"{asked}: no such file. Fix: pass the path of a checkpoint written by trainer.save_checkpoint or "
                f"ModelCheckpoint (trainer.checkpoint_callback.best_model_path names the best one)."
            )
        location = map_location if map_location is not None else "cpu"
        if isinstance(checkpoint_path, (str, os.PathLike)):
            checkpoint = load_checkpoint_file(checkpoint_path, weights_only=weights_only is not False, map_location=location)
        else:  # a file object, as Lightning accepts
            checkpoint = torch.load(checkpoint_path, map_location=location, weights_only=weights_only is not False)
        if not isinstance(checkpoint, Mapping):
            raise CheckpointError(f"{asked}: the file holds a {type(checkpoint).__name__}, not a checkpoint dict. "
                                  f"Fix: pass a file written by trainer.save_checkpoint or ModelCheckpoint.")
        saved = checkpoint.get(cls._hparams_key)
        hparams: dict[str, Any] = dict(saved) if isinstance(saved, Mapping) else {}
        name = checkpoint.get(cls._hparams_name_key)
        if name and name != "kwargs" and saved is not None:
            hparams = {name: saved}  # save_hyperparameters(namespace_or_dict) under one __init__ argument
        if hparams_file is not None:
            hparams.update(_read_hparams_file(asked, hparams_file))
        hparams.update(overrides)
        parameters = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        accepted = {n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not takes_any:
            hparams = {k: v for k, v in hparams.items() if k in accepted}
        required = [n for n, p in parameters.items() if n != "self" and p.default is inspect.Parameter.empty
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        missing = [n for n in required if n not in hparams]
        if missing:
            where = (f"the checkpoint's {cls._hparams_key!r} do not hold them (it holds: {', '.join(saved) or 'nothing'}; "
                     f"only plain values - numbers, strings, lists, dicts - are saved)" if saved is not None else
                     f"the checkpoint has no {cls._hparams_key!r} ({what} did not call self.save_hyperparameters() in __init__)")
            raise ConfigurationError(
                f"{asked} cannot rebuild {cls.__name__}: __init__ needs {', '.join(map(repr, missing))}, and {where}. "
                f"Fix: pass them, e.g. {cls.__name__}.load_from_checkpoint(path, {missing[0]}=...), or call "
                f"self.save_hyperparameters() in {cls.__name__}.__init__ before saving."
            )
        return cls(**hparams), dict(checkpoint)


def _read_hparams_file(asked: str, hparams_file: Any) -> dict[str, Any]:
    path = os.fspath(hparams_file)
    if not os.path.isfile(path):
        raise ConfigurationError(f"{asked}, hparams_file={path!r}: no such file. Fix: pass the hparams.yaml a logger wrote, or leave it out.")
    if not path.endswith((".yaml", ".yml", ".csv")):
        raise ConfigurationError(f"{asked}, hparams_file={path!r}: not a .yaml or .csv file. Fix: pass the hparams.yaml a logger wrote.")
    if path.endswith(".csv"):
        import csv

        with open(path, newline="") as handle:
            return {row["key"]: row["value"] for row in csv.DictReader(handle)}
    import yaml

    with open(path) as handle:
        loaded = yaml.safe_load(handle) or {}
    if not isinstance(loaded, Mapping):
        raise ConfigurationError(f"{asked}, hparams_file={path!r} holds a {type(loaded).__name__}, not a mapping of names to "
                                 f"values. Fix: pass a YAML file of 'name: value' lines (the hparams.yaml a logger wrote).")
    return dict(loaded)


def _init_arguments(frame: Any) -> dict[str, Any]:
    """The arguments of the ``__init__`` whose frame is ``frame`` (and of the subclass ``__init__`` calls above it)."""
    collected: dict[str, Any] = {}
    while frame is not None and frame.f_code.co_name == "__init__":
        info = inspect.getargvalues(frame)
        local = info.locals
        values = {name: local[name] for name in info.args[1:] if name in local}
        if info.keywords and isinstance(local.get(info.keywords), dict):
            values.update(local[info.keywords])
        for name, value in values.items():
            collected.setdefault(name, value)
        if "self" not in local or frame.f_back is None or frame.f_back.f_locals.get("self") is not local["self"]:
            break
        frame = frame.f_back
    return collected
