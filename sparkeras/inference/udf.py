"""Prediction as a Spark column: DataFrame transforms, streaming, and SQL UDFs.

The driver half of :mod:`sparkeras.inference.batch`. The model's
architecture travels in the UDF closure as JSON and its weights once per
executor as a broadcast, so the UDF is cheap to plan and a Python worker
builds the model once. The resulting plan is an ordinary Spark expression: it
works in batch and streaming queries alike and from SQL once registered.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator, Mapping, Sequence, Tuple

import numpy as np
import pyarrow as pa

from sparkeras.data.columns import ColumnMap, ColumnSpec, output_names, quoted, resolve_columns
from sparkeras.errors import InputError
from sparkeras.inference.batch import (CLASS, PROBABILITY, RAW_PREDICTION, VALUE, InlineWeights, OutputColumn,
                                      PredictionPlan, predict_batches)
from sparkeras.inference.pandas_udf import argument_column, has_arrow_udf, pandas_prediction_udf
from sparkeras.serialization import ModelSpec, check_rebuilds, pack_arrays
from sparkeras.session import adopt_preloaded_workers, is_spark_connect, keras_backend

OUTPUT_KINDS = ("raw", "class", "probability")
_RESULT = "__sparkeras_prediction"


def output_columns(model: Any, prediction_col: str) -> list[OutputColumn]:
    """One value column per model output: ``prediction_col``, or ``prediction_col_<output>`` for several."""
    widths = output_widths(model)
    if len(widths) == 1:
        return [OutputColumn(prediction_col, 0, widths[0])]
    return [OutputColumn(f"{prediction_col}_{name}", i, w) for i, (name, w) in enumerate(zip(output_names(model), widths))]


def output_widths(model: Any) -> list[int]:
    return [int(np.prod([d or 1 for d in t.shape[1:]])) for t in model.outputs]


def prediction_udf(
    spark: Any,
    model: Any,
    outputs: Sequence[OutputColumn],
    batch_size: int,
    columns: ColumnMap | None = None,
    custom_objects: Mapping[str, Any] | None = None,
    as_struct: bool = True,
    caller: str = "prediction",
) -> Any:
    """An Arrow UDF that predicts ``outputs`` from the columns ``columns`` names (or any, by position).

    On Spark before 4.1, which has no ``arrow_udf``, a pandas UDF around the
    same body (:mod:`sparkeras.inference.pandas_udf`).
    """
    spec = ModelSpec.from_model(model, dict(custom_objects or {}) or None)
    check_rebuilds(spec)
    adopt_preloaded_workers(spark)
    weights = ship_weights(spark, pack_arrays([np.asarray(v) for v in model.weights]))
    plan = PredictionPlan(spec, keras_backend(), tuple(outputs), batch_size, uuid.uuid4().hex, columns, as_struct,
                          caller)

    def predict(batches: Iterator[Tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        return predict_batches(plan, weights, batches)

    if not has_arrow_udf():
        return pandas_prediction_udf(predict, plan.return_type())
    from pyspark.sql.functions import arrow_udf

    return arrow_udf(predict, plan.return_type())


CONNECT_WEIGHTS_LIMIT = 120 << 20  # bytes: under Spark Connect's default 128 MB message, with room for the plan


def ship_weights(spark: Any, blob: bytes) -> Any:
    """The weights as the tasks will read them: a broadcast, or inline in the UDF on Spark Connect."""
    if not is_spark_connect(spark):
        return spark.sparkContext.broadcast(blob)
    if len(blob) > CONNECT_WEIGHTS_LIMIT:
        raise InputError(
            f"The model's weights are {len(blob) / 2**20:.0f} MB; on Spark Connect they travel inside the UDF, "
            f"which the server takes up to spark.connect.grpc.maxInboundMessageSize (128 MB by default). Raise "
            "that setting on the server, or score with a classic SparkSession, where the weights are broadcast.")
    return InlineWeights(blob)


def add_predictions(
    frame: Any,
    model: Any,
    features: ColumnMap | ColumnSpec,
    outputs: Sequence[OutputColumn],
    batch_size: int,
    custom_objects: Mapping[str, Any] | None = None,
    rename: str = "give the predictions other column names",
) -> Any:
    """``frame`` with one more column per output, computed in one pass of the model.

    ``features`` names the feature column(s) (or is their resolved map);
    their types and widths are checked here, before any task runs.
    ``rename`` tells the user how the caller names its output columns, for
    the error when the data already has one of them.
    """
    from pyspark.sql import functions as F

    columns = features if isinstance(features, ColumnMap) else resolve_columns(model, frame.schema, features, None)
    check_row_widths(frame, columns)
    columns = columns.opening_local_files(frame)
    clash = [o.name for o in outputs if o.name in frame.columns]
    if clash:
        raise InputError(f"The data already has column(s) {clash}, where the predictions would go: {rename}, or "
                         "drop or rename the data's column(s) first.")
    udf = prediction_udf(frame.sparkSession, model, outputs, batch_size, columns, custom_objects)
    arguments = [F.col(quoted(c)) for c in columns.columns]
    if not has_arrow_udf():
        arguments = [argument_column(frame.schema, c, a) for c, a in zip(columns.columns, arguments)]
    result = frame.withColumn(_RESULT, udf(*arguments))
    return result.withColumns({o.name: _as_spark_value(o, F.col(_RESULT).getField(o.name), frame.sparkSession)
                               for o in outputs}).drop(_RESULT)


def _as_spark_value(output: OutputColumn, column: Any, spark: Any) -> Any:
    """A ``vector`` output becomes a Spark ML ``Vector`` in the JVM, as Spark ML's stages read it.

    ``array_to_vector`` fails on NULL, which a row without features gets, so
    such rows keep NULL.
    """
    from pyspark.sql import functions as F

    if not output.vector:
        return column
    if is_spark_connect(spark):
        from pyspark.ml.connect.functions import array_to_vector
    else:
        from pyspark.ml.functions import array_to_vector
    return F.when(column.isNotNull(), array_to_vector(column))


def check_row_widths(frame: Any, columns: ColumnMap) -> None:
    """Compare the width of array and Vector feature columns with the model's inputs, on the first row.

    A lazy ``transform`` would otherwise fail only when an action runs its
    tasks. Vector columns from ``VectorAssembler`` carry their width in the
    column metadata; arrays are measured on one row (a one-row job). Streaming
    frames cannot be probed, so they are checked batch by batch on the
    executors as always.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    probes = {}
    for binding in columns.features:
        if len(binding.columns) != 1 or binding.size is None:
            continue
        name = binding.columns[0]
        field = frame.schema[name]
        kind = type(field.dataType).__name__
        attrs = field.metadata.get("ml_attr", {}).get("num_attrs") if kind == "VectorUDT" else None
        if attrs is not None:
            _check_width(binding, name, int(attrs))
        elif kind in ("ArrayType", "VectorUDT") and not frame.isStreaming:
            column = vector_to_array(F.col(name)) if kind == "VectorUDT" else F.col(name)
            element = field.dataType
            while kind == "ArrayType" and type(element.elementType).__name__ == "ArrayType":
                column, element = F.flatten(column), element.elementType  # rows of a (10, 3) input: 30 values
            probes[name] = (binding, F.size(column))
    if probes:
        first = frame.select(*[expr.alias(f"w{i}") for i, (_, expr) in enumerate(probes.values())]).first()
        for i, (name, (binding, _)) in enumerate(probes.items()):
            if first is not None and first[i] is not None:
                _check_width(binding, name, int(first[i]))


def _check_width(binding: Any, name: str, width: int) -> None:
    if width != binding.size:
        raise InputError(
            f"column {name!r} holds {width} values per row, but model input {binding.name!r} expects "
            f"{binding.size} (shape {binding.shape}); select or assemble a column of that width.")


def register_udf(
    spark: Any,
    name: str,
    model: Any,
    *,
    batch_size: int = 256,
    output: str = "raw",
    custom_objects: Mapping[str, Any] | None = None,
) -> Any:
    """Register a Keras model as the SQL function ``name``, so ``SELECT name(features) FROM t`` predicts.

    Args:
        spark: the SparkSession to register in.
        name: the SQL function name.
        model: a ``keras.Model``, or the path of a ``.keras`` file (local or
            any Hadoop URI), loaded once on the driver.
        batch_size: rows per model call on the executors.
        output: ``"raw"`` returns the model's output (``array<float>`` for
            several units, ``double`` for one; a struct with a field per output
            for multi-output models); ``"class"`` returns the index of the
            largest unit as a double, or for one unit trained with binary
            crossentropy 1.0 above a probability of 0.5 (a logit of 0 with
            ``from_logits=True``), or for several units trained with binary
            crossentropy (multi-label) the ``array<double>`` of the units above it;
            ``"probability"`` returns a classifier's class probabilities as
            ``array<float>``, as ``KerasModel``'s ``probability`` column holds them
            (``[1 - p, p]`` for one sigmoid unit, the softmax or sigmoid of a
            model compiled with ``from_logits=True``, which SQL cannot apply).
        custom_objects: custom layers or losses needed to rebuild the model.

    The function takes the model's input as one array or Vector column, or as
    several numeric columns in order (``name(x1, x2, x3)``); a model with
    several inputs takes one column per input. It is also returned, for use
    in the DataFrame API: ``df.select(udf("features"))``.
    """
    from sparkeras.model import load_model_file

    if not isinstance(name, str) or not name.isidentifier():
        raise InputError(f"register_udf needs a SQL function name (letters, digits, _), got {name!r}.")
    if output not in OUTPUT_KINDS:
        raise InputError(f"output must be one of {OUTPUT_KINDS}, got {output!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if isinstance(model, str):
        model = load_model_file(model, custom_objects)
    _check_inference_model(model)
    widths = output_widths(model)
    if output in (CLASS, PROBABILITY):
        found = class_outputs(model, name, name)  # the class column, then the probabilities
        if found is None:
            raise InputError(
                f"output={output!r} needs a model with one output of several units (class scores), or of one "
                f"unit trained with binary crossentropy; this model's outputs have {widths} units"
                f"{'' if widths != [1] else ' and another loss'}. Use output='raw'.")
        outputs = [o for o in found if o.kind == output]
    elif len(widths) == 1:
        outputs = [OutputColumn(name, 0, widths[0], VALUE)]
    else:
        outputs = [OutputColumn(n, i, w) for i, (n, w) in enumerate(zip(output_names(model), widths))]
    udf = prediction_udf(spark, model, outputs, batch_size, None, custom_objects, as_struct=len(outputs) > 1,
                         caller=f"SQL function {name}")
    return spark.udf.register(name, udf)


def class_outputs(model: Any, prediction_col: str, probability_col: str = "",
                  raw_prediction_col: str = "") -> list[OutputColumn] | None:
    """A classifier's class column (and probabilities and scores, when their columns are named), or ``None``.

    A classifier has one output, of several units (class scores: the class is
    the largest), or of one unit compiled with a binary crossentropy (class 1
    above a probability of 0.5, or a logit of 0 with ``from_logits=True``).
    A one-unit model trained with another loss is a regression, so ``None``.
    Several units with a binary crossentropy are a multi-label classifier:
    the class column holds the indices of every label above the threshold,
    and no scores column is added (Spark ML has no multi-label scores).
    """
    from sparkeras.data.columns import trained_on_binary_crossentropy, trained_on_logits

    widths = output_widths(model)
    if len(widths) != 1:
        return None
    binary = trained_on_binary_crossentropy(model)
    if widths[0] == 1 and not binary:
        return None
    logits = trained_on_logits(model)
    multilabel = widths[0] > 1 and binary
    outputs = [OutputColumn(prediction_col, 0, widths[0], CLASS, logits, multilabel)]
    if probability_col:
        outputs.append(OutputColumn(probability_col, 0, max(widths[0], 2), PROBABILITY, logits, multilabel))
    if raw_prediction_col and not multilabel:
        outputs.append(OutputColumn(raw_prediction_col, 0, max(widths[0], 2), RAW_PREDICTION, logits, vector=True))
    return outputs


def _check_inference_model(model: Any) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise InputError(f"Expected a keras.Model or the path of a .keras file, got {type(model).__name__}.")
    try:
        known = bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        known = False
    if not known:
        raise InputError("The model's input shape is unknown: start it with keras.Input(shape=...) or build it.")


__all__ = ["add_predictions", "output_columns", "prediction_udf", "register_udf"]
