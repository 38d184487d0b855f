"""Faults on a real standalone cluster: a master and two two-core workers started by the suite.

Where the machine allows network namespaces, each worker is a host of its
own on a veth network (see ``standalone.py``), so these fits also run the
paths between machines: the all-reduce ring between hosts, data shipped to executors, the
driver's servers on a non-loopback address.

One Spark application (a driver subprocess) fits the same small problem
once per case, for ``averaging``, ``allreduce`` and one parameter-server
strategy (``adag``), and the test kills, in the second epoch of each fit,
the Python worker training partition 1, its executor's JVM (``kill -9``),
or the whole Worker daemon above them. The worker is held at the kill point
by :mod:`sparkeras.worker.faults`, so each fault certainly hits a running
task. Every case must end within its bound: the right epoch count and a
saved model, or (allreduce without a second worker) the documented
capacity error. The fault driver asks two cores per task, so each worker
is one task slot; the module's last test then runs four one-core tasks on
the same cluster, two per host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from standalone import StandaloneCluster, executor_of

pytestmark = pytest.mark.own_processes

STRATEGIES = ("averaging", "adag", "allreduce")
FAULTS = ("python_worker", "executor", "worker_daemon")  # the daemon kills last: each needs a restart after
CASES = [(s, f) for f in FAULTS for s in STRATEGIES] + [("allreduce-elastic", "worker_daemon")]
SLOT_TIMEOUT = 10  # an executor killed comes back in 8-9 s: the fit waits for it
LOST_SLOT_TIMEOUT = 5  # a Worker daemon killed does not come back: the fit goes on without it sooner

DRIVER = """
import json, os, sys, time
os.environ["PYSPARK_PYTHON"] = sys.executable
sys.path.insert(0, {tests!r})
from conftest import blobs, mlp
import sparkeras
from sparkeras import ADAG, AllReduce, ModelAveraging, SparkModel
from sparkeras.barrier import concurrent_slots, registered_slots
spark = sparkeras.get_spark({url!r})
sc = spark.sparkContext
sc.setLogLevel("OFF")
x, y = blobs(4000, seed=3)
make = {{"averaging": lambda t: ModelAveraging(window=8, slot_timeout=t),
         "adag": lambda t: ADAG(slot_timeout=t),
         "allreduce": lambda t: AllReduce(slot_timeout=t, timeout=60),
         "allreduce-elastic": lambda t: AllReduce(slot_timeout=t, timeout=60, min_workers=1)}}
for i, (name, fault) in enumerate({cases!r}):
    deadline = time.monotonic() + 120
    while concurrent_slots(sc) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    strategy = make[name]({lost_slot_timeout} if fault == "worker_daemon" else {slot_timeout})
    strategy.hold_once = (1, 1, os.path.join({root!r}, f"case{{i}}.pid"), 30.0)
    sm = SparkModel(mlp(seed=3), strategy, num_workers=2, seed=1)
    started = time.monotonic()
    try:
        h = sm.fit(x, y, epochs=2, batch_size=50, verbose=0)
        out = {{"error": None, "epochs": len(h.history["loss"]), "restarts": h.restarts,
               "accuracy": h.history["accuracy"][-1], "joins": getattr(h, "parameter_server", {{}}).get("joins")}}
    except Exception as exc:
        out = {{"error": type(exc).__name__, "message": str(exc)[:3000]}}
    out["seconds"] = time.monotonic() - started
    path = os.path.join({root!r}, f"case{{i}}.keras")
    sm.save(path)
    out["saved"] = os.path.getsize(path) > 0
    print("RESULT", json.dumps(out), flush=True)
    open(os.path.join({root!r}, f"case{{i}}.done"), "w").close()
"""


def _wait_for(path: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
            raise AssertionError(f"{os.path.basename(path)} never appeared:\n{out[-2000:]}\n{err[-4000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One standalone cluster for the module (starting one costs about 10 s); each test leaves its workers up."""
    cluster = StandaloneCluster(str(tmp_path_factory.mktemp("cluster")), workers=2, cores=2, separate_hosts=True)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def matrix(cluster, tmp_path_factory):
    """Run every case in one driver on the module's cluster; each case's result, by (strategy, fault)."""
    root = str(tmp_path_factory.mktemp("faults"))
    script = DRIVER.format(tests=os.path.dirname(__file__), url=cluster.url, root=root, cases=CASES,
                           slot_timeout=SLOT_TIMEOUT, lost_slot_timeout=LOST_SLOT_TIMEOUT)
    env = dict(cluster.driver_env(), PYSPARK_SUBMIT_ARGS="--conf spark.task.cpus=2 pyspark-shell")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    waited = {}
    try:
        for i, (strategy, fault) in enumerate(CASES):
            pid_file = os.path.join(root, f"case{i}.pid")
            _wait_for(pid_file, proc, 240)
            with open(pid_file) as f:
                python_worker = int(f.read())
            if fault == "python_worker":
                os.kill(python_worker, signal.SIGKILL)
            elif fault == "executor":
                os.kill(executor_of(python_worker), signal.SIGKILL)
            else:
                lost = cluster.worker_of(python_worker)
                cluster.kill_worker(lost)
            killed = time.monotonic()
            _wait_for(os.path.join(root, f"case{i}.done"), proc, 240)  # never a silent wait
            waited[(strategy, fault)] = time.monotonic() - killed
            if fault == "worker_daemon":
                cluster.restart_worker(lost)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    results = [json.loads(ln[len("RESULT "):]) for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert len(results) == len(CASES), err[-4000:]
    return {case: dict(result, waited=waited[case]) for case, result in zip(CASES, results)}


@pytest.mark.parametrize("strategy,fault", [c for c in CASES if c != ("allreduce", "worker_daemon")])
def test_a_fit_survives_the_fault_with_every_epoch_and_a_saved_model(matrix, strategy, fault):
    result = matrix[(strategy, fault)]
    assert result["error"] is None, result
    assert result["epochs"] == 2 and result["saved"], result
    assert result["accuracy"] > (0.2 if strategy == "adag" else 0.8), result  # chance is 0.1
    if strategy == "adag":
        # Asynchronous, both epochs in one job. Spark's retry of the lost task abandons the job, which the
        # driver relaunches from the second epoch; without the lost Worker's slot, after a 5 s slot watch,
        # the fit goes on with one job per epoch, where the tasks take turns on the slot left.
        assert result["joins"] > 2 * 2, result
        assert result["restarts"] and {r["resumed_at_epoch"] for r in result["restarts"]} == {2}, result
        if fault == "worker_daemon":
            assert result["restarts"][-1]["reason"].endswith(
                "adag needs 2 task slots at once, but the cluster has had only 1 for 5s; "
                "continuing with one Spark job per epoch"), result
    elif strategy == "allreduce-elastic":  # goes on with the one worker left, which takes both partitions
        assert [r["resumed_at_epoch"] for r in result["restarts"]] == [2], result  # one relaunch, one entry
        assert result["restarts"][0]["reason"].endswith(
            f"allreduce needs 2 task slots at once, but the cluster has had only 1 for {LOST_SLOT_TIMEOUT}s; "
            "continuing with 1 worker(s)"), result
    elif fault == "worker_daemon":  # averaging goes on with the one worker left
        assert [r["resumed_at_epoch"] for r in result["restarts"]] == [2], result
        assert result["restarts"][0]["reason"].startswith(
            f"averaging needs 2 task slots at once, but the cluster has had only 1 for {LOST_SLOT_TIMEOUT}s"), result
        assert "continuing with one Spark job per window on the slots that are left" in \
            result["restarts"][0]["reason"]
    elif strategy == "averaging":  # the epoch ran again from its start
        assert [r["resumed_at_epoch"] for r in result["restarts"]] == [2], result
    assert result["waited"] < 120, result


def test_allreduce_stops_with_the_missing_capacity_when_a_worker_daemon_dies(matrix):
    result = matrix[("allreduce", "worker_daemon")]
    assert result["error"] == "ClusterCapacityError", result
    assert result["message"].startswith("allreduce needs 2 task slots at once, but the cluster has had only 1 "
                                        f"for {LOST_SLOT_TIMEOUT}s"), result
    assert "The fit stopped after 1 completed epoch(s)" in result["message"]
    assert "fit with num_workers=1" in result["message"]
    assert result["saved"] and result["waited"] < 120, result



PROBE = """
import json, sys, time
import numpy as np
import sparkeras
from sparkeras.barrier import concurrent_slots, registered_slots
spark = sparkeras.get_spark()  # run by spark-submit: the submitted master, no session of the script's own
at_start = concurrent_slots(spark.sparkContext)  # executors are still registering
conf = spark.sparkContext.getConf()
print("SETTINGS", json.dumps({{"master": spark.sparkContext.master, "app": conf.get("spark.app.name"),
                              "daemon": conf.get("spark.python.daemon.module"),
                              "ui": conf.get("spark.ui.enabled", None),
                              "partitions": conf.get("spark.sql.shuffle.partitions", None)}}), flush=True)
default_workers = registered_slots(spark.sparkContext)  # SparkModel's default: waits until the count holds
sparkeras.EASGD().check_cluster(spark, 4)  # a synchronous rule's check needs all 4
print("CHECKED", at_start, default_workers, concurrent_slots(spark.sparkContext), flush=True)
sys.path.insert(0, {tests!r})
from standalone import executors_with_a_daemon
deadline = time.monotonic() + 60
while executors_with_a_daemon(spark.sparkContext.applicationId)[1] < 2 and time.monotonic() < deadline:
    time.sleep(0.5)  # no Python job of this script's has run yet
print("DAEMONS", *executors_with_a_daemon(spark.sparkContext.applicationId), flush=True)
started = time.monotonic()
registered_slots(spark.sparkContext)  # the executors registered long ago: the count has held
print("AGAIN", time.monotonic() - started, time.time() - spark.sparkContext.startTime / 1000, flush=True)


def probe(ctx):
    from pyspark import BarrierTaskContext

    total = ctx.allreduce(np.array([ctx.rank + 1.0]), op="sum")
    big = ctx.allreduce(np.arange(1_000_001, dtype=np.float64) * (ctx.rank + 1), op="sum")
    sent = ctx.broadcast(np.arange(5.0) + 10 * ctx.rank, root=3)
    return {{"hosts": sorted({{i.address.split(":")[0] for i in BarrierTaskContext.get().getTaskInfos()}}),
            "transport": ctx.transport, "sum": float(total[0]),
            "big": bool(np.array_equal(big, np.arange(1_000_001, dtype=np.float64) * 10)),
            "broadcast": sent.tolist(), "torch": "torch.distributed" in sys.modules}}


print("RESULT", json.dumps([sparkeras.run(probe, num_workers=4, timeout=60, shared_memory=shared)
                            for shared in (True, False)]))
"""


def test_a_spark_submit_script_on_two_hosts_waits_for_slots_starts_workers_and_allreduces_hierarchically(
        cluster, tmp_path):
    """``spark-submit --master spark://...`` a script that leaves the session to sparkeras: it runs on that cluster,
    with sparkeras' daemon on the executors and the run's own settings (its name, Spark's UI, SQL settings) as
    ``spark-submit`` made them, and Spark's log quiet since the user configured none. The fresh session's check for
    a synchronous rule waits for the executors still registering, and its start-up job starts a Python worker on
    every executor. Then, where the workers are separate hosts, two tasks on each: shared memory inside a host, the
    TCP ring between the hosts' leaders; with ``shared_memory=False``, all four tasks in the ring."""
    import pyspark

    script = tmp_path / "probe_cluster.py"
    script.write_text(PROBE.format(tests=os.path.dirname(os.path.abspath(__file__))))
    submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    out = subprocess.run([submit, "--master", cluster.url, str(script)], capture_output=True, text=True,
                         timeout=240, env=cluster.driver_env())
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, out.stderr[-4000:]
    settings = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("SETTINGS "))[9:])
    # Before, sparkeras' own session options replaced the submitted master, and the script ran on local[*].
    assert settings == {"master": cluster.url, "app": "probe_cluster.py", "daemon": "sparkeras.worker.daemon",
                        "ui": None, "partitions": None}, settings
    # Spark's default log4j profile logs at INFO under spark-submit: every task's start and end, 148 lines for a
    # short fit. With no log4j configuration of the user's, Spark logs errors only once the context starts logging.
    info = [ln for ln in out.stderr.splitlines() if " INFO " in ln]
    assert len(info) <= 5, info
    # A fresh session counted the slots before its executors had registered: easgd refused "the cluster has
    # 0 task slots", and the default worker count was too low. Now both wait for them.
    checked = [ln.split()[1:] for ln in out.stdout.splitlines() if ln.startswith("CHECKED ")]
    assert checked and checked[0][1:] == ["4", "4"], (checked, out.stdout[-2000:])
    # The session's start-up job waited for the executors too, and started a Python worker (the daemon and its
    # TensorFlow import) on each: sized as the session started, it ran 2 tasks, both on the first executor.
    assert "DAEMONS 2 2" in out.stdout, out.stdout[-2000:]
    # A count no setting promises must hold 2 s in a session younger than 30 s, and the hold started at every
    # call: each default-sized fit in the session's first 30 s waited 2.0 s. Counts seen before now count.
    again, age = (float(v) for v in next(ln for ln in out.stdout.splitlines() if ln.startswith("AGAIN ")).split()[1:])
    assert again < 1.0 or age > 28, (again, age)
    hierarchical, ring = json.loads(lines[0][len("RESULT "):])
    for result in (hierarchical, ring):
        assert result["sum"] == 1.0 + 2.0 + 3.0 + 4.0, result
        assert result["big"], result
        assert result["broadcast"] == [30.0, 31.0, 32.0, 33.0, 34.0], result
        assert not result["torch"], result  # the collective between hosts needs no torch
    if cluster.separate_hosts is not None:
        return  # every worker on this machine's loopback: no hosts to tell apart
    for result in (hierarchical, ring):
        assert result["hosts"] == [cluster.worker_host(0), cluster.worker_host(1)], result
    assert hierarchical["transport"] == "shared memory", hierarchical  # rank 0 shares its host with rank 1
    assert ring["transport"] == "tcp", ring  # shared_memory=False: all four tasks in the ring



SHIPPED = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import blobs, mlp
import pandas as pd
import sparkeras
spark = sparkeras.get_spark()  # spark-submit's master, and sparkeras from its --py-files zip
x, y = blobs(2000, seed=3)
frame = spark.createDataFrame(pd.DataFrame({{"features": list(x), "label": y}}))
sm = sparkeras.SparkModel(mlp(seed=3), num_workers=2)
history = sm.fit(frame, epochs=3, verbose=0)
scored = sm.predict(frame.limit(40)).collect()
workers = spark.sparkContext.parallelize(range(4), 4).map(lambda _: __import__("sparkeras").__file__).collect()
print("RESULT", json.dumps({{"driver": sparkeras.__file__, "workers": sorted(set(workers)),
                            "daemon": spark.sparkContext.getConf().get("spark.python.daemon.module", None),
                            "accuracy": history.history["accuracy"][-1], "scored": len(scored)}}), flush=True)
"""


def test_sparkeras_shipped_with_py_files_trains_on_executors_that_never_installed_it(cluster, tmp_path):
    """``spark-submit --py-files sparkeras.zip`` to executors whose Python has no sparkeras installed (the README
    offers it). Every task failed: the session's Python daemon, ``sparkeras.worker.daemon``, is imported before Spark
    puts the zip on a task's path. A driver that imports sparkeras from the zip now keeps pyspark's daemon, so the
    fit, its prediction and the user's own functions run with sparkeras from the zip on both hosts."""
    import pyspark

    from shipped import python_without_sparkeras, sparkeras_zip

    python = python_without_sparkeras(str(tmp_path))
    script = tmp_path / "shipped.py"
    script.write_text(SHIPPED.format(tests=os.path.dirname(os.path.abspath(__file__))))
    submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    env = dict(cluster.driver_env(), PYSPARK_PYTHON=python, PYSPARK_DRIVER_PYTHON=python)
    out = subprocess.run([submit, "--master", cluster.url, "--py-files", sparkeras_zip(str(tmp_path)), str(script)],
                         capture_output=True, text=True, timeout=240, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, out.stderr[-4000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["driver"].endswith("sparkeras.zip/sparkeras/__init__.py"), result
    assert result["workers"] and all(path.endswith(".zip/sparkeras/__init__.py") for path in result["workers"]), result
    assert result["daemon"] is None, result  # pyspark's own
    assert result["accuracy"] > 0.8 and result["scored"] == 40, result
