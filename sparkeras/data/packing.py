"""One pass over the data that validates it and packs it for training.

Every epoch reads the training set again, so it pays to convert it once:
``prepare`` turns each Arrow batch of the user's columns into one *block* of
raw ``float32``/``int32`` bytes per model input/output and, in the same pass,
gathers what validation needs: row counts, NaN/inf counts, label ranges and
the first malformed row. Blocks are cached as an RDD (memory, spilling to
disk) rather than a cached DataFrame: Spark hands cached RDD blocks to the
Python worker as stored bytes, which measured 4-6x faster per epoch than
converting a DataFrame cache back to Arrow. Rows never reach the driver; only
the statistics do, one small record per partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from sparkeras.data.columns import LABEL, ColumnMap, TensorBinding
from sparkeras.data.sources import Dataset
from sparkeras.errors import InputError, worker_error

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
    """Packed, cached, validated data, ready for training, evaluation or prediction.

    ``blocks`` is an RDD of ``(rows, (bytes per binding...), stats)`` tuples.
    """

    blocks: Any
    columns: ColumnMap
    stats: DatasetStats

    @property
    def num_partitions(self) -> int:
        return len(self.stats.rows_per_partition)

    def release(self) -> None:
        self.blocks.unpersist()


def prepare(dataset: Dataset, columns: ColumnMap, num_partitions: int, what: str = "training data") -> PreparedData:
    """Validate and pack ``dataset`` into ``num_partitions`` cached partitions.

    Raises :class:`InputError` (and frees the cache) when the data cannot be
    trained on, before any training starts.
    """
    from pyspark import StorageLevel

    slots = [b.slot for b in columns.bindings]
    if dataset.table is not None:
        blocks = _pack_local(dataset, columns, num_partitions, slots)
    else:
        from pyspark.sql import functions as F

        frame = dataset.frame.select(*[F.col(f"`{c}`") for c in columns.columns])
        if frame.rdd.getNumPartitions() != num_partitions:
            frame = frame.repartition(num_partitions)
        packed = frame.mapInArrow(lambda it: pack_batches(columns, it), packed_schema(columns))
        blocks = packed.rdd.map(lambda r: _block(r.asDict(), slots))
    blocks = blocks.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        per_partition = blocks.mapPartitionsWithIndex(_partition_stats).collect()
    except Exception as exc:  # noqa: BLE001 - translated, never swallowed
        blocks.unpersist()
        raise worker_error(exc, f"reading the {what}") from None
    stats = _combine(per_partition, columns, num_partitions)
    prepared = PreparedData(blocks, columns, stats)
    try:
        check(stats, columns, what)
    except InputError:
        prepared.release()
        raise
    return prepared


def _pack_local(dataset: Dataset, columns: ColumnMap, num_partitions: int, slots: list[str]) -> Any:
    """Pack driver-side data on the driver, one contiguous slice per partition.

    The rows are on the driver already and must be shipped once anyway;
    packing them here skips a round trip through Spark's row format.
    """
    from pyspark.sql import SparkSession

    table = dataset.table.select(columns.columns).combine_chunks()
    n = table.num_rows
    per_part = -(-n // num_partitions) if n else 0
    partitions = []
    for p in range(num_partitions):
        lo, hi = min(n, p * per_part), min(n, (p + 1) * per_part)
        batches = table.slice(lo, hi - lo).to_batches(max_chunksize=_BLOCK_ROWS)
        partitions.append([_block(row, slots) for packed in pack_batches(columns, iter(batches))
                           for row in packed.to_pylist()])
    sc = SparkSession.getActiveSession().sparkContext
    return sc.parallelize(partitions, num_partitions).flatMap(lambda blocks: blocks)


_BLOCK_ROWS = 10_000


def _block(row: dict, slots: list[str]) -> tuple:
    stats = {k: v for k, v in row.items() if k not in slots}
    return row["rows"], tuple(bytes(row[s]) for s in slots), stats


def _partition_stats(index: int, blocks: Iterator[tuple]) -> Iterator[dict]:
    merged: dict[str, Any] = {"pid": index, "rows": 0, "problem": None}
    for rows, _, stats in blocks:
        merged["rows"] += rows
        merged["problem"] = merged["problem"] or stats["problem"]
        for key, value in stats.items():
            if key in ("rows", "problem") or value is None:
                continue
            if key.endswith("_min"):
                merged[key] = value if merged.get(key) is None else min(merged[key], value)
            elif key.endswith("_max"):
                merged[key] = value if merged.get(key) is None else max(merged[key], value)
            else:
                merged[key] = merged.get(key, 0) + value
    yield merged


def _combine(rows: list[dict], columns: ColumnMap, num_partitions: int) -> DatasetStats:
    counts = [0] * num_partitions
    problem = None
    per_binding = {b.slot: BindingStats() for b in columns.bindings}
    for r in sorted(rows, key=lambda r: r["pid"]):
        if r["pid"] < num_partitions:
            counts[r["pid"]] = int(r["rows"] or 0)
        problem = problem or r["problem"]
        for b in columns.bindings:
            s = per_binding[b.slot]
            s.nonfinite += int(r.get(f"{b.slot}_nonfinite") or 0)
            s.nonint += int(r.get(f"{b.slot}_nonint") or 0)
            lo, hi = r.get(f"{b.slot}_min"), r.get(f"{b.slot}_max")
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
                f"In the {what}, {b.described} holds {s.nonint} non-integer values, but output "
                f"{b.name!r} has {b.classes} units, so labels must be class ids 0..{b.classes - 1}."
            )
        if s.min < 0 or s.max >= b.classes:
            raise InputError(
                f"In the {what}, {b.described} ranges from {s.min:g} to {s.max:g}, but output "
                f"{b.name!r} has {b.classes} units, so class ids must lie in 0..{b.classes - 1}. "
                "Re-index the labels (e.g. StringIndexer) or widen the output layer."
            )
    elif b.unit_interval and (s.min < 0 or s.max > 1):
        raise InputError(
            f"In the {what}, {b.described} ranges from {s.min:g} to {s.max:g}, but output "
            f"{b.name!r} is trained with binary crossentropy, which needs labels in [0, 1]."
        )


def read_partition(columns: ColumnMap, blocks: Iterator[tuple]) -> tuple[list[np.ndarray], int]:
    """Executor side: decode a packed partition into one array per binding."""
    parts: list[list[np.ndarray]] = [[] for _ in columns.bindings]
    shapes = [tuple(-1 if d is None else d for d in b.shape) for b in columns.bindings]
    rows = 0
    for n, blobs, _ in blocks:
        for i, (b, blob) in enumerate(zip(columns.bindings, blobs)):
            parts[i].append(np.frombuffer(blob, dtype=b.dtype).reshape((n, *shapes[i])))
        rows += n
    arrays = []
    for b, chunks in zip(columns.bindings, parts):
        if not chunks:
            arrays.append(np.zeros((0, *[0 if d is None else d for d in b.shape]), dtype=b.dtype))
        else:
            arrays.append(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))
    return arrays, rows
