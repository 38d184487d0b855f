"""One pass over the data that validates it and packs it for training.

Every epoch reads the training set again, so it pays to convert it once:
``prepare`` turns each Arrow batch of the user's columns into one row of raw
``float32``/``int32`` blocks (one binary column per model input/output),
caches those rows in Spark (memory, spilling to disk) and, in the same pass,
gathers what validation needs: row counts per partition, NaN/inf counts,
label ranges and the first malformed row. Rows never reach the driver; only
these statistics do, one row per partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from sparkeras.data.columns import LABEL, ColumnMap, TensorBinding
from sparkeras.data.sources import Dataset
from sparkeras.errors import InputError

_STATS = ("nonfinite", "nonint")


def packed_schema(columns: ColumnMap) -> str:
    fields = ["rows LONG", "problem STRING"]
    for b in columns.bindings:
        fields += [f"{b.slot} BINARY", f"{b.slot}_nonfinite LONG", f"{b.slot}_nonint LONG",
                   f"{b.slot}_min DOUBLE", f"{b.slot}_max DOUBLE"]
    return ", ".join(fields)


def pack_batches(columns: ColumnMap, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Executor side: one packed row (plus statistics) per incoming Arrow batch."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        row: dict[str, list] = {"rows": [batch.num_rows], "problem": [None]}
        for b in columns.bindings:
            converted = b.to_numpy(batch)
            if converted.problem and row["problem"][0] is None:
                row["problem"] = [converted.problem]
            values = converted.values
            if values is None:
                row.update({b.slot: [b""], f"{b.slot}_nonfinite": [0], f"{b.slot}_nonint": [0],
                            f"{b.slot}_min": [None], f"{b.slot}_max": [None]})
                continue
            raw = converted.raw.astype(np.float64, copy=False)
            finite = np.isfinite(raw)
            row[b.slot] = [values.tobytes()]
            row[f"{b.slot}_nonfinite"] = [int(raw.size - finite.sum())]
            good = raw[finite]
            row[f"{b.slot}_nonint"] = [int((good != np.round(good)).sum()) if b.role == LABEL else 0]
            row[f"{b.slot}_min"] = [float(good.min()) if good.size else None]
            row[f"{b.slot}_max"] = [float(good.max()) if good.size else None]
        yield pa.RecordBatch.from_pydict(row)


@dataclass
class BindingStats:
    nonfinite: int = 0
    nonint: int = 0
    min: float | None = None
    max: float | None = None


@dataclass
class DatasetStats:
    """What the packing pass learnt about the data, per partition and overall."""

    rows_per_partition: list[int]
    problem: str | None
    bindings: dict[str, BindingStats] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.rows_per_partition)


@dataclass
class PreparedData:
    """Packed, cached, validated data, ready for training, evaluation or prediction."""

    frame: Any
    columns: ColumnMap
    stats: DatasetStats

    @property
    def num_partitions(self) -> int:
        return len(self.stats.rows_per_partition)

    def release(self) -> None:
        self.frame.unpersist()


def prepare(dataset: Dataset, columns: ColumnMap, num_partitions: int, what: str = "training data") -> PreparedData:
    """Validate and pack ``dataset`` into ``num_partitions`` cached partitions.

    Raises :class:`InputError` (and frees the cache) when the data cannot be
    trained on, before any training starts.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    frame = dataset.frame.select(*[F.col(f"`{c}`") for c in columns.columns])
    if not dataset.ordered and frame.rdd.getNumPartitions() != num_partitions:
        frame = frame.repartition(num_partitions)
    packed = frame.mapInArrow(lambda it: pack_batches(columns, it), packed_schema(columns))
    packed = packed.persist(StorageLevel.MEMORY_AND_DISK)
    aggs = [F.sum("rows").alias("rows"), F.first("problem", ignorenulls=True).alias("problem")]
    for b in columns.bindings:
        aggs += [F.sum(f"{b.slot}_{s}").alias(f"{b.slot}_{s}") for s in _STATS]
        aggs += [F.min(f"{b.slot}_min").alias(f"{b.slot}_min"), F.max(f"{b.slot}_max").alias(f"{b.slot}_max")]
    per_partition = (
        packed.groupBy(F.spark_partition_id().alias("pid")).agg(*aggs).collect()
    )
    stats = _combine(per_partition, columns, num_partitions)
    prepared = PreparedData(packed, columns, stats)
    try:
        check(stats, columns, what)
    except InputError:
        prepared.release()
        raise
    return prepared


def _combine(rows: list[Any], columns: ColumnMap, num_partitions: int) -> DatasetStats:
    counts = [0] * num_partitions
    problem = None
    per_binding = {b.slot: BindingStats() for b in columns.bindings}
    for r in sorted(rows, key=lambda r: r["pid"]):
        if r["pid"] < num_partitions:
            counts[r["pid"]] = int(r["rows"] or 0)
        problem = problem or r["problem"]
        for b in columns.bindings:
            s = per_binding[b.slot]
            s.nonfinite += int(r[f"{b.slot}_nonfinite"] or 0)
            s.nonint += int(r[f"{b.slot}_nonint"] or 0)
            lo, hi = r[f"{b.slot}_min"], r[f"{b.slot}_max"]
            if lo is not None:
                s.min = lo if s.min is None else min(s.min, lo)
                s.max = hi if s.max is None else max(s.max, hi)
    return DatasetStats(counts, problem, per_binding)


def check(stats: DatasetStats, columns: ColumnMap, what: str) -> None:
    """Turn the statistics into a clear :class:`InputError`, or pass."""
    if stats.problem:
        raise InputError(f"In the {what}: {stats.problem}")
    if stats.rows == 0:
        raise InputError(f"The {what} is empty (0 rows); check the path or the filters that produced it.")
    for b in columns.bindings:
        s = stats.bindings[b.slot]
        if s.nonfinite:
            raise InputError(
                f"In the {what}, {b.described} holds {s.nonfinite} NaN or infinite values; "
                "drop or fill them (e.g. df.na.drop / df.na.fill) before training."
            )
        _check_labels(b, s, what)


def _check_labels(b: TensorBinding, s: BindingStats, what: str) -> None:
    if b.role != LABEL or s.min is None:
        return
    if b.classes is not None:
        if s.nonint:
            raise InputError(
                f"In the {what}, label {b.described} holds {s.nonint} non-integer values, but output "
                f"{b.name!r} has {b.classes} units, so labels must be class ids 0..{b.classes - 1}."
            )
        if s.min < 0 or s.max >= b.classes:
            raise InputError(
                f"In the {what}, label {b.described} ranges from {s.min:g} to {s.max:g}, but output "
                f"{b.name!r} has {b.classes} units, so class ids must lie in 0..{b.classes - 1}. "
                "Re-index the labels (e.g. StringIndexer) or widen the output layer."
            )
    elif b.unit_interval and (s.min < 0 or s.max > 1):
        raise InputError(
            f"In the {what}, label {b.described} ranges from {s.min:g} to {s.max:g}, but output "
            f"{b.name!r} is trained with binary crossentropy, which needs labels in [0, 1]."
        )


def read_partition(columns: ColumnMap, batches: Iterator[pa.RecordBatch]) -> tuple[list[np.ndarray], int]:
    """Executor side: decode a packed partition into one array per binding."""
    parts: list[list[np.ndarray]] = [[] for _ in columns.bindings]
    rows = 0
    for batch in batches:
        counts = batch.column("rows").to_pylist()
        for i, b in enumerate(columns.bindings):
            blobs = batch.column(b.slot)
            for j, n in enumerate(counts):
                shape = tuple(-1 if d is None else d for d in b.shape)
                parts[i].append(np.frombuffer(blobs[j].as_buffer(), dtype=b.dtype).reshape((n, *shape)))
        rows += sum(counts)
    arrays = []
    for b, chunks in zip(columns.bindings, parts):
        if not chunks:
            shape = tuple(0 if d is None else d for d in b.shape)
            arrays.append(np.zeros((0, *shape), dtype=b.dtype))
        else:
            arrays.append(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))
    return arrays, rows
