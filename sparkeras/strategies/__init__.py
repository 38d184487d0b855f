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
    known = strategy_options(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(unknown_options(str(strategy), unknown, known))
    try:
        return cls(**options)
    except TypeError as exc:
        raise InputError(f"Bad options for strategy {strategy!r}: {exc}") from None


FIT_ARGUMENTS = frozenset({"epochs", "batch_size", "validation_split", "validation_data", "callbacks", "verbose",
                           "shuffle", "class_weight", "sample_weight", "initial_epoch", "validation_freq",
                           "features_col", "label_col", "weight_col", "checkpoint_dir"})


def strategy_options(cls: type[Strategy]) -> list[str]:
    """The keyword options a strategy class takes, in the order of its signature."""
    import inspect

    return [name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def unknown_options(strategy: str, unknown: list[str], known: list[str]) -> str:
    """The error for options a strategy does not take, with where the usual mix-ups belong.

    ``workers=4`` (the CLI's ``--workers``) and fit arguments given to
    ``SparkModel(...)`` land among the strategy's options, and Python's own
    message ("unexpected keyword argument") named neither the options there
    are nor where the value goes.
    """
    message = f"Strategy {strategy!r} has no option {', '.join(map(repr, unknown))}; its options are {known}."
    if {"workers", "num_workers", "n_workers"} & set(unknown):
        message += " The number of workers is SparkModel's num_workers (SparkModel(model, strategy, num_workers=4))."
    if FIT_ARGUMENTS & set(unknown):
        message += f" {sorted(FIT_ARGUMENTS & set(unknown))} are arguments of fit(), not of the strategy."
    return message


__all__ = ["ADAG", "AEASGD", "EAMSGD", "EASGD", "STRATEGIES", "AllReduce", "Asynchronous", "DistributedOptimizer",
           "Downpour", "DynSGD", "Hogwild", "ModelAveraging", "Strategy", "average_states", "get_strategy"]
