"""The sync driver: run_session over scripted transports and over the lossy memory network.

A scripted transport hands the driver exactly the frames and errors a test wants and records what
it sends, so each rule of the driver (flush, protocol errors, transport errors, wake-ups for live
pushes, ticks, cancellation) is checked on its own. The lossy-network test then shows the whole
loop repairing dropped, duplicated and reordered frames with its ticks.

Waiting is on conditions (an event set by the transport when the frame a test expects goes out),
under a hang guard. The tick tests use a tick interval of a few milliseconds because the tick
timer is the one real timer in sync.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from souverix_crdt.errors import (
    FrameTooLargeError,
    TransportBrokenError,
    TransportClosedError,
)
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.driver import StopReason, run_session
from souverix_crdt.sync.messages import (
    Close,
    Envelopes,
    Hello,
    Message,
    decode_message,
    encode_message,
)
from souverix_crdt.sync.session import SessionState, SyncSession
from souverix_crdt.testing.fleet import NOW, make_fleet
from souverix_crdt.transports.base import Transport
from souverix_crdt.transports.memory import MemoryNetwork

GUARD = 30.0
GARBAGE = b"\xc1 not msgpack"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(GUARD):
            await scenario

    asyncio.run(guarded())


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


def close_frame(reason: str = "bye") -> bytes:
    return encode_message(Close(reason))


def peer_opening(replica: Replica) -> list[bytes]:
    """The frames a real peer opens with (its hello and authority items)."""
    peer = SyncSession(replica, live=False)
    peer.start()
    return peer.data_to_send()


class Scripted(Transport):
    """Receives what the test feeds it; records what is sent and signals a watched condition."""

    def __init__(
        self,
        watch: Callable[[list[Message]], bool] = lambda _: False,
        *,
        answer: SyncSession | None = None,
    ) -> None:
        self.peer = "scripted"
        # A real peer session that answers what is sent (the handshake needs its proof).
        self.answer = answer
        self.incoming: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self.sent: list[Message] = []
        self.send_error: BaseException | None = None
        self.watch = watch
        self.seen = asyncio.Event()
        self.broken = False

    def feed(self, *items: bytes | BaseException) -> None:
        for item in items:
            self.incoming.put_nowait(item)

    async def send(self, frame: bytes) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(decode_message(frame))
        if self.answer is not None:
            self.answer.receive(frame)
            self.feed(*self.answer.data_to_send())
        if self.watch(self.sent):
            self.seen.set()

    async def receive(self) -> bytes:
        item = await self.incoming.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        self.broken = True

    @property
    def closed(self) -> bool:
        return self.broken

    def count(self, kind: type) -> int:
        return sum(isinstance(message, kind) for message in self.sent)


# --------------------------------------------------------------------------- flushing and ending


def test_starts_flushes_and_stops_when_the_peer_closes() -> None:
    async def scenario() -> None:
        transport = Scripted()
        session = SyncSession(make_replica("global"))
        opening = peer_opening(make_replica("region-a"))
        transport.feed(*opening, close_frame("bye"))
        stats = await run_session(session, transport)
        assert stats.reason is StopReason.SESSION_CLOSED
        assert stats.error is None
        assert stats.close_reason == "bye"
        assert isinstance(transport.sent[0], Hello)
        assert stats.frames_sent == len(transport.sent)
        assert stats.frames_received == len(opening) + 1
        assert stats.bytes_received == sum(map(len, opening)) + len(close_frame("bye"))
        assert session.state is SessionState.CLOSED
        assert session.on_output is None
        assert not transport.closed  # the transport stays the caller's

    run(scenario())


def test_our_close_is_sent_then_the_driver_returns() -> None:
    async def scenario() -> None:
        transport = Scripted(watch=lambda sent: any(isinstance(m, Hello) for m in sent))
        session = SyncSession(make_replica("global"))
        driving = asyncio.ensure_future(run_session(session, transport))
        await transport.seen.wait()
        session.close("finished")  # from outside the driver: the hook wakes it
        stats = await driving
        assert stats.reason is StopReason.SESSION_CLOSED
        assert isinstance(transport.sent[-1], Close)
        assert transport.sent[-1].reason == "finished"

    run(scenario())


def test_a_closed_session_only_flushes() -> None:
    async def scenario() -> None:
        transport = Scripted()
        session = SyncSession(make_replica("global"))
        session.close("before")
        stats = await run_session(session, transport)
        assert stats.reason is StopReason.SESSION_CLOSED
        assert [type(m) for m in transport.sent] == [Close]
        assert stats.frames_received == 0

    run(scenario())


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TransportBrokenError("gone", reason="eof"), StopReason.TRANSPORT_BROKEN),
        (TransportClosedError("ours"), StopReason.TRANSPORT_CLOSED),
    ],
)
def test_transport_errors_at_receive_stop_and_close_the_session(
    error: Exception, reason: StopReason
) -> None:
    async def scenario() -> None:
        transport = Scripted()
        session = SyncSession(make_replica("global"))
        transport.feed(error)
        stats = await run_session(session, transport)
        assert stats.reason is reason
        assert stats.error is error
        assert session.state is SessionState.CLOSED
        assert stats.close_reason.startswith(reason.value)
        assert session.data_to_send() == []  # its close had nowhere to go and was dropped

    run(scenario())


def test_transport_error_at_send_stops() -> None:
    async def scenario() -> None:
        transport = Scripted()
        transport.send_error = TransportBrokenError("reset", reason="reset")
        session = SyncSession(make_replica("global"))
        stats = await run_session(session, transport)
        assert stats.reason is StopReason.TRANSPORT_BROKEN
        assert stats.frames_sent == 0
        assert session.state is SessionState.CLOSED

    run(scenario())


def test_our_own_oversized_frame_is_a_configuration_error() -> None:
    async def scenario() -> None:
        transport = Scripted()
        transport.send_error = FrameTooLargeError(size=10, limit=5)
        session = SyncSession(make_replica("global"))
        with pytest.raises(FrameTooLargeError):
            await run_session(session, transport)
        assert session.state is SessionState.CLOSED
        assert session.on_output is None

    run(scenario())


def test_unexpected_receive_errors_propagate() -> None:
    async def scenario() -> None:
        transport = Scripted()
        transport.feed(RuntimeError("transport bug"))
        session = SyncSession(make_replica("global"))
        with pytest.raises(RuntimeError, match="transport bug"):
            await run_session(session, transport)
        assert session.state is SessionState.CLOSED

    run(scenario())


# --------------------------------------------------------------------------- hostile frames


def test_protocol_errors_are_counted_then_the_session_closes() -> None:
    async def scenario() -> None:
        transport = Scripted()
        session = SyncSession(make_replica("global"))
        transport.feed(*[GARBAGE] * 5)
        stats = await run_session(session, transport, max_protocol_errors=5)
        assert stats.reason is StopReason.SESSION_CLOSED
        assert stats.protocol_errors == 5
        assert stats.close_reason == "too many protocol errors (5)"
        assert isinstance(transport.sent[-1], Close)
        assert len(session.errors) == 5

    run(scenario())


def test_protocol_errors_without_a_limit_keep_the_session() -> None:
    async def scenario() -> None:
        transport = Scripted()
        session = SyncSession(make_replica("global"))
        transport.feed(*[GARBAGE] * 50, TransportBrokenError("gone", reason="eof"))
        stats = await run_session(session, transport, max_protocol_errors=None)
        assert stats.reason is StopReason.TRANSPORT_BROKEN
        assert stats.protocol_errors == 50

    run(scenario())


def test_a_surviving_transport_refusing_a_frame_counts_as_a_protocol_error() -> None:
    async def scenario() -> None:
        transport = Scripted()
        session = SyncSession(make_replica("global"))
        transport.feed(FrameTooLargeError(size=9, limit=8), close_frame())
        stats = await run_session(session, transport)
        assert stats.reason is StopReason.SESSION_CLOSED
        assert stats.protocol_errors == 1

    run(scenario())


def test_a_transport_broken_by_an_oversized_frame_stops() -> None:
    async def scenario() -> None:
        transport = Scripted()
        transport.broken = True  # as TCP: the liar was disconnected
        session = SyncSession(make_replica("global"))
        transport.feed(FrameTooLargeError(size=9, limit=8))
        stats = await run_session(session, transport)
        assert stats.reason is StopReason.TRANSPORT_BROKEN
        assert isinstance(stats.error, FrameTooLargeError)

    run(scenario())


# --------------------------------------------------------------------------- wake-ups and ticks


def test_live_pushes_wake_the_driver() -> None:
    async def scenario() -> None:
        replica = make_replica("global")
        peer = SyncSession(make_replica("region-a"), live=False)
        transport = Scripted(
            watch=lambda sent: any(isinstance(m, Envelopes) for m in sent), answer=peer
        )
        session = SyncSession(replica)
        previous_calls: list[None] = []
        session.on_output = lambda: previous_calls.append(None)
        peer.start()
        transport.feed(*peer.data_to_send())
        driving = asyncio.ensure_future(run_session(session, transport, tick_interval=60.0))
        # Wait until the handshake is done: the session is open and idle.
        for _ in range(10_000):
            if session.state is SessionState.OPEN and transport.incoming.empty():
                break
            await asyncio.sleep(0)
        assert transport.count(Envelopes) == 0
        replica.scope("global").policies.set("pushed", 1)  # no frame arrives, no tick is due
        await transport.seen.wait()
        (batch,) = [m for m in transport.sent if isinstance(m, Envelopes)]
        assert len(batch.items) == 1
        driving.cancel()
        await asyncio.wait([driving])
        assert previous_calls  # an existing hook is chained, not replaced...
        assert session.on_output is not None  # ...and restored afterwards
        assert session.state is SessionState.CLOSED  # a cancelled driver closes its session

    run(scenario())


def test_silence_triggers_a_tick_that_resends_the_hello() -> None:
    async def scenario() -> None:
        transport = Scripted(watch=lambda sent: sum(isinstance(m, Hello) for m in sent) >= 3)
        session = SyncSession(make_replica("global"))
        transport.feed(*peer_opening(make_replica("region-a")))
        driving = asyncio.ensure_future(run_session(session, transport, tick_interval=0.005))
        await transport.seen.wait()  # two ticks' hellos after the opening one
        session.close()
        stats = await driving
        assert stats.ticks >= 2

    run(scenario())


def test_tick_interval_must_be_positive() -> None:
    async def scenario() -> None:
        session = SyncSession(make_replica("global"))
        with pytest.raises(ValueError, match="tick_interval"):
            await run_session(session, Scripted(), tick_interval=0)

    run(scenario())


# --------------------------------------------------------------------------- a lossy network


def test_ticks_repair_a_lossy_network() -> None:
    async def scenario() -> None:
        global_, region = make_replica("global"), make_replica("region-a")
        for index in range(150):
            global_.scope("global").policies.set(f"key-{index:03d}", index)
        network = MemoryNetwork(seed=5)
        network.set_faults(drop=0.3, duplicate=0.2, reorder=0.3, delay=(0, 2))
        ends = network.connect("global", "region-a")
        sessions = [SyncSession(global_, batch_size=20), SyncSession(region, batch_size=20)]
        driving = [
            asyncio.ensure_future(run_session(session, end, tick_interval=0.002))
            for session, end in zip(sessions, ends, strict=True)
        ]
        # The network moves only when pumped; ticks (a real timer) resend what was lost.
        while global_.frontiers() != region.frontiers():
            await network.pump()
            await asyncio.sleep(0)
        assert global_.digest() == region.digest()
        assert region.conflicts() == []
        sessions[0].close()
        await network.pump()
        first = await driving[0]
        # The close may itself be lost: the other side then stops when the link goes.
        await ends[0].close()
        while not driving[1].done():
            await network.pump()
            await asyncio.sleep(0)
        second = driving[1].result()
        assert first.reason is StopReason.SESSION_CLOSED
        assert second.reason in {StopReason.SESSION_CLOSED, StopReason.TRANSPORT_BROKEN}
        assert first.ticks + second.ticks >= 1
        assert network.totals.dropped > 0

    run(scenario())
