"""The sync coordinator: when each link syncs, how failures back off, how far behind it is.

One :class:`SyncCoordinator` per replica runs one loop per configured link (a
:class:`LinkConfig`). Sessions themselves are the sans-IO
:class:`~souverix_crdt.sync.session.SyncSession` pumped by
:func:`~souverix_crdt.sync.driver.run_session`; the coordinator only decides *when* to open one,
*when* it has done its job, and *what to do* when it fails. Besides the transports, it is the
only part of the library that loops on its own.

Modes (the brief's ``SyncStrategy``):

``CONTINUOUS``
    Keep a live session open; every change is pushed as it is made. When it ends, reconnect
    after a backoff delay.
``SCHEDULED``
    Every ``frequency`` seconds (starting at once), open a session, run it until the link is
    settled, close it.
``PUSH``
    Like ``SCHEDULED``, and also as soon as this replica makes or accepts an envelope the
    peer's scope is interested in (the "region pushes down" of the brief).
    With ``wake_on_write=False`` (as ``peer run`` runs it) a push link keeps to its schedule
    alone.
``OPPORTUNISTIC``
    Keep a live session open, but only while the connectivity hook says the link is up; such a
    link starts *down* until the embedding service says otherwise.

A session is **settled** when both directions are done: this side's session is caught up (the
peer acknowledged every chain it can be sent) and this replica holds every chain of its
interest as far as the peer said it holds it (its hello and acks, which the replica records as
the peer's frontiers). Scheduled and push sessions close then; live sessions record the moment.

Connectivity: the embedding service's connectivity manager calls :meth:`SyncCoordinator.
set_link_state`. While a link is down the coordinator makes no connection attempt, and a
session in progress is cancelled; when it comes back up the link syncs at once.

Failures: a connection that cannot be made, or a session that ends before it settled, is a
failed attempt. The next attempt waits ``retry.delay(failures - 1)``: exponential, capped,
with downward jitter from the injected random source; one settled session resets it. With
``max_attempts``, a scheduled or push round gives up after that many and waits for its next
turn; a live link waits ``frequency`` before trying again.

Sync debt per link (:meth:`SyncCoordinator.debt`): what the peer has not acknowledged
(envelopes, bytes, age of the oldest, from the replica's outbox) and the seconds since the link
was last settled, from the injected clock.

Time and randomness are injected: ``clock`` (monotonic seconds), ``sleep`` and ``rng``. Tests
drive the coordinator on a fake clock and never wait on the wall clock. (The session driver's
own silence timer, ``tick_interval``, is the one real timer: it repairs lost frames.)

Air-gapped links are not the coordinator's: they move by bundle files
(:mod:`souverix_crdt.transports.bundle`), carried by people.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from souverix_crdt.errors import SouverixError, TransportError
from souverix_crdt.replica import Replica
from souverix_crdt.scope import Scope
from souverix_crdt.store.base import StoredEnvelope
from souverix_crdt.sync.driver import DEFAULT_TICK_INTERVAL, SessionStats, run_session
from souverix_crdt.sync.session import DEFAULT_BATCH_SIZE, SessionState, SyncSession
from souverix_crdt.transports.base import Transport

from .backoff import Backoff, RandomSource
from .topology import ConflictResolution, Direction, SyncMode, SyncTarget, Topology

__all__ = [
    "DEFAULT_DOWNSTREAM_FREQUENCY",
    "DEFAULT_OPPORTUNISTIC_FREQUENCY",
    "DEFAULT_RETRY",
    "DEFAULT_SESSION_TIMEOUT",
    "DEFAULT_UPSTREAM_FREQUENCY",
    "Connect",
    "Direction",
    "LinkConfig",
    "LinkDebt",
    "SyncCoordinator",
    "SyncMode",
    "SyncOutcome",
    "SyncResult",
    "SyncStrategy",
]

logger = logging.getLogger(__name__)

#: Makes a connected transport to the link's peer (a TCP connect, a NATS transport...).
Connect = Callable[[], Awaitable[Transport]]

#: The brief's upstream default: every 15 minutes.
DEFAULT_UPSTREAM_FREQUENCY: Final = 15 * 60.0
#: The brief's downstream default: the region pushes down every 5 minutes.
DEFAULT_DOWNSTREAM_FREQUENCY: Final = 5 * 60.0
#: The retry period of an opportunistic link declared without a frequency.
DEFAULT_OPPORTUNISTIC_FREQUENCY: Final = 60.0
#: Seconds a scheduled or push session may run before it is abandoned unsettled.
DEFAULT_SESSION_TIMEOUT: Final = 300.0

#: The retry schedule of a link configured without one.
DEFAULT_RETRY: Final = Backoff()
_DEFAULT_CONFLICT_RESOLUTION: Final = ConflictResolution()

# Errors that mean "this attempt failed", as opposed to a bug: the link retries after them.
_ATTEMPT_ERRORS: Final = (TransportError, OSError, SouverixError)


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _optional_positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _positive(instance, attribute, value)


def _at_least_one(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


def _optional_scope(value: Scope | str | None) -> Scope | None:
    return None if value is None else Scope.parse(value)


@attrs.frozen(kw_only=True)
class LinkConfig:
    """How one link of this replica syncs.

    Attributes:
        peer: The peer replica's name (as it names itself in its hello; sync debt is kept
            under it).
        connect: Makes a connected transport to the peer.
        direction: Upstream (towards the root) or downstream, seen from this replica.
        mode: How the link syncs (see the module documentation).
        frequency: Seconds between scheduled syncs; for live links, the pause after
            ``max_attempts`` failures; for every link, the age of the last sync past which
            :attr:`LinkDebt.overdue` is set.
        batch_size: Envelopes per batch.
        retry: The backoff schedule of failed attempts.
        max_attempts: Attempts per round before waiting for the next one; ``None`` never
            gives up.
        peer_scope: The peer's home scope. When given, its sync debt is tracked from the
            start, not only from its first hello, and push links wake only for envelopes it
            is interested in.
        session_timeout: Seconds a scheduled or push session may run unsettled before it is
            abandoned (as a failed attempt); ``None`` for no limit.
        tick_interval: Seconds of silence after which a session re-sends its hello (passed to
            :func:`~souverix_crdt.sync.driver.run_session`).
        wake_on_write: Push links only: also sync as soon as a write the peer is interested
            in is made or accepted. ``False`` keeps to the schedule alone (``peer run``: the
            topology's "push every 5m" means every 5 minutes).
    """

    peer: str
    connect: Connect = attrs.field(eq=False, repr=False)
    direction: Direction = Direction.UPSTREAM
    mode: SyncMode = SyncMode.SCHEDULED
    frequency: float = attrs.field(default=DEFAULT_DOWNSTREAM_FREQUENCY, validator=_positive)
    batch_size: int = attrs.field(default=DEFAULT_BATCH_SIZE, validator=_at_least_one)
    retry: Backoff = DEFAULT_RETRY
    max_attempts: int | None = attrs.field(default=None, validator=_at_least_one)
    peer_scope: Scope | None = attrs.field(default=None, converter=_optional_scope)
    session_timeout: float | None = attrs.field(
        default=DEFAULT_SESSION_TIMEOUT, validator=_optional_positive
    )
    tick_interval: float = attrs.field(default=DEFAULT_TICK_INTERVAL, validator=_positive)
    wake_on_write: bool = True

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.peer, str) or not self.peer:
            raise ValueError("a link needs its peer's name")
        if not callable(self.connect):
            raise TypeError("connect must be a callable returning an awaitable transport")

    @property
    def live(self) -> bool:
        """True for links that keep a session open (continuous, opportunistic)."""
        return self.mode in (SyncMode.CONTINUOUS, SyncMode.OPPORTUNISTIC)

    @classmethod
    def upstream(
        cls,
        *,
        peer: str,
        connect: Connect,
        frequency: float = DEFAULT_UPSTREAM_FREQUENCY,
        mode: SyncMode = SyncMode.CONTINUOUS,
        **options: Any,
    ) -> LinkConfig:
        """A link towards the root (the brief's default: continuous, 15 minutes)."""
        return cls(
            peer=peer,
            connect=connect,
            direction=Direction.UPSTREAM,
            frequency=frequency,
            mode=mode,
            **options,
        )

    @classmethod
    def downstream(
        cls,
        *,
        peer: str,
        connect: Connect,
        frequency: float = DEFAULT_DOWNSTREAM_FREQUENCY,
        mode: SyncMode = SyncMode.PUSH,
        **options: Any,
    ) -> LinkConfig:
        """A link away from the root (the brief's default: push every 5 minutes)."""
        return cls(
            peer=peer,
            connect=connect,
            direction=Direction.DOWNSTREAM,
            frequency=frequency,
            mode=mode,
            **options,
        )

    @classmethod
    def from_target(
        cls, target: SyncTarget, *, connect: Connect, peer_scope: Scope | str | None = None
    ) -> LinkConfig:
        """The link a topology file declares (:class:`~souverix_crdt.plane.topology.SyncTarget`)."""
        frequency = (
            DEFAULT_OPPORTUNISTIC_FREQUENCY
            if target.frequency_ms is None
            else target.frequency_ms / 1000
        )
        return cls(
            peer=target.target,
            connect=connect,
            direction=target.direction,
            mode=target.mode,
            frequency=frequency,
            batch_size=target.batch_size,
            retry=target.retry.backoff(),
            max_attempts=target.retry.max_attempts or None,
            peer_scope=peer_scope,
        )


def _link_tuple(links: Iterable[LinkConfig]) -> tuple[LinkConfig, ...]:
    return tuple(links)


@attrs.frozen(kw_only=True)
class SyncStrategy:
    """The brief's ``SyncStrategy`` block as configuration: the links and conflict resolution.

    Conflict resolution itself (last-writer-wins with versioning and an audit log, authority
    precedence for conditional scopes) is the replica's; it is recorded here so a service
    configures both from one object.

    Attributes:
        links: Every link of the replica.
        conflict_resolution: How concurrent writes are settled.
    """

    links: tuple[LinkConfig, ...] = attrs.field(converter=_link_tuple)
    conflict_resolution: ConflictResolution = _DEFAULT_CONFLICT_RESOLUTION

    @property
    def upstream(self) -> LinkConfig | None:
        """The upstream link, if any."""
        return next((link for link in self.links if link.direction is Direction.UPSTREAM), None)

    @property
    def downstream(self) -> tuple[LinkConfig, ...]:
        """The downstream links."""
        return tuple(link for link in self.links if link.direction is Direction.DOWNSTREAM)

    @classmethod
    def from_topology(
        cls, topology: Topology, plane: str, *, connect_for: Callable[[str], Connect]
    ) -> SyncStrategy:
        """The links one plane of a topology declares.

        Links to or from an air-gapped plane are left out: bundle files carry those.

        Args:
            topology: The validated topology.
            plane: The plane this replica runs.
            connect_for: Gives the connect function for a peer plane's name.
        """
        spec = topology.plane(plane)
        if spec.air_gapped:
            return cls(links=(), conflict_resolution=topology.conflict_resolution)
        targets = ([spec.upstream] if spec.upstream is not None else []) + list(spec.downstream)
        links = [
            LinkConfig.from_target(
                target,
                connect=connect_for(target.target),
                peer_scope=topology.plane(target.target).scope,
            )
            for target in targets
            if not topology.plane(target.target).air_gapped
        ]
        return cls(links=links, conflict_resolution=topology.conflict_resolution)


class SyncOutcome(enum.Enum):
    """How one sync attempt ended."""

    SETTLED = "settled"  # both directions done (a live session may have ended later)
    INCOMPLETE = "incomplete"  # a session ran but ended (or timed out) before it settled
    FAILED = "failed"  # no session: the connection could not be made
    SKIPPED = "skipped"  # the link is down: no attempt was made
    CANCELLED = "cancelled"  # the link went down, or the coordinator stopped, meanwhile


@attrs.frozen(kw_only=True)
class SyncResult:
    """What one sync attempt did.

    Attributes:
        peer: The link's peer.
        outcome: How it ended.
        started: The injected clock when it started.
        finished: The injected clock when it ended.
        stats: The session's statistics, when a session ran.
        error: The error that ended it, if one did.
    """

    peer: str
    outcome: SyncOutcome
    started: float
    finished: float
    stats: SessionStats | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)

    @property
    def ok(self) -> bool:
        """True if the link settled."""
        return self.outcome is SyncOutcome.SETTLED


@attrs.frozen(kw_only=True)
class LinkDebt:
    """How far behind one link is.

    Attributes:
        peer: The link's peer.
        envelopes: Envelopes the peer has not acknowledged.
        bytes: Their size.
        oldest_age_ms: Age of the oldest of them (the replica's wall clock), 0 without debt.
        since_last_sync: Seconds since the link was last settled (0 while a live session is
            settled), ``None`` if it never was.
        up: What the connectivity hook last said.
        connected: True while a session is running.
        overdue: True when the link has not settled for longer than its ``frequency``
            (counted from the coordinator's start if it never settled).
        attempts: Connection attempts so far.
        failures: Consecutive failed attempts.
    """

    peer: str
    envelopes: int
    bytes: int
    oldest_age_ms: int
    since_last_sync: float | None
    up: bool
    connected: bool
    overdue: bool
    attempts: int
    failures: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "peer": self.peer,
            "envelopes": self.envelopes,
            "bytes": self.bytes,
            "oldest_age_ms": self.oldest_age_ms,
            "since_last_sync": self.since_last_sync,
            "up": self.up,
            "connected": self.connected,
            "overdue": self.overdue,
            "attempts": self.attempts,
            "failures": self.failures,
        }


@attrs.define(eq=False)
class _Link:
    """The mutable state of one link."""

    config: LinkConfig
    up: bool
    created: float
    changed: asyncio.Event = attrs.field(factory=asyncio.Event)  # connectivity, stop
    dirty: asyncio.Event = attrs.field(factory=asyncio.Event)  # push: something to send
    next_due: float = 0.0
    retry_at: float = 0.0
    failures: int = 0
    attempts: int = 0
    last_sync: float | None = None
    in_sync: bool = False
    sessions: int = 0  # running now, ours and the peer's
    attempt: asyncio.Task[SyncResult] | None = None
    last_result: SyncResult | None = None


class _Watched(Transport):
    """A transport that lets the coordinator look at the session before each receive.

    The driver asks for the next frame right after it fed the previous one to the session and
    sent the answers, so "before each receive" is exactly "whenever the session went quiet":
    the moment to judge whether the link has settled.
    """

    def __init__(self, inner: Transport, observe: Callable[[], None]) -> None:
        self.inner = inner
        self.peer = inner.peer
        self._observe = observe

    async def send(self, frame: bytes) -> None:
        await self.inner.send(frame)

    async def receive(self) -> bytes:
        self._observe()
        return await self.inner.receive()

    async def close(self) -> None:
        await self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed


class SyncCoordinator:
    """Runs the sync links of one replica.

    Args:
        replica: The replica whose links these are.
        links: One configuration per peer (names must be distinct).
        clock: Monotonic seconds; the only time source of schedules, backoff and debt.
        sleep: Waits the given seconds; tests pass a fake driven by their fake clock.
        rng: The jitter source of the backoff.
        session_factory: Makes the session of an attempt (default: a plain
            :class:`~souverix_crdt.sync.session.SyncSession` with the link's batch size); a
            peer process passes one that judges the peer's chain during the handshake.
        handshake_timeout: Seconds a session may take to authenticate (``None``: no limit).
        on_observe: Called with the peer and the session whenever a session of a link went
            quiet, after the coordinator judged it (a peer process records the link there).
        on_session_end: Called with the peer and the session when a session of a link ends.
    """

    def __init__(
        self,
        replica: Replica,
        links: Iterable[LinkConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: RandomSource | None = None,
        session_factory: Callable[[LinkConfig], SyncSession] | None = None,
        handshake_timeout: float | None = None,
        on_observe: Callable[[str, SyncSession], None] | None = None,
        on_session_end: Callable[[str, SyncSession], None] | None = None,
    ) -> None:
        self.replica = replica
        self._session_factory = session_factory
        self._handshake_timeout = handshake_timeout
        self._on_observe = on_observe
        self._on_session_end = on_session_end
        self._clock = clock
        self._sleep = sleep
        self._rng: RandomSource = random.Random() if rng is None else rng  # noqa: S311 - jitter
        self._links: dict[str, _Link] = {}
        now = clock()
        for config in links:
            if config.peer in self._links:
                raise ValueError(f"two links to {config.peer!r}")
            if config.peer == replica.name:
                raise ValueError("a replica does not sync with itself")
            up = config.mode is not SyncMode.OPPORTUNISTIC
            self._links[config.peer] = _Link(config, up, now, next_due=now)
            if config.peer_scope is not None:
                # The outbox (and so the debt) starts now, not at the first hello.
                replica.register_peer(config.peer, [config.peer_scope])
        self._tasks: list[asyncio.Task[None]] = []
        self._incoming: set[asyncio.Task[SessionStats]] = set()
        self._running = False
        self._stopping = False
        self._unsubscribe: Callable[[], None] | None = replica.on_envelope(self._on_envelope)

    # ------------------------------------------------------------------ public API

    @property
    def links(self) -> Mapping[str, LinkConfig]:
        """The configured links by peer name."""
        return {name: link.config for name, link in self._links.items()}

    def set_link_state(self, peer: str, up: bool) -> None:
        """The connectivity hook: the link to ``peer`` is up or down.

        Down: no connection attempts, and a session in progress is cancelled. Up: the link
        syncs at once (a pending backoff delay is not waited out).

        Raises:
            KeyError: no link to ``peer``.
        """
        link = self._links[peer]
        if link.up == up:
            return
        link.up = up
        if up:
            link.retry_at = self._clock()
        elif link.attempt is not None:
            link.attempt.cancel()
        link.changed.set()

    def link_up(self, peer: str) -> bool:
        """What the connectivity hook last said about ``peer``."""
        return self._links[peer].up

    def debt(self, peer: str) -> LinkDebt:
        """The sync debt of the link to ``peer``.

        Raises:
            KeyError: no link to ``peer``.
        """
        link = self._links[peer]
        replica_debt = self.replica.sync_debt(peer)
        now = self._clock()
        if link.sessions and link.in_sync:
            since: float | None = 0.0
        else:
            since = None if link.last_sync is None else max(0.0, now - link.last_sync)
        reference = link.created if link.last_sync is None else link.last_sync
        return LinkDebt(
            peer=peer,
            envelopes=replica_debt.envelopes,
            bytes=replica_debt.bytes,
            oldest_age_ms=replica_debt.oldest_age_ms,
            since_last_sync=since,
            up=link.up,
            connected=link.sessions > 0,
            overdue=since != 0.0 and now - reference > link.config.frequency,
            attempts=link.attempts,
            failures=link.failures,
        )

    def debts(self) -> dict[str, LinkDebt]:
        """The sync debt of every link."""
        return {peer: self.debt(peer) for peer in self._links}

    def last_result(self, peer: str) -> SyncResult | None:
        """The last attempt's result on the link to ``peer``."""
        return self._links[peer].last_result

    async def sync_once(self, peer: str) -> SyncResult:
        """Open one session to ``peer``, run it until settled, close it (no retries).

        Returns :attr:`SyncOutcome.SKIPPED` while the link is down.

        Raises:
            KeyError: no link to ``peer``.
        """
        link = self._links[peer]
        if not link.up:
            now = self._clock()
            return SyncResult(peer=peer, outcome=SyncOutcome.SKIPPED, started=now, finished=now)
        result = await self._attempt(link, persistent=False)
        self._account(link, result)
        return result

    async def run(self) -> None:
        """Run every link until :meth:`stop`.

        Raises:
            RuntimeError: if it is already running.
            Exception: whatever a link's loop raised that is not a sync failure (a bug).
        """
        if self._running:
            raise RuntimeError("the coordinator is already running")
        self._running = True
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run_link(link), name=f"souverix-link {name}")
            for name, link in self._links.items()
        ]
        try:
            if self._tasks:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            await self._cancel_all()
            self._running = False
        for task in self._tasks:
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure

    async def stop(self) -> None:
        """Stop every link and incoming session; :meth:`run` returns. Idempotent."""
        self._stopping = True
        for link in self._links.values():
            link.changed.set()
        await self._cancel_all()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def serve(self, transport: Transport) -> SessionStats:
        """Run a live session a peer opened (a :class:`~.transports.tcp.TcpServer` handler).

        When the peer is one of the links, its sync debt and last sync are kept as for the
        sessions this side opens. The session runs until either side ends it.
        """
        session = SyncSession(self.replica)
        counted: _Link | None = None

        def observe() -> None:
            nonlocal counted
            link = self._links.get(session.peer_name or "")
            if link is None:
                return
            if counted is None:
                counted = link
                link.sessions += 1
            self._observe(link, session, close=False)

        watched = _Watched(transport, observe)
        task = asyncio.ensure_future(run_session(session, watched))
        self._incoming.add(task)
        try:
            return await task
        finally:
            self._incoming.discard(task)
            if counted is not None:
                self._session_ended(counted)

    # ------------------------------------------------------------------ loops

    async def _run_link(self, link: _Link) -> None:
        config = link.config
        while not self._stopping:
            if not link.up:
                await self._wait(link, None)
                continue
            if config.live:
                if not await self._gate(link):
                    continue
                self._account(link, await self._attempt(link, persistent=True))
                continue
            now = self._clock()
            eager = config.mode is SyncMode.PUSH and config.wake_on_write
            pushing = eager and link.dirty.is_set()
            if now < link.next_due and not pushing:
                await self._wait(link, link.next_due - now, dirty=eager)
                continue
            link.dirty.clear()
            result = await self._round(link)
            if result.outcome in (SyncOutcome.CANCELLED, SyncOutcome.SKIPPED):
                continue  # the link went down (or we stop): its turn comes again when up
            if config.mode is SyncMode.SCHEDULED:
                # A fixed schedule: slots that passed during a long round are skipped, not
                # run back to back.
                while link.next_due <= self._clock():
                    link.next_due += config.frequency
            else:
                link.next_due = self._clock() + config.frequency
                if result.ok and self.replica.sync_debt(config.peer).envelopes == 0:
                    # What was written during the round went out live and was acknowledged.
                    link.dirty.clear()

    async def _round(self, link: _Link) -> SyncResult:
        """Attempts with backoff until one settles, the link goes down, or max_attempts."""
        attempts = 0
        while True:
            if not await self._gate(link):
                now = self._clock()
                return SyncResult(
                    peer=link.config.peer, outcome=SyncOutcome.SKIPPED, started=now, finished=now
                )
            result = await self._attempt(link, persistent=False)
            self._account(link, result)
            attempts += 1
            if result.outcome in (SyncOutcome.SETTLED, SyncOutcome.CANCELLED):
                return result
            limit = link.config.max_attempts
            if limit is not None and attempts >= limit:
                return result

    async def _gate(self, link: _Link) -> bool:
        """Wait out the backoff delay; False if the link went down or we stop meanwhile."""
        while not self._stopping and link.up:
            remaining = link.retry_at - self._clock()
            if remaining <= 0:
                return True
            await self._wait(link, remaining)
        return False

    async def _wait(self, link: _Link, delay: float | None, *, dirty: bool = False) -> None:
        """Sleep ``delay`` seconds (for ever if ``None``), or until the link state changes.

        The caller looked at the state just before, with no await in between, so clearing
        the event here loses no change.
        """
        link.changed.clear()
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(link.changed.wait())]
        if dirty:
            waiters.append(asyncio.ensure_future(link.dirty.wait()))
        if delay is not None:
            waiters.append(asyncio.ensure_future(self._sleep(max(0.0, delay))))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.wait(waiters)

    def _account(self, link: _Link, result: SyncResult) -> None:
        """Update the failure count and the next allowed attempt after ``result``."""
        link.last_result = result
        config = link.config
        now = self._clock()
        if result.outcome is SyncOutcome.SETTLED:
            link.failures = 0
            # A live link whose session ended reconnects after the first delay, not at once:
            # a peer that accepts and drops every connection must not be hammered.
            link.retry_at = now + config.retry.delay(0, self._rng) if config.live else now
        elif result.outcome in (SyncOutcome.FAILED, SyncOutcome.INCOMPLETE):
            link.failures += 1
            if config.live and config.max_attempts and link.failures >= config.max_attempts:
                link.failures = 0
                link.retry_at = now + config.frequency
            else:
                link.retry_at = now + config.retry.delay(link.failures - 1, self._rng)
        logger.debug("link %s: %s", config.peer, result.outcome.value)

    # ------------------------------------------------------------------ one attempt

    async def _attempt(self, link: _Link, *, persistent: bool) -> SyncResult:
        started = self._clock()
        task = asyncio.ensure_future(self._session(link, persistent=persistent, started=started))
        link.attempt = task
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait([task])
            raise
        finally:
            link.attempt = None
        if task.cancelled():
            return SyncResult(
                peer=link.config.peer,
                outcome=SyncOutcome.CANCELLED,
                started=started,
                finished=self._clock(),
            )
        return task.result()

    async def _session(self, link: _Link, *, persistent: bool, started: float) -> SyncResult:
        config = link.config
        link.attempts += 1
        try:
            transport = await config.connect()
        except _ATTEMPT_ERRORS as exc:
            return SyncResult(
                peer=config.peer,
                outcome=SyncOutcome.FAILED,
                started=started,
                finished=self._clock(),
                error=exc,
            )
        session = self._new_session(config)
        settled = False

        def observe() -> None:
            nonlocal settled
            if self._on_observe is not None:
                # Before the judgement below, which may close a settled one-shot session.
                self._on_observe(config.peer, session)
            settled = self._observe(link, session, close=not persistent) or settled

        runner = asyncio.ensure_future(
            run_session(
                session,
                _Watched(transport, observe),
                tick_interval=config.tick_interval,
                handshake_timeout=self._handshake_timeout,
            )
        )
        timer: asyncio.Future[None] | None = None
        link.sessions += 1
        try:
            waiting: list[asyncio.Future[Any]] = [runner]
            if not persistent and config.session_timeout is not None:
                timer = asyncio.ensure_future(self._sleep(config.session_timeout))
                waiting.append(timer)
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._session_ended(link)
            if self._on_session_end is not None:
                self._on_session_end(config.peer, session)
            for future in (runner, timer):
                if future is not None and not future.done():
                    future.cancel()
            await asyncio.wait([f for f in (runner, timer) if f is not None])
            with contextlib.suppress(TransportError, OSError):
                await transport.close()
        error: BaseException | None = None
        stats: SessionStats | None = None
        if runner.cancelled():
            error = TimeoutError(f"the session did not settle within {config.session_timeout} s")
        else:
            error = runner.exception()
            if error is None:
                stats = runner.result()
                error = stats.error
            elif not isinstance(error, _ATTEMPT_ERRORS):
                raise error
        if session.peer_name is not None and session.peer_name != config.peer:
            error = ValueError(
                f"expected {config.peer!r}, the peer says it is {session.peer_name!r}"
            )
            settled = False
        return SyncResult(
            peer=config.peer,
            outcome=SyncOutcome.SETTLED if settled else SyncOutcome.INCOMPLETE,
            started=started,
            finished=self._clock(),
            stats=stats,
            error=error,
        )

    def _new_session(self, config: LinkConfig) -> SyncSession:
        if self._session_factory is None:
            return SyncSession(self.replica, batch_size=config.batch_size)
        return self._session_factory(config)

    def _observe(self, link: _Link, session: SyncSession, *, close: bool) -> bool:
        """Judge whether the session has settled; record it, and close a one-shot session."""
        if session.peer_name is not None and session.peer_name != link.config.peer:
            session.close(f"expected {link.config.peer}, not {session.peer_name}")
            return False
        if not self._settled(session):
            link.in_sync = False
            return False
        link.in_sync = True
        link.last_sync = self._clock()
        if close:
            session.close("settled")
        return True

    def _session_ended(self, link: _Link) -> None:
        link.sessions -= 1
        if link.in_sync:
            # It stayed in sync until this moment: the debt's clock starts now, not at the
            # last frame of a quiet session.
            link.last_sync = self._clock()
        link.in_sync = False

    def _settled(self, session: SyncSession) -> bool:
        """Both directions done: see the module documentation."""
        if session.state is not SessionState.OPEN or not session.caught_up:
            return False
        assert session.peer_name is not None  # set by the peer's hello, which opened it
        replica = self.replica
        home = [replica.identity.scope]
        for (scope, chain), seq in replica.store.peer_frontiers(session.peer_name).items():
            if seq > replica.chain_seq(scope, chain) and replica.interested(
                home, Scope.parse(scope)
            ):
                return False
        return True

    # ------------------------------------------------------------------ plumbing

    def _on_envelope(self, stored: StoredEnvelope, source: str | None) -> None:
        for peer, link in self._links.items():
            config = link.config
            if config.mode is not SyncMode.PUSH or source == peer:
                continue
            scope = config.peer_scope
            if scope is None or self.replica.interested([scope], Scope.parse(stored.scope)):
                link.dirty.set()

    async def _cancel_all(self) -> None:
        pending: list[asyncio.Future[Any]] = []
        for task in (*self._tasks, *self._incoming):
            if not task.done():
                task.cancel()
            pending.append(task)
        for link in self._links.values():
            if link.attempt is not None:
                link.attempt.cancel()
                pending.append(link.attempt)
        if pending:
            await asyncio.wait(pending)
