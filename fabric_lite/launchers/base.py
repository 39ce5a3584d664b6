"""The Launcher interface: make the processes, then run the user's function in each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from fabric_lite.fabric import Fabric


class Launcher(Protocol):
    """Starts the processes of a run and calls ``function(fabric, *args, **kwargs)`` in each."""

    #: Whether the launcher can run from a notebook / interactive interpreter.
    is_interactive_compatible: bool

    def launch(self, function: Callable[..., Any] | None, *args: Any, fabric: Fabric, **kwargs: Any) -> Any:
        """Make the processes and run ``function`` (``None``: continue the calling script in every process)."""
        ...
