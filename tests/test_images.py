"""Images where they live: real PNG and JPEG files read, decoded and trained on through Spark."""

from __future__ import annotations

import os

import numpy as np
import pytest

import sparkeras
from sparkeras import InputError, SparkModel
from sparkeras.ml import ImageFeaturizer, KerasEstimator, KerasModel

CLASSES = [f"digit_{c}" for c in range(10)]


def _uri(path: str) -> str:
    return "file:" + path


def _pixels(path: str, size=(32, 32), mode="L") -> np.ndarray:
    """The reference decode, with Pillow directly, as a plain Keras user would."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert(mode).resize(size[::-1], Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float32).reshape(*size, len(mode))


def _cnn(channels=1, size=32, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((size, size, channels)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.RandomContrast(0.1),  # augmentation inside the model, active only in training
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(name="embedding"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def images(spark, digit_images):
    root, good, corrupt = digit_images
    frame = sparkeras.read_images(spark, root, (32, 32), color_mode="grayscale", on_error="skip").cache()
    yield root, good, corrupt, frame
    frame.unpersist()


@pytest.fixture(scope="module")
def trained(spark, images, tmp_path_factory):
    """A CNN fitted on the default reading (``on_error="fail"``, the corrupt files left out by their paths, not
    cached), whose workers open the files themselves; ``images`` is cached, so its bytes are in the rows."""
    root, good, corrupt, _ = images
    frame = sparkeras.read_images(spark, root, (32, 32), color_mode="grayscale")
    frame = frame.where(~frame.path.isin([_uri(p) for p in corrupt]))
    train, test = frame.randomSplit([0.8, 0.2], seed=3)
    sm = SparkModel(_cnn(), "averaging", num_workers=2, seed=1)
    history = sm.fit(train, epochs=6, batch_size=32, features_col="image", verbose=0)
    return sm, history, train, test


def test_read_images_labels_files_by_folder_and_skips_the_corrupt_ones(images):
    root, good, corrupt, frame = images
    assert [(f.name, f.dataType.simpleString()) for f in frame.schema.fields] == \
        [("path", "string"), ("image", "binary"), ("label", "int")]
    assert frame.schema["label"].metadata["classes"] == CLASSES
    rows = {r.path: r.label for r in frame.select("path", "label").collect()}
    assert rows == {_uri(p): label for p, label in good.items()}
    assert sparkeras.skipped_images(frame) == sorted(_uri(p) for p in corrupt)
    assert frame.rdd.getNumPartitions() == 2  # 1,799 files: one partition per core, not one per 32 files


def test_a_cnn_learns_digits_from_image_files(trained, tmp_path):
    sm, history, train, test = trained
    assert history.history["accuracy"][-1] > history.history["accuracy"][0]
    accuracy = sm.evaluate(test, features_col="image")["accuracy"]
    assert accuracy >= 0.9, accuracy
    assert sm.classes == CLASSES
    path = str(tmp_path / "digits.keras")
    sm.save(path)
    assert SparkModel.load(path).classes == CLASSES  # the class index is kept with the model


def test_a_keras_estimator_trains_on_image_files_with_allreduce(images):
    """The Spark ML stage, and a strategy with its own gradient step, take the image column as they are."""
    frame = images[3]
    train, test = frame.randomSplit([0.8, 0.2], seed=3)
    fitted = KerasEstimator(model=_cnn(seed=2), featuresCol="image", strategy="allreduce", epochs=2, numWorkers=2,
                            seed=1).fit(train)
    assert fitted.getClasses() == CLASSES
    assert fitted.history.history["accuracy"][-1] > fitted.history.history["accuracy"][0]
    rows = fitted.transform(test).select("prediction", "label").collect()
    assert np.mean([r.prediction == r.label for r in rows]) > 0.5  # chance is 0.1


def test_transform_sql_and_predict_give_model_predict_on_the_decoded_pixels(spark, trained, digit_images):
    sm, _, _, test = trained
    rows = test.select("path").collect()
    expected = sm.model.predict(np.stack([_pixels(r.path[len("file:"):]) for r in rows]), verbose=0)
    order = {r.path: i for i, r in enumerate(rows)}

    def by_path(frame, column):
        out = np.zeros_like(expected)
        for r in frame.select("path", column).collect():
            out[order[r.path]] = r[column]
        return out

    stage = KerasModel(model=sm.model, featuresCol="image", batchSize=50)
    np.testing.assert_allclose(by_path(stage.transform(test), "probability"), expected, atol=1e-5)
    np.testing.assert_allclose(by_path(sm.predict(test, features_col="image"), "prediction"), expected, atol=1e-5)
    sparkeras.register_udf(spark, "digit_scores", sm.model)
    test.createOrReplaceTempView("digit_files")
    np.testing.assert_allclose(by_path(spark.sql("SELECT path, digit_scores(image) AS s FROM digit_files"), "s"),
                               expected, atol=1e-5)


def test_a_corrupt_file_stops_fit_and_prediction_with_its_path(spark, digit_images):
    root, _, corrupt = digit_images
    frame = sparkeras.read_images(spark, root, 32, color_mode="grayscale")  # on_error="fail", the default
    with pytest.raises(InputError) as fit_error:
        SparkModel(_cnn(), num_workers=2).fit(frame, features_col="image", verbose=0)
    assert "could not be decoded" in str(fit_error.value) and "on_error='skip'" in str(fit_error.value)
    assert any(_uri(p) in str(fit_error.value) for p in corrupt), str(fit_error.value)
    scored = KerasModel(model=_cnn(), featuresCol="image").transform(frame.where(frame.path.endswith("broken.jpg")))
    with pytest.raises(Exception, match="broken.jpg"):
        scored.collect()


def test_colour_modes_convert_and_resize_as_keras_does(spark, digit_images):
    """rgb expands grayscale and drops an RGBA file's alpha; other sizes are resized (bilinear)."""
    root, good, _ = digit_images
    frame = sparkeras.read_images(spark, os.path.join(root, "digit_0"), (20, 24), color_mode="rgb", labels=None,
                                  on_error="skip")
    rgba = next(p for p in good if p.endswith("00005.png"))
    model = SparkModel(_identity((20, 24, 3)))
    rows = model.predict(frame, features_col="image").collect()
    assert len(rows) == sum(1 for p in good if "/digit_0/" in p)
    for r in rows[:20]:
        np.testing.assert_allclose(np.reshape(r.prediction, (20, 24, 3)), _pixels(r.path[5:], (20, 24), "RGB"))
    digit5 = sparkeras.read_images(spark, os.path.dirname(rgba), (20, 24), color_mode="rgb", labels=None)
    row = model.predict(digit5.where(digit5.path.endswith("00005.png")), features_col="image").first()
    np.testing.assert_allclose(np.reshape(row.prediction, (20, 24, 3)), _pixels(rgba, (20, 24), "RGB"))


def _identity(shape):
    """A model whose prediction is its input, flattened: the decoded pixels themselves."""
    import keras

    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten()])
    model.compile(loss="mse")
    return model


def test_new_image_files_are_scored_as_they_arrive(spark, trained, tmp_path, digit_images):
    import shutil

    _, good, _ = digit_images
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    files = sorted(good)[:40]
    for p in files:
        shutil.copy(p, incoming / os.path.basename(p))
    sm = trained[0]
    stream = sparkeras.read_images(spark, str(incoming), 32, color_mode="grayscale", labels=None, stream=True)
    query = (KerasModel(model=sm.model, featuresCol="image").transform(stream).select("path", "prediction")
             .writeStream.format("memory").queryName("new_digits").trigger(availableNow=True).start())
    query.awaitTermination(120)
    assert query.exception() is None
    streamed = {os.path.basename(r.path): r.prediction for r in spark.table("new_digits").collect()}
    expected = sm.model.predict(np.stack([_pixels(p) for p in files]), verbose=0).argmax(axis=1)
    assert streamed == {os.path.basename(p): float(c) for p, c in zip(files, expected)}


def test_image_featurizer_writes_the_named_layers_output(trained):
    """The embedding is a Spark ML Vector with its size in the metadata, so Spark's own ``LogisticRegression``
    trains on it as Deep Learning Pipelines' ``DeepImageFeaturizer`` examples did (an ``array<float>`` column
    failed: "must be of type vector"); ``outputType="array"`` gives ``array<float>``."""
    import keras
    from pyspark.ml.classification import LogisticRegression

    sm, _, _, test = trained
    featurizer = ImageFeaturizer(model=sm.model, layer="embedding", outputCol="embedding")
    scored = featurizer.transform(test.limit(30))
    rows = scored.select("path", "embedding").collect()
    cut = keras.Model(sm.model.inputs, sm.model.get_layer("embedding").output)
    expected = cut.predict(np.stack([_pixels(r.path[5:]) for r in rows]), verbose=0)
    assert dict(scored.dtypes)["embedding"] == "vector"
    assert scored.schema["embedding"].metadata["ml_attr"]["num_attrs"] == expected.shape[1]
    np.testing.assert_allclose([r.embedding.toArray() for r in rows], expected, atol=1e-4)
    arrays = ImageFeaturizer(model=sm.model, layer="embedding", outputCol="embedding", outputType="array")
    rows = arrays.transform(test.limit(30)).select("embedding").collect()
    np.testing.assert_allclose([r.embedding for r in rows], expected, atol=1e-4)

    embedded = featurizer.transform(test).cache()
    fitted = LogisticRegression(featuresCol="embedding", labelCol="label", maxIter=30).fit(embedded)
    assert fitted.summary.accuracy > 0.9
    embedded.unpersist()
    with pytest.raises(InputError, match="no layer 'pool5'.*'embedding'"):
        ImageFeaturizer(model=sm.model, layer="pool5")
    with pytest.raises(InputError, match="outputType must be 'vector' or 'array', got 'matrix'"):
        ImageFeaturizer(model=sm.model, layer="embedding", outputType="matrix")


def test_image_errors_name_the_problem(spark, digit_images, tmp_path):
    root, _, _ = digit_images
    for kwargs, message in [
        (dict(image_size=(32, 0)), "image_size must be \\(height, width\\)"),
        (dict(image_size=32, color_mode="cmyk"), "color_mode must be one of"),
        (dict(image_size=32, labels="parent"), "labels must be 'folder'"),
        (dict(image_size=32, on_error="ignore"), "on_error must be 'fail'"),
        (dict(image_size=32, extensions="png"), "extensions must be a list"),
    ]:
        with pytest.raises(InputError, match=message):
            sparkeras.read_images(spark, root, **kwargs)
    with pytest.raises(InputError, match="is not there"):
        sparkeras.read_images(spark, str(tmp_path / "missing"), 32)
    loose = tmp_path / "loose"
    (loose / "cats").mkdir(parents=True)
    (loose / "cat.png").write_bytes(b"")
    with pytest.raises(InputError, match="'cat.png' lies directly in .*one folder per class"):
        sparkeras.read_images(spark, str(loose), 32)
    with pytest.raises(InputError, match="has no class folders"):
        sparkeras.read_images(spark, str(loose / "cats"), 32)
    with pytest.raises(InputError, match="found no image files"):
        sparkeras.read_images(spark, str(loose / "cats"), 32, labels=None)

    frame = sparkeras.read_images(spark, root, (32, 32), color_mode="grayscale")
    import keras

    for model, message in [
        (_cnn(size=28), "read with image_size=\\(32, 32\\); read them with image_size=\\(28, 28\\)"),
        (_cnn(channels=3), "takes 3 channel\\(s\\), but the images were read with color_mode='grayscale'; "
                           "read them with color_mode='rgb'"),
        (keras.Sequential([keras.Input((10,)), keras.layers.Dense(10)]),
         "read as 32x32 with 1 channel\\(s\\) = 1024 values; read them with an image_size and color_mode that make 10"),
        (keras.Sequential([keras.Input((2, 32, 32, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]),
         "cannot take images: give the model an input of shape \\(height, width, channels\\)"),
    ]:
        model.compile(loss="sparse_categorical_crossentropy")
        with pytest.raises(InputError, match=message):
            SparkModel(model).fit(frame, features_col="image", verbose=0)
    with pytest.raises(InputError, match="label column 'image' holds binary data"):
        SparkModel(_cnn()).fit(frame, features_col="image", label_col="image", verbose=0)


def test_a_test_folder_missing_classes_is_numbered_by_the_training_classes(spark, trained, digit_images, tmp_path):
    """A test folder with only two of the ten class folders numbers them 0 and 1 by its own order, which is
    refused against the model's classes; ``classes=`` numbers them as in training."""
    import shutil

    sm, _, train, _ = trained
    root, good, _ = digit_images
    for name in ("digit_3", "digit_7"):
        (tmp_path / "test" / name).mkdir(parents=True)
        for path in [p for p in sorted(good) if f"/{name}/" in p][:30]:
            shutil.copy(path, tmp_path / "test" / name)
    own_order = sparkeras.read_images(spark, str(tmp_path / "test"), 32, "grayscale")
    assert own_order.schema["label"].metadata["classes"] == ["digit_3", "digit_7"]
    with pytest.raises(InputError, match=r"The evaluation data's label column 'label' numbers the classes "
                                         r"\['digit_3', 'digit_7'\], but the model's classes are \['digit_0'.*"
                                         r"read_images\(\.\.\., classes=<the training classes>\)"):
        sm.evaluate(own_order, features_col="image")
    with pytest.raises(InputError, match=r"The validation data's label column 'label' numbers the classes"):
        SparkModel(_cnn()).fit(train, features_col="image", validation_data=own_order, verbose=0)

    test = sparkeras.read_images(spark, str(tmp_path / "test"), 32, "grayscale", classes=sm.classes)
    assert test.schema["label"].metadata["classes"] == CLASSES
    assert sorted({r.label for r in test.select("label").collect()}) == [3, 7]
    assert sm.evaluate(test, features_col="image")["accuracy"] >= 0.85

    with pytest.raises(InputError, match=r"the folder \['digit_7'\] under .* is not among classes=\['digit_3'\]"):
        sparkeras.read_images(spark, str(tmp_path / "test"), 32, classes=["digit_3"])
    for kwargs, message in [(dict(labels=None, classes=["a"]), "classes= names the class folders, so it needs "
                                                               "labels='folder'"),
                            (dict(classes="digit_3"), "classes must be a list of class folder names"),
                            (dict(classes=["a", "b", "a"]), r"classes names \['a'\] more than once")]:
        with pytest.raises(InputError, match=message):
            sparkeras.read_images(spark, str(tmp_path / "test"), 32, **kwargs)


def _read_schema(frame) -> str:
    plan = frame._jdf.queryExecution().executedPlan().toString()
    return next(line for line in plan.splitlines() if "ReadSchema" in line).split("ReadSchema: ")[1]


def test_workers_open_local_files_themselves_where_the_plan_proves_it_safe(spark, trained, digit_images, tmp_path):
    """Spark never copies a local file's bytes into a row when the image column is plainly that file's content;
    the predictions are the same, odd file names included, and anything else keeps the bytes in the rows."""
    import shutil

    from pyspark.sql import functions as F

    from sparkeras.images.local_files import opens_local_files

    sm, _, _, _ = trained
    _, good, _ = digit_images
    names = ["plain.png", "a space.png", "100% #1.jpg", "ünï cödé.png"]
    picked = {}
    for i, path in enumerate(p for p in sorted(good) if "/digit_4/" in p and not p.endswith("00005.png")):
        if i == len(names):
            break
        (tmp_path / "odd" / "digit_4").mkdir(parents=True, exist_ok=True)
        target = tmp_path / "odd" / "digit_4" / (names[i][:-4] + os.path.splitext(path)[1])
        shutil.copy(path, target)
        picked[str(target)] = path
    frame = sparkeras.read_images(spark, str(tmp_path / "odd"), 32, "grayscale")
    scored = KerasModel(model=sm.model, featuresCol="image").transform(frame).select("path", "probability")
    plan = scored._jdf.queryExecution().executedPlan().toString()
    assert "LocalTableScan" in plan and "read_local_file" not in plan  # listed here, and never read by the UDF
    got = {r.path: np.asarray(r.probability) for r in scored.collect()}
    assert sorted(got) == sorted(_uri(p) for p in picked)
    expected = sm.model.predict(np.stack([_pixels(picked[p]) for p in picked]), verbose=0)
    np.testing.assert_allclose(np.stack([got[_uri(p)] for p in picked]), expected, atol=1e-5)

    skipping = sparkeras.read_images(spark, str(tmp_path / "odd"), 32, "grayscale", on_error="skip")
    assert opens_local_files(skipping, "path")  # the skip filter's own path output is the listing's
    assert [r.image for r in frame.orderBy("path").collect()] == [r.image for r in skipping.orderBy("path").collect()]
    scored = KerasModel(model=sm.model, featuresCol="image").transform(skipping).select("path", "probability")
    assert "read_local_file" not in scored._jdf.queryExecution().executedPlan().toString()
    np.testing.assert_allclose(np.stack([np.asarray(r.probability) for r in scored.orderBy("path").collect()]),
                               np.stack([got[p] for p in sorted(got)]), atol=1e-6)
    binary = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(tmp_path / "odd")) \
        .select("path", F.col("content").alias("image", metadata=frame.schema["image"].metadata))
    scored_binary = KerasModel(model=sm.model, featuresCol="image").transform(binary).select("path")
    assert opens_local_files(binary, "path") and _read_schema(scored_binary) == "struct<path:string>"
    again = sparkeras.read_images(spark, str(tmp_path / "odd"), 32, "grayscale")
    for allowed in (frame, frame.where(F.col("label") == 0).coalesce(1), frame.union(again), binary.union(binary)):
        assert opens_local_files(allowed, "path")
    renamed = frame.withColumn("path", F.concat(F.col("path"), F.lit("#2")))
    other = spark.createDataFrame([("file:/x.png", b"", 0)], frame.schema)
    listed_again = spark.createDataFrame(frame.select("path").collect(), "path string")  # the same paths, not ours
    streamed = sparkeras.read_images(spark, str(tmp_path / "odd"), 32, "grayscale", stream=True)
    cached = frame.cache()
    try:
        not_ours = listed_again.select("path", F.lit(b"").alias("image", metadata=frame.schema["image"].metadata))
        for refused in (renamed, frame.unionByName(other), streamed, cached, cached.where(F.col("label") == 0),
                        not_ours):
            assert not opens_local_files(refused, "path")
        plan = (KerasModel(model=sm.model, featuresCol="image").transform(renamed).select("path", "probability")
                ._jdf.queryExecution().executedPlan().toString())
        assert "read_local_file" in plan  # the bytes come from the UDF, into the rows
    finally:
        cached.unpersist()


def test_a_file_removed_after_listing_is_named_by_fit_and_prediction(spark, digit_images, tmp_path):
    """A file removed after ``read_images`` listed it is named by the worker that reads it, in a fit and in a
    prediction; through ``binaryFile`` Spark's scan looks each file up first and names it there."""
    import shutil

    import pyarrow as pa

    from sparkeras.images.decode import ImageGeometry, decode_column

    root, good, _ = digit_images
    for path in [p for c in (2, 6) for p in sorted(good) if f"/digit_{c}/" in p][::8]:
        (tmp_path / "few" / os.path.basename(os.path.dirname(path))).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "few" / os.path.basename(os.path.dirname(path)))
    frame = sparkeras.read_images(spark, str(tmp_path / "few"), 32, "grayscale")
    binary = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(tmp_path / "few"))
    gone = sorted(str(p) for p in (tmp_path / "few" / "digit_6").iterdir())[0]
    os.remove(gone)
    with pytest.raises(Exception, match=f"training data: image file 'file:{gone}' .column 'image'. could not be read "
                                        ".FileNotFoundError.*executors can still read it"):
        SparkModel(_cnn(), num_workers=2).fit(frame, features_col="image", verbose=0)
    scored = KerasModel(model=_cnn(), featuresCol="image").transform(frame).select("prediction")
    with pytest.raises(Exception, match=f"image file 'file:{gone}' .column 'image'. could not be read"):
        scored.collect()
    with pytest.raises(Exception, match=f"{gone}.*File does not exist"):
        binary.collect()

    kept = sorted(str(p) for p in (tmp_path / "few" / "digit_2").iterdir())[0]
    paths = pa.array([_uri(kept), "file://" + kept, _uri(gone)])
    pixels, problem = decode_column(None, ImageGeometry(32, 32, 1, "path", open_files=True), "image", paths)
    assert pixels is None
    assert problem.startswith(f"image file {_uri(gone)!r} (column 'image') could not be read (FileNotFoundError"), \
        problem
    assert problem.endswith("check that the Spark executors can still read it.")
    pixels, problem = decode_column(None, ImageGeometry(32, 32, 1, "path", open_files=True), "image", paths[:2])
    assert problem is None
    np.testing.assert_array_equal(pixels, np.stack([_pixels(kept)] * 2).astype(np.uint8))


def test_a_local_folder_lists_the_files_sparks_binary_file_source_lists(spark, digit_images, tmp_path, monkeypatch):
    """``read_images`` lists a local folder itself (``sparkeras.images.listing``) by Spark's rules: hidden and
    ``_``-prefixed names and ``._COPYING_`` files left out, extensions matched in lower or upper case only, links
    to files and folders followed, a link back up the tree listed once, a broken link skipped. The same files,
    paths and bytes as ``binaryFile``, and each folder's class from the path; one partition per core, or more
    where a task would carry more than ``MAX_PATHS_PER_TASK`` paths; a relative folder is Python's, not the JVM's;
    a folder that cannot be read is named."""
    import shutil

    from pyspark.sql import functions as F

    from sparkeras.images.local_files import opens_local_files

    _, good, _ = digit_images
    sources = sorted(p for p in good if p.endswith(".png"))[:4]
    root = tmp_path / "mixed"
    for folder in ("digit_1", "digit_2/deeper", "digit_1/_staging", "digit_1/.cache", "elsewhere"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    names = {"digit_1/a.png": 0, "digit_1/b.PNG": 1, "digit_1/c.Png": 2, "digit_1/.d.png": 3, "digit_1/_e.png": 0,
             "digit_1/f.png._COPYING_": 1, "digit_1/_staging/g.png": 2, "digit_1/.cache/h.png": 3,
             "digit_2/deeper/i.jpg": 0, "digit_2/j.png": 1, "elsewhere/k.png": 2}
    for name, source in names.items():
        shutil.copy(sources[source], root / name)
    shutil.move(str(root / "elsewhere"), str(tmp_path / "elsewhere"))
    os.symlink(tmp_path / "elsewhere", root / "digit_2" / "linked")
    os.symlink(tmp_path / "elsewhere" / "k.png", root / "digit_1" / "l.png")
    os.symlink(tmp_path / "nowhere.png", root / "digit_1" / "broken.png")
    os.symlink(root / "digit_2", root / "digit_2" / "deeper" / "up")

    frame = sparkeras.read_images(spark, str(root), 32, "grayscale")
    listed = {r.path: (r.label, bytes(r.image)) for r in frame.collect()}
    expected = {_uri(str(root / n)): n for n in ("digit_1/a.png", "digit_1/b.PNG", "digit_1/l.png",
                                                 "digit_2/deeper/i.jpg", "digit_2/j.png", "digit_2/linked/k.png")}
    assert sorted(listed) == sorted(expected), sorted(listed)
    assert all(listed[p][0] == (0 if "/digit_1/" in p else 1) for p in listed)
    assert "LocalTableScan" in frame._jdf.queryExecution().executedPlan().toString()

    glob = "*.{jpeg,JPEG,jpg,JPG,png,PNG,bmp,BMP,gif,GIF,tif,TIF,tiff,TIFF,webp,WEBP}"
    os.remove(root / "digit_2" / "deeper" / "up")  # Hadoop's own listing would follow it round and round
    os.remove(root / "digit_1" / "broken.png")
    spark_listed = {r.path: bytes(r.content) for r in spark.read.format("binaryFile").option("pathGlobFilter", glob)
                    .option("recursiveFileLookup", "true").load(str(root)).select("path", "content").collect()}
    assert spark_listed == {p: image for p, (_, image) in listed.items()}
    assert frame.select(F.count("*")).first()[0] == 6

    monkeypatch.chdir(tmp_path)  # a folder relative to Python's working folder, which the JVM does not share
    assert sorted(r.path for r in sparkeras.read_images(spark, "mixed", 32, "grayscale").collect()) == sorted(listed)

    from sparkeras.images import listing

    monkeypatch.setattr(listing, "MAX_PATHS_PER_TASK", 2)  # 6 files on 2 cores: dealt into 3 partitions
    dealt = sparkeras.read_images(spark, str(root), 32, "grayscale")
    assert dealt.rdd.getNumPartitions() == 3 and opens_local_files(dealt, "path")
    assert {r.path: bytes(r.image) for r in dealt.collect()} == spark_listed

    scandir = os.scandir  # the suite runs as root, whom permissions do not stop: the folder's read fails instead
    monkeypatch.setattr(os, "scandir", lambda p: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if p.endswith("deeper") else scandir(p))
    with pytest.raises(InputError, match=f"could not list the folder '{root}/digit_2/deeper' .PermissionError: "
                                         f"Permission denied.; let this user read it, or move it out of '{root}'"):
        sparkeras.read_images(spark, str(root), 32, "grayscale")
