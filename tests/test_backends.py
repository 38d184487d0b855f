"""The suite on every Keras backend: ``backend_matrix.py`` in a child process per backend.

TensorFlow runs the whole suite in this process. JAX and PyTorch each run
the backend matrix, the tests that touch the backend, in a process of their
own, with its own Spark session (a process has one Keras backend, and
Spark's Python workers keep theirs). The two children start with the suite
and run beside the in-process tests (``backend_children.py``); this module
only waits for their results.

- JAX on a local cluster whose tasks each get one fake GPU, so every test
  there also runs with Spark assigning GPUs;
- PyTorch on ``local[2]``.

Both run the exact-equivalence tests (one-worker ``averaging`` and
``allreduce``, BatchNormalization included) and the workers' threads and
GPUs; the rest is split between them to keep the suite's time: JAX runs the
SQL UDF (inference with GPUs assigned), PyTorch a Spark ML estimator with a
parameter-server rule, the Elephas facade and the scikit-learn facade, and
both small validation data scored on the driver (``averaging``'s; the
asynchronous strategies score it with the same code). The
other tests of ``backend_matrix.py`` (evaluate, predict, save/load,
streaming, learning-rate scaling, every parameter-server rule) pass on both
backends when run by hand: ``KERAS_BACKEND=jax python -m pytest
tests/backend_matrix.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backend_children import RUNS

pytestmark = pytest.mark.own_processes


@pytest.mark.parametrize("backend", sorted(RUNS))
def test_the_backend_matrix_passes(backend_children, backend):
    pytest.importorskip(backend)
    proc = backend_children[backend]
    proc.wait(timeout=900)
    stdout, stderr = (path.read_text() for path in proc.logs)
    summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    assert proc.returncode == 0, f"{backend}: {summary}\n{stdout[-6000:]}\n{stderr[-3000:]}"
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


def test_jax_workers_keep_compiled_programs_in_a_folder_of_their_users_alone(tmp_path, monkeypatch):
    """JAX runs what its persistent cache holds as compiled code: the workers' folder is made ``0700`` and
    refused when others may write to it or another user owns it; a ``JAX_COMPILATION_CACHE_DIR`` of the
    user's, an empty one (off) included, is kept."""
    import stat

    from sparkeras.worker import runtime

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                "JAX_COMPILATION_CACHE_MAX_SIZE")
    for name in settings:
        monkeypatch.setenv(name, "")  # registered, so that the test leaves the environment as it was
        monkeypatch.delenv(name)
    runtime.use_jax_compilation_cache()
    folder = tmp_path / "sparkeras" / "jax"
    assert [os.environ.get(name) for name in settings] == [str(folder), "0.0", str(2**30)]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    folder.chmod(0o777)
    runtime.use_jax_compilation_cache()
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
    folder.chmod(0o700)
    assert runtime.jax_compilation_cache_dir() == str(folder)
    if os.getuid() == 0:
        os.chown(folder, 65534, 65534)
        assert runtime.jax_compilation_cache_dir() is None

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    runtime.use_jax_compilation_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == ""


def test_a_worker_without_the_drivers_backend_names_the_extra_to_install(tmp_path):
    """An executor whose Python cannot import the backend (here a ``jax`` package that fails to import,
    as a missing one does) stops the fit at its first task with an ``InputError`` naming the extra."""
    stub = tmp_path / "jax"
    stub.mkdir()
    (stub / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'jax'\", name='jax')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", "from sparkeras.worker import runtime; runtime.configure('jax', 1)"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert ("sparkeras.errors.InputError: The driver trains with KERAS_BACKEND='jax', but the Python of this "
            "Spark executor") in proc.stderr, proc.stderr[-3000:]
    assert "cannot import 'jax': install it on every executor with pip install 'sparkeras[jax]'" in proc.stderr


def test_the_session_start_imports_the_drivers_backend_in_executors_that_name_none(tmp_path):
    """On a cluster the executors do not have the driver's ``KERAS_BACKEND``: the workers that the session's start
    warms imported TensorFlow, and the driver's JAX fit was refused by them ("already imported Keras with
    'tensorflow'"). They import the driver's backend, which the start job carries."""
    import keras

    from sparkeras.session import driver_backend

    assert driver_backend() == keras.backend.backend()
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_HOME=str(tmp_path))  # no keras.json: Keras' own default, TensorFlow
    env.pop("KERAS_BACKEND", None)
    script = ("import sys; from sparkeras.session import _worker_started; list(_worker_started('jax', iter([0]))); "
              "print('backend:', sys.modules['keras'].backend.backend())")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend: jax" in done.stdout, done.stdout


def test_on_jax_the_driver_serializes_and_saves_without_importing_tensorflow(tmp_path):
    """Keras' serialization imports TensorFlow (when installed) to test values against its types, whatever
    the backend; the driver's model spec and saved model must not, and the model must come back the same."""
    pytest.importorskip("jax")
    script = f"""
import sys
import numpy as np
import keras
from sparkeras.serialization import ModelSpec
from sparkeras.storage.model_file import load_keras, save_keras

model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(np.random.rand(16, 4), np.arange(16) % 3, verbose=0)
spec = ModelSpec.from_model(model)
save_keras(model, {str(tmp_path / "m.keras")!r})
again = load_keras({str(tmp_path / "m.keras")!r})
rebuilt = spec.build()
assert rebuilt.count_params() == model.count_params()
np.testing.assert_allclose(again.predict(np.ones((2, 4)), verbose=0), model.predict(np.ones((2, 4)), verbose=0))
print("tensorflow imported:", "tensorflow" in sys.modules)
"""
    env = dict(os.environ, KERAS_BACKEND="jax")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tensorflow imported: False" in done.stdout, done.stdout


GPU_MEMORY = """
import os, sys
if sys.argv[1] != "-":
    os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = sys.argv[1]
from sparkeras.worker import runtime
runtime.configure("tensorflow", 1, None if sys.argv[2] == "-" else (sys.argv[2],))
print(os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH"), os.environ.get("CUDA_VISIBLE_DEVICES"))
"""


def test_tensorflow_workers_given_gpus_take_gpu_memory_as_they_need_it():
    """Two Python workers may share a GPU (``sparkeras.worker.runtime``), so TensorFlow in a worker given GPUs
    grows its memory instead of taking nearly all of it at start; a user's own setting is kept, and a worker
    given none changes nothing. Each case is a process of its own: a worker configures its backend once."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.pop("TF_FORCE_GPU_ALLOW_GROWTH", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cases = {("-", "1"): "true 1", ("false", "0"): "false 0", ("-", "-"): "None None"}
    procs = {case: subprocess.Popen([sys.executable, "-c", GPU_MEMORY, *case], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for case in cases}
    for case, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert out.strip().splitlines()[-1] == cases[case], (case, out)
