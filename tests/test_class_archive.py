"""The driver JVM's class-data archive: built after a first session exits, then mapped by the next, quietly.

A session ``get_spark`` starts with no archive for this JDK and Spark asks
for a builder when its process exits (:mod:`sparkeras.class_archive`); the
builder runs a driver JVM with ``-XX:ArchiveClassesAtExit`` and renames the
finished file into place. That first process starts with the suite
(``conftest.class_archive_build``), so the build runs beside the other tests. The next session's JVM maps that file, which is
checked in its ``/proc/<pid>/maps``, not taken on trust from its flags.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from sparkeras import class_archive

pytestmark = pytest.mark.own_processes

SESSION = """
import sparkeras
from pyspark import SparkContext
spark = sparkeras.get_spark("local[1]")
assert spark.range(5).count() == 5
with open(f"/proc/{SparkContext._gateway.proc.pid}/maps") as f:
    print("MAPPED", "spark-driver-" in f.read(), flush=True)
spark.stop()
"""


def _session(env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_first_session_builds_the_archive_after_it_exits_and_the_next_maps_it(class_archive_build):
    cache, env = class_archive_build.cache, class_archive_build.env

    # What get_spark asks when it starts a JVM, without the JVM: the build is requested for this process's exit.
    out, err = class_archive_build.first.communicate(timeout=120)
    assert class_archive_build.first.returncode == 0 and out.split() == ["None", "True"], (out, err)
    deadline = time.monotonic() + 300
    archives = []
    while time.monotonic() < deadline and not archives:
        archives = [p for p in cache.glob("spark-driver-*.jsa")] if cache.exists() else []
        time.sleep(1)
    assert archives, f"no archive in {cache} 300 s after the first session exited: {sorted(os.listdir(cache))}"
    assert archives[0].stat().st_size > 1 << 20
    assert not list(cache.glob("*.partial")) and not list(cache.glob("*.failed"))

    second = _session(env)
    assert "MAPPED True" in second.stdout
    noise = [line for line in (second.stdout + second.stderr).splitlines()
             if "cds" in line.lower() or "sharedarchive" in line.lower() or "warning" in line.lower()]
    assert not noise, noise
    # The later sessions of the suite (subprocesses' and clusters') map it too: conftest runs this before them.
    os.environ.update(SPARKERAS_CACHE_DIR=str(cache), SPARKERAS_CLASS_ARCHIVE="1")


def test_the_archive_is_off_when_the_user_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARKERAS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(class_archive, "_build_requested", False)
    monkeypatch.setenv("SPARKERAS_CLASS_ARCHIVE", "0")
    assert class_archive.driver_java_options() is None
    assert not class_archive._build_requested and not (tmp_path / "cache").exists()


def test_an_archive_that_is_there_is_mapped_and_a_recent_failure_is_not_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARKERAS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SPARKERAS_CLASS_ARCHIVE", "1")
    monkeypatch.setattr(class_archive, "_build_requested", False)
    path = class_archive.archive_path()
    assert path is not None and os.path.dirname(path) == str(tmp_path)
    open(path + ".failed", "w").close()
    assert class_archive.driver_java_options() is None
    assert not class_archive._build_requested  # failed a moment ago: no new build
    with open(path, "wb") as f:
        f.truncate(2 << 20)
    assert class_archive.driver_java_options() == f"-XX:SharedArchiveFile={path} -Xlog:cds*=off"


def test_a_build_that_leaves_no_archive_fails_and_leaves_its_mark(tmp_path, monkeypatch):
    monkeypatch.setattr(class_archive, "_run_workload", lambda partial, deadline: None)  # a JVM that wrote nothing
    path = str(tmp_path / "spark-driver-0123456789abcdef.jsa")
    assert class_archive.build(path) is False
    assert os.path.exists(path + ".failed") and not os.path.exists(path)
