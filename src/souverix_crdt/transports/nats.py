"""NATS: live sync sessions over core NATS, durable store-and-forward over JetStream.

The production path when a fleet outgrows one machine (DESIGN.md §5): regions run NATS servers,
edge zones run **leaf nodes** of them, and every replica holds one NATS connection to its nearest
server. Two ways to move frames share one subject layout per fleet:

* :class:`NatsTransport` — a :class:`~.base.Transport` between two replicas for a live
  :class:`~souverix_crdt.sync.session.SyncSession`. Core NATS, so frames move only while both
  ends are reachable: across a cut leaf link they are dropped silently (and the session repairs
  that when its ``tick`` re-sends its hello). It is ordered and, while connected, reliable.
* :class:`NatsOutbox`, :class:`NatsRelay`, :class:`NatsEnvelopeLog` and :class:`NatsInbox` —
  durable store-and-forward of envelope frames. An edge publishes each envelope into an
  **outbox stream on its leaf node** (its own JetStream domain), which acknowledges it locally
  even while the leaf is cut off from the hub. A **relay** run by the library drains the outbox
  through a durable pull consumer, publishes every frame into the **envelope log** on the hub
  with a ``Nats-Msg-Id`` header so the hub drops repeats, and acknowledges the outbox message
  only after the hub acknowledged the publish: a relay that dies in between publishes the frame
  again and the hub dedupes it. Replicas read the log through an **inbox** — a durable pull
  consumer filtered to the scopes they are interested in — and feed the frames to
  :meth:`~souverix_crdt.replica.Replica.ingest_many`; the inbox acknowledges a batch only after
  the handler returned, so what the replica did not durably ingest is delivered again.

  JetStream stream sourcing or mirroring across the leaf link would also work with no code, but
  after a server restart it caught up only after tens of seconds of its retry backoff; the
  library relay caught up in milliseconds (``notes/nats.md``). Sourcing stays a deployment
  option; the relay is the default.

Subjects (every token NATS-safe, see :func:`subject_token`; ``<scope>`` is the scope path with
``/`` turned into ``.``, so wildcards follow the authority tree)::

    souverix.<fleet>.sync.<from>.<to>          session frames, one direction of one pair
    souverix.<fleet>.outbox.<origin>.<scope>   an edge's envelopes, in its leaf's outbox stream
    souverix.<fleet>.env.<scope>               the envelope log, in the hub's stream

Outbox subjects carry their ``origin`` because stream interest crosses leaf links: two leaves
whose outbox streams captured the same subjects would each store (and acknowledge) the other's
frames.

Frames are opaque bytes to everything here. Envelopes are deduplicated by the SHA-256 of their
bytes (the default ``Nats-Msg-Id``): an envelope is signed and carries its own sequence number,
so equal bytes are the same envelope. Deduplication lasts the stream's ``duplicate_window``;
a repeat after that is stored again and is harmless, because ingest is idempotent.

Errors: every ``nats`` error is translated at this boundary (``raise … from exc``) into
:class:`~souverix_crdt.errors.TransportError` or one of its subclasses, with a ``reason`` of
``"unreachable"`` (no responder: a cut leaf link, a stopped server), ``"timeout"``,
``"connection-closed"``, ``"rejected"`` (the server refused: a full stream, a wrong config) or
``"slow-consumer"``.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Self

import attrs
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from souverix_crdt.errors import (
    FrameTooLargeError,
    TransportBrokenError,
    TransportClosedError,
    TransportError,
)
from souverix_crdt.scope import Scope

from .base import DEFAULT_MAX_FRAME, Transport

__all__ = [
    "CONTROL_HEADER",
    "DEFAULT_ACK_WAIT",
    "DEFAULT_DUPLICATE_WINDOW",
    "DEFAULT_MAX_PENDING_BYTES",
    "HEADER_RESERVE",
    "MSG_ID_HEADER",
    "SUBJECT_ROOT",
    "NatsEnvelopeLog",
    "NatsEnvelopeStream",
    "NatsInbox",
    "NatsOutbox",
    "NatsRelay",
    "NatsTransport",
    "Published",
    "RelayStats",
    "RelayedFrame",
    "StreamState",
    "Subjects",
    "flush_through",
    "frame_id",
    "subject_token",
]

#: The first token of every subject the library uses.
SUBJECT_ROOT: Final = "souverix"
#: JetStream's deduplication header.
MSG_ID_HEADER: Final = "Nats-Msg-Id"
#: Marks a session control message (only ``close`` exists); data frames carry no headers.
CONTROL_HEADER: Final = "Souverix-Control"
_CLOSE: Final = "close"

#: Room left under the server's ``max_payload`` for the headers of a JetStream publish
#: (``Nats-Msg-Id`` with a 64-character id and ``Nats-Expected-Stream``: about 150 bytes).
HEADER_RESERVE: Final = 1024
#: Frames a session transport holds unread before it declares itself a slow consumer.
DEFAULT_MAX_PENDING_BYTES: Final = 64 * 1024 * 1024
#: How long the hub remembers message ids (seconds): longer than any relay restart should take.
DEFAULT_DUPLICATE_WINDOW: Final = 600.0
#: How long an outbox message may stay unacknowledged before JetStream redelivers it (seconds).
DEFAULT_ACK_WAIT: Final = 30.0

# Characters kept as they are in a subject token. Everything else, ``%`` included, is escaped as
# ``%XX`` (UTF-8 bytes), which keeps the mapping injective and free of ``.``, ``*``, ``>`` and
# whitespace, the characters NATS gives meaning to.
_SAFE_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_SAFE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def subject_token(text: str) -> str:
    """``text`` as one NATS subject token (also valid as a stream or consumer name).

    Letters, digits, ``_`` and ``-`` stay as they are; every other character becomes ``%XX``
    per UTF-8 byte, so distinct inputs never share a token and no input can add a subject level
    or a wildcard.

    Raises:
        ValueError: if ``text`` is empty (a subject token never is).
    """
    if not text:
        raise ValueError("a subject token cannot be empty")
    if _SAFE_TOKEN.fullmatch(text):
        return text
    return "".join(
        char if char in _SAFE_CHARS else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in text
    )


def frame_id(frame: bytes) -> str:
    """The default ``Nats-Msg-Id`` of a frame: the SHA-256 of its bytes, in hex."""
    return hashlib.sha256(frame).hexdigest()


@attrs.frozen
class Subjects:
    """The subject and stream names of one fleet.

    Attributes:
        fleet: The fleet id (escaped in subjects).
        root: The first subject token (one NATS account may host several installations).
    """

    fleet: str
    root: str = SUBJECT_ROOT

    @property
    def prefix(self) -> str:
        """``<root>.<fleet>``."""
        return f"{subject_token(self.root)}.{subject_token(self.fleet)}"

    @staticmethod
    def scope_path(scope: Scope | str) -> str:
        """A scope as subject tokens: ``global/region-a`` → ``global.region-a``.

        Scope segments are lower-case DNS labels, already NATS-safe, so ``/`` → ``.`` is enough
        and keeps wildcards aligned with the authority tree.
        """
        return ".".join(Scope.parse(scope).segments)

    def sync(self, sender: str, receiver: str) -> str:
        """Session frames from ``sender`` to ``receiver`` (replica names)."""
        return f"{self.prefix}.sync.{subject_token(sender)}.{subject_token(receiver)}"

    def outbox(self, origin: str, scope: Scope | str) -> str:
        """An envelope of ``scope`` in the outbox of ``origin`` (an edge or a leaf)."""
        return f"{self.outbox_prefix(origin)}.{self.scope_path(scope)}"

    def outbox_prefix(self, origin: str) -> str:
        """Every outbox subject of ``origin`` starts with this, then ``.``."""
        return f"{self.prefix}.outbox.{subject_token(origin)}"

    def envelopes(self, scope: Scope | str) -> str:
        """An envelope of ``scope`` in the envelope log."""
        return f"{self.prefix}.env.{self.scope_path(scope)}"

    def all_envelopes(self) -> str:
        """The wildcard that covers the whole envelope log."""
        return f"{self.prefix}.env.>"

    def interest(self, scope: Scope | str) -> tuple[str, ...]:
        """Log subjects a replica of ``scope`` reads: its ancestors and its own subtree.

        The same rule as the sync session's interest (DESIGN.md §5): a zone never receives a
        sibling zone's envelopes. Each receiver still verifies every envelope; subjects only
        save the bandwidth.
        """
        parsed = Scope.parse(scope)
        exact = [self.envelopes(ancestor) for ancestor in parsed.ancestors()]
        own = self.envelopes(parsed)
        return (*exact, own, f"{own}.>")

    def scope_of(self, subject: str, prefix: str) -> Scope:
        """The scope encoded after ``prefix.`` in ``subject``.

        Raises:
            InvalidScopeError: if what follows is not a canonical scope path.
            ValueError: if ``subject`` does not start with ``prefix.``.
        """
        if not subject.startswith(prefix + "."):
            raise ValueError(f"subject {subject!r} is not under {prefix!r}")
        return Scope.parse(subject[len(prefix) + 1 :].replace(".", "/"))

    def outbox_stream(self, origin: str) -> str:
        """The default name of ``origin``'s outbox stream."""
        return f"{subject_token(self.root)}-{subject_token(self.fleet)}-outbox-" + subject_token(
            origin
        )

    def log_stream(self) -> str:
        """The default name of the envelope log stream."""
        return f"{subject_token(self.root)}-{subject_token(self.fleet)}-envelopes"


# =============================================================================== errors


def _translate(exc: BaseException, what: str) -> TransportError:
    """One ``nats`` (or timeout) error as the library's transport error, with a reason."""
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError) or (
        # A bare 503 status is "no responders" (the API's server is cut off); a 503 that
        # carries a JetStream error code is a refusal ("maximum bytes exceeded").
        isinstance(exc, nats.js.errors.ServiceUnavailableError) and not exc.err_code
    ):
        return TransportError(f"{what}: no responder (unreachable): {exc!r}", reason="unreachable")
    if isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.ConnectionDrainingError):
        return TransportBrokenError(
            f"{what}: connection closed: {exc!r}", reason="connection-closed"
        )
    if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError is one too
        return TransportError(f"{what}: timed out", reason="timeout")
    if isinstance(exc, nats.js.errors.APIError):
        return TransportError(f"{what}: refused by the server: {exc}", reason="rejected")
    return TransportError(f"{what}: {exc!r}", reason="nats")


#: What the JetStream calls below may raise; everything else is a bug and propagates.
_NATS_ERRORS: Final = (nats.errors.Error, TimeoutError)  # asyncio.TimeoutError is TimeoutError


async def flush_through(connection: Client, timeout: float) -> None:
    """Return once the server has processed every command written so far on ``connection``.

    One ``flush()`` is not enough with nats-py 2.16: it writes its PING straight to the socket
    while earlier commands (a SUB, a PUB) may still sit in the client's pending buffer waiting
    for the flusher task, so the PONG can come back before they reached the server (a new
    subscription then misses the peer's first frames, about one run in a few hundred). The
    flusher was woken before the first PING went out and runs before its PONG can be read, so
    a second PING follows those commands on the wire and its PONG covers them.

    Raises:
        nats.errors.Error: as ``Client.flush`` (a timeout, a closed connection).
    """
    for _ in range(2):
        await connection.flush(timeout=timeout)  # type: ignore[arg-type]  # a float works


# =============================================================================== sessions


class NatsTransport(Transport):
    """A session transport between two replicas over one NATS connection (core NATS).

    ``send`` publishes to ``<prefix>.sync.<local>.<peer>``; ``receive`` returns frames from our
    subscription to ``<prefix>.sync.<peer>.<local>``. Each frame is one NATS message with no
    headers, so an empty frame is an empty message and the largest frame is the server's
    ``max_payload``. ``close`` sends one header-only control message so the peer sees the end
    after every frame we sent (one publisher's messages stay in order).

    Made by :meth:`open`, which subscribes and flushes, so frames a peer sends once ``open``
    returned are not lost to a subscription still on its way to the server. The connection
    belongs to the caller: several transports share one, and ``close`` leaves it open. If the
    connection closes for good, call :meth:`abort` (e.g. from the client's ``closed_cb``) so
    a waiting ``receive`` wakes up. A peer that vanishes without closing is not detected here:
    the session's timers notice the silence.

    Ordered per direction, and reliable while both ends stay connected to servers that know of
    each other's interest; across a cut leaf link, or before a new subscription's interest has
    crossed one, frames are dropped silently and the session's ``tick`` repairs the loss.

    NATS permissions make the subject a sender's identity: :mod:`~.nats_auth` grants each plane
    publish on ``<prefix>.sync.<own name>.<peer>`` and subscribe on
    ``<prefix>.sync.<peer>.<own name>`` for its linked peers only. (Envelopes are signed
    anyway; the permissions keep other planes from reading or injecting session frames.)

    Args:
        connection: A connected client (its server's ``max_payload`` bounds ``max_frame``).
        subjects: The fleet's subjects.
        local: This replica's name.
        peer: The peer replica's name.
        max_frame: The frame limit (default: the server's ``max_payload``).
        max_pending_bytes: Unread bytes held before the transport breaks as a slow consumer.
        close_timeout: Seconds :meth:`close` waits for its close message to reach the server.
    """

    def __init__(
        self,
        connection: Client,
        subjects: Subjects,
        *,
        local: str,
        peer: str,
        max_frame: int | None = None,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        close_timeout: float = 1.0,
    ) -> None:
        payload = connection.max_payload
        if max_frame is None:
            max_frame = min(DEFAULT_MAX_FRAME, payload)
        if not 0 < max_frame <= payload:
            raise ValueError(
                f"max_frame={max_frame} must be positive and fit the server's max_payload={payload}"
            )
        self.connection = connection
        self.subjects = subjects
        self.local = local
        self.peer = peer
        self.max_frame = max_frame
        self.max_pending_bytes = max_pending_bytes
        self.close_timeout = close_timeout
        self.outgoing_subject = subjects.sync(local, peer)
        self.incoming_subject = subjects.sync(peer, local)
        # Oversized frames are queued as their size: the error surfaces in order, at receive.
        self._inbox: deque[bytes | int] = deque()
        self._pending_bytes = 0
        self._ready = asyncio.Event()
        self._subscription: Subscription | None = None
        self._closed = False
        self._peer_closed = False
        self._broken: str | None = None

    @classmethod
    async def open(
        cls,
        connection: Client,
        subjects: Subjects,
        *,
        local: str,
        peer: str,
        max_frame: int | None = None,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        timeout: float = 5.0,
    ) -> Self:
        """Subscribe to the peer's frames and return the transport once the server has it.

        Args:
            connection: A connected client (its server's ``max_payload`` bounds ``max_frame``).
            subjects: The fleet's subjects.
            local: This replica's name.
            peer: The peer replica's name.
            max_frame: The frame limit (default: the server's ``max_payload``).
            max_pending_bytes: Unread bytes held before the transport breaks as a slow consumer.
            timeout: Seconds the flush after subscribing may take.

        Raises:
            TransportError: if the subscription did not reach the server.
            ValueError: if ``max_frame`` does not fit the server's ``max_payload``.
        """
        transport = cls(
            connection,
            subjects,
            local=local,
            peer=peer,
            max_frame=max_frame,
            max_pending_bytes=max_pending_bytes,
        )
        try:
            transport._subscription = await connection.subscribe(
                transport.incoming_subject, cb=transport._on_message
            )
            await flush_through(connection, timeout)
        except _NATS_ERRORS as exc:
            await transport._unsubscribe()
            raise _translate(exc, f"{local}: subscribing to {peer}") from exc
        return transport

    def __repr__(self) -> str:
        state = (
            "closed"
            if self._closed
            else f"broken ({self._broken})"
            if self._broken
            else "peer-closed"
            if self._peer_closed
            else "open"
        )
        return f"<NatsTransport {self.local}->{self.peer} {state}>"

    # ------------------------------------------------------------------ incoming

    async def _on_message(self, message: Msg) -> None:
        # nats-py awaits subscription callbacks, so this must be ``async def``; it never blocks.
        if self._closed or self._broken or self._peer_closed:
            return
        headers = message.headers
        if headers and headers.get(CONTROL_HEADER) == _CLOSE:
            self._peer_closed = True
            self._ready.set()
            return
        data = message.data
        if len(data) > self.max_frame:
            # Over our limit (the server's max_payload may be larger): refused at receive,
            # without keeping the bytes.
            self._inbox.append(len(data))
        elif self._pending_bytes + len(data) > self.max_pending_bytes:
            # Nobody reads: dropping silently would break "reliable", growing would exhaust
            # memory. Break loudly; the session starts over on a new transport.
            self._fail("slow-consumer")
        else:
            self._pending_bytes += len(data)
            self._inbox.append(bytes(data))
        self._ready.set()

    def _fail(self, reason: str) -> None:
        if self._broken is None and not self._closed:
            self._broken = reason
            self._inbox.clear()
            self._pending_bytes = 0
        self._ready.set()

    def abort(self, reason: str = "connection-closed") -> None:
        """Mark the transport broken now (the connection is gone); waiting receives wake up."""
        self._fail(reason)

    # ------------------------------------------------------------------ Transport

    @property
    def closed(self) -> bool:
        """True once we closed, the transport broke, or the peer closed and we read it all."""
        return (
            self._closed
            or self._broken is not None
            or (self._peer_closed and not self._inbox)
            or self.connection.is_closed
        )

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosedError(f"{self.local}: transport to {self.peer} was closed")
        if self._broken is None and self.connection.is_closed:
            self._broken = "connection-closed"
        if self._broken is not None:
            raise TransportBrokenError(
                f"{self.local}: transport to {self.peer} broke ({self._broken})",
                reason=self._broken,
            )

    async def send(self, frame: bytes) -> None:
        """Publish one frame to the peer (buffered by the client; see the class notes).

        Raises:
            TransportClosedError: if we closed the transport.
            TransportBrokenError: if it broke or the peer closed it.
            FrameTooLargeError: if the frame is over ``max_frame``; nothing is sent.
        """
        self._check_open()
        if self._peer_closed:
            raise TransportBrokenError(f"{self.local}: {self.peer} closed", reason="peer-closed")
        size = len(frame)
        if size > self.max_frame:
            raise FrameTooLargeError(size=size, limit=self.max_frame)
        try:
            await self.connection.publish(self.outgoing_subject, bytes(frame))
        except nats.errors.MaxPayloadError as exc:  # the server lowered max_payload
            raise FrameTooLargeError(size=size, limit=self.connection.max_payload) from exc
        except _NATS_ERRORS as exc:
            # Closed connections and full reconnect buffers lose frames: the transport is no
            # longer reliable, so it is broken for good.
            error = _translate(exc, f"{self.local}: sending to {self.peer}")
            self._fail(error.reason)
            raise TransportBrokenError(str(error), reason=error.reason) from exc

    async def receive(self) -> bytes:
        """Wait for the peer's next frame.

        Cancelling a waiting ``receive`` loses nothing: frames leave the inbox only in the call
        that returns them.

        Raises:
            TransportClosedError: if we closed the transport.
            TransportBrokenError: if it broke, or the peer closed and every frame it sent before
                was received.
            FrameTooLargeError: if the next frame was over ``max_frame``; it is discarded and the
                transport stays usable.
        """
        while True:
            self._check_open()
            if self._inbox:
                item = self._inbox.popleft()
                if isinstance(item, int):
                    raise FrameTooLargeError(size=item, limit=self.max_frame)
                self._pending_bytes -= len(item)
                return item
            if self._peer_closed:
                raise TransportBrokenError(
                    f"{self.local}: {self.peer} closed", reason="peer-closed"
                )
            self._ready.clear()
            await self._ready.wait()

    async def close(self) -> None:
        """Close our side; idempotent. The peer gets every frame sent before, then the end.

        The close message is flushed (bounded by ``close_timeout``) so that it cannot reach a
        later transport between the same two names; failures are ignored, a close never raises.
        """
        if self._closed:
            return
        tell_peer = self._broken is None and not self._peer_closed
        self._closed = True
        self._inbox.clear()
        self._pending_bytes = 0
        self._ready.set()
        await self._unsubscribe()
        if tell_peer and not self.connection.is_closed:
            try:
                await self.connection.publish(
                    self.outgoing_subject, b"", headers={CONTROL_HEADER: _CLOSE}
                )
                await flush_through(self.connection, self.close_timeout)
            except _NATS_ERRORS:
                pass  # the peer will see silence instead; its session times out

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except (*_NATS_ERRORS, ValueError):
                pass  # connection already closed: the subscription died with it


# =============================================================================== streams


@attrs.frozen
class Published:
    """A frame stored in a stream.

    Attributes:
        stream: The stream that stored it.
        seq: Its sequence number there (the original's, for a duplicate).
        duplicate: The stream already had a frame with this message id.
        domain: The JetStream domain that answered.
    """

    stream: str
    seq: int
    duplicate: bool
    domain: str | None


@attrs.frozen
class StreamState:
    """A stream's counters.

    Attributes:
        messages: Frames stored now.
        bytes: Their size.
        first_seq: The oldest stored sequence number.
        last_seq: The newest sequence number ever stored.
        consumers: Consumers bound to it.
    """

    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumers: int


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it to ``config`` if it exists (a changed limit)."""
    assert config.name is not None
    try:
        try:
            await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
    except _NATS_ERRORS as exc:
        raise _translate(exc, f"creating stream {config.name}") from exc


class NatsEnvelopeStream(abc.ABC):
    """Durable publication of frames into one JetStream stream (base of outbox and log).

    Args:
        connection: A connected client.
        subjects: The fleet's subjects.
        stream: The stream's name.
        domain: The JetStream domain that holds the stream (``None``: the connection's own).
        max_frame: The frame limit (default: what fits the server's ``max_payload`` with
            headers).
        timeout: Seconds a publish or stream call may take.
    """

    def __init__(
        self,
        connection: Client,
        subjects: Subjects,
        *,
        stream: str,
        domain: str | None = None,
        max_frame: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        room = connection.max_payload - HEADER_RESERVE
        if max_frame is None:
            max_frame = min(DEFAULT_MAX_FRAME, room)
        if not 0 < max_frame <= room:
            raise ValueError(
                f"max_frame={max_frame} must be positive and leave {HEADER_RESERVE} bytes of "
                f"headers under the server's max_payload={connection.max_payload}"
            )
        self.connection = connection
        self.subjects = subjects
        self.stream = stream
        self.domain = domain
        self.max_frame = max_frame
        self.timeout = timeout
        self.js = connection.jetstream(domain=domain, timeout=timeout)

    @abc.abstractmethod
    def subject(self, scope: Scope | str) -> str:
        """The subject a frame of ``scope`` is published on."""

    @abc.abstractmethod
    def filter_subject(self) -> str:
        """The wildcard subject the stream captures."""

    async def publish(
        self, frame: bytes, scope: Scope | str, *, msg_id: str | None = None
    ) -> Published:
        """Store one frame durably; return once the stream acknowledged it.

        Args:
            frame: The envelope bytes.
            scope: The scope it belongs to (its subject).
            msg_id: The deduplication id (default: :func:`frame_id`).

        Raises:
            FrameTooLargeError: if the frame is over ``max_frame``.
            TransportError: if the stream did not acknowledge it (``reason`` says why).
        """
        if len(frame) > self.max_frame:
            raise FrameTooLargeError(size=len(frame), limit=self.max_frame)
        headers = {MSG_ID_HEADER: msg_id or frame_id(frame)}
        try:
            ack = await self.js.publish(
                self.subject(scope), bytes(frame), stream=self.stream, headers=headers
            )
        except _NATS_ERRORS as exc:
            raise _translate(exc, f"publishing to {self.stream}") from exc
        return Published(ack.stream, ack.seq, bool(ack.duplicate), ack.domain)

    async def state(self) -> StreamState:
        """The stream's counters now.

        Raises:
            TransportError: if the stream cannot be asked.
        """
        try:
            info = await self.js.stream_info(self.stream)
        except _NATS_ERRORS as exc:
            raise _translate(exc, f"reading {self.stream}") from exc
        state = info.state
        return StreamState(
            messages=state.messages,
            bytes=state.bytes,
            first_seq=state.first_seq,
            last_seq=state.last_seq,
            consumers=state.consumer_count,
        )


class NatsOutbox(NatsEnvelopeStream):
    """An edge's outbox: a work-queue stream on its leaf node, drained by a :class:`NatsRelay`.

    A publish is acknowledged by the leaf's own JetStream, so it succeeds while the leaf is cut
    off from the hub. Work-queue retention deletes each frame once the relay acknowledged it, and
    ``discard: new`` makes a full outbox refuse new frames (``TransportError``, reason
    ``"rejected"``) rather than silently drop old ones: the replica keeps them in its own store
    and publishes them later.

    Args:
        connection: A client connected to the leaf node.
        subjects: The fleet's subjects.
        origin: Whose outbox this is (an edge replica or a leaf; unique per leaf).
        stream: The stream name (default: :meth:`Subjects.outbox_stream`).
        domain: The leaf's JetStream domain.
        max_frame: See :class:`NatsEnvelopeStream`.
        timeout: See :class:`NatsEnvelopeStream`.
    """

    def __init__(
        self,
        connection: Client,
        subjects: Subjects,
        *,
        origin: str,
        stream: str | None = None,
        domain: str | None = None,
        max_frame: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(
            connection,
            subjects,
            stream=stream or subjects.outbox_stream(origin),
            domain=domain,
            max_frame=max_frame,
            timeout=timeout,
        )
        self.origin = origin

    @classmethod
    async def open(
        cls,
        connection: Client,
        subjects: Subjects,
        *,
        origin: str,
        stream: str | None = None,
        domain: str | None = None,
        max_frame: int | None = None,
        max_bytes: int = 64 * 1024 * 1024,
        duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
        storage: StorageType = StorageType.FILE,
        timeout: float = 5.0,
        create: bool = True,
    ) -> Self:
        """Bind to the outbox stream, creating or updating it unless ``create=False``.

        Args:
            connection: A client connected to the leaf node.
            subjects: The fleet's subjects.
            origin: Whose outbox this is.
            stream: The stream name (default: :meth:`Subjects.outbox_stream`).
            domain: The leaf's JetStream domain.
            max_frame: See :class:`NatsEnvelopeStream`.
            max_bytes: The outbox's capacity; a full outbox refuses new frames. File streams
                reserve it from the server's ``max_file``.
            duplicate_window: Seconds during which a republished frame is recognised.
            storage: File (survives a leaf restart) or memory.
            timeout: See :class:`NatsEnvelopeStream`.
            create: Create or update the stream; ``False`` when deployment manages it.

        Raises:
            TransportError: if the stream cannot be created or updated.
        """
        outbox = cls(
            connection,
            subjects,
            origin=origin,
            stream=stream,
            domain=domain,
            max_frame=max_frame,
            timeout=timeout,
        )
        if create:
            await _ensure_stream(
                outbox.js,
                StreamConfig(
                    name=outbox.stream,
                    subjects=[outbox.filter_subject()],
                    retention=RetentionPolicy.WORK_QUEUE,
                    discard=DiscardPolicy.NEW,
                    storage=storage,
                    max_bytes=max_bytes,
                    max_msg_size=outbox.max_frame,
                    duplicate_window=duplicate_window,
                    num_replicas=1,
                ),
            )
        return outbox

    def subject(self, scope: Scope | str) -> str:
        """``<prefix>.outbox.<origin>.<scope>``."""
        return self.subjects.outbox(self.origin, scope)

    def filter_subject(self) -> str:
        """``<prefix>.outbox.<origin>.>``."""
        return self.subjects.outbox_prefix(self.origin) + ".>"


class NatsEnvelopeLog(NatsEnvelopeStream):
    """The envelope log on the hub: what relays deliver and what inboxes read.

    Limits retention (every reader has its own durable consumer), file storage, and a
    ``duplicate_window`` long enough to cover a relay's restart. Hub replicas publish their own
    envelopes here directly.

    Args:
        connection: A client that reaches the hub (directly, or through a leaf node).
        subjects: The fleet's subjects.
        stream: The stream name (default: :meth:`Subjects.log_stream`).
        domain: The hub's JetStream domain.
        max_frame: See :class:`NatsEnvelopeStream`.
        timeout: See :class:`NatsEnvelopeStream`.
    """

    def __init__(
        self,
        connection: Client,
        subjects: Subjects,
        *,
        stream: str | None = None,
        domain: str | None = None,
        max_frame: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(
            connection,
            subjects,
            stream=stream or subjects.log_stream(),
            domain=domain,
            max_frame=max_frame,
            timeout=timeout,
        )

    @classmethod
    async def open(
        cls,
        connection: Client,
        subjects: Subjects,
        *,
        stream: str | None = None,
        domain: str | None = None,
        max_frame: int | None = None,
        max_bytes: int = 128 * 1024 * 1024,
        max_age: float | None = None,
        duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
        storage: StorageType = StorageType.FILE,
        timeout: float = 5.0,
        create: bool = True,
    ) -> Self:
        """Bind to the log stream, creating or updating it unless ``create=False``.

        Args:
            connection: A client that reaches the hub.
            subjects: The fleet's subjects.
            stream: The stream name (default: :meth:`Subjects.log_stream`).
            domain: The hub's JetStream domain.
            max_frame: See :class:`NatsEnvelopeStream`.
            max_bytes: The log's size; the oldest frames go first when it is full (a replica
                that fell that far behind catches up by a sync session instead). File streams
                reserve it from the server's ``max_file``.
            max_age: Seconds a frame is kept (``None``: no age limit).
            duplicate_window: Seconds during which a republished frame is recognised.
            storage: File or memory.
            timeout: See :class:`NatsEnvelopeStream`.
            create: Create or update the stream; ``False`` when deployment manages it.

        Raises:
            TransportError: if the stream cannot be created or updated.
        """
        log = cls(
            connection,
            subjects,
            stream=stream,
            domain=domain,
            max_frame=max_frame,
            timeout=timeout,
        )
        if create:
            await _ensure_stream(
                log.js,
                StreamConfig(
                    name=log.stream,
                    subjects=[log.filter_subject()],
                    retention=RetentionPolicy.LIMITS,
                    discard=DiscardPolicy.OLD,
                    storage=storage,
                    max_bytes=max_bytes,
                    max_age=max_age,
                    max_msg_size=log.max_frame,
                    duplicate_window=duplicate_window,
                    num_replicas=1,
                ),
            )
        return log

    def subject(self, scope: Scope | str) -> str:
        """``<prefix>.env.<scope>``."""
        return self.subjects.envelopes(scope)

    def filter_subject(self) -> str:
        """``<prefix>.env.>``."""
        return self.subjects.all_envelopes()


# =============================================================================== consumers


class _PullConsumer:
    """A durable pull consumer that (re)binds lazily, so it survives an unreachable server."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        filter_subjects: Sequence[str],
        ack_wait: float,
        max_ack_pending: int,
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = subject_token(durable)
        self.filter_subjects = list(filter_subjects)
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages; ``[]`` if none came within ``timeout``.

        Raises:
            TransportError: if the consumer's server cannot be reached or refuses.
        """
        subscription = await self._bind()
        try:
            return await subscription.fetch(batch, timeout=timeout)
        except TimeoutError:
            # Nothing new. nats-py raises its own TimeoutError, FetchTimeoutError or a bare
            # asyncio one depending on where the deadline struck; all mean the same here. (A
            # silently dead link looks alike; the next bind or publish finds out.)
            return []
        except _NATS_ERRORS as exc:
            raise _translate(exc, f"fetching from {self.stream}/{self.durable}") from exc

    async def _bind(self) -> JetStreamContext.PullSubscription:
        if self._subscription is None:
            config = ConsumerConfig(
                durable_name=self.durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait,
                max_ack_pending=self.max_ack_pending,
                filter_subjects=self.filter_subjects,
            )
            try:
                self._subscription = await self.js.pull_subscribe(
                    self.filter_subjects[0], durable=self.durable, stream=self.stream, config=config
                )
            except _NATS_ERRORS as exc:
                raise _translate(exc, f"binding to {self.stream}/{self.durable}") from exc
        return self._subscription

    async def close(self) -> None:
        """Unsubscribe; the durable consumer (and its position) stays on the server."""
        # Unsubscribe before the connection drains: drain waits for a pull subscription whose
        # fetch ever timed out until its own timeout (notes/nats.md).
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except (*_NATS_ERRORS, ValueError):
                pass


@attrs.frozen
class RelayedFrame:
    """One frame the relay moved, as reported to ``on_published``.

    Attributes:
        source_seq: Its sequence number in the outbox stream.
        subject: The log subject it was published on.
        msg_id: Its deduplication id.
        target_seq: Its sequence number in the log.
        duplicate: The log already had it (a relay restart republished it).
    """

    source_seq: int
    subject: str
    msg_id: str
    target_seq: int
    duplicate: bool


@attrs.frozen
class RelayStats:
    """What a relay has done so far.

    Attributes:
        relayed: Frames published to the log and acknowledged on the outbox.
        duplicates: Of those, frames the log already had.
        rejected: Outbox messages that cannot be relayed (no scope in the subject, oversized),
            terminated so that they do not block the outbox.
        failures: Publishes that failed (the hub unreachable); the frame stays in the outbox.
    """

    relayed: int = 0
    duplicates: int = 0
    rejected: int = 0
    failures: int = 0


class NatsRelay:
    """Moves an outbox's frames into the envelope log, at least once, deduplicated by the log.

    Each round (:meth:`relay_once`) fetches a batch from a durable pull consumer on the outbox
    and, for each frame in order, publishes it to the log subject of its scope with its
    ``Nats-Msg-Id`` and the expected log stream, waits for the log's acknowledgement, and only
    then acknowledges the outbox message. If the hub is unreachable the rest of the batch is
    handed back (``nak``) and the round raises; :meth:`run` retries with backoff. A relay that
    dies between the hub's acknowledgement and its own gets the frame again after ``ack_wait``
    and republishes it; the log recognises the message id and stores nothing new.

    The relay can run next to the edge (its connection reaches the log through the leaf link,
    as the test topology does) or at the hub (reading the outbox through the leaf's domain).

    Args:
        outbox: The outbox to drain.
        target: A client that reaches the log's stream.
        log_stream: The log's stream name (default: :meth:`Subjects.log_stream`); the server
            refuses a publish that another stream would capture.
        durable: The outbox consumer's name; a restarted relay reuses it to resume.
        batch: Frames per round.
        ack_wait: Seconds before an outbox frame not acknowledged is delivered again.
        fetch_timeout: Seconds a round waits for the first frame.
        publish_timeout: Seconds the log's acknowledgement may take.
        on_published: Awaited after the log acknowledged a frame and before the outbox is
            acknowledged (metrics; fault injection in tests).
    """

    def __init__(
        self,
        outbox: NatsOutbox,
        target: Client,
        *,
        log_stream: str | None = None,
        durable: str = "relay",
        batch: int = 100,
        ack_wait: float = DEFAULT_ACK_WAIT,
        fetch_timeout: float = 1.0,
        publish_timeout: float = 5.0,
        on_published: Callable[[RelayedFrame], Awaitable[None]] | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.outbox = outbox
        self.subjects = outbox.subjects
        self.log_stream = log_stream or outbox.subjects.log_stream()
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.publish_timeout = publish_timeout
        self.on_published = on_published
        self._target = target.jetstream(timeout=publish_timeout)
        self._consumer = _PullConsumer(
            outbox.js,
            stream=outbox.stream,
            durable=durable,
            filter_subjects=[outbox.filter_subject()],
            ack_wait=ack_wait,
            max_ack_pending=max(batch, 1000),
        )
        self._stats = RelayStats()
        self._source_prefix = outbox.subjects.outbox_prefix(outbox.origin)

    @property
    def stats(self) -> RelayStats:
        """The counters so far."""
        return self._stats

    def _count(self, **changes: int) -> None:
        self._stats = attrs.evolve(
            self._stats, **{name: getattr(self._stats, name) + n for name, n in changes.items()}
        )

    async def relay_once(self) -> int:
        """Relay one batch; return how many frames reached the log (0: the outbox is empty).

        Raises:
            TransportError: if the outbox or the log is unreachable; what was not relayed stays
                in the outbox.
        """
        messages = await self._consumer.fetch(self.batch, self.fetch_timeout)
        done = 0
        for index, message in enumerate(messages):
            try:
                scope = self.subjects.scope_of(message.subject, self._source_prefix)
            except ValueError:  # InvalidScopeError is a ValueError too
                await self._settle(message.term)
                self._count(rejected=1)
                continue
            data = message.data
            headers = message.headers or {}
            msg_id = headers.get(MSG_ID_HEADER) or frame_id(data)
            subject = self.subjects.envelopes(scope)
            try:
                ack = await self._target.publish(
                    subject, data, stream=self.log_stream, headers={MSG_ID_HEADER: msg_id}
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code == 10054:  # message size exceeds the log's maximum
                    await self._settle(message.term)
                    self._count(rejected=1)
                    continue
                await self._hand_back(messages[index:])
                raise _translate(exc, f"relaying to {self.log_stream}") from exc
            except _NATS_ERRORS as exc:
                await self._hand_back(messages[index:])
                raise _translate(exc, f"relaying to {self.log_stream}") from exc
            relayed = RelayedFrame(
                source_seq=message.metadata.sequence.stream,
                subject=subject,
                msg_id=msg_id,
                target_seq=ack.seq,
                duplicate=bool(ack.duplicate),
            )
            if self.on_published is not None:
                await self.on_published(relayed)
            # Only now: had we acknowledged before the hub did, a crash here would lose it.
            await self._settle(message.ack)
            done += 1
            self._count(relayed=1, duplicates=int(relayed.duplicate))
        return done

    async def _hand_back(self, messages: Sequence[Msg]) -> None:
        """Give unrelayed messages back at once (``nak``) instead of after ``ack_wait``."""
        self._count(failures=1)
        for message in messages:
            await self._settle(message.nak)

    @staticmethod
    async def _settle(action: Callable[[], Awaitable[None]]) -> None:
        # An ack, nak or term that is lost only means a redelivery, which dedupe absorbs.
        try:
            await action()
        except (*_NATS_ERRORS, ValueError):
            pass

    async def run(
        self,
        *,
        stop: asyncio.Event | None = None,
        backoff: tuple[float, float] = (0.05, 2.0),
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        """Relay until ``stop`` is set (or the task is cancelled), backing off while unreachable.

        Args:
            stop: Ends the loop after the current round.
            backoff: First and largest pause after a failed round, in seconds (doubling).
            sleep: The pause (injected so tests can drive it).
        """
        delay = backoff[0]
        while stop is None or not stop.is_set():
            try:
                await self.relay_once()
            except TransportError:
                await sleep(delay)
                delay = min(delay * 2, backoff[1])
            else:
                delay = backoff[0]

    async def close(self) -> None:
        """Stop consuming (unsubscribe); the durable consumer keeps its position."""
        await self._consumer.close()


class NatsInbox:
    """Reads a replica's share of the envelope log through a durable pull consumer.

    :meth:`deliver` fetches a batch, hands the frames to a handler (typically
    ``replica.ingest_many``) and acknowledges them only after it returned: if the handler raises
    (the store failed), the batch is handed back and delivered again. Frames over ``max_frame``
    are terminated unread.

    Args:
        connection: A client that reaches the log (through a leaf link for an edge).
        subjects: The fleet's subjects.
        durable: The consumer's name (one per replica: it is the replica's position in the log).
        interest: The replica's scope; reads :meth:`Subjects.interest` of it. Or give
            ``filter_subjects``.
        filter_subjects: Explicit log subjects to read.
        stream: The log's stream name (default: :meth:`Subjects.log_stream`).
        domain: The log's JetStream domain (the hub's, when reading through a leaf).
        batch: Frames per delivery.
        ack_wait: Seconds before an unacknowledged frame is delivered again.
        fetch_timeout: Seconds a delivery waits for the first frame.
        max_frame: Larger frames are refused.
        timeout: Seconds a JetStream API call may take.
    """

    def __init__(
        self,
        connection: Client,
        subjects: Subjects,
        *,
        durable: str,
        interest: Scope | str | None = None,
        filter_subjects: Sequence[str] = (),
        stream: str | None = None,
        domain: str | None = None,
        batch: int = 100,
        ack_wait: float = DEFAULT_ACK_WAIT,
        fetch_timeout: float = 1.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        timeout: float = 5.0,
    ) -> None:
        if (interest is None) == (not filter_subjects):
            raise ValueError("give exactly one of interest and filter_subjects")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.subjects = subjects
        self.stream = stream or subjects.log_stream()
        self.filter_subjects = (
            tuple(filter_subjects) if interest is None else subjects.interest(interest)
        )
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.max_frame = max_frame
        self.delivered = 0
        self.rejected = 0
        self._consumer = _PullConsumer(
            connection.jetstream(domain=domain, timeout=timeout),
            stream=self.stream,
            durable=durable,
            filter_subjects=self.filter_subjects,
            ack_wait=ack_wait,
            max_ack_pending=max(batch, 1000),
        )

    async def deliver(self, handler: Callable[[list[bytes]], object]) -> int:
        """Hand the next batch of frames to ``handler``; return how many (0: nothing new).

        Raises:
            TransportError: if the log is unreachable.
            Exception: whatever ``handler`` raised; the batch is handed back first.
        """
        messages = await self._consumer.fetch(self.batch, self.fetch_timeout)
        frames: list[bytes] = []
        accepted: list[Msg] = []
        for message in messages:
            if len(message.data) > self.max_frame:
                await NatsRelay._settle(message.term)
                self.rejected += 1
            else:
                frames.append(bytes(message.data))
                accepted.append(message)
        if not frames:
            return 0
        try:
            handler(frames)
        except BaseException:
            for message in accepted:
                await NatsRelay._settle(message.nak)
            raise
        for message in accepted:
            await NatsRelay._settle(message.ack)
        self.delivered += len(frames)
        return len(frames)

    async def close(self) -> None:
        """Stop consuming (unsubscribe); the durable consumer keeps the replica's position."""
        await self._consumer.close()
