"""The ``fabric_lite`` logger's default set-up: INFO messages (``Seed set to 42``, model summaries, tuner findings,
profiler reports) show on stderr without the user configuring :mod:`logging`, as Lightning's logger does.

If the application already configured logging (the root logger has a handler) the messages go there
instead, so nothing prints twice. Only rank 0 logs (``rank_zero_info``).
"""

from __future__ import annotations

import logging

LOGGER_NAME = "fabric_lite"


def configure_logger(name: str = LOGGER_NAME) -> logging.Logger:
    """Give the ``fabric_lite`` logger (or ``name``) level INFO and, when the root logger has no handler, its own
    stderr handler.

    Idempotent: a second call adds nothing.

    Example:
        >>> configure_logger().level == logging.INFO
        True
    """
    logger = logging.getLogger(name)
    if getattr(logger, "_fabric_lite_configured", False):
        return logger
    logger._fabric_lite_configured = True  # type: ignore[attr-defined]
    if logger.level == logging.NOTSET:  # a level the user set stays
        logger.setLevel(logging.INFO)
    if not logging.getLogger().hasHandlers():
        logger.addHandler(logging.StreamHandler())
        logger.propagate = False  # the handler above prints it; the root logger would print it again
    return logger
