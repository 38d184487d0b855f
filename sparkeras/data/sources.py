"""Turning whatever the user trains on into a Spark DataFrame.

numpy arrays and pandas frames already sit on the driver: they stay a local
Arrow table until :func:`~sparkeras.data.packing.prepare` validates and packs
them there and ships them once, in contiguous slices that keep the user's row
order (one slice per worker). RDDs, DataFrames and Parquet stay in Spark.
"""

from __future__ import annotations

import itertools
import math
import os
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa

from sparkeras.data.columns import ColumnSpec
from sparkeras.errors import InputError

ACCEPTED = (
    "numpy arrays (x=, y=), a pandas DataFrame, an Arrow table (or any frame with Arrow's "
    "__arrow_c_stream__: Polars, DuckDB), an RDD of (features, label) pairs, a Spark or pandas-on-Spark "
    "DataFrame, or a path to Parquet (or CSV, JSON, ORC, Delta) data"
)


@dataclass(frozen=True)
class Dataset:
    """Data in Spark (``frame``, or ``pairs`` for an RDD) or on the driver (``table``), plus its columns."""

    frame: Any
    features_col: ColumnSpec
    label_col: ColumnSpec | None
    table: pa.Table | None = None
    weight_col: str | None = None  # the column of row weights (sparkeras.data.weights)
    pairs: "PairRDD | None" = None  # an RDD's elements, packed without a DataFrame (frame is None)

    @property
    def local(self) -> bool:
        """True for driver-side data (numpy, pandas), kept in the user's row order."""
        return self.table is not None

    @property
    def schema(self) -> Any:
        if self.pairs is not None:
            return self.pairs.schema
        if self.table is None:
            return self.frame.schema
        from pyspark.sql.pandas.types import from_arrow_schema

        return from_arrow_schema(self.table.schema)

    def spark_frame(self, spark: Any) -> Any:
        """The data as a Spark DataFrame: ``frame``, or one made of the RDD's pairs or the driver's table."""
        if self.pairs is not None:
            return self.pairs.frame(spark)
        return self.frame if self.table is None else table_frame(spark, self.table)


def describe_source(data: Any) -> str:
    """A short, user-facing name for what a fit was given: a path, a DataFrame's columns, numpy..."""
    from pyspark import RDD
    from pyspark.sql import DataFrame

    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    if isinstance(data, DataFrame):
        return f"Spark DataFrame [{', '.join(data.columns)}]"
    if isinstance(data, RDD):
        return "Spark RDD"
    if is_pandas_on_spark(data):
        return f"pandas-on-Spark DataFrame [{', '.join(map(str, data.columns))}]"
    if type(data).__module__.startswith("pandas"):
        return f"pandas DataFrame [{', '.join(map(str, data.columns))}]"
    if _is_arrow_stream(data):  # named without reading it: a stream of batches is read once, by the fit
        names = getattr(getattr(data, "schema", None), "names", None) or list(getattr(data, "columns", []))
        return f"{type(data).__name__} [{', '.join(map(str, names))}]"
    return "numpy arrays"


def as_dataset(
    spark: Any,
    data: Any,
    y: Any = None,
    *,
    features_col: ColumnSpec = "features",
    label_col: ColumnSpec | None = "label",
) -> Dataset:
    """Wrap ``data`` (and ``y`` for numpy input) as a :class:`Dataset`."""
    from pyspark import RDD
    from pyspark.sql import DataFrame

    if data is None:
        raise InputError(f"No data given: pass {ACCEPTED}.")
    if isinstance(data, DataFrame):
        return Dataset(data, features_col, label_col)
    if is_pandas_on_spark(data):  # its index is no feature: pandas-on-Spark's advice that it is lost is noise here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Dataset(data.to_spark(), features_col, label_col)
    if isinstance(data, (str, os.PathLike)):
        return Dataset(read_data(spark, os.fspath(data)), features_col, label_col)
    if isinstance(data, RDD):
        return Dataset(None, features_col, label_col, pairs=pair_rdd(data, features_col, label_col))
    if _is_pandas(data):
        return Dataset(None, features_col, label_col, pa.Table.from_pandas(data, preserve_index=False))
    if _is_arrow_stream(data):
        return Dataset(None, features_col, label_col, pa.table(data))
    if isinstance(data, (np.ndarray, Mapping, list, tuple)):
        return _numpy_dataset(data, y, features_col, label_col)
    kind = type(data)
    raise InputError(f"Cannot train on a {kind.__module__}.{kind.__qualname__}; pass {ACCEPTED}.")


def is_driver_data(data: Any) -> bool:
    """Rows in the driver's memory (numpy, pandas, Arrow), which :func:`as_dataset` takes without Spark.

    A Spark DataFrame hands its rows over Arrow's C stream too (pyspark 4), by collecting them: it is Spark data.
    """
    from pyspark.sql import DataFrame

    if isinstance(data, DataFrame) or is_pandas_on_spark(data):
        return False
    return _is_pandas(data) or _is_arrow_stream(data) or isinstance(data, (np.ndarray, Mapping, list, tuple))


def is_pandas_on_spark(data: Any) -> bool:
    """A ``pyspark.pandas`` DataFrame: its rows are in Spark, and ``to_spark()`` gives them as a Spark DataFrame."""
    return type(data).__module__.startswith("pyspark.pandas") and hasattr(data, "to_spark")


def pandas_on_spark_frame(data: Any) -> tuple[Any, Callable[[Any], Any]]:
    """A pandas-on-Spark DataFrame as a Spark DataFrame with its index as columns, and the way back.

    Predictions come back as pandas-on-Spark with the input's index, so they
    line up with the input as pandas users align frames (``to_spark()`` alone
    drops the index, and ``pandas_api()`` would number the rows anew).
    """
    names = [f"__index_level_{i}__" for i in range(data.index.nlevels)]
    frame = data.to_spark(index_col=names)

    def back(result: Any) -> Any:
        out = result.pandas_api(index_col=names)
        out.index.names = list(data.index.names)
        return out

    return frame, back


def _is_arrow_stream(data: Any) -> bool:
    """Tabular data that hands its rows over Arrow's C stream interface (pyarrow, Polars, DuckDB...)."""
    return hasattr(data, "__arrow_c_stream__") and not isinstance(data, (np.ndarray, Mapping, list, tuple))


_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json",
               ".jsonl": "json", ".ndjson": "json", ".orc": "orc", ".avro": "avro"}
_MAGIC = ((b"PAR1", "parquet"), (b"ORC", "orc"), (b"Obj\x01", "avro"), (b"PK\x03\x04", "a zip archive"),
          (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "gzip-compressed data"),
          (b"\x89HDF", "an HDF5 file"))
READABLE = ("parquet", "csv", "json", "orc", "delta")


def data_format(path: str) -> str:
    """The format of the data at ``path``: by its content where it is local, else by its extension.

    Needs neither Spark nor TensorFlow, so the CLI checks ``--data`` before
    either starts. A local directory is a Delta table if it has a
    ``_delta_log``, else the format of its first data file (Spark's own
    ``_SUCCESS`` and hidden files are skipped). Raises :class:`InputError`
    for a local path that does not exist.
    """
    from sparkeras.storage.outputs import _local

    local = _local(path)
    by_extension = _EXTENSIONS.get(os.path.splitext(str(path).rstrip("/"))[1].lower())
    if local is None:
        return by_extension or "parquet"
    if not os.path.exists(local):
        raise InputError(f"No data at {path!r}; check the path.")
    if os.path.isdir(local):
        if os.path.isdir(os.path.join(local, "_delta_log")):
            return "delta"
        first = _first_data_file(local)
        if first is None:
            raise InputError(f"The data directory {path!r} holds no data files.")
        local, by_extension = first, _EXTENSIONS.get(os.path.splitext(first)[1].lower(), by_extension)
    with open(local, "rb") as f:
        head = f.read(512)
    for magic, found in _MAGIC:
        if head.startswith(magic):
            return found
    if head.lstrip()[:1] == b"{":
        return "json"
    if by_extension in ("csv", "json"):
        return by_extension
    return "csv" if _looks_like_csv(local) else "binary data" if _is_binary(head) else "text"


def _is_binary(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\x00" in head


def _first_data_file(directory: str) -> str | None:
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(files):
            if not name.startswith((".", "_")):
                return os.path.join(root, name)
    return None


def _looks_like_csv(path: str) -> bool:
    with open(path, "rb") as f:
        line = f.readline(65536)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "," in text or "\t" in text


def read_data(spark: Any, path: str, stream: bool = False) -> Any:
    """A DataFrame of the data at ``path``, read with Spark's own source for its format.

    CSV is read with a header row and inferred column types (pass several
    scalar columns as the features); JSON is one object per line.
    ``stream``: a streaming DataFrame of the files that arrive at ``path``,
    with the schema of those already there.
    """
    from sparkeras.storage.outputs import for_the_jvm

    fmt = data_format(path)
    path = for_the_jvm(path)
    if fmt not in READABLE:
        raise InputError(f"The data at {path!r} is {fmt}, which sparkeras cannot read as a table; "
                         f"convert it to one of {', '.join(READABLE)} (Parquet is best).")
    options = {}
    if fmt == "csv":
        options = {"header": "true", "inferSchema": "true"}
        if str(path).lower().endswith(".tsv"):
            options["sep"] = "\t"
    try:
        frame = spark.read.options(**options).format(fmt).load(path)
        if stream:
            frame = spark.readStream.schema(frame.schema).options(**options).format(fmt).load(path)
        return frame
    except Exception as exc:  # AnalysisException: path missing, unreadable, or not in that format
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        first = lines[0] if lines else type(exc).__name__
        if fmt == "delta" and "delta" in first.lower() and "source" in first.lower():
            raise InputError(f"{path!r} is a Delta table; install delta-spark and configure the session for "
                             "it, or export the table to Parquet.") from None
        raise InputError(f"Cannot read {fmt} data at {path!r}: {first}") from None


_TENSOR_MODULES = ("tensorflow", "jax", "jaxlib", "torch")


def host_arrays(value: Any) -> Any:
    """Backend tensors (TensorFlow, JAX, PyTorch), alone or in a list, tuple or dict, as numpy arrays.

    Keras' ``fit``, ``evaluate`` and ``predict`` take a backend's tensors as
    they take numpy; sparkeras ships driver-side data as numpy, and refused
    them ("Cannot train on a EagerTensor"). Only the value itself and the
    items of a list, tuple or dict are looked at, never rows of Python lists.
    """
    if _is_tensor(value):
        return _as_numpy(value)
    if isinstance(value, Mapping) and any(_is_tensor(v) for v in value.values()):
        return {k: _as_numpy(v) if _is_tensor(v) else v for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(_is_tensor(v) for v in value):
        return type(value)(_as_numpy(v) if _is_tensor(v) else v for v in value)
    return value


def _is_tensor(value: Any) -> bool:
    """A tensor of a backend's library (not its other objects: a ``tf.data.Dataset`` is refused, named)."""
    return type(value).__module__.split(".")[0] in _TENSOR_MODULES and hasattr(value, "shape") \
        and hasattr(value, "dtype")


def _as_numpy(tensor: Any) -> np.ndarray:
    if hasattr(tensor, "detach"):  # a PyTorch tensor, maybe on a GPU or needing grad
        tensor = tensor.detach().cpu()
    return np.asarray(tensor)


def _is_pandas(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame"


def _numpy_dataset(x, y, features_col, label_col) -> Dataset:
    columns: dict[str, np.ndarray] = {}
    fcol = _named_arrays(x, features_col if isinstance(features_col, str) else "features", columns, "x")
    lcol = None
    if y is not None:
        lcol = _named_arrays(y, label_col if isinstance(label_col, str) else "label", columns, "y")
    lengths = {name: len(a) for name, a in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"x and y must have the same number of rows; got {lengths}.")
    arrays = {name: _arrow_column(a, name) for name, a in columns.items()}
    fields = [pa.field(name, arrays[name].type, metadata={ROW_SHAPE: ",".join(map(str, a.shape[1:]))})
              if a.ndim > 2 else pa.field(name, arrays[name].type) for name, a in columns.items()]
    return Dataset(None, fcol, lcol, pa.Table.from_arrays(list(arrays.values()), schema=pa.schema(fields)))


ROW_SHAPE = b"sparkeras.row_shape"
"""Arrow field metadata: a numpy column's row shape (``b"28,28,1"``), which its flat list column loses."""


def _named_arrays(value, base: str, out: dict[str, np.ndarray], what: str) -> ColumnSpec:
    if isinstance(value, Mapping):
        names = {}
        for key, arr in value.items():
            col = f"{base}__{key}" if what == "y" else str(key)
            out[col] = np.asarray(arr)
            names[str(key)] = col
        return names
    if isinstance(value, (list, tuple)):
        if not all(hasattr(arr, "shape") for arr in value):
            role = "input" if what == "x" else "output"
            raise InputError(f"{what} is a Python {type(value).__name__} of numbers or lists, which Keras' fit does "
                             f"not take either: pass np.asarray({what}). A list or tuple {what} holds one array per "
                             f"model {role}, as in Keras.")
        cols = []
        for i, arr in enumerate(value):
            out[f"{base}_{i}"] = np.asarray(arr)
            cols.append(f"{base}_{i}")
        return cols
    out[base] = np.asarray(value)
    return base


def _arrow_column(a: np.ndarray, name: str) -> pa.Array:
    if a.dtype.kind in "UO" and (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)):
        return _string_column(a, name)  # one string per row, for a model input that takes strings
    if a.dtype.kind not in "biuf":
        raise InputError(
            f"Array {name!r} has dtype {a.dtype}, which is not numeric; convert it with "
            ".astype('float32') (or encode categories as integers) first."
        )
    if a.ndim == 0:
        raise InputError(f"Array {name!r} is a scalar; pass one row per sample.")
    if a.ndim == 1:
        return pa.array(a)
    width = int(math.prod(a.shape[1:]))
    flat = pa.array(np.ascontiguousarray(a).reshape(-1))
    offsets = pa.array(np.arange(0, (len(a) + 1) * width, width, dtype=np.int32)) if width else pa.array(np.zeros(len(a) + 1, np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _string_column(a: np.ndarray, name: str) -> pa.Array:
    """One string per row (shape ``(n,)`` or ``(n, 1)``) as a string column; other objects are refused."""
    a = a.reshape(len(a))
    try:
        return pa.array(a.tolist(), pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        kinds = sorted({type(v).__name__ for v in a.tolist()} - {"str"})
        raise InputError(f"Array {name!r} has dtype {a.dtype} and holds {kinds} values, which are neither numbers "
                         "nor strings; convert it with .astype('float32'), or to strings for a string input.") from None


DRAIN_SECONDS = 0.5


def first_element(rdd: Any) -> list[Any]:
    """The RDD's first element (in a list; empty for an empty RDD), read without losing a Python worker.

    ``RDD.take`` stops reading a partition after the elements it needs, and
    Spark then closes the Python worker that produced them instead of
    reusing it: a probe's worker pids changed after every ``take(1)``. The
    fit's next task then lands on a freshly forked worker, which in a
    ``SparkContext`` sparkeras did not start (an Elephas script's, a
    notebook's) imports TensorFlow and builds the model again. Measured on
    a bare ``local[2]`` context, an asynchronous fit of 1,400 pairs from an
    RDD: 4.7-5.0 s warm with ``take(1)``, 2.0-2.8 s with this. So the task
    reads on past the first element, for up to :data:`DRAIN_SECONDS`, and
    the worker ends cleanly; a partition too large for that still costs its worker, as
    ``take`` did, and nothing more.
    """
    def head(elements: Any) -> list[Any]:
        found = list(itertools.islice(elements, 1))
        deadline = time.monotonic() + DRAIN_SECONDS
        for i, _ in enumerate(elements):
            if i % 256 == 0 and time.monotonic() > deadline:
                break
        return found

    if rdd.getNumPartitions() == 0:
        return []
    return rdd.context.runJob(rdd, head, [0]) or rdd.take(1)  # partition 0 empty: let Spark scan on


def first_feature_shape(dataset: Dataset) -> tuple[int, ...] | None:
    """The shape of one row's features, read off the first row; ``None`` when it has no numeric shape.

    What an unbuilt ``keras.Sequential`` (no ``keras.Input``) is built for,
    as Keras' own ``fit`` builds it from the first batch: several columns
    are one value each, a Vector has its size, an array its nested shape.
    A DataFrame's first row costs one small Spark job.
    """
    cols = dataset.features_col
    if isinstance(cols, Mapping):
        return None
    if not isinstance(cols, str):
        if len(cols) != 1:
            return (len(cols),)
        cols = cols[0]
    if dataset.pairs is not None:
        first = first_element(dataset.pairs.rdd)
        value = (first[0][0] if dataset.pairs.layout.label_col is not None else first[0]) if first else None
    elif dataset.table is not None:
        shape = (dataset.table.schema.field(cols).metadata or {}).get(ROW_SHAPE)
        if shape:
            return tuple(int(d) for d in shape.split(b","))
        value = dataset.table.column(cols)[0].as_py() if dataset.table.num_rows else None
    else:
        row = dataset.frame.select(cols).first()
        value = None if row is None else row[0]
    if value is None or isinstance(value, (str, bytes)):
        return None
    if hasattr(value, "toArray"):  # a Spark ML or MLlib Vector
        return (int(value.size),)
    shape = np.shape(value)
    return tuple(int(d) for d in shape) if shape else (1,)


@dataclass(frozen=True)
class PairLayout:
    """What an RDD's elements hold, read off its first: ``(features, label)`` pairs or features alone.

    Executor side, :meth:`batches` turns the elements into Arrow batches
    of the columns the schema names, which packing reads as it reads a
    DataFrame's (:func:`sparkeras.data.packing.pack_batches`).
    """

    features_col: str
    label_col: str | None  # None: the elements are features alone
    label_is_array: bool = False
    label_is_integer: bool = False

    @property
    def schema(self) -> Any:
        """The Spark schema of these columns: features (and an array label) as arrays of doubles."""
        from pyspark.sql import types as T

        doubles = T.ArrayType(T.DoubleType(), False)
        fields = [T.StructField(self.features_col, doubles, False)]
        if self.label_col is not None:
            label = doubles if self.label_is_array else T.LongType() if self.label_is_integer else T.DoubleType()
            fields.append(T.StructField(self.label_col, label, False))
        return T.StructType(fields)

    def batches(self, elements: Iterator[Any], rows: int, partition: int = 0) -> Iterator[pa.RecordBatch]:
        """Executor side: the elements as Arrow batches of at most ``rows`` rows.

        An element that is not like the first (not a pair, not numbers, a
        label of another shape) stops the packing with an
        :class:`~sparkeras.errors.InputError` that names it.
        """
        done = 0
        while True:
            chunk = list(itertools.islice(elements, rows))
            if not chunk:
                return
            try:
                batch = self._batch(chunk)
            except (TypeError, ValueError, IndexError, pa.ArrowException) as exc:
                at, why = next(((done + i, w) for i, w in enumerate(map(self._unlike_the_first, chunk)) if w),
                               (done, f"{type(exc).__name__}: {exc}"))
                raise InputError(f"Element {at} of the RDD's partition {partition} is not like its first element: "
                                 f"{why}. Every element must be a (features, label) pair of numbers (numpy arrays, "
                                 "lists or Spark ML vectors), each label of the same shape.") from None
            done += len(chunk)
            yield batch

    def _batch(self, chunk: list[Any]) -> pa.RecordBatch:
        names = [self.features_col] + ([self.label_col] if self.label_col is not None else [])
        if self.label_col is None:
            return pa.RecordBatch.from_arrays([_double_lists([_plain(e) for e in chunk])], names=names)
        if not all(isinstance(e, tuple) and len(e) == 2 for e in chunk):
            raise ValueError("an element is not a pair")
        columns = [_double_lists([_plain(e[0]) for e in chunk])]
        labels = [_plain(e[1]) for e in chunk]
        if self.label_is_array:
            columns.append(_double_lists(labels))
        else:
            values = np.asarray([np.asarray(v).item() for v in labels])
            columns.append(pa.array(values.astype(np.int64) if values.dtype.kind == "b" else values))
        return pa.RecordBatch.from_arrays(columns, names=names)

    def _unlike_the_first(self, element: Any) -> str | None:
        """Why ``element`` cannot be a row like the first element's, or ``None``."""
        if self.label_col is not None and not (isinstance(element, tuple) and len(element) == 2):
            return f"it is a {type(element).__name__}, not a (features, label) pair"
        parts = [("features", element[0] if self.label_col is not None else element)]
        if self.label_col is not None:
            parts.append(("label", element[1]))
        for what, value in parts:
            try:
                numbers = np.asarray(_plain(value), dtype=np.float64)
            except (TypeError, ValueError) as exc:
                return f"its {what} {_short(value)} are not numbers ({exc})"
            if what == "label" and not self.label_is_array and numbers.size != 1:
                return f"its label has {numbers.size} values, where the first element's label is one number"
        return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _double_lists(rows: list[Any]) -> pa.Array:
    """Rows of numbers (arrays of any shape, flattened) as an Arrow list array of doubles."""
    flat = [np.asarray(r, dtype=np.float64).ravel() for r in rows]
    offsets = np.zeros(len(flat) + 1, dtype=np.int32)
    np.cumsum([len(f) for f in flat], out=offsets[1:])
    values = np.concatenate(flat) if flat else np.zeros(0, np.float64)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


@dataclass(frozen=True)
class PairRDD:
    """An RDD of ``(features, label)`` pairs (or of features alone), packed straight from its elements.

    Why not a DataFrame. ``spark.createDataFrame`` over the pairs made the
    JVM plan a query, convert the Python rows to its own and back to Arrow,
    with two Python functions per packing task: for the Elephas README's
    1,400 digits on a cold ``local[2]`` session, 1.9-2.6 s from the first
    pair to the packed blocks, against 0.2-0.5 s when each packing task
    reads its partition's pairs itself (``/tmp`` probe). A DataFrame is
    still made where one is the result (:meth:`frame`: predictions, cached
    frames for searches).
    """

    rdd: Any
    layout: PairLayout

    @property
    def schema(self) -> Any:
        return self.layout.schema

    def frame(self, spark: Any) -> Any:
        """The pairs as a DataFrame of :attr:`schema`, converted as packing converts them."""
        layout = self.layout

        def rows(index: int, elements: Iterator[Any]) -> Iterator[tuple]:
            for batch in layout.batches(elements, 4096, index):
                yield from zip(*(column.to_pylist() for column in batch.columns))

        return spark.createDataFrame(self.rdd.mapPartitionsWithIndex(rows), layout.schema)

    def split(self, fraction: float, seed: int) -> tuple["PairRDD", "PairRDD"]:
        """Hold out about ``fraction`` of the pairs, at random, seeded (``RDD.randomSplit``)."""
        train, held_out = self.rdd.randomSplit([1.0 - fraction, fraction], seed=seed)
        return PairRDD(train, self.layout), PairRDD(held_out, self.layout)


def pair_rdd(rdd: Any, features_col: ColumnSpec, label_col: ColumnSpec | None) -> PairRDD:
    """An RDD of ``(features, label)`` pairs (or of features alone), its layout read off its first element."""
    if not isinstance(features_col, str) or not (label_col is None or isinstance(label_col, str)):
        raise InputError("For an RDD of (features, label) pairs, features_col and label_col must be plain names.")
    first = first_element(rdd)
    if not first:
        raise InputError("The training data is empty (the RDD has no elements).")
    sample = first[0]
    if _is_labeled_point(sample):  # MLlib's (label, features) records, as Elephas' SparkMLlibModel takes them
        rdd, sample = rdd.map(lambda point: (point.features, point.label)), (sample.features, sample.label)
    if not (isinstance(sample, tuple) and len(sample) == 2 and label_col is not None):
        return PairRDD(rdd, PairLayout(features_col, None))
    label = np.asarray(_plain(sample[1]))
    return PairRDD(rdd, PairLayout(features_col, label_col, label.ndim > 0, label.dtype.kind in "iub"))


def _is_labeled_point(value: Any) -> bool:
    return type(value).__name__ == "LabeledPoint" and type(value).__module__.startswith("pyspark.mllib")


def _plain(value: Any) -> Any:
    """Spark ML/MLlib vectors to numpy; everything else unchanged."""
    to_array = getattr(value, "toArray", None)
    return to_array() if callable(to_array) else value


def table_frame(spark: Any, table: pa.Table) -> Any:
    """A DataFrame of an Arrow table: directly on Spark 4, through pandas (Arrow-backed) on Spark 3.5."""
    try:
        return spark.createDataFrame(table)
    except TypeError:  # Spark 3.5: "Can not infer schema for type: Table"
        return spark.createDataFrame(table.to_pandas())


def check_weight_rows(sample_weight: Any, rows: int) -> None:
    if len(sample_weight) != rows:
        raise InputError(f"sample_weight has {len(sample_weight)} weights but the data has {rows} rows; "
                         "pass one weight per row.")


def with_row_weights(dataset: Dataset, weight_col: str | None, sample_weight: np.ndarray | None) -> Dataset:
    """``dataset`` weighted by its column ``weight_col``, or by ``sample_weight`` added as a column (numpy data)."""
    if sample_weight is None:
        return replace(dataset, weight_col=weight_col)
    check_weight_rows(sample_weight, dataset.table.num_rows)
    name = "sample_weight"
    while name in dataset.table.column_names:
        name = "_" + name
    return replace(dataset, table=dataset.table.append_column(name, pa.array(sample_weight)), weight_col=name)


def split_validation(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out ``fraction`` of the rows for validation.

    Driver-side data keeps Keras' rule (the last rows, before shuffling);
    Spark data is split at random, seeded.
    """
    f, l, w = dataset.features_col, dataset.label_col, dataset.weight_col
    if dataset.table is not None:
        cut = int(dataset.table.num_rows * (1.0 - fraction))
        return (Dataset(None, f, l, dataset.table.slice(0, cut), w),
                Dataset(None, f, l, dataset.table.slice(cut)))
    if dataset.pairs is not None:
        train_pairs, val_pairs = dataset.pairs.split(fraction, seed)
        return Dataset(None, f, l, weight_col=w, pairs=train_pairs), Dataset(None, f, l, pairs=val_pairs)
    train, val = dataset.frame.randomSplit([1.0 - fraction, fraction], seed=seed)
    return Dataset(train, f, l, weight_col=w), Dataset(val, f, l)


def validation_dataset(spark: Any, validation_data: Any, like: Dataset) -> Dataset:
    """``validation_data`` as a Dataset with the same columns as the training data."""
    if isinstance(validation_data, tuple) and len(validation_data) == 2:
        return as_dataset(
            spark, validation_data[0], validation_data[1],
            features_col=_base(like.features_col, "features"),
            label_col=_base(like.label_col, "label"),
        )
    return as_dataset(spark, validation_data, features_col=like.features_col, label_col=like.label_col)


def _base(spec: Any, default: str) -> str:
    return spec if isinstance(spec, str) else default

