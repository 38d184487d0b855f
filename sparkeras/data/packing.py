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

import itertools
import logging
import os
import shutil
import tempfile
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from sparkeras.data.columns import FEATURE, LABEL, WEIGHT, ColumnMap, TensorBinding
from sparkeras.data.label_mix import SKEWED, label_moments, label_skew
from sparkeras.data.sources import Dataset
from sparkeras.errors import InputError, worker_error

logger = logging.getLogger(__name__)


def pack_batch(columns: ColumnMap, batch: pa.RecordBatch) -> tuple[list[np.ndarray | None], dict[str, Any]]:
    """Convert one Arrow batch to one array per binding, plus its statistics.

    The statistics are what :func:`check` needs: the row count, the first
    malformed column, and per binding the NaN/inf count, the non-integer
    count (labels) and the range of the finite values.
    """
    stats: dict[str, Any] = {"rows": batch.num_rows, "problem": None}
    arrays: list[np.ndarray | None] = []
    for b in columns.bindings:
        converted = b.to_numpy(batch)
        if converted.problem and stats["problem"] is None:
            stats["problem"] = converted.problem
        arrays.append(converted.values)
        stats.update(_value_stats(b, converted.raw))
    return arrays, stats


def _value_stats(b: TensorBinding, raw: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = dict(zip(_stat_names(b), (0, 0, None, None)))
    if raw is None or raw.size == 0:
        return out
    if b.role == LABEL:
        out.update(label_moments(b.slot, b.classes, raw))
    good = raw
    if raw.dtype.kind == "f":
        finite = np.isfinite(raw)
        bad = int(raw.size - np.count_nonzero(finite))
        out[f"{b.slot}_nonfinite"] = bad
        if bad:
            good = raw[finite]
        if (b.role == LABEL or np.dtype(b.dtype).kind == "i") and good.size:
            out[f"{b.slot}_nonint"] = int(np.count_nonzero(good != np.round(good)))
    if good.size:
        out[f"{b.slot}_min"], out[f"{b.slot}_max"] = float(good.min()), float(good.max())
    return out


BLOCK_BYTES = 4 << 20


def block_rows(columns: ColumnMap) -> int:
    """Rows per packed block: about ``BLOCK_BYTES`` of model inputs and labels.

    Each block is one value in the executor's JVM (a binary cell, then a
    cached RDD element), copied a few times on its way. With Arrow's
    10,000-row batches, 784 floats per row made 31 MB blocks, and executors
    with a 512 MB heap died of ``OutOfMemoryError`` packing a dataset only
    1.25 times their heap (``bench/memory.py``). 4 MB blocks keep those
    copies small beside any heap Spark accepts.
    """
    per_row = sum((b.size or 1) * np.dtype(b.dtype).itemsize for b in columns.bindings)
    return max(1, BLOCK_BYTES // max(1, per_row))


def pack_batches(columns: ColumnMap, batches: Iterator[pa.RecordBatch],
                 files: str | None = None) -> Iterator[tuple]:
    """Executor side: packed blocks of at most :func:`block_rows` rows each.

    A block is ``(rows, (blob per binding...), stats)``. A blob is the raw
    bytes of the block, or the path of a ``.npy`` file in ``files`` when
    the workers can memory-map it (see :func:`_memory_map`).
    """
    if files is not None:
        yield from _pack_into_files(columns, batches, files)
        return
    rows = block_rows(columns)
    for whole in batches:
        for start in range(0, whole.num_rows, rows):
            arrays, stats = pack_batch(columns, whole.slice(start, rows))
            blobs = tuple(_blob(values, files, uuid.uuid4().hex) for values in arrays)
            yield stats["rows"], blobs, stats


def _pack_into_files(columns: ColumnMap, batches: Iterator[pa.RecordBatch], files: str) -> Iterator[tuple]:
    """Local mode: the whole partition as one block, one ``.npy`` file per binding, written as batches come.

    Why one file. In the JVM a block is then only its paths, so the 4 MB
    cap of :func:`block_rows` has nothing to protect; and a partition of one
    block is memory-mapped as it is, where 24 blocks (94 MB of 784 floats)
    had to be joined into fresh memory, 130-290 ms in each worker's first
    task of a fit (:func:`read_partition`).
    """
    stats: list[tuple] = []
    writers: list[_NpyFile] | None = None
    failed = False
    rows = block_rows(columns)  # converted (and images decoded) a block at a time, as on a cluster
    for whole in batches:
        for start in range(0, whole.num_rows, rows):
            arrays, batch_stats = pack_batch(columns, whole.slice(start, rows))
            stats.append((batch_stats["rows"], None, batch_stats))
            failed = failed or bool(batch_stats["problem"]) or any(values is None for values in arrays)
            if failed:
                continue  # check() reports the problem before anything reads the files
            if writers is None:
                writers = [_NpyFile(os.path.join(files, f"{uuid.uuid4().hex}.npy"), values) for values in arrays]
            for writer, values in zip(writers, arrays):
                writer.append(values)
    if not stats:
        return
    merged = next(_partition_stats(0, iter(stats)))
    merged.pop("pid")
    paths = tuple(writer.close() for writer in writers) if writers else tuple("" for _ in columns.bindings)
    yield merged["rows"], paths, merged


class _NpyFile:
    """A ``.npy`` file written in row chunks, its header (which holds the row count) written last.

    The header takes a fixed 128 bytes, so the data starts 64-byte aligned,
    as ``np.save`` aligns it and TensorFlow needs it when it shares the
    memory-mapped array (:func:`sparkeras.worker.local_steps.shared_tensor`).
    """

    HEADER = 128

    def __init__(self, path: str, first: np.ndarray) -> None:
        self.path, self.dtype, self.row_shape, self.rows = path, first.dtype, first.shape[1:], 0
        self._file = open(path, "wb")
        self._file.write(b"\0" * self.HEADER)

    def append(self, values: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(values, dtype=self.dtype).data)
        self.rows += len(values)

    def close(self) -> str:
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                       "shape": (self.rows, *self.row_shape)})
        magic = b"\x93NUMPY\x01\x00"
        text = header.ljust(self.HEADER - len(magic) - 2 - 1) + "\n"
        if len(magic) + 2 + len(text) != self.HEADER:
            raise ValueError(f"a .npy header of {len(text)} characters does not fit in {self.HEADER} bytes")
        self._file.seek(0)
        self._file.write(magic + len(text).to_bytes(2, "little") + text.encode("latin1"))
        self._file.close()
        return self.path


def _stat_names(b: TensorBinding) -> list[str]:
    return [f"{b.slot}_nonfinite", f"{b.slot}_nonint", f"{b.slot}_min", f"{b.slot}_max"]


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
    label_skew: float = 0.0  # how much the partitions' label mixes differ (sparkeras.data.label_mix)

    @property
    def rows(self) -> int:
        return sum(self.rows_per_partition)


@dataclass
class PreparedData:
    """Packed, cached, validated data, ready for training, evaluation or prediction.

    ``blocks`` is an RDD of ``(rows, (blob per binding...), stats)`` tuples,
    where a blob is the raw bytes of the block or, in local mode, the path of
    a ``.npy`` file in ``files`` that the workers memory-map.
    """

    blocks: Any
    columns: ColumnMap
    stats: DatasetStats
    files: str | None = None
    kept: bool = False  # kept for the next fit of the same cached DataFrame (sparkeras.data.reuse)
    lease: Any = None  # this fit's use of kept data (sparkeras.data.reuse.Lease)

    @property
    def num_partitions(self) -> int:
        return len(self.stats.rows_per_partition)

    def release(self) -> None:
        """Done with it: free it, unless it is kept for a refit."""
        if self.lease is not None:
            self.lease.release()
        elif not self.kept:
            self.free()

    def free(self) -> None:
        self.blocks.unpersist()
        if self.files is not None:
            shutil.rmtree(self.files, ignore_errors=True)


def prepare(dataset: Dataset, columns: ColumnMap, num_partitions: int, what: str = "training data",
            balance: bool = False) -> PreparedData:
    """Validate and pack ``dataset`` into ``num_partitions`` partitions.

    With ``balance``, Spark data whose partitions turn out uneven (the
    largest more than 20% above an even share, as when Spark cannot split a
    big Parquet row group) is packed again after a ``repartition``: in a
    synchronous fit the largest partition sets the pace of every worker.

    A cached DataFrame fitted again unchanged is not packed again: its
    packing is kept (:mod:`sparkeras.data.reuse`).

    Raises :class:`InputError` (and frees what was packed) when the data
    cannot be trained on, before any training starts.
    """
    def pack() -> PreparedData:
        packed = _prepare_spark(dataset, columns, num_partitions, what)
        if balance and (_uneven(packed.stats.rows_per_partition) or _unmixed(packed.stats)):
            packed.free()
            packed = _prepare_spark(dataset, columns, num_partitions, what, repartition=True)
        return packed

    if dataset.table is not None:
        prepared = _prepare_local(dataset, columns, num_partitions)
        if balance and _unmixed(prepared.stats):
            prepared.free()
            prepared = _prepare_local(dataset, columns, num_partitions, dealt=True)
    elif dataset.pairs is not None:  # made for this fit: no refit can name it, so nothing to keep
        prepared = pack()
    else:
        from sparkeras.data.reuse import PACKED

        prepared = PACKED.get(dataset.frame, columns, num_partitions, balance, pack)
    try:
        check(prepared.stats, columns, what)
    except InputError:
        prepared.release()
        raise
    return prepared


def _uneven(rows_per_partition: list[int]) -> bool:
    even = -(-sum(rows_per_partition) // len(rows_per_partition))
    return max(rows_per_partition) > 1.2 * even


def _unmixed(stats: DatasetStats) -> bool:
    """Whether the partitions hold different mixes of labels, so each worker would learn from a few of them."""
    if stats.label_skew <= SKEWED:
        return False
    logger.info("The training data's partitions hold different mixes of labels (effect size %.2f), as data sorted or "
                "written by label does; its rows are dealt across the %d workers again, so each trains on all of "
                "them. balance_partitions=False keeps the partitions as they are.",
                stats.label_skew, len(stats.rows_per_partition))
    return True


def _prepare_spark(dataset: Dataset, columns: ColumnMap, num_partitions: int, what: str,
                   repartition: bool = False) -> PreparedData:
    """Pack on the executors and cache; one Spark job gathers the statistics.

    In local mode the executors write the packed blocks as ``.npy`` files
    that later tasks memory-map, and Spark caches only their paths; on a
    cluster Spark caches the blocks themselves (memory, spilling to disk).
    A bare scan of local Parquet files is read by the packing tasks with
    pyarrow, in equal row shares (:mod:`sparkeras.data.parquet`).
    """
    from pyspark import StorageLevel

    try:  # planning the packing may run Spark jobs already (a DataFrame made from a Python list, say)
        if dataset.pairs is not None:
            packed = _packed_pairs(dataset.pairs, columns, num_partitions, repartition)
        else:
            packed = _packed_frame(dataset.frame, columns, num_partitions, repartition)
    except Exception as exc:  # noqa: BLE001 - translated, never swallowed
        raise worker_error(exc, f"reading the {what}") from None
    files = packed.files
    blocks = packed.rdd.persist(StorageLevel.MEMORY_AND_DISK)
    prepared = PreparedData(blocks, columns, DatasetStats([], None), files)
    try:
        per_partition = blocks.mapPartitionsWithIndex(_partition_stats).collect()
    except Exception as exc:  # noqa: BLE001 - translated, never swallowed
        prepared.release()
        raise worker_error(exc, f"reading the {what}") from None
    prepared.stats = _combine(per_partition, columns, num_partitions)
    return prepared


@dataclass(frozen=True)
class _Packing:
    """The RDD of packed blocks, not computed yet, and the folder its local-mode files go to."""

    rdd: Any
    files: str | None


def _packed_frame(frame: Any, columns: ColumnMap, num_partitions: int, repartition: bool) -> _Packing:
    from pyspark.sql import functions as F

    from sparkeras.data.arrow import arrow_batches
    from sparkeras.data.parquet import parquet_shares, read_shares

    columns = columns.opening_local_files(frame)
    frame = frame.select(*[F.col(f"`{c}`") for c in columns.columns])
    files = _packing_folder(frame.sparkSession)
    rows = block_rows(columns)
    shares = parquet_shares(frame, num_partitions, dealt_rows=rows if repartition else 0)
    if shares is not None:
        names = list(columns.columns)
        return _Packing(frame.sparkSession.sparkContext.parallelize(shares, num_partitions).mapPartitions(
            lambda it: pack_batches(columns, read_shares(names, rows, it), files)), files)
    if repartition or frame.rdd.getNumPartitions() != num_partitions:
        frame = frame.repartition(num_partitions)
    messages, read = arrow_batches(frame)
    return _Packing(messages.mapPartitions(lambda it: pack_batches(columns, read(it), files)), files)


def _packed_pairs(pairs: Any, columns: ColumnMap, num_partitions: int, repartition: bool) -> _Packing:
    """An RDD's pairs packed by the tasks that read them (:class:`sparkeras.data.sources.PairRDD`)."""
    from sparkeras.session import get_spark

    rdd, layout, rows = pairs.rdd, pairs.layout, block_rows(columns)
    if repartition or rdd.getNumPartitions() != num_partitions:
        rdd = rdd.repartition(num_partitions)
    files = _packing_folder(get_spark())
    return _Packing(rdd.mapPartitionsWithIndex(
        lambda index, it: pack_batches(columns, layout.batches(it, rows, index), files)), files)


def _prepare_local(dataset: Dataset, columns: ColumnMap, num_partitions: int, dealt: bool = False) -> PreparedData:
    """Pack driver-side data on the driver, one contiguous slice per partition (``dealt``: every n-th row).

    The rows are on the driver already, so they are converted and checked
    there, with no Spark job. How they reach the workers depends on where
    the workers run:

    - in local mode (``local[n]``; see :func:`_memory_map`) the Python workers share the driver's
      disk, so each slice is written once as a ``.npy`` file in a private
      temporary directory and the workers memory-map it: no copy through the
      JVM, and every epoch reads it from the page cache;
    - on a cluster each slice is shipped once as raw bytes and cached by
      Spark (memory, spilling to disk) when the first epoch reads it.
    """
    from pyspark import StorageLevel

    from sparkeras.session import get_spark

    spark = get_spark()
    sc = spark.sparkContext
    files = _packing_folder(spark)
    table = dataset.table.select(columns.columns).combine_chunks()
    n = table.num_rows
    per_part = -(-n // num_partitions) if n else 0
    partitions: list[list[tuple]] = []
    for p in range(num_partitions):
        lo, hi = min(n, p * per_part), min(n, (p + 1) * per_part)
        rows = table.take(np.arange(p, n, num_partitions)) if dealt else table.slice(lo, hi - lo)
        if rows.num_rows == 0:
            partitions.append([])
            continue
        arrays, stats = pack_batch(columns, rows.combine_chunks().to_batches()[0])
        blobs = tuple(_blob(values, files, f"p{p}-{b.slot}") for b, values in zip(columns.bindings, arrays))
        partitions.append([(stats["rows"], blobs, stats)])
    per_partition = [next(_partition_stats(p, iter(blocks))) for p, blocks in enumerate(partitions)]
    blocks = sc.parallelize(partitions, num_partitions).flatMap(lambda part: part)
    if files is None:
        blocks = blocks.persist(StorageLevel.MEMORY_AND_DISK)
    return PreparedData(blocks, columns, _combine(per_partition, columns, num_partitions), files)


def pack_on_driver(dataset: Dataset, columns: ColumnMap, what: str) -> list[np.ndarray]:
    """Driver-side rows as the arrays a task reads from their packed partition, checked as :func:`prepare` checks.

    For data the driver scores itself
    (:func:`sparkeras.inference.batch.scored_on_driver`): one
    :func:`pack_batch` over every row, so the same conversion and the same
    errors as a packing job, with no Spark job (and no session).
    """
    table = dataset.table.select(columns.columns).combine_chunks()
    rows = table.num_rows
    batches = table.to_batches()  # one, or none for no rows
    arrays, stats = pack_batch(columns, batches[0]) if batches else ([], {"rows": 0, "problem": None})
    check(_combine(list(_partition_stats(0, iter([(rows, (), stats)]))), columns, 1), columns, what)
    return [values.reshape((rows, *shape)) for values, shape in zip(arrays, _row_shapes(columns))]


MEMORY_MAP_CONF = "spark.sparkeras.data.memoryMap"


def _memory_map(spark: Any) -> bool:
    """Whether workers can map driver-written files: Spark runs its executor in the driver.

    True for ``local`` and ``local[n]`` masters unless the ``MEMORY_MAP_CONF``
    setting is ``false`` (say, when the temporary directory is too small).
    """
    from sparkeras.session import is_local

    if spark.conf.get(MEMORY_MAP_CONF, "auto").strip().lower() == "false":
        return False
    return is_local(spark.sparkContext.master)


def _packing_folder(spark: Any) -> str | None:
    """A new folder for a local-mode packing's ``.npy`` files, or ``None`` on a cluster (Spark caches the blocks).

    It lies in the driver's own Spark scratch folder (``SparkFiles``' root,
    under ``spark.local.dir``), which the JVM deletes when the SparkContext
    stops or the JVM exits. The files are also removed when their packing is
    dropped, or at the Python driver's exit; but a driver killed with
    ``SIGKILL`` (an out-of-memory kill, a notebook kernel restarted) runs
    neither, and under ``/tmp`` they stayed behind: as large as the data,
    188 MB for 60,000 x 784 floats. The JVM outlives such a driver: it
    sees its stdin close, exits normally and runs its shutdown hooks.
    """
    if not _memory_map(spark):
        return None
    try:
        root = str(spark.sparkContext._jvm.org.apache.spark.SparkFiles.getRootDirectory())
    except Exception:  # noqa: BLE001 - no driver scratch folder: the system's temporary one
        root = None
    return tempfile.mkdtemp(prefix="sparkeras-data-", dir=root if root and os.path.isdir(root) else None)


def _blob(values: np.ndarray | None, files: str | None, name: str) -> bytes | str:
    if values is None:  # the batch has a problem; check() reports it before anything reads this
        return b"" if files is None else ""
    if files is None:
        return values.tobytes()
    path = os.path.join(files, f"{name}.npy")
    np.save(path, values, allow_pickle=False)
    return path


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
    ordered = [r for r in sorted(rows, key=lambda r: r["pid"]) if r["pid"] < num_partitions]
    skew = label_skew(ordered, [b.slot for b in columns.bindings if b.role == LABEL]) if problem is None else 0.0
    return DatasetStats(counts, problem, per_binding, skew)


def check(stats: DatasetStats, columns: ColumnMap, what: str) -> None:
    """Turn the statistics into a clear :class:`InputError`, or pass."""
    if stats.problem:
        raise InputError(f"In the {what}: {stats.problem}")
    if stats.rows == 0:
        raise InputError(f"The {what} is empty (0 rows); check the path or the filters that produced it.")
    for b in columns.bindings:
        s = stats.bindings[b.slot]
        if s.nonfinite:
            use = "training" if what == "training data" else "scoring"
            raise InputError(f"In the {what}, {b.described} holds {s.nonfinite} NaN or infinite values; "
                             f"drop or fill them (e.g. df.na.drop / df.na.fill) before {use}.")
        _check_labels(b, s, what)
        _check_integer_features(b, s, what)
        _check_weights(b, s, what)


def _check_weights(b: TensorBinding, s: BindingStats, what: str) -> None:
    """Row weights scale the loss, so they must be >= 0, and not all 0 (nothing would be learned)."""
    if b.role != WEIGHT or s.min is None:
        return
    if s.min < 0:
        raise InputError(f"In the {what}, {b.described} holds negative weights (down to {s.min:g}); row weights "
                         "must be >= 0. Fix or filter those rows, e.g. with F.greatest(col, F.lit(0.0)).")
    if s.max == 0:
        raise InputError(f"In the {what}, every row of {b.described} weighs 0, so no row would count; "
                         "check the weight column.")


def _check_integer_features(b: TensorBinding, s: BindingStats, what: str) -> None:
    """An integer model input (ids) takes whole numbers in its type's range, not fractions cut off silently."""
    if b.role != FEATURE or np.dtype(b.dtype).kind != "i" or s.min is None:
        return
    if s.nonint:
        raise InputError(f"In the {what}, {b.described} holds {s.nonint} non-integer values, but model input "
                         f"{b.name!r} takes {b.dtype}; cast or round the column, or give the input dtype='float32'.")
    info = np.iinfo(b.dtype)
    if s.min < info.min or s.max > info.max:
        raise InputError(f"In the {what}, {b.described} ranges from {s.min:.0f} to {s.max:.0f}, beyond model input "
                         f"{b.name!r}'s {b.dtype}; give the input dtype='int64'.")


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


ALIGNMENT = 64  # bytes: what TensorFlow needs to use an array's memory as a tensor's (EIGEN_MAX_ALIGN_BYTES)


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an :data:`ALIGNMENT`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def read_partition(columns: ColumnMap, blocks: Iterator[tuple]) -> tuple[list[np.ndarray], int]:
    """Executor side: decode a packed partition into one array per binding.

    Byte blobs are wrapped without a copy; file blobs are memory-mapped
    copy-on-write (writable for this process, never written back). A
    partition of several blocks is joined once into an aligned array, so
    the training loop can hand that memory to the backend without another
    copy (:func:`sparkeras.worker.local_steps.shared_tensor`).

    Given :class:`CountedBlocks` (the training and evaluation tasks of
    :func:`sparkeras.training.run_partitions`), byte blocks are copied into
    their final arrays as they arrive (:func:`_read_in_place`).

    A partition of files (local mode) is read once per Python worker, not
    once per task: its arrays are kept for the next task that reads the same
    files (the next epoch, or the next window or evaluation), the last
    :data:`KEPT_PARTITIONS` of them. When local-mode partitions were still
    packed as 4 MB blocks, joining the 24 blocks of a 94 MB partition took
    20-130 ms in every epoch's task (fresh memory to fault in, then a copy),
    against 370-590 ms for the epoch's training (``bench/time_to_accuracy.py``'s
    mlp task); a partition is now one file per binding
    (:func:`_pack_into_files`), and keeping its mapping also spares each task
    the page faults of mapping it again. The files of a packing are never
    rewritten (each packing has a new folder), so their paths name their
    contents. Callers never write into the arrays.
    """
    counted = getattr(blocks, "rows", None)
    blocks = iter(blocks)
    first = next(blocks, None)
    if first is not None and counted is not None and counted > first[0] and not isinstance(first[1][0], str):
        return _read_in_place(columns, first, blocks, counted)
    blocks = [] if first is None else [first, *blocks]
    key = _files_key(columns, blocks)
    if key is not None and key in _kept_partitions:
        _kept_partitions.move_to_end(key)
        arrays, rows = _kept_partitions[key]
        return list(arrays), rows
    parts: list[list[np.ndarray]] = [[] for _ in columns.bindings]
    shapes = _row_shapes(columns)
    rows = 0
    for n, blobs, _ in blocks:
        for i, (b, blob) in enumerate(zip(columns.bindings, blobs)):
            if isinstance(blob, str):
                parts[i].append(np.asarray(np.load(blob, mmap_mode="c", allow_pickle=False)))
            else:
                parts[i].append(np.frombuffer(blob, dtype=b.dtype).reshape((n, *shapes[i])))
        rows += n
    arrays = []
    for b, chunks in zip(columns.bindings, parts):
        if not chunks:
            arrays.append(np.zeros((0, *[0 if d is None else d for d in b.shape]), dtype=b.dtype))
        elif len(chunks) == 1:
            arrays.append(chunks[0])
        else:
            joined = aligned_empty((rows, *chunks[0].shape[1:]), chunks[0].dtype)
            arrays.append(np.concatenate(chunks, out=joined))
    if key is not None:
        _kept_partitions[key] = (arrays, rows)
        while len(_kept_partitions) > KEPT_PARTITIONS:
            _kept_partitions.popitem(last=False)
    return list(arrays), rows


def _row_shapes(columns: ColumnMap) -> list[tuple[int, ...]]:
    """Each binding's per-row shape for ``reshape``, an unknown dimension as ``-1``."""
    return [tuple(-1 if d is None else d for d in b.shape) for b in columns.bindings]


class CountedBlocks:
    """A task's packed blocks, with the partition's row count that the driver has from packing them.

    :func:`read_partition` then copies Spark's cached blocks straight into
    arrays of the final size as they arrive, instead of holding them all
    and joining them after.
    """

    def __init__(self, blocks: Iterator[tuple], rows: int | None) -> None:
        self._blocks, self.rows = iter(blocks), rows

    def __iter__(self) -> "CountedBlocks":
        return self

    def __next__(self) -> tuple:
        return next(self._blocks)


def _read_in_place(columns: ColumnMap, first: tuple, blocks: Iterator[tuple],
                   counted: int) -> tuple[list[np.ndarray], int]:
    """Byte blocks (Spark's cache, on a cluster) copied into aligned arrays of ``counted`` rows as they arrive.

    Why. Holding every block of a partition and then joining them kept the
    partition twice in the Python worker's memory (the blocks and the joined
    copy). Copied in as they come, each block's bytes are freed before the
    next arrives. On a standalone cluster of two hosts, reading a 94 MB
    partition took 0.15-0.30 s against 0.19-0.38 s, with the worker's peak
    resident memory 76 MB lower; ``bench/memory.py`` put each executor's
    peak 110-550 MB lower (BENCHMARKS.md). Should the blocks hold
    other than ``counted`` rows (a lost cached block that Spark computed
    again differently), the rows read are returned all the same.
    """
    shapes = _row_shapes(columns)
    arrays: list[np.ndarray] = []
    rows = 0
    for n, blobs, _ in itertools.chain([first], blocks):
        values = [np.frombuffer(blob, dtype=b.dtype).reshape((n, *shape))
                  for b, blob, shape in zip(columns.bindings, blobs, shapes)]
        if not arrays:
            arrays = [aligned_empty((counted, *v.shape[1:]), v.dtype) for v in values]
        if rows + n > len(arrays[0]):  # more rows than counted: grow, keeping the alignment
            grown = [aligned_empty((max(2 * len(a), rows + n), *a.shape[1:]), a.dtype) for a in arrays]
            for g, a in zip(grown, arrays):
                g[:rows] = a[:rows]
            arrays = grown
        for a, v in zip(arrays, values):
            a[rows:rows + n] = v
        rows += n
    return [a[:rows] for a in arrays], rows


KEPT_PARTITIONS = 2  # a worker's training and validation partitions
_kept_partitions: "OrderedDict[tuple, tuple[list[np.ndarray], int]]" = OrderedDict()


def _files_key(columns: ColumnMap, blocks: list[tuple]) -> tuple | None:
    """The paths a partition's arrays come from, or ``None`` when any part is bytes (Spark's cache)."""
    paths = tuple(tuple(blob for _, blob in zip(columns.bindings, blobs)) for _, blobs, _ in blocks)
    if not paths or not all(isinstance(p, str) and p for block in paths for p in block):
        return None
    return paths
