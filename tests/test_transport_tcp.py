"""The TCP transport: the conformance suite (plain and TLS), hostile peers, timeouts, reconnects,
and sync sessions between two replicas over loopback.

Everything listens on 127.0.0.1 with ephemeral ports. Nothing waits on the wall clock to
synchronise: tests wait for a condition by turning the event loop a bounded number of times
(:func:`wait_until`), and every scenario runs under a generous ``asyncio.timeout`` that only turns
a hang into a failure. The read-timeout test is the one place a short real timer has to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from souverix_crdt.errors import (
    FrameTooLargeError,
    TransportBrokenError,
    TransportClosedError,
    TransportError,
)
from souverix_crdt.plane.backoff import Backoff
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.driver import SessionStats, StopReason, run_session
from souverix_crdt.sync.messages import Close, Envelopes, decode_message
from souverix_crdt.sync.session import SessionState, SyncSession
from souverix_crdt.testing.fleet import NOW, make_fleet
from souverix_crdt.testing.transport_conformance import TransportConformance
from souverix_crdt.transports.base import Transport
from souverix_crdt.transports.tcp import (
    HEADER_SIZE,
    MAX_FRAME_LIMIT,
    TcpServer,
    TcpTransport,
    connect,
    connect_with_backoff,
)

LOOPBACK = "127.0.0.1"
#: Small enough to keep the largest-frame checks quick, large enough to span many TCP segments.
MAX_FRAME = 1 << 20
#: Hang guard for a whole scenario, in seconds; nothing waits on it to synchronise.
GUARD = 30.0
#: Event-loop turns a condition may take over loopback before a test gives up.
TURNS = 200_000


def run(scenario: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(GUARD):
            await scenario

    asyncio.run(guarded())


async def wait_until(predicate: Callable[[], object], what: str, turns: int = TURNS) -> None:
    """Turn the event loop until ``predicate()`` holds; fail after ``turns`` turns."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what}: not reached within {turns} event-loop turns")


def header(size: int) -> bytes:
    return size.to_bytes(HEADER_SIZE, "big")


# --------------------------------------------------------------------------- TLS material


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for localhost/127.0.0.1, made now: (server, client) contexts."""
    directory: Path = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


# --------------------------------------------------------------------------- servers for tests


class Accepting:
    """A server whose handler hands each accepted transport to the test and holds it open."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[TcpTransport] = asyncio.Queue()

    async def handler(self, transport: TcpTransport) -> None:
        await self.accepted.put(transport)
        await asyncio.Event().wait()  # until the server closes (the test owns the transport)


async def echo(transport: TcpTransport) -> None:
    """Send every frame back until the connection ends (which ends the handler quietly)."""
    with contextlib.suppress(TransportBrokenError, TransportClosedError):
        while True:
            await transport.send(await transport.receive())


async def round_trip(transport: Transport, frame: bytes = b"ping") -> None:
    await transport.send(frame)
    assert await transport.receive() == frame


# --------------------------------------------------------------------------- conformance

MODES = ["plain", "plain-server-first", "tls"]


async def conformance(name: str, mode: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls if mode == "tls" else (None, None)
    accepting = Accepting()
    async with await TcpServer.start(
        LOOPBACK, 0, handler=accepting.handler, ssl=server_tls, max_frame=MAX_FRAME
    ) as server:

        async def make_pair() -> tuple[Transport, Transport]:
            client = await connect(LOOPBACK, server.port, ssl=client_tls, max_frame=MAX_FRAME)
            accepted = await accepting.accepted.get()
            return (accepted, client) if mode == "plain-server-first" else (client, accepted)

        async def inject_oversized(sender: Transport) -> None:
            # A hostile peer: write the header of a frame one byte over the limit, straight on
            # the stream, past the sender's own check.
            assert isinstance(sender, TcpTransport)
            sender._writer.write(header(MAX_FRAME + 1))
            await sender._writer.drain()

        suite = TransportConformance(
            make_pair=make_pair,
            max_frame=MAX_FRAME,
            inject_oversized=inject_oversized,
            timeout=10.0,
        )
        await suite.run(name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TransportConformance.check_names(receive_limit=True))
def test_conformance(name: str, mode: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    run(conformance(name, mode, tls))


def test_conformance_run_all_over_one_server(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async def scenario() -> None:
        accepting = Accepting()
        async with await TcpServer.start(
            handler=accepting.handler, ssl=tls[0], max_frame=MAX_FRAME
        ) as server:

            async def make_pair() -> tuple[Transport, Transport]:
                client = await connect(LOOPBACK, server.port, ssl=tls[1], max_frame=MAX_FRAME)
                return client, await accepting.accepted.get()

            suite = TransportConformance(make_pair=make_pair, max_frame=MAX_FRAME)
            assert await suite.run_all() == suite.applicable_checks()
            # Every check closed both of its ends; the server's handlers are still parked.
            assert server.accepted == len(suite.applicable_checks())
            assert server.failures == 0

    run(scenario())


# --------------------------------------------------------------------------- TLS


def test_tls_is_used_on_both_ends(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async def scenario() -> None:
        accepting = Accepting()
        async with await TcpServer.start(handler=accepting.handler, ssl=tls[0]) as server:
            client = await connect("localhost", server.port, ssl=tls[1], peer="region-a")
            accepted = await accepting.accepted.get()
            assert client.tls
            assert accepted.tls
            assert client.peer == "region-a"
            assert accepted.peer.startswith(f"{LOOPBACK}:")
            await client.send(b"over tls")
            assert await accepted.receive() == b"over tls"
            await client.close()

    run(scenario())


def test_tls_failures_are_typed_and_not_retried(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def scenario() -> None:
        accepting = Accepting()
        async with await TcpServer.start(handler=accepting.handler, ssl=tls[0]) as server:
            untrusting = ssl.create_default_context()  # system roots only: our cert is unknown
            with pytest.raises(TransportBrokenError) as caught:
                await connect(LOOPBACK, server.port, ssl=untrusting)
            assert caught.value.reason == "tls"
            assert isinstance(caught.value.__cause__, ssl.SSLError)

            slept: list[float] = []

            async def sleep(delay: float) -> None:
                slept.append(delay)

            with pytest.raises(TransportBrokenError) as again:
                await connect_with_backoff(LOOPBACK, server.port, ssl=untrusting, sleep=sleep)
            assert again.value.reason == "tls"
            assert slept == []
            # A plain client speaking to the TLS port fails its handshake on the server side;
            # the server carries on.
            plain = await connect(LOOPBACK, server.port)
            await plain.send(b"not a client hello")
            with pytest.raises(TransportBrokenError):
                await plain.receive()
            await plain.close()
            good = await connect(LOOPBACK, server.port, ssl=tls[1])
            await good.send(b"fine")
            assert await (await accepting.accepted.get()).receive() == b"fine"
            await good.close()

    run(scenario())


# --------------------------------------------------------------------------- hostile peers


def test_oversized_header_refused_before_the_body(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        ended: asyncio.Queue[tuple[TcpTransport, BaseException]] = asyncio.Queue()
        release = asyncio.Event()

        async def handler(transport: TcpTransport) -> None:
            try:
                while True:
                    await transport.send(await transport.receive())
            except TransportError as exc:
                await ended.put((transport, exc))
                await release.wait()  # the test inspects the transport before the server closes it
                raise

        async with await TcpServer.start(handler=handler, max_frame=MAX_FRAME) as server:
            good = await connect(LOOPBACK, server.port)
            await round_trip(good)
            reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
            # Announce 2 GiB and send nothing more: the server must not wait for the body.
            writer.write(header(2**31))
            await writer.drain()
            transport, error = await ended.get()
            assert isinstance(error, FrameTooLargeError)
            assert (error.size, error.limit) == (2**31, MAX_FRAME)
            assert transport.closed
            with pytest.raises(TransportBrokenError) as later:
                await transport.receive()
            assert later.value.reason == "frame-too-large"
            # The liar is disconnected (reset, since the server aborts without reading more).
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            release.set()
            # The other connection never noticed.
            await round_trip(good, b"still here")
            assert server.connections == 1
            assert server.failures == 1
            await good.close()

    with caplog.at_level(logging.WARNING, logger="souverix_crdt.transports.tcp"):
        run(scenario())
    assert any("frame of 2147483648 bytes" in record.getMessage() for record in caplog.records)


def test_largest_announced_size_is_checked_not_allocated() -> None:
    async def scenario() -> None:
        accepting = Accepting()
        async with await TcpServer.start(handler=accepting.handler, max_frame=MAX_FRAME) as server:
            _, writer = await asyncio.open_connection(LOOPBACK, server.port)
            accepted = await accepting.accepted.get()
            writer.write(b"\xff" * HEADER_SIZE)
            await writer.drain()
            with pytest.raises(FrameTooLargeError) as caught:
                await accepted.receive()
            assert caught.value.size == MAX_FRAME_LIMIT
            assert accepted.closed
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    run(scenario())


def test_handler_exceptions_are_contained(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async def handler(transport: TcpTransport) -> None:
            frame = await transport.receive()
            if frame == b"crash":
                raise RuntimeError("handler bug")
            await echo_rest(transport, frame)

        async def echo_rest(transport: TcpTransport, first: bytes) -> None:
            await transport.send(first)
            await echo(transport)

        async with await TcpServer.start(handler=handler) as server:
            good = await connect(LOOPBACK, server.port)
            await round_trip(good)
            bad = await connect(LOOPBACK, server.port)
            await bad.send(b"crash")
            # The server closes the crashed handler's connection.
            with pytest.raises(TransportBrokenError):
                await bad.receive()
            await bad.close()
            await round_trip(good, b"unaffected")
            assert server.failures == 1
            await good.close()

    with caplog.at_level(logging.ERROR, logger="souverix_crdt.transports.tcp"):
        run(scenario())
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [RuntimeError]


def test_server_close_cancels_handlers_and_closes_connections() -> None:
    async def scenario() -> None:
        accepting = Accepting()
        server = await TcpServer.start(handler=accepting.handler)
        clients = [await connect(LOOPBACK, server.port) for _ in range(3)]
        accepted = [await accepting.accepted.get() for _ in clients]
        assert server.connections == 3
        await server.close()
        await server.close()  # idempotent
        assert server.connections == 0
        assert all(transport.closed for transport in accepted)
        for client in clients:
            with pytest.raises(TransportBrokenError):
                await client.receive()
            await client.close()
        with pytest.raises(TransportBrokenError) as refused:
            await connect(LOOPBACK, server.port)
        assert refused.value.reason == "connect-refused"

    run(scenario())


# --------------------------------------------------------------------------- timeouts and cuts


def test_read_timeout_breaks_the_connection() -> None:
    async def scenario() -> None:
        accepting = Accepting()
        async with await TcpServer.start(handler=accepting.handler) as server:
            client = await connect(LOOPBACK, server.port, read_timeout=0.05)
            accepted = await accepting.accepted.get()
            with pytest.raises(TransportBrokenError) as caught:
                await client.receive()  # the peer says nothing: the timer has to expire
            assert caught.value.reason == "timeout"
            assert client.closed
            with pytest.raises(TransportBrokenError):
                await client.send(b"late")
            # The timed-out side aborted: the silent peer learns it is gone.
            with pytest.raises(TransportBrokenError):
                await accepted.receive()
            await client.close()
            with pytest.raises(TransportClosedError):
                await client.receive()  # after our close, ours wins

    run(scenario())


def test_read_timeout_is_per_frame_and_frames_in_time_pass() -> None:
    async def scenario() -> None:
        async with await TcpServer.start(handler=echo) as server:
            client = await connect(LOOPBACK, server.port, read_timeout=5.0)
            for index in range(20):
                await round_trip(client, b"%d" % index)
            await client.close()

    run(scenario())


async def raw_server(script: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> asyncio.Server:
    """A misbehaving peer that writes raw bytes, then closes."""

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await script(writer)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    return await asyncio.start_server(serve, LOOPBACK, 0)


@pytest.mark.parametrize(
    "raw",
    [
        header(100) + b"only ten b",  # body cut short
        header(100)[:2],  # header cut short
    ],
    ids=["mid-body", "mid-header"],
)
def test_peer_closing_mid_frame_is_broken(raw: bytes) -> None:
    async def scenario() -> None:
        async def script(writer: asyncio.StreamWriter) -> None:
            writer.write(header(3) + b"one" + raw)
            await writer.drain()

        server = await raw_server(script)
        async with server:
            port = server.sockets[0].getsockname()[1]
            client = await connect(LOOPBACK, port)
            assert await client.receive() == b"one"
            with pytest.raises(TransportBrokenError) as caught:
                await client.receive()
            assert caught.value.reason == "truncated"
            assert client.closed
            await client.close()

    run(scenario())


def test_clean_end_of_stream_is_eof() -> None:
    async def scenario() -> None:
        async def script(writer: asyncio.StreamWriter) -> None:
            writer.write(header(0))
            await writer.drain()

        server = await raw_server(script)
        async with server:
            client = await connect(LOOPBACK, server.sockets[0].getsockname()[1])
            assert await client.receive() == b""
            with pytest.raises(TransportBrokenError) as caught:
                await client.receive()
            assert caught.value.reason == "eof"
            await client.close()

    run(scenario())


def test_receive_cancelled_between_header_and_body_loses_nothing() -> None:
    async def scenario() -> None:
        accepting = Accepting()
        async with await TcpServer.start(handler=accepting.handler) as server:
            client = await connect(LOOPBACK, server.port)
            accepted = await accepting.accepted.get()
            body = bytes(range(200))
            accepted._writer.write(header(len(body)) + body[:50])
            await accepted._writer.drain()
            pending = asyncio.ensure_future(client.receive())
            # Wait until the header has been consumed and the receive waits for the body.
            await wait_until(lambda: client._pending_size is not None, "header read")
            pending.cancel()
            await asyncio.wait([pending])
            assert pending.cancelled()
            accepted._writer.write(body[50:])
            await accepted.send(b"next")
            assert await client.receive() == body
            assert await client.receive() == b"next"
            await client.close()

    run(scenario())


def test_connect_errors_and_options() -> None:
    async def scenario() -> None:
        with socket.socket() as reserved:
            reserved.bind((LOOPBACK, 0))  # bound, not listening: connections are refused
            port = reserved.getsockname()[1]
            with pytest.raises(TransportBrokenError) as caught:
                await connect(LOOPBACK, port)
            assert caught.value.reason == "connect-refused"
            assert isinstance(caught.value, ConnectionError)
        with pytest.raises(ValueError, match="max_frame"):
            await connect(LOOPBACK, 1, max_frame=MAX_FRAME_LIMIT + 1)
        with pytest.raises(ValueError, match="read_timeout"):
            await connect(LOOPBACK, 1, read_timeout=0)
        with pytest.raises(ValueError, match="max_attempts"):
            await connect_with_backoff(LOOPBACK, 1, max_attempts=0)
        async with await TcpServer.start(handler=echo, max_frame=16) as server:
            client = await connect(LOOPBACK, server.port, max_frame=16)
            with pytest.raises(TypeError):
                await client.send("text")  # type: ignore[arg-type]
            await round_trip(client, bytearray(b"bytes-like"))  # type: ignore[arg-type]
            await round_trip(client, memoryview(b"x" * 16))  # type: ignore[arg-type]
            assert "open" in repr(client)
            await client.close()
            assert "closed" in repr(client)
            assert str(server.port) in repr(server)

    run(scenario())


# --------------------------------------------------------------------------- reconnects


class FixedRandom:
    """A jitter source that replays fixed draws."""

    def __init__(self, draws: list[float]) -> None:
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def test_reconnect_backs_off_until_the_port_accepts() -> None:
    async def scenario() -> None:
        backoff = Backoff(initial=0.1, multiplier=2.0, maximum=0.3, jitter=0.5)
        draws = [0.0, 0.5, 0.9]
        reserved = socket.socket()
        reserved.bind((LOOPBACK, 0))  # refuses until the server starts listening on it
        port = reserved.getsockname()[1]
        slept: list[float] = []
        servers: list[TcpServer] = []

        async def sleep(delay: float) -> None:
            slept.append(delay)  # never waits: the test decides when the port opens
            if len(slept) == 3:
                servers.append(await TcpServer.start(handler=echo, sock=reserved))

        try:
            transport = await connect_with_backoff(
                LOOPBACK, port, backoff=backoff, sleep=sleep, rng=FixedRandom(draws)
            )
            assert slept == pytest.approx([0.1, 0.2 * 0.75, 0.3 * 0.55])
            assert slept == pytest.approx(
                [backoff.delay(n, FixedRandom([draws[n]])) for n in range(3)]
            )
            await round_trip(transport, b"connected at last")
            await transport.close()
        finally:
            for server in servers:
                await server.close()
            reserved.close()

    run(scenario())


def test_reconnect_gives_up_after_max_attempts() -> None:
    async def scenario() -> None:
        slept: list[float] = []

        async def sleep(delay: float) -> None:
            slept.append(delay)

        with socket.socket() as reserved:
            reserved.bind((LOOPBACK, 0))
            with pytest.raises(TransportBrokenError) as caught:
                await connect_with_backoff(
                    LOOPBACK,
                    reserved.getsockname()[1],
                    backoff=Backoff(initial=1.0, multiplier=3.0, maximum=5.0, jitter=0.0),
                    max_attempts=4,
                    sleep=sleep,
                    rng=random.Random(0),
                )
        assert caught.value.reason == "connect-refused"
        assert slept == [1.0, 3.0, 5.0]  # three retries after the first attempt, capped

    run(scenario())


# --------------------------------------------------------------------------- sync over TCP


def make_replica(name: str) -> Replica:
    fleet = make_fleet()
    member = fleet[name]
    return Replica(
        Identity(member.key, member.chain),
        fleet.anchors,
        MemoryStore(),
        name=name,
        wall_clock=lambda: NOW,
        epoch=1,
    )


def write_keys(replica: Replica, count: int, prefix: str = "key") -> list[str]:
    keys = [f"{prefix}-{index:04d}" for index in range(count)]
    for index, key in enumerate(keys):
        replica.scope("global").policies.set(key, {"value": index})
    return keys


def synced(a: Replica, b: Replica) -> Callable[[], bool]:
    # Frontiers are cheap to compare on every event-loop turn; digests are checked once after.
    return lambda: a.frontiers() == b.frontiers()


class SessionServer:
    """A TcpServer whose handler runs a sync session for ``replica`` and keeps its stats."""

    def __init__(self, replica: Replica, **options: Any) -> None:
        self.replica = replica
        self.options = options
        self.stats: list[SessionStats] = []
        self.sessions: list[SyncSession] = []
        self.wrap: Callable[[TcpTransport], Transport] | None = None

    async def handler(self, transport: TcpTransport) -> None:
        session = SyncSession(self.replica)
        self.sessions.append(session)
        wrapped = self.wrap(transport) if self.wrap is not None else transport
        self.stats.append(await run_session(session, wrapped, **self.options))


def test_sync_over_tcp_converges_and_pushes_live(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def scenario() -> None:
        global_, region = make_replica("global"), make_replica("region-a")
        keys = write_keys(global_, 300)
        # Ticks would mask a missed wake-up for live pushes: make them far apart.
        serving = SessionServer(region, tick_interval=60.0)
        async with await TcpServer.start(handler=serving.handler, ssl=tls[0]) as server:
            transport = await connect(LOOPBACK, server.port, ssl=tls[1], peer="region-a")
            session = SyncSession(global_)
            driving = asyncio.ensure_future(run_session(session, transport, tick_interval=60.0))
            await wait_until(synced(global_, region), "initial sync")
            assert global_.digest() == region.digest()
            assert region.scope("global").policies.get(keys[-1]) == {"value": 299}

            # Live pushes both ways, with no tick and no incoming frame to trigger them.
            global_.scope("global").policies.set("pushed", "down")
            await wait_until(lambda: region.get("global", "policies", "pushed"), "push down")
            region.scope("global/region-a").policies.set("reported", "up")
            await wait_until(
                lambda: global_.get("global/region-a", "policies", "reported"), "push up"
            )
            assert global_.digest() == region.digest()

            session.close()  # the driver sends the close and returns; so does the server's
            stats = await driving
            await wait_until(lambda: serving.stats, "server session ended")
            await transport.close()
        assert stats.reason is StopReason.SESSION_CLOSED
        assert stats.envelopes_sent == 301
        # At least the one pushed up; the session currently also echoes back the envelope it was
        # pushed live (it does not count envelopes received as held by the peer): harmless,
        # since applies are idempotent, so it is not pinned here.
        assert stats.envelopes_received >= 1
        assert stats.ticks == 0
        assert stats.protocol_errors == 0
        (server_stats,) = serving.stats
        assert server_stats.reason is StopReason.SESSION_CLOSED
        assert server_stats.close_reason == "done"
        assert server_stats.envelopes_received == 301
        assert global_.conflicts() == region.conflicts() == []

    run(scenario())


def test_garbage_peers_are_dropped_without_disturbing_a_sync() -> None:
    async def scenario() -> None:
        global_, region = make_replica("global"), make_replica("region-a")
        write_keys(global_, 120)
        serving = SessionServer(global_, max_protocol_errors=8)
        rng = random.Random(2024)
        noise = rng.randbytes(4096)
        assert int.from_bytes(noise[:HEADER_SIZE], "big") > MAX_FRAME  # a lying header
        garbage_frames = [rng.randbytes(rng.randrange(1, 300)) for _ in range(8)]
        async with await TcpServer.start(handler=serving.handler, max_frame=MAX_FRAME) as server:

            async def noisy_client() -> None:
                reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
                writer.write(noise)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                    await reader.read()  # until the server drops us
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

            async def garbage_client() -> list[bytes]:
                # Well-framed nonsense: every frame is refused by the session, never by the
                # transport; the session closes itself after max_protocol_errors of them.
                raw = await connect(LOOPBACK, server.port)
                for frame in garbage_frames:
                    await raw.send(frame)
                got: list[bytes] = []
                with contextlib.suppress(TransportBrokenError):
                    while True:
                        got.append(await raw.receive())
                await raw.close()
                return got

            async def good_client() -> SessionStats:
                transport = await connect(LOOPBACK, server.port)
                session = SyncSession(region)
                driving = asyncio.ensure_future(run_session(session, transport))
                await wait_until(synced(global_, region), "sync beside garbage")
                session.close()
                stats = await driving
                await transport.close()
                return stats

            _, answers, good = await asyncio.gather(noisy_client(), garbage_client(), good_client())
            await wait_until(lambda: len(serving.stats) == 3, "all server sessions ended")
        assert global_.digest() == region.digest()
        assert good.reason is StopReason.SESSION_CLOSED
        assert good.envelopes_received == 120
        # The garbage client was told why: the last frame it got is the session's close.
        last = decode_message(answers[-1])
        assert isinstance(last, Close)
        assert last.reason.startswith("too many protocol errors")
        by_reason = {stats.reason: stats for stats in serving.stats}
        assert set(by_reason) == {StopReason.SESSION_CLOSED, StopReason.TRANSPORT_BROKEN}
        noisy = by_reason[StopReason.TRANSPORT_BROKEN]
        assert isinstance(noisy.error, FrameTooLargeError)
        assert noisy.frames_received == 0
        closed = [s for s in serving.stats if s.reason is StopReason.SESSION_CLOSED]
        assert sorted(s.protocol_errors for s in closed) == [0, 8]
        assert all(session.state is SessionState.CLOSED for session in serving.sessions)
        assert server.failures == 0  # run_session returns stats; nothing escaped a handler

    run(scenario())


class KillAfterFirstBatch(Transport):
    """Lets the first Envelopes frame through, then closes before anything else is sent.

    The batch is applied but its ack never leaves: the sender cannot know what arrived.
    """

    def __init__(self, inner: TcpTransport) -> None:
        self.inner = inner
        self.peer = inner.peer
        self.batches = 0

    async def send(self, frame: bytes) -> None:
        if self.batches:
            await self.inner.close()
        await self.inner.send(frame)

    async def receive(self) -> bytes:
        frame = await self.inner.receive()
        if isinstance(decode_message(frame), Envelopes):
            self.batches += 1
        return frame

    async def close(self) -> None:
        await self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed


def test_connection_killed_mid_batch_resumes_from_frontiers() -> None:
    async def scenario() -> None:
        global_, region = make_replica("global"), make_replica("region-a")
        keys = write_keys(global_, 300)
        serving = SessionServer(region)
        kills: list[KillAfterFirstBatch] = []

        def wrap(transport: TcpTransport) -> Transport:
            if kills:
                return transport
            kills.append(KillAfterFirstBatch(transport))
            return kills[0]

        serving.wrap = wrap
        slept: list[float] = []

        async def sleep(delay: float) -> None:
            slept.append(delay)

        async with await TcpServer.start(handler=serving.handler) as server:
            first = await connect_with_backoff(LOOPBACK, server.port, sleep=sleep)
            cut = await run_session(SyncSession(global_), first)
            await first.close()
            await wait_until(lambda: serving.stats, "first server session ended")
            assert cut.reason is StopReason.TRANSPORT_BROKEN
            assert cut.envelopes_sent == 100  # one batch, whose ack was lost with the link
            assert serving.stats[0].reason is StopReason.TRANSPORT_CLOSED
            assert region.chain_seq("global", global_.chain) == 100

            second = await connect_with_backoff(LOOPBACK, server.port, sleep=sleep)
            session = SyncSession(global_)
            driving = asyncio.ensure_future(run_session(session, second))
            await wait_until(synced(global_, region), "resumed sync")
            session.close()
            resumed = await driving
            await second.close()
            await wait_until(lambda: len(serving.stats) == 2, "second server session ended")
        assert slept == []  # both connections succeeded at once
        # Resumed from the frontier in the new hello: only what was missing crossed again.
        assert resumed.envelopes_sent == 200
        assert serving.stats[1].envelopes_received == 200
        assert global_.digest() == region.digest()
        assert global_.conflicts() == region.conflicts() == []
        for replica in (global_, region):
            policies = replica.scope("global").policies
            assert all(len(policies.history(key)) == 1 for key in keys)

    run(scenario())
