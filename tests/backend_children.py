"""The backend matrix's child processes (``backend_matrix.py`` under JAX and under PyTorch), started early.

``conftest.py`` starts them when the suite reaches the tests that run in
processes of their own, and :mod:`test_backends` waits for them after the
tests that can share the machine with them: much of each child's time is
start-up and waiting (JVM and workers, barrier rendezvous), which the
other tests' own waiting fills.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
EQUIVALENCE = "(one_worker or two_workers) and not gloo"
RUNS = {
    "jax": ({"SPARKERAS_MATRIX_GPUS": "1"}, f"({EQUIVALENCE}) or workers_use or sql_udf"),
    "torch": ({}, f"({EQUIVALENCE}) or workers_use or estimator or classifier"),
}
MATRIX_TEST = "test_the_backend_matrix_passes"

_children: dict[str, subprocess.Popen] = {}


def start() -> dict[str, subprocess.Popen]:
    """Start each installed backend's child once; the children, by backend."""
    if _children:
        return _children
    logs = tempfile.mkdtemp(prefix="sparkeras-backend-children-")
    for backend, (extra, selection) in sorted(RUNS.items()):
        try:
            __import__(backend)
        except ImportError:
            continue
        env = dict(os.environ, KERAS_BACKEND=backend, PYSPARK_PYTHON=sys.executable, **extra)
        env.pop("PYSPARK_SUBMIT_ARGS", None)
        out, err = os.path.join(logs, f"{backend}.out"), os.path.join(logs, f"{backend}.err")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection,
             os.path.join(HERE, "backend_matrix.py")],
            cwd=HERE, env=env, stdout=open(out, "w"), stderr=open(err, "w"))
        proc.logs = (out, err)  # files, not pipes: no stalls
        _children[backend] = proc
    return _children


def stop() -> None:
    for proc in _children.values():
        proc.kill()
