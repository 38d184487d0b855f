"""An Elephas user's script, written from Elephas' README, with only its imports changed.

The original imports were:
    from elephas.utils.rdd_utils import to_simple_rdd
    from elephas.spark_model import SparkModel, load_spark_model
The model is a small CNN on scikit-learn's 8x8 digits (no download), and the
same model is trained with plain Keras for comparison. Prints one RESULT line.
"""
import json
import os
import sys

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import numpy as np
from pyspark import SparkConf, SparkContext
from sklearn.datasets import load_digits
from tensorflow.keras.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
from tensorflow.keras.models import Sequential
from tensorflow.keras.utils import set_random_seed, to_categorical

from sparkeras.compat.elephas import SparkModel, load_spark_model, to_simple_rdd

conf = SparkConf().setAppName("Elephas_App").setMaster("local[2]")
sc = SparkContext(conf=conf)
sc.setLogLevel("OFF")

digits = load_digits()
x = (digits.images / 16.0).astype("float32").reshape(-1, 8, 8, 1)
y = to_categorical(digits.target, 10)
rng = np.random.default_rng(0)
order = rng.permutation(len(x))
x, y = x[order], y[order]
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]


def make_model():
    set_random_seed(0)
    model = Sequential()
    model.add(Input((8, 8, 1)))
    model.add(Conv2D(16, (3, 3), activation="relu"))
    model.add(MaxPooling2D((2, 2)))
    model.add(Flatten())
    model.add(Dense(32, activation="relu"))
    model.add(Dense(10, activation="softmax"))
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 10

plain = make_model()
plain.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0, validation_split=0.1)
plain_accuracy = plain.evaluate(x_test, y_test, verbose=0)[1]

model = make_model()
rdd = to_simple_rdd(sc, x_train, y_train)
spark_model = SparkModel(model, frequency="epoch", mode="asynchronous")
spark_model.fit(rdd, epochs=epochs, batch_size=32, verbose=0, validation_split=0.1)

predictions = spark_model.predict(x_test)
evaluation = spark_model.evaluate(x_test, y_test)
predicted_accuracy = float(np.mean(np.argmax(predictions, axis=1) == np.argmax(y_test, axis=1)))

path = os.path.join(sys.argv[2] if len(sys.argv) > 2 else ".", "model.keras")
spark_model.save(path, overwrite=True)
reloaded = load_spark_model(path)



def parent_command(_):
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        yield f"{os.getppid()} " + f.read().replace(b"\0", b" ").decode()


def parent_of_sql_function(batches):
    import pyarrow as pa

    for batch in batches:
        yield pa.RecordBatch.from_pydict({"parent": list(parent_command(None)) * batch.num_rows})


from pyspark.sql import SparkSession  # noqa: E402

sql_function_parents = {row.parent for row in SparkSession.builder.getOrCreate().range(4).repartition(2)
                        .mapInArrow(parent_of_sql_function, "parent string").collect()}


print("RESULT", json.dumps({
    "plain_accuracy": float(plain_accuracy),
    "evaluate": [float(v) for v in evaluation],
    "predicted_accuracy": predicted_accuracy,
    "history_keys": sorted(spark_model.training_histories[0]),
    "epochs_run": len(spark_model.training_histories[0]["loss"]),
    "reloaded": [type(reloaded).__name__, reloaded.mode, reloaded.frequency],
    "reloaded_same_weights": all(np.array_equal(a, b) for a, b in zip(
        reloaded.master_network.get_weights(), spark_model.master_network.get_weights())),
    "daemon": sc.getConf().get("spark.python.daemon.module"),
    "workers_fork_from": sorted(set(sc.parallelize(range(2), 2).mapPartitions(parent_command).collect())
                                | sql_function_parents),
}))
