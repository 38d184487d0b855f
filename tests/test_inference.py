"""Prediction as a Spark column: SQL UDFs, Vector and multi-column inputs, one model per worker."""

from __future__ import annotations

import json
import re
from typing import Iterator

import numpy as np
import pyarrow as pa
import pytest

from conftest import blobs, mlp
import sparkeras
from sparkeras import InputError


@pytest.fixture(scope="module")
def trained():
    x, y = blobs(600, dim=4, classes=3, noise=0.5, seed=11)
    model = mlp(dim=4, classes=3, hidden=16, seed=2)
    model.fit(x, y, epochs=5, verbose=0)
    return model, x


def _table(spark, x, name="rows"):
    frame = spark.createDataFrame([(i, [float(v) for v in row]) for i, row in enumerate(x)], ["id", "features"])
    frame.createOrReplaceTempView(name)
    return frame


def test_sql_udf_gives_the_models_predictions(spark, trained, tmp_path):
    model, x = trained
    _table(spark, x[:200])
    expected = model.predict(x[:200], verbose=0)

    sparkeras.register_udf(spark, "blob_scores", model)
    sparkeras.register_udf(spark, "blob_class", model, output="class", batch_size=7)
    rows = spark.sql("SELECT id, blob_scores(features) AS s, blob_class(features) AS c FROM rows ORDER BY id").collect()
    np.testing.assert_allclose([r.s for r in rows], expected, atol=1e-5)
    assert [r.c for r in rows] == [float(c) for c in expected.argmax(axis=1)]

    # Several numeric columns, in order, feed the one input; a .keras path works as well as a model.
    path = str(tmp_path / "blobs.keras")
    model.save(path)
    sparkeras.register_udf(spark, "blob_from_file", path, output="class")
    spark.createDataFrame([tuple(float(v) for v in row) for row in x[:50]], ["a", "b", "c", "d"]) \
        .createOrReplaceTempView("wide")
    wide = [r[0] for r in spark.sql("SELECT blob_from_file(a, b, c, d) FROM wide").collect()]
    assert wide == [float(c) for c in expected[:50].argmax(axis=1)]

    # The returned UDF works in the DataFrame API too, on Spark ML Vector columns.
    from pyspark.ml.functions import array_to_vector

    udf = sparkeras.register_udf(spark, "blob_vec", model, output="class")
    vectors = spark.table("rows").withColumn("v", array_to_vector("features")).orderBy("id")
    assert [r[0] for r in vectors.select(udf("v")).collect()] == [float(c) for c in expected.argmax(axis=1)]


def test_on_jax_batches_are_padded_to_a_few_sizes_and_predict_the_same(trained, monkeypatch):
    """JAX compiles the model once per batch shape, 50-250 ms each in every worker; a partition's last batch
    and each streaming micro-batch have sizes of their own. They are padded (with their last row) to a
    power of two, at most the batch size, and the padding's outputs are cut off."""
    import pyarrow as pa

    from sparkeras.data.columns import positional_columns
    from sparkeras.inference import batch as inference

    assert [inference.padded_rows(r, 1024) for r in (1, 3, 5, 8, 9, 600, 1024)] == [1, 4, 8, 8, 16, 1024, 1024]
    assert [inference.padded_rows(r, 1000) for r in (600, 999, 1000)] == [1000, 1000, 1000]
    model, x = trained
    columns = positional_columns(model, 4)
    rows = pa.RecordBatch.from_arrays([pa.array(x[:45, i]) for i in range(4)], names=list(columns.columns))
    plain = inference.predict_rows(model, columns, rows, batch_size=16)
    shapes = []
    predict_on_batch = model.predict_on_batch
    monkeypatch.setattr(model, "predict_on_batch", lambda x: shapes.append(len(x)) or predict_on_batch(x))
    monkeypatch.setattr(inference, "_pads_batches", lambda: True)
    padded = inference.predict_rows(model, columns, rows, batch_size=16)
    assert shapes == [16, 16, 16]  # 45 rows: 16 + 16 + 13, the last padded to 16
    assert padded[0].shape == (45, 3)
    np.testing.assert_allclose(padded[0], plain[0], atol=1e-6)
    np.testing.assert_allclose(padded[0], model.predict(x[:45], verbose=0), atol=1e-5)


def test_on_jax_a_partitions_left_over_rows_are_padded_when_numpy_inputs_are_scored(trained, monkeypatch):
    """``SparkModel.predict`` of numpy arrays scores each packed partition: its whole batches through
    ``model.predict``, the rows left over (a size per partition) through one padded batch on JAX."""
    import keras

    from sparkeras.data.columns import positional_columns
    from sparkeras.inference import batch as inference

    model, x = trained
    columns = positional_columns(model, 4)
    arrays = [x[:45]]  # one array per model input, as a packed partition holds them
    calls = []
    predict, predict_on_batch = model.predict, model.predict_on_batch

    def rows(x):
        return len(keras.tree.flatten(x)[0])

    monkeypatch.setattr(model, "predict", lambda x, **kw: calls.append(("predict", rows(x))) or predict(x, **kw))
    monkeypatch.setattr(model, "predict_on_batch",
                        lambda x: calls.append(("predict_on_batch", rows(x))) or predict_on_batch(x))
    plain = inference.predict_arrays(model, columns, arrays, batch_size=16)
    assert calls == [("predict", 45)]  # TensorFlow: model.predict as it is
    calls.clear()
    monkeypatch.setattr(inference, "_pads_batches", lambda: True)
    padded = inference.predict_arrays(model, columns, arrays, batch_size=16)
    assert calls == [("predict", 32), ("predict_on_batch", 16)]  # 13 rows left over, padded to 16
    assert padded[0].shape == (45, 3)
    np.testing.assert_allclose(padded[0], plain[0], atol=1e-6)
    calls.clear()
    inference.predict_arrays(model, columns, [a[:13] for a in arrays], batch_size=16)
    assert calls == [("predict_on_batch", 16)]


def test_sql_udf_for_a_multi_input_model_takes_a_column_per_input(spark):
    import keras

    keras.utils.set_random_seed(0)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], out)
    xa = np.random.default_rng(0).normal(size=(40, 3)).astype("float32")
    xb = np.random.default_rng(1).normal(size=(40, 2)).astype("float32")
    spark.createDataFrame([(i, xa[i].tolist(), xb[i].tolist()) for i in range(40)], ["id", "a", "b"]) \
        .createOrReplaceTempView("pairs")
    sparkeras.register_udf(spark, "two_inputs", model)
    rows = spark.sql("SELECT id, two_inputs(a, b) AS y FROM pairs ORDER BY id").collect()
    np.testing.assert_allclose([r.y for r in rows], model.predict([xa, xb], verbose=0)[:, 0], atol=1e-5)
    with pytest.raises(Exception, match=r"called with 1 column\(s\), but the model has 2 inputs"):
        spark.sql("SELECT two_inputs(a) FROM pairs").collect()


def test_sql_udf_class_of_a_one_unit_binary_classifier(spark):
    """One sigmoid unit: class 1 above 0.5; with ``from_logits=True``, above a logit of 0. ``output="probability"``
    gives ``[1 - p, p]``, the sigmoid applied for a model trained on logits."""
    import keras

    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.float32)
    spark.createDataFrame([(r.tolist(),) for r in x], ["features"]).createOrReplaceTempView("binary_rows")
    for name, activation, loss, cut in (("is_one", "sigmoid", "binary_crossentropy", 0.5),
                                        ("is_one_logit", None, keras.losses.BinaryCrossentropy(from_logits=True), 0.0)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation=activation)])
        model.compile(keras.optimizers.Adam(0.05), loss)
        model.fit(x, y, epochs=5, verbose=0)
        sparkeras.register_udf(spark, name, model, output="class")
        sparkeras.register_udf(spark, f"{name}_p", model, output="probability")
        rows = spark.sql(f"SELECT {name}(features) AS c, {name}_p(features) AS p FROM binary_rows").collect()
        got = np.array([r.c for r in rows])
        out = model.predict(x, verbose=0)[:, 0].astype(np.float64)
        want = (out > cut).astype(np.float64)
        assert 0 < want.mean() < 1 and np.array_equal(got, want), name
        assert np.mean(got == y) > 0.9, name
        p = out if activation else 1.0 / (1.0 + np.exp(-out))  # SQL has no sigmoid: the function applies it
        np.testing.assert_allclose([r.p for r in rows], np.stack([1 - p, p], axis=1), atol=1e-5)


def test_sql_udf_errors_name_the_problem(spark, trained):
    model, x = trained
    with pytest.raises(InputError, match="SQL function name"):
        sparkeras.register_udf(spark, "bad name", model)
    with pytest.raises(InputError, match="output must be one of"):
        sparkeras.register_udf(spark, "ok", model, output="probabilities")
    import keras

    one_unit = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    for output in ("class", "probability"):
        with pytest.raises(InputError, match=rf"output='{output}' needs a model with one output of several units"):
            sparkeras.register_udf(spark, "reg", one_unit, output=output)
    with pytest.raises(InputError, match="No model file"):
        sparkeras.register_udf(spark, "missing", "/nonexistent/model.keras")
    sparkeras.register_udf(spark, "blob_checked", model)
    spark.createDataFrame([([1.0, 2.0, 3.0], "x")] * 3, ["short", "text"]).createOrReplaceTempView("bad")
    with pytest.raises(Exception, match=r"argument 1' has rows of 3 values, but model input .* expects 4"):
        spark.sql("SELECT blob_checked(short) FROM bad").collect()
    with pytest.raises(Exception, match=r"argument 1' has type string, which is not numeric"):
        spark.sql("SELECT blob_checked(text) FROM bad").collect()


def test_a_prediction_column_the_data_already_has_is_refused_with_the_callers_way_to_rename_it(spark, trained):
    """Scoring would replace the user's column; each caller's error says how that caller names its outputs."""
    from sparkeras.ml import ImageFeaturizer, KerasModel

    model, x = trained
    frame = _table(spark, x[:20]).withColumnRenamed("id", "prediction")
    fix = re.escape("or drop or rename the data's column(s) first.")
    with pytest.raises(InputError, match=r"already has column\(s\) \['prediction'\], where the predictions would go: "
                                         rf"pass another prediction_col= than 'prediction', {fix}"):
        sparkeras.SparkModel(model).predict(frame)
    scores = sparkeras.SparkModel(model).predict(frame, prediction_col="scores").orderBy("prediction").collect()
    np.testing.assert_allclose([r.scores for r in scores], model.predict(x[:20], verbose=0), atol=1e-5)
    with pytest.raises(InputError, match=r"\['prediction'\], where the predictions would go: name them with "
                                         rf"setPredictionCol, setProbabilityCol or setRawPredictionCol, {fix}"):
        KerasModel(model=model).transform(frame)
    with pytest.raises(InputError, match=rf"\['emb'\], where the predictions would go: name the embeddings with "
                                         rf"setOutputCol, {fix}"):
        ImageFeaturizer(model=model, layer=model.layers[0].name, inputCol="features", outputCol="emb") \
            .transform(frame.withColumn("emb", frame.features))


def test_each_python_worker_loads_the_model_once_across_tasks(spark, trained):
    """A probe UDF chained onto the prediction runs in the same Python worker and reports its load counts.

    The probe is of the prediction's own kind (an Arrow UDF, or a pandas UDF before Spark 4.1), so
    Spark chains the two in one worker."""
    from sparkeras.inference.pandas_udf import has_arrow_udf

    model, x = trained

    def report(rows: int) -> list:
        import os

        from sparkeras.worker import runtime

        return [json.dumps([os.getpid(), runtime.inference_stats()])] * rows

    if has_arrow_udf():
        from pyspark.sql.functions import arrow_udf

        @arrow_udf("string")
        def probe(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
            return (pa.array(report(len(batch))) for batch in batches)
    else:  # the function type given, not hinted: this module's hints are strings pyspark 3.5 cannot resolve
        import warnings

        import pandas as pd
        from pyspark.sql.functions import PandasUDFType, pandas_udf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            probe = pandas_udf(lambda batches: (pd.Series(report(len(b))) for b in batches), "string",
                               PandasUDFType.SCALAR_ITER)

    spark.udf.register("load_probe", probe)
    sparkeras.register_udf(spark, "blob_once", model)
    _table(spark, np.tile(x, (4, 1))).repartition(8).createOrReplaceTempView("many")
    reports = [json.loads(r[0]) for r in spark.sql("SELECT load_probe(blob_once(features)) FROM many").collect()]
    latest: dict = {}
    for pid, stats in reports:
        for weights_id, entry in stats.items():
            seen = latest.setdefault(weights_id, {})
            if entry["tasks"] >= seen.get(pid, {"tasks": -1})["tasks"]:
                seen[pid] = entry
    assert all(e["weight_loads"] <= 1 and e["builds"] <= 1 for w in latest.values() for e in w.values()), latest
    served = {w: sum(e["tasks"] for e in per_pid.values()) for w, per_pid in latest.items()}
    ours = [w for w, tasks in served.items() if tasks == 8]  # one prediction task per partition
    assert ours, served
    assert len(latest[ours[0]]) < 8, latest[ours[0]]  # fewer worker processes than tasks: loads were reused


def test_the_pandas_udf_used_before_spark_4_1_gives_the_same_predictions(spark, trained, monkeypatch):
    """Spark 3.5 and 4.0 have no ``arrow_udf``; there prediction runs as a pandas UDF around the same body.

    Chosen here by hand on this Spark, so the path runs on real Spark: array, ``Vector`` and scalar
    arguments, a struct result (class and probabilities) and a SQL function."""
    from pyspark.ml.functions import array_to_vector

    import sparkeras.inference.udf as udf_module
    from sparkeras import SparkModel
    from sparkeras.ml import KerasModel

    model, x = trained
    expected = model.predict(x[:120], verbose=0)
    frame = _table(spark, x[:120], "pandas_rows").withColumn("v", array_to_vector("features"))
    monkeypatch.setattr(udf_module, "has_arrow_udf", lambda: False)

    scored = SparkModel(model, num_workers=2).predict(frame, features_col="features").orderBy("id").collect()
    np.testing.assert_allclose([r.prediction for r in scored], expected, atol=1e-5)
    rows = KerasModel(model=model, featuresCol="v").transform(frame).orderBy("id").collect()
    assert [r.prediction for r in rows] == expected.argmax(axis=1).astype(float).tolist()
    np.testing.assert_allclose([r.probability for r in rows], expected, atol=1e-5)
    sparkeras.register_udf(spark, "pandas_class", model, output="class")
    wide = spark.createDataFrame([(i,) + tuple(float(v) for v in row) for i, row in enumerate(x[:120])],
                                 ["id", "a", "b", "c", "d"])
    wide.createOrReplaceTempView("pandas_wide")
    got = [r[0] for r in spark.sql("SELECT pandas_class(a, b, c, d) FROM pandas_wide ORDER BY id").collect()]
    assert got == expected.argmax(axis=1).astype(float).tolist()


@pytest.mark.parametrize("arrow_udf", [True, False], ids=["arrow_udf", "pandas_udf_before_4_1"])
def test_rows_with_null_features_get_null_predictions_and_keep_their_place(spark, trained, monkeypatch, arrow_udf):
    """A null feature row is scored NULL, as a SQL function gives NULL for NULL, and every other row gets its
    own prediction; before, one null row failed the whole query ("drop or fill them before training").
    A null inside an array is still an error that names the column (through Arrow; pandas makes it NaN)."""
    import sparkeras.inference.udf as udf_module
    from sparkeras import SparkModel
    from sparkeras.ml import KerasModel

    model, x = trained
    if not arrow_udf:
        monkeypatch.setattr(udf_module, "has_arrow_udf", lambda: False)
    rows = [(i, None if i % 3 == 1 else [float(v) for v in x[i]], None if i % 4 == 2 else float(x[i, 0]))
            for i in range(60)]
    frame = spark.createDataFrame(rows, "id INT, features ARRAY<DOUBLE>, a DOUBLE").repartition(2)
    want = model.predict(x[:60], verbose=0)
    scored = KerasModel(model=model, rawPredictionCol="scores").transform(frame).orderBy("id").collect()
    assert [r.prediction is None for r in scored] == [i % 3 == 1 for i in range(60)]
    kept = [i for i in range(60) if i % 3 != 1]
    assert [scored[i].prediction for i in kept] == want[kept].argmax(axis=1).astype(float).tolist()
    np.testing.assert_allclose([scored[i].probability for i in kept], want[kept], atol=1e-5)
    assert all(scored[i].probability is None and scored[i].scores is None for i in range(60) if i % 3 == 1)
    np.testing.assert_allclose([scored[i].scores.toArray() for i in kept], want[kept], atol=1e-5)

    assembled = frame.selectExpr("id", "a", "features[1] as b", "features[2] as c", "features[3] as d")
    predicted = SparkModel(model).predict(assembled, features_col=["a", "b", "c", "d"]).orderBy("id").collect()
    missing = [i % 3 == 1 or i % 4 == 2 for i in range(60)]
    assert [r.prediction is None for r in predicted] == missing
    np.testing.assert_allclose([predicted[i].prediction for i in range(60) if not missing[i]],
                               want[[i for i in range(60) if not missing[i]]], atol=1e-5)

    # A batch of null rows only (a partition of one null row): nothing to predict, every row NULL.
    pair = spark.createDataFrame(spark.sparkContext.parallelize([(0, None), (1, [float(v) for v in x[1]])], 2),
                                 "id INT, features ARRAY<DOUBLE>")
    assert [r.prediction for r in KerasModel(model=model).transform(pair).orderBy("id").collect()] == \
        [None, float(want[1].argmax())]

    sparkeras.register_udf(spark, "null_safe_class", model, output="class")
    frame.createOrReplaceTempView("rows_with_nulls")
    got = [r[0] for r in spark.sql("SELECT null_safe_class(features) FROM rows_with_nulls ORDER BY id").collect()]
    assert got == [None if i % 3 == 1 else float(want[i].argmax()) for i in range(60)]

    if not arrow_udf:
        return  # pandas hands a null inside an array over as NaN, which predicts NaN, as model.predict does
    holes = spark.createDataFrame([([1.0, None, 2.0, 3.0],)], "features ARRAY<DOUBLE>")
    with pytest.raises(Exception, match=r"column 'features' has null entries inside its arrays; fill or drop them"):
        KerasModel(model=model).transform(holes).collect()
