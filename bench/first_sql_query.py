"""A session's first SQL scoring query, on any Keras backend: ``register_udf`` against plain ``model.predict``.

What a notebook user meets first: start a session, register a model as
a SQL function, run one query. The query below calls two scoring UDFs
(scores and classes), which Spark runs in separate Python workers, so
the executor forks more workers than the session started; each new
worker's cost is whatever its daemon did not import before forking.
Timed: the first query and a second one (warm), over 200 rows of a small
MLP. The baseline is plain ``model.predict`` on the same rows in this
process, first call and second. Run it in a fresh process per backend:

    KERAS_BACKEND=jax python bench/first_sql_query.py

Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

ROWS = 200


def main() -> None:
    started = time.perf_counter()
    import keras

    import sparkeras

    spark = sparkeras.get_spark("local[2]")
    rng = np.random.default_rng(11)
    x = rng.normal(size=(ROWS, 4)).astype("float32")
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    plain = []
    for _ in range(2):
        t = time.perf_counter()
        expected = model.predict(x, verbose=0)
        plain.append(time.perf_counter() - t)
    spark.createDataFrame([(i, row.tolist()) for i, row in enumerate(x)], ["id", "features"]) \
        .createOrReplaceTempView("rows")
    sparkeras.register_udf(spark, "scores", model)
    sparkeras.register_udf(spark, "classes", model, output="class")
    ready = time.perf_counter() - started
    queries = []
    for _ in range(2):
        t = time.perf_counter()
        rows = spark.sql("SELECT id, scores(features) AS s, classes(features) AS c FROM rows ORDER BY id").collect()
        queries.append(time.perf_counter() - t)
    np.testing.assert_allclose([r.s for r in rows], expected, atol=1e-5)
    backend = keras.backend.backend()
    print(f"backend {backend}; session, model and registration ready after {ready:.2f} s")
    print("| | first (s) | second (s) |\n|---|---|---|")
    print(f"| plain model.predict | {plain[0]:.2f} | {plain[1]:.2f} |")
    print(f"| SQL query, two scoring UDFs | {queries[0]:.2f} | {queries[1]:.2f} |")
    print(json.dumps({"backend": backend, "ready_s": round(ready, 2), "plain_s": [round(v, 3) for v in plain],
                      "query_s": [round(v, 3) for v in queries]}))
    spark.stop()


if __name__ == "__main__":
    main()
