"""sparkeras.run: user functions on barrier tasks with collectives, on real Spark."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import sparkeras
from sparkeras import InputError


def test_run_gives_rank_world_size_and_returns_rank_zeros_value(spark):
    def fn(ctx):
        return {"rank": ctx.rank, "world": ctx.world_size}

    assert sparkeras.run(fn, num_workers=2) == {"rank": 0, "world": 2}


@pytest.mark.parametrize("shared_memory, transport", [
    (True, "shared memory"),  # local mode: every task on this machine
    (False, "tcp")])  # every task its own member of the ring
def test_run_allreduce_and_broadcast_numpy_arrays(spark, shared_memory, transport):
    def fn(ctx):
        mine = np.arange(4, dtype=np.float32) + 10 * ctx.rank
        total = ctx.allreduce(mine, op="sum")
        mean = ctx.allreduce(mine)
        biggest = ctx.allreduce(np.array([ctx.rank]), op="max")
        root = ctx.broadcast(np.full(3, ctx.rank + 7.0), root=1)
        big = ctx.allreduce(np.full(200_000, ctx.rank + 1.0), op="sum")  # grows the shared segment
        wide = ctx.broadcast(np.arange(300_000) * (ctx.rank + 1), root=0)  # larger than the slot so far
        ctx.barrier()
        return (total.tolist(), mean.tolist(), int(biggest[0]), root.tolist(), float(big.min()),
                ctx.transport, bool(np.array_equal(wide, np.arange(300_000))), "torch" in sys.modules)

    total, mean, biggest, root, big, used, wide, torch = sparkeras.run(fn, num_workers=2, shared_memory=shared_memory)
    assert total == [10.0, 12.0, 14.0, 16.0]
    assert mean == [5.0, 6.0, 7.0, 8.0]
    assert biggest == 1
    assert root == [8.0, 8.0, 8.0]
    assert big == 3.0
    assert used == transport
    assert wide
    assert not torch  # the collectives need no torch, on one machine or between machines


def test_run_iterates_each_tasks_own_partition(spark):
    df = spark.range(0, 1000).selectExpr("id", "id * 2.0 AS twice")

    def fn(ctx):
        rows, ids = 0, 0.0
        for batch in ctx.partition():
            rows += batch.num_rows
            ids += float(np.sum(batch.column("id").to_numpy()))
        counts = ctx.allreduce(np.array([rows, ids], dtype=np.float64), op="sum")
        per_rank = ctx.allreduce(np.eye(ctx.world_size)[ctx.rank] * rows, op="sum")
        return counts.tolist(), per_rank.tolist()

    (rows, ids), per_rank = sparkeras.run(fn, num_workers=2, data=df)
    assert rows == 1000 and ids == sum(range(1000))  # every row seen exactly once
    assert all(n > 0 for n in per_rank) and sum(per_rank) == 1000  # split between the two tasks


def test_run_surfaces_the_workers_error(spark):
    def fn(ctx):
        if ctx.rank == 1:
            raise ValueError("rank one cannot go on")
        return 1

    with pytest.raises(sparkeras.WorkerError, match="rank one cannot go on") as failed:
        sparkeras.run(fn, num_workers=2, timeout=20)
    message = str(failed.value)  # the Python traceback, none of Spark's error class or JVM frames after it
    assert message.endswith("ValueError: rank one cannot go on"), message
    assert "SQLSTATE" not in message and "at py4j" not in message and "\tat " not in message, message


def test_arrays_of_different_shapes_or_dtypes_are_refused_on_every_rank_not_reduced(spark):
    """A rank's 3 values reduced with another's 4 gave rank 0 an answer in silence; now every rank refuses."""
    def shapes(ctx):
        return ctx.allreduce(np.zeros(3 if ctx.rank == 0 else 4), op="sum")

    with pytest.raises(InputError, match=r"ctx\.allreduce was given arrays of different shapes or dtypes on the "
                                         r"ranks: rank [01] passed shape \([34],\) of float64"):
        sparkeras.run(shapes, num_workers=2, timeout=30)

    def dtypes(ctx):
        alike = ctx.allreduce(np.ones((2, 2)), op="sum")  # the check passes arrays that agree
        return alike.tolist(), ctx.broadcast(np.zeros(3, np.float32 if ctx.rank else np.float64))

    with pytest.raises(InputError, match=r"ctx\.broadcast was given arrays of different shapes or dtypes"):
        sparkeras.run(dtypes, num_workers=2, timeout=30)


def test_run_refuses_more_workers_than_slots(spark):
    with pytest.raises(InputError, match=r"num_workers=3 barrier tasks must run at the same time.*2 task slots"):
        sparkeras.run(lambda ctx: None, num_workers=3)


def test_run_without_data_has_no_partition(spark):
    def fn(ctx):
        try:
            ctx.partition()
        except InputError as exc:
            return str(exc)

    assert "pass data=" in sparkeras.run(fn, num_workers=1)


def test_a_rank_that_misses_a_collective_fails_the_run_instead_of_hanging(spark):
    import time

    def fn(ctx):
        if ctx.rank == 0:
            ctx.allreduce(np.ones(3))  # rank 1 never joins this one
        return ctx.rank

    start = time.monotonic()
    with pytest.raises(sparkeras.WorkerError, match="while running the function on barrier tasks") as err:
        sparkeras.run(fn, num_workers=2, timeout=5)
    assert time.monotonic() - start < 60
    from sparkeras.comm.shared_memory import _ORDERED_STORES

    if _ORDERED_STORES:  # the two tasks share memory (elsewhere they meet in the ring): what it waited for, how long
        assert "local ranks [1] of this machine did not reach shared-memory barrier" in str(err.value), err.value
        assert "within 5s" in str(err.value), err.value
