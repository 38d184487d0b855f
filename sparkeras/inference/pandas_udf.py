"""Prediction UDFs on Spark before 4.1, which has no ``arrow_udf``: a pandas UDF around the same Arrow body.

Spark 4.1 added ``pyspark.sql.functions.arrow_udf``, which hands a UDF its
argument columns as Arrow arrays; sparkeras' prediction body
(:func:`sparkeras.inference.batch.predict_batches`) reads and writes Arrow.
Spark 3.5 and 4.0 have only the pandas form of an iterator UDF, so here the
pandas Series Spark hands in are turned back into Arrow arrays, and the
Arrow results into Series (a DataFrame for a struct). The model's work is the
same; the cost is the pandas round trip, which for an array column is one
Python object per row each way.

A Spark ML ``Vector`` argument arrives as a DataFrame of its struct's fields;
:func:`argument_column` passes it as an array instead (``vector_to_array``)
where sparkeras builds the call, which is cheaper.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator

import pyarrow as pa


def has_arrow_udf() -> bool:
    """Whether this pyspark has ``arrow_udf`` (Spark 4.1 and later)."""
    import pyspark.sql.functions as F

    return hasattr(F, "arrow_udf")


def argument_column(frame_schema: Any, name: str, column: Any) -> Any:
    """A UDF argument that a pandas UDF can take: a ``Vector`` column as ``array<double>``, others as they are."""
    if type(frame_schema[name].dataType).__name__ != "VectorUDT":
        return column
    from pyspark.ml.functions import vector_to_array

    return vector_to_array(column)


def pandas_prediction_udf(predict: Callable[[Iterator[Any]], Iterator[pa.Array]], return_type: Any) -> Any:
    """A scalar-iterator pandas UDF that runs ``predict`` (Arrow arrays in and out) on each batch."""
    from pyspark.rdd import PythonEvalType
    from pyspark.sql.functions import pandas_udf

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        return (_to_pandas(out) for out in predict(_to_arrow(item) for item in batches))

    with warnings.catch_warnings():  # pyspark prefers type hints, which cannot say "one or several Series"
        warnings.simplefilter("ignore", UserWarning)
        return pandas_udf(run, _nullable_fields(return_type), PythonEvalType.SQL_SCALAR_PANDAS_ITER_UDF)


def _nullable_fields(return_type: Any) -> Any:
    """A struct's fields as nullable: a pandas UDF's DataFrame result always has them so, and Spark checks."""
    from pyspark.sql import types as T

    if not isinstance(return_type, T.StructType):
        return return_type
    return T.StructType([T.StructField(f.name, f.dataType, True) for f in return_type.fields])


def _to_arrow(item: Any) -> Any:
    if isinstance(item, tuple):
        return tuple(_argument_to_arrow(s) for s in item)
    return _argument_to_arrow(item)


def _argument_to_arrow(value: Any) -> pa.Array:
    """A Series as Arrow, or a DataFrame (a struct argument, such as a ``Vector`` in a SQL call) as a struct array."""
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return pa.StructArray.from_arrays([_series_to_arrow(value[c]) for c in value.columns],
                                          names=[str(c) for c in value.columns])
    return _series_to_arrow(value)


def _series_to_arrow(series: Any) -> pa.Array:
    """One argument column as Arrow.

    Numbers convert as they are. An array column arrives as one numpy array
    per row; flat numeric rows are joined into one Arrow list array without
    a Python object per value. Nested arrays, bytes and nulls go row by row.
    """
    import numpy as np

    if series.dtype != object:
        return pa.Array.from_pandas(series)
    rows = list(series)
    if rows and all(isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "biuf" for v in rows):
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum([len(v) for v in rows], out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(rows)))
    return pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in rows])


def _to_pandas(result: pa.Array) -> Any:
    """A UDF result as pandas: a struct as a DataFrame with a column per field, otherwise a Series."""
    import pandas as pd

    if isinstance(result, pa.StructArray):
        return pd.DataFrame({result.type.field(i).name: _column(result.field(i)) for i in range(result.type.num_fields)})
    return _column(result)


def _column(values: pa.Array) -> Any:
    """An Arrow column as a Series; a list column as one numpy array per row (views of one buffer)."""
    import numpy as np
    import pandas as pd

    if pa.types.is_list(values.type):
        offsets = values.offsets.to_numpy()
        flat = values.values.to_numpy(zero_copy_only=False)
        rows = np.split(flat, offsets[1:-1]) if len(values) else []
        if values.null_count:  # rows whose features were null: None, which Spark reads as NULL
            rows = [row if valid else None for row, valid in zip(rows, values.is_valid().to_pylist())]
        return pd.Series(rows, dtype=object)
    return values.to_pandas()  # a null double becomes NaN, which Spark reads back as NULL
