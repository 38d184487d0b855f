"""``read_images(..., on_error="skip")``: leaving out the files that cannot be decoded, and naming them.

Each file is decoded once as Spark reads it (to the size and channels asked
for, exactly as a fit will), inside a boolean Arrow UDF that the DataFrame
is filtered on. The paths of the files left out travel back to the driver in
a Spark accumulator, the channel Spark keeps for small results of tasks, and
:func:`skipped_paths` reads them.
"""

from __future__ import annotations

from typing import Any, Iterator, Tuple

import pyarrow as pa
from pyspark import AccumulatorParam

from sparkeras.images.decode import ImageGeometry, decode_image

_SKIPPED_KEPT = 1000
_SKIPPED: dict[int, Any] = {}


class SkippedFiles(AccumulatorParam):
    """Accumulates the paths of the files ``on_error='skip'`` left out.

    A set, so a task that Spark runs again (a retry, a second action on the
    same DataFrame) does not count a file twice; at most ``_SKIPPED_KEPT``
    paths are kept.
    """

    def zero(self, value: frozenset) -> frozenset:
        return frozenset()

    def addInPlace(self, a: frozenset, b: frozenset) -> frozenset:
        both = a | b
        return both if len(both) <= _SKIPPED_KEPT else frozenset(sorted(both)[:_SKIPPED_KEPT])


_SKIPPED: dict[int, Any] = {}


def skip_undecodable(spark: Any, frame: Any, geometry: ImageGeometry) -> Any:
    """Leave out the files that cannot be decoded to ``geometry``, recording their paths."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import arrow_udf

    skipped = spark.sparkContext.accumulator(frozenset(), SkippedFiles())

    def decodable(batches: Iterator[Tuple[pa.Array, pa.Array]]) -> Iterator[pa.Array]:
        for paths, images in batches:
            ok = []
            bad = set()
            for p, data in zip(paths.to_pylist(), images.to_pylist()):
                try:
                    decode_image(data, geometry)
                    ok.append(True)
                except Exception:  # noqa: BLE001 - any failure to decode is what is skipped
                    ok.append(False)
                    bad.add(p)
            if bad:
                skipped.add(frozenset(bad))
            yield pa.array(ok)

    check = arrow_udf(decodable, "boolean")
    kept = frame.filter(check(F.col("path"), F.col("image")))
    key = int(skipped.aid)
    _SKIPPED[key] = skipped
    metadata = dict(frame.schema["image"].metadata, skipped=key)
    return kept.withColumn("image", F.col("image").alias("image", metadata=metadata))



def skipped_paths(key: int) -> list[str]:
    """The sorted paths recorded by the accumulator ``key`` of this driver, ``[]`` for an unknown one."""
    accumulator = _SKIPPED.get(key)
    return [] if accumulator is None else sorted(accumulator.value)
