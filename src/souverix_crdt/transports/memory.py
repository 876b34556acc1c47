"""In-memory transport with seeded fault injection, pumped by the test.

A :class:`MemoryNetwork` connects named endpoints in pairs. Nothing moves on its own: a frame sent
by one endpoint waits *in flight* until the test pumps the network — :meth:`~MemoryNetwork.deliver`
(what is due now), :meth:`~MemoryNetwork.step` (one logical tick later),
:meth:`~MemoryNetwork.run_until_idle`, or the async :meth:`~MemoryNetwork.pump` — so a test decides
exactly when every frame lands and never waits on the wall clock (trio.testing's memory streams
work the same way). Typical use::

    network = MemoryNetwork(seed=7)
    region, edge = network.connect("region-a", "edge-a1")
    network.set_faults("region-a", "edge-a1", drop=0.1, delay=(0, 3))
    region.send_nowait(b"hello")
    network.run_until_idle()
    assert edge.drain() in ([b"hello"], [])

Faults (:class:`Faults`, per link direction or network-wide) are decided when a frame is sent:

``drop``       probability that the frame is lost;
``duplicate``  probability that a second copy travels too (each copy gets its own delay);
``reorder``    probability that the frame overtakes frames already in flight on its link;
``delay``      ``(low, high)`` ticks, uniform; a non-constant delay also reorders frames, like a
               network with several paths.

The decisions come from one :class:`random.Random` per link direction, seeded from the network's
seed and the two names, so the same seed and the same operations on a link give the same
deliveries on every run, whatever happens on other links. With no fault configured no random
number is drawn and frames arrive in order.

Links between two names can also be cut: :meth:`~MemoryNetwork.partition` loses the frames that
would cross (or, with ``hold=True``, keeps them until :meth:`~MemoryNetwork.heal`), and
:meth:`~MemoryNetwork.break_link` resets the current connections, whose endpoints then raise
:class:`~souverix_crdt.errors.TransportBrokenError`. Counters per direction
(:meth:`~MemoryNetwork.stats`, :attr:`~MemoryNetwork.totals`) account for every frame:
``sent + duplicated == delivered + dropped + in_flight + held``.

Endpoints are :class:`MemoryTransport` objects: the async :class:`~.base.Transport` interface plus
a synchronous API (:meth:`~MemoryTransport.send_nowait`, :meth:`~MemoryTransport.receive_nowait`,
:meth:`~MemoryTransport.drain`) so that sans-IO protocol tests can pump without an event loop.
Everything here runs on one thread (and at most one event loop); nothing is thread-safe.

Empty frames are valid frames and arrive as ``b""``: the end of a transport is always an
exception, never an empty read.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Iterator
from typing import Final

import attrs

from souverix_crdt.errors import FrameTooLargeError, TransportBrokenError, TransportClosedError

from .base import DEFAULT_MAX_FRAME, Transport

__all__ = ["Faults", "LinkStats", "MemoryNetwork", "MemoryTransport"]

#: Consecutive event-loop turns without a new frame after which :meth:`MemoryNetwork.pump` calls
#: the network idle. Woken receivers usually reply within two or three turns; eight leaves room
#: for a few awaits in between without making idle pumps slow.
DEFAULT_SETTLE: Final = 8


def _probability(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _to_delay(value: int | tuple[int, int]) -> tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else value
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
        raise ValueError(f"delay must be ticks or (low, high) with 0 <= low <= high, got {value!r}")
    return (low, high)


@attrs.frozen(kw_only=True)
class Faults:
    """The faults applied to frames on a link direction.

    Attributes:
        drop: Probability that a frame is lost.
        duplicate: Probability that a frame is delivered twice.
        reorder: Probability that a frame overtakes frames already in flight on its link.
        delay: Delay in ticks, ``(low, high)`` inclusive and uniform; an ``int`` means a fixed
            delay.
    """

    drop: float = attrs.field(default=0.0, validator=_probability)
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    reorder: float = attrs.field(default=0.0, validator=_probability)
    delay: tuple[int, int] = attrs.field(default=(0, 0), converter=_to_delay)

    @property
    def active(self) -> bool:
        """False when no fault is configured (frames arrive in order, at once, exactly once)."""
        return bool(self.drop or self.duplicate or self.reorder or self.delay[1])


#: No faults at all.
NO_FAULTS: Final = Faults()


@attrs.frozen(kw_only=True)
class LinkStats:
    """Counters of one link direction (or of the whole network), as a snapshot.

    Every frame is accounted for: ``sent + duplicated == delivered + dropped + in_flight + held``.

    Attributes:
        sent: Frames accepted by ``send`` (and injected ones).
        delivered: Frames that reached a receiver's inbox (duplicates count each time).
        dropped: Frames lost: by the drop fault, a partition, a broken link or a closed receiver.
        duplicated: Extra copies made by the duplicate fault.
        reordered: Frames that overtook others when sent.
        in_flight: Frames on their way now.
        held: Frames kept by a ``hold=True`` partition until it heals.
        bytes_sent: Bytes of the frames accepted by ``send``.
        bytes_delivered: Bytes that reached inboxes (the bytes "on the wire" for benchmarks).
    """

    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    in_flight: int = 0
    held: int = 0
    bytes_sent: int = 0
    bytes_delivered: int = 0

    def __add__(self, other: LinkStats) -> LinkStats:
        return LinkStats(
            **{
                field.name: getattr(self, field.name) + getattr(other, field.name)
                for field in attrs.fields(LinkStats)
            }
        )


class _Counters:
    """The mutable counters behind a :class:`LinkStats` (one per direction, by names)."""

    __slots__ = (
        "bytes_delivered",
        "bytes_sent",
        "delivered",
        "dropped",
        "duplicated",
        "reordered",
        "sent",
    )

    def __init__(self) -> None:
        self.sent = 0
        self.delivered = 0
        self.dropped = 0
        self.duplicated = 0
        self.reordered = 0
        self.bytes_sent = 0
        self.bytes_delivered = 0


@attrs.define
class _InFlight:
    frame: bytes
    due: int


class _Channel:
    """One direction of one connection: the frames on their way from ``source`` to ``target``."""

    __slots__ = ("counters", "held", "in_flight", "key", "pair", "rng", "source", "target")

    def __init__(
        self,
        source: MemoryTransport,
        target: MemoryTransport,
        counters: _Counters,
        rng: random.Random,
    ) -> None:
        self.source = source
        self.target = target
        self.key = (source.name, target.name)
        self.pair = frozenset(self.key)
        self.counters = counters
        self.rng = rng
        self.in_flight: list[_InFlight] = []
        self.held: list[_InFlight] = []

    @property
    def pending(self) -> bool:
        return bool(self.in_flight or self.held)


class MemoryTransport(Transport):
    """One endpoint of a :class:`MemoryNetwork` connection.

    Create endpoints with :meth:`MemoryNetwork.connect`, not directly.

    Attributes:
        name: This endpoint's own name.
        peer: The name of the endpoint at the other end.
        max_frame: The largest frame it sends or accepts, in bytes.
    """

    def __init__(self, network: MemoryNetwork, name: str, peer: str, max_frame: int) -> None:
        self.name = name
        self.peer = peer
        self.max_frame = max_frame
        self._network = network
        self._inbox: deque[bytes] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._broken = False
        # Wired by MemoryNetwork.connect right after both endpoints exist.
        self._other: MemoryTransport
        self._outgoing: _Channel
        self._incoming: _Channel

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return f"<MemoryTransport {self.name}->{self.peer} {state}, {len(self._inbox)} queued>"

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        """True once this side closed, the link broke, or the peer's close reached us."""
        return self._closed or self._broken or self._peer_gone()

    @property
    def pending(self) -> int:
        """Frames in the inbox, ready to be received without waiting."""
        return len(self._inbox)

    def _peer_gone(self) -> bool:
        # The peer's close travels behind the frames it sent before closing, like a TCP FIN:
        # we only see it once nothing the peer sent is still on its way to us.
        return self._other._closed and not self._incoming.pending

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosedError(f"{self.name}: transport to {self.peer} was closed")
        if self._broken:
            raise TransportBrokenError(
                f"{self.name}: link to {self.peer} was broken", reason="broken"
            )

    def _check_sendable(self) -> None:
        self._check_open()
        if self._other._closed:
            raise TransportBrokenError(f"{self.name}: {self.peer} closed", reason="peer-closed")

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ synchronous API

    def send_nowait(self, frame: bytes) -> None:
        """Send one frame: it is in flight until the network delivers it.

        Args:
            frame: Any bytes-like object; it is copied into an immutable ``bytes`` (empty is
                allowed).

        Raises:
            TransportClosedError: if this side was closed.
            TransportBrokenError: if the link was broken or the peer closed.
            FrameTooLargeError: if the frame is longer than ``max_frame``.
            TypeError: if ``frame`` is not bytes-like.
        """
        self._check_sendable()
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise TypeError(f"frames are bytes, not {type(frame).__name__}")
        # Measure before copying: an oversized frame is refused without allocating its copy.
        size = memoryview(frame).nbytes
        if size > self.max_frame:
            raise FrameTooLargeError(size=size, limit=self.max_frame)
        self._network._transmit(self._outgoing, bytes(frame))

    def receive_nowait(self) -> bytes | None:
        """The next frame of the inbox, or ``None`` if none has arrived yet.

        Raises:
            TransportClosedError: if this side was closed.
            TransportBrokenError: if the link was broken, or the peer closed and everything it
                sent before closing has been received.
            FrameTooLargeError: if the next frame is longer than ``max_frame`` (only injected
                frames can be); that frame is discarded.
        """
        self._check_open()
        if self._inbox:
            frame = self._inbox.popleft()
            if len(frame) > self.max_frame:
                raise FrameTooLargeError(size=len(frame), limit=self.max_frame)
            return frame
        if self._peer_gone():
            raise TransportBrokenError(f"{self.name}: {self.peer} closed", reason="peer-closed")
        return None

    def drain(self) -> list[bytes]:
        """Every frame in the inbox, in arrival order (maybe none).

        Raises:
            TransportClosedError: if this side was closed.
            TransportBrokenError: if the link was broken, or the inbox is empty and the peer
                closed (as :meth:`receive_nowait`).
            FrameTooLargeError: as :meth:`receive_nowait`; the frames before it stay queued.
        """
        frames: list[bytes] = []
        while self._inbox:
            if len(self._inbox[0]) > self.max_frame and frames:
                return frames  # report the good frames now, the oversized one on the next call
            frame = self.receive_nowait()
            assert frame is not None  # the inbox was not empty
            frames.append(frame)
        if not frames:
            self._check_open()
            if self._peer_gone():
                raise TransportBrokenError(f"{self.name}: {self.peer} closed", reason="peer-closed")
        return frames

    def close_nowait(self) -> None:
        """Close this side now; idempotent (see :meth:`close`)."""
        if self._closed:
            return
        self._closed = True
        # Frames we never read are discarded; they were delivered, so counters do not change.
        self._inbox.clear()
        self._wake()
        self._other._wake()

    # ------------------------------------------------------------------ Transport

    async def send(self, frame: bytes) -> None:
        """Send one frame (see :meth:`send_nowait`).

        The checkpoint comes first, so a cancelled ``send`` has sent nothing.
        """
        await asyncio.sleep(0)
        self.send_nowait(frame)

    async def receive(self) -> bytes:
        """Wait until a frame lands in the inbox and return it (see :meth:`receive_nowait`).

        Cancelling a waiting ``receive`` loses no frame: frames are only taken from the inbox
        by the call that returns them.
        """
        await asyncio.sleep(0)
        while True:
            frame = self.receive_nowait()
            if frame is not None:
                return frame
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)

    async def close(self) -> None:
        """Close this side; idempotent.

        Our own pending and later calls raise ``TransportClosedError``. The peer still receives
        what we sent before (once the network delivers it, so after a ``hold=True`` partition
        heals), then ``TransportBrokenError``; its sends raise ``TransportBrokenError`` at once.
        """
        self.close_nowait()
        await asyncio.sleep(0)


class MemoryNetwork:
    """Connects in-memory endpoints and moves their frames when the test says so.

    Args:
        seed: Seeds every fault decision (see the module documentation).
        max_frame: The frame limit of every endpoint, in bytes.
    """

    def __init__(self, seed: int, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 0:
            raise ValueError(f"max_frame must be >= 0, got {max_frame}")
        self.seed = seed
        self.max_frame = max_frame
        self._tick = 0
        self._channels: list[_Channel] = []
        self._default_faults = NO_FAULTS
        self._faults: dict[tuple[str, str], Faults] = {}
        self._counters: dict[tuple[str, str], _Counters] = {}
        self._rngs: dict[tuple[str, str], random.Random] = {}
        self._partitions: dict[frozenset[str], bool] = {}  # pair -> hold
        self._sends = 0  # every send ever, for pump's "nothing new happened" test

    def __repr__(self) -> str:
        totals = self.totals
        return (
            f"<MemoryNetwork seed={self.seed} tick={self._tick} "
            f"in_flight={totals.in_flight} held={totals.held}>"
        )

    # ------------------------------------------------------------------ connections

    def connect(self, a: str, b: str) -> tuple[MemoryTransport, MemoryTransport]:
        """Create a connected pair of endpoints named ``a`` and ``b``.

        Several connections may join the same two names (a reconnect after a break, say); faults,
        partitions and counters apply by names, to all of them.

        Returns:
            ``(endpoint_a, endpoint_b)``, where ``endpoint_a.peer == b`` and
            ``endpoint_b.peer == a``.

        Raises:
            ValueError: if a name is empty or both names are the same.
        """
        if not a or not b or a == b:
            raise ValueError(f"a connection joins two distinct non-empty names, got {a!r}, {b!r}")
        end_a = MemoryTransport(self, a, b, self.max_frame)
        end_b = MemoryTransport(self, b, a, self.max_frame)
        a_to_b = self._channel(end_a, end_b)
        b_to_a = self._channel(end_b, end_a)
        end_a._other, end_a._outgoing, end_a._incoming = end_b, a_to_b, b_to_a
        end_b._other, end_b._outgoing, end_b._incoming = end_a, b_to_a, a_to_b
        self._channels += (a_to_b, b_to_a)
        return end_a, end_b

    def _channel(self, source: MemoryTransport, target: MemoryTransport) -> _Channel:
        key = (source.name, target.name)
        counters = self._counters.setdefault(key, _Counters())
        rng = self._rngs.get(key)
        if rng is None:
            # A string seed is hashed with SHA-512 by random.Random: stable across runs and
            # platforms (unlike hash()), and independent per direction.
            rng = random.Random(f"{self.seed}\x00{key[0]}\x00{key[1]}")  # noqa: S311 - simulation, not crypto
            self._rngs[key] = rng
        return _Channel(source, target, counters, rng)

    def _between(self, a: str, b: str) -> Iterator[_Channel]:
        pair = frozenset((a, b))
        return (channel for channel in self._channels if channel.pair == pair)

    # ------------------------------------------------------------------ faults

    def set_faults(
        self,
        src: str | None = None,
        dst: str | None = None,
        *,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: int | tuple[int, int] = (0, 0),
    ) -> Faults:
        """Set the faults of the direction ``src`` → ``dst``, or the network default.

        Knobs not given are reset to "no fault". A direction with its own faults ignores the
        default until :meth:`clear_faults` removes them.

        Returns:
            The new :class:`Faults`.

        Raises:
            ValueError: if only one name is given or a knob is out of range.
        """
        faults = Faults(drop=drop, duplicate=duplicate, reorder=reorder, delay=delay)
        if src is None and dst is None:
            self._default_faults = faults
        elif src is not None and dst is not None:
            self._faults[src, dst] = faults
        else:
            raise ValueError("give both src and dst for a direction, or neither for the default")
        return faults

    def clear_faults(self, src: str | None = None, dst: str | None = None) -> None:
        """Remove the faults of a direction (it follows the default again), or all faults."""
        if src is None and dst is None:
            self._default_faults = NO_FAULTS
            self._faults.clear()
        elif src is not None and dst is not None:
            self._faults.pop((src, dst), None)
        else:
            raise ValueError("give both src and dst for a direction, or neither for everything")

    def faults(self, src: str, dst: str) -> Faults:
        """The faults that apply now to frames from ``src`` to ``dst``."""
        return self._faults.get((src, dst), self._default_faults)

    # ------------------------------------------------------------------ partitions and breaks

    def partition(self, a: str, b: str, *, hold: bool = False) -> None:
        """Cut the links between ``a`` and ``b``, both ways.

        Frames that would cross — sent during the partition, or still in flight when it starts —
        are lost, or with ``hold=True`` kept and delivered after :meth:`heal`. Endpoints are not
        told (a cut network is silent); their sends still succeed.
        """
        self._partitions[frozenset((a, b))] = hold

    def heal(self, a: str, b: str) -> None:
        """Restore the links between ``a`` and ``b``; held frames are in flight again, due now."""
        self._partitions.pop(frozenset((a, b)), None)
        for channel in self._between(a, b):
            for item in channel.held:
                item.due = self._tick
            channel.in_flight += channel.held
            channel.held = []

    def partitioned(self, a: str, b: str) -> bool:
        """True while the links between ``a`` and ``b`` are cut."""
        return frozenset((a, b)) in self._partitions

    def break_link(self, a: str, b: str) -> int:
        """Reset every open connection between ``a`` and ``b``.

        Both endpoints of each connection raise ``TransportBrokenError`` from then on, waiting
        receives included (an endpoint its owner already closed keeps raising
        ``TransportClosedError``). Frames in flight or held are lost, and so are frames not yet
        received, like a connection reset. New connections between the names work normally.

        Returns:
            How many connections it broke (those with an endpoint not yet closed or broken).
        """
        channels = list(self._between(a, b))
        broken = len(
            {
                frozenset((id(channel.source), id(channel.target)))
                for channel in channels
                if any(not (end._closed or end._broken) for end in (channel.source, channel.target))
            }
        )
        for channel in channels:
            channel.counters.dropped += len(channel.in_flight) + len(channel.held)
            channel.in_flight, channel.held = [], []
            for endpoint in (channel.source, channel.target):
                endpoint._broken = True
                endpoint._inbox.clear()
                endpoint._wake()
        return broken

    # ------------------------------------------------------------------ frames

    def _transmit(self, channel: _Channel, frame: bytes, *, faulty: bool = True) -> None:
        self._sends += 1
        counters = channel.counters
        counters.sent += 1
        counters.bytes_sent += len(frame)
        faults = self.faults(*channel.key) if faulty else NO_FAULTS
        if not faults.active:
            self._dispatch(channel, _InFlight(frame, self._tick))
            return
        rng = channel.rng
        # Every knob draws only when it is set, and always in the same order, so a link's
        # decisions depend only on its own traffic and knobs.
        if faults.drop and rng.random() < faults.drop:
            counters.dropped += 1
            return
        copies = 1
        if faults.duplicate and rng.random() < faults.duplicate:
            copies = 2
            counters.duplicated += 1
        low, high = faults.delay
        for _ in range(copies):
            item = _InFlight(frame, self._tick + (rng.randint(low, high) if high > low else low))
            if faults.reorder and channel.in_flight and rng.random() < faults.reorder:
                if self._cut(channel, item):
                    continue
                channel.in_flight.insert(rng.randrange(len(channel.in_flight)), item)
                counters.reordered += 1
            else:
                self._dispatch(channel, item)

    def _dispatch(self, channel: _Channel, item: _InFlight) -> None:
        if not self._cut(channel, item):
            channel.in_flight.append(item)

    def _cut(self, channel: _Channel, item: _InFlight) -> bool:
        """Apply a partition to a frame about to travel; True if it was taken off the link."""
        hold = self._partitions.get(channel.pair)
        if hold is None:
            return False
        if hold:
            channel.held.append(item)
        else:
            channel.counters.dropped += 1
        return True

    def inject(self, sender: MemoryTransport, frame: bytes) -> None:
        """Put ``frame`` in flight from ``sender`` as is: no size check, no faults.

        For tests of what a hostile or buggy peer can do, such as a frame over the receiver's
        limit (the receiver refuses it with ``FrameTooLargeError``). Partitions still apply.

        Raises:
            TransportClosedError: if ``sender`` was closed.
            TransportBrokenError: if its link was broken or its peer closed.
        """
        sender._check_sendable()
        self._transmit(sender._outgoing, bytes(frame), faulty=False)

    # ------------------------------------------------------------------ pumping

    @property
    def now(self) -> int:
        """The current logical tick (starts at 0; only :meth:`step` advances it)."""
        return self._tick

    def deliver(self, max_frames: int | None = None) -> int:
        """Move the frames that are due into their receivers' inboxes.

        Frames go in the order connections were made, then in their order on the link.

        Args:
            max_frames: Deliver at most this many (all that are due if ``None``).

        Returns:
            How many frames reached an inbox.
        """
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        budget = -1 if max_frames is None else max_frames
        delivered = 0
        for channel in self._channels:
            if not channel.in_flight or delivered == budget:
                continue
            target, counters = channel.target, channel.counters
            remaining: list[_InFlight] = []
            for item in channel.in_flight:
                if item.due > self._tick or delivered == budget:
                    remaining.append(item)
                elif self._cut(channel, item):
                    pass  # a partition started while it travelled
                elif target._closed or target._broken:
                    counters.dropped += 1
                else:
                    target._inbox.append(item.frame)
                    counters.delivered += 1
                    counters.bytes_delivered += len(item.frame)
                    delivered += 1
            channel.in_flight = remaining
            # Wake even when nothing landed: a receiver waiting for its peer's close must see
            # that the last frame ahead of it was lost.
            target._wake()
        self._forget_finished()
        return delivered

    def _forget_finished(self) -> None:
        # A link is over when either end is closed or broken (nothing can be sent on it again)
        # and nothing is left on it; forgetting it keeps deliver() cheap across reconnects.
        def finished(channel: _Channel) -> bool:
            ends = (channel.source, channel.target)
            return not channel.pending and any(end._closed or end._broken for end in ends)

        if any(finished(channel) for channel in self._channels):
            self._channels = [channel for channel in self._channels if not finished(channel)]

    def step(self, ticks: int = 1) -> int:
        """Advance the clock by ``ticks`` logical ticks, then deliver what is due.

        Returns:
            How many frames reached an inbox.
        """
        if ticks < 0:
            raise ValueError(f"ticks must be >= 0, got {ticks}")
        self._tick += ticks
        return self.deliver()

    def _in_flight(self) -> bool:
        return any(channel.in_flight for channel in self._channels)

    def _due(self) -> bool:
        return any(
            item.due <= self._tick for channel in self._channels for item in channel.in_flight
        )

    def run_until_idle(self, max_steps: int = 10_000) -> int:
        """Deliver and step until no frame is in flight (held frames wait for :meth:`heal`).

        Synchronous: receivers do not get to answer in between; use :meth:`pump` for that.

        Returns:
            How many frames reached an inbox.

        Raises:
            RuntimeError: if frames are still in flight after ``max_steps`` ticks.
        """
        delivered = self.deliver()
        steps = 0
        while self._in_flight():
            if steps >= max_steps:
                raise RuntimeError(f"frames still in flight after {max_steps} steps")
            delivered += self.step()
            steps += 1
        return delivered

    async def pump(self, *, max_rounds: int = 100_000, settle: int = DEFAULT_SETTLE) -> int:
        """Deliver and step, letting the event loop run in between, until the network is idle.

        Idle means no frame in flight and no new frame sent during ``settle`` consecutive turns
        of the event loop, so tasks woken by a delivery get to receive and answer before this
        returns. It never waits on the wall clock.

        Returns:
            How many frames reached an inbox.

        Raises:
            RuntimeError: if the network is still busy after ``max_rounds`` rounds (the tasks
                keep talking forever).
        """
        delivered = 0
        for _ in range(max_rounds):
            delivered += self.deliver()
            sends = self._sends
            for _ in range(settle):
                await asyncio.sleep(0)
            if self._in_flight():
                if not self._due():
                    self._tick += 1
            elif self._sends == sends:
                return delivered
        raise RuntimeError(f"network still busy after {max_rounds} rounds")

    # ------------------------------------------------------------------ counters

    def stats(self, src: str, dst: str) -> LinkStats:
        """The counters of the direction ``src`` → ``dst``, over all its connections."""
        counters = self._counters.get((src, dst), _Counters())
        channels = [channel for channel in self._channels if channel.key == (src, dst)]
        return LinkStats(
            sent=counters.sent,
            delivered=counters.delivered,
            dropped=counters.dropped,
            duplicated=counters.duplicated,
            reordered=counters.reordered,
            in_flight=sum(len(channel.in_flight) for channel in channels),
            held=sum(len(channel.held) for channel in channels),
            bytes_sent=counters.bytes_sent,
            bytes_delivered=counters.bytes_delivered,
        )

    @property
    def totals(self) -> LinkStats:
        """The counters of every direction, summed (one pass: harnesses ask every round)."""
        counters = self._counters.values()
        return LinkStats(
            sent=sum(c.sent for c in counters),
            delivered=sum(c.delivered for c in counters),
            dropped=sum(c.dropped for c in counters),
            duplicated=sum(c.duplicated for c in counters),
            reordered=sum(c.reordered for c in counters),
            in_flight=sum(len(channel.in_flight) for channel in self._channels),
            held=sum(len(channel.held) for channel in self._channels),
            bytes_sent=sum(c.bytes_sent for c in counters),
            bytes_delivered=sum(c.bytes_delivered for c in counters),
        )
