"""Connection limits in process: TcpServer's caps and idle timeout, the session handshake
deadline of run_session, throttled reports, and the ``limits:`` mapping of a peer config.

Clocks are injected where the code reads one: refusal reports are spaced by a fake clock, and
the handshake deadline waits on a fake ``sleep`` the test releases. The idle timeout rides on
the event loop's own timer, so its test is the one place a short real timer (0.2 s) expires.
Servers listen on 127.0.0.1; extra client addresses are other loopback addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from souverix_crdt.errors import ConfigError, TransportBrokenError, TransportClosedError
from souverix_crdt.limits import DEFAULT_LIMITS, Limits
from souverix_crdt.plane.peer import parse_peer_config
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.driver import StopReason, run_session
from souverix_crdt.sync.messages import Close, decode_message
from souverix_crdt.sync.session import SessionState, SyncSession
from souverix_crdt.testing.fleet import NOW, make_fleet
from souverix_crdt.transports.base import Transport
from souverix_crdt.transports.tcp import TcpServer, TcpTransport, ThrottledReport, connect

LOOPBACK = "127.0.0.1"
GUARD = 20.0


def run(scenario: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(GUARD):
            await scenario

    asyncio.run(guarded())


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Holding:
    """A handler that keeps every connection open until the server closes, echoing frames."""

    def __init__(self) -> None:
        self.ended: list[BaseException] = []

    async def handler(self, transport: TcpTransport) -> None:
        try:
            while True:
                await transport.send(await transport.receive())
        except (TransportBrokenError, TransportClosedError) as exc:
            self.ended.append(exc)


async def raw(port: int, source: str = LOOPBACK) -> tuple[asyncio.StreamReader, Any]:
    return await asyncio.open_connection(LOOPBACK, port, local_addr=(source, 0))


async def refused(reader: asyncio.StreamReader) -> bool:
    """The connection was reset or ended without a byte."""
    try:
        data = await asyncio.wait_for(reader.read(1), 5.0)
    except ConnectionError:
        return True
    return data == b""


async def echoes(transport: TcpTransport) -> bool:
    await transport.send(b"ping")
    return await asyncio.wait_for(transport.receive(), 5.0) == b"ping"


async def settle(server: TcpServer, connections: int) -> None:
    for _ in range(100_000):
        if server.connections == connections:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{server.connections} connections held, expected {connections}")


# --------------------------------------------------------------------------- caps


def test_the_per_address_cap_refuses_the_newcomer_and_keeps_the_held() -> None:
    async def scenario() -> None:
        holding = Holding()
        limits = Limits(max_connections=10, max_connections_per_address=2)
        async with await TcpServer.start(handler=holding.handler, limits=limits) as server:
            held = [await connect(LOOPBACK, server.port) for _ in range(2)]
            await settle(server, 2)
            reader, writer = await raw(server.port)
            assert await refused(reader)
            writer.close()
            assert (server.refused, server.refused_per_address, server.accepted) == (1, 1, 2)
            assert server.connections_from(LOOPBACK) == 2
            # Another address is not held back by this one's cap.
            other = await asyncio.open_connection(
                LOOPBACK, server.port, local_addr=("127.0.0.2", 0)
            )
            other[1].close()
            for transport in held:  # never evicted
                assert await echoes(transport)
            # A slot freed is a slot offered again.
            await held[0].close()
            await settle(server, 1)
            again = await connect(LOOPBACK, server.port)
            assert await echoes(again)
            assert server.refused == 1
            for transport in (again, *held):
                await transport.close()

    run(scenario())


def test_the_total_cap_refuses_the_newcomer_from_any_address() -> None:
    async def scenario() -> None:
        holding = Holding()
        limits = Limits(max_connections=2, max_connections_per_address=2)
        async with await TcpServer.start(handler=holding.handler, limits=limits) as server:
            first = await raw(server.port, "127.0.0.2")
            second = await raw(server.port, "127.0.0.3")
            await settle(server, 2)
            reader, writer = await raw(server.port, "127.0.0.4")
            assert await refused(reader)
            assert (server.refused, server.refused_per_address, server.accepted) == (1, 0, 2)
            for _, w in (first, second, (reader, writer)):
                w.close()

    run(scenario())


def test_refusals_are_logged_once_per_interval_with_their_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        holding = Holding()
        limits = Limits(max_connections=1)
        server = await TcpServer.start(
            handler=holding.handler, limits=limits, log_interval=10.0, clock=clock
        )
        try:
            kept = await raw(server.port)
            await settle(server, 1)
            for _ in range(5):
                reader, writer = await raw(server.port)
                assert await refused(reader)
                writer.close()
            lines = [r for r in caplog.records if "over the connection cap" in r.message]
            assert len(lines) == 1  # the first at once, the next four held back
            assert "refused 1 connection over" in lines[0].message
            clock.now = 11.0
            reader, writer = await raw(server.port)
            assert await refused(reader)
            writer.close()
            lines = [r for r in caplog.records if "over the connection cap" in r.message]
            assert len(lines) == 2
            assert "refused 5 connections over" in lines[1].message
            assert "max_connections=1 reached" in lines[1].message
            assert "6 refused in all" in lines[1].message
            kept[1].close()
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="souverix_crdt.transports.tcp"):
        run(scenario())


def test_old_keyword_arguments_override_the_limits() -> None:
    async def scenario() -> None:
        holding = Holding()
        limits = Limits(max_frame=16, idle_timeout=3600.0)
        async with await TcpServer.start(
            handler=holding.handler, limits=limits, max_frame=64, read_timeout=0.2
        ) as server:
            transport = await connect(LOOPBACK, server.port, max_frame=64)
            await transport.send(b"x" * 40)  # over the limits' 16, within the argument's 64
            assert await asyncio.wait_for(transport.receive(), 5.0) == b"x" * 40
            await settle(server, 1)
            await settle(server, 0)  # then silent: the 0.2 s read_timeout, not the hour
            await transport.close()

    run(scenario())


# --------------------------------------------------------------------------- idle


def test_a_silent_connection_is_aborted_after_the_idle_timeout() -> None:
    async def scenario() -> None:
        holding = Holding()
        limits = Limits(idle_timeout=0.2)
        async with await TcpServer.start(handler=holding.handler, limits=limits) as server:
            talker = await connect(LOOPBACK, server.port)

            async def keep_talking() -> None:  # never silent for the idle timeout
                while True:
                    assert await echoes(talker)
                    await asyncio.sleep(0.05)

            talking = asyncio.ensure_future(keep_talking())
            reader, writer = await raw(server.port)
            start = asyncio.get_running_loop().time()
            assert await refused(reader)  # silent: cut off
            waited = asyncio.get_running_loop().time() - start
            assert 0.15 <= waited < 5.0
            assert not talking.done()  # the talker was never cut off
            talking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await talking
            (ended,) = holding.ended
            assert isinstance(ended, TransportBrokenError)
            assert ended.reason == "timeout"
            assert await echoes(talker)
            writer.close()
            await talker.close()

    run(scenario())


# --------------------------------------------------------------------------- throttled reports


def test_a_throttled_report_counts_everything_and_reports_once_per_interval() -> None:
    clock = FakeClock()
    reports: list[tuple[int, str]] = []
    report = ThrottledReport(lambda n, latest: reports.append((n, latest)), clock=clock)
    report.add("a")
    assert reports == [(1, "a")]
    for detail in "bcd":
        report.add(detail)
    assert reports == [(1, "a")]
    assert report.pending == 3
    clock.now = 10.0
    report.add("e")
    assert reports == [(1, "a"), (4, "e")]
    report.add("f")
    report.flush()
    assert reports[-1] == (1, "f")
    report.flush()  # nothing pending: nothing said
    assert len(reports) == 3


def test_a_throttled_report_flushes_on_its_own_timer() -> None:
    async def scenario() -> None:
        reports: list[int] = []
        done = asyncio.Event()

        def emit(count: int, latest: str) -> None:
            reports.append(count)
            if len(reports) == 2:
                done.set()

        report = ThrottledReport(emit, interval=0.05)
        for _ in range(4):
            report.add("x")
        await done.wait()
        assert reports == [1, 3]

    run(scenario())


# --------------------------------------------------------------------------- handshake deadline


def make_replica(name: str) -> Replica:
    member = make_fleet()[name]
    return Replica(
        Identity(member.key, member.chain),
        make_fleet().anchors,
        MemoryStore(),
        name=name,
        wall_clock=lambda: NOW,
        epoch=1,
    )


class Pipe(Transport):
    """One end of an in-process pipe that delivers at once, in order."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.other: Pipe | None = None
        self.ended = False

    async def send(self, frame: bytes) -> None:
        assert self.other is not None
        self.other.incoming.put_nowait(frame)

    async def receive(self) -> bytes:
        return await self.incoming.get()

    async def close(self) -> None:
        self.ended = True

    @property
    def closed(self) -> bool:
        return self.ended


def pipe(a: str, b: str) -> tuple[Pipe, Pipe]:
    ours, theirs = Pipe(b), Pipe(a)
    ours.other, theirs.other = theirs, ours
    return ours, theirs


class FakeSleep:
    """A sleep that returns when the test releases it, recording what it was asked for."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.release = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self.release.wait()


def test_a_peer_that_never_authenticates_is_closed_at_the_deadline() -> None:
    async def scenario() -> None:
        ours, theirs = pipe("global", "stranger")
        sleep = FakeSleep()
        session = SyncSession(make_replica("global"))
        driving = asyncio.ensure_future(
            run_session(session, ours, tick_interval=60.0, handshake_timeout=1.5, sleep=sleep)
        )
        first = await theirs.receive()  # our hello; the stranger says nothing
        assert decode_message(first) is not None
        await asyncio.sleep(0)
        assert sleep.asked == [1.5]
        assert not driving.done()
        sleep.release.set()
        stats = await driving
        assert stats.reason is StopReason.SESSION_CLOSED
        assert stats.close_reason == "handshake not completed within 1.5 s"
        close = decode_message(await theirs.receive())
        assert isinstance(close, Close)
        assert close.reason == stats.close_reason

    run(scenario())


def test_an_authenticated_session_outlives_the_deadline() -> None:
    async def scenario() -> None:
        ours, theirs = pipe("global", "region-a")
        sleep = FakeSleep()
        session = SyncSession(make_replica("global"))
        peer = SyncSession(make_replica("region-a"))
        driving = asyncio.ensure_future(
            run_session(session, ours, tick_interval=60.0, handshake_timeout=1.0, sleep=sleep)
        )
        answering = asyncio.ensure_future(run_session(peer, theirs, tick_interval=60.0))
        for _ in range(100_000):
            if session.authenticated and peer.authenticated:
                break
            await asyncio.sleep(0)
        assert session.authenticated
        sleep.release.set()
        for _ in range(100):
            await asyncio.sleep(0)
        assert session.state is SessionState.OPEN
        assert not driving.done()
        session.close()
        await driving
        await answering

    run(scenario())


def test_the_handshake_timeout_must_be_positive() -> None:
    async def scenario() -> None:
        ours, _ = pipe("global", "x")
        with pytest.raises(ValueError, match="handshake_timeout"):
            await run_session(SyncSession(make_replica("global")), ours, handshake_timeout=0)

    run(scenario())


# --------------------------------------------------------------------------- peer config

BASE = "plane: region-a\nkeys: keys\nstore: s.sqlite3\n"


def test_the_limits_mapping_overrides_by_field_name() -> None:
    config = parse_peer_config(
        BASE
        + "limits:\n  max_connections: 100\n  max_connections_per_address: 8\n"
        + "  handshake_timeout: 2s\n  idle_timeout: 1m\n  max_frame: 1_048_576\n"
    )
    assert config.limits == DEFAULT_LIMITS.evolve(
        max_connections=100,
        max_connections_per_address=8,
        handshake_timeout=2.0,
        idle_timeout=60.0,
        max_frame=1 << 20,
    )
    assert parse_peer_config(BASE).limits == DEFAULT_LIMITS


def test_a_tick_longer_than_the_default_idle_timeout_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"limits.idle_timeout: 300 s \(the default\)"):
        parse_peer_config(BASE + "sync: {tick: 10m}\n")


@pytest.mark.parametrize(
    ("limits", "field", "detail"),
    [
        ("{idle_timout: 5s}", "limits.idle_timout", "did you mean 'idle_timeout'"),
        ("{max_conections: 5}", "limits.max_conections", "max_connections"),
        ("{nonsense: 5}", "limits.nonsense", "unknown limit"),
        ("{idle_timeout: 30}", "limits.idle_timeout", "'30s'"),
        ("{handshake_timeout: soon}", "limits.handshake_timeout", "not a duration"),
        ("{max_connections: 0}", "limits.max_connections", "positive integer"),
        ("{max_connections: 1.5}", "limits.max_connections", "positive integer"),
        ("{max_connections: true}", "limits.max_connections", "positive integer"),
        ("{max_frame: 4294967296}", "limits.max_frame", "4-byte frame header"),
        ("{idle_timeout: 5s}", "limits.idle_timeout", "must exceed sync.tick"),
        ("[1, 2]", "limits", "expected a mapping"),
    ],
)
def test_bad_limits_name_their_field(limits: str, field: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_peer_config(BASE + f"limits: {limits}\n", file="peer.yaml")
    assert caught.value.field == field
    assert detail in str(caught.value)


def test_the_limits_reach_the_replica(tmp_path: Path) -> None:
    from click.testing import CliRunner  # noqa: PLC0415

    from souverix_crdt.cli import cli  # noqa: PLC0415
    from souverix_crdt.plane.peer import open_replica  # noqa: PLC0415

    topology = Path(__file__).resolve().parents[1] / "src" / "souverix_crdt" / "data"
    result = CliRunner().invoke(
        cli,
        ["keys", "init", str(topology / "default-topology.yaml"), "--out", str(tmp_path / "keys")],
    )
    assert result.exit_code == 0, result.output
    config = parse_peer_config(BASE + "limits: {max_connections: 7}\n", base=tmp_path)
    replica = open_replica(config)
    try:
        assert replica.limits.max_connections == 7
    finally:
        with contextlib.suppress(Exception):
            replica.close()
