"""The in-memory transport: the conformance suite, then each fault it can inject.

Faults are seeded, so every count below is exact for its seed; where a test also states a range,
the range only says what the knob means (a 25 % drop rate loses about a quarter), it is not a
statistical tolerance that could flake.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from souverix_crdt.errors import (
    FrameTooLargeError,
    TransportBrokenError,
    TransportClosedError,
    TransportError,
)
from souverix_crdt.testing.transport_conformance import ConformanceError, TransportConformance
from souverix_crdt.transports.base import DEFAULT_MAX_FRAME, Transport
from souverix_crdt.transports.memory import Faults, LinkStats, MemoryNetwork, MemoryTransport

# --------------------------------------------------------------------------- conformance


def memory_suite(
    network: MemoryNetwork, *, ordered: bool = True, reliable: bool = True
) -> TransportConformance:
    async def make_pair() -> tuple[Transport, Transport]:
        return network.connect("a", "b")

    async def inject_oversized(sender: Transport) -> None:
        assert isinstance(sender, MemoryTransport)
        network.inject(sender, bytes(network.max_frame + 1))

    return TransportConformance(
        make_pair=make_pair,
        pump=network.pump,
        ordered=ordered,
        reliable=reliable,
        max_frame=network.max_frame,
        inject_oversized=inject_oversized,
    )


@pytest.mark.parametrize("name", TransportConformance.check_names(receive_limit=True))
def test_conformance_clean_network(name: str) -> None:
    asyncio.run(memory_suite(MemoryNetwork(seed=0)).run(name))


LOSSY = TransportConformance.check_names(ordered=False, reliable=False, receive_limit=True)


@pytest.mark.parametrize("name", LOSSY)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_conformance_every_fault(name: str, seed: int) -> None:
    network = MemoryNetwork(seed=seed, max_frame=70_000)
    network.set_faults(drop=0.2, duplicate=0.2, reorder=0.3, delay=(0, 3))
    asyncio.run(memory_suite(network, ordered=False, reliable=False).run(name))


FIFO = TransportConformance.check_names(ordered=True, reliable=False, receive_limit=True)


@pytest.mark.parametrize("name", FIFO)
def test_conformance_lossy_but_ordered(name: str) -> None:
    # Drops and duplicates with a constant delay keep each direction in order.
    network = MemoryNetwork(seed=4, max_frame=70_000)
    network.set_faults(drop=0.2, duplicate=0.2, delay=2)
    asyncio.run(memory_suite(network, ordered=True, reliable=False).run(name))


def test_conformance_names_follow_capabilities() -> None:
    everything = set(TransportConformance.check_names(receive_limit=True))
    assert "check_order_preserved" in everything
    assert "check_order_preserved" not in LOSSY
    assert "check_cancelled_receive_loses_nothing" not in LOSSY
    assert "check_oversized_frame_refused_at_receive" not in TransportConformance.check_names()
    assert set(LOSSY) < set(FIFO) < everything


def test_conformance_run_all_and_misuse() -> None:
    suite = memory_suite(MemoryNetwork(seed=0))
    assert asyncio.run(suite.run_all()) == suite.applicable_checks()
    with pytest.raises(ValueError, match="unknown"):
        asyncio.run(suite.run("check_nothing"))
    lossy = memory_suite(MemoryNetwork(seed=0), reliable=False, ordered=False)
    with pytest.raises(ValueError, match="does not apply"):
        asyncio.run(lossy.run("check_order_preserved"))

    async def make_pair() -> tuple[Transport, Transport]:
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="pump"):
        TransportConformance(make_pair=make_pair, reliable=False)


class _Wrapper(Transport):
    """A transport that delegates to another, for deliberately broken variants."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.peer = inner.peer

    async def send(self, frame: bytes) -> None:
        await self.inner.send(frame)

    async def receive(self) -> bytes:
        return await self.inner.receive()

    async def close(self) -> None:
        await self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed


class _Corrupting(_Wrapper):
    async def receive(self) -> bytes:
        frame = await self.inner.receive()
        return frame[:-1] + b"?" if len(frame) > 1000 else frame


class _EmptyReadAtEnd(_Wrapper):
    async def receive(self) -> bytes:  # the classic stream bug: EOF read as an empty frame
        try:
            return await self.inner.receive()
        except TransportBrokenError:
            return b""


class _ForgetsItsLimit(_Wrapper):
    async def send(self, frame: bytes) -> None:
        if len(frame) > self.inner.max_frame:
            return  # silently swallowed instead of refused
        await self.inner.send(frame)


@pytest.mark.parametrize(
    ("wrapper", "check"),
    [
        (_Corrupting, "check_frames_arrive_intact"),
        (_EmptyReadAtEnd, "check_frames_before_close_then_broken"),
        (_EmptyReadAtEnd, "check_peer_close_wakes_pending_receive"),
        (_ForgetsItsLimit, "check_oversized_frame_refused_at_send"),
    ],
)
def test_conformance_catches_broken_transports(wrapper: type[_Wrapper], check: str) -> None:
    network = MemoryNetwork(seed=0)

    async def make_pair() -> tuple[Transport, Transport]:
        a, b = network.connect("a", "b")
        return wrapper(a), wrapper(b)

    suite = TransportConformance(make_pair=make_pair, pump=network.pump)
    with pytest.raises(ConformanceError):
        asyncio.run(suite.run(check))


def test_conformance_catches_reordering_claimed_ordered() -> None:
    network = MemoryNetwork(seed=0)
    network.set_faults(reorder=0.5)
    with pytest.raises(ConformanceError, match="order"):
        asyncio.run(memory_suite(network).run("check_order_preserved"))


def test_conformance_catches_a_hang() -> None:
    network = MemoryNetwork(seed=0)

    async def make_pair() -> tuple[Transport, Transport]:
        return network.connect("a", "b")

    # No pump: frames never move, so the receive waits until the guard fires.
    suite = TransportConformance(make_pair=make_pair, timeout=0.05)
    with pytest.raises(ConformanceError, match="did not finish"):
        asyncio.run(suite.run("check_empty_frame"))


# --------------------------------------------------------------------------- helpers


def exchange(network: MemoryNetwork, count: int, *, a: str = "a", b: str = "b") -> list[bytes]:
    """Send ``count`` numbered frames a→b, pump to idle, return what b received."""
    tx, rx = network.connect(a, b)
    for index in range(count):
        tx.send_nowait(index.to_bytes(4, "big"))
    network.run_until_idle()
    return rx.drain()


def numbers(frames: list[bytes]) -> list[int]:
    return [int.from_bytes(frame, "big") for frame in frames]


def balanced(stats: LinkStats) -> bool:
    return (
        stats.sent + stats.duplicated
        == stats.delivered + stats.dropped + stats.in_flight + stats.held
    )


# --------------------------------------------------------------------------- plain delivery


def test_frames_move_only_when_pumped() -> None:
    network = MemoryNetwork(seed=0)
    a, b = network.connect("region-a", "edge-a1")
    assert (a.peer, b.peer, a.name, b.name) == ("edge-a1", "region-a", "region-a", "edge-a1")
    a.send_nowait(b"one")
    a.send_nowait(b"two")
    assert b.receive_nowait() is None
    assert network.stats("region-a", "edge-a1").in_flight == 2
    assert network.deliver(max_frames=1) == 1
    assert b.pending == 1
    assert network.deliver() == 1
    assert b.drain() == [b"one", b"two"]
    assert b.drain() == []
    assert network.now == 0  # without delays nothing needs a tick


def test_frames_are_immutable_copies() -> None:
    network = MemoryNetwork(seed=0)
    a, b = network.connect("a", "b")
    buffer = bytearray(b"original")
    a.send_nowait(buffer)  # type: ignore[arg-type]  # bytes-like is accepted at runtime
    buffer[:] = b"changed!"
    a.send_nowait(b"")
    network.deliver()
    frames = b.drain()
    assert frames == [b"original", b""]
    assert all(type(frame) is bytes for frame in frames)
    with pytest.raises(TypeError):
        a.send_nowait("text")  # type: ignore[arg-type]


def test_frame_limit_at_send_and_at_receive() -> None:
    network = MemoryNetwork(seed=0, max_frame=10)
    a, b = network.connect("a", "b")
    a.send_nowait(bytes(10))
    with pytest.raises(FrameTooLargeError) as excinfo:
        a.send_nowait(bytes(11))
    assert (excinfo.value.size, excinfo.value.limit) == (11, 10)
    network.inject(a, bytes(11))
    a.send_nowait(b"after")
    network.deliver()
    assert b.drain() == [bytes(10)]  # the good frame first; the bad one is next
    with pytest.raises(FrameTooLargeError):
        b.receive_nowait()
    assert b.drain() == [b"after"]
    assert MemoryNetwork(seed=0).max_frame == DEFAULT_MAX_FRAME


def test_connect_rejects_a_self_link() -> None:
    with pytest.raises(ValueError):
        MemoryNetwork(seed=0).connect("a", "a")
    with pytest.raises(ValueError):
        MemoryNetwork(seed=0).connect("", "a")


# --------------------------------------------------------------------------- close


def test_close_sync_semantics() -> None:
    network = MemoryNetwork(seed=0)
    a, b = network.connect("a", "b")
    a.send_nowait(b"before-close")
    b.send_nowait(b"to-a")
    a.close_nowait()
    a.close_nowait()
    assert a.closed
    with pytest.raises(TransportClosedError):
        a.send_nowait(b"x")
    with pytest.raises(TransportClosedError):
        a.drain()
    with pytest.raises(TransportBrokenError):
        b.send_nowait(b"x")
    # b learns of the close only behind what a sent before it.
    assert not b.closed
    assert b.receive_nowait() is None
    network.deliver()
    assert b.receive_nowait() == b"before-close"
    assert b.closed
    with pytest.raises(TransportBrokenError):
        b.receive_nowait()
    with pytest.raises(TransportBrokenError):
        b.drain()
    # What b sent to the closed side is lost, and counted.
    assert network.stats("b", "a").dropped == 1


def test_pending_receive_waits_for_frames_ahead_of_the_close() -> None:
    async def scenario() -> None:
        network = MemoryNetwork(seed=0)
        network.set_faults(delay=2)
        a, b = network.connect("a", "b")
        a.send_nowait(b"late")
        await a.close()
        pending = asyncio.ensure_future(b.receive())
        await asyncio.sleep(0)
        assert not pending.done()
        network.step(2)
        assert await pending == b"late"
        with pytest.raises(TransportBrokenError):
            await b.receive()

    asyncio.run(scenario())


def test_pending_receive_sees_close_when_last_frame_is_lost() -> None:
    async def scenario() -> None:
        network = MemoryNetwork(seed=0)
        network.set_faults(delay=1)
        a, b = network.connect("a", "b")
        a.send_nowait(b"lost")
        await a.close()
        pending = asyncio.ensure_future(b.receive())
        network.partition("a", "b")
        await network.pump()
        with pytest.raises(TransportBrokenError):
            await pending

    asyncio.run(scenario())


# --------------------------------------------------------------------------- determinism


def faulty_run(seed: int, *, other_traffic: bool = False) -> tuple[list[list[bytes]], LinkStats]:
    network = MemoryNetwork(seed=seed)
    network.set_faults(drop=0.2, duplicate=0.2, reorder=0.3, delay=(0, 3))
    a, b = network.connect("a", "b")
    c, _ = network.connect("c", "d")
    per_step: list[list[bytes]] = []
    for index in range(200):
        a.send_nowait(index.to_bytes(4, "big"))
        if other_traffic:
            c.send_nowait(b"noise")
        if index % 3 == 0:
            network.step()
        per_step.append(b.drain())
    network.run_until_idle()
    per_step.append(b.drain())
    return per_step, network.stats("a", "b")


def test_same_seed_same_deliveries() -> None:
    first, first_stats = faulty_run(11)
    assert faulty_run(11) == (first, first_stats)
    assert faulty_run(12)[0] != first


def test_other_links_do_not_change_a_links_deliveries() -> None:
    assert faulty_run(11, other_traffic=True) == faulty_run(11)


def test_no_faults_draws_nothing_and_keeps_order() -> None:
    assert numbers(exchange(MemoryNetwork(seed=5), 500)) == list(range(500))


# --------------------------------------------------------------------------- each fault


def test_drop() -> None:
    network = MemoryNetwork(seed=21)
    network.set_faults("a", "b", drop=0.25)
    received = exchange(network, 1000)
    stats = network.stats("a", "b")
    assert stats.sent == 1000
    assert stats.delivered == len(received)
    assert stats.dropped == 1000 - len(received)
    assert 200 <= stats.dropped <= 300  # about a quarter, exactly the same on every run
    assert numbers(received) == sorted(numbers(received))  # losses do not reorder
    assert balanced(stats)


def test_drop_everything_and_nothing() -> None:
    network = MemoryNetwork(seed=0)
    network.set_faults(drop=1.0)
    assert exchange(network, 50) == []
    assert network.stats("a", "b").dropped == 50
    network.set_faults(drop=0.0)
    assert len(exchange(network, 50)) == 50


def test_duplicate() -> None:
    network = MemoryNetwork(seed=22)
    network.set_faults(duplicate=0.3)
    received = exchange(network, 500)
    stats = network.stats("a", "b")
    copies = Counter(numbers(received))
    assert set(copies) == set(range(500))
    assert max(copies.values()) == 2
    assert stats.duplicated == sum(1 for count in copies.values() if count == 2)
    assert 100 <= stats.duplicated <= 200
    assert stats.delivered == 500 + stats.duplicated == len(received)


def test_reorder() -> None:
    network = MemoryNetwork(seed=23)
    network.set_faults(reorder=0.2)
    received = numbers(exchange(network, 300))
    stats = network.stats("a", "b")
    assert sorted(received) == list(range(300))
    assert received != list(range(300))
    assert stats.reordered > 0
    overtakes = sum(1 for before, after in itertools.pairwise(received) if after < before)
    assert overtakes > 0


def test_fixed_delay_counts_ticks() -> None:
    network = MemoryNetwork(seed=0)
    network.set_faults(delay=3)
    a, b = network.connect("a", "b")
    a.send_nowait(b"x")
    assert network.deliver() == 0
    assert network.step() == 0
    assert network.step() == 0
    assert network.step() == 1
    assert network.now == 3
    assert b.drain() == [b"x"]


def test_random_delay_stays_within_bounds_and_reorders() -> None:
    network = MemoryNetwork(seed=24)
    network.set_faults(delay=(1, 4))
    a, b = network.connect("a", "b")
    for index in range(100):
        a.send_nowait(index.to_bytes(4, "big"))
    assert network.deliver() == 0  # a delay of at least one tick
    arrived: list[int] = []
    for _ in range(4):
        network.step()
        arrived += numbers(b.drain())
    assert sorted(arrived) == list(range(100))
    assert arrived != list(range(100))
    assert network.stats("a", "b").in_flight == 0


def test_run_until_idle_bounds_the_steps() -> None:
    network = MemoryNetwork(seed=0)
    network.set_faults(delay=5)
    a, _ = network.connect("a", "b")
    a.send_nowait(b"x")
    with pytest.raises(RuntimeError):
        network.run_until_idle(max_steps=3)
    assert network.run_until_idle() == 1


def test_faults_per_direction_and_default() -> None:
    network = MemoryNetwork(seed=0)
    network.set_faults(delay=2)
    network.set_faults("a", "b", drop=1.0)
    assert network.faults("a", "b") == Faults(drop=1.0)
    assert network.faults("b", "a") == Faults(delay=(2, 2))
    a, b = network.connect("a", "b")
    a.send_nowait(b"lost")
    b.send_nowait(b"slow")
    network.run_until_idle()
    assert (b.drain(), a.drain()) == ([], [b"slow"])
    network.clear_faults("a", "b")
    assert network.faults("a", "b") == Faults(delay=2)
    network.clear_faults()
    assert network.faults("a", "b") == Faults()
    assert not network.faults("a", "b").active


@pytest.mark.parametrize(
    "knobs",
    [{"drop": 1.5}, {"duplicate": -0.1}, {"reorder": True}, {"delay": (3, 1)}, {"delay": -1}],
)
def test_fault_knobs_are_validated(knobs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Faults(**knobs)  # type: ignore[arg-type]


def test_set_faults_needs_both_names() -> None:
    with pytest.raises(ValueError):
        MemoryNetwork(seed=0).set_faults("a", drop=0.1)
    with pytest.raises(ValueError):
        MemoryNetwork(seed=0).clear_faults(dst="b")


# --------------------------------------------------------------------------- partitions


def test_partition_drops_and_heal_restores() -> None:
    network = MemoryNetwork(seed=0)
    network.set_faults(delay=1)
    a, b = network.connect("a", "b")
    a.send_nowait(b"in-flight")  # still travelling when the cut happens: lost
    network.partition("b", "a")
    assert network.partitioned("a", "b")
    a.send_nowait(b"during")
    b.send_nowait(b"during-back")
    network.run_until_idle()
    assert (b.drain(), a.drain()) == ([], [])
    assert network.stats("a", "b").dropped == 2
    assert network.stats("b", "a").dropped == 1
    network.heal("a", "b")
    assert not network.partitioned("a", "b")
    a.send_nowait(b"after")
    network.run_until_idle()
    assert b.drain() == [b"after"]
    assert not a.closed  # a partition is silent
    assert not b.closed


def test_partition_applies_to_new_connections_only_between_those_names() -> None:
    network = MemoryNetwork(seed=0)
    network.partition("a", "b")
    a, b = network.connect("a", "b")
    c, d = network.connect("a", "c")
    a.send_nowait(b"cut")
    c.send_nowait(b"fine")
    network.deliver()
    assert (b.drain(), d.drain()) == ([], [b"fine"])


def test_hold_partition_delivers_after_heal() -> None:
    network = MemoryNetwork(seed=0)
    a, b = network.connect("a", "b")
    network.partition("a", "b", hold=True)
    for index in range(5):
        a.send_nowait(index.to_bytes(4, "big"))
    b.send_nowait(b"back")
    network.run_until_idle()
    assert b.drain() == []
    assert network.stats("a", "b").held == 5
    assert network.totals.held == 6
    network.heal("a", "b")
    assert network.deliver() == 6
    assert numbers(b.drain()) == [0, 1, 2, 3, 4]
    assert a.drain() == [b"back"]
    assert balanced(network.totals)


# --------------------------------------------------------------------------- broken links


def test_break_link_breaks_both_sides() -> None:
    async def scenario() -> None:
        network = MemoryNetwork(seed=0)
        network.set_faults(delay=2)
        a, b = network.connect("a", "b")
        a.send_nowait(b"in-flight")
        b.send_nowait(b"also")
        network.step(2)
        a.send_nowait(b"never")
        pending = asyncio.ensure_future(b.receive())
        await asyncio.sleep(0)  # b already has a frame: receive would return it; pending is new
        other = asyncio.ensure_future(a.receive())
        await asyncio.sleep(0)
        assert network.break_link("b", "a") == 1
        with pytest.raises(TransportBrokenError):
            await other
        # The first receive either got its frame before the break or fails with the link.
        with contextlib.suppress(TransportBrokenError):
            assert await pending == b"in-flight"
        for end in (a, b):
            assert end.closed
            with pytest.raises(TransportBrokenError):
                end.send_nowait(b"x")
            with pytest.raises(TransportBrokenError):
                end.receive_nowait()
            with pytest.raises(TransportBrokenError):
                await end.receive()
        stats = network.stats("a", "b")
        assert stats.in_flight == 0
        assert stats.dropped == 1
        assert balanced(network.totals)
        # A reconnect gets a fresh, working connection.
        c, d = network.connect("a", "b")
        await c.send(b"again")
        await network.pump()
        assert await d.receive() == b"again"
        # Our own close still reads as ours.
        await c.close()
        assert network.break_link("a", "b") == 1
        with pytest.raises(TransportClosedError):
            await c.receive()
        with pytest.raises(TransportBrokenError):
            await d.receive()

    asyncio.run(scenario())


def test_break_link_wakes_a_waiting_receive() -> None:
    async def scenario() -> None:
        network = MemoryNetwork(seed=0)
        a, b = network.connect("a", "b")
        pending = [asyncio.ensure_future(end.receive()) for end in (a, b)]
        await asyncio.sleep(0)
        assert not any(task.done() for task in pending)
        network.break_link("a", "b")
        for task in pending:
            with pytest.raises(TransportBrokenError):
                await task

    asyncio.run(scenario())


# --------------------------------------------------------------------------- counters


def test_byte_counters_add_up() -> None:
    network = MemoryNetwork(seed=31)
    network.set_faults(drop=0.1, duplicate=0.1, delay=(0, 2))
    a, b = network.connect("a", "b")
    to_b = [bytes(size) for size in range(0, 300, 3)]
    to_a = [b"y" * size for size in range(50)]
    for frame in to_b:
        a.send_nowait(frame)
    for frame in to_a:
        b.send_nowait(frame)
    network.run_until_idle()
    at_b, at_a = b.drain(), a.drain()
    forward, back = network.stats("a", "b"), network.stats("b", "a")
    assert forward.bytes_sent == sum(map(len, to_b))
    assert back.bytes_sent == sum(map(len, to_a))
    assert forward.bytes_delivered == sum(map(len, at_b))
    assert back.bytes_delivered == sum(map(len, at_a))
    assert (forward.delivered, back.delivered) == (len(at_b), len(at_a))
    assert network.totals == forward + back
    assert network.totals.bytes_delivered == sum(map(len, at_a + at_b))
    assert balanced(forward)
    assert balanced(back)
    assert network.stats("x", "y") == LinkStats()


# --------------------------------------------------------------------------- async pumping


def test_pump_lets_tasks_answer() -> None:
    async def scenario() -> None:
        network = MemoryNetwork(seed=41)
        network.set_faults(delay=(0, 2))
        client, server = network.connect("client", "server")

        async def echo() -> None:
            try:
                while True:
                    frame = await server.receive()
                    await asyncio.sleep(0)  # a little work between receive and reply
                    await server.send(b"re:" + frame)
            except TransportBrokenError:
                pass

        task = asyncio.ensure_future(echo())
        for index in range(20):
            await client.send(b"%d" % index)
        delivered = await network.pump()
        assert delivered == 40
        assert sorted(client.drain()) == sorted(b"re:%d" % index for index in range(20))
        await client.close()
        await network.pump()
        await task

    asyncio.run(scenario())


def test_pump_reports_endless_chatter() -> None:
    async def scenario() -> None:
        network = MemoryNetwork(seed=0)
        a, b = network.connect("a", "b")

        async def ping_pong(end: MemoryTransport) -> None:
            while True:
                await end.send(await end.receive())

        tasks = [asyncio.ensure_future(ping_pong(end)) for end in (a, b)]
        await a.send(b"ball")
        with pytest.raises(RuntimeError, match="busy"):
            await network.pump(max_rounds=50)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)

    asyncio.run(scenario())


def test_cancelled_send_sends_nothing() -> None:
    async def scenario() -> None:
        network = MemoryNetwork(seed=0)
        a, _ = network.connect("a", "b")
        task = asyncio.ensure_future(a.send(b"x"))
        task.cancel()
        await asyncio.wait([task])
        assert network.stats("a", "b").sent == 0

    asyncio.run(scenario())


# --------------------------------------------------------------------------- model-based


class NetworkMachine(RuleBasedStateMachine):
    """Random traffic, faults and partitions: every frame is accounted for, none is altered."""

    def __init__(self) -> None:
        super().__init__()
        self.network = MemoryNetwork(seed=99)
        self.ends = self.network.connect("a", "b")
        self.sent: dict[int, list[bytes]] = {0: [], 1: []}
        self.received: dict[int, list[bytes]] = {0: [], 1: []}
        self.cut = False
        self.counter = 0

    @rule(side=st.integers(0, 1), size=st.integers(0, 40))
    def send(self, side: int, size: int) -> None:
        self.counter += 1
        frame = self.counter.to_bytes(4, "big") + bytes(size)
        self.ends[side].send_nowait(frame)
        self.sent[side].append(frame)

    @rule(
        drop=st.sampled_from([0.0, 0.3]),
        duplicate=st.sampled_from([0.0, 0.3]),
        reorder=st.sampled_from([0.0, 0.3]),
        delay=st.sampled_from([0, (0, 2), 3]),
    )
    def faults(self, drop: float, duplicate: float, reorder: float, delay: object) -> None:
        self.network.set_faults(drop=drop, duplicate=duplicate, reorder=reorder, delay=delay)  # type: ignore[arg-type]

    @rule(max_frames=st.none() | st.integers(0, 3))
    def deliver(self, max_frames: int | None) -> None:
        self.network.deliver(max_frames)

    @rule()
    def step(self) -> None:
        self.network.step()

    @rule(side=st.integers(0, 1))
    def drain(self, side: int) -> None:
        self.received[1 - side] += self.ends[side].drain()

    @precondition(lambda self: not self.cut)
    @rule(hold=st.booleans())
    def partition(self, hold: bool) -> None:
        self.network.partition("a", "b", hold=hold)
        self.cut = True

    @precondition(lambda self: self.cut)
    @rule()
    def heal(self) -> None:
        self.network.heal("a", "b")
        self.cut = False

    @invariant()
    def every_frame_accounted_for(self) -> None:
        for src, dst in (("a", "b"), ("b", "a")):
            assert balanced(self.network.stats(src, dst))

    @invariant()
    def only_sent_frames_arrive_at_most_twice(self) -> None:
        for side in (0, 1):
            sent = set(self.sent[side])
            copies = Counter(self.received[side])
            assert set(copies) <= sent
            assert max(copies.values(), default=0) <= 2

    def teardown(self) -> None:
        self.network.heal("a", "b")
        self.network.run_until_idle()
        for side, (src, dst) in enumerate((("a", "b"), ("b", "a"))):
            self.received[side] += self.ends[1 - side].drain()
            stats = self.network.stats(src, dst)
            assert stats.in_flight == stats.held == 0
            assert stats.delivered == len(self.received[side])
            assert stats.bytes_delivered == sum(map(len, self.received[side]))


TestNetworkMachine = NetworkMachine.TestCase


def test_transport_errors_are_connection_errors() -> None:
    assert issubclass(TransportBrokenError, TransportError)
    assert issubclass(TransportError, ConnectionError)
