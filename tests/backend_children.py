"""The JAX and PyTorch children of ``test_backends.py``: each runs part of ``backend_matrix.py`` alone.

They start with the suite (``conftest.backend_children``), not when
``test_backends.py`` is reached: much of each child's time is waiting (JVM
and worker start-up, barrier rendezvous), and beside the in-process tests,
which leave about a quarter of the machine's CPU idle, they are done by the
time the suite asks for their results. They run at the lowest CPU priority
(``NICENESS``), so they take what the in-process tests leave. On 2 cores the
suite waited 18-21 s for them instead of 174 s; at niceness 10 the modules
run beside them took about 100 s more (27:31 in all, against 28:49 before),
at 19 about 40 s more (26:29).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
EQUIVALENCE = "(one_worker or two_workers) and not tcp"
RUNS = {
    "jax": ({"SPARKERAS_MATRIX_GPUS": "1"},
            f"({EQUIVALENCE}) or workers_use or sql_udf or (scored_on_the_driver and averaging) or compiled_programs "
            "or short_jax"),
    "torch": ({}, f"({EQUIVALENCE}) or workers_use or estimator or classifier or (scored_on_the_driver and averaging)"),
}
NICENESS = 19


def start_children(logs) -> dict[str, subprocess.Popen]:
    """Start one child per installed backend; each child's output goes to files in ``logs`` (``proc.logs``)."""
    procs = {}
    for backend, (extra, selection) in sorted(RUNS.items()):
        if importlib.util.find_spec(backend) is None:
            continue
        env = dict(os.environ, KERAS_BACKEND=backend, PYSPARK_PYTHON=sys.executable, **extra,
                   XDG_CACHE_HOME=str(logs / f"{backend}-cache"))  # JAX's compiled programs, kept by the workers
        env.pop("PYSPARK_SUBMIT_ARGS", None)
        with open(logs / f"{backend}.out", "w") as out, open(logs / f"{backend}.err", "w") as err:  # the child's
            procs[backend] = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection,
                 os.path.join(HERE, "backend_matrix.py")], cwd=HERE, env=env, stdout=out, stderr=err)
        os.setpriority(os.PRIO_PROCESS, procs[backend].pid, NICENESS)  # not preexec_fn: unsafe beside threads
        procs[backend].logs = (logs / f"{backend}.out", logs / f"{backend}.err")  # files, not pipes: no stalls
    return procs
