"""Shared fixtures: one real local[2] SparkSession for the whole run, real Keras."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# No class-data archive builds in the background while the suite runs, but the one `class_archive_build` starts
# through the real path; test_class_archive checks it and turns it on for the later sessions (sparkeras.class_archive).
os.environ.setdefault("SPARKERAS_CLASS_ARCHIVE", "0")
BUILDS_THE_CLASS_ARCHIVE = "test_a_first_session_builds_the_archive_after_it_exits_and_the_next_maps_it"

import subprocess
from dataclasses import dataclass

import numpy as np
import pytest

OWN_PROCESSES = "own_processes"


def pytest_configure(config):
    config.addinivalue_line("markers", f"{OWN_PROCESSES}: the test's work runs in processes (drivers, clusters) of "
                                       "its own; such tests run after the rest")


def pytest_collection_modifyitems(config, items):
    """Run the tests marked ``own_processes`` after all the others, in their usual order.

    Spark stops a Python worker that has been idle for 60 s (a fixed
    timeout of its worker factory). While a test trains in a driver or
    cluster of its own, the shared session's workers sit idle, are
    stopped, and the next test that uses the session starts new ones,
    each importing TensorFlow again (3 CPU-seconds apiece). Run together
    at the end, those tests leave that idle gap once.

    The test that checks the driver JVM's class archive runs first of
    those: the archive's build (:func:`class_archive_build`) has run beside
    the in-process tests, and the sessions started after the check map
    it, as a user's do once it exists, and start 2-3 s sooner each.
    """
    items.sort(key=lambda item: (item.get_closest_marker(OWN_PROCESSES) is not None,
                                 item.name != BUILDS_THE_CLASS_ARCHIVE))


FIRST_SESSION = """
from sparkeras import class_archive
print(class_archive.driver_java_options(), class_archive._build_requested)
"""


@dataclass
class ArchiveBuild:
    """The class archive's first session, started with the suite: ``cache`` is where its build writes."""

    cache: object
    env: dict
    first: subprocess.Popen


@pytest.fixture(scope="session", autouse=True)
def class_archive_build(request, tmp_path_factory):
    """Ask for the class archive as a user's first session does, when the suite starts.

    ``FIRST_SESSION`` runs what ``get_spark`` runs before it starts a JVM:
    with no archive yet, it asks for a build when its process exits. That
    build (a JVM through a Spark workload, 40-60 s) then runs beside the
    in-process tests, where the suite used to wait for it;
    ``test_class_archive`` checks it before the tests that start sessions
    of their own.
    """
    if BUILDS_THE_CLASS_ARCHIVE not in {item.name for item in request.session.items}:
        yield None
        return
    cache = tmp_path_factory.mktemp("class-archive") / "cache"
    env = {k: v for k, v in os.environ.items() if k != "SPARKERAS_DEBUG"}
    env.update(PYSPARK_PYTHON=sys.executable, SPARKERAS_CACHE_DIR=str(cache), SPARKERAS_CLASS_ARCHIVE="1")
    first = subprocess.Popen([sys.executable, "-c", FIRST_SESSION], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    yield ArchiveBuild(cache, env, first)
    first.kill()


BACKEND_MATRIX = "test_the_backend_matrix_passes"


@pytest.fixture(scope="session", autouse=True)
def backend_children(request, tmp_path_factory):
    """The JAX and PyTorch runs of the backend matrix, started with the suite (see ``backend_children.py``)."""
    if not any(item.originalname == BACKEND_MATRIX for item in request.session.items):
        yield {}
        return
    from backend_children import start_children

    procs = start_children(tmp_path_factory.mktemp("backend-children"))
    yield procs
    for proc in procs.values():
        proc.kill()


@pytest.fixture(scope="session")
def spark():
    from sparkeras import get_spark

    session = get_spark("local[2]", app_name="sparkeras-tests")
    session.sparkContext.setLogLevel("OFF")
    yield session
    session.stop()


def tagged_jobs(spark, tag: str) -> list[int]:
    """The ids of the Spark jobs that ran under a job tag (sparkeras tags its training jobs)."""
    return list(spark.sparkContext._jsc.sc().statusTracker().getJobIdsForTag(tag))


def blobs(n: int, dim: int = 16, classes: int = 10, noise: float = 1.0, seed: int = 0, sample_seed: int | None = None):
    """A learnable ``classes``-class problem: gaussian clusters around centres drawn from ``seed``.

    ``sample_seed`` draws fresh rows around the same centres (a test set).
    """
    centers = np.random.default_rng(seed).normal(size=(classes, dim)) * 2.0
    rng = np.random.default_rng(seed if sample_seed is None else sample_seed)
    if sample_seed is None:
        rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    x = (centers[y] + noise * rng.normal(size=(n, dim))).astype(np.float32)
    return x, y.astype(np.int64)


def score_driver_rows_on_the_workers(monkeypatch) -> None:
    """From now on in the test, numpy and pandas rows go to the workers to be predicted and evaluated, as on a
    cluster with more than 16 MB of them (:func:`sparkeras.inference.batch.scored_on_driver`), so that a test can
    compare that path with the driver's on a local session."""
    import sparkeras.inference.batch
    import sparkeras.model

    monkeypatch.setattr(sparkeras.inference.batch, "SCORED_ON_DRIVER_MAX_BYTES", 0)
    monkeypatch.setattr(sparkeras.model, "jobs_run_locally", lambda master=None: False)


def mlp(dim: int = 16, classes: int = 10, hidden: int = 32, seed: int = 1, optimizer: str = "adam"):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((dim,)),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(classes, activation="softmax"),
    ])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def clone(model):
    """An identical, separately compiled copy (same weights, same compile settings)."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile(optimizer=model.optimizer.__class__.from_config(model.optimizer.get_config()),
                 loss=model.loss, metrics=["accuracy"])
    return copy


def weighted_plain_fits(model, x, y, epochs: int = 2, batch_size: int = 32, **weighting):
    """Plain ``model.fit`` on two clones of ``model``, with ``weighting`` (``class_weight=`` or
    ``sample_weight=``) and without: the reference of a weighted sparkeras fit, and the check
    that the weights change the model at all."""
    fits = []
    for given in (weighting, {}):
        copy = clone(model)
        copy.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0, **given)
        fits.append(copy)
    assert not np.allclose(fits[0].get_weights()[0], fits[1].get_weights()[0], atol=1e-3)  # the weights matter
    return fits[0]


def assert_same_weights(model, reference, atol: float = 1e-5):
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, atol=atol, rtol=0)


def plain_fit_accuracy(model, data, test, batch_size: int, epochs: int):
    """The baseline of every accuracy test: plain ``model.fit`` on a clone, and its test accuracy."""
    plain = clone(model)
    plain.fit(*data, batch_size=batch_size, epochs=epochs, verbose=0)
    return plain, plain.evaluate(*test, verbose=0, return_dict=True)["accuracy"]


def tensorboard_scalars(directory):
    """{tag: [(step, value)]} of every scalar in a TensorBoard run directory, read with TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(directory), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":
            out[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
    return out


def write_digit_images(root, size: int = 32, limit: int | None = None):
    """scikit-learn's 8x8 digits upscaled to ``size`` x ``size`` and written as real image files under ``root``.

    One folder per class (``digit_0`` ... ``digit_9``); even rows are PNG,
    odd rows JPEG; row 5 is an RGBA PNG. Two corrupt files (a PNG header
    with no image, a JPEG marker followed by junk) lie in ``digit_0`` and
    ``digit_1``. Returns ``{path: label}`` of the good files and the corrupt
    paths.
    """
    import os

    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).astype(np.uint8)
    good = {}
    for i, (image, label) in enumerate(zip(pixels[:limit], digits.target[:limit])):
        folder = os.path.join(root, f"digit_{label}")
        os.makedirs(folder, exist_ok=True)
        picture = Image.fromarray(image, "L").resize((size, size), Image.Resampling.BILINEAR)
        if i == 5:
            picture = picture.convert("RGBA")
        path = os.path.join(folder, f"{i:05d}.{'jpg' if i % 2 and i != 5 else 'png'}")
        picture.save(path, quality=95) if path.endswith(".jpg") else picture.save(path)
        good[path] = int(label)
    corrupt = [os.path.join(root, "digit_0", "broken.png"), os.path.join(root, "digit_1", "broken.jpg")]
    for path, data in zip(corrupt, (b"\x89PNG\r\n\x1a\nnot an image", b"\xff\xd8\xff\xe0junk")):
        with open(path, "wb") as f:
            f.write(data)
    return good, corrupt


@pytest.fixture(scope="session")
def digit_images(tmp_path_factory):
    """A folder of digit images in class folders, with two corrupt files and one RGBA file."""
    root = tmp_path_factory.mktemp("digit-images")
    good, corrupt = write_digit_images(str(root))
    return str(root), good, corrupt

