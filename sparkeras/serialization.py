"""Moving models and arrays between the driver and Python workers.

Arrays travel as raw bytes behind a small JSON header, never as pickles, so the
same codec is safe on any channel, including sockets that face the network.
A model travels as its Keras config (architecture plus compile settings, pure
JSON) and its weights; the optimizer state travels with the weights so that
training resumes exactly where the previous window stopped.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import struct
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

_HEADER = struct.Struct("<I")
_ALLOWED_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64", "bfloat16"]
)


ALIGN = 16  # each array's bytes start at a multiple of this from the blob's start (format 2)


def pack_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    """Encode arrays as one JSON header (dtypes, shapes) followed by their raw bytes, each aligned."""
    return b"".join(packed_parts(arrays))


def packed_parts(arrays: Sequence[np.ndarray]) -> list[Any]:
    """:func:`pack_arrays`' bytes as buffers to send or join: its header, then a view of each array's bytes.

    No array is copied (unless it is not C-contiguous), so a frame can
    send a model's state straight from its arrays; the arrays must not
    change until it is sent.

    Why aligned. The header is padded, and each array, so that every
    array starts at a multiple of :data:`ALIGN` bytes and the blob's
    length is one too: decoded from a buffer that starts aligned (any
    ``bytes``, a received payload, or a slice at another blob's end),
    every array is aligned for its dtype. NumPy runs unaligned arrays
    through slow per-element loops: adding two unaligned 64 MB float32
    arrays took 100 ms against 16 ms, and copying one 65 ms against 15 ms;
    the driver averages every worker's commit each round.
    """
    arrays = [np.asarray(a, order="C") for a in arrays]  # ascontiguousarray would make 0-d arrays 1-d
    header = json.dumps({"align": ALIGN, "arrays": [[a.dtype.name, list(a.shape)] for a in arrays]}).encode()
    header += b" " * (-(_HEADER.size + len(header)) % ALIGN)  # JSON ignores trailing spaces
    parts: list[Any] = [_HEADER.pack(len(header)) + header]
    for a in arrays:
        parts.append(a.reshape(-1).view(np.uint8))
        if a.nbytes % ALIGN:
            parts.append(bytes(-a.nbytes % ALIGN))
    return parts


def unpack_arrays(blob: bytes | bytearray | memoryview) -> list[np.ndarray]:
    """Decode what :func:`pack_arrays` wrote (or its unaligned first format); refuse anything malformed.

    The arrays are views of ``blob``: writable where it is (a ``bytearray``).
    """
    view = memoryview(blob)
    if len(view) < _HEADER.size:
        raise ValueError("array blob is shorter than its header")
    (header_len,) = _HEADER.unpack_from(view)
    offset = _HEADER.size + header_len
    if offset > len(view):
        raise ValueError("array blob header overruns the blob")
    specs = json.loads(bytes(view[_HEADER.size:offset]))
    align = 1  # the first format: a list of specs, arrays back to back
    if isinstance(specs, dict):
        align, specs = specs.get("align"), specs.get("arrays")
        if not isinstance(align, int) or not 1 <= align <= 4096 or not isinstance(specs, list):
            raise ValueError("array blob header is malformed")
    out = []
    for dtype_name, shape in specs:
        if dtype_name not in _ALLOWED_DTYPES:
            raise ValueError(f"array blob has unsupported dtype {dtype_name!r}")
        dtype = np.dtype(_ml_dtype(dtype_name))
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        if offset % align:
            raise ValueError("array blob is misaligned")
        if offset + nbytes > len(view):
            raise ValueError("array blob is truncated")
        out.append(np.frombuffer(view[offset:offset + nbytes], dtype=dtype).reshape(tuple(shape)))
        offset += nbytes + (-nbytes % align)
    if offset != len(view):
        raise ValueError("array blob is truncated" if offset > len(view) else "array blob has trailing bytes")
    return out


def _ml_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return name


@contextlib.contextmanager
def tensorflow_left_unimported() -> Iterator[None]:
    """While open, Keras' serialization does not import TensorFlow to ask whether a value is one of its types.

    Keras 3 (through at least 3.15) checks every value it serializes
    against ``tf.TensorShape``, ``tf.DType`` and ``tf.TypeSpec`` through a
    lazy module that imports TensorFlow when it is installed, whatever the
    backend. So on JAX or PyTorch the driver's first fit imported all of
    TensorFlow (several seconds before any task started, and its start-up
    lines on the user's terminal), as did saving the model. A process that
    has not imported TensorFlow holds none of its objects, so the checks
    can only say no: Keras is told TensorFlow is unavailable until the
    block ends. With TensorFlow imported (its backend, or the user's own
    import) nothing changes.
    """
    lazy = None
    if "tensorflow" not in sys.modules:
        try:
            from keras.src.utils import module_utils

            lazy = module_utils.tensorflow
        except (ImportError, AttributeError):  # another Keras layout: it serializes as it does
            lazy = None
    if lazy is None or getattr(lazy, "_available", None) is not None:
        yield
        return
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to rebuild the user's compiled model.

    ``config`` is the JSON produced by ``keras.saving.serialize_keras_object``
    (it includes ``compile_config``); ``key`` identifies the config exactly.
    ``architecture`` identifies it up to its layers' names, so a Python
    worker builds a model to train once, and traces its steps once, for
    every window, epoch and fit of the same architecture, a model built
    again included (:func:`_without_layer_names`). Training sets every
    variable from the driver's state, so one model serves them all; models
    for prediction keep their weights between tasks and stay keyed by ``key``.
    """

    config: str
    key: str
    custom_objects: dict[str, Any] | None = None
    architecture: str = ""
    floatx: str = "float32"
    """The driver's ``keras.config.floatx()``, which a worker trains and scores under (:meth:`in_its_floatx`)."""

    @property
    def training_key(self) -> str:
        """What a worker keys the model it trains by: the architecture (the exact config if none was taken)."""
        return self.architecture or self.key

    @classmethod
    def from_model(cls, model: Any, custom_objects: dict[str, Any] | None = None) -> "ModelSpec":
        import keras

        with tensorflow_left_unimported():
            config = keras.saving.serialize_keras_object(model)
            _keep_compile_settings(model, config)
            shipped = {**_ship_lambdas(model, config), **_ship_functions(model, config),
                       **unregistered_classes(model, config)}
        _ship_vocabularies(model, config)
        return cls.of(config, {**shipped, **(custom_objects_for(config, custom_objects) or {})} or None,
                      keras.config.floatx())

    @classmethod
    def of(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None,
           floatx: str = "float32") -> "ModelSpec":
        """The spec of a serialized model ``config``, keyed by a digest of its JSON.

        The JSON keeps Keras' key order, and the key covers that order.
        Keras builds a dict-output model's per-output loss trackers in the
        order of its ``output_layers`` and ``loss`` dicts; a worker rebuilt
        from sorted keys ordered its metric variables apart from the
        driver's, which reads them by position, so ``history`` named one
        output's loss after another.
        """
        text = json.dumps(config)
        mark = "" if floatx == "float32" else f"|floatx={floatx}"  # a model's metrics take the floatx it was built in
        key = _digest(text + mark)
        # Objects shipped with the spec may be a notebook's class defined again with other code: no sharing.
        # The names are replaced in the JSON's own lists (Keras' config has tuples where JSON has lists).
        architecture = key if custom_objects else _digest(json.dumps(_without_layer_names(json.loads(text))) + mark)
        return cls(config=text, key=key, custom_objects=custom_objects, architecture=architecture, floatx=floatx)

    def in_its_floatx(self) -> None:
        """Executor side: make this spec's floatx Keras' own in this Python worker, before its model is used.

        Why. ``keras.config.set_floatx("float64")`` on the driver is a global
        of the driver's process alone. A worker rebuilt the layers in float64
        (their configs name it) but Keras' loss and metric trackers, the
        optimizer's learning rate and the data adapters' casts follow the
        process' floatx, float32 there: a float64 model's reported loss had
        float32's precision and its weights drifted from ``model.fit``'s by
        1e-8. A worker runs one task at a time, so setting it per task is safe.
        """
        import keras

        if keras.config.floatx() != self.floatx:
            keras.config.set_floatx(self.floatx)

    def with_optimizer(self, optimizer: Any) -> "ModelSpec":
        """The same model compiled with another optimizer (a distributed optimizer's local one)."""
        import keras

        config = json.loads(self.config)
        with tensorflow_left_unimported():
            config.setdefault("compile_config", {})["optimizer"] = keras.saving.serialize_keras_object(optimizer)
        return ModelSpec.of(config, self.custom_objects, self.floatx)

    def with_moving_statistics_for(self, workers: int) -> "ModelSpec":
        """The same model, its BatchNormalization layers' ``momentum`` raised to the power ``workers``.

        Why. A BatchNormalization layer keeps moving averages of its batch
        statistics, updated once per training step with ``momentum`` (0.99 by
        default). When ``workers`` workers each train 1/``workers`` of the
        batches and their statistics are then averaged (model averaging), or
        when every step takes a batch ``workers`` times larger (all-reduce),
        each moving average makes 1/``workers`` of the updates that one
        process makes over the same rows. The statistics then forget their
        starting point (mean 0, variance 1) and their old values that much
        more slowly, and the saved model normalizes with stale values: a
        CNN with BatchNormalization on 1,400 rows (15 epochs, batch 32, 2
        workers) kept a moving variance 3-5 times the true one and lost 1.3-1.7
        accuracy points to ``model.fit``. With ``momentum ** workers`` per step,
        the moving averages forget at the same rate per training row as in one
        process: over ``k`` steps the starting value keeps the weight
        ``momentum ** (workers * k)``, as it would after ``workers * k`` steps
        of ``model.fit``.

        Layers nested in models are found too. A model without
        BatchNormalization, or ``workers`` of 1, gives this spec back
        unchanged, so the workers' cached model is reused.
        """
        if workers <= 1 or '"BatchNormalization"' not in self.config:
            return self
        config = json.loads(self.config)
        for node in _config_dicts(config):
            inner = node.get("config")
            if node.get("class_name") == "BatchNormalization" and isinstance(inner, dict) \
                    and isinstance(inner.get("momentum"), (int, float)):
                inner["momentum"] = float(inner["momentum"]) ** workers
        return ModelSpec.of(config, self.custom_objects, self.floatx)

    def build(self) -> Any:
        """Rebuild the compiled model, its weights zeros: every caller sets them (:func:`_without_random_draws`).

        Classes registered with ``keras.saving.register_keras_serializable``
        are registered when their module is imported, which on an executor
        nobody has done yet; so the modules the config names for them are
        imported first (the user ships them with ``--py-files`` or
        ``addPyFile``, as for any code the job uses).
        """
        import keras

        config = json.loads(self.config)
        import_custom_modules(config, self.custom_objects)
        _without_random_draws(config)
        with rebuilding(config, self.custom_objects), _global_dtype_policy(config), _global_floatx(self.floatx):
            return keras.saving.deserialize_keras_object(config)


def _keep_compile_settings(model: Any, config: dict[str, Any]) -> None:
    """Put in the serialized compile settings what the live model trains with but they lost.

    Why. Keras 3's legacy ``.h5`` saving pops ``"optimizer"`` from the
    model's own compile config (``model.save("m.h5")`` by the user, before
    the model reaches sparkeras); rebuilt from that config, every worker
    compiled the model with Keras' default, RMSprop, and trained with it.
    And a model compiled again without ``loss=`` or ``metrics=`` (a new
    learning rate for fine-tuning: ``model.compile(Adam(1e-5))``) keeps its
    earlier loss and metrics in Keras, which ``fit`` uses and reports, while
    its compile config records ``None``: the workers trained without the loss
    ("no loss to optimize") or metrics the driver then could not read.
    """
    import keras

    settings = config.get("compile_config")
    if not isinstance(settings, dict) or not getattr(model, "compiled", False):
        return
    if "optimizer" not in settings and getattr(model, "optimizer", None) is not None:
        settings["optimizer"] = keras.saving.serialize_keras_object(model.optimizer)
    live = _live_compile_args(model)
    for key in ("loss", "loss_weights", "metrics", "weighted_metrics"):
        if settings.get(key) is None and live.get(key) is not None:
            settings[key] = keras.saving.serialize_keras_object(live[key])


def _live_compile_args(model: Any) -> dict[str, Any]:
    """The objects ``model`` was compiled with, as ``compile`` took them, and the loss and metrics Keras kept.

    A compile without ``loss=`` or ``metrics=`` keeps the earlier ones in
    Keras (see :func:`_keep_compile_settings`).
    """
    live = dict(getattr(getattr(model, "_compile_config", None), "config", None) or {})
    compiled_loss = getattr(model, "_compile_loss", None)  # what Keras' compile keeps, as Keras 3.x names it
    if live.get("loss") is None and hasattr(compiled_loss, "_user_loss"):
        live["loss"], live["loss_weights"] = compiled_loss._user_loss, compiled_loss._user_loss_weights
    compiled_metrics = getattr(model, "_compile_metrics", None)
    if live.get("metrics") is None and live.get("weighted_metrics") is None \
            and hasattr(compiled_metrics, "_user_metrics"):
        live["metrics"] = compiled_metrics._user_metrics
        live["weighted_metrics"] = compiled_metrics._user_weighted_metrics
    return live


def _ship_functions(model: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The model's loss and metric functions that Keras cannot find by name, renamed in ``config`` to ship by value.

    Why. Keras saves a function passed as a loss or metric by its bare name
    (``"loss"``) and finds it again only among registered and custom
    objects. A loss factory's closure (``loss=weighted_bce(3.0)``) has no
    name anyone can import, and two closures of one factory
    (``metrics=[within(0.5), within(0.2)]``) share one name, so no
    ``custom_objects`` entry can tell them apart; a function of the user's
    script is unknown to every worker, and to Keras' own ``clone_model``.
    The source here is the live model: each such function travels in the
    spec's custom objects (cloudpickle, as a UDF's functions do) under a name
    of its own (``sparkeras_function_0``...), matched to its place in the
    settings by walking the compile arguments beside their serialized form.
    """
    settings = config.get("compile_config")
    if not isinstance(settings, dict):
        return {}
    live = _live_compile_args(model)
    shipped: dict[str, Any] = {}

    def walk(obj: Any, node: Any) -> Any:
        if isinstance(obj, types.FunctionType) and isinstance(node, dict) and node.get("class_name") == "function" \
                and node.get("registered_name") == "function" and not obj.__module__.startswith("keras"):
            name = f"sparkeras_function_{len(shipped)}"
            shipped[name] = obj
            return {"module": None, "class_name": "function", "config": name, "registered_name": "function"}
        if isinstance(obj, (list, tuple)) and isinstance(node, list) and len(obj) == len(node):
            return [walk(o, n) for o, n in zip(obj, node)]
        if isinstance(obj, dict) and isinstance(node, dict) and obj.keys() == node.keys():
            return {k: walk(obj[k], node[k]) for k in node}
        return node

    for key in ("loss", "metrics", "weighted_metrics"):
        if settings.get(key) is not None:
            settings[key] = walk(live.get(key), settings[key])
    return shipped


_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")  # which Keras imports by module name itself


def unregistered_classes(model: Any, config: Any) -> dict[str, Any]:
    """The user's own classes in ``config`` that Keras cannot find by name, taken from the live ``model``.

    Why. Plain ``model.fit`` trains a layer, metric or optimizer class of
    the user's module that was never registered with Keras; Keras names it
    in the config by its module and bare class name, and finds it again
    only among registered and custom objects. So every worker, and the
    driver's rebuild check, stopped with "Keras does not know the class".
    The classes come from the live model (its layers, nested models
    included, the objects they hold, such as initializers and regularizers,
    its optimizer and what ``compile`` was given) and travel in
    the spec's custom objects by reference: a worker imports their module,
    shipped as any module a job's functions use (a class defined inside a
    function travels by value, as cloudpickle ships it). Classes of
    ``__main__`` are :func:`_defined_in_main`'s.
    """
    import keras

    layers = list(model._flatten_layers(include_self=True, recursive=True))
    objects = [*layers, getattr(model, "optimizer", None)]
    objects += [value for layer in layers for value in vars(layer).values()]  # initializers, regularizers...
    objects += _live_compile_objects(model)
    live = {(type(obj).__module__, type(obj).__name__): type(obj) for obj in objects
            if obj is not None and type(obj).__module__ != "builtins"}  # a function's type is no custom object
    found: dict[str, Any] = {}
    for node in _config_dicts(config):
        name, module = node.get("registered_name"), node.get("module")
        if isinstance(name, str) and name == node.get("class_name") and (module, name) in live \
                and module != "__main__" and module.split(".")[0] not in _KERAS_PACKAGES \
                and keras.saving.get_registered_object(name) is None:
            found[name] = live[(module, name)]
    return found


def _live_compile_objects(model: Any) -> list[Any]:
    """The objects ``model`` was compiled with (its losses, metrics, optimizer), out of their lists and dicts."""
    pending, seen, found = list(_live_compile_args(model).values()), set(), []
    while pending:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            pending.extend(obj)
        elif isinstance(obj, dict):
            pending.extend(obj.values())
        else:
            found.append(obj)
    return found


def custom_object_paths(model: Any) -> dict[str, str]:
    """Where ``model``'s own classes and functions that Keras cannot find by name are defined: ``{name: path}``.

    A path is ``module:qualname``. Why. A ``.keras`` file names such an
    object by its bare name (a loss function by ``"my_loss"``, its module
    lost), so the process that loads it must pass it in ``custom_objects``,
    which ``PipelineModel.load`` cannot. Spark ML stages record these paths
    in their metadata, and their reader imports them
    (:func:`import_custom_objects`), as Spark's own reader imports each
    stage's class by name. Closures, which no path reaches, are left out.
    """
    import keras

    config = keras.saving.serialize_keras_object(model)
    objects = {**_defined_in_main(config), **unregistered_classes(model, config)}
    for obj in _live_compile_objects(model):  # functions, which Keras saves by their bare name
        if isinstance(obj, types.FunctionType) and not obj.__module__.startswith("keras") \
                and keras.saving.get_registered_object(obj.__name__) is None:
            objects.setdefault(obj.__name__, obj)
    return {name: f"{obj.__module__}:{obj.__qualname__}" for name, obj in sorted(objects.items())
            if "<" not in obj.__qualname__}


def import_custom_objects(paths: dict[str, str], where: str) -> dict[str, Any]:
    """The objects at :func:`custom_object_paths`' paths, imported here; one that is not there is an InputError."""
    from sparkeras.errors import InputError

    found: dict[str, Any] = {}
    for name, path in paths.items():
        module, _, qualname = path.partition(":")
        try:
            obj: Any = sys.modules["__main__"] if module == "__main__" else importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError, KeyError) as exc:
            fix = ("define it before loading, as when it was saved" if module == "__main__"
                   else f"make module {module!r} importable here (and ship it to the executors)")
            raise InputError(f"{where} uses {name!r}, defined in {module!r} when it was saved, which cannot be "
                             f"found here ({exc}); {fix}.") from None
        found[name] = obj
    return found


def live_compile_settings(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``model``'s compile config for a copy in this process, and the custom objects Keras needs to compile it."""
    config = {"compile_config": model.get_compile_config()}
    _keep_compile_settings(model, config)
    functions = _ship_functions(model, config)
    return config["compile_config"], {**_defined_in_main(config), **functions}


_LAMBDA_PARTS = {"function": "function", "output_shape": "_output_shape", "mask": "mask"}  # config key: attribute


def _ship_lambdas(model: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The Python lambdas of the model's ``Lambda`` layers, named in ``config`` and returned to ship by value.

    Why. Keras serializes such a lambda as marshalled bytecode and refuses
    to rebuild it unless told the source is trusted (safe mode), so every
    worker failed, and the fit was refused. The source here is the driver's
    own live model: each lambda travels in the spec's custom objects, which
    Spark's cloudpickle ships as it ships a UDF's lambdas, with the globals
    it reads (``tf.`` or ``np.`` in a notebook), which Keras' bytecode loses.
    The config names it as a function (``sparkeras_lambda_0``...), which
    Keras finds among the custom objects.
    """
    found = {(layer.name, key, _lambda_code(function)): function
             for layer in model._flatten_layers(include_self=False, recursive=True)
             for key, function in _python_lambdas(layer).items()}
    shipped: dict[str, Any] = {}
    if not found:
        return shipped
    for node in _config_dicts(config):
        inner = node.get("config")
        if node.get("class_name") != "Lambda" or not isinstance(inner, dict):
            continue
        for key in _LAMBDA_PARTS:
            part = inner.get(key)
            if not (isinstance(part, dict) and part.get("class_name") == "__lambda__"):
                continue
            function = found.get((inner.get("name"), key, part["config"]["code"]))
            if function is not None:
                name = f"sparkeras_lambda_{len(shipped)}"
                shipped[name] = function
                inner[key] = {"module": None, "class_name": "function", "config": name, "registered_name": "function"}
    return shipped


def _python_lambdas(layer: Any) -> dict[str, Any]:
    """A ``Lambda`` layer's Python lambdas, by their key in its config (``function``, ``output_shape``, ``mask``)."""
    import keras

    if not isinstance(layer, keras.layers.Lambda):
        return {}
    parts = {key: getattr(layer, attribute, None) for key, attribute in _LAMBDA_PARTS.items()}
    return {key: f for key, f in parts.items() if isinstance(f, types.LambdaType) and f.__name__ == "<lambda>"}


def clone_live(model: Any) -> Any:
    """``keras.models.clone_model`` of a model in this process, compiled as it is, with its Python functions.

    Keras clones each layer through its config, where a Python lambda is
    bytecode that Keras rebuilds only outside safe mode, and then without
    the globals it reads; and it compiles the copy from the compile config,
    where a loss or metric function of the user's script, or a factory's
    closure, is a bare name it cannot find. The estimators and ensembles
    copy the user's live model, so the copy gets the same function objects
    (:func:`live_compile_settings`). Its optimizer is new, with no state.
    """
    import keras

    settings, functions = live_compile_settings(model) if getattr(model, "compiled", False) else ({}, {})
    by_own_name = {f.__name__: f for f in functions.values() if isinstance(f, types.FunctionType)}

    def clone(layer: Any) -> Any:
        if not _python_lambdas(layer):
            return layer.__class__.from_config(layer.get_config())
        return keras.layers.Lambda(layer.function, output_shape=layer._output_shape, mask=layer.mask,
                                   arguments=layer.arguments, name=layer.name, dtype=layer.dtype_policy)

    has_lambdas = any(_python_lambdas(layer) for layer in model._flatten_layers(include_self=False, recursive=True))
    # Keras' clone compiles from the original names first: each resolves to a function of that name
    with keras.saving.custom_object_scope({**by_own_name, **functions}):
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True) if has_lambdas \
            else keras.models.clone_model(model)
        if settings:
            copy.compile_from_config(settings)
    return copy


def _lambda_code(function: Any) -> str:
    """How Keras' config writes a lambda's code (``python_utils.func_dump``), to match the function to its layer."""
    from keras.src.utils import python_utils

    return python_utils.func_dump(function)[0]


def custom_objects_for(config: Any, custom_objects: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a worker needs besides Keras to rebuild ``config``: what ``__main__`` defined, and ``custom_objects``."""
    return {**_defined_in_main(config), **(custom_objects or {})} or None


def import_custom_modules(config: Any, custom_objects: dict[str, Any] | None = None) -> None:
    """Import the modules of the registered custom objects ``config`` names, so their classes register.

    Objects given in ``custom_objects`` need no import: a class passed that
    way from a module the workers lack (the advice of :func:`rebuilding`)
    made every worker fail on the import before Keras looked at it.
    """
    from sparkeras.errors import InputError

    for module in sorted(_custom_modules(config, set(custom_objects or ()))):
        try:
            importlib.import_module(module)
        except ImportError as exc:  # an InputError: the fit stops at once instead of relaunching the epoch
            raise InputError(
                f"The model uses custom objects from module {module!r}, which this Python worker cannot "
                f"import ({exc}). Ship it to the executors with --py-files or sc.addPyFile(), or install it "
                "there.") from None


@contextlib.contextmanager
def rebuilding(config: Any, custom_objects: dict[str, Any] | None) -> Iterator[None]:
    """A scope in which Keras rebuilds ``config`` knowing ``custom_objects``; a class it cannot find is an InputError.

    The error is the same in every task, so it stops the fit at once, with
    the name to register or pass, instead of relaunching the epoch.
    """
    import keras

    from sparkeras.errors import InputError

    with keras.saving.custom_object_scope(custom_objects or {}):
        try:
            yield
        except TypeError as exc:
            missing = re.search(r"Could not locate (class|function) '([^']+)'", str(exc))
            if missing is None:
                raise
            kind, name = missing.groups()
            raise InputError(
                f"{_CANNOT_REBUILD}: Keras does not know the {kind} {name!r} in this process. Register it with "
                "@keras.saving.register_keras_serializable() in a module the workers can import (ship it with "
                "--py-files or sc.addPyFile()), or pass it to SparkModel as "
                f"custom_objects={{{_registered_name(config, name)!r}: {name}}}.") from None


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _is_layer(node: dict[str, Any]) -> bool:
    """Whether a config dict is a layer's or a model's (its ``config`` has a ``name`` and ``trainable``)."""
    inner = node.get("config")
    return isinstance(node.get("class_name"), str) and isinstance(inner, dict) \
        and isinstance(inner.get("name"), str) and ("trainable" in inner or node["class_name"] == "InputLayer")


def _is_reference(node: Any) -> bool:
    """Whether ``node`` is a ``[layer name, node index, tensor index]`` list (``input_layers``, ``output_layers``)."""
    return isinstance(node, list) and len(node) == 3 and isinstance(node[0], str) and isinstance(node[1], int)


def _layer_references(node: Any) -> Iterator[list]:
    """The layer references of an ``input_layers`` or ``output_layers`` value."""
    if _is_reference(node):
        yield node
    elif isinstance(node, (list, dict)):
        for value in (node.values() if isinstance(node, dict) else node):
            yield from _layer_references(value)


def _without_layer_names(config: Any) -> Any:
    """``config`` with the names of its layers and models replaced by their order of appearance.

    Why. Keras names a layer after its class and a counter of the process
    (``dense``, ``dense_1``...), so building the same model again (a cell
    run again, a trial, an ensemble member, a test) gives it new names and
    a new config. The workers keyed their model, and the training steps
    traced or compiled for it, by that config, and built and traced again
    for every such fit: on TensorFlow 0.73-0.94 s per warm fit of a small
    MLP against 0.36-0.51 s for the same model object, and on JAX a
    compilation of 0.9-1.25 s per batch shape. The names compute nothing;
    what the workers send back is positional. Names are replaced only where
    they name a layer (a layer's ``name``, ``keras_history``,
    ``input_layers`` and ``output_layers``), and the optimizer's name,
    counted too. The names of a model's outputs are kept when it has more
    than one, since Keras names those outputs' losses and metrics after
    them in a trial's logs.
    """
    outputs = list(_layer_references((config.get("config") or {}).get("output_layers"))) \
        if isinstance(config, dict) else []
    kept = {ref[0] for ref in outputs} if len(outputs) > 1 else set()
    names: dict[str, str] = {}

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if _is_layer(node) and node["config"]["name"] not in kept:
                names.setdefault(node["config"]["name"], f"<layer {len(names)}>")
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    def renamed(node: Any, of_layer: bool = False) -> Any:
        """``node`` renamed; ``of_layer``: it is a layer's ``config``, whose ``name`` is the layer's."""
        if isinstance(node, list):
            return [renamed(value) for value in node]
        if not isinstance(node, dict):
            return node
        out = {}
        layer = _is_layer(node)
        if str(node.get("module", "")).startswith("keras.optimizers") and isinstance(node.get("config"), dict):
            node = dict(node, config=dict(node["config"], name="<optimizer>"))  # adam, adam_1...
        for key, value in node.items():
            if (layer or of_layer) and key == "name" and isinstance(value, str):
                out[key] = names.get(value, value)
            elif layer and key == "config":
                out[key] = renamed(value, of_layer=True)
            elif key == "keras_history" and isinstance(value, list) and value and isinstance(value[0], str):
                out[key] = [names.get(value[0], value[0]), *value[1:]]
            elif key in ("input_layers", "output_layers"):
                out[key] = _renamed_references(value, names)
            else:
                out[key] = renamed(value)
        return out

    collect(config)
    return renamed(config)


def _renamed_references(node: Any, names: dict[str, str]) -> Any:
    if _is_reference(node):
        return [names.get(node[0], node[0]), *node[1:]]
    if isinstance(node, list):
        return [_renamed_references(value, names) for value in node]
    if isinstance(node, dict):
        return {key: _renamed_references(value, names) for key, value in node.items()}
    return node


_ZEROS = {"module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": None}


def _without_random_draws(config: Any) -> None:
    """Make every Keras initializer in ``config`` ``Zeros``, in place: a rebuilt model's weights are set after.

    Why. Every model a worker builds from its spec (training, trials,
    prediction, the driver's rebuild check) has all its variables assigned
    the driver's state straight away (:func:`set_model_state`, or the
    prediction weights), so what the initializers draw is thrown away. On
    JAX drawing it is not cheap: each random initializer compiles once per
    weight shape, and a fresh JAX process built a 784-128-64-10 MLP in
    1.17-1.19 s with its own initializers against 0.22 s with zeros. A
    custom initializer (one with a ``registered_name``) is left as it is.
    """
    for node in _config_dicts(config):
        for key, value in node.items():
            if isinstance(value, dict) and value.get("module") == "keras.initializers" \
                    and not value.get("registered_name") and value.get("class_name") != "Zeros":
                node[key] = dict(_ZEROS)


@contextlib.contextmanager
def _global_dtype_policy(config: Any) -> Iterator[None]:
    """While open, Keras' global dtype policy is the one the model's config names (``mixed_float16``...).

    Keras 3.15 rebuilds a model's layers with their own policies, but the
    model itself with the global one, and ``compile`` wraps the optimizer in
    a ``LossScaleOptimizer`` only when the model's policy is
    ``mixed_float16``. A worker (whose global policy is ``float32``) then
    built a model with 4 optimizer variables fewer than the driver's, and
    every ``mixed_float16`` fit failed ("model state has 18 arrays but the
    model has 14 variables").
    """
    import keras

    policy = (config.get("config") or {}).get("dtype") if isinstance(config, dict) else None
    name = (policy.get("config") or {}).get("name") if isinstance(policy, dict) else policy
    if not isinstance(name, str) or name == keras.config.dtype_policy().name:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def _global_floatx(floatx: str) -> Iterator[None]:
    """While open, Keras' floatx is ``floatx``: a model built on the driver to check it leaves the user's alone."""
    import keras

    previous = keras.config.floatx()
    if previous == floatx:
        yield
        return
    keras.config.set_floatx(floatx)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


_CANNOT_REBUILD = "The model cannot be rebuilt from its Keras config, as every Spark worker must rebuild it"
_REBUILT: set[str] = set()  # keys of the model specs this process has rebuilt once


def check_rebuilds(spec: ModelSpec) -> None:
    """Rebuild the model from its config once, here, so what every worker would fail on is an InputError now.

    Workers rebuild the user's model from its Keras config. A model that
    cannot be (a custom loss or layer that is not registered and not
    defined in ``__main__``)
    otherwise failed in every task, after packing, with Spark's retries
    and stack traces on the terminal. Once per architecture and process,
    and only for configs that name custom objects or a ``Lambda``: Keras'
    own classes rebuild, and a rebuild costs 20-50 ms of CPU beside a cold
    fit's packing (the benchmark's models).
    """
    if spec.key in _REBUILT or not _names_custom_code(json.loads(spec.config)):
        return
    from sparkeras.errors import InputError

    try:
        with tensorflow_left_unimported():
            spec.build()
    except InputError:  # build's own: it already names what is missing and what to do
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds; each becomes the same clear error
        raise _rebuild_error(exc) from None
    _REBUILT.add(spec.key)


def _names_custom_code(config: Any) -> bool:
    """Whether a Keras config refers to anything but Keras' own registered classes: a custom object or a lambda."""
    return any(node.get("registered_name") or node.get("class_name") in ("Lambda", "__lambda__", "function")
               for node in _config_dicts(config))


def start_rebuild_check(spec: ModelSpec) -> Any:
    """:func:`check_rebuilds` on a thread of its own, beside the data's packing; call the result to wait for it."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            check_rebuilds(spec)
        except BaseException as exc:  # noqa: BLE001 - raised by the waiter, on the fit's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="sparkeras-rebuild-check", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failure:
            raise failure[0]

    return wait


def _rebuild_error(exc: Exception) -> Exception:
    from sparkeras.errors import InputError

    said = f"{type(exc).__name__}: {exc}".strip()
    return InputError(f"{_CANNOT_REBUILD} ({said[:600]}). Register custom layers, losses and metrics with "
                      "@keras.saving.register_keras_serializable() in a module the workers can import "
                      "(ship it with --py-files or sc.addPyFile()), or pass them to SparkModel as "
                      "custom_objects={name: object}.")


def _defined_in_main(config: Any) -> dict[str, Any]:
    """The custom objects a Keras config names that the driver's ``__main__`` defined.

    Why. A class or function defined in a script or a notebook lives in the
    driver's ``__main__``; a Spark worker never ran that code, so its Keras
    cannot find it and every task failed with "Could not locate class". Three
    kinds are found: objects registered with
    ``keras.saving.register_keras_serializable``; functions passed by
    themselves (``loss=my_loss``), which Keras names by their bare name; and
    unregistered classes, which Keras names by their class name. Plain Keras
    would need them as ``custom_objects`` to reload its own file; here they
    travel in the spec's ``custom_objects``, which Spark's cloudpickle ships
    by value, as it does the functions of a UDF defined in a notebook.
    Objects of importable modules are imported by name on the workers
    (:meth:`ModelSpec.build`). A name is taken from ``__main__`` only when
    the object there was defined there, so a Keras function imported under
    the same name is left to Keras.
    """
    import sys

    import keras

    main = sys.modules.get("__main__")
    found: dict[str, Any] = {}
    for node in _config_dicts(config):
        name = node.get("registered_name")
        if not isinstance(name, str) or name in found:
            continue
        obj = keras.saving.get_registered_object(name)
        if obj is None and name == "function" and isinstance(node.get("config"), str):
            name = node["config"]  # a bare function: {"class_name": "function", "config": "my_loss"}
            obj = getattr(main, name, None)
        elif obj is None and name == node.get("class_name") and node.get("module") is None:
            obj = getattr(main, name, None)  # an unregistered class: Keras names it by its class name
        if obj is not None and getattr(obj, "__module__", None) == "__main__":
            found[name] = obj
    return found


def _ship_vocabularies(model: Any, config: dict[str, Any]) -> None:
    """Write adapted lookup layers' vocabularies into their configs, as if passed as ``vocabulary=``.

    Why. ``StringLookup``, ``IntegerLookup`` and ``TextVectorization``
    keep an adapted vocabulary in a lookup table that Keras saves as an
    asset, neither in the config nor in a variable; a worker's model,
    rebuilt from the config, failed every step with "Table not initialized".
    ``tf_idf`` layers also need their document frequencies and are left as
    they are.
    """
    lookups = {layer.name: layer for layer in model._flatten_layers(include_self=False)
               if callable(getattr(layer, "get_vocabulary", None)) and callable(getattr(layer, "vocabulary_size", None))}
    if not lookups:
        return
    for node in _config_dicts(config):
        inner = node.get("config")
        layer = lookups.get(inner.get("name")) if isinstance(inner, dict) else None
        if layer is None or "vocabulary" not in inner or inner["vocabulary"] is not None \
                or inner.get("output_mode") == "tf_idf":
            continue
        vocabulary = [v.item() if hasattr(v, "item") else v for v in layer.get_vocabulary(include_special_tokens=False)]
        if vocabulary:
            inner["vocabulary"] = vocabulary


def copy_vocabularies(source: Any, target: Any) -> None:
    """Give ``target``'s lookup layers the vocabularies adapted in ``source``'s layers of the same names.

    Why. ``keras.models.clone_model`` rebuilds layers from their configs,
    and an adapted vocabulary is in neither the config nor a variable
    (see :func:`_ship_vocabularies`): a copied ``TextVectorization`` had an
    empty vocabulary, and packing strings through it failed with "keys and
    values cannot be empty tensors". In ``tf_idf`` mode the document
    frequencies go with it (Keras sets the out-of-vocabulary token's to their
    mean, as ``adapt`` did).
    """
    targets = {layer.name: layer for layer in target._flatten_layers(include_self=False)}
    for layer in source._flatten_layers(include_self=False):
        twin = targets.get(layer.name)
        if twin is None or not callable(getattr(layer, "get_vocabulary", None)) \
                or not callable(getattr(twin, "set_vocabulary", None)) or _config_of(layer).get("vocabulary"):
            continue
        vocabulary = layer.get_vocabulary(include_special_tokens=False)
        if not vocabulary:
            continue
        idf_weights = None
        if _config_of(layer).get("output_mode") == "tf_idf":  # one weight per token, after the special ones
            lookup = getattr(layer, "_lookup_layer", layer)  # TextVectorization keeps a StringLookup
            special = len(layer.get_vocabulary(include_special_tokens=True)) - len(vocabulary)
            idf_weights = np.asarray(lookup.idf_weights)[special:special + len(vocabulary)]
        twin.set_vocabulary([v.item() if hasattr(v, "item") else v for v in vocabulary], idf_weights=idf_weights)


def _config_of(layer: Any) -> dict[str, Any]:
    try:
        return dict(layer.get_config())
    except Exception:  # noqa: BLE001 - a layer without a config has nothing to copy
        return {}


def _registered_name(config: Any, class_name: str) -> str:
    """The name Keras looks ``class_name`` up by in ``config`` (``package>Name`` when registered with a package)."""
    return next((node["registered_name"] for node in _config_dicts(config)
                 if node.get("class_name") == class_name and isinstance(node.get("registered_name"), str)),
                class_name)


def _custom_modules(config: Any, given: set[str] = frozenset()) -> set[str]:
    """Modules of the registered custom classes and functions a Keras config refers to, but for ``given`` names."""
    return {node["module"] for node in _config_dicts(config)
            if node.get("registered_name") and isinstance(node.get("module"), str)
            and node["registered_name"] not in given and node.get("class_name") not in given
            and node["module"].split(".")[0] not in ("keras", "builtins", "tensorflow", "tf_keras")}


def _config_dicts(config: Any) -> Iterator[dict[str, Any]]:
    """Every dict of a Keras config, nested ones (layers of sub-models, their configs) included."""
    pending = [config]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            yield node
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


def state_variables(model: Any) -> list[Any]:
    """The variables :func:`model_state` reads: the weights followed by the optimizer variables.

    An uncompiled model (one only scored) has no optimizer: its weights alone.
    """
    ensure_optimizer_built(model)
    optimizer = getattr(model, "optimizer", None)
    return list(model.weights) + ([] if optimizer is None else list(optimizer.variables))


def model_state(model: Any) -> list[np.ndarray]:
    """The weights followed by the optimizer variables, in a stable order."""
    return [np.asarray(v) for v in state_variables(model)]


def set_model_state(model: Any, state: Sequence[np.ndarray]) -> None:
    """Inverse of :func:`model_state`."""
    variables = state_variables(model)
    if len(variables) != len(state):
        raise ValueError(
            f"model state has {len(state)} arrays but the model has {len(variables)} variables"
        )
    for var, value in zip(variables, state):
        var.assign(value)
    refresh_derived_state(model)


# Where sparkeras keeps a model's traced functions (sparkeras.worker.local_steps, .backends); Keras keeps its own
# in the *_function attributes.
TRACED_ATTRIBUTES = ("_sparkeras_window_loops", "_sparkeras_test_loops", "_sparkeras_jax_windows",
                     "_sparkeras_gradient_steps")


def refresh_derived_state(model: Any) -> bool:
    """Let layers that derive tensors from their variables recompute them, as Keras' own loading does.

    Why. Keras' preprocessing layers (``Normalization``, ``Discretization``,
    the lookups) turn their variables into tensors in ``finalize_state()``:
    an adapted ``Normalization`` divides by a ``variance`` tensor computed
    from its variable when it was adapted or loaded. Setting the variables
    alone, as a worker does with the driver's state on a model rebuilt from
    its config, left the layer normalizing with the mean 0 and variance 1 of
    a new layer: the workers trained and scored on raw inputs, reported 0.999
    accuracy, and the driver's model, which normalizes, scored 0.79 with
    their weights (a probe with an adapted ``Normalization``). Functions
    traced before captured the old tensors, so they are dropped and traced
    again. Only when those layers' variables changed since the last refresh
    (a fresh model, or a model adapted again): returns whether it did.
    Layers without variables are left alone: ``Discretization`` computes its
    boundaries from a summary that is neither a variable nor in its config,
    so on a rebuilt model it would lose the boundaries its config holds.
    """
    layers = [layer for layer in model._flatten_layers(include_self=False)  # Discretization keeps its
              if callable(getattr(layer, "finalize_state", None)) and layer.variables]  # state outside variables
    if not layers:
        return False
    import hashlib

    digest = hashlib.sha256()
    for layer in layers:
        for variable in layer.variables:
            digest.update(np.ascontiguousarray(np.asarray(variable)).tobytes())
    key = digest.hexdigest()
    if model.__dict__.get("_sparkeras_derived_state") == key:
        return False
    for layer in layers:
        layer.finalize_state()
    model.__dict__["_sparkeras_derived_state"] = key
    for name in TRACED_ATTRIBUTES:
        model.__dict__.pop(name, None)
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    return True


def learning_rate_position(model: Any) -> int | None:
    """Where the optimizer's learning-rate variable sits in :func:`model_state`; ``None`` for a schedule or callable.

    Keras keeps a constant learning rate as a variable among the optimizer's
    (``optimizer.learning_rate`` returns it), so it travels with the state;
    a schedule is a function of the step count instead.
    """
    import keras

    ensure_optimizer_built(model)
    optimizer = model.optimizer
    rate = optimizer.learning_rate
    if not isinstance(rate, keras.Variable):
        return None
    for i, variable in enumerate(optimizer.variables):
        if variable is rate:
            return len(model.weights) + i
    return None


def ensure_optimizer_built(model: Any) -> None:
    """Create the optimizer's slot variables now, so they can be moved around."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
