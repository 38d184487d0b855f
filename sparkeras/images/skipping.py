"""``read_images(..., on_error="skip")``: leaving out the files that cannot be decoded, and naming them.

Each file is decoded once as Spark reads it (to the size and channels asked
for, exactly as a fit will), in a ``mapInArrow`` that drops the files that
fail. The paths of the files left out travel back to the driver in
a Spark accumulator, the channel Spark keeps for small results of tasks, and
:func:`skipped_paths` reads them.
"""

from __future__ import annotations

from typing import Any, Iterator

import pyarrow as pa
from pyspark import AccumulatorParam

from sparkeras.images.decode import ImageGeometry, decode_image

SKIPPED_KEPT = 1000  # the most paths an accumulator keeps; past it, a count is a lower bound
_SKIPPED: dict[int, Any] = {}  # this driver's accumulators of skipped paths, by the key in the column's metadata


class SkippedFiles(AccumulatorParam):
    """Accumulates the paths of the files ``on_error='skip'`` left out.

    A set, so a task that Spark runs again (a retry, a second action on the
    same DataFrame) does not count a file twice; at most ``SKIPPED_KEPT``
    paths are kept.
    """

    def zero(self, value: frozenset) -> frozenset:
        return frozenset()

    def addInPlace(self, a: frozenset, b: frozenset) -> frozenset:
        both = a | b
        return both if len(both) <= SKIPPED_KEPT else frozenset(sorted(both)[:SKIPPED_KEPT])


def skip_undecodable(spark: Any, frame: Any, geometry: ImageGeometry, by_path: bool = False) -> Any:
    """Leave out the files that cannot be decoded to ``geometry``, recording their paths.

    A ``mapInArrow`` that drops the rows, not a filter on a boolean Arrow UDF:
    with the UDF, a cached frame split by ``randomSplit`` and then fitted
    failed in the split's sort with ``UNABLE_TO_ACQUIRE_MEMORY ... got 0``
    (Spark 4.3, ``local[2]``); the same steps pass with ``mapInArrow``.

    ``by_path``: ``frame`` is a local folder's listing
    (:mod:`sparkeras.images.listing`), whose ``image`` column reads each
    path's file. The filter then reads the files itself and passes the rows
    on without their bytes, and its ``path`` output is recorded as the
    listing's, so a fit or prediction downstream still opens the files in
    its own workers (:mod:`sparkeras.images.local_files`) instead of taking
    the bytes through the rows.
    """
    from pyspark.sql import functions as F

    from sparkeras.images.listing import file_bytes, record_paths
    from sparkeras.images.local_files import read_local_file

    skipped = spark.sparkContext.accumulator(frozenset(), SkippedFiles())

    def decodable(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            paths = batch.column("path").to_pylist()
            contents = map(read_local_file, paths) if by_path else batch.column("image").to_pylist()
            keep, bad = [], set()
            for p, data in zip(paths, contents):  # a file that cannot be read fails the task, named by the OS
                try:
                    decode_image(data, geometry)
                    keep.append(True)
                except Exception:  # noqa: BLE001 - any failure to decode is what is skipped
                    keep.append(False)
                    bad.add(p)
            if bad:
                skipped.add(frozenset(bad))
            yield batch.filter(pa.array(keep))

    key = int(skipped.aid)
    _SKIPPED[key] = skipped
    metadata = dict(frame.schema["image"].metadata, skipped=key)
    if not by_path:
        kept = frame.mapInArrow(decodable, frame.schema)
        return kept.withColumn("image", F.col("image").alias("image", metadata=metadata))
    others = [c for c in frame.columns if c != "image"]
    source = frame.select(*others)
    kept = source.mapInArrow(decodable, source.schema)
    record_paths(kept)
    image = file_bytes()(F.col("path")).alias("image", metadata=metadata)
    return kept.select("path", image, *[c for c in others if c != "path"])


def skipped_paths(key: int) -> list[str]:
    """The sorted paths recorded by the accumulator ``key`` of this driver, ``[]`` for an unknown one."""
    accumulator = _SKIPPED.get(key)
    return [] if accumulator is None else sorted(accumulator.value)
