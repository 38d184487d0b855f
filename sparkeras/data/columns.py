"""Which DataFrame columns feed which model input or output, and how.

A :class:`ColumnMap` is resolved once on the driver from the model and the
DataFrame's schema, so mistakes in column names or types are reported before
any Spark job starts. Executors then use the same map to turn Arrow record
batches into the numpy arrays Keras consumes.

Supported column types, per model input or output:

* ``array<numeric>`` (nested arrays too, e.g. images as ``array<array<float>>``),
* a Spark ML ``Vector`` (dense or sparse),
* one or more numeric scalar columns, assembled in the order given,
* ``binary``: encoded image files (``sparkeras.read_images``' ``image`` column,
  Spark's ``binaryFile`` ``content``), decoded on the executors to the
  input's height, width and channels (:mod:`sparkeras.images.decode`).

A row's values are reshaped to the tensor's per-row shape (a flat 64-value row
feeds an ``(8, 8, 1)`` input), so the DataFrame need not know the model's layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparkeras.errors import InputError
from sparkeras.images.decode import ImageGeometry

ColumnSpec = Union[str, Sequence[str], Mapping[str, Union[str, Sequence[str]]]]

FEATURE = "features"
LABEL = "label"
WEIGHT = "weight"


@dataclass(frozen=True)
class TensorBinding:
    """One model input (or output) and the column(s) that feed it.

    ``shape`` is the per-row shape Keras expects (``()`` for a scalar label).
    ``classes`` is set for labels given as class ids: they must be integers in
    ``[0, classes)``. ``unit_interval`` marks binary-crossentropy labels.
    """

    name: str
    columns: tuple[str, ...]
    shape: tuple[int | None, ...]
    role: str
    slot: str
    dtype: str = "float32"
    classes: int | None = None
    unit_interval: bool = False
    image: ImageGeometry | None = None
    strings: Any = None  # a StringPrefix: packed for training as its output (sparkeras.data.strings)

    @property
    def size(self) -> int | None:
        """Values per row, when the shape is fully known."""
        if any(d is None for d in self.shape):
            return None
        return int(math.prod(self.shape))

    @property
    def described(self) -> str:
        cols = ", ".join(repr(c) for c in self.columns)
        what = "column" if len(self.columns) == 1 else "columns"
        return f"{'' if self.role == FEATURE else self.role + ' '}{what} {cols}"

    def to_numpy(self, batch: pa.RecordBatch) -> "BindingValues":
        """Convert this binding's columns of an Arrow batch to ``(n, *shape)``."""
        n = batch.num_rows
        if self.opens_files or (len(self.columns) == 1 and is_binary_type(batch.schema.field(self.columns[0]).type)):
            return self._decode_images(batch)
        if self.dtype == "string" or self.strings is not None:
            return self._strings(batch)
        parts = []
        for col in self.columns:
            values, problem = _column_rows(batch.column(col), col)
            if problem:
                return BindingValues(None, problem, n)
            parts.append(values)
        rows = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        per_row = rows.shape[1] if rows.ndim == 2 else 1
        expected = self.size
        if expected is not None and per_row != expected:
            return BindingValues(None, self._size_problem(per_row), n)
        target = tuple(-1 if d is None else d for d in self.shape)
        try:
            shaped = rows.reshape((n, *target)) if n else rows.reshape((0, *[max(d, 0) for d in target]))
        except ValueError:
            return BindingValues(None, self._size_problem(per_row), n)
        return BindingValues(shaped.astype(self.dtype, copy=False), None, n, raw=rows)

    def _decode_images(self, batch: pa.RecordBatch) -> "BindingValues":
        """Encoded image files to this input's shape; the model's own layers scale the 0..255 values."""
        from sparkeras.images.decode import decode_column, geometry_for

        col = self.columns[0]
        try:
            geometry = self.image or geometry_for(self.shape, None, col, self.name)
        except InputError as exc:
            return BindingValues(None, str(exc), batch.num_rows)
        origins = batch.column(geometry.origin) if geometry.origin in batch.schema.names else None
        pixels, problem = decode_column(None if geometry.open_files else batch.column(col), geometry, col, origins)
        if problem:
            return BindingValues(None, problem, batch.num_rows)
        target = tuple(-1 if d is None else d for d in self.shape)
        return BindingValues(pixels.reshape((batch.num_rows, *target)).astype(self.dtype), None, batch.num_rows)

    @property
    def opens_files(self) -> bool:
        """Whether the workers read this input's image files from their paths (``ImageGeometry.open_files``)."""
        return self.image is not None and self.image.open_files

    @property
    def received(self) -> tuple[str, ...]:
        """The columns the workers receive for this binding: the paths alone for files they open."""
        return (self.image.origin,) if self.opens_files else self.columns

    def _strings(self, batch: pa.RecordBatch) -> "BindingValues":
        """A string column as the model input's strings, or (packing for training) as its prefix's output."""
        col, n = self.columns[0], batch.num_rows
        arr = batch.column(col)
        if arr.null_count:
            return BindingValues(None, f"column {col!r} has {arr.null_count} null rows; fill them (e.g. "
                                       f"df.fillna('', subset=[{col!r}])) or drop them before training.", n)
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            return BindingValues(None, f"column {col!r} has type {arr.type}, but model input {self.name!r} takes "
                                       "strings; pass a string column.", n)
        strings = arr.to_numpy(zero_copy_only=False).astype(object, copy=False)
        if self.strings is None:
            return BindingValues(strings.reshape((n, *self.shape)), None, n)
        values = self.strings(strings.reshape((n, *self.strings.input_shape)))
        return BindingValues(values.reshape((n, *self.shape)).astype(self.dtype, copy=False), None, n)

    def _size_problem(self, per_row: int) -> str:
        role = "model input" if self.role == FEATURE else "model output"
        shape = tuple(self.shape)
        need = f"{self.size} values per row (shape {shape})" if self.size else f"shape {shape}"
        return (
            f"{self.described} has rows of {per_row} values, but {role} {self.name!r} "
            f"expects {need}. Select the matching column or change the model's "
            f"{'input' if self.role == FEATURE else 'output'} shape."
        )


@dataclass
class BindingValues:
    """The converted values of one binding for one Arrow batch."""

    values: np.ndarray | None
    problem: str | None
    rows: int
    raw: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ColumnMap:
    """How a model's inputs and outputs map onto a DataFrame's columns.

    ``weights`` is empty, or the one numeric column that weighs each row's
    loss and metrics (``weight_col``, Keras' ``sample_weight``).
    """

    features: tuple[TensorBinding, ...]
    labels: tuple[TensorBinding, ...]
    input_structure: str
    output_structure: str
    weights: tuple[TensorBinding, ...] = ()

    @property
    def bindings(self) -> tuple[TensorBinding, ...]:
        return self.features + self.labels + self.weights

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for b in self.bindings:
            for c in b.received:
                seen[c] = None
        for b in self.bindings:  # the paths of image files, to name one that cannot be decoded
            if b.image is not None and b.image.origin is not None:
                seen[b.image.origin] = None
        return list(seen)

    def opening_local_files(self, frame: Any) -> "ColumnMap":
        """This map with image inputs whose local files the workers read themselves, where ``frame`` allows it.

        Spark then never copies the files into rows
        (:mod:`sparkeras.images.local_files`); a frame it cannot prove safe
        keeps this map as it is.
        """
        origins = {b.image.origin for b in self.features if b.image is not None and b.image.origin}
        if not origins:
            return self
        from sparkeras.images.local_files import opens_local_files

        local = {o for o in origins if opens_local_files(frame, o)}
        if not local:
            return self
        features = tuple(replace(b, image=replace(b.image, open_files=True))
                         if b.image is not None and b.image.origin in local else b for b in self.features)
        return replace(self, features=features)

    def without_string_layers(self) -> "ColumnMap":
        """This map without the ``.keras`` files of string inputs' layers (a 20,000-word vocabulary: 257 KB).

        What tasks that read packed blocks need: the blocks hold the layers'
        output already, so only each binding's shape and dtype matter.
        """
        if not any(b.strings is not None for b in self.features):
            return self
        features = tuple(b if b.strings is None else replace(b, strings=None) for b in self.features)
        return replace(self, features=features)

    def without_labels(self) -> "ColumnMap":
        return ColumnMap(self.features, (), self.input_structure, self.output_structure)

    def x(self, arrays: Sequence[np.ndarray]) -> Any:
        """Arrange feature arrays the way the model's inputs are structured."""
        return _structure(self.input_structure, self.features, arrays)

    def y(self, arrays: Sequence[np.ndarray]) -> Any:
        """Arrange label arrays the way the model's outputs are structured: ``None`` without labels, as in Keras."""
        if not self.labels:
            return None
        return _structure(self.output_structure, self.labels, arrays)

    def without_weights(self) -> "ColumnMap":
        return ColumnMap(self.features, self.labels, self.input_structure, self.output_structure)

    def data(self, arrays: Sequence[Any]) -> tuple:
        """Keras' ``(x, y)``, or ``(x, y, sample_weight)``, from one batch's arrays.

        The arrays are one per binding (features, then labels) and, when the
        fit weighs its rows (a weight column, ``class_weight``), one more:
        each row's weight.
        """
        k, m = len(self.features), len(self.labels)
        return (self.x(arrays[:k]), self.y(arrays[k:k + m]), *arrays[k + m:k + m + 1])


def _structure(kind: str, bindings: Sequence[TensorBinding], arrays: Sequence[np.ndarray]) -> Any:
    if kind == "single":
        return arrays[0]
    if kind == "dict":
        return {b.name: a for b, a in zip(bindings, arrays)}
    return list(arrays)


def resolve_columns(
    model: Any,
    schema: Any,
    features_col: ColumnSpec,
    label_col: ColumnSpec | None,
    weight_col: str | None = None,
) -> ColumnMap:
    """Bind the model's inputs/outputs (and a row weight column) to columns of ``schema`` and check them.

    Raises :class:`InputError` naming the column and what to do when a column
    is missing, not numeric, or cannot match the model's shape.
    """
    inputs = _tensors(model, "inputs")
    outputs = _tensors(model, "outputs")
    in_kind, in_names = _structure_of(model, "_inputs_struct", inputs, "input")
    out_kind, out_names = _structure_of(model, "_outputs_struct", outputs, "output")
    existing = {f.name: f for f in schema.fields}
    features = tuple(
        _bind(name, cols, tensor.shape[1:], FEATURE, f"f{i}", existing, model, dtype=feature_dtype(tensor))
        for i, (name, cols, tensor) in enumerate(
            _assign(features_col, in_names, inputs, "features_col", "input")
        )
    )
    labels: tuple[TensorBinding, ...] = ()
    if label_col is not None:
        labels = tuple(
            _bind(name, cols, tensor.shape[1:], LABEL, f"l{i}", existing, model, out_index=i)
            for i, (name, cols, tensor) in enumerate(
                _assign(label_col, out_names, outputs, "label_col", "output")
            )
        )
    weights = (_bind_weight(weight_col, existing, features + labels),) if weight_col is not None else ()
    return ColumnMap(features, labels, in_kind, out_kind, weights)


def _bind_weight(col: Any, existing: Mapping[str, Any], bound: Sequence[TensorBinding]) -> TensorBinding:
    """The row weight column: one numeric scalar per row, not a feature or label column."""
    if not isinstance(col, str) or not col:
        raise InputError(f"weight_col must be the name of a numeric column, got {col!r}.")
    if col not in existing:
        raise InputError(f"Column {col!r} (weight_col) is not in the data; the columns are {sorted(existing)}. "
                         "Pass weight_col= with one of them, or add the weights with withColumn.")
    if _column_kind(existing[col].dataType) != "scalar":
        raise InputError(f"weight column {col!r} has type {existing[col].dataType.simpleString()}; it must hold one "
                         "number per row (a numeric column, e.g. double), the weight of that row's loss.")
    used = [b.name for b in bound if col in b.columns]
    if used:
        raise InputError(f"weight column {col!r} also feeds {used}; pass a separate column of row weights.")
    return TensorBinding("sample_weight", (col,), (), WEIGHT, "w0")


def split_columns(value: str) -> str | list[str]:
    """A comma-separated column list (a CLI flag, a Spark ML Param) as one name or a list of names."""
    parts = [c.strip() for c in value.split(",") if c.strip()]
    return parts[0] if len(parts) == 1 else parts


def quoted(column: str) -> str:
    """``column`` as a SQL identifier: backquoted, so that a name with dots (R's ``Sepal.Length``) is one column."""
    return "`" + column.replace("`", "``") + "`"


def positional_columns(model: Any, count: int, caller: str = "prediction") -> ColumnMap:
    """Bind ``count`` unnamed arguments (a SQL UDF call's) to the model's inputs by position.

    A model with one input takes every argument, assembled in order (one array
    or Vector column, or several numeric columns); a model with several inputs
    takes one argument per input, in the model's input order. Types and widths
    are checked batch by batch, as the schema is not known in advance.
    """
    inputs = _tensors(model, "inputs")
    kind, names = _structure_of(model, "_inputs_struct", inputs, "input")
    args = tuple(f"argument {i + 1}" for i in range(count))
    if len(inputs) == 1:
        groups = [args]
    elif count == len(inputs):
        groups = [(a,) for a in args]
    else:
        raise InputError(
            f"{caller} was called with {count} column(s), but the model has {len(inputs)} inputs {names}; "
            "pass one column per input, in that order.")
    features = tuple(
        TensorBinding(name, cols, tuple(None if d is None else int(d) for d in tensor.shape[1:]), FEATURE, f"f{i}",
                      feature_dtype(tensor))
        for i, (name, cols, tensor) in enumerate(zip(names, groups, inputs)))
    return ColumnMap(features, (), kind, "single")


def feature_dtype(tensor: Any) -> str:
    """What a model input's rows are packed as: its own integer type, else ``float32``.

    An integer input (the ids of an ``Embedding``, say) fed as ``float32``
    loses ids above 2**24 (16,777,217 reads as 16,777,216), silently. An
    ``int64`` input is packed as ``int64``, any other integer input as ``int32``.
    """
    dtype = str(getattr(tensor, "dtype", "float32"))
    if dtype == "string":
        return "string"
    if "int" not in dtype:
        return "float32"
    return "int64" if dtype in ("int64", "uint32", "uint64") else "int32"


def is_string_tensor(tensor: Any) -> bool:
    """Whether a model input takes strings (``keras.Input(dtype="string")``)."""
    return str(getattr(tensor, "dtype", "")) == "string"


def _tensors(model: Any, attr: str) -> list[Any]:
    try:
        tensors = list(getattr(model, attr) or [])
    except (AttributeError, ValueError):
        tensors = []
    if not tensors:
        raise InputError(_no_tensors(model, attr))
    return tensors


def _no_tensors(model: Any, attr: str) -> str:
    """Why ``model`` has no symbolic ``attr``, and the fix; a built subclassed model needs a functional wrapper.

    Keras gives a subclassed ``keras.Model`` no symbolic inputs or outputs,
    even once ``build`` ran, so the usual advice ("build it first") would
    send its user in a circle.
    """
    built = dict(getattr(model, "_build_shapes_dict", None) or {})
    if getattr(model, "built", False) and len(built) == 1:
        shape = tuple(next(iter(built.values())) or ())[1:]
        return (f"The model is a subclassed keras.Model ({type(model).__name__}), which has no symbolic {attr} even "
                f"once built, so sparkeras cannot check the data against it. Wrap it in a functional model and "
                f"compile that: inputs = keras.Input(shape={shape}); model = keras.Model(inputs, "
                f"{type(model).__name__.lower()}(inputs)).")
    return (f"The model has no known {attr}: build it first (start it with keras.Input(shape=...) "
            "or call model.build(input_shape)) so sparkeras can check the data against it.")


def layer_name(tensor: Any, default: str) -> str:
    """The name of the layer that makes ``tensor`` (``input_layer_1``, ``dense``), as users see it in ``summary()``.

    Keras names unnamed symbolic tensors ``keras_tensor_7``, which appear
    nowhere a user can look; the layer's name is what errors should say.
    """
    history = getattr(tensor, "_keras_history", None)
    operation = getattr(history, "operation", None) if history is not None else None
    return getattr(operation, "name", None) or getattr(tensor, "name", None) or default


def structure_keys(struct: Mapping[str, Any]) -> list[str]:
    """The keys of a model's dict of inputs or outputs, in the order of ``model.inputs``/``model.outputs``.

    Why. Keras flattens a dict by its sorted keys, not in the order the
    user wrote it, so ``{"kind": ..., "amount": ...}`` has ``model.outputs``
    ``[amount, kind]``. Pairing the written order with those tensors bound a
    label column to the other output's shape and loss.
    """
    import keras

    return [str(k) for k in keras.tree.flatten({k: k for k in struct})]


def output_names(model: Any) -> list[str]:
    """The model's output names in ``model.outputs`` order: a dict's keys, else Keras' ``output_names``."""
    struct = getattr(model, "_outputs_struct", None)
    return structure_keys(struct) if isinstance(struct, Mapping) else list(getattr(model, "output_names", None) or [])


def _structure_of(model: Any, attr: str, tensors: list[Any], what: str) -> tuple[str, list[str]]:
    struct = getattr(model, attr, None)
    if isinstance(struct, Mapping):
        return "dict", structure_keys(struct)
    names = [layer_name(t, f"{what}_{i}") for i, t in enumerate(tensors)]
    if what == "output" and getattr(model, "output_names", None):
        names = list(model.output_names)
    return ("single" if len(tensors) == 1 else "list"), names


def _assign(spec: ColumnSpec, names: list[str], tensors: list[Any], arg: str, what: str):
    if isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in names]
        missing = [n for n in names if n not in spec]
        if unknown or missing:
            raise InputError(
                f"{arg} maps model {what}s by name, but "
                + (f"{unknown} are not {what}s of the model; " if unknown else "")
                + (f"{missing} have no column; " if missing else "")
                + f"the model's {what}s are {names}."
            )
        return [(n, _as_tuple(spec[n]), t) for n, t in zip(names, tensors)]
    if len(tensors) == 1:
        return [(names[0], _as_tuple(spec), tensors[0])]
    if isinstance(spec, Sequence) and not isinstance(spec, str) and len(spec) == len(tensors):
        return [(n, _as_tuple(c), t) for n, c, t in zip(names, spec, tensors)]
    raise InputError(
        f"The model has {len(tensors)} {what}s {names}; pass {arg} as a dict "
        f"{{{what}_name: column}} (or a list with one column per {what})."
    )


def _as_tuple(cols: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(cols, str):
        return (cols,)
    cols = tuple(cols)
    if not cols or not all(isinstance(c, str) for c in cols):
        raise InputError(f"A column list must hold column names, got {cols!r}.")
    return cols


def _bind(
    name: str,
    cols: tuple[str, ...],
    tensor_shape: Sequence[int | None],
    role: str,
    slot: str,
    existing: Mapping[str, Any],
    model: Any,
    out_index: int = 0,
    dtype: str = "float32",
) -> TensorBinding:

    shape = tuple(None if d is None else int(d) for d in tensor_shape)
    arg = "features_col" if role == FEATURE else "label_col"
    for col in cols:
        if col not in existing:
            raise InputError(
                f"Column {col!r} ({arg}) is not in the data; the columns are {list(existing)}. Pass {arg}= with "
                + ("one of them (an array or vector column), or with a list of numeric columns, one per input value."
                   if role == FEATURE else "one of them.")
            )
    if dtype == "string":
        return _bind_strings(name, cols, shape, slot, existing)
    kinds = [_column_kind(existing[c].dataType) for c in cols]
    if "image" in kinds:
        return _bind_images(name, cols, shape, role, slot, existing, kinds)
    for col, kind in zip(cols, kinds):
        if kind is None:
            text = existing[col].dataType.simpleString() == "string"
            if text and role != FEATURE:
                fix = ("Turn text labels into class ids first, e.g. pyspark.ml.feature.StringIndexer(inputCol="
                       f"{col!r}, outputCol='label_index'), and pass label_col='label_index'.")
            elif text:
                fix = (f"Turn the text into numbers in Spark first: categories with StringIndexer(inputCol={col!r}) "
                       "(then OneHotEncoder, or an Embedding layer on the index); free text with Tokenizer then "
                       "HashingTF(numFeatures=4096) or CountVectorizer(vocabSize=4096) (all in pyspark.ml.feature; "
                       "their vectors are trained on dense, 4 bytes per feature and row), and pass the result as "
                       "features_col; or give the model a string input, keras.Input(shape=(), dtype='string'), "
                       "followed by TextVectorization or StringLookup.")
            else:
                fix = "Convert it first (e.g. VectorAssembler or a cast)."
            raise InputError(
                f"Column {col!r} has type {existing[col].dataType.simpleString()}, which is not "
                f"numeric. {role.capitalize()} must be numeric: array<float|double>, a Spark ML "
                f"Vector, or numeric columns. {fix}"
            )
    if len(cols) > 1 and any(k != "scalar" for k in kinds):
        raise InputError(
            f"{arg} lists several columns {list(cols)}; that form takes numeric scalar columns "
            "only. Pass a single array or Vector column instead."
        )
    is_scalar = len(cols) == 1 and kinds[0] == "scalar"
    classes = None
    unit_interval = False
    if role == LABEL:
        units = shape[-1] if shape else 1
        if is_scalar:
            if units is not None and units > 1:
                loss = loss_name(model, out_index)
                if "categorical" in loss and "sparse" not in loss:
                    raise InputError(
                        f"label column {cols[0]!r} holds one class index per row, but the loss {loss!r} expects "
                        f"one-hot rows of {units} values. Compile with loss='sparse_categorical_crossentropy' "
                        "(the same loss on class indices), or pass one-hot labels.")
                classes = units
                shape = ()
                dtype = "int32"
            else:  # one value per row keeps the output's shape, (n, 1): F1Score and a loss of the user's need it
                unit_interval = "binary" in loss_name(model, out_index)
        elif units == 1:
            unit_interval = "binary" in loss_name(model, out_index)
        elif "sparse" in loss_name(model, out_index) and "categorical" in loss_name(model, out_index):
            raise InputError(
                f"label column {cols[0]!r} holds {kinds[0]}s (one-hot rows?), but the loss "
                f"{loss_name(model, out_index)!r} expects one class index per row. Compile with "
                "loss='categorical_crossentropy' for one-hot labels, or store the class index as a numeric "
                "column (e.g. with pyspark.ml.functions.vector_to_array and array_position).")
    if len(cols) > 1 and None not in shape and math.prod(shape) != len(cols):
        raise InputError(
            f"{arg} lists {len(cols)} columns, but model {'input' if role == FEATURE else 'output'} "
            f"{name!r} expects {math.prod(shape)} values per row (shape {shape})."
        )
    return TensorBinding(name, cols, shape, role, slot, dtype, classes, unit_interval)


def _bind_strings(name: str, cols: tuple[str, ...], shape: tuple[int | None, ...], slot: str,
                  existing: Mapping[str, Any]) -> TensorBinding:
    """A string model input fed by one string column, one string per row (see :mod:`sparkeras.data.strings`)."""
    if len(cols) != 1:
        raise InputError(f"Model input {name!r} takes strings, and features_col gives it {len(cols)} columns "
                         f"{list(cols)}; give it one string column (concat_ws joins several).")
    check_string_backend([name])
    col = cols[0]
    kind = existing[col].dataType.simpleString()
    if kind != "string":
        raise InputError(f"Model input {name!r} takes strings (dtype='string'), but column {col!r} has type {kind}. "
                         f"Pass a string column, or cast it (F.col({col!r}).cast('string')).")
    if shape not in ((), (1,)):
        raise InputError(f"Model input {name!r} takes strings of shape {shape} per row; sparkeras feeds one string "
                         "per row from a string column: use keras.Input(shape=(), dtype='string') or shape=(1,).")
    return TensorBinding(name, cols, shape, FEATURE, slot, "string")


def check_string_backend(names: Sequence[str]) -> None:
    """String model inputs run TensorFlow's string ops, in training and in prediction alike."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise InputError(
            f"The model has string inputs {list(names)}, which need TensorFlow's string ops; this process uses the "
            f"{backend!r} backend. Set KERAS_BACKEND=tensorflow, or turn the strings into numbers in Spark first "
            "(StringIndexer, or Tokenizer with HashingTF/CountVectorizer).")


def _bind_images(name: str, cols: tuple[str, ...], shape: tuple[int | None, ...], role: str, slot: str,
                 existing: Mapping[str, Any], kinds: list[str | None]) -> TensorBinding:
    """A model input fed by a column of encoded image files, checked against the model's input shape."""
    from sparkeras.images.decode import geometry_for

    col = cols[kinds.index("image")]
    if role != FEATURE:
        raise InputError(f"label column {col!r} holds binary data (image files?); labels must be numeric: a class "
                         "index column, or read the images with sparkeras.read_images(..., labels='folder').")
    if len(cols) > 1:
        raise InputError(f"features_col lists several columns {list(cols)}, and {col!r} holds image files; "
                         "pass the image column alone for this model input.")
    metadata = dict(existing[col].metadata or {})
    origin = metadata.get("path_col")
    geometry = geometry_for(shape, metadata, col, name, origin if origin in existing else None)
    if any(d is None for d in shape):
        shape = {3: (geometry.height, geometry.width, geometry.channels), 2: (geometry.height, geometry.width),
                 1: (geometry.size,)}[len(shape)]
    return TensorBinding(name, cols, shape, role, slot, image=geometry)


def is_binary_type(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _column_kind(dtype: Any) -> str | None:
    """'scalar', 'array', 'vector' or 'image' (binary: encoded files) for usable Spark types, else None."""
    from pyspark.sql import types as T

    if isinstance(dtype, (T.NumericType, T.BooleanType)):
        return "scalar"
    if isinstance(dtype, T.BinaryType):
        return "image"
    if isinstance(dtype, T.ArrayType):
        inner = dtype.elementType
        while isinstance(inner, T.ArrayType):
            inner = inner.elementType
        return "array" if isinstance(inner, (T.NumericType, T.BooleanType)) else None
    if type(dtype).__name__ == "VectorUDT":
        return "vector"
    return None


def loss_name(model: Any, index: int) -> str:
    """The lower-cased name of the loss the model trains output ``index`` with ("" when it has none)."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, Mapping):
        names = output_names(model)
        loss = loss.get(names[index]) if index < len(names) else None
    elif isinstance(loss, (list, tuple)):
        loss = loss[index] if index < len(loss) else None
    if loss is None:
        return ""
    if isinstance(loss, str):
        return loss.lower()
    return str(getattr(loss, "name", None) or getattr(loss, "__name__", "")).lower()


def trained_on_binary_crossentropy(model: Any, index: int = 0) -> bool:
    """Whether output ``index`` trains with a binary crossentropy (plain or focal): each unit is a yes/no label."""
    name = loss_name(model, index)
    return "binary" in name and "crossentropy" in name


def trained_on_logits(model: Any) -> bool:
    """Whether a one-output model's loss was compiled with ``from_logits=True``: its outputs are logits, not probabilities."""
    return bool(getattr(getattr(model, "loss", None), "from_logits", False))


def _column_rows(arr: pa.Array | pa.ChunkedArray, col: str) -> tuple[np.ndarray | None, str | None]:
    """An Arrow column as a 2-D ``(rows, values)`` array, or a problem message."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if arr.null_count:
        return None, (
            f"column {col!r} has {arr.null_count} null rows; drop or fill them "
            "(e.g. df.dropna(subset=[...])) before training."
        )
    t = arr.type
    if pa.types.is_struct(t):
        return _vector_rows(arr, col)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        values = arr
        width = 1
        while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            if values.null_count:
                return None, f"column {col!r} has null entries inside its arrays; fill or drop them."
            if len(lengths) and (lengths != lengths[0]).any():
                first = int(np.flatnonzero(lengths != lengths[0])[0])
                return None, (
                    f"column {col!r} has arrays of different lengths ({int(lengths[0])} and "
                    f"{int(lengths[first])}); every row must have the same number of values."
                )
            width *= int(lengths[0]) if len(lengths) else 0
            values = values.flatten()
        if values.null_count:
            return None, f"column {col!r} has null entries inside its arrays; fill or drop them."
        if not _is_number(values.type):
            return None, _not_numeric(col, t)
        flat = _numeric(values)
        return flat.reshape(n, width if n else 0), None
    if not _is_number(t):
        return None, _not_numeric(col, t)
    return _numeric(arr).reshape(n, 1), None


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _not_numeric(col: str, t: pa.DataType) -> str:
    return (f"column {col!r} has type {t}, which is not numeric; pass an array, a Vector or numeric "
            "column(s) (cast it first).")


def _numeric(arr: pa.Array) -> np.ndarray:
    if pa.types.is_boolean(arr.type):
        arr = arr.cast(pa.uint8())
    elif pa.types.is_decimal(arr.type):
        arr = arr.cast(pa.float64())
    return arr.to_numpy(zero_copy_only=False)


def _vector_rows(arr: pa.StructArray, col: str) -> tuple[np.ndarray | None, str | None]:
    """Densify a Spark ML Vector column (struct of type, size, indices, values)."""
    n = len(arr)
    kinds = arr.field("type").to_numpy(zero_copy_only=False)
    values = arr.field("values")
    if n and (kinds == 1).all():
        return _column_rows(values, col)
    sizes = arr.field("size").to_numpy(zero_copy_only=False)
    dense_lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
    widths = np.where(kinds == 1, dense_lengths, sizes)
    if n and (widths != widths[0]).any():
        return None, f"column {col!r} holds vectors of different sizes; every row must have the same size."
    width = int(widths[0]) if n else 0
    out = np.zeros((n, width), dtype=np.float64)
    indices = arr.field("indices")
    for i in range(n):
        vals = np.asarray(values[i].values, dtype=np.float64)
        if kinds[i] == 1:
            out[i] = vals
        else:
            out[i, np.asarray(indices[i].values, dtype=np.int64)] = vals
    return out, None
