"""The collectives of barrier tasks, and the driver's rendezvous: real processes, real sockets, real segments.

Spark's ``local`` modes put every task on one machine, so the multi-machine
(hierarchical) paths are tested here with processes that are told they sit
on different hosts: loopback addresses 127.0.0.1, 127.0.0.2 and so on, which
every Linux machine answers. Each machine's tasks share a segment, and the
machines' leaders form the authenticated TCP ring.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time

import numpy as np
import pytest

from sparkeras.comm import ring as ring_module
from sparkeras.comm.collective import Collective, Rendezvous, _look_up
from sparkeras.comm.ring import LeaderRing, ring_key
from sparkeras.comm.server import FrameClient, FrameServer
from sparkeras.comm.shared_memory import _ORDERED_STORES, _FlagBarrier, host_groups
from sparkeras.comm.wire import write_frame

SIZES = (5, 1000, 70_000, 150_000, 7)  # grows the segment twice, then reuses it
DTYPES = ("float32", "float64", "int64")


def _contribution(rank: int, size: int, dtype: str) -> np.ndarray:
    values = (np.arange(size) * (rank + 3) + 11 * rank) % 1009
    return values.astype(dtype) if dtype == "int64" else (values / 7).astype(dtype)


def _rank_main(rank: int, hosts: list[str], address: tuple, shared_memory: bool,
               results: "multiprocessing.Queue") -> None:
    """One barrier task: join as :meth:`Collective.join` would, reduce every size, dtype and op, report."""
    import sys

    from sparkeras.comm.server import ServerAddress

    joined = Collective.connect(rank, hosts, 7, ServerAddress(*address), timeout=60, shared_memory=shared_memory)
    got = {}
    for size in SIZES:
        for dtype in DTYPES:
            for op in ("sum", "max", "min"):
                got[(size, dtype, op)] = joined.allreduce_(_contribution(rank, size, dtype), op).tobytes()
    got["mean"] = joined.allreduce(np.full(3, float(rank)), "mean").tolist()
    got["broadcast"] = joined.broadcast(np.arange(300_000, dtype=np.float64) * (rank + 1),
                                        root=len(hosts) - 1).tobytes()
    got["empty"] = joined.allreduce(np.zeros(0), "sum").size
    joined.barrier()
    got["transport"] = joined.transport
    got["torch"] = any(name == "torch" or name.startswith("torch.") for name in sys.modules)
    joined.close()
    results.put((rank, got))


def _run_ranks(hosts: list[str], shared_memory: bool = True) -> dict[int, dict]:
    rendezvous = Rendezvous(timeout=60)
    server = FrameServer("127.0.0.1", rendezvous.handle, 0, "test-rendezvous")
    address = (server.address.host, server.address.port, server.address.secret)
    try:
        return _spawned(_rank_main, len(hosts), lambda r, results: (r, hosts, address, shared_memory, results))
    finally:
        server.close()
        rendezvous.close()


def _spawned(target, count: int, arguments) -> dict[int, dict]:
    """Run ``target(*arguments(rank, results))`` in ``count`` fresh interpreters (nothing imported torch
    before); each puts ``(rank, what it got)`` on ``results``."""
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    ranks = [spawn.Process(target=target, args=arguments(r, results)) for r in range(count)]
    for p in ranks:
        p.start()
    out = dict(results.get(timeout=240) for _ in ranks)
    for p in ranks:
        p.join(timeout=30)
        assert p.exitcode == 0
    return out


def _segments() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("sparkeras-")} if os.path.isdir("/dev/shm") else set()


@pytest.mark.parametrize("hosts, shared_memory", [
    (["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"], True),
    (["127.0.0.1", "127.0.0.2", "127.0.0.2"], True),  # a machine whose leader is alone
    (["127.0.0.1", "127.0.0.2", "127.0.0.3"], True),  # a ring of three: uneven segments, two steps each way
    (["127.0.0.1", "127.0.0.1", "127.0.0.1"], False),  # every task its own member of the ring
], ids=["two-machines-of-two", "a-lone-leader", "three-machines", "no-shared-memory"])
def test_the_collective_equals_numpy_on_every_rank_between_machines_without_torch(hosts, shared_memory):
    if shared_memory and not _ORDERED_STORES:
        pytest.skip("the flags need x86-64's store order; elsewhere every task joins the ring")
    before = _segments()
    out = _run_ranks(hosts, shared_memory)
    for size in SIZES:
        for dtype in DTYPES:
            parts = [_contribution(r, size, dtype) for r in range(len(hosts))]
            for op, want in (("sum", np.sum(parts, 0)), ("max", np.max(parts, 0)), ("min", np.min(parts, 0))):
                first = out[0][(size, dtype, op)]
                for rank in range(len(hosts)):
                    assert out[rank][(size, dtype, op)] == first, f"rank {rank} differs for {size} x {dtype} {op}"
                np.testing.assert_allclose(np.frombuffer(first, dtype), want.astype(dtype), rtol=1e-6)
    root = (np.arange(300_000, dtype=np.float64) * len(hosts)).tobytes()
    for rank, got in out.items():
        assert got["mean"] == [sum(range(len(hosts))) / len(hosts)] * 3
        assert got["broadcast"] == root
        assert got["empty"] == 0
        shares = shared_memory and hosts.count(hosts[rank]) > 1
        assert got["transport"] == ("shared memory" if shares else "tcp"), rank
        assert not got["torch"], f"rank {rank} imported torch"
    assert _segments() == before  # unlinked as soon as every peer had it mapped


def _join_ring(driver_address, index: int, hosts: list[str], out: dict, timeout: float = 30) -> None:
    client = FrameClient(driver_address, 0, timeout=timeout)
    try:
        out[index] = LeaderRing.join(client, 11, index, hosts, driver_address.secret, timeout)
    except Exception as exc:  # noqa: BLE001 - the test checks it
        out[index] = exc
    finally:
        client.close()


def _published(rendezvous: Rendezvous, key: str, within: float = 30) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with rendezvous._changed:
            entry = rendezvous._published.get((11, key))
        if entry:
            return entry["address"]
        time.sleep(0.05)
    raise AssertionError(f"nothing published under {key}")


def test_the_ring_drops_a_stranger_and_a_replayed_hello_and_still_forms():
    """A peer must prove the job's secret over the listener's fresh challenge before it is let into the ring,
    and a silent stranger does not hold it back."""
    rendezvous = Rendezvous(timeout=30)
    server = FrameServer("127.0.0.1", rendezvous.handle, 0, "test-rendezvous")
    hosts = ["127.0.0.1", "127.0.0.2"]
    rings: dict = {}
    first = threading.Thread(target=_join_ring, args=(server.address, 0, hosts, rings))
    first.start()
    host, port = _published(rendezvous, "ring0").rsplit(":", 1)
    assert host == "127.0.0.1"  # it listens on its own machine's address only
    hello = {"type": "ring-hello", "stage": 11, "from": 1, "nonce": "00" * 16}
    for key, challenge in ((b"not the job's secret", None), (ring_key(server.address.secret), "ab" * 16)):
        with socket.create_connection((host, int(port)), timeout=10) as stranger:
            issued = stranger.recv(16)
            assert len(issued) == 16
            write_frame(stranger, key, dict(hello, challenge=challenge or issued.hex()))
            try:
                answer = stranger.recv(1024)
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # dropped without a word
    silent = socket.create_connection((host, int(port)), timeout=10)  # connects and never says a word
    assert len(silent.recv(16)) == 16
    second = threading.Thread(target=_join_ring, args=(server.address, 1, hosts, rings))
    second.start()
    first.join(timeout=60)
    second.join(timeout=60)
    try:
        assert all(isinstance(rings[i], LeaderRing) for i in (0, 1)), rings
        silent.settimeout(0.5)
        with pytest.raises(socket.timeout):  # still waited on: the peer did not queue behind its handshake
            silent.recv(1)
        silent.close()
        sums = [np.arange(10.0) * (i + 1) for i in (0, 1)]
        reducers = [threading.Thread(target=rings[i].allreduce_, args=(sums[i], "sum")) for i in (0, 1)]
        for t in reducers:
            t.start()
        for t in reducers:
            t.join(timeout=30)
        assert [s.tolist() for s in sums] == [(np.arange(10.0) * 3).tolist()] * 2
    finally:
        for r in rings.values():
            if isinstance(r, LeaderRing):
                r.close()
        server.close()


def _impostor() -> int:
    """A port where something else listens: it takes a connection, sends a challenge and hangs up."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"x" * 16)
                conn.recv(4096)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


@pytest.mark.parametrize("earlier", ["dead", "taken"])
def test_a_leader_given_a_stale_address_asks_again_and_joins_the_live_one(monkeypatch, earlier):
    """An earlier attempt's address where nobody listens, or where another process listens now."""
    monkeypatch.setattr(ring_module, "_CONNECT_TIMEOUT", 1.0)
    if earlier == "dead":
        with socket.socket() as probe:  # a port nobody listens on once closed
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    else:
        port = _impostor()
    rendezvous = Rendezvous(timeout=30)
    server = FrameServer("127.0.0.1", rendezvous.handle, 0, "test-rendezvous")
    rendezvous.handle({"type": "publish", "stage": 11, "key": "ring1", "lookups": 1,
                       "address": f"127.0.0.1:{port}"}, b"")  # an earlier attempt's leader 1
    hosts = ["127.0.0.1", "127.0.0.2"]
    rings: dict = {}
    first = threading.Thread(target=_join_ring, args=(server.address, 0, hosts, rings))
    first.start()
    time.sleep(1.5)  # the new attempt's leader 1 comes a little later
    _join_ring(server.address, 1, hosts, rings)
    first.join(timeout=60)
    try:
        assert all(isinstance(rings[i], LeaderRing) for i in (0, 1)), rings
    finally:
        for r in rings.values():
            if isinstance(r, LeaderRing):
                r.close()
        server.close()


def test_the_ring_names_the_machine_it_waited_for():
    rendezvous = Rendezvous(timeout=0.5)
    server = FrameServer("127.0.0.1", rendezvous.handle, 0, "test-rendezvous")
    rings: dict = {}
    try:
        _join_ring(server.address, 0, ["127.0.0.1", "127.0.0.2", "127.0.0.3"], rings, timeout=3)
        assert isinstance(rings[0], TimeoutError)
        assert str(rings[0]) == ("machine 0 (127.0.0.1): the all-reduce leader of machine 1 (127.0.0.2) did not "
                                 "start within the rendezvous timeout")
        rendezvous.timeout = 30
        both: dict = {}
        threads = [threading.Thread(target=_join_ring, args=(server.address, i, ["127.0.0.1", "127.0.0.2"], both))
                   for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        lonely, gone = both[0], both[1]
        lonely.timeout = 0.5
        with pytest.raises(TimeoutError, match=r"machine 0 \(127.0.0.1\): waited 0.5s for bytes from machine 1 "
                                               r"\(127.0.0.2\) in an all-reduce"):
            lonely.allreduce_(np.ones(1000), "sum")  # machine 1 sends nothing
        gone.close()
        with pytest.raises(ConnectionError, match=r"machine 0 \(127.0.0.1\): lost the all-reduce connection to "
                                                  r"machine 1 \(127.0.0.2\).*its task probably failed"):
            lonely.allreduce_(np.ones(1000), "sum")
        lonely.close()
    finally:
        server.close()


def test_a_machine_without_room_for_its_segment_says_to_turn_shared_memory_off():
    import resource
    import signal

    rendezvous = Rendezvous(timeout=2)
    server = FrameServer("127.0.0.1", rendezvous.handle, 0, "test-rendezvous")
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, previous[1]))  # a /dev/shm too small for the segment
    try:
        with pytest.raises(RuntimeError, match=r"could not create a shared-memory segment for the tasks of this "
                                               r"machine .*pass shared_memory=False to reduce over TCP instead"):
            Collective.connect(0, ["127.0.0.1", "127.0.0.1"], 3, server.address, timeout=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, handler)
        server.close()


def test_host_groups_keep_rank_order():
    assert host_groups(["x", "y", "x", "z", "y"]) == [[0, 2], [1, 4], [3]]


def test_rendezvous_serves_one_publication_to_its_attempt_and_waits_for_the_next():
    rendezvous = Rendezvous(timeout=0.5)
    lookup = {"type": "lookup", "stage": 3, "key": "machine0"}
    assert rendezvous.handle({"type": "epoch"}, b"") is None  # not its frame
    started = time.monotonic()
    assert rendezvous.handle(lookup, b"")[0] == {"address": ""}  # nobody published: times out
    assert time.monotonic() - started >= 0.45

    rendezvous.handle({"type": "publish", "stage": 3, "key": "machine0", "lookups": 2, "address": "h:1"}, b"")
    assert rendezvous.handle(lookup, b"")[0] == {"address": "h:1"}
    assert rendezvous.handle(lookup, b"")[0] == {"address": "h:1"}
    assert rendezvous.handle(lookup, b"")[0] == {"address": ""}  # both peers served: a third is a new attempt

    rendezvous.handle({"type": "publish", "stage": 3, "key": "machine0", "lookups": 2, "address": "h:2"}, b"")
    rendezvous.handle({"type": "stale", "stage": 3, "key": "machine0", "address": "h:1"}, b"")  # old: ignored
    assert rendezvous.handle(lookup, b"")[0] == {"address": "h:2"}
    rendezvous.handle({"type": "stale", "stage": 3, "key": "machine0", "address": "h:2"}, b"")
    assert rendezvous.handle(lookup, b"")[0] == {"address": ""}
    assert rendezvous.handle({"type": "lookup", "stage": 4, "key": "machine0"}, b"")[0] == {"address": ""}
    rendezvous.handle({"type": "publish", "stage": 3, "key": "ring1", "lookups": 1, "address": "h:3"}, b"")
    assert rendezvous.handle(lookup, b"")[0] == {"address": ""}  # keys are apart, as stages are


def test_a_lookup_that_never_gets_an_address_names_the_wait():
    rendezvous = Rendezvous(timeout=0.3)
    server = FrameServer("127.0.0.1", rendezvous.handle, 0, "test-rendezvous")
    client = FrameClient(server.address, 0, timeout=10)
    try:
        with pytest.raises(TimeoutError, match=r"local rank 1: the first task of this machine in the barrier "
                                               r"stage did not start within 5s"):
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


@pytest.mark.skipif(not _ORDERED_STORES, reason="the flags need x86-64's store order; elsewhere every task joins the ring")
@pytest.mark.parametrize("world, starve_growth", [(2, False), (3, False), (2, True)],
                         ids=["two-ranks", "three-ranks", "no-room-to-grow"])
def test_the_machine_collective_reduces_and_broadcasts_without_torch(world, starve_growth):
    before = _segments()
    addresses = multiprocessing.get_context("spawn").Queue()
    out = _spawned(_machine_rank_main, world, lambda r, results: (r, world, addresses, results, starve_growth))
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


@pytest.mark.skipif(not _ORDERED_STORES, reason="the flags need x86-64's store order; elsewhere every task joins the ring")
def test_a_segment_whose_creator_died_is_reported_stale_and_the_next_publication_joined():
    """An attempt's rank 0 published, then died before its peer looked: the peer must not wait on its segment."""
    from sparkeras.comm.machine import MachineCollective

    before = _segments()
    stale = _orphaned_segment()
    assert len(_segments() - before) == 1  # left behind by the dead creator

    rendezvous = Rendezvous(timeout=30)
    server = FrameServer("127.0.0.1", rendezvous.handle, 0, "test-rendezvous")
    rendezvous.handle({"type": "publish", "stage": 5, "key": "machine0", "lookups": 1, "address": stale}, b"")
    live = MachineCollective.create(2, timeout=30)

    def relaunch() -> None:  # the new attempt's rank 0 publishes a little later
        time.sleep(1.0)
        rendezvous.handle({"type": "publish", "stage": 5, "key": "machine0", "lookups": 1,
                           "address": live.address}, b"")

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


@pytest.mark.skipif(not _ORDERED_STORES, reason="the flags need x86-64's store order; elsewhere every task joins the ring")
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


@pytest.mark.skipif(not _ORDERED_STORES, reason="the flags need x86-64's store order; elsewhere every task joins the ring")
def test_the_driver_removes_a_segment_left_by_a_creator_that_died_before_its_peers_came():
    from sparkeras.comm.machine import MachineCollective

    before = _segments()
    orphan = _orphaned_segment()
    unlinked = MachineCollective.create(2, timeout=5)  # its file is gone already: nothing to do for it
    unlinked.close()
    rendezvous = Rendezvous(timeout=5)
    for stage, address in ((1, orphan), (2, unlinked.address), (3, "127.0.0.1:1234")):
        rendezvous.handle({"type": "publish", "stage": stage, "key": "machine0", "lookups": 1,
                           "address": address}, b"")
    assert len(_segments() - before) == 1  # nobody looked the orphan up
    rendezvous.close()  # the job is over
    assert _segments() == before
