"""The slot ledger that CrossValidator(parallelism=k) fits share; plain threads, no Spark needed."""

from __future__ import annotations

import threading
from multiprocessing.pool import ThreadPool

from sparkeras.ml.shares import SlotShares, pool_concurrency


def test_pool_concurrency_counts_the_threads_of_the_callers_pool():
    assert pool_concurrency() == 1
    with ThreadPool(3) as pool, ThreadPool(2):
        assert sorted(pool.map(lambda _: pool_concurrency(), range(3))) == [3, 3, 3]
    seen = []
    thread = threading.Thread(target=lambda: seen.append(pool_concurrency()))
    thread.start()
    thread.join()
    assert seen == [1]


def test_fits_in_a_pool_split_the_free_slots_and_take_over_freed_ones():
    shares = SlotShares()
    asked = []

    def slots():
        asked.append(1)
        return 5

    with shares.claim(None, slots) as alone:      # a plain fit: untouched, the cluster not asked
        assert alone is None and not asked
    first_claimed, release = threading.Event(), threading.Event()
    got = {}

    def fit(name, requested):
        if name != "first":
            assert first_claimed.wait(10)
        with shares.claim(requested, slots) as workers:
            got[name] = workers
            if name == "first":
                first_claimed.set()
                assert release.wait(10)

    with ThreadPool(2) as pool:
        first = pool.apply_async(fit, ("first", None))
        pool.apply_async(fit, ("second", 1)).get(10)    # numWorkers=1 caps its share
        assert shares.held == got["first"] == 2         # 5 slots split between 2 starting fits
        pool.apply_async(fit, ("third", None)).get(10)  # takes what is free beside the first
        release.set()
        first.get(10)
    assert (got["first"], got["second"], got["third"]) == (2, 1, 3)
    assert shares.held == 0 and len(asked) == 3
