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


def skip_undecodable(spark: Any, frame: Any, geometry: ImageGeometry) -> Any:
    """Leave out the files that cannot be decoded to ``geometry``, recording their paths.

    A ``mapInArrow`` that drops the rows, not a filter on a boolean Arrow UDF:
    with the UDF, a cached frame split by ``randomSplit`` and then fitted
    failed in the split's sort with ``UNABLE_TO_ACQUIRE_MEMORY ... got 0``
    (Spark 4.3, ``local[2]``); the same steps pass with ``mapInArrow``.
    """
    from pyspark.sql import functions as F

    skipped = spark.sparkContext.accumulator(frozenset(), SkippedFiles())

    def decodable(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            keep, bad = [], set()
            for p, data in zip(batch.column("path").to_pylist(), batch.column("image").to_pylist()):
                try:
                    decode_image(data, geometry)
                    keep.append(True)
                except Exception:  # noqa: BLE001 - any failure to decode is what is skipped
                    keep.append(False)
                    bad.add(p)
            if bad:
                skipped.add(frozenset(bad))
            yield batch.filter(pa.array(keep))

    kept = frame.mapInArrow(decodable, frame.schema)
    key = int(skipped.aid)
    _SKIPPED[key] = skipped
    metadata = dict(frame.schema["image"].metadata, skipped=key)
    return kept.withColumn("image", F.col("image").alias("image", metadata=metadata))


def skipped_paths(key: int) -> list[str]:
    """The sorted paths recorded by the accumulator ``key`` of this driver, ``[]`` for an unknown one."""
    accumulator = _SKIPPED.get(key)
    return [] if accumulator is None else sorted(accumulator.value)
