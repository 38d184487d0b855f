"""Same-machine all-reduce through shared memory, and the driver's rendezvous: real gloo, real processes.

Spark's ``local`` modes put every task on one machine, so the multi-machine
(hierarchical) paths are tested here with processes that are told they sit
on different hosts; each is a real torch.distributed/gloo rank.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

from sparkeras.comm import collective
from sparkeras.comm.collective import Rendezvous, _look_up
from sparkeras.comm.server import FrameClient, FrameServer
from sparkeras.comm.shared_memory import _ORDERED_STORES, _FlagBarrier, host_groups

SIZES = (5, 1000, 70_000, 150_000, 7)  # grows the segment twice, then reuses it
DTYPES = ("float32", "float64", "int64")


def _contribution(rank: int, size: int, dtype: str) -> np.ndarray:
    values = (np.arange(size) * (rank + 3) + 11 * rank) % 1009
    return values.astype(dtype) if dtype == "int64" else (values / 7).astype(dtype)


def _rank_main(rank: int, hosts: list[str], port: int, starve_creator: bool, chunk_bytes: int,
               results: "multiprocessing.Queue", last_rank_dies: bool = False, flag_barrier: bool = True) -> None:
    """One rank: reduce every size, dtype and op, and report what it got."""
    import resource
    import signal

    import torch.distributed as dist

    from sparkeras.comm.shared_memory import SharedMemoryAllreduce

    if starve_creator and rank == 0:  # a /dev/shm too small for the segment
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    store = dist.TCPStore("127.0.0.1", port, len(hosts), False, timeout=datetime.timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=len(hosts))
    reducer = SharedMemoryAllreduce.for_world(rank, hosts, store, chunk_bytes=chunk_bytes,
                                              flag_barrier=flag_barrier and _ORDERED_STORES)
    if last_rank_dies:  # before the first reduction, so before it maps the segment
        if rank == len(hosts) - 1:
            os._exit(0)
        try:
            reducer.allreduce_(np.ones(10), "sum")
        except RuntimeError as exc:
            results.put((rank, False, {"error": str(exc)}))
        return
    got = {}
    for size in SIZES:
        for dtype in DTYPES:
            for op in ("sum", "max", "min"):
                buffer = _contribution(rank, size, dtype)
                used = reducer.allreduce_(buffer, op)
                if not used:  # what Collective does then
                    import torch

                    from sparkeras.comm.collective import torch_op

                    dist.all_reduce(torch.from_numpy(buffer), op=torch_op(op))
                got[(size, dtype, op)] = (used, buffer.tobytes())
    enabled = reducer.enabled
    got["flags"] = reducer._flags is not None
    reducer.close()
    dist.destroy_process_group()
    results.put((rank, enabled, got))


def _run_ranks(hosts: list[str], starve_creator: bool = False, chunk_bytes: int = 8 << 20,
               last_rank_dies: bool = False, flag_barrier: bool = True) -> dict[int, tuple[bool, dict]]:
    import torch.distributed as dist

    server = dist.TCPStore("127.0.0.1", 0, len(hosts) + 1, True, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=60))
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    ranks = [spawn.Process(target=_rank_main, args=(r, hosts, server.port, starve_creator, chunk_bytes, results, last_rank_dies,
                                                       flag_barrier))
             for r in range(len(hosts))]
    for p in ranks:
        p.start()
    out = {}
    for _ in ranks[:-1] if last_rank_dies else ranks:
        rank, enabled, got = results.get(timeout=240)
        out[rank] = (enabled, got)
    for p in ranks:
        p.join(timeout=30)
        assert p.exitcode == 0
    return out


def _segments() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("sparkeras-")} if os.path.isdir("/dev/shm") else set()


@pytest.mark.parametrize("hosts, chunk_bytes, flag_barrier", [
    (["a", "a"], 8 << 20, True),
    (["a", "a"], 100_000, True),  # 150,000 float64 values pass in 12 chunks
    (["a", "a"], 100_000, False),  # the machine's ranks meet at gloo's barrier, as off x86-64
    (["a", "a", "b", "b"], 8 << 20, True),
    (["a", "b", "b"], 100_000, True),  # the lone leader must chunk its gloo calls like the others
], ids=["one-machine", "one-machine-chunked", "one-machine-gloo-barrier", "two-machines-of-two",
        "a-lone-leader-chunked"])
def test_shared_memory_allreduce_equals_numpy_and_is_identical_on_every_rank(hosts, chunk_bytes, flag_barrier):
    before = _segments()
    out = _run_ranks(hosts, chunk_bytes=chunk_bytes, flag_barrier=flag_barrier)
    for size in SIZES:
        for dtype in DTYPES:
            parts = [_contribution(r, size, dtype) for r in range(len(hosts))]
            for op, want in (("sum", np.sum(parts, 0)), ("max", np.max(parts, 0)), ("min", np.min(parts, 0))):
                first = out[0][1][(size, dtype, op)][1]
                for rank in range(len(hosts)):
                    used, raw = out[rank][1][(size, dtype, op)]
                    assert used, (rank, size, dtype, op)
                    assert raw == first, f"rank {rank} differs from rank 0 for {size} x {dtype} {op}"
                np.testing.assert_allclose(np.frombuffer(first, dtype), want.astype(dtype), rtol=1e-6)
    assert all(enabled for enabled, _ in out.values())
    for rank, (_, got) in out.items():  # the flags where a rank shares its machine, on x86-64
        assert got["flags"] == (flag_barrier and _ORDERED_STORES and hosts.count(hosts[rank]) > 1)
    assert _segments() == before  # unlinked as soon as every peer had it mapped


def test_every_rank_falls_back_to_gloo_when_the_segment_cannot_be_made():
    out = _run_ranks(["a", "a"], starve_creator=True)
    parts = [_contribution(r, 1000, "float32") for r in range(2)]
    for rank in range(2):
        enabled, got = out[rank]
        assert not enabled
        used, raw = got[(1000, "float32", "sum")]
        assert not used  # both agreed, so gloo did it for both
        np.testing.assert_allclose(np.frombuffer(raw, np.float32), np.sum(parts, 0), rtol=1e-6)


def test_a_peer_that_dies_before_mapping_the_segment_leaves_no_file_behind():
    before = _segments()
    out = _run_ranks(["a", "a"], last_rank_dies=True)
    assert out[0][1]["error"]  # rank 0 learns it from gloo instead of waiting forever
    assert _segments() == before


def test_host_groups_keep_rank_order():
    assert host_groups(["x", "y", "x", "z", "y"]) == [[0, 2], [1, 4], [3]]


def test_rendezvous_serves_one_publication_to_its_attempt_and_waits_for_the_next():
    rendezvous = Rendezvous(timeout=0.5)
    lookup = {"type": "lookup", "stage": 3}
    assert rendezvous.handle({"type": "epoch"}, b"") is None  # not its frame
    started = time.monotonic()
    assert rendezvous.handle(lookup, b"")[0] == {"address": ""}  # nobody published: times out
    assert time.monotonic() - started >= 0.45

    rendezvous.handle({"type": "publish", "stage": 3, "world": 3, "address": "h:1"}, b"")
    assert rendezvous.handle(lookup, b"")[0] == {"address": "h:1"}
    assert rendezvous.handle(lookup, b"")[0] == {"address": "h:1"}
    assert rendezvous.handle(lookup, b"")[0] == {"address": ""}  # both peers served: a third is a new attempt

    rendezvous.handle({"type": "publish", "stage": 3, "world": 3, "address": "h:2"}, b"")  # Spark relaunched it
    rendezvous.handle({"type": "stale", "stage": 3, "address": "h:1"}, b"")  # an old address: ignored
    assert rendezvous.handle(lookup, b"")[0] == {"address": "h:2"}
    rendezvous.handle({"type": "stale", "stage": 3, "address": "h:2"}, b"")
    assert rendezvous.handle(lookup, b"")[0] == {"address": ""}
    assert rendezvous.handle({"type": "lookup", "stage": 4}, b"")[0] == {"address": ""}  # stages are apart


def test_a_task_given_a_dead_address_asks_again_and_joins_the_live_store(monkeypatch):
    import socket

    import torch.distributed as dist

    monkeypatch.setattr(collective, "_CONNECT_TIMEOUT", 1.0)
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    rendezvous = Rendezvous(timeout=30)
    server = FrameServer("127.0.0.1", rendezvous.handle, 0, "test-rendezvous")
    rendezvous.handle({"type": "publish", "stage": 9, "world": 2, "address": f"127.0.0.1:{dead}"}, b"")
    live = dist.TCPStore("127.0.0.1", 0, 2, True, wait_for_workers=False, timeout=datetime.timedelta(seconds=30))
    live.set("greeting", "from the live attempt")

    def relaunch() -> None:  # the new attempt's rank 0 publishes a little later
        time.sleep(2.0)
        rendezvous.handle({"type": "publish", "stage": 9, "world": 2, "address": f"127.0.0.1:{live.port}"}, b"")

    threading.Thread(target=relaunch, daemon=True).start()
    client = FrameClient(server.address, 0, timeout=30)
    try:
        store = _look_up(client, stage=9, rank=1, world=2, timeout=30)
        assert store.get("greeting") == b"from the live attempt"
    finally:
        client.close()
        server.close()


def test_a_lookup_that_never_gets_an_address_names_the_wait():
    rendezvous = Rendezvous(timeout=0.3)
    server = FrameServer("127.0.0.1", rendezvous.handle, 0, "test-rendezvous")
    client = FrameClient(server.address, 0, timeout=10)
    try:
        with pytest.raises(TimeoutError, match=r"rank 1: rank 0 of the barrier stage did not start within 5s"):
            _look_up(client, stage=1, rank=1, world=2, timeout=5)
    finally:
        client.close()
        server.close()


def test_flag_barrier_keeps_ranks_in_step_and_names_the_rank_that_never_arrives():
    """Two ranks in threads meet 2,000 times; each round's values must be the other's latest. Then one stays away."""
    import mmap

    memory = mmap.mmap(-1, 4096 * 2)
    data = np.frombuffer(memory, np.int64, 2, 4096)
    barriers = [_FlagBarrier(memory, r, 2, timeout=30.0) for r in range(2)]
    seen: list[list[int]] = [[], []]

    def rank(r: int) -> None:
        for i in range(2000):
            data[r] = i
            barriers[r].wait()
            seen[r].append(int(data[1 - r]))
            barriers[r].wait()  # nobody writes the next round before both have read this one

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert seen == [list(range(2000))] * 2

    lonely = _FlagBarrier(memory, 0, 2, timeout=0.3)
    lonely.reached = barriers[0].reached  # rank 1 never arrives at the next one
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"local ranks \[1\] of this machine did not reach shared-memory barrier "
                                           r"4001 within 0.3s"):
        lonely.wait()
    assert time.monotonic() - started < 5


# The collective of Spark's local modes: every task on this machine, shared memory alone, no torch.

def _machine_rank_main(rank: int, world: int, addresses: "multiprocessing.Queue", results: "multiprocessing.Queue",
                       starve_growth: bool) -> None:
    """One rank of a MachineCollective: join as a barrier task would, reduce and broadcast, report."""
    import resource
    import signal
    import sys

    from sparkeras.comm.machine import MachineCollective

    if rank == 0:
        joined = MachineCollective.create(world, timeout=60)
        for _ in range(world - 1):  # what the driver's rendezvous hands to each peer
            addresses.put(joined.address)
    else:
        joined = MachineCollective.open(addresses.get(timeout=60), rank, world, timeout=60)
    joined.meet()
    if starve_growth and rank == 0:  # no room for a larger segment: the first one must serve, in chunks
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    got = {}
    for size in SIZES:
        for dtype in DTYPES:
            for op in ("sum", "max", "min"):
                got[(size, dtype, op)] = joined.allreduce_(_contribution(rank, size, dtype), op).tobytes()
    got["mean"] = joined.allreduce(np.full(3, float(rank)), "mean").tolist()
    got["broadcast"] = joined.broadcast(np.arange(300_000, dtype=np.float64) * (rank + 1), root=world - 1).tobytes()
    got["empty"] = joined.allreduce(np.zeros(0), "sum").size
    joined.barrier()
    got["capacity"] = joined._slots._capacity
    got["transport"] = joined.transport
    got["torch"] = any(name == "torch" or name.startswith("torch.") for name in sys.modules)
    joined.close()
    results.put((rank, got))


@pytest.mark.skipif(not _ORDERED_STORES, reason="the flags need x86-64's store order; elsewhere gloo serves")
@pytest.mark.parametrize("world, starve_growth", [(2, False), (3, False), (2, True)],
                         ids=["two-ranks", "three-ranks", "no-room-to-grow"])
def test_the_machine_collective_reduces_and_broadcasts_without_torch(world, starve_growth):
    before = _segments()
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: nothing imported torch before
    addresses, results = spawn.Queue(), spawn.Queue()
    ranks = [spawn.Process(target=_machine_rank_main, args=(r, world, addresses, results, starve_growth))
             for r in range(world)]
    for p in ranks:
        p.start()
    out = dict(results.get(timeout=240) for _ in ranks)
    for p in ranks:
        p.join(timeout=30)
        assert p.exitcode == 0
    for size in SIZES:
        for dtype in DTYPES:
            parts = [_contribution(r, size, dtype) for r in range(world)]
            for op, want in (("sum", np.sum(parts, 0)), ("max", np.max(parts, 0)), ("min", np.min(parts, 0))):
                first = out[0][(size, dtype, op)]
                assert all(out[r][(size, dtype, op)] == first for r in range(world)), (size, dtype, op)
                np.testing.assert_allclose(np.frombuffer(first, dtype), want.astype(dtype), rtol=1e-6)
    root = (np.arange(300_000, dtype=np.float64) * world).tobytes()
    for rank in range(world):
        got = out[rank]
        assert got["mean"] == [sum(range(world)) / world] * 3
        assert got["broadcast"] == root
        assert got["empty"] == 0
        assert got["transport"] == "shared memory"
        assert not got["torch"], f"rank {rank} imported torch"
        if starve_growth:  # without room to grow, the first 64 KB slot passed everything in chunks
            assert got["capacity"] == 1 << 16
        else:  # grown (by doubling) until the 2.4 MB broadcast fit one slot
            assert got["capacity"] >= 2_400_000
    assert _segments() == before  # every file unlinked once all ranks had it mapped


def _exit_holding_a_segment(addresses: "multiprocessing.Queue") -> None:
    from sparkeras.comm.machine import MachineCollective

    addresses.put(MachineCollective.create(2, timeout=60).address)
    addresses.close()
    addresses.join_thread()  # the address is sent before the process dies
    os._exit(0)  # dies as a killed task would: no close, no unlink


def _orphaned_segment() -> str:
    """The address of a segment whose creator (another process) has died without unlinking it."""
    spawn = multiprocessing.get_context("spawn")
    addresses = spawn.Queue()
    creator = spawn.Process(target=_exit_holding_a_segment, args=(addresses,))
    creator.start()
    address = addresses.get(timeout=120)
    creator.join(timeout=30)
    return address


@pytest.mark.skipif(not _ORDERED_STORES, reason="the flags need x86-64's store order; elsewhere gloo serves")
def test_a_segment_whose_creator_died_is_reported_stale_and_the_next_publication_joined():
    """An attempt's rank 0 published, then died before its peer looked: the peer must not wait on its segment."""
    from sparkeras.comm.machine import MachineCollective

    before = _segments()
    stale = _orphaned_segment()
    assert len(_segments() - before) == 1  # left behind by the dead creator

    rendezvous = Rendezvous(timeout=30)
    server = FrameServer("127.0.0.1", rendezvous.handle, 0, "test-rendezvous")
    rendezvous.handle({"type": "publish", "stage": 5, "world": 2, "address": stale}, b"")
    live = MachineCollective.create(2, timeout=30)

    def relaunch() -> None:  # the new attempt's rank 0 publishes a little later
        time.sleep(1.0)
        rendezvous.handle({"type": "publish", "stage": 5, "world": 2, "address": live.address}, b"")

    threading.Thread(target=relaunch, daemon=True).start()
    client = FrameClient(server.address, 0, timeout=30)
    try:
        joined = _look_up(client, stage=5, rank=1, world=2, timeout=30)
        assert isinstance(joined, MachineCollective)
        meeting = threading.Thread(target=live.meet)
        meeting.start()
        joined.meet()
        meeting.join(timeout=30)
        both = [None, None]
        reducers = [threading.Thread(target=lambda c=c, r=r: both.__setitem__(r, c.allreduce(np.full(4, r + 1.0))))
                    for r, c in enumerate((live, joined))]
        for t in reducers:
            t.start()
        for t in reducers:
            t.join(timeout=30)
        assert [b.tolist() for b in both] == [[3.0] * 4] * 2
    finally:
        client.close()
        server.close()
        live.close()
    assert _segments() == before  # the dead creator's file too: the peer that found it stale removed it


@pytest.mark.skipif(not _ORDERED_STORES, reason="the flags need x86-64's store order; elsewhere gloo serves")
def test_the_machine_collective_names_a_peer_that_never_joins_and_a_segment_it_cannot_map():
    from sparkeras.comm.machine import MachineCollective

    before = _segments()
    alone = MachineCollective.create(2, timeout=0.5)
    address = alone.address
    with pytest.raises(TimeoutError, match=r"rank 0: not all 2 barrier tasks reached the rendezvous within 0.5s "
                                           r"\(.*local ranks \[1\] of this machine did not reach"):
        alone.meet()
    alone.close()
    assert _segments() == before  # unlinked though its peer never came

    wrong = MachineCollective.create(2, timeout=5)
    prefix, name, token, capacity = wrong.address.split(":")
    with pytest.raises(RuntimeError, match=r"rank 1: cannot map the shared-memory segment /.*sparkeras-[0-9a-f]{24} "
                                           r"that rank 0 of this barrier stage made \(.*wrong size\); pass "
                                           r"shared_memory=False"):
        MachineCollective.open(f"{prefix}:{name}:{token}:{int(capacity) * 2}", 1, 2, timeout=5)
    wrong.close()
    assert MachineCollective.open(address, 1, 2, timeout=5) is None  # its file is gone: stale


@pytest.mark.skipif(not _ORDERED_STORES, reason="the flags need x86-64's store order; elsewhere gloo serves")
def test_the_driver_removes_a_segment_left_by_a_creator_that_died_before_its_peers_came():
    from sparkeras.comm.machine import MachineCollective

    before = _segments()
    orphan = _orphaned_segment()
    unlinked = MachineCollective.create(2, timeout=5)  # its file is gone already: nothing to do for it
    unlinked.close()
    rendezvous = Rendezvous(timeout=5)
    for stage, address in ((1, orphan), (2, unlinked.address), (3, "127.0.0.1:1234")):
        rendezvous.handle({"type": "publish", "stage": stage, "world": 2, "address": address}, b"")
    assert len(_segments() - before) == 1  # nobody looked the orphan up
    rendezvous.close()  # the job is over
    assert _segments() == before
