"""The sync coordinator on a fake clock: schedules, backoff, connectivity and sync debt.

Sessions run for real (run_session over the in-memory network); only time is fake. The fake
clock jumps straight to the next sleeper's deadline once everything else is idle (the network
pumped, the event loop quiet), the way trio's autojump clock does, so an hour of schedules takes
milliseconds and every delay is exact.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Coroutine, Iterable
from typing import Any

import pytest

from souverix_crdt.errors import TransportBrokenError
from souverix_crdt.plane.backoff import Backoff
from souverix_crdt.plane.coordinator import (
    DEFAULT_DOWNSTREAM_FREQUENCY,
    DEFAULT_UPSTREAM_FREQUENCY,
    Connect,
    Direction,
    LinkConfig,
    SyncCoordinator,
    SyncMode,
    SyncOutcome,
    SyncStrategy,
)
from souverix_crdt.plane.topology import default_topology
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.scope import Scope
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.driver import run_session
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.testing.fleet import NOW, make_fleet
from souverix_crdt.transports.base import Transport
from souverix_crdt.transports.memory import MemoryNetwork

FLEET = make_fleet()
REGION = "global/region-a"
EDGE = "global/region-a/edge-a1"
SIBLING = "global/region-a/edge-a2"
GUARD = 30.0


def run(scenario: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(GUARD):
            await scenario

    asyncio.run(guarded())


class FakeTime:
    """Monotonic seconds that move only when every task waits on :meth:`sleep` (autojump)."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.now = 0.0
        self.network = network
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, self._order, future))
        self._order += 1
        await future

    async def settle(self) -> None:
        """Let every task run and every frame land until nothing moves."""
        for _ in range(3):
            await self.network.pump(settle=20)
            for _ in range(20):
                await asyncio.sleep(0)

    async def advance_to(self, target: float) -> None:
        """Wake the sleepers in deadline order up to ``target``, settling after each."""
        while True:
            await self.settle()
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # a sleep whose waiter was cancelled
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            deadline, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, deadline)
            future.set_result(None)
        self.now = max(self.now, target)
        await self.settle()

    async def advance(self, seconds: float) -> None:
        await self.advance_to(self.now + seconds)


class World:
    """Replicas on one fake clock, linked over one in-memory network."""

    def __init__(self, names: Iterable[str] = ("edge-a1", "region-a")) -> None:
        self.network = MemoryNetwork(seed=0)
        self.time = FakeTime(self.network)
        self.replicas = {name: self._replica(name) for name in names}
        self.reachable = dict.fromkeys(self.replicas, True)
        self.connects: list[tuple[float, str, str]] = []
        self.served: list[asyncio.Task[None]] = []

    def _replica(self, name: str) -> Replica:
        member = FLEET[name]
        return Replica(
            Identity(member.key, member.chain),
            FLEET.anchors,
            MemoryStore(),
            name=name,
            wall_clock=lambda: NOW + int(self.time.now * 1000),
            epoch=len(name),
        )

    def __getitem__(self, name: str) -> Replica:
        return self.replicas[name]

    def connector(self, local: str, peer: str, *, serve_as: str | None = None) -> Connect:
        """Connects ``local`` to ``peer``, whose side runs a plain live session."""

        async def connect() -> Transport:
            self.connects.append((self.time.now, local, peer))
            if not self.reachable[peer]:
                raise TransportBrokenError(f"{peer} is unreachable", reason="unreachable")
            ours, theirs = self.network.connect(local, peer)
            self.served.append(asyncio.ensure_future(self._serve(serve_as or peer, theirs)))
            return ours

        return connect

    async def _serve(self, name: str, transport: Transport) -> None:
        try:
            await run_session(SyncSession(self.replicas[name]), transport)
        finally:
            await transport.close()

    def connect_times(self, peer: str = "region-a") -> list[float]:
        return [at for at, _, to in self.connects if to == peer]

    def coordinator(
        self, name: str, links: Iterable[LinkConfig], *, seed: int = 7
    ) -> SyncCoordinator:
        return SyncCoordinator(
            self.replicas[name],
            links,
            clock=self.time.clock,
            sleep=self.time.sleep,
            rng=random.Random(seed),
        )

    async def shutdown(self, coordinator: SyncCoordinator, running: asyncio.Task[None]) -> None:
        await coordinator.stop()
        await running
        await self.time.settle()
        assert all(task.done() for task in self.served)


async def keep_pumping(network: MemoryNetwork) -> None:
    while True:
        network.deliver()
        await asyncio.sleep(0)


def upstream(world: World, **options: Any) -> LinkConfig:
    settings: dict[str, Any] = {
        "peer": "region-a",
        "connect": world.connector("edge-a1", "region-a"),
        "peer_scope": REGION,
        "mode": SyncMode.SCHEDULED,
    }
    settings.update(options)
    return LinkConfig.upstream(**settings)


# --------------------------------------------------------------------------- configuration


def test_link_configs_express_the_briefs_sync_strategy() -> None:
    async def nowhere() -> Transport:
        raise AssertionError("not connected in this test")

    up = LinkConfig.upstream(peer="global", connect=nowhere, batch_size=100)
    assert (up.direction, up.mode, up.frequency, up.batch_size) == (
        Direction.UPSTREAM,
        SyncMode.CONTINUOUS,
        DEFAULT_UPSTREAM_FREQUENCY,
        100,
    )
    assert up.live
    down = LinkConfig.downstream(
        peer="edge-a1", connect=nowhere, retry=Backoff(initial=2.0), peer_scope=EDGE
    )
    assert (down.direction, down.mode, down.frequency) == (
        Direction.DOWNSTREAM,
        SyncMode.PUSH,
        DEFAULT_DOWNSTREAM_FREQUENCY,
    )
    assert down.peer_scope == Scope.parse(EDGE)
    assert not down.live
    strategy = SyncStrategy(links=[up, down])
    assert strategy.upstream == up
    assert strategy.downstream == (down,)
    assert strategy.conflict_resolution.strategy == "last-write-wins"
    for bad in (
        {"frequency": 0},
        {"frequency": float("inf")},
        {"batch_size": 0},
        {"max_attempts": 0},
        {"session_timeout": -1.0},
        {"peer": ""},
        {"peer_scope": "global/../x"},
    ):
        with pytest.raises((ValueError, TypeError)):
            LinkConfig.upstream(**{"peer": "global", "connect": nowhere, **bad})


def test_a_topology_plane_becomes_its_links() -> None:
    topology = default_topology()
    asked: list[str] = []

    def connect_for(peer: str) -> Connect:
        asked.append(peer)

        async def connect() -> Transport:
            raise AssertionError("not connected in this test")

        return connect

    strategy = SyncStrategy.from_topology(topology, "region-a", connect_for=connect_for)
    assert strategy.upstream is not None
    assert strategy.upstream.peer == "global"
    assert strategy.upstream.frequency == 15 * 60
    assert strategy.upstream.peer_scope == topology.plane("global").scope
    assert {link.peer for link in strategy.downstream} <= {"edge-a1", "edge-a2"}
    assert asked == [link.peer for link in strategy.links]
    assert strategy.conflict_resolution == topology.conflict_resolution
    # Air-gapped planes sync by bundle files, not by sessions.
    air_gapped = [plane.name for plane in topology.planes.values() if plane.air_gapped]
    for name in air_gapped:
        assert SyncStrategy.from_topology(topology, name, connect_for=connect_for).links == ()


def test_links_are_distinct_and_never_to_oneself() -> None:
    world = World()
    link = upstream(world)
    with pytest.raises(ValueError, match="two links"):
        world.coordinator("edge-a1", [link, link])
    with pytest.raises(ValueError, match="itself"):
        world.coordinator("region-a", [link])


# --------------------------------------------------------------------------- schedules


def test_a_scheduled_link_syncs_at_its_frequency() -> None:
    async def scenario() -> None:
        world = World()
        edge, region = world["edge-a1"], world["region-a"]
        coordinator = world.coordinator("edge-a1", [upstream(world, frequency=900)])
        running = asyncio.ensure_future(coordinator.run())
        for slot in range(4):
            await world.time.advance_to(slot * 900 + 100)
            edge.scope(EDGE).nodes.set(f"n{slot}", slot)
            region.scope(REGION).policies.set(f"p{slot}", slot)
            assert coordinator.debt("region-a").envelopes == 1
            await world.time.advance_to(slot * 900 + 899)
            # Written after this slot's sync: waits for the next one.
            assert region.get(EDGE, "nodes", f"n{slot}") is None
            await world.time.advance_to((slot + 1) * 900 + 1)
            assert region.get(EDGE, "nodes", f"n{slot}") == slot
            assert edge.get(REGION, "policies", f"p{slot}") == slot
            debt = coordinator.debt("region-a")
            assert (debt.envelopes, debt.connected, debt.overdue) == (0, False, False)
            assert debt.since_last_sync == pytest.approx(1.0)
        assert world.connect_times() == [0.0, 900.0, 1800.0, 2700.0, 3600.0]
        result = coordinator.last_result("region-a")
        assert result is not None
        assert result.ok
        assert result.stats is not None
        assert result.stats.close_reason == "settled"
        assert edge.digest() == region.digest()
        await world.shutdown(coordinator, running)

    run(scenario())


def test_backoff_grows_exponentially_with_bounded_jitter_and_resets_after_success() -> None:
    async def scenario() -> None:
        world = World()
        retry = Backoff(initial=1.0, multiplier=2.0, maximum=30.0, jitter=0.5)
        coordinator = world.coordinator(
            "edge-a1", [upstream(world, frequency=3600, retry=retry)], seed=11
        )
        world.reachable["region-a"] = False
        running = asyncio.ensure_future(coordinator.run())
        await world.time.advance_to(200)
        times = world.connect_times()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(gaps) >= 8
        expected_rng = random.Random(11)
        for attempt, gap in enumerate(gaps):
            base = retry.base(attempt)
            assert base * (1 - retry.jitter) <= gap <= base
            assert gap == pytest.approx(retry.delay(attempt, expected_rng))
        assert max(gaps) <= retry.maximum
        assert coordinator.debt("region-a").failures == len(times)

        # The peer comes back: the next attempt (after the pending delay) settles, and the
        # failure count resets.
        world.reachable["region-a"] = True
        await world.time.advance_to(260)
        assert coordinator.last_result("region-a").ok  # type: ignore[union-attr]
        assert coordinator.debt("region-a").failures == 0
        # Gone again at the next scheduled round: the first retry waits the initial delay.
        world.reachable["region-a"] = False
        await world.time.advance_to(3600 + 1.5)
        later = [t for t in world.connect_times() if t >= 3600]
        assert later[0] == 3600
        assert retry.initial * (1 - retry.jitter) <= later[1] - later[0] <= retry.initial
        await world.shutdown(coordinator, running)

    run(scenario())


def test_a_round_gives_up_after_max_attempts_until_its_next_turn() -> None:
    async def scenario() -> None:
        world = World()
        retry = Backoff(initial=1.0, multiplier=2.0, maximum=30.0, jitter=0.0)
        link = upstream(world, frequency=600, retry=retry, max_attempts=3)
        coordinator = world.coordinator("edge-a1", [link])
        world.reachable["region-a"] = False
        running = asyncio.ensure_future(coordinator.run())
        await world.time.advance_to(599)
        assert world.connect_times() == [0.0, 1.0, 3.0]
        await world.time.advance_to(601)
        assert world.connect_times()[3] == 600.0
        await world.shutdown(coordinator, running)

    run(scenario())


def test_a_push_link_syncs_when_there_is_something_for_its_peer() -> None:
    async def scenario() -> None:
        world = World()
        region, edge = world["region-a"], world["edge-a1"]
        link = LinkConfig.downstream(
            peer="edge-a1",
            connect=world.connector("region-a", "edge-a1"),
            frequency=300,
            peer_scope=EDGE,
        )
        coordinator = world.coordinator("region-a", [link])
        running = asyncio.ensure_future(coordinator.run())
        await world.time.advance_to(50)
        assert world.connect_times("edge-a1") == [0.0]
        # Not the edge's business (a sibling zone): no session.
        region.scope(SIBLING).policies.set("for-a2", 1)
        await world.time.advance_to(60)
        assert world.connect_times("edge-a1") == [0.0]
        # For the edge: pushed at once, not at the next 5-minute turn.
        region.scope(EDGE).policies.set("window", "02:00")
        await world.time.advance_to(70)
        assert world.connect_times("edge-a1") == [0.0, 60.0]
        assert edge.get(EDGE, "policies", "window") == "02:00"
        assert coordinator.debt("edge-a1").envelopes == 0
        # Nothing new: the next session is one frequency after the last.
        await world.time.advance_to(361)
        assert world.connect_times("edge-a1") == [0.0, 60.0, 360.0]
        await world.shutdown(coordinator, running)

    run(scenario())


def test_a_push_link_that_keeps_to_its_schedule_waits_for_its_turn() -> None:
    # peer run's push: "push every 5m" means every 5 minutes, not at each write.
    async def scenario() -> None:
        world = World()
        region, edge = world["region-a"], world["edge-a1"]
        seen: list[tuple[str, str]] = []
        link = LinkConfig.downstream(
            peer="edge-a1",
            connect=world.connector("region-a", "edge-a1"),
            frequency=300,
            peer_scope=EDGE,
            wake_on_write=False,
        )
        coordinator = SyncCoordinator(
            region,
            [link],
            clock=world.time.clock,
            sleep=world.time.sleep,
            rng=random.Random(7),
            on_observe=lambda peer, _session: seen.append(("observe", peer)),
            on_session_end=lambda peer, _session: seen.append(("end", peer)),
        )
        running = asyncio.ensure_future(coordinator.run())
        await world.time.advance_to(50)
        assert world.connect_times("edge-a1") == [0.0]
        region.scope(EDGE).policies.set("window", "02:00")
        await world.time.advance_to(299)
        assert world.connect_times("edge-a1") == [0.0]
        assert edge.get(EDGE, "policies", "window") is None
        assert coordinator.debt("edge-a1").envelopes == 1
        await world.time.advance_to(301)
        assert world.connect_times("edge-a1") == [0.0, 300.0]
        assert edge.get(EDGE, "policies", "window") == "02:00"
        assert coordinator.debt("edge-a1").envelopes == 0
        # The hooks saw both sessions, and each one end.
        assert seen.count(("end", "edge-a1")) == 2
        assert ("observe", "edge-a1") in seen
        await world.shutdown(coordinator, running)

    run(scenario())


def test_a_continuous_link_stays_open_pushes_live_and_reconnects_after_a_break() -> None:
    async def scenario() -> None:
        world = World()
        edge, region = world["edge-a1"], world["region-a"]
        retry = Backoff(initial=2.0, multiplier=2.0, maximum=30.0, jitter=0.0)
        link = upstream(world, mode=SyncMode.CONTINUOUS, retry=retry)
        coordinator = world.coordinator("edge-a1", [link])
        running = asyncio.ensure_future(coordinator.run())
        await world.time.advance_to(10)
        edge.scope(EDGE).nodes.set("live", 1)
        await world.time.advance_to(11)
        assert region.get(EDGE, "nodes", "live") == 1
        debt = coordinator.debt("region-a")
        assert (debt.connected, debt.since_last_sync, debt.envelopes) == (True, 0.0, 0)
        assert world.connect_times() == [0.0]

        assert world.network.break_link("edge-a1", "region-a") == 1
        edge.scope(EDGE).nodes.set("after-break", 2)
        await world.time.advance_to(12)
        debt = coordinator.debt("region-a")
        assert not debt.connected
        assert debt.envelopes == 1
        await world.time.advance_to(14)
        assert world.connect_times() == [0.0, 13.0]  # the first retry delay, 2 s after 11
        assert region.get(EDGE, "nodes", "after-break") == 2
        assert coordinator.debt("region-a").envelopes == 0
        await world.shutdown(coordinator, running)

    run(scenario())


# --------------------------------------------------------------------------- connectivity


def test_while_down_nothing_is_attempted_and_the_debt_grows_then_settles() -> None:
    async def scenario() -> None:
        world = World()
        edge, region = world["edge-a1"], world["region-a"]
        link = upstream(world, mode=SyncMode.OPPORTUNISTIC, frequency=600)
        coordinator = world.coordinator("edge-a1", [link])
        assert not coordinator.link_up("region-a")  # opportunistic links start down
        running = asyncio.ensure_future(coordinator.run())
        for index in range(3):
            edge.scope(EDGE).nodes.set(f"n{index}", index)
        await world.time.advance_to(300)
        debt = coordinator.debt("region-a")
        assert world.connects == []
        assert (debt.envelopes, debt.up, debt.connected, debt.attempts) == (3, False, False, 0)
        assert debt.bytes > 0
        assert debt.oldest_age_ms == 300_000
        assert debt.since_last_sync is None
        assert not debt.overdue
        await world.time.advance_to(700)
        assert coordinator.debt("region-a").overdue

        coordinator.set_link_state("region-a", True)
        await world.time.advance_to(701)
        debt = coordinator.debt("region-a")
        assert world.connect_times() == [700.0]
        assert (debt.envelopes, debt.connected, debt.since_last_sync) == (0, True, 0.0)
        assert not debt.overdue
        assert region.get(EDGE, "nodes", "n2") == 2

        # The connectivity manager reports the link lost: the session goes, nothing is tried.
        coordinator.set_link_state("region-a", False)
        await world.time.advance_to(702)
        edge.scope(EDGE).nodes.set("cut-off", True)
        region.scope(REGION).policies.set("while-cut", True)
        await world.time.advance_to(1000)
        debt = coordinator.debt("region-a")
        assert world.connect_times() == [700.0]
        assert (debt.envelopes, debt.connected) == (1, False)
        # In sync until the session was cancelled, at 701.
        assert debt.since_last_sync == pytest.approx(299.0)
        assert debt.oldest_age_ms == 298_000
        assert region.get(EDGE, "nodes", "cut-off") is None

        # Back: it syncs at once and the debt settles both ways.
        coordinator.set_link_state("region-a", True)
        await world.time.advance_to(1001)
        debt = coordinator.debt("region-a")
        assert world.connect_times() == [700.0, 1000.0]
        assert (debt.envelopes, debt.bytes, debt.oldest_age_ms, debt.since_last_sync) == (
            0,
            0,
            0,
            0.0,
        )
        assert region.get(EDGE, "nodes", "cut-off") is True
        assert edge.get(REGION, "policies", "while-cut") is True
        assert coordinator.debt("region-a").to_json()["envelopes"] == 0
        await world.shutdown(coordinator, running)

    run(scenario())


def test_a_pending_backoff_is_not_waited_out_when_the_link_comes_back() -> None:
    async def scenario() -> None:
        world = World()
        retry = Backoff(initial=100.0, multiplier=2.0, maximum=1000.0, jitter=0.0)
        coordinator = world.coordinator("edge-a1", [upstream(world, retry=retry)])
        world.reachable["region-a"] = False
        running = asyncio.ensure_future(coordinator.run())
        await world.time.advance_to(10)
        assert world.connect_times() == [0.0]
        coordinator.set_link_state("region-a", False)
        world.reachable["region-a"] = True
        await world.time.advance_to(20)
        coordinator.set_link_state("region-a", True)
        await world.time.advance_to(21)
        assert world.connect_times() == [0.0, 20.0]
        assert coordinator.last_result("region-a").ok  # type: ignore[union-attr]
        await world.shutdown(coordinator, running)

    run(scenario())


# --------------------------------------------------------------------------- single syncs


def test_sync_once_reports_each_outcome() -> None:
    async def scenario() -> None:
        world = World()
        # sync_once runs in the foreground: a background task moves the network's frames.
        mover = asyncio.ensure_future(keep_pumping(world.network))
        edge = world["edge-a1"]
        edge.scope(EDGE).nodes.set("n", 1)
        good = upstream(world)
        impostor = LinkConfig.upstream(
            peer="global",
            connect=world.connector("edge-a1", "region-a"),  # answers as "region-a"
            mode=SyncMode.SCHEDULED,
        )
        coordinator = world.coordinator("edge-a1", [good, impostor])

        settled = await coordinator.sync_once("region-a")
        assert settled.outcome is SyncOutcome.SETTLED
        assert settled.stats is not None
        assert settled.stats.envelopes_sent == 1
        assert world["region-a"].get(EDGE, "nodes", "n") == 1

        world.reachable["region-a"] = False
        failed = await coordinator.sync_once("region-a")
        assert failed.outcome is SyncOutcome.FAILED
        assert isinstance(failed.error, TransportBrokenError)
        assert coordinator.debt("region-a").failures == 1

        coordinator.set_link_state("region-a", False)
        skipped = await coordinator.sync_once("region-a")
        assert skipped.outcome is SyncOutcome.SKIPPED
        assert coordinator.debt("region-a").attempts == 2

        world.reachable["region-a"] = True
        wrong = await coordinator.sync_once("global")
        assert wrong.outcome is SyncOutcome.INCOMPLETE
        assert "region-a" in str(wrong.error)
        await coordinator.stop()
        mover.cancel()

    run(scenario())


def test_a_session_that_never_settles_times_out_as_a_failed_attempt() -> None:
    async def scenario() -> None:
        world = World()
        silent_network = world.network

        async def connect_to_nobody() -> Transport:
            ours, _theirs = silent_network.connect("edge-a1", "region-a")
            return ours  # nobody answers at the other end

        link = upstream(world, connect=connect_to_nobody, session_timeout=30.0, frequency=600)
        coordinator = world.coordinator("edge-a1", [link])
        running = asyncio.ensure_future(coordinator.run())
        await world.time.advance_to(31)
        result = coordinator.last_result("region-a")
        assert result is not None
        assert result.outcome is SyncOutcome.INCOMPLETE
        assert isinstance(result.error, TimeoutError)
        assert (result.started, result.finished) == (0.0, 30.0)
        assert coordinator.debt("region-a").failures == 1
        await world.shutdown(coordinator, running)

    run(scenario())


def test_incoming_sessions_count_for_the_link() -> None:
    async def scenario() -> None:
        world = World()
        edge, region = world["edge-a1"], world["region-a"]

        async def nowhere() -> Transport:
            raise TransportBrokenError("the region never dials out here", reason="unreachable")

        region_side = world.coordinator(
            "region-a",
            [
                LinkConfig.downstream(
                    peer="edge-a1", connect=nowhere, peer_scope=EDGE, frequency=10_000
                )
            ],
        )

        async def dial_region() -> Transport:
            ours, theirs = world.network.connect("edge-a1", "region-a")
            world.served.append(asyncio.ensure_future(serve(theirs)))
            return ours

        async def serve(transport: Transport) -> None:
            try:
                await region_side.serve(transport)
            finally:
                await transport.close()

        edge_side = world.coordinator(
            "edge-a1", [upstream(world, connect=dial_region, mode=SyncMode.CONTINUOUS)]
        )
        running = asyncio.ensure_future(edge_side.run())
        region.scope(EDGE).policies.set("window", "02:00")
        await world.time.advance_to(5)
        assert edge.get(EDGE, "policies", "window") == "02:00"
        debt = region_side.debt("edge-a1")
        assert (debt.envelopes, debt.since_last_sync) == (0, 0.0)
        await world.shutdown(edge_side, running)
        await world.time.advance_to(50)
        assert region_side.debt("edge-a1").since_last_sync == pytest.approx(45.0)
        await region_side.stop()

    run(scenario())


def test_run_and_stop() -> None:
    async def scenario() -> None:
        world = World()
        coordinator = world.coordinator("edge-a1", [upstream(world, mode=SyncMode.CONTINUOUS)])
        running = asyncio.ensure_future(coordinator.run())
        await world.time.advance_to(1)
        with pytest.raises(RuntimeError, match="already running"):
            await coordinator.run()
        assert coordinator.debt("region-a").connected
        await coordinator.stop()
        await running
        assert not coordinator.debt("region-a").connected
        await coordinator.stop()  # idempotent
        await world.time.settle()
        assert all(task.done() for task in world.served)

    run(scenario())
