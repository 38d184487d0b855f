"""The simple case of a search: a dict of parameter ranges instead of a function of an Optuna trial."""

from __future__ import annotations

import math
from typing import Any, Mapping

from sparkeras.errors import InputError

SPACE_HELP = ("a list of choices (categorical), a (low, high) pair of numbers (ints: integer range), "
              "(low, high, 'log') for a log scale, or an optuna.distributions object")


def distributions(space: Mapping[str, Any]) -> dict[str, Any]:
    """``space`` as Optuna distributions, checked: each entry is named in the error when it is wrong."""
    from optuna.distributions import (
        BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution)

    if not isinstance(space, Mapping) or not space:
        raise InputError(f"search_space must be a non-empty dict of parameter name -> range ({SPACE_HELP}); "
                         f"got {space!r}.")
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, BaseDistribution):
            out[name] = spec
        elif isinstance(spec, list):
            if not spec:
                raise InputError(f"search_space[{name!r}] is an empty list of choices; give at least one.")
            out[name] = CategoricalDistribution(spec)
        elif isinstance(spec, tuple) and len(spec) in (2, 3) and all(_number(v) for v in spec[:2]) \
                and (len(spec) == 2 or spec[2] == "log"):
            low, high = spec[0], spec[1]
            log = len(spec) == 3
            if not low < high or (log and low <= 0):
                raise InputError(f"search_space[{name!r}] = {spec!r} needs low < high"
                                 f"{' and low > 0 on a log scale' if log else ''}.")
            if isinstance(low, int) and isinstance(high, int):
                out[name] = IntDistribution(low, high, log=log)
            else:
                out[name] = FloatDistribution(float(low), float(high), log=log)
        else:
            raise InputError(f"search_space[{name!r}] = {spec!r} is not a range; use {SPACE_HELP}.")
    return out


def suggest(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """Draw one value per parameter of ``space`` (Optuna distributions) from ``trial``."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    params: dict[str, Any] = {}
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, d.choices)
        elif isinstance(d, IntDistribution):
            params[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        else:
            params[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    return params


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
