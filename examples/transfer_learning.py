"""Transfer learning on image files with sparkeras: a pretrained base, cut at a layer, feeds a new classifier.

1. A folder of image files in class folders (by default scikit-learn's digits,
   written as 32x32 PNG files; or ``--images DIR`` of your own).
2. A base CNN is trained on the first half of the classes (the "pretraining";
   with real photos you would load ``keras.applications`` weights instead).
3. ``ImageFeaturizer`` cuts it at its ``embedding`` layer, and a small
   ``KerasEstimator`` learns the other half of the classes from those
   embeddings, in one Spark ML ``Pipeline``; Spark's own
   ``LogisticRegression`` does the same from the same embeddings.
4. The fitted ``PipelineModel`` is saved, loaded again in a fresh Python
   process, and both give the same predictions.

    python examples/transfer_learning.py [--images DIR] [--workdir /tmp/sparkeras-transfer]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RELOAD = """
import json, sys
import sparkeras
from pyspark.ml import PipelineModel
spark = sparkeras.get_spark("local[2]")
spark.sparkContext.setLogLevel("OFF")
rows = PipelineModel.load(sys.argv[1]).transform(spark.read.parquet(sys.argv[2])).orderBy("path").collect()
print(json.dumps([r.prediction for r in rows]))
"""


def digit_folders(root: str) -> str:
    """scikit-learn's digits as 32x32 PNG files in ``root``/digit_<c>/."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = os.path.join(root, f"digit_{label}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray((image * (255 / 16)).astype(np.uint8), "L").resize((32, 32)).save(
            os.path.join(folder, f"{i:05d}.png"))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="folder of class folders (default: digits written to --workdir)")
    parser.add_argument("--workdir", default="/tmp/sparkeras-transfer")
    args = parser.parse_args()

    import keras
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.sql import functions as F

    import sparkeras
    from sparkeras.ml import ImageFeaturizer, KerasEstimator

    spark = sparkeras.get_spark("local[2]")
    spark.sparkContext.setLogLevel("OFF")
    root = args.images or digit_folders(os.path.join(args.workdir, "images"))
    images = sparkeras.read_images(spark, root, (32, 32), color_mode="grayscale")
    classes = images.schema["label"].metadata["classes"]
    half = len(classes) // 2
    seen, new = images.where(F.col("label") < half), images.where(F.col("label") >= half)

    # 2. "Pretrain" a base on the first half of the classes.
    keras.utils.set_random_seed(0)
    base = keras.Sequential([
        keras.Input((32, 32, 1)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(name="embedding"), keras.layers.Dense(len(classes), activation="softmax"),
    ])
    base.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = sparkeras.SparkModel(base, num_workers=2).fit(seen, epochs=5, features_col="image", verbose=0)
    print(f"base trained on {classes[:half]}: accuracy {history.history['accuracy'][-1]:.3f}")

    # 3. A new classifier for the other half, on the base's embeddings.
    width = base.get_layer("embedding").output.shape[-1]
    head = keras.Sequential([keras.Input((width,)), keras.layers.Dense(len(classes), activation="softmax")])
    head.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    train, test = new.randomSplit([0.8, 0.2], seed=1)
    pipeline = Pipeline(stages=[
        ImageFeaturizer(model=base, layer="embedding", outputCol="embedding"),
        KerasEstimator(model=head, featuresCol="embedding", epochs=10, numWorkers=2),
    ]).fit(train)
    rows = pipeline.transform(test).orderBy("path").collect()
    accuracy = sum(r.prediction == r.label for r in rows) / len(rows)
    print(f"new classes {classes[half:]}: test accuracy {accuracy:.3f} on {len(rows)} images")

    # 3b. The embeddings are a Spark ML Vector column, so Spark's own estimators take them too.
    spark_ml = Pipeline(stages=[
        ImageFeaturizer(model=base, layer="embedding", outputCol="embedding"),
        LogisticRegression(featuresCol="embedding", labelCol="label", maxIter=50),
    ]).fit(train)
    scored = spark_ml.transform(test)
    print(f"Spark's LogisticRegression on the same embeddings: test accuracy "
          f"{scored.where(F.col('prediction') == F.col('label')).count() / scored.count():.3f}")

    # 4. Save, and load in a fresh process.
    saved, data = os.path.join(args.workdir, "pipeline"), os.path.join(args.workdir, "test.parquet")
    pipeline.write().overwrite().save(saved)
    test.write.mode("overwrite").parquet(data)
    out = subprocess.run([sys.executable, "-c", RELOAD, saved, data], capture_output=True, text=True, check=True)
    reloaded = json.loads(out.stdout.strip().splitlines()[-1])
    same = reloaded == [r.prediction for r in rows]
    print(f"reloaded in a fresh process: {'same' if same else 'DIFFERENT'} predictions; saved at {saved}")
    spark.stop()
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
