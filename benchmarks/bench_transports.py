"""Sync over real transports: TCP on loopback and NATS, against raw byte movers in the same run.

Each figure times a whole sync of a writer's envelopes into a fresh replica — two
:class:`~souverix_crdt.sync.session.SyncSession` objects driven by
:func:`~souverix_crdt.sync.driver.run_session`, hellos, batches, acks, verification and apply
included — and divides by the time the transport alone takes to move the frames that sync
sent (captured from an untimed warm-up run): a raw asyncio stream with the same length prefix,
or a raw nats-py publish to a subscriber.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from souverix_crdt.document import WriteOp
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.base import StoredEnvelope
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.driver import run_session
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.testing.fleet import NOW, make_fleet
from souverix_crdt.transports.base import Transport
from souverix_crdt.transports.tcp import HEADER_SIZE, TcpServer, TcpTransport, connect

from .bench_lww import keys_and_values
from .runner import Context, Figure, benchmark, rate_figure

FLEET = make_fleet()
SCOPE = "global/region-a"
#: Writes per envelope: a batch of node status reports.
PER_ENVELOPE = 10
LOOPBACK = "127.0.0.1"
#: Ticks would only add noise: nothing is lost on these links.
TICK_INTERVAL = 60.0
#: A sync that has not finished after this many seconds is a failure, not a slow figure.
DEADLINE = 120.0


def _replica(name: str, epoch: int) -> Replica:
    member = FLEET[name]
    return Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore(),
        name=name,
        wall_clock=lambda: NOW + 10_000_000,
        epoch=epoch,
    )


def make_writer(n_envelopes: int) -> Replica:
    """region-a's replica holding ``n_envelopes`` envelopes of PER_ENVELOPE node records."""
    writer = _replica("region-a", epoch=1)
    items = keys_and_values(n_envelopes * PER_ENVELOPE)
    for start in range(0, len(items), PER_ENVELOPE):
        ops = [WriteOp("nodes", k, v) for k, v in items[start : start + PER_ENVELOPE]]
        writer.write(SCOPE, ops)
    return writer


class Capture(Transport):
    """Passes frames through and keeps a copy of every frame sent."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    async def send(self, frame: bytes) -> None:
        self.sent.append(bytes(frame))
        await self.inner.send(frame)

    async def receive(self) -> bytes:
        return await self.inner.receive()

    async def close(self) -> None:
        await self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed


class Receiver:
    """A fresh replica of global that signals once it has accepted ``expected`` envelopes."""

    def __init__(self, expected: int, epoch: int) -> None:
        self.replica = _replica("global", epoch)
        self.expected = expected
        self.accepted = 0
        self.done = asyncio.Event()
        self.replica.on_envelope(self._on_envelope)

    def _on_envelope(self, stored: StoredEnvelope, source: str | None) -> None:
        if source is not None:
            self.accepted += 1
            if self.accepted >= self.expected:
                self.done.set()

    async def wait(self, *sessions: SyncSession) -> None:
        """Until every envelope arrived; fail loudly with the sessions' state after DEADLINE."""
        try:
            await asyncio.wait_for(self.done.wait(), DEADLINE)
        except TimeoutError:
            states = [
                f"{s.replica.name}: {s.state.value}, sent {s.envelopes_sent}, "
                f"received {s.envelopes_received}, errors {s.errors}"
                for s in sessions
            ]
            raise AssertionError(
                f"sync stalled: {self.accepted} of {self.expected} envelopes; {states}"
            ) from None


async def _finish(session: SyncSession, driving: asyncio.Future[Any]) -> None:
    session.close()
    await driving


Timed = Callable[[], Awaitable[float]]


async def alternate(ours: Timed, base: Timed, repeats: int) -> tuple[list[float], list[float]]:
    """Time both sides alternately, GC paused while each runs (as runner.timed_pair does)."""
    our_times: list[float] = []
    base_times: list[float] = []
    for _ in range(repeats):
        for side, times in ((base, base_times), (ours, our_times)):
            gc.collect()
            gc.disable()
            try:
                times.append(await side())
            finally:
                gc.enable()
    return our_times, base_times


# =============================================================================== TCP


async def tcp_sync(writer: Replica, expected: int, epoch: int, capture: bool = False) -> Any:
    """Sync writer → a fresh receiver over loopback TCP; seconds, or the frames sent."""
    receiver = Receiver(expected, epoch)

    async def handler(transport: TcpTransport) -> None:
        session = SyncSession(receiver.replica)
        await run_session(session, transport, tick_interval=TICK_INTERVAL)

    async with await TcpServer.start(LOOPBACK, 0, handler=handler) as server:
        start = time.perf_counter()
        transport: Transport = await connect(LOOPBACK, server.port, peer="global")
        if capture:
            transport = Capture(transport)
        session = SyncSession(writer)
        driving = asyncio.ensure_future(
            run_session(session, transport, tick_interval=TICK_INTERVAL)
        )
        await receiver.wait(session)
        elapsed = time.perf_counter() - start
        await _finish(session, driving)
        await transport.close()
    if receiver.replica.digest() != writer.digest():
        raise AssertionError("TCP sync did not converge")
    return transport.sent if isinstance(transport, Capture) else elapsed


async def raw_tcp(frames: list[bytes]) -> float:
    """Seconds for a raw asyncio stream on loopback to move ``frames``, length-prefixed."""
    received = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in frames:
            size = int.from_bytes(await reader.readexactly(HEADER_SIZE), "big")
            await reader.readexactly(size)
        received.set()
        writer.close()

    server = await asyncio.start_server(serve, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        start = time.perf_counter()
        _, out = await asyncio.open_connection(LOOPBACK, port)
        for frame in frames:
            out.write(len(frame).to_bytes(HEADER_SIZE, "big") + frame)
            await out.drain()
        await asyncio.wait_for(received.wait(), DEADLINE)
        elapsed = time.perf_counter() - start
        out.close()
        await out.wait_closed()
    return elapsed


@benchmark("tcp")
def tcp(ctx: Context) -> None:
    """Envelopes/s synced between two replicas over loopback TCP vs a raw asyncio stream."""
    n = 1_000 if ctx.quick else 10_000
    writer = make_writer(n)
    epochs = iter(range(2, 1_000_000))

    async def scenario() -> tuple[list[float], list[float], int]:
        frames = await tcp_sync(writer, n, next(epochs), capture=True)

        async def ours() -> float:
            return float(await tcp_sync(writer, n, next(epochs)))

        async def base() -> float:
            return await raw_tcp(frames)

        our_times, base_times = await alternate(ours, base, ctx.repeats)
        return our_times, base_times, sum(map(len, frames))

    our_times, base_times, size = asyncio.run(scenario())
    figure = rate_figure(
        "tcp_ratio",
        n,
        our_times,
        base_times,
        unit="envelopes/s",
        note=f"{n} envelopes of {PER_ENVELOPE} node records synced into a fresh replica over "
        "loopback TCP (run_session both sides: hellos, batches of 100, acks, verify, apply, "
        "in-memory stores); baseline: a raw asyncio stream moving the frames that sync sent "
        f"({size} bytes), same length prefix",
    )
    ctx.add(figure)
    ctx.add(_absolute("tcp_envelopes_per_s", figure))


def _absolute(name: str, figure: Figure) -> Figure:
    """The same measurement under its absolute name (value: envelopes/s)."""
    return replace(figure, name=name, note=f"the rate behind {figure.name}: {figure.note}")


# =============================================================================== NATS


async def nats_sync(
    connections: tuple[Any, Any], writer: Replica, expected: int, run: int, capture: bool = False
) -> Any:
    """Sync writer → a fresh receiver through a NATS server; seconds, or the frames sent."""
    from souverix_crdt.transports.nats import NatsTransport, Subjects  # noqa: PLC0415

    subjects = Subjects(f"bench-{run}")
    receiver = Receiver(expected, run)
    ends: list[Transport] = [
        await NatsTransport.open(connections[0], subjects, local="region-a", peer="global"),
        await NatsTransport.open(connections[1], subjects, local="global", peer="region-a"),
    ]
    if capture:
        ends[0] = Capture(ends[0])
    sessions = (SyncSession(writer), SyncSession(receiver.replica))
    start = time.perf_counter()
    driving = [
        asyncio.ensure_future(run_session(s, end, tick_interval=TICK_INTERVAL))
        for s, end in zip(sessions, ends, strict=True)
    ]
    await receiver.wait(*sessions)
    elapsed = time.perf_counter() - start
    for session, task in zip(sessions, driving, strict=True):
        await _finish(session, task)
    for end in ends:
        await end.close()
    if receiver.replica.digest() != writer.digest():
        raise AssertionError("NATS sync did not converge")
    return ends[0].sent if isinstance(ends[0], Capture) else elapsed


async def raw_nats(connections: tuple[Any, Any], frames: list[bytes], run: int) -> float:
    """Seconds for raw nats-py to publish ``frames`` to a subscriber on another connection."""
    from souverix_crdt.transports.nats import flush_through  # noqa: PLC0415

    subject = f"bench.raw.{run}"
    received = asyncio.Event()
    count = 0

    async def on_message(message: Any) -> None:
        nonlocal count
        count += 1
        if count == len(frames):
            received.set()

    subscription = await connections[1].subscribe(subject, cb=on_message)
    # One flush() can return before the SUB reached the server (see flush_through).
    await flush_through(connections[1], DEADLINE)
    start = time.perf_counter()
    for frame in frames:
        await connections[0].publish(subject, frame)
    await asyncio.wait_for(received.wait(), DEADLINE)
    elapsed = time.perf_counter() - start
    await subscription.unsubscribe()
    return elapsed


def _nats_unavailable() -> str | None:
    try:
        import nats  # noqa: F401, PLC0415

        from souverix_crdt.testing.nats_server import nats_server_binary  # noqa: PLC0415

        nats_server_binary()
    except (ImportError, FileNotFoundError) as exc:
        return f"NATS figures skipped: {exc}"
    return None


@benchmark("nats")
def nats_sync_rate(ctx: Context) -> None:
    """Envelopes/s synced through a local nats-server vs raw nats-py publish of the same frames."""
    missing = _nats_unavailable()
    if missing is not None:
        for name in ("nats_envelopes_per_s", "nats_ratio"):
            ctx.skip(name, missing)
        return
    import nats  # noqa: PLC0415

    from souverix_crdt.testing.nats_server import NatsServer  # noqa: PLC0415

    n = 1_000 if ctx.quick else 10_000
    writer = make_writer(n)
    runs = iter(range(2, 1_000_000))
    directory = Path(tempfile.mkdtemp(prefix="souverix-bench-nats-"))

    async def scenario() -> tuple[list[float], list[float], int]:
        pair = (await nats.connect(server.url), await nats.connect(server.url))
        try:
            frames = await nats_sync(pair, writer, n, next(runs), capture=True)

            async def ours() -> float:
                return float(await nats_sync(pair, writer, n, next(runs)))

            async def base() -> float:
                return await raw_nats(pair, frames, next(runs))

            our_times, base_times = await alternate(ours, base, ctx.repeats)
        finally:
            for connection in pair:
                await connection.close()
        return our_times, base_times, sum(map(len, frames))

    with NatsServer(directory, name="bench", domain="bench") as server:
        our_times, base_times, size = asyncio.run(scenario())
    figure = rate_figure(
        "nats_ratio",
        n,
        our_times,
        base_times,
        unit="envelopes/s",
        note=f"{n} envelopes of {PER_ENVELOPE} node records synced into a fresh replica "
        "through a local nats-server (NatsTransport, one client connection per replica, "
        "run_session both sides); baseline: raw nats-py publish of the frames that sync sent "
        f"({size} bytes) to a subscriber on the other connection",
    )
    ctx.add(figure)
    ctx.add(_absolute("nats_envelopes_per_s", figure))
