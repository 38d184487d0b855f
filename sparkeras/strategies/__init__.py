"""Training strategies: how workers cooperate to train one model."""

from __future__ import annotations

from typing import Any

from sparkeras.errors import InputError
from sparkeras.strategies.allreduce import AllReduce
from sparkeras.strategies.averaging import ModelAveraging, average_states
from sparkeras.strategies.base import Strategy
from sparkeras.strategies.distributed import (
    ADAG, AEASGD, DISTRIBUTED_OPTIMIZERS, EAMSGD, EASGD, Asynchronous, DistributedOptimizer, Downpour, DynSGD,
    Hogwild)

STRATEGIES: dict[str, type[Strategy]] = {
    ModelAveraging.name: ModelAveraging, AllReduce.name: AllReduce, **DISTRIBUTED_OPTIMIZERS}


def get_strategy(strategy: str | Strategy, **options: Any) -> Strategy:
    """A strategy object from its name (with options) or the object itself."""
    if isinstance(strategy, Strategy):
        if options:
            raise InputError(f"Options {sorted(options)} were given with a strategy object; set them on the object.")
        return strategy
    cls = STRATEGIES.get(str(strategy).lower())
    if cls is None:
        raise InputError(f"Unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)} or pass a Strategy object.")
    try:
        return cls(**options)
    except TypeError as exc:
        raise InputError(f"Bad options for strategy {strategy!r}: {exc}") from None


__all__ = ["ADAG", "AEASGD", "EAMSGD", "EASGD", "STRATEGIES", "AllReduce", "Asynchronous", "DistributedOptimizer",
           "Downpour", "DynSGD", "Hogwild", "ModelAveraging", "Strategy", "average_states", "get_strategy"]
