"""Asyncio TCP transport: length-prefixed frames over a stream, optionally inside TLS.

Wire format: every frame is a 4-byte big-endian unsigned length, then exactly that many bytes.
An empty frame is a bare zero header and arrives as ``b""`` like any other frame: the end of the
connection is always an exception, never an empty read.

The receive side is the trust boundary. It reads the header alone, compares the announced length
with ``max_frame`` and only then reads the body, so a peer that announces two gigabytes costs four
bytes of memory and gets :class:`~souverix_crdt.errors.FrameTooLargeError` at once, not after the
body. A peer that lies about sizes is not worth talking to: the connection is aborted and every
later call raises :class:`~souverix_crdt.errors.TransportBrokenError`.

Errors follow the :class:`~souverix_crdt.transports.base.Transport` contract:

* after our own :meth:`TcpTransport.close`, our ``send`` and ``receive`` raise
  :class:`~souverix_crdt.errors.TransportClosedError` (a pending ``receive`` wakes up with it);
* end of stream, a reset, a TLS failure, a frame cut short or a read timeout raise
  :class:`~souverix_crdt.errors.TransportBrokenError`, whose ``reason`` says which
  (``"eof"``, ``"truncated"``, ``"reset"``, ``"timeout"``, ``"frame-too-large"``).

Three ways in::

    transport = await connect("127.0.0.1", port, peer="region-a", ssl=client_context)

    server = await TcpServer.start("127.0.0.1", 0, handler=serve_one_peer, ssl=server_context)
    ...
    await server.close()

    transport = await connect_with_backoff(host, port, backoff=Backoff(initial=0.2))

Each server connection runs its handler in its own task; whatever the handler raises is logged
and counted there, and the connection is closed when the handler returns, so one hostile client
never disturbs the others.

A server sheds load by the budgets of a :class:`~souverix_crdt.limits.Limits` value: at most
``max_connections`` connections at once and ``max_connections_per_address`` from one remote
address. A connection over either cap is reset as soon as it is accepted, before its TLS
handshake and before a byte of it is read, and counted in :attr:`TcpServer.refused`; the
connections already held are never evicted for it. Refusals are logged at most once per
``log_interval`` (a flood costs one line, with its count). A connection that sends no whole
frame for ``idle_timeout`` seconds is aborted (its receive raises ``TransportBrokenError``
with reason ``"timeout"``), and one that does not finish its TLS handshake within
``handshake_timeout`` seconds is dropped. The *session* handshake deadline belongs to whoever
runs the session over the connection (:func:`~souverix_crdt.sync.driver.run_session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from ssl import SSLContext, SSLError
from typing import Final

from souverix_crdt.errors import (
    FrameTooLargeError,
    TransportBrokenError,
    TransportClosedError,
    TransportError,
)
from souverix_crdt.limits import DEFAULT_LIMITS, Limits
from souverix_crdt.plane.backoff import Backoff, RandomSource

from .base import DEFAULT_MAX_FRAME, Transport
from .tls import certificate_plane_name

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_LOG_INTERVAL",
    "HEADER_SIZE",
    "MAX_FRAME_LIMIT",
    "Handler",
    "TcpServer",
    "TcpTransport",
    "ThrottledReport",
    "connect",
    "connect_with_backoff",
]

logger = logging.getLogger(__name__)

#: Bytes of the length prefix in front of every frame.
HEADER_SIZE: Final = 4
#: The largest ``max_frame`` a 4-byte header can express.
MAX_FRAME_LIMIT: Final = 2 ** (8 * HEADER_SIZE) - 1
#: Seconds :func:`connect` waits for the connection (and the TLS handshake) by default.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: Seconds a server waits for a client's TLS handshake by default (the limits' own default).
DEFAULT_HANDSHAKE_TIMEOUT: Final = DEFAULT_LIMITS.handshake_timeout
#: Seconds between two log lines about refused connections, at most.
DEFAULT_LOG_INTERVAL: Final = 10.0
#: Seconds :meth:`TcpTransport.close` waits for a graceful close before aborting.
DEFAULT_CLOSE_TIMEOUT: Final = 5.0
#: The retry schedule :func:`connect_with_backoff` uses unless told otherwise.
DEFAULT_BACKOFF: Final = Backoff()

# The stream buffer's flow-control mark: the kernel is asked to hold further data once this much
# is buffered and unread. Frames larger than it still arrive (readexactly resumes reading).
_STREAM_LIMIT: Final = 256 * 1024
# asyncio's own default listen backlog, kept as the least one.
_MIN_BACKLOG: Final = 100
# Frames up to this size leave in one write together with their header (one segment instead of
# two under TCP_NODELAY); larger ones are written separately so the body is never copied.
_COALESCE_LIMIT: Final = 64 * 1024

#: What a :class:`TcpServer` runs for each connection.
Handler = Callable[["TcpTransport"], Awaitable[object]]


def _check_options(max_frame: int, read_timeout: float | None) -> None:
    if not 0 <= max_frame <= MAX_FRAME_LIMIT:
        raise ValueError(f"max_frame must be in [0, {MAX_FRAME_LIMIT}], got {max_frame!r}")
    if read_timeout is not None and not read_timeout > 0:
        raise ValueError(f"read_timeout must be None or > 0, got {read_timeout!r}")


def _address(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "?")


def _host(writer: asyncio.StreamWriter) -> str:
    """The remote address without its port: what the per-address cap counts."""
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address or "?")


class ThrottledReport:
    """Counts events and reports them at most once per ``interval`` seconds.

    The first event is reported at once. Later ones within the interval are counted and
    reported together when it ends (by a timer on the running event loop, or by
    :meth:`flush`), so a flood costs one line per interval instead of one per event, and no
    event goes uncounted.

    Args:
        emit: Called with the number of events in the report and the latest one's detail.
        interval: Least seconds between two reports.
        clock: Seconds on a monotonic clock (injected in tests).
    """

    def __init__(
        self,
        emit: Callable[[int, str], None],
        *,
        interval: float = DEFAULT_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval >= 0:
            raise ValueError(f"interval must be >= 0, got {interval!r}")
        self._emit = emit
        self.interval = interval
        self._clock = clock
        self._count = 0
        self._latest = ""
        self._next: float | None = None  # when the next report may go out
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> int:
        """Events counted but not reported yet."""
        return self._count

    def add(self, detail: str) -> None:
        """Count one event; report now if the interval allows, else soon."""
        self._count += 1
        self._latest = detail
        now = self._clock()
        if self._next is None or now >= self._next:
            self.flush()
            return
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next add reports it
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._next - now, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Report the events counted so far, if any, and start a new interval."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._count == 0:
            return
        count, self._count = self._count, 0
        self._next = self._clock() + self.interval
        self._emit(count, self._latest)


class TcpTransport(Transport):
    """One end of a TCP (or TLS) connection, carrying length-prefixed frames.

    Make one with :func:`connect` or receive one from a :class:`TcpServer`; wrapping a
    ``(reader, writer)`` pair directly also works. One task may receive at a time and any number
    may send (a frame is written in one piece, so concurrent frames never interleave).

    Args:
        reader: The connection's stream reader.
        writer: The connection's stream writer.
        peer: A name for the peer; defaults to its ``host:port``.
        max_frame: The largest frame sent or accepted, in bytes (at most ``2**32 - 1``).
        read_timeout: Most seconds one :meth:`receive` waits for a whole frame before the
            connection counts as broken; ``None`` waits for ever. It must exceed the time the
            slowest expected link takes to carry ``max_frame`` bytes.
        close_timeout: Most seconds :meth:`close` waits for a graceful close (the TLS
            close_notify exchange) before aborting the connection.

    Attributes:
        peer: The peer's name.
        max_frame: The frame limit, in bytes.
        read_timeout: The per-receive timeout, in seconds, or ``None``.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: str = "",
        max_frame: int = DEFAULT_MAX_FRAME,
        read_timeout: float | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        _check_options(max_frame, read_timeout)
        self.peer = peer or _address(writer)
        self.max_frame = max_frame
        self.read_timeout = read_timeout
        self.close_timeout = close_timeout
        self._reader = reader
        self._writer = writer
        self._closed = False
        self._broken: tuple[str, str] | None = None  # (reason, message) once the peer broke it
        # The length of a frame whose header was read but whose body was not: a receive
        # cancelled between the two reads leaves it here, and the next receive reads the body,
        # so cancelling a receive never loses (or misframes) anything.
        self._pending_size: int | None = None
        # Read once, now that the handshake is done: asyncio's TLS transport forgets its
        # connection details once closed.
        self._tls = writer.get_extra_info("ssl_object") is not None
        self._certificate_name = certificate_plane_name(writer.get_extra_info("peercert"))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return f"<TcpTransport to {self.peer} {state}{' tls' if self.tls else ''}>"

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        """True once this side closed or the connection broke."""
        return self._closed or self._broken is not None

    @property
    def tls(self) -> bool:
        """Whether the connection runs inside TLS."""
        return self._tls

    @property
    def peer_certificate_name(self) -> str | None:
        """The plane named by the peer's verified TLS certificate, or ``None``.

        ``None`` without TLS, when the peer presented no certificate (a server without mutual
        TLS asks for none), or when its certificate names no plane (see
        :func:`~souverix_crdt.transports.tls.certificate_plane_name`).
        """
        return self._certificate_name

    def _broken_error(self) -> TransportBrokenError:
        assert self._broken is not None
        reason, message = self._broken
        return TransportBrokenError(f"connection to {self.peer}: {message}", reason=reason)

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()
        if self._broken is not None:
            raise self._broken_error()

    def _break(self, reason: str, message: str, *, abort: bool = False) -> TransportError:
        """Record that the peer or the network broke the connection; return the error to raise.

        ``abort`` resets the connection at once, dropping anything unsent: for peers that
        misbehave or stopped answering, where a graceful close would only wait on them.
        """
        if self._closed:
            return self._closed_error()
        if self._broken is None:
            self._broken = (reason, message)
            if abort:
                self._writer.transport.abort()
            else:
                self._writer.close()
        return self._broken_error()

    def _closed_error(self) -> TransportClosedError:
        return TransportClosedError(f"connection to {self.peer} was closed")

    # ------------------------------------------------------------------ Transport

    async def send(self, frame: bytes) -> None:
        """Send one frame (empty frames too); returns once the kernel took it or buffers allow.

        Raises:
            TransportClosedError: if this side closed the transport.
            TransportBrokenError: if the connection was lost.
            FrameTooLargeError: if the frame is longer than ``max_frame``; nothing is sent and
                the transport stays usable.
            TypeError: if ``frame`` is not bytes-like.
        """
        self._check_open()
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise TypeError(f"frames are bytes, not {type(frame).__name__}")
        # Measure before copying: an oversized frame is refused without allocating a copy.
        size = memoryview(frame).nbytes
        if size > self.max_frame:
            raise FrameTooLargeError(size=size, limit=self.max_frame)
        data = frame if isinstance(frame, bytes) else bytes(frame)
        writer = self._writer
        if writer.transport.is_closing():
            # Lost under us (a reset seen by the event loop) before any receive noticed; writing
            # now would only be dropped by asyncio with a log line.
            raise self._break("reset", "connection lost")
        header = size.to_bytes(HEADER_SIZE, "big")
        if size <= _COALESCE_LIMIT:
            writer.write(header + data)
        else:
            writer.write(header)
            writer.write(data)
        try:
            await writer.drain()
        except OSError as exc:  # reset, broken pipe, TLS failure (SSLError is an OSError)
            if self._closed:
                raise self._closed_error() from None
            raise self._break("reset", f"send failed: {exc!r}") from exc

    async def receive(self) -> bytes:
        """Wait for the next whole frame.

        Raises:
            TransportClosedError: if this side closed the transport (also wakes a pending call).
            TransportBrokenError: at end of stream, a reset, a frame cut short, or when no whole
                frame came within ``read_timeout``; the connection is then closed.
            FrameTooLargeError: if the peer announced a frame over ``max_frame``; raised as soon
                as the header arrives, before the body is read. The connection is aborted, and
                later calls raise ``TransportBrokenError``.
        """
        self._check_open()
        timer = asyncio.timeout(self.read_timeout)
        try:
            async with timer:
                return await self._read_frame()
        except asyncio.IncompleteReadError as exc:
            if self._closed:
                raise self._closed_error() from None
            if exc.partial or self._pending_size is not None:
                raise self._break("truncated", "peer closed in the middle of a frame") from exc
            raise self._break("eof", "peer closed the connection") from exc
        except FrameTooLargeError:
            raise
        except TimeoutError as exc:
            if self._closed:
                raise self._closed_error() from None
            if timer.expired():
                message = f"no frame within read_timeout={self.read_timeout} s"
                raise self._break("timeout", message, abort=True) from exc
            raise self._break("reset", f"receive failed: {exc!r}") from exc
        except OSError as exc:  # includes our own close's wake-up, a TransportClosedError
            if self._closed:
                raise self._closed_error() from None
            raise self._break("reset", f"receive failed: {exc!r}") from exc

    async def _read_frame(self) -> bytes:
        reader = self._reader
        if self._pending_size is None:
            header = await reader.readexactly(HEADER_SIZE)
            size = int.from_bytes(header, "big")
            if size > self.max_frame:
                self._break("frame-too-large", f"peer announced a {size}-byte frame", abort=True)
                raise FrameTooLargeError(size=size, limit=self.max_frame)
            self._pending_size = size
        frame = await reader.readexactly(self._pending_size)
        self._pending_size = None
        return frame

    async def close(self) -> None:
        """Close this side; idempotent.

        Frames already sent are flushed first (TCP FIN, or TLS close_notify): the peer receives
        them, then ``TransportBrokenError``. A graceful close that takes longer than
        ``close_timeout`` is cut short by aborting the connection.
        """
        if self._closed:
            return
        self._closed = True
        # Wake a pending receive now: it raises this, and maps it to TransportClosedError.
        self._reader.set_exception(self._closed_error())
        writer = self._writer
        writer.close()
        try:
            async with asyncio.timeout(self.close_timeout):
                await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()
        except OSError:
            pass  # the connection ended badly while closing: it is closed all the same


async def connect(
    host: str,
    port: int,
    *,
    peer: str = "",
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    read_timeout: float | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> TcpTransport:
    """Open a connection to ``host:port`` (TLS when ``ssl`` is given).

    Args:
        host: The server's address or name.
        port: The server's port.
        peer: A name for the peer; defaults to ``host:port``.
        ssl: A client TLS context; ``None`` for plain TCP.
        server_hostname: The name the server's certificate must carry; defaults to ``host``.
        max_frame: See :class:`TcpTransport`.
        read_timeout: See :class:`TcpTransport`.
        connect_timeout: Most seconds for the connection and the TLS handshake; ``None`` waits
            for ever.
        close_timeout: See :class:`TcpTransport`.

    Raises:
        TransportBrokenError: if the connection could not be made; ``reason`` is
            ``"connect-refused"``, ``"connect-timeout"``, ``"connect-failed"`` or ``"tls"`` (a
            handshake or certificate failure, which retrying will not fix).
        ValueError: for an invalid ``max_frame`` or ``read_timeout``.
    """
    _check_options(max_frame, read_timeout)
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=ssl,
                server_hostname=(server_hostname or host) if ssl is not None else None,
                limit=_STREAM_LIMIT,
            )
    except TimeoutError as exc:
        raise TransportBrokenError(
            f"connecting to {where} timed out", reason="connect-timeout"
        ) from exc
    except SSLError as exc:
        raise TransportBrokenError(f"TLS with {where} failed: {exc}", reason="tls") from exc
    except ConnectionRefusedError as exc:
        raise TransportBrokenError(
            f"{where} refused the connection", reason="connect-refused"
        ) from exc
    except OSError as exc:
        raise TransportBrokenError(
            f"connecting to {where} failed: {exc}", reason="connect-failed"
        ) from exc
    return TcpTransport(
        reader,
        writer,
        peer=peer or where,
        max_frame=max_frame,
        read_timeout=read_timeout,
        close_timeout=close_timeout,
    )


async def connect_with_backoff(
    host: str,
    port: int,
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    max_attempts: int | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: RandomSource | None = None,
    peer: str = "",
    ssl: SSLContext | None = None,
    server_hostname: str | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    read_timeout: float | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
) -> TcpTransport:
    """:func:`connect`, retried with exponential backoff and jitter until it succeeds.

    Before retry ``n`` (0 for the first) it awaits ``sleep(backoff.delay(n, rng))``. A TLS
    failure is not retried: a certificate that does not verify will not verify next time either.

    Args:
        host: The server's address or name.
        port: The server's port.
        backoff: The retry schedule.
        max_attempts: Most connection attempts in all (the first included); ``None`` tries for
            ever (until cancelled).
        sleep: Waits the given seconds; tests pass a fake that records and returns at once.
        rng: The jitter source; defaults to the system's.
        peer: See :func:`connect`.
        ssl: See :func:`connect`.
        server_hostname: See :func:`connect`.
        max_frame: See :func:`connect`.
        read_timeout: See :func:`connect`.
        connect_timeout: See :func:`connect`; applies to each attempt.
        close_timeout: See :func:`connect`.

    Raises:
        TransportBrokenError: the last attempt's error once ``max_attempts`` are spent, or a
            TLS failure at once.
        ValueError: if ``max_attempts`` is below 1, or for options :func:`connect` refuses.
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be None or >= 1, got {max_attempts!r}")
    # Jitter needs no reproducibility outside tests (which inject their own source).
    source: RandomSource = random.SystemRandom() if rng is None else rng
    attempt = 0
    while True:
        try:
            return await connect(
                host,
                port,
                peer=peer,
                ssl=ssl,
                server_hostname=server_hostname,
                max_frame=max_frame,
                read_timeout=read_timeout,
                connect_timeout=connect_timeout,
                close_timeout=close_timeout,
            )
        except TransportBrokenError as exc:
            if exc.reason == "tls" or (max_attempts is not None and attempt + 1 >= max_attempts):
                raise
            delay = backoff.delay(attempt, source)
            logger.debug(
                "connecting to %s:%s failed (%s); retry %d in %.3f s",
                host,
                port,
                exc,
                attempt,
                delay,
            )
        await sleep(delay)
        attempt += 1


class TcpServer:
    """Accepts connections and runs a handler for each, in its own task, within its limits.

    Start one with :meth:`start`. Every accepted connection becomes a :class:`TcpTransport`
    passed to ``handler``; when the handler returns (or raises, or the server closes) the
    connection is closed. What a handler raises is logged and counted in :attr:`failures`, never
    propagated: one bad client cannot reach another's connection or the server.

    A connection over ``limits.max_connections`` in all, or over
    ``limits.max_connections_per_address`` from its remote address, is reset at once (before its
    TLS handshake, before anything of it is read), counted in :attr:`refused` and logged at most
    once per ``log_interval``; established connections are never evicted for a newcomer.

    Attributes:
        limits: The budgets the server applies (``max_connections``,
            ``max_connections_per_address``; ``idle_timeout``, ``handshake_timeout`` and
            ``max_frame`` unless overridden when it started).
        accepted: Connections accepted so far (refused ones not included).
        refused: Connections reset at once because a connection cap was reached.
        refused_per_address: Of those, the ones refused by the per-address cap.
        failures: Handlers that ended with an exception (cancellation by :meth:`close` aside).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_frame: int | None = None,
        read_timeout: float | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
        ssl: SSLContext | None = None,
        handshake_timeout: float | None = None,
        log_interval: float = DEFAULT_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._handler = handler
        self._max_frame = limits.max_frame if max_frame is None else max_frame
        self._read_timeout = limits.idle_timeout if read_timeout is None else read_timeout
        _check_options(self._max_frame, self._read_timeout)
        self._close_timeout = close_timeout
        self._ssl = ssl
        self._tls_timeout = (
            limits.handshake_timeout if handshake_timeout is None else handshake_timeout
        )
        self._server: asyncio.Server | None = None
        self._port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_address: dict[str, int] = {}
        self._closing = False
        self.accepted = 0
        self.refused = 0
        self.refused_per_address = 0
        self.failures = 0
        self._refusals = ThrottledReport(self._log_refusals, interval=log_interval, clock=clock)

    @classmethod
    async def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        handler: Handler,
        ssl: SSLContext | None = None,
        sock: socket.socket | None = None,
        limits: Limits = DEFAULT_LIMITS,
        max_frame: int | None = None,
        read_timeout: float | None = None,
        handshake_timeout: float | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        log_interval: float = DEFAULT_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> TcpServer:
        """Listen on ``host:port`` (``port=0`` picks a free port; see :attr:`port`).

        Args:
            host: The address to listen on; loopback by default.
            port: The port; 0 for an ephemeral one.
            handler: Awaited with each connection's transport.
            ssl: A server TLS context; ``None`` for plain TCP.
            sock: An already bound socket to listen on instead of ``host`` and ``port``
                (socket activation, or a port reserved in advance).
            limits: The connection caps and, unless the next arguments override them, the
                frame size, idle timeout and TLS handshake timeout.
            max_frame: See :class:`TcpTransport`; default ``limits.max_frame``.
            read_timeout: Seconds a connection may go without sending a whole frame before it
                is aborted (see :class:`TcpTransport`); default ``limits.idle_timeout``.
            handshake_timeout: Most seconds a client has to finish the TLS handshake; default
                ``limits.handshake_timeout``.
            close_timeout: See :class:`TcpTransport`.
            log_interval: Least seconds between two log lines about refused connections.
            clock: The monotonic clock those log lines are spaced by (injected in tests).

        Raises:
            OSError: if the address cannot be bound.
            ValueError: for an invalid ``max_frame`` or ``read_timeout``.
        """
        server = cls(
            handler,
            max_frame=max_frame,
            read_timeout=read_timeout,
            close_timeout=close_timeout,
            limits=limits,
            ssl=ssl,
            handshake_timeout=handshake_timeout,
            log_interval=log_interval,
            clock=clock,
        )
        # TLS is started per connection once it is admitted (see _serve), not by asyncio at
        # accept time: a connection over the cap is then refused before it costs a handshake,
        # and one that is still handshaking counts against the cap.
        # A backlog as deep as the cap: a burst of connections reaches the cap's judgement (and
        # is refused or timed out there) instead of stalling unaccepted in the kernel, where an
        # honest newcomer would stall behind it. The kernel clamps it (somaxconn).
        backlog = max(_MIN_BACKLOG, limits.max_connections)
        if sock is not None:
            server._server = await asyncio.start_server(
                server._accept, sock=sock, limit=_STREAM_LIMIT, backlog=backlog
            )
        else:
            server._server = await asyncio.start_server(
                server._accept, host, port, limit=_STREAM_LIMIT, backlog=backlog
            )
        # Kept, not looked up: a closed asyncio server no longer lists its sockets.
        server._port = server._server.sockets[0].getsockname()[1]
        return server

    def __repr__(self) -> str:
        return f"<TcpServer port={self.port} connections={self.connections}>"

    async def __aenter__(self) -> TcpServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The port the server listens (or listened) on."""
        return self._port

    @property
    def connections(self) -> int:
        """Connections held: being handshaken or served."""
        return len(self._tasks)

    def connections_from(self, address: str) -> int:
        """Connections held from one remote address (without its port)."""
        return self._per_address.get(address, 0)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:  # accepted while closing: nobody will serve it
            writer.transport.abort()
            return
        host = _host(writer)
        limits = self.limits
        held = self._per_address.get(host, 0)
        if len(self._tasks) >= limits.max_connections:
            self._refuse(writer, f"max_connections={limits.max_connections} reached")
            return
        if held >= limits.max_connections_per_address:
            self.refused_per_address += 1
            self._refuse(
                writer,
                f"max_connections_per_address={limits.max_connections_per_address} "
                f"reached by {host}",
            )
            return
        self._per_address[host] = held + 1
        self.accepted += 1
        task = asyncio.get_running_loop().create_task(
            self._serve(reader, writer), name=f"souverix-tcp {_address(writer)}"
        )
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._release(done, host))

    def _refuse(self, writer: asyncio.StreamWriter, why: str) -> None:
        # A reset, not a graceful close: nothing is owed to a connection over the cap, and
        # its descriptor is freed at once.
        self.refused += 1
        self._refusals.add(f"latest from {_address(writer)}: {why}")
        writer.transport.abort()

    def _log_refusals(self, count: int, latest: str) -> None:
        logger.warning(
            "refused %d connection%s over the connection cap (%s); %d refused in all",
            count,
            "" if count == 1 else "s",
            latest,
            self.refused,
        )

    def _release(self, task: asyncio.Task[None], host: str) -> None:
        self._tasks.discard(task)
        left = self._per_address.get(host, 0) - 1
        if left > 0:
            self._per_address[host] = left
        else:
            self._per_address.pop(host, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._ssl is not None:
            # Nothing may be awaited before this: the client's first TLS bytes must reach the
            # TLS layer, not the plain stream buffer.
            try:
                await writer.start_tls(self._ssl, ssl_handshake_timeout=self._tls_timeout)
            except (OSError, TimeoutError, EOFError) as exc:  # SSLError is an OSError
                logger.info("TLS handshake with %s failed: %s", _address(writer), exc)
                writer.transport.abort()
                return
            except BaseException:
                writer.transport.abort()
                raise
        transport = TcpTransport(
            reader,
            writer,
            max_frame=self._max_frame,
            read_timeout=self._read_timeout,
            close_timeout=self._close_timeout,
        )
        try:
            await self._handler(transport)
        except FrameTooLargeError as exc:
            self.failures += 1
            logger.warning("dropped %s: %s", transport.peer, exc)
        except TransportError as exc:
            self.failures += 1
            logger.info("connection from %s ended: %s", transport.peer, exc)
        except Exception:
            self.failures += 1
            logger.exception("handler for %s failed", transport.peer)
        finally:
            await transport.close()

    async def close(self) -> None:
        """Stop listening, cancel every running handler and close its connection; idempotent."""
        if self._closing:
            return
        self._closing = True
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._server.wait_closed()
        self._refusals.flush()
