"""The Trainer's loops: small modules (setup, hooks, fit, optimization, evaluation, launch) over one :class:`LoopState`.

Each module holds functions of ``(trainer, ...)``; the Trainer facade, the tuner and the LightningModule call
them. Only code in this package reaches into the Trainer's own attributes.
"""
