"""``--custom-objects``: the Python code behind a saved model's own layers, losses and metrics.

Why. A ``.keras`` file names its custom classes and functions but holds no
code: Keras finds them in its registry (``@keras.saving.register_keras_serializable``)
or in the ``custom_objects`` a Python caller passes, neither of which a
command line could reach. Without them ``sparkeras train`` failed with
Keras' message of some 5,000 characters. The flag takes a ``.py`` file (or
the name of an installed module): it is imported once on the driver under
its own module name, the name Keras saved, its top-level classes and
functions are passed as ``custom_objects``, and a file is shipped to the
executors with ``SparkContext.addPyFile``, where the workers import it by
that name, as any code a job ships.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from types import ModuleType
from typing import Any

from sparkeras.errors import InputError

FLAG = "--custom-objects"


def add_custom_objects_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(FLAG, action="append", default=[], metavar="FILE.py",
                   help="a Python file (or installed module) that defines the model's custom layers, losses or "
                        "metrics; imported before the model is loaded and shipped to the executors (repeat for "
                        "more)")


def check_custom_objects(values: list[str]) -> None:
    """Each value names a local ``.py`` file that exists, under a module name free to take, or an installed
    module; checked before Spark or TensorFlow starts."""
    for value in values:
        if not value.endswith(".py"):
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", value) or _find_spec(value) is None:
                raise InputError(f"{FLAG} {value}: no such module. Pass a Python file (layers.py) or the name "
                                 "of a module installed on the driver and the executors.")
            continue
        if not os.path.isfile(value):
            raise InputError(f"{FLAG} {value}: no such file.")
        name = module_name(value)
        if not name.isidentifier():
            raise InputError(f"{FLAG} {value}: {name!r} is not a Python module name, which Keras saves with the "
                             "model and the workers import; rename the file (my_layers.py).")
        other = getattr(_find_spec(name), "origin", None)  # what ``import name`` finds: a module of the same name
        if other is not None and os.path.realpath(other) != os.path.realpath(value):
            raise InputError(f"{FLAG} {value}: the module name {name!r} is taken by {other}; rename the file "
                             "(and save the model again, since Keras saved the module's name).")


def module_name(path: str) -> str:
    """A file's module name, as Keras saved its classes' ``module``: the file's name without ``.py``."""
    return os.path.splitext(os.path.basename(path))[0]


def _find_spec(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent package that is missing, or a module without a spec
        return None


def load_custom_objects(spark: Any, values: list[str]) -> dict[str, Any] | None:
    """Import each file or module, ship the files to the executors, and return their classes and functions."""
    found: dict[str, Any] = {}
    for value in values:
        if value.endswith(".py"):
            module = _import_file(value)
            spark.sparkContext.addPyFile(os.path.abspath(value))
        else:
            module = importlib.import_module(value)
        found.update({name: obj for name, obj in vars(module).items()
                      if not name.startswith("_") and callable(obj) and getattr(obj, "__module__", None) ==
                      module.__name__})
    return found or None


def _import_file(path: str) -> ModuleType:
    name = module_name(path)
    if name in sys.modules:  # imported before (a command run twice in one process)
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_UNKNOWN = re.compile(r"Could not locate (class|function) '([^']+)'")
_SAVED_MODULE = re.compile(r"Full object config: \{'module': '([\w.]+)'")


def load_model(spark: Any, args: argparse.Namespace, **kwargs: Any) -> Any:
    """``SparkModel.load(args.model)`` with the ``--custom-objects`` code; a class or function Keras cannot find
    is one line naming it and the flag."""
    from sparkeras import SparkModel

    custom = load_custom_objects(spark, args.custom_objects)
    try:
        return SparkModel.load(args.model, custom_objects=custom, **kwargs)
    except (TypeError, ValueError) as exc:
        unknown = _UNKNOWN.search(str(exc))
        if unknown is None:
            raise
        kind, name = unknown.groups()
        saved = _SAVED_MODULE.search(str(exc))
        module = saved.group(1) if saved and saved.group(1) not in ("builtins", "__main__") else None
        hint = f"{FLAG} {module.replace('.', '/')}.py" if module else f"{FLAG} FILE.py"
        given = f" (given: {', '.join(args.custom_objects)})" if args.custom_objects else ""
        raise InputError(f"--model {args.model} uses the {kind} {name!r}{f' of module {module!r}' if module else ''}, "
                         f"which is not part of Keras{given}. Pass the Python file that defines it: {hint}.") from None
