"""Drive a sans-IO :class:`~souverix_crdt.sync.session.SyncSession` over any transport.

The session decides everything and never waits; this module is the IO edge that does the
waiting. :func:`run_session` starts the session and then, until the session or the transport
ends:

* sends whatever the session queued (after starting, after every received frame, after every
  tick, and whenever the session queues frames on its own: live pushes made by local writes,
  signalled through :attr:`SyncSession.on_output`);
* receives frames and feeds them to the session; a frame the peer should not have sent
  (:class:`~souverix_crdt.errors.RemoteProtocolError`) is counted and skipped, and after
  ``max_protocol_errors`` of them the session is closed (a peer that only sends garbage is not
  kept busy for ever);
* calls :meth:`SyncSession.tick` when nothing arrived for ``tick_interval`` seconds, which repairs
  lost batches and acks (this is the only timer in sync, and it lives here, not in the session);
* with a ``handshake_timeout``, closes the session if its peer has not authenticated that many
  seconds after the start (a client that connects and never proves its key holds nothing for
  long). The wait is an injectable ``sleep``, so tests decide when the deadline passes.

It stops when the session closes (after sending its close message), or when the transport is
closed or broken, and returns a :class:`SessionStats`. It never closes the transport, which
belongs to the caller (a :class:`~souverix_crdt.transports.tcp.TcpServer` closes its connections
when their handler returns). It always leaves the session closed: a session whose transport is
gone cannot be resumed, and a closed session stops listening to its replica. Reconnecting means
a new transport and a new session, which resumes from the frontiers both sides exchange in their
hellos.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Final

import attrs

from souverix_crdt.errors import (
    FrameTooLargeError,
    RemoteProtocolError,
    TransportClosedError,
    TransportError,
)
from souverix_crdt.transports.base import Transport

from .session import SessionState, SyncSession

__all__ = [
    "DEFAULT_MAX_PROTOCOL_ERRORS",
    "DEFAULT_TICK_INTERVAL",
    "SessionStats",
    "StopReason",
    "run_session",
]

#: Seconds of silence from the peer after which the session ticks (resends its hello).
DEFAULT_TICK_INTERVAL: Final = 5.0
#: Protocol errors from the peer after which the session is closed.
DEFAULT_MAX_PROTOCOL_ERRORS: Final = 32


class StopReason(enum.Enum):
    """Why :func:`run_session` returned."""

    SESSION_CLOSED = "session-closed"  # either side closed the session; its close was sent
    TRANSPORT_CLOSED = "transport-closed"  # this side closed the transport
    TRANSPORT_BROKEN = "transport-broken"  # the peer or the network broke it


@attrs.frozen(kw_only=True)
class SessionStats:
    """What one :func:`run_session` call did.

    Attributes:
        reason: Why it stopped.
        error: The transport error that stopped it, if one did.
        close_reason: The session's close reason (ours, the peer's, or the transport's).
        frames_sent: Frames handed to the transport.
        frames_received: Frames received from it.
        bytes_sent: Bytes of the frames sent.
        bytes_received: Bytes of the frames received.
        ticks: Times the session was ticked after a silence.
        protocol_errors: Frames the session refused, plus oversized frames a transport refused
            and survived.
        envelopes_sent: Envelopes the session sent in batches.
        envelopes_received: Envelopes it received in batches.
    """

    reason: StopReason
    error: TransportError | None = attrs.field(default=None, eq=False)
    close_reason: str = ""
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    ticks: int = 0
    protocol_errors: int = 0
    envelopes_sent: int = 0
    envelopes_received: int = 0


class _Driver:
    """The state of one :func:`run_session` call."""

    def __init__(
        self,
        session: SyncSession,
        transport: Transport,
        tick_interval: float,
        max_protocol_errors: int | None,
    ) -> None:
        self.session = session
        self.transport = transport
        self.tick_interval = tick_interval
        self.max_protocol_errors = max_protocol_errors
        self.loop = asyncio.get_running_loop()
        self.wake: asyncio.Future[None] = self.loop.create_future()
        self.frames_sent = 0
        self.frames_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.ticks = 0
        self.protocol_errors = 0

    def on_output(self) -> None:
        # Called synchronously by the session, possibly from a replica callback far from here:
        # only flag the loop, which sends on its next turn.
        if not self.wake.done():
            self.wake.set_result(None)

    async def flush(self) -> TransportError | None:
        """Send every queued frame; return the transport error that stopped it, if any."""
        for frame in self.session.data_to_send():
            try:
                await self.transport.send(frame)
            except FrameTooLargeError:
                # Our own frame does not fit the transport: batch_size or max_frame is
                # misconfigured. Retrying would resend the same batch for ever.
                raise
            except TransportError as exc:
                return exc
            self.frames_sent += 1
            self.bytes_sent += len(frame)
        return None

    def feed(self, frame: bytes) -> None:
        """Hand one received frame to the session."""
        self.frames_received += 1
        self.bytes_received += len(frame)
        try:
            self.session.receive(frame)
        except RemoteProtocolError:
            self.protocol_error()

    def protocol_error(self) -> None:
        self.protocol_errors += 1
        limit = self.max_protocol_errors
        if limit is not None and self.protocol_errors >= limit:
            self.session.close(f"too many protocol errors ({self.protocol_errors})")

    def received(self, task: asyncio.Task[bytes]) -> TransportError | None:
        """Handle a finished receive; return the transport error that ends the run, if any."""
        failure = task.exception()
        if failure is None:
            self.feed(task.result())
            return None
        if isinstance(failure, FrameTooLargeError) and not self.transport.closed:
            # Refused by a transport that drops the frame and stays usable.
            self.protocol_error()
            return None
        if isinstance(failure, TransportError):
            return failure
        raise failure

    async def run(self) -> tuple[StopReason, TransportError | None]:
        session, transport, loop = self.session, self.transport, self.loop
        if session.state is SessionState.IDLE:
            session.start()
        receiving: asyncio.Task[bytes] | None = None
        quiet_since = loop.time()
        try:
            while True:
                error = await self.flush()
                if error is not None:
                    return _stop_reason(error), error
                if session.state is SessionState.CLOSED:
                    return StopReason.SESSION_CLOSED, None
                # One receive stays pending across wake-ups for output and ticks: waking up
                # never cancels it, so no transport ever has to survive a cancelled receive here.
                if receiving is None:
                    receiving = asyncio.ensure_future(transport.receive())
                if self.wake.done():
                    self.wake = loop.create_future()
                timeout = max(0.0, quiet_since + self.tick_interval - loop.time())
                await asyncio.wait(
                    (receiving, self.wake), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if receiving.done():
                    task, receiving = receiving, None
                    if task.exception() is None:
                        quiet_since = loop.time()
                    stop = self.received(task)
                    if stop is not None:
                        return _stop_reason(stop), stop
                elif not self.wake.done() and loop.time() >= quiet_since + self.tick_interval:
                    self.ticks += 1
                    session.tick()
                    quiet_since = loop.time()
        finally:
            if receiving is not None:
                await _cancel(receiving)

    def stats(self, reason: StopReason, error: TransportError | None) -> SessionStats:
        session = self.session
        return SessionStats(
            reason=reason,
            error=error,
            close_reason=session.close_reason,
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            ticks=self.ticks,
            protocol_errors=self.protocol_errors,
            envelopes_sent=session.envelopes_sent,
            envelopes_received=session.envelopes_received,
        )


async def _cancel(task: asyncio.Task[bytes]) -> None:
    """Cancel a pending receive and wait until it is over, whatever its end."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # it finished first: mark its error retrieved, nobody else will look


def _stop_reason(error: TransportError) -> StopReason:
    if isinstance(error, TransportClosedError):
        return StopReason.TRANSPORT_CLOSED
    return StopReason.TRANSPORT_BROKEN


async def _handshake_deadline(
    session: SyncSession, timeout: float, sleep: Callable[[float], Awaitable[object]]
) -> None:
    await sleep(timeout)
    if not session.authenticated:
        # Queues the close (which wakes the driver to send it) and ends the run.
        session.close(f"handshake not completed within {timeout:g} s")


async def run_session(
    session: SyncSession,
    transport: Transport,
    *,
    tick_interval: float = DEFAULT_TICK_INTERVAL,
    max_protocol_errors: int | None = DEFAULT_MAX_PROTOCOL_ERRORS,
    handshake_timeout: float | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> SessionStats:
    """Pump ``session`` over ``transport`` until either ends; see the module documentation.

    Args:
        session: A session that is not closed yet (a new one is started here).
        transport: A connected transport to the session's peer; left open or closed as it is.
        tick_interval: Seconds without a frame from the peer after which the session ticks.
        max_protocol_errors: Refused frames after which the session is closed; ``None`` never.
        handshake_timeout: Seconds the peer has, from the start, to authenticate
            (:attr:`SyncSession.authenticated`); then the session is closed with a reason
            saying so. ``None`` waits for ever.
        sleep: Waits the given seconds, for the handshake deadline; tests pass a fake.

    Returns:
        What happened. The session is closed when this returns, and also when it raises or is
        cancelled.

    Raises:
        FrameTooLargeError: if a frame the session made is larger than the transport accepts
            (``batch_size`` too large for ``max_frame``).
        ValueError: if ``tick_interval`` or ``handshake_timeout`` is not positive.
    """
    if not tick_interval > 0:
        raise ValueError(f"tick_interval must be > 0, got {tick_interval!r}")
    if handshake_timeout is not None and not handshake_timeout > 0:
        raise ValueError(f"handshake_timeout must be None or > 0, got {handshake_timeout!r}")
    driver = _Driver(session, transport, tick_interval, max_protocol_errors)
    previous = session.on_output

    def on_output() -> None:
        driver.on_output()
        if previous is not None:
            previous()

    session.on_output = on_output
    deadline = None
    if handshake_timeout is not None and not session.authenticated:
        deadline = asyncio.ensure_future(_handshake_deadline(session, handshake_timeout, sleep))
    stopped: tuple[StopReason, TransportError | None] | None = None
    try:
        stopped = await driver.run()
    finally:
        if deadline is not None:
            deadline.cancel()
        session.on_output = previous
        if session.state is not SessionState.CLOSED:
            why = "driver stopped" if stopped is None else f"{stopped[0].value}: {stopped[1]}"
            session.close(why)
            # That close has nowhere to go: the transport is gone or no longer ours to use.
            session.data_to_send()
    return driver.stats(*stopped)
