"""Local Parquet files packed from their pages by the training workers, not through the JVM's rows.

A DataFrame read from Parquet reaches the Python workers as Arrow batches
that the JVM builds value by value (``ArrowWriter``; Java Flight Recorder
puts ``Float4Vector.setSafe`` on top). For 60,000 rows of 784 floats that
took 2-5 s of JVM CPU per packing, from Spark's cache or not; pyarrow
decodes the same files in about 0.3 s. Petastorm, which Horovod on Spark
trains from, reads Parquet with pyarrow the same way. Measured
(BENCHMARKS.md, "Parquet packed by the workers"): a cold fit's packing on
``local-cluster`` 6.1-6.5 s -> 4.1-4.8 s, a warm refit of an uncached
Parquet DataFrame 2.0-3.0 s -> 0.7-1.0 s.

So when the DataFrame a fit packs is exactly a Parquet scan (the columns
selected, nothing filtered, joined or computed; cached or not), each
packing task reads its share of the files' rows with pyarrow, and the
batches go through the same :func:`sparkeras.data.packing.pack_batches` as
Spark's. Spark still lists the files (its file index, with the reader's
options), and the data are Spark's: the same files, the same rows, the same
Arrow types. The shares are contiguous row ranges of equal size, so every
worker of a synchronous fit gets the same number of rows.

Spark reads the data itself (nothing changes) unless all of these hold:

- the session is a classic one (Spark Connect has no plan to look at) and
  ``spark.sparkeras.data.readParquet`` is not ``false``;
- the plan is a Parquet relation under column selections only, read by
  path (its files already listed by Spark; a catalog table's partitions
  are not listed just to decide);
- every file is on the local file system (``file:``), at most
  :data:`MAX_FILES` of them, and each is still the file Spark listed (size
  and modification time), so a cached DataFrame whose files were rewritten
  since is read from Spark's cache;
- each file's footer reads, and its Arrow types for the selected columns
  are those Spark reads (list item names and nullability aside).

``file:`` paths must exist wherever Spark's executors read them, so a
worker can read them there too. Other stores (HDFS, S3) go through Spark,
whose file systems carry the user's credentials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

import pyarrow as pa

from sparkeras.log import logger

READ_CONF = "spark.sparkeras.data.readParquet"
RUNS_PER_SHARE = 64  # dealt shares: each holds rows from 64 places or more, spread over the whole data
MAX_FILES = 512  # the driver reads each file's listing (Py4J) and footer: 0.6-1.2 ms a file (200 files: 0.11-0.25 s)
_PARQUET = "org.apache.spark.sql.execution.datasources.parquet.ParquetFileFormat"


@dataclass(frozen=True)
class RowSlice:
    """Rows ``start:stop`` of one row group of one file."""

    path: str
    row_group: int
    start: int
    stop: int


def parquet_shares(frame: Any, num_partitions: int, dealt_rows: int = 0) -> list[list[RowSlice]] | None:
    """Per partition, the row slices it reads; ``None`` when Spark must read ``frame`` itself.

    The shares are contiguous row ranges, or with ``dealt_rows`` runs of
    rows dealt in turn (at most that many rows, and at least
    :data:`RUNS_PER_SHARE` runs to a share), so that each share holds rows
    from the whole of data sorted by label (:mod:`sparkeras.data.label_mix`). Each
    task then decodes every row group up to its last run in it, where
    Spark's ``repartition`` would send every row through the JVM and a
    shuffle: a cold fit of 60,000 sorted rows of 784 floats read from one
    file took 2.2 s more that way.
    """
    if frame.sparkSession.conf.get(READ_CONF, "auto").strip().lower() == "false":
        return None
    try:
        files = _scanned_files(frame)
        groups = _row_groups(files, frame) if files else None
    except Exception as exc:  # noqa: BLE001 - any doubt: Spark reads the data
        logger.debug("Spark reads the Parquet data: %s", exc)
        return None
    if groups is None:
        return None
    if not dealt_rows:
        return _split(groups, num_partitions)
    total = sum(rows for _, _, rows in groups)
    return _deal(groups, num_partitions, max(1, min(dealt_rows, total // (num_partitions * RUNS_PER_SHARE))))


def _scanned_files(frame: Any) -> list[tuple[str, int, int]] | None:
    """``(local path, size, modification ms)`` of each file, if ``frame`` is a bare Parquet scan."""
    jdf = getattr(frame, "_jdf", None)
    if jdf is None:
        return None
    node = jdf.queryExecution().analyzed()
    while node.nodeName() in ("Project", "SubqueryAlias"):
        if node.nodeName() == "Project":
            exprs = node.projectList()
            if not all(exprs.apply(i).getClass().getSimpleName() == "AttributeReference"
                       for i in range(exprs.size())):
                return None
        node = node.children().apply(0)
    if node.getClass().getSimpleName() != "LogicalRelation":
        return None
    relation = node.relation()
    if relation.getClass().getSimpleName() != "HadoopFsRelation" or relation.fileFormat().getClass().getName() != _PARQUET:
        return None
    if relation.location().getClass().getSimpleName() != "InMemoryFileIndex":
        return None  # a catalog table's index would list every partition here, only to count them
    statuses = relation.location().allFiles()
    if statuses.size() > MAX_FILES:
        return None
    files = []
    for i in range(statuses.size()):
        status = statuses.apply(i)
        uri = urlparse(str(status.getPath().toUri().toString()))
        if uri.scheme not in ("file", ""):
            return None
        files.append((unquote(uri.path), int(status.getLen()), int(status.getModificationTime())))
    return sorted(files)


def _row_groups(files: list[tuple[str, int, int]], frame: Any) -> list[tuple[str, int, int]] | None:
    """``(path, row group, rows)`` over all files, or ``None`` if a file changed or holds other types."""
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import to_arrow_schema

    wanted = to_arrow_schema(frame.schema)
    groups = []
    for path, size, modified in files:
        stat = os.stat(path)
        if stat.st_size != size or stat.st_mtime_ns // 1_000_000 != modified:
            return None
        meta = pq.read_metadata(path)
        have = meta.schema.to_arrow_schema()
        for field in wanted:
            index = have.get_field_index(field.name)
            if index < 0 or not _same_type(have.field(index).type, field.type):
                return None
        groups.extend((path, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups))
    return groups


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal Arrow types, whatever the list items' names (``element`` in Parquet, ``element`` or ``item`` in Spark)."""
    if pa.types.is_list(a) and pa.types.is_list(b):
        return _same_type(a.value_type, b.value_type)
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        return a.num_fields == b.num_fields and all(
            x.name == y.name and _same_type(x.type, y.type) for x, y in zip(a, b))
    return a == b


def _split(groups: list[tuple[str, int, int]], num_partitions: int) -> list[list[RowSlice]]:
    """Contiguous, equal row ranges (within one row) over the files in path order."""
    total = sum(rows for _, _, rows in groups)
    bounds = [total * p // num_partitions for p in range(num_partitions + 1)]
    shares: list[list[RowSlice]] = [[] for _ in range(num_partitions)]
    first = 0
    for path, group, rows in groups:
        for p in range(num_partitions):
            lo, hi = max(bounds[p], first), min(bounds[p + 1], first + rows)
            if hi > lo:
                shares[p].append(RowSlice(path, group, lo - first, hi - first))
        first += rows
    return shares


def _deal(groups: list[tuple[str, int, int]], num_partitions: int, run: int) -> list[list[RowSlice]]:
    """Runs of ``run`` rows over the files in path order, dealt to the partitions in turn."""
    shares: list[list[RowSlice]] = [[] for _ in range(num_partitions)]
    first = 0
    for path, group, rows in groups:
        for start in range(-(first % run), rows, run):  # a run may begin in the row group before
            lo, hi = max(start, 0), min(start + run, rows)
            shares[(first + start) // run % num_partitions].append(RowSlice(path, group, lo, hi))
        first += rows
    return shares


def read_shares(columns: list[str], batch_rows: int, shares: Iterator[list[RowSlice]]) -> Iterator[pa.RecordBatch]:
    """Executor side: the Arrow batches of one partition's slices, on this task's own thread.

    pyarrow's thread pool would use every core of the machine; the task
    uses the core Spark gave it.

    Why small batches, read page by page. ``batch_rows`` is one packed
    block's rows (4 MB), and ``pre_buffer=False`` reads a column chunk a
    page at a time: the memory of each batch is then reused for the next.
    Read in 10,000-row batches (31 MB each for 784 floats), a Python worker
    forked by Spark's daemon spent 0.3-1.5 s of system time faulting in new
    pages for 30,000 rows, against 0.04-0.18 s in 1,300-row batches (BENCHMARKS.md).
    """
    import pyarrow.parquet as pq

    for share in shares:
        for path in dict.fromkeys(piece.path for piece in share):  # each file opened once, in share order
            with pq.ParquetFile(path, pre_buffer=False) as source:
                pieces = [p for p in share if p.path == path]
                for group in dict.fromkeys(p.row_group for p in pieces):
                    yield from _slices(source, [p for p in pieces if p.row_group == group], columns, batch_rows)


def _slices(source: Any, pieces: list[RowSlice], columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of ``pieces`` (in row order, all of one row group), decoding the group once up to the last."""
    seen, stop = 0, max(p.stop for p in pieces)
    for batch in source.iter_batches(batch_size=batch_rows, row_groups=[pieces[0].row_group],
                                     columns=columns, use_threads=False):
        for piece in pieces:
            lo, hi = max(piece.start - seen, 0), min(piece.stop - seen, batch.num_rows)
            if hi > lo:
                yield batch.slice(lo, hi - lo)
        seen += batch.num_rows
        if seen >= stop:
            break
