"""Batched prediction inside a Spark task: Arrow columns in, Arrow columns out.

This is the executor half of every DataFrame prediction in sparkeras
(``SparkModel.predict`` on a DataFrame, ``KerasModel.transform``, the SQL UDF
of :func:`sparkeras.register_udf`, streaming). It runs as the body of a
scalar-iterator Arrow UDF, so Spark sends only the feature columns to Python
and keeps every other column on the JVM side; ``mapInArrow`` would ship every
column both ways.

Why not ``pyspark.ml.functions.predict_batch_udf``: it converts each batch to
pandas, which turns every array row into a Python object and stacks them back
with ``np.vstack``, and it cannot read ``Vector`` columns. Here Arrow list and
``Vector`` columns become one ``(rows, values)`` numpy array without a per-row
Python loop, and the model is called with ``predict_on_batch`` on
``batch_size`` slices: ``model.predict`` builds a new data pipeline on every
call, which costs more than the prediction itself for a 10,000-row Arrow batch
of a small model (measured in ``bench/inference.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparkeras.data.columns import ColumnMap, is_binary_type, positional_columns
from sparkeras.errors import InputError
from sparkeras.log import quiet_keras_retracing
from sparkeras.serialization import ModelSpec
from sparkeras.worker import runtime

VALUE = "value"
CLASS = "class"
PROBABILITY = "probability"
RAW_PREDICTION = "raw_prediction"


def class_probabilities(values: np.ndarray, logits: bool = False, multilabel: bool = False) -> np.ndarray:
    """A classifier's outputs as ``(rows, classes)`` probabilities, as Spark ML's ``probability`` column holds.

    One unit (a binary classifier) gives ``[1 - p, p]``, so that column 1 is
    class 1 as for several units; ``logits`` (a model compiled with
    ``from_logits=True``) first applies the sigmoid or the softmax the model
    leaves to its loss. A ``multilabel`` model's units are independent
    binary classifiers, so each is its own probability (a sigmoid each, for logits).
    """
    values = np.asarray(values, dtype=np.float64)
    values = values.reshape(len(values), int(np.prod(values.shape[1:])))  # -1 fails on zero rows
    if multilabel:
        return 1.0 / (1.0 + np.exp(-values)) if logits else values
    if values.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-values[:, 0])) if logits else values[:, 0]
        return np.stack([1.0 - p, p], axis=1)
    if not logits:
        return values
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def class_scores(values: np.ndarray, logits: bool = False) -> np.ndarray:
    """A single-label classifier's outputs as ``(rows, classes)`` scores, as Spark ML's ``rawPrediction`` holds.

    Why. Spark ML's ``BinaryClassificationEvaluator`` reads its
    ``rawPrediction`` column (a ``Vector``; element 1 is class 1's score)
    unless told otherwise, so a classifier stage without that column fails
    inside ``CrossValidator``. Spark leaves its meaning to the model (margins
    for logistic regression, votes for forests); here it is what the model
    outputs: its logits when it was compiled ``from_logits=True``, else its
    probabilities. One unit gives ``[-z, z]`` for a logit ``z``, as Spark's
    logistic regression does, or ``[1 - p, p]``.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values.reshape(len(values), int(np.prod(values.shape[1:])))
    if values.shape[1] == 1:
        z = values[:, 0]
        return np.stack([-z, z] if logits else [1.0 - z, z], axis=1)
    return values


@dataclass(frozen=True)
class OutputColumn:
    """One column a prediction adds to the data.

    ``kind`` is :data:`VALUE` (the model output ``output`` itself: a double for
    one unit, ``array<float>`` of ``width`` values otherwise), :data:`CLASS`
    (the index of its largest value, as a double, as Spark ML labels are; for
    one unit, a binary classifier's, 1.0 above a probability of 0.5 and 0.0
    otherwise), :data:`PROBABILITY` (:func:`class_probabilities`, as
    ``array<float>``) or :data:`RAW_PREDICTION` (:func:`class_scores`, the
    ``rawPrediction`` of Spark ML's classifiers). ``logits`` says the model was
    compiled with ``from_logits=True``: a one-unit class then turns at a
    logit of 0, and probabilities pass through the sigmoid or softmax first.

    ``vector`` makes the column a Spark ML ``Vector``, what Spark ML's
    estimators and evaluators read: the task returns ``array<double>`` (one
    value too), which :func:`~sparkeras.inference.udf.add_predictions` turns
    into a ``Vector`` in the JVM.

    ``multilabel`` marks several units trained with binary crossentropy: each
    unit is a label of its own, so the class column is the ``array<double>``
    of the labels above 0.5 (the form Spark ML's
    ``MultilabelClassificationEvaluator`` reads), and the probabilities are
    per label.
    """

    name: str
    output: int
    width: int
    kind: str = VALUE
    logits: bool = False
    multilabel: bool = False
    vector: bool = False

    def spark_type(self) -> Any:
        from pyspark.sql import types as T

        if (self.kind == CLASS and self.multilabel) or self.vector:
            return T.ArrayType(T.DoubleType(), False)
        if self.kind == PROBABILITY or (self.kind == VALUE and self.width > 1):
            return T.ArrayType(T.FloatType(), False)
        return T.DoubleType()

    def to_arrow(self, outputs: list[np.ndarray]) -> pa.Array:
        values = outputs[self.output]
        values = values.reshape(len(values), int(np.prod(values.shape[1:])))
        if self.kind == CLASS and self.multilabel:
            rows, labels = np.nonzero(values > (0.0 if self.logits else 0.5))
            offsets = np.searchsorted(rows, np.arange(len(values) + 1)).astype(np.int32)
            return pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels.astype(np.float64)))
        if self.kind == CLASS and values.shape[1] == 1:
            return pa.array((values[:, 0] > (0.0 if self.logits else 0.5)).astype(np.float64))
        if self.kind == CLASS:
            return pa.array(values.argmax(axis=1).astype(np.float64))
        if self.kind == RAW_PREDICTION:
            values = class_scores(values, self.logits)
        elif self.kind == PROBABILITY:
            values = class_probabilities(values, self.logits, self.multilabel)
        elif self.width == 1 and not self.vector:
            return pa.array(values[:, 0].astype(np.float64))
        values = values.astype(np.float64 if self.vector else np.float32)  # doubles, as Vectors hold them
        offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.ravel()))


@dataclass(frozen=True)
class PredictionPlan:
    """What every prediction task needs; small, shipped in the UDF closure.

    ``columns`` binds the UDF's arguments (named as in the DataFrame) to the
    model's inputs; ``None`` binds them by position when the first batch
    arrives (SQL calls, whose argument columns are known only then).
    ``weights_id`` names the broadcast weights, so a Python worker sets them on
    its cached model once rather than once per task. ``as_struct`` returns one
    struct column with a field per output column; otherwise the single output
    column is returned as it is.
    """

    model: ModelSpec
    backend: str
    outputs: tuple[OutputColumn, ...]
    batch_size: int
    weights_id: str
    columns: ColumnMap | None = None
    as_struct: bool = True
    caller: str = "prediction"

    def return_type(self) -> Any:
        from pyspark.sql import types as T

        if not self.as_struct:
            return self.outputs[0].spark_type()
        return T.StructType([T.StructField(o.name, o.spark_type(), True) for o in self.outputs])  # null for null rows


class InlineWeights:
    """Model weights carried in the UDF itself, for Spark Connect sessions, which have no broadcast.

    It has the broadcast's one attribute the tasks read, ``value``. The UDF
    travels to the server in one gRPC message, so it is bounded by the
    server's ``spark.connect.grpc.maxInboundMessageSize`` (128 MB by default);
    a Python worker still unpacks the weights once per ``weights_id``.
    """

    def __init__(self, value: bytes) -> None:
        self.value = value


def predict_batches(plan: PredictionPlan, weights: Any, batches: Iterator[Any]) -> Iterator[pa.Array]:
    """The Arrow UDF body: predictions for each batch of argument columns."""
    runtime.configure(plan.backend)
    model = runtime.inference_model(plan.model, plan.weights_id, weights)
    columns = plan.columns
    for item in batches:
        arrays = list(item) if isinstance(item, tuple) else [item]
        if columns is None:
            columns = positional_columns(model, len(arrays), plan.caller)
        batch = pa.RecordBatch.from_arrays(arrays, names=columns.columns)
        missing = _rows_with_nulls(columns, batch)
        if missing is not None:
            batch = batch.filter(pc.invert(missing))
        outputs = predict_rows(model, columns, batch, plan.batch_size)
        fields = [o.to_arrow(outputs) for o in plan.outputs]
        if missing is not None:  # each row of the input again, null where a feature was null
            rows = pc.subtract(pc.cumulative_sum(pc.cast(pc.invert(missing), pa.int64())), 1)
            places = pc.if_else(missing, pa.scalar(None, pa.int64()), rows)
            fields = [f.take(places) for f in fields]
        if plan.as_struct:
            yield pa.StructArray.from_arrays(fields, names=[o.name for o in plan.outputs], mask=missing)
        else:
            yield fields[0]


def _rows_with_nulls(columns: ColumnMap, batch: pa.RecordBatch) -> pa.BooleanArray | None:
    """Rows where a feature column is null, which get a null prediction (as SQL functions give NULL for NULL).

    ``None`` when there are none, the usual case, which costs one null count
    per column. A null inside an array is not a missing row: the conversion
    refuses it, naming the column.
    """
    used = [batch.column(c) for b in columns.features for c in b.received]
    if not any(a.null_count for a in used):
        return None
    missing = pc.is_null(used[0])
    for a in used[1:]:
        missing = pc.or_(missing, pc.is_null(a))
    return missing


def predict_rows(model: Any, columns: ColumnMap, batch: pa.RecordBatch, batch_size: int) -> list[np.ndarray]:
    """The model's outputs (flattened to a list) for every row of an Arrow batch.

    Encoded image files are decoded one model batch at a time, so a task
    holds ``batch_size`` decoded images at once, not an Arrow batch of them:
    10,000 photos of 224x224x3 are 6 GB as ``float32``. Numeric columns are
    converted for the whole Arrow batch at once, which is cheaper.
    """
    n = batch.num_rows
    if n == 0:
        return [np.zeros((0, *tuple(d or 0 for d in t.shape[1:])), np.float32) for t in model.outputs]
    step = batch_size if _holds_images(columns, batch) else n
    return _joined([predict_in_batches(model, columns, _feature_arrays(columns, batch.slice(start, step)), batch_size)
                    for start in range(0, n, step)])


def predict_in_batches(model: Any, columns: ColumnMap, arrays: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """The model's outputs (flattened to a list) for feature arrays: a ``predict_on_batch`` per ``batch_size`` rows.

    ``model.predict`` builds a data pipeline on every call (about 40 ms),
    more than a few thousand rows of a small model take to score; the last
    batch is padded on JAX (:func:`padded_rows`).
    """
    quiet_keras_retracing()
    pad = _pads_batches()
    return _joined([_predict_on_batch(model, columns, [a[lo:lo + batch_size] for a in arrays], batch_size, pad)
                    for lo in range(0, len(arrays[0]), batch_size)])


def _joined(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Consecutive rows' outputs (a list of arrays each) joined into one array per output."""
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def predict_arrays(model: Any, columns: ColumnMap, arrays: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """The model's outputs (flattened to a list) for whole feature arrays, as ``model.predict`` gives them.

    The whole batches go through ``model.predict``; the rows left over, which
    differ from one partition to the next, go through one padded batch on
    JAX (:func:`padded_rows`), so that a worker does not compile the model
    again for every partition's last batch.
    """
    quiet_keras_retracing()
    n = len(arrays[0])
    whole = n - n % batch_size if _pads_batches() else n
    parts = []
    if whole:
        parts.append(flat_outputs(model.predict(columns.x([a[:whole] for a in arrays]), batch_size=batch_size,
                                                verbose=0)))
    if whole < n:
        parts.append(_predict_on_batch(model, columns, [a[whole:] for a in arrays], batch_size, True))
    return _joined(parts)


SCORED_ON_DRIVER_MAX_BYTES = 16 * 2**20


def scored_on_driver(table: pa.Table, columns: ColumnMap, local: bool) -> bool:
    """Whether driver-side rows are predicted or evaluated in the driver's process rather than in a Spark job.

    Why. numpy or pandas rows are on the driver already, and their
    predictions and figures go back there. Warm on ``local[2]`` (``python
    bench/driver_rows.py``), a Spark job scored 1,000 rows of 784 floats in
    0.2 s where the driver's loop of ``predict_on_batch`` took 0.008 s (an
    MLP) and 0.04 s (a two-layer CNN), and 20,000 rows (60 MB) in 0.44 s and
    1.45 s against 0.12 s and 0.68 s: with ``local`` executors (``local``
    true: in this process' JVM) the workers have no cores the driver lacks,
    and every row is copied to them and back, so the driver scores them all.
    Where no session runs yet the job first starts one: a pickled
    scikit-learn estimator, loaded in a fresh process, took 4.9 s to predict
    5 rows. On a cluster, whose executors add cores, the driver scores up to
    16 MB of features, which takes such a CNN about 0.2 s on 2 cores, less
    than a cluster job takes to start and ship them; more go to the
    executors. Encoded images are decoded by the workers, a batch at a time.
    """
    return (all(b.size is not None and b.image is None for b in columns.bindings)
            and (local or table.select(columns.columns).nbytes <= SCORED_ON_DRIVER_MAX_BYTES))


def _pads_batches() -> bool:
    """Whether the backend compiles a new program for every batch shape it has not seen: JAX does.

    TensorFlow's predict function relaxes its input shape after a few
    traces, and PyTorch runs eagerly, so neither needs it.
    """
    import keras

    return keras.backend.backend() == "jax"


def padded_rows(rows: int, batch_size: int) -> int:
    """The batch size a batch of ``rows`` is padded to: the next power of two, at most ``batch_size``.

    Why. JAX compiles the model once per input shape: 50-250 ms for a small
    MLP, per Python worker. A partition's last batch, an Arrow batch cut
    short, or a streaming micro-batch has a size of its own, so without
    padding nearly every one of them compiled again. With these sizes a
    worker compiles at most ``log2(batch_size) + 2`` programs, and a padded
    batch computes at most twice its rows.
    """
    if rows >= batch_size:
        return rows
    return min(batch_size, 1 << max(0, rows - 1).bit_length())


def _predict_on_batch(model: Any, columns: ColumnMap, arrays: list[np.ndarray], batch_size: int,
                      pad: bool) -> list[np.ndarray]:
    """One ``predict_on_batch``; with ``pad``, on :func:`padded_rows` rows, cut back to the real ones.

    The padding repeats the last row, a valid input whatever the model
    takes (an index for an ``Embedding``, pixels, text).
    """
    rows = len(arrays[0])
    size = padded_rows(rows, batch_size) if pad else rows
    if size != rows:
        arrays = [np.concatenate([a, np.repeat(a[-1:], size - rows, axis=0)]) for a in arrays]
    outputs = flat_outputs(model.predict_on_batch(columns.x(arrays)))
    return outputs if size == rows else [o[:rows] for o in outputs]


def _holds_images(columns: ColumnMap, batch: pa.RecordBatch) -> bool:
    return any(b.opens_files or any(is_binary_type(batch.schema.field(c).type) for c in b.columns)
               for b in columns.features)


def _feature_arrays(columns: ColumnMap, batch: pa.RecordBatch) -> list[np.ndarray]:
    arrays = []
    for binding in columns.features:
        converted = binding.to_numpy(batch)
        if converted.problem:
            raise InputError(converted.problem)
        arrays.append(converted.values)
    return arrays


def flat_outputs(out: Any) -> list[np.ndarray]:
    """A model's outputs (one array, a list or a dict) as a list of arrays, in ``model.outputs`` order.

    A dict is flattened as Keras flattens it, by sorted key, not in the
    order it was written (:func:`sparkeras.data.columns.structure_keys`).
    """
    if isinstance(out, dict):
        import keras

        return [np.asarray(v) for v in keras.tree.flatten(out)]
    if isinstance(out, (list, tuple)):
        return [np.asarray(v) for v in out]
    return [np.asarray(out)]
