"""A DataFrame's rows as Arrow record batches, in the Python workers that train.

``DataFrame.mapInArrow`` ran its function in Spark SQL's own pool of Python
workers, apart from the pool that runs RDD functions, which is where
training, evaluation and prediction run (the sessions :func:`sparkeras.get_spark`
starts now give both the same environment, and so one pool; a session of
the user's own may not). Packing the data with it
started a second set of Python processes: on a cold ``local[2]`` session
four Python workers and two daemons instead of two and one, and 3.8 s
instead of 2.4 s to pack 60,000 rows of 784 floats (the same blocks;
``bench/time_to_accuracy.py`` counts it in a cold fit's fixed cost).

Here the JVM converts the rows to Arrow, as ``toPandas`` does
(``Dataset.toArrowBatchRdd``, the columnar conversion behind
``collectAsArrowToPython``), and hands each batch's bytes to an RDD
function, which reads them back with the schema pyspark derives from the
same Spark types. Rows are never turned into Python objects, and the RDD
Python workers that read them are the ones the fit's tasks reuse.
"""

from __future__ import annotations

from typing import Any, Iterator

import pyarrow as pa

BATCH_ROWS_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


def arrow_batches(frame: Any) -> tuple[Any, "BatchReader"]:
    """``frame`` as an RDD of one ``bytes`` element per Arrow batch, and the reader of those.

    Each partition keeps its row order. The schema travels with the reader
    as IPC bytes, so a worker decodes exactly the buffers the JVM wrote:
    both sides use regular (32-bit offset) binary and list types and the
    session's time zone.
    """
    from pyspark import RDD
    from pyspark.serializers import NoOpSerializer
    from pyspark.sql.pandas.types import to_arrow_schema

    spark = frame.sparkSession
    time_zone = spark.conf.get("spark.sql.session.timeZone")
    batch_rows = int(spark.conf.get(BATCH_ROWS_CONF, "10000"))
    try:
        schema = to_arrow_schema(frame.schema, timezone=time_zone, prefers_large_types=False)
        jrdd = frame._jdf.toArrowBatchRdd(batch_rows, time_zone, False, False)
    except TypeError:  # Spark 3.5 and 4.0: the session's time zone and batch size, regular types, no arguments
        schema = to_arrow_schema(frame.schema)
        jrdd = frame._jdf.toArrowBatchRdd()
    return RDD(jrdd.toJavaRDD(), spark.sparkContext, NoOpSerializer()), BatchReader(schema.serialize().to_pybytes())


class BatchReader:
    """Executor side: the record batches of one partition's ``bytes`` elements."""

    def __init__(self, schema_bytes: bytes) -> None:
        self.schema_bytes = schema_bytes

    def __call__(self, messages: Iterator[bytes]) -> Iterator[pa.RecordBatch]:
        schema = pa.ipc.read_schema(pa.py_buffer(self.schema_bytes))
        for message in messages:
            yield pa.ipc.read_record_batch(pa.py_buffer(message), schema)
