"""String model inputs: text and categories fed from DataFrame string columns.

A Keras model written the Keras way takes raw strings and turns them into
numbers itself: ``keras.Input(shape=(), dtype="string")`` then
``TextVectorization`` or ``StringLookup``. Those layers hold a vocabulary
and no trainable weights, and their output is a fixed function of each row.

Training runs them once per row, not once per row and epoch. The data is
packed for training as numbers (:mod:`sparkeras.data.packing`), so each
packing task runs the layers from a string input up to its first numeric
tensor (the *prefix*, shipped as a ``.keras`` file so that adapted
vocabularies and ``tf_idf`` weights travel with it), and the workers train
the rest of the model (the *trunk*: the same layers and variables as the
user's model, its inputs those numeric tensors). This is Keras' own advice
for string preprocessing ("run it in the input pipeline when training, keep
it in the model for inference"). Predictions use the whole model, which
takes the strings as they are.

The layers run on TensorFlow's string ops, so string inputs need the
TensorFlow backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import weakref
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sparkeras.data.columns import ColumnMap, TensorBinding, check_string_backend, is_string_tensor, layer_name
from sparkeras.errors import InputError


@dataclass(frozen=True)
class StringPrefix:
    """The layers from one string input to its numeric tensor, as a ``.keras`` file's bytes.

    Shipped inside the column map to the packing tasks; each Python worker
    loads it once (:func:`_loaded`) and reuses it for every batch and fit.
    """

    blob: bytes
    key: str
    input_shape: tuple[int, ...] = ()
    config: str = "{}"  # the layers' Keras config: the custom objects' modules and names
    custom_objects: dict[str, Any] | None = None  # those defined in the driver's __main__, and the user's

    def __call__(self, strings: np.ndarray) -> np.ndarray:
        return np.asarray(_loaded(self).predict_on_batch(strings))


_PREFIXES: OrderedDict[str, Any] = OrderedDict()
_PREFIXES_KEPT = 8


def _loaded(prefix: StringPrefix) -> Any:
    model = _PREFIXES.get(prefix.key)
    if model is None:
        import keras

        from sparkeras.serialization import import_custom_modules, rebuilding

        config = json.loads(prefix.config)
        import_custom_modules(config, prefix.custom_objects)
        with tempfile.TemporaryDirectory(prefix="sparkeras-strings-") as folder, \
                rebuilding(config, prefix.custom_objects):
            path = os.path.join(folder, "prefix.keras")
            with open(path, "wb") as f:
                f.write(prefix.blob)
            model = keras.saving.load_model(path, compile=False)
        _PREFIXES[prefix.key] = model
        while len(_PREFIXES) > _PREFIXES_KEPT:
            _PREFIXES.popitem(last=False)
    _PREFIXES.move_to_end(prefix.key)
    return model


@dataclass
class StringSplit:
    """A model with string inputs, split where each string input first becomes numbers.

    ``trunk`` shares every layer and variable with the user's model, and its
    optimizer; ``prefixes`` maps each string input's name to its prefix,
    and ``cuts`` to the numeric tensor the trunk takes in its place.
    """

    trunk: Any
    prefixes: dict[str, StringPrefix]
    cuts: dict[str, Any]

    def packed(self, columns: ColumnMap) -> ColumnMap:
        """``columns`` as the packing writes them: each string input's values are its prefix's output."""
        return replace(columns, features=tuple(self._packed(b) for b in columns.features))

    def _packed(self, binding: TensorBinding) -> TensorBinding:
        cut = self.cuts.get(binding.name)
        if cut is None:
            return binding
        dtype = str(cut.dtype)
        dtype = dtype if "int" in dtype else "float32"
        return replace(binding, shape=tuple(int(d) for d in cut.shape[1:]), dtype=dtype,
                       strings=self.prefixes[binding.name])


def for_packed_data(model: Any, columns: ColumnMap,
                    custom_objects: dict[str, Any] | None = None) -> tuple[Any, ColumnMap]:
    """The model that trains and scores on packed data, and the columns as packed.

    ``model`` and ``columns`` themselves unless the model has string inputs;
    then its trunk, and each string input's column packed as its prefix's output.
    """
    split = string_split(model, custom_objects)
    return (model, columns) if split is None else (split.trunk, split.packed(columns))


def string_split(model: Any, custom_objects: dict[str, Any] | None = None) -> StringSplit | None:
    """The split of ``model`` for training on packed data, or ``None`` when it has no string input.

    Kept on the model while its compilation and its lookup layers'
    vocabularies are the same, so the fit, its validation and a later
    ``evaluate`` train and score one trunk, and a vocabulary adapted again
    is packed again.
    """
    inputs = list(getattr(model, "inputs", None) or [])
    if not any(is_string_tensor(t) for t in inputs):
        return None
    token = (id(getattr(model, "optimizer", None)), id(getattr(model, "_compile_config", None)))
    tables = _lookup_tables(model)
    kept = getattr(model, "_sparkeras_string_split", None)
    if kept is not None and kept[0] == token and len(kept[1]) == len(tables) \
            and all(ref() is table for ref, table in zip(kept[1], tables)):
        return kept[2]
    split = _split(model, inputs, custom_objects)
    model._sparkeras_string_split = (token, [weakref.ref(t) for t in tables], split)
    return split


def _lookup_tables(model: Any) -> list[Any]:
    """The lookup tables of the model's lookup layers; Keras makes a new one whenever a vocabulary changes.

    Why not a digest of the vocabularies. ``get_vocabulary`` of a
    20,000-word ``TextVectorization`` takes 230 ms; ``adapt`` and
    ``set_vocabulary`` replace the table object, so holding weak references
    to the tables tells a changed vocabulary for free.
    """
    tables = []
    for layer in model._flatten_layers(include_self=False):
        table = getattr(getattr(layer, "_lookup_layer", layer), "lookup_table", None)
        if table is not None:
            tables.append(table)
    return tables


def _split(model: Any, inputs: list[Any], custom_objects: dict[str, Any] | None) -> StringSplit:
    import keras

    check_string_backend([layer_name(t, "input") for t in inputs if is_string_tensor(t)])
    graph = getattr(model, "_functional", None) or model  # a Sequential keeps its graph in _functional
    nodes = [n for depth in getattr(graph, "_nodes_by_depth", {}).values() for n in depth]
    names = _input_names(model, inputs)
    cuts: dict[str, Any] = {}
    prefixes: dict[str, StringPrefix] = {}
    for name, tensor in zip(names, inputs):
        if is_string_tensor(tensor):
            cuts[name] = _cut(nodes, tensor, name)
            prefixes[name] = _prefix(keras, tensor, cuts[name], custom_objects)
    trunk = _trunk(keras, graph, model, names, inputs, cuts)
    if {id(v) for v in trunk.weights} != {id(v) for v in model.weights}:
        raise InputError("The model's string inputs feed layers with weights before their first numeric tensor; "
                         "sparkeras runs those layers while packing the data, so they must hold no weights "
                         "(TextVectorization, StringLookup, Hashing do not).")
    compiled = getattr(model, "_compile_config", None)
    if getattr(model, "compiled", False) and compiled is not None:
        trunk.compile(**{**compiled.config, "optimizer": model.optimizer})
    return StringSplit(trunk, prefixes, cuts)


def _trunk(keras: Any, graph: Any, model: Any, names: list[str], inputs: list[Any], cuts: dict[str, Any]) -> Any:
    """The model from the numeric tensors on: its layers called again on new inputs, as Keras runs a graph.

    Why not ``keras.Model(cut_tensors, model.outputs)``. Keras accepts
    inner tensors as inputs, but it clones the graph's nodes for them and
    gives the user's numeric inputs a second node, after which the user's
    model failed to serialize ("could not find node key"). Calling the
    layers again on new ``keras.Input``s is how a layer is shared between
    models; the user's graph is left as it was.
    """
    fresh: dict[int, Any] = {}
    new_inputs = []
    for name, tensor in zip(names, inputs):
        source = cuts.get(name, tensor)
        new = keras.Input(shape=tuple(source.shape[1:]), dtype=source.dtype, name=name)
        fresh[id(source)] = new
        new_inputs.append(new)
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.operation or node.is_input or any(id(t) not in fresh for t in node.input_tensors):
                continue  # an input, or a layer of a string input's prefix
            args, kwargs = node.arguments.fill_in(fresh)
            for old, new in zip(node.outputs, keras.tree.flatten(node.operation(*args, **kwargs))):
                fresh[id(old)] = new
    outputs = keras.tree.pack_sequence_as(model._outputs_struct, [fresh[id(t)] for t in model.outputs])
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        trunk_inputs: Any = dict(zip(names, new_inputs))
    else:
        single = len(new_inputs) == 1 and not isinstance(struct, (list, tuple))
        trunk_inputs = new_inputs[0] if single else new_inputs
    return keras.Model(trunk_inputs, outputs, name=model.name)


def _input_names(model: Any, inputs: list[Any]) -> list[str]:
    from sparkeras.data.columns import structure_keys

    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        return structure_keys(struct)
    return [layer_name(t, f"input_{i}") for i, t in enumerate(inputs)]


def _cut(nodes: list[Any], start: Any, name: str) -> Any:
    """The first numeric tensor made from the string input ``start``; the layers on the way hold no weights."""
    frontier, found = [start], []
    while frontier:
        tensor = frontier.pop()
        for node in nodes:
            if not any(t is tensor for t in node.input_tensors):
                continue
            layer = node.operation
            if not all(is_string_tensor(t) for t in node.input_tensors):
                raise InputError(
                    f"Layer {layer.name!r} takes string input {name!r} together with numbers; turn the strings "
                    "into numbers first (TextVectorization, StringLookup, Hashing), in layers of their own.")
            if getattr(layer, "trainable_weights", None):
                raise InputError(
                    f"Layer {layer.name!r} has trainable weights and takes the strings of input {name!r}; sparkeras "
                    "turns strings into numbers once, while packing the data, with layers that hold no trainable "
                    "weights (TextVectorization, StringLookup, Hashing).")
            for out in node.output_tensors:
                (frontier if is_string_tensor(out) else found).append(out)
    if len(found) != 1:
        raise InputError(
            f"String input {name!r} becomes {len(found)} numeric tensors in the model; sparkeras feeds string "
            "inputs that become exactly one (for example one TextVectorization or StringLookup layer). Give "
            "each use of the strings an input of its own, fed by the same column.")
    cut = found[0]
    if any(d is None for d in cut.shape[1:]):
        raise InputError(
            f"String input {name!r} becomes a tensor of shape {tuple(cut.shape)}, whose length varies by row; "
            "sparkeras packs rows of a fixed size. Give TextVectorization output_sequence_length=..., or use "
            "output_mode='multi_hot', 'count' or 'tf_idf'.")
    return cut


def _prefix(keras: Any, tensor: Any, cut: Any, custom_objects: dict[str, Any] | None) -> StringPrefix:
    """The layers from ``tensor`` to ``cut`` as a :class:`StringPrefix`, with what rebuilds their custom objects."""
    from sparkeras.serialization import custom_objects_for

    model = keras.Model(tensor, cut)
    config = keras.saving.serialize_keras_object(model)
    with tempfile.TemporaryDirectory(prefix="sparkeras-strings-") as folder:
        path = os.path.join(folder, "prefix.keras")
        model.save(path)
        with open(path, "rb") as f:
            blob = f.read()
    shape = tuple(int(d) for d in tensor.shape[1:])
    return StringPrefix(blob, hashlib.sha256(blob).hexdigest(), shape, json.dumps(config),
                        custom_objects_for(config, custom_objects))

