"""The sync session: a sans-IO state machine between this replica and one peer.

Bytes in (:meth:`SyncSession.receive`), bytes out (:meth:`SyncSession.data_to_send`); the
session never awaits, never opens a socket and never reads a clock. Timers belong to the caller,
who calls :meth:`SyncSession.tick` when it decides too long has passed.

Invariants:

* Every message is idempotent: envelopes are applied at most once (the replica orders and
  deduplicates them), frontiers only grow, authority items are sets.
* What a peer is sent is exactly what it lacks: for every chain of interest, the envelopes after
  the highest sequence number the peer has told us it holds (its hello, then its acks).
* At most one batch of at most ``batch_size`` envelopes is in flight. Its ack carries the peer's
  frontiers; a chain whose acked frontier is behind what was sent lost something on the way
  (dropped, or parked by a gap) and is sent again from the acked point.
* Loss of a batch or of its ack is repaired by :meth:`tick`, which the caller invokes after a
  timeout: it resends the hello (so the peer's frontiers refresh) and forgets the batch in flight.
* The delegation chains of the writers in a batch go to the peer ahead of it, unless the peer is
  known to hold them (a relay hears of its zones' keys after its own hello to its parent), so it
  never parks envelopes for want of them.
* Interest follows the tree, and it is decided by the peer's *verified* delegation, not by what it
  asks for: a peer receives the chains of its own subtree and of its ancestors, never a sibling's.

Transition table (state, message) → handler, in :data:`TRANSITIONS`. Receiving in ``CLOSED``
is ignored; sending after ``close`` raises :class:`~souverix_crdt.errors.LocalProtocolError`.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Sequence
from typing import Final

from souverix_crdt.authority import Delegation, Grant, verify_chain
from souverix_crdt.envelope import chain_writer, read_header
from souverix_crdt.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SouverixError,
    UnknownDelegationError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.replica import IngestOutcome, Replica
from souverix_crdt.scope import Scope
from souverix_crdt.store.base import StoredEnvelope

from .messages import (
    Ack,
    AuthorityItems,
    Checkpoint,
    Close,
    Envelopes,
    FrontierRow,
    Hello,
    Message,
    decode_message,
    encode_message,
)

__all__ = ["TRANSITIONS", "SessionState", "SyncSession"]

#: Default envelopes per batch.
DEFAULT_BATCH_SIZE: Final = 100


class SessionState(enum.Enum):
    """Where a session is."""

    IDLE = "idle"  # created, nothing sent
    HELLO_SENT = "hello-sent"  # our hello is out; the peer's has not arrived
    OPEN = "open"  # both hellos seen: envelopes and acks flow
    CLOSED = "closed"  # either side closed; nothing more is sent


Handler = Callable[["SyncSession", Message], None]


def _on_hello(session: SyncSession, message: Message) -> None:
    assert isinstance(message, Hello)
    session.handle_hello(message)


def _on_envelopes(session: SyncSession, message: Message) -> None:
    assert isinstance(message, Envelopes)
    session.handle_envelopes(message)


def _on_ack(session: SyncSession, message: Message) -> None:
    assert isinstance(message, Ack)
    session.handle_ack(message)


def _on_authority(session: SyncSession, message: Message) -> None:
    assert isinstance(message, AuthorityItems)
    session.handle_authority(message)


def _on_checkpoint(session: SyncSession, message: Message) -> None:
    assert isinstance(message, Checkpoint)
    session.handle_checkpoint(message)


def _on_close(session: SyncSession, message: Message) -> None:
    assert isinstance(message, Close)
    session.state = SessionState.CLOSED
    session.close_reason = message.reason


_LIVE: Final = (SessionState.IDLE, SessionState.HELLO_SENT, SessionState.OPEN)

# Ingest outcomes that prove the peer holds the envelope's chain up to its sequence number: a
# replica sends only envelopes it applied, and it applies each chain strictly in order.
_PEER_HOLDS: Final = frozenset(
    {IngestOutcome.APPLIED, IngestOutcome.DUPLICATE, IngestOutcome.PENDING}
)

#: The transition table: which handler runs for a message in a state. Envelopes, acks and
#: authority items are accepted before the peer's hello too, because a transport may reorder.
TRANSITIONS: Final[dict[tuple[SessionState, type], Handler]] = {
    **{(state, Hello): _on_hello for state in _LIVE},
    **{(state, Envelopes): _on_envelopes for state in _LIVE},
    **{(state, Ack): _on_ack for state in _LIVE},
    **{(state, AuthorityItems): _on_authority for state in _LIVE},
    **{(state, Checkpoint): _on_checkpoint for state in _LIVE},
    **{(state, Close): _on_close for state in _LIVE},
}


class SyncSession:
    """Delta-state sync with one peer over any transport.

    Args:
        replica: This side's replica.
        batch_size: Most envelopes in one message.
        live: Push envelopes made or accepted while the session is open.
    """

    def __init__(
        self, replica: Replica, *, batch_size: int = DEFAULT_BATCH_SIZE, live: bool = True
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.replica = replica
        self.batch_size = batch_size
        self.state = SessionState.IDLE
        self.peer_name: str | None = None
        self.peer_grant: Grant | None = None
        self.close_reason = ""
        self.errors: list[ProtocolError] = []
        self.envelopes_sent = 0
        self.envelopes_received = 0
        self._outgoing: list[bytes] = []
        #: Called (no arguments) after each frame is queued for :meth:`data_to_send`, so an IO
        #: driver can wake up for frames made outside its own calls (live pushes from local
        #: writes). It must not raise; the session never calls anything else outward.
        self.on_output: Callable[[], None] | None = None
        self._peer_seq: dict[tuple[str, str], int] = {}
        self._sent_upto: dict[tuple[str, str], int] = {}
        self._in_flight = False
        self._heard_since_tick = False
        # Digests of the delegations the peer is known to hold: all we sent it, all it sent us.
        self._peer_delegations: set[bytes] = set()
        self._unsubscribe: Callable[[], None] | None = None
        if live:
            self._unsubscribe = replica.on_envelope(self._on_local_envelope)

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Queue our hello and authority items (idempotent once started)."""
        if self.state is SessionState.CLOSED:
            raise LocalProtocolError("the session is closed", reason="closed")
        if self.state is SessionState.IDLE:
            self.state = SessionState.HELLO_SENT
            self._send_hello()

    def receive(self, frame: bytes) -> None:
        """Take one frame from the peer; responses are queued for :meth:`data_to_send`.

        Raises:
            RemoteProtocolError: the peer broke the protocol. For an unknown version or a peer
                that cannot be verified the session closes (a close message is queued); for
                an unknown or malformed message it stays usable.
        """
        if self.state is SessionState.CLOSED:
            return
        self._heard_since_tick = True
        try:
            message = decode_message(frame)
        except RemoteProtocolError as exc:
            self.errors.append(exc)
            if exc.reason == "version":
                self.close(f"unsupported protocol version: {exc}")
            raise
        if self.state is SessionState.IDLE and not isinstance(message, Close):
            self.start()
        handler = TRANSITIONS.get((self.state, type(message)))
        if handler is None:  # pragma: no cover - the table covers every live state
            error = RemoteProtocolError(f"{type(message).__name__} in {self.state}", reason="state")
            self.errors.append(error)
            raise error
        handler(self, message)

    def data_to_send(self) -> list[bytes]:
        """Frames to send now, in order; the queue is emptied."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def tick(self) -> None:
        """Repair loss after a timeout: resend the hello and forget the batch in flight."""
        if self.state is SessionState.CLOSED:
            return
        if self.state is SessionState.IDLE:
            self.start()
            return
        self._in_flight = False
        self._sent_upto = dict(self._peer_seq)
        self._send_hello()
        self._heard_since_tick = False
        self._fill()

    def close(self, reason: str = "done") -> None:
        """Queue a close message and stop; idempotent."""
        if self.state is SessionState.CLOSED:
            return
        self._queue(encode_message(Close(reason)))
        self.state = SessionState.CLOSED
        self.close_reason = reason
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    @property
    def caught_up(self) -> bool:
        """True when nothing is in flight and the peer holds every chain we could send it."""
        if self.state is not SessionState.OPEN or self._in_flight:
            return False
        # Items parked for want of a delegation mean an authority exchange is still due.
        # Judged by what the peer acknowledged, never by what was sent: a batch can be lost
        # while a stale or duplicated ack clears the in-flight flag.
        return not self._lacking(acknowledged=True) and not self.replica.awaiting_authority

    # ------------------------------------------------------------------ handlers

    def handle_hello(self, hello: Hello) -> None:
        """Verify the peer, record its frontiers and send what it lacks."""
        replica = self.replica
        try:
            if hello.fleet_id != replica.fleet_id:
                raise RemoteProtocolError(
                    f"peer belongs to fleet {hello.fleet_id!r}", reason="foreign-fleet"
                )
            chain = [Delegation.decode(item) for item in hello.chain]
            now = max(replica.clock.last, Timestamp(replica.clock.physical()))
            grant = verify_chain(replica.anchors, chain, at=now)
            if grant.subject_key_id != hello.key_id:
                raise RemoteProtocolError("hello key is not the chain's subject", reason="identity")
        except (SouverixError, ValueError) as exc:
            error = (
                exc
                if isinstance(exc, RemoteProtocolError)
                else RemoteProtocolError(f"peer identity does not verify: {exc}", reason="identity")
            )
            self.errors.append(error)
            self.close(f"peer rejected: {error}")
            raise error from exc
        replica.add_delegations(hello.chain)
        self.peer_grant = grant
        self.peer_name = hello.replica
        # From now on this replica keeps an outbox (sync debt) for the peer; what the peer says
        # it already holds settles it.
        replica.register_peer(hello.replica, [grant.scope])
        replica.acknowledge(hello.replica, [(r.scope, r.writer, r.seq) for r in hello.frontiers])
        self.state = SessionState.OPEN
        if hello.authority != replica.authority_digest():
            # The peer knows other delegations, revocations or proofs than we do: send ours
            # (its hello to us will bring us its own).
            self._send_authority(repeat_all=True)
        else:
            self._peer_delegations.update(d.digest for d in replica.authority.delegations())
        self._merge_frontiers(hello.frontiers, reset=True)
        self._fill()

    def handle_envelopes(self, message: Envelopes) -> None:
        """Ingest a batch and acknowledge it with our frontiers for the chains it touched."""
        if len(message.items) > max(self.batch_size, 1) * 4:
            error = RemoteProtocolError("batch larger than agreed", reason="batch-size")
            self.errors.append(error)
            raise error
        results = self.replica.ingest_many(message.items, source=self.peer_name)
        self.envelopes_received += len(message.items)
        touched = {(r.scope, r.chain) for r in results if r.chain}
        for result in results:
            if result.chain and result.outcome in _PEER_HOLDS:
                # The peer holds what it sent us: never send it back. That includes envelopes
                # parked here (behind a gap, or until a delegation arrives): once released they
                # are applied without a source, and would otherwise be pushed straight back.
                key = (result.scope, result.chain)
                if result.seq > self._peer_seq.get(key, 0):
                    self._peer_seq[key] = result.seq
        rows = []
        for scope, chain in sorted(touched):
            seq = self.replica.chain_seq(scope, chain)
            rows.append(FrontierRow(scope, chain, seq))
        if any(
            r.outcome is IngestOutcome.PENDING and isinstance(r.error, UnknownDelegationError)
            for r in results
        ):
            # Something waits for a delegation: ask for the peer's authority items again.
            self._send_hello()
        self._queue(encode_message(Ack(tuple(rows))))

    def handle_checkpoint(self, message: Checkpoint) -> None:
        """Jump a chain forward to a writer's snapshot and acknowledge where it now stands."""
        result = self.replica.ingest_checkpoint(message.data, source=self.peer_name)
        rows: tuple[FrontierRow, ...] = ()
        if result.chain:
            seq = self.replica.chain_seq(result.scope, result.chain)
            rows = (FrontierRow(result.scope, result.chain, seq),)
        self._queue(encode_message(Ack(rows)))

    def handle_ack(self, ack: Ack) -> None:
        """Advance the peer's frontiers, settle sync debt, and send the next batch."""
        self._in_flight = False
        self._merge_frontiers(ack.frontiers, reset=False)
        for row in ack.frontiers:
            key = (row.scope, row.writer)
            if row.seq < self._sent_upto.get(key, 0):
                # Sent but not held: lost or parked behind a gap; send again from there.
                self._sent_upto[key] = row.seq
        if self.peer_name is not None:
            self.replica.acknowledge(
                self.peer_name, [(r.scope, r.writer, r.seq) for r in ack.frontiers]
            )
        self._fill()

    def handle_authority(self, items: AuthorityItems) -> None:
        """Learn delegations, revocations and equivocation proofs."""
        replica = self.replica
        self._peer_delegations.update(hashlib.sha256(item).digest() for item in items.delegations)
        replica.add_delegations(items.delegations)
        replica.add_revocations(items.revocations)
        for first, second in items.proofs:
            try:
                replica.add_proof(first, second)
            except SouverixError:
                continue

    # ------------------------------------------------------------------ sending

    def _queue(self, frame: bytes) -> None:
        self._outgoing.append(frame)
        if self.on_output is not None:
            self.on_output()

    def _send_hello(self) -> None:
        replica = self.replica
        rows = tuple(FrontierRow(s, c, q, last) for s, c, q, last in replica.frontiers())
        hello = Hello(
            fleet_id=replica.fleet_id,
            replica=replica.name,
            key_id=replica.identity.key_id,
            chain=tuple(d.encode() for d in replica.identity.chain),
            interest=(str(replica.identity.scope),),
            frontiers=rows,
            authority=replica.authority_digest(),
        )
        self._queue(encode_message(hello))

    def _send_authority(self, *, repeat_all: bool = False) -> None:
        # Delegations the peer sent us or we sent it on this session are not sent again: a
        # hello repeated after every tick would otherwise carry the whole fleet's each time.
        # Revocations and proofs are few and always go.
        replica = self.replica
        known = self._peer_delegations
        delegations = [d for d in replica.authority.delegations() if d.digest not in known]
        if not delegations and repeat_all:
            # The peer's digest still differs from ours after everything was sent once: a
            # frame was lost (or a delegation arrived through another path). Send them all.
            delegations = list(replica.authority.delegations())
        known.update(d.digest for d in delegations)
        items = AuthorityItems(
            delegations=tuple(d.encode() for d in delegations),
            revocations=tuple(replica.revocations()),
            proofs=tuple(replica.proofs()),
        )
        if items.delegations or items.revocations or items.proofs:
            self._queue(encode_message(items))

    def _merge_frontiers(self, rows: Sequence[FrontierRow], *, reset: bool) -> None:
        for row in rows:
            key = (row.scope, row.writer)
            if reset or row.seq > self._peer_seq.get(key, 0):
                self._peer_seq[key] = row.seq
            if reset:
                self._sent_upto[key] = row.seq

    def _interest(self) -> tuple[Scope, ...]:
        return () if self.peer_grant is None else (self.peer_grant.scope,)

    def _lacking(self, *, acknowledged: bool = False) -> list[tuple[str, str, int, int]]:
        """``(scope, chain, peer has, we have)`` for every chain the peer lacks part of.

        By default what was sent counts as had (so nothing is sent twice); with
        ``acknowledged`` only what the peer confirmed does.
        """
        interest = self._interest()
        if not interest:
            return []
        lacking = []
        for scope, chain, seq, _ in self.replica.frontiers(interest):
            have = self._peer_seq.get((scope, chain), 0)
            if not acknowledged:
                have = max(have, self._sent_upto.get((scope, chain), 0))
            if seq > have:
                lacking.append((scope, chain, have, seq))
        return lacking

    def _fill(self) -> None:
        if self.state is not SessionState.OPEN or self._in_flight:
            return
        budget = self.batch_size
        items: list[bytes] = []
        chains: list[str] = []
        for scope, chain, have, _ in self._lacking():
            if budget <= 0:
                break
            checkpoint, batch = self.replica.catch_up(scope, chain, have, budget)
            if checkpoint is not None:
                # The log the peer needs was compacted: the snapshot goes alone, as the
                # unit in flight, and the envelopes after it follow its ack.
                if items:
                    break
                self._send_writer_authority([chain])
                self._queue(encode_message(Checkpoint(checkpoint)))
                self._in_flight = True
                self._sent_upto[(scope, chain)] = read_header(checkpoint).seq
                return
            if not batch:
                continue
            items.extend(batch)
            chains.append(chain)
            budget -= len(batch)
            self._sent_upto[(scope, chain)] = have + len(batch)
        if items:
            self._send_writer_authority(chains)
            self._send_envelopes(items)

    def _send_writer_authority(self, chains: Sequence[str]) -> None:
        """Send the delegation chains of these writers, as far as the peer may lack them.

        A relay learns its zones' delegations after its hello to its parent, so the parent may
        not know the writers of the envelopes it is about to relay. Sent ahead of them, only
        for those writers; otherwise the peer parks the envelopes, acks without them and gets
        the whole batch again once it has asked for authority.
        """
        authority = self.replica.authority
        known = self._peer_delegations
        fresh: dict[bytes, Delegation] = {}
        for chain in chains:
            for leaf in authority.delegations_for(chain_writer(chain)):
                try:
                    links: tuple[Delegation, ...] = authority.chain(leaf.digest)
                except SouverixError:
                    links = (leaf,)  # the peer judges an incomplete chain as we would
                fresh.update((link.digest, link) for link in links if link.digest not in known)
        if fresh:
            known.update(fresh)
            items = AuthorityItems(delegations=tuple(d.encode() for d in fresh.values()))
            self._queue(encode_message(items))

    def _send_envelopes(self, items: list[bytes]) -> None:
        self._queue(encode_message(Envelopes(tuple(items))))
        self._in_flight = True
        self.envelopes_sent += len(items)

    def _on_local_envelope(self, stored: StoredEnvelope, source: str | None) -> None:
        if self.state is not SessionState.OPEN or source == self.peer_name:
            return
        if self._in_flight:
            return  # the next fill after the ack picks it up
        if not self.replica.interested(self._interest(), Scope.parse(stored.scope)):
            # Nothing this peer lacks changed. Skipping the fill matters in a large fleet: it
            # scans every chain the replica holds, and every session hears of every envelope.
            return
        self._fill()
