"""The sync session: a sans-IO state machine between this replica and one peer.

Bytes in (:meth:`SyncSession.receive`), bytes out (:meth:`SyncSession.data_to_send`); the
session never awaits, never opens a socket and never reads a clock. Timers belong to the caller,
who calls :meth:`SyncSession.tick` when it decides too long has passed. Randomness (the
handshake nonce) is injected.

The handshake comes first (see :mod:`souverix_crdt.sync.handshake`)::

    IDLE --start--> HELLO_SENT --peer hello verifies--> PROVING --peer proof verifies--> OPEN
         (our hello)            (our proof)                      (our frontiers)

Invariants:

* **Nothing before the proofs.** Until the peer's proof verifies, this side sends only its
  hello and its proof, and takes in nothing but the peer's hello, proof and close: no frontier,
  envelope, ack, authority item or checkpoint is sent, and any that arrive are dropped unread
  (counted in :attr:`SyncSession.dropped`). One early proof and one early frontiers message are
  held, because a reordering transport may deliver them ahead of the hello they follow.
* **Identity comes from the chain.** The peer is whoever its verified delegation chain names —
  key, scope, plane name (:attr:`~souverix_crdt.authority.Grant.plane`) — never a field it
  declares. A chain that does not verify to the pinned anchors, a revoked key, our own key, or
  a plane the injected ``accept`` policy refuses closes the session at the hello.
* **Need to know.** Frontiers, authority items and envelopes flow only for the peer's verified
  interest: its subtree and its ancestors. Authority items are compared and sent for the
  interest both sides share, so a zone never learns a sibling's writers, chains or sequence
  numbers, and what a session carries grows with the peer's interest, not with the fleet.
* Every message after the handshake is idempotent: envelopes are applied at most once (the
  replica orders and deduplicates them), frontiers only grow, authority items are sets.
* What a peer is sent is exactly what it lacks: for every chain of interest, the envelopes after
  the highest sequence number the peer has told us it holds (its frontiers, then its acks).
* At most one batch of at most ``batch_size`` envelopes is in flight. Its ack carries the peer's
  frontiers; a chain whose acked frontier is behind what was sent lost something on the way
  (dropped, or parked by a gap) and is sent again from the acked point.
* Loss is repaired by :meth:`tick`, which the caller invokes after a timeout: before the
  handshake completes it resends our hello and proof; after, our frontiers (so the peer's
  answer refreshes ours) and it forgets the batch in flight.
* A hello repeated by the peer is answered with our proof (and, while we still wait for its
  proof, our hello): the peer may lack either. A *different* hello from the same key means the
  peer started over (it restarted): it must prove itself again, and what it had acknowledged on
  this session is forgotten. Answers to hellos are never hellos that beget hellos, so two
  sides never bounce them for ever.
* The delegation chains of the writers in a batch go to the peer ahead of it, unless the peer is
  known to hold them (a relay hears of its zones' keys after its own hello to its parent), so it
  never parks envelopes for want of them.
* New authority (a delegation, revocation or proof) is pushed to the peer at once where it
  concerns both; a revocation that reaches the peer's own chain closes the session.

Transition table (state, message) → handler, in :data:`TRANSITIONS`. Receiving in ``CLOSED``
is ignored; sending after ``close`` raises :class:`~souverix_crdt.errors.LocalProtocolError`.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Final, NoReturn

from souverix_crdt.authority import Delegation, Grant, verify_chain
from souverix_crdt.envelope import chain_writer, envelope_id, read_header
from souverix_crdt.errors import (
    EquivocationError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SignatureError,
    SouverixError,
    UnknownDelegationError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.refusals import refusal_reason
from souverix_crdt.replica import IngestOutcome, IngestResult, Replica
from souverix_crdt.scope import Scope
from souverix_crdt.store.base import StoredEnvelope

from .handshake import sign_proof, verify_proof
from .messages import (
    MESSAGE_LIMITS,
    NONCE_SIZE,
    Ack,
    AuthorityItems,
    Checkpoint,
    Close,
    Envelopes,
    FrontierRow,
    Frontiers,
    Hello,
    Message,
    Proof,
    decode_message,
    encode_message,
)

__all__ = ["TRANSITIONS", "PeerPolicy", "SessionState", "SyncSession"]

#: Default envelopes per batch.
DEFAULT_BATCH_SIZE: Final = 100

#: Decides, from the peer's verified grant, whether this side syncs with it at all (the
#: configured peers of a plane). Called once per handshake, before anything but the hello and
#: the proof is exchanged.
PeerPolicy = Callable[[Grant], bool]

# Ticks a fork's probe is repeated while its proof has not come back (then it is left to the
# next session: the peer may refuse the probe for a reason of its own).
_FORK_PROBES: Final = 8
# A sequence number past any real one: a chain cut at any point is cut here.
_BEYOND: Final = 2**62


class SessionState(enum.Enum):
    """Where a session is."""

    IDLE = "idle"  # created, nothing sent
    HELLO_SENT = "hello-sent"  # our hello is out; the peer's has not arrived
    PROVING = "proving"  # the peer's hello verified and our proof is out; awaiting its proof
    OPEN = "open"  # both proofs verified: frontiers, envelopes and acks flow
    CLOSED = "closed"  # either side closed; nothing more is sent


Handler = Callable[["SyncSession", Message, bytes], None]


def _on_hello(session: SyncSession, message: Message, frame: bytes) -> None:
    assert isinstance(message, Hello)
    session.handle_hello(message, frame)


def _on_proof(session: SyncSession, message: Message, frame: bytes) -> None:
    assert isinstance(message, Proof)
    session.handle_proof(message)


def _on_frontiers(session: SyncSession, message: Message, frame: bytes) -> None:
    assert isinstance(message, Frontiers)
    session.handle_frontiers(message)


def _on_envelopes(session: SyncSession, message: Message, frame: bytes) -> None:
    assert isinstance(message, Envelopes)
    session.handle_envelopes(message)


def _on_ack(session: SyncSession, message: Message, frame: bytes) -> None:
    assert isinstance(message, Ack)
    session.handle_ack(message)


def _on_authority(session: SyncSession, message: Message, frame: bytes) -> None:
    assert isinstance(message, AuthorityItems)
    session.handle_authority(message)


def _on_checkpoint(session: SyncSession, message: Message, frame: bytes) -> None:
    assert isinstance(message, Checkpoint)
    session.handle_checkpoint(message)


def _on_close(session: SyncSession, message: Message, frame: bytes) -> None:
    assert isinstance(message, Close)
    session.finish(message.reason)


def _hold_frontiers(session: SyncSession, message: Message, frame: bytes) -> None:
    # The peer's frontiers can overtake its proof on a reordering transport: keep the latest
    # (one slot, never read before the proof verifies).
    assert isinstance(message, Frontiers)
    session.early_frontiers = message


def _drop(session: SyncSession, message: Message, frame: bytes) -> None:
    # Before the peer has proved its key nothing it sends is read: not its envelopes, acks,
    # authority items or checkpoints. An honest peer's frames may overtake its proof, and are
    # sent again after the next ack or tick; no error, so reordering cannot close a session.
    session.dropped += 1


_LIVE: Final = (
    SessionState.IDLE,
    SessionState.HELLO_SENT,
    SessionState.PROVING,
    SessionState.OPEN,
)
_HANDSHAKE: Final = (SessionState.IDLE, SessionState.HELLO_SENT, SessionState.PROVING)
_DATA: Final = (Envelopes, Ack, AuthorityItems, Checkpoint)

# Ingest outcomes that prove the peer holds the envelope's chain up to its sequence number: a
# replica sends only envelopes it applied, and it applies each chain strictly in order.
_PEER_HOLDS: Final = frozenset(
    {IngestOutcome.APPLIED, IngestOutcome.DUPLICATE, IngestOutcome.PENDING}
)

#: The transition table: which handler runs for a message in a state. Data messages run only
#: in ``OPEN``; before it they are dropped unread.
TRANSITIONS: Final[dict[tuple[SessionState, type], Handler]] = {
    **{(state, Hello): _on_hello for state in _LIVE},
    **{(state, Proof): _on_proof for state in _LIVE},
    **{(state, Frontiers): _hold_frontiers for state in _HANDSHAKE},
    (SessionState.OPEN, Frontiers): _on_frontiers,
    **{(state, kind): _drop for state in _HANDSHAKE for kind in _DATA},
    (SessionState.OPEN, Envelopes): _on_envelopes,
    (SessionState.OPEN, Ack): _on_ack,
    (SessionState.OPEN, AuthorityItems): _on_authority,
    (SessionState.OPEN, Checkpoint): _on_checkpoint,
    **{(state, Close): _on_close for state in _LIVE},
}


# Outcomes the peer may accept later: offered again after a tick (a budget may free up, a
# far-future timestamp come due).
_FOR_NOW: Final = frozenset({IngestOutcome.REJECTED, IngestOutcome.QUARANTINED})


def _lasting(result: IngestResult) -> bool:
    """True if the peer refused an envelope for a reason no resend can change."""
    if result.outcome is IngestOutcome.EQUIVOCATION:
        return True
    if result.outcome is not IngestOutcome.REJECTED:
        return False
    return isinstance(result.error, EquivocationError) or refusal_reason(result.error) is not None


def _item_digest(first: bytes, second: bytes) -> bytes:
    return hashlib.sha256(first + second).digest()


class SyncSession:
    """Delta-state sync with one peer over any transport, after a mutual handshake.

    Args:
        replica: This side's replica.
        batch_size: Most envelopes in one message.
        live: Push envelopes made or accepted while the session is open.
        accept: Whether to sync with a peer, judged from its verified grant (default: any
            member of the fleet whose chain verifies and is not revoked).
        random_bytes: Source of the handshake nonce (``os.urandom``; injected in tests).
    """

    def __init__(
        self,
        replica: Replica,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        live: bool = True,
        accept: PeerPolicy | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.replica = replica
        self.batch_size = batch_size
        # Frames decode under the replica's budgets (whole-message totals, frame size).
        self._message_limits = MESSAGE_LIMITS.within(
            replica.limits, max_size=replica.limits.max_frame
        )
        self.accept = accept
        self.state = SessionState.IDLE
        #: The peer's plane name, from its verified chain; set once its proof verifies.
        self.peer_name: str | None = None
        #: The peer's verified grant, once its hello verified (its proof may still be due).
        self.peer_grant: Grant | None = None
        self.close_reason = ""
        self.errors: list[ProtocolError] = []
        self.envelopes_sent = 0
        self.envelopes_received = 0
        #: Frames the peer sent before its proof verified, dropped unread.
        self.dropped = 0
        #: The peer's latest frontiers received before its proof (read once it verifies).
        self.early_frontiers: Frontiers | None = None
        self._outgoing: list[bytes] = []
        #: Called (no arguments) after each frame is queued for :meth:`data_to_send`, so an IO
        #: driver can wake up for frames made outside its own calls (live pushes from local
        #: writes). It must not raise; the session never calls anything else outward.
        self.on_output: Callable[[], None] | None = None
        nonce = random_bytes(NONCE_SIZE)
        if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
            raise ValueError(f"random_bytes must return {NONCE_SIZE} bytes")
        self._hello = encode_message(
            Hello(
                fleet_id=replica.fleet_id,
                chain=tuple(d.encode() for d in replica.identity.chain),
                nonce=nonce,
            )
        )
        self._peer_hello: bytes | None = None
        self._peer_chain: tuple[bytes, ...] = ()
        self._proof: bytes | None = None
        self._peer_proof: bytes | None = None
        self._early_proof: Proof | None = None
        self._peer_seq: dict[tuple[str, str], int] = {}
        self._sent_upto: dict[tuple[str, str], int] = {}
        self._in_flight = False
        self._heard_since_tick = False
        # Digests of the authority items (delegations, revocations, proofs) the peer is known
        # to hold: all we sent it, all it sent us.
        self._peer_items: set[bytes] = set()
        self._rebuilds_seen = replica.rebuilds
        # The peer's shared authority digest, as its last frontiers said.
        self._peer_authority: bytes | None = None
        # Per chain, the lowest seq the peer refused for good on this session, or for now
        # (until the next tick).
        self._refused: dict[tuple[str, str], int] = {}
        self._deferred: dict[tuple[str, str], int] = {}
        # Envelopes shown to the peer since the last tick, to find where a fork begins.
        self._probed: set[tuple[str, str, int]] = set()
        # Forks found on this session and not settled here yet: chain → [seq shown, ticks].
        self._forks: dict[tuple[str, str], list[int]] = {}
        #: Envelopes sent outside the batch flow to locate forks.
        self.probes_sent = 0
        self._shared_cache: tuple[int, bytes, list[bytes]] | None = None
        self._unsubscribe: list[Callable[[], None]] = [
            replica.on_authority(self._on_authority_change)
        ]
        if live:
            self._unsubscribe.append(replica.on_envelope(self._on_local_envelope))

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Queue our hello (idempotent once started)."""
        if self.state is SessionState.CLOSED:
            raise LocalProtocolError("the session is closed", reason="closed")
        if self.state is SessionState.IDLE:
            self.state = SessionState.HELLO_SENT
            self._queue(self._hello)

    def receive(self, frame: bytes) -> None:
        """Take one frame from the peer; responses are queued for :meth:`data_to_send`.

        Raises:
            RemoteProtocolError: the peer broke the protocol. For an unknown version, a peer
                that cannot be verified or a proof that does not verify the session closes (a
                close message is queued); for an unknown or malformed message it stays usable.
        """
        if self.state is SessionState.CLOSED:
            return
        self._heard_since_tick = True
        try:
            message = decode_message(frame, self._message_limits)
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
        handler(self, message, frame)

    def data_to_send(self) -> list[bytes]:
        """Frames to send now, in order; the queue is emptied."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def tick(self) -> None:
        """Repair loss after a timeout: resend the handshake, or our frontiers once open."""
        if self.state is SessionState.CLOSED:
            return
        if self.state is SessionState.IDLE:
            self.start()
            return
        self._heard_since_tick = False
        if self.state is not SessionState.OPEN:
            self._queue(self._hello)
            if self._proof is not None:
                self._queue(self._proof)
            return
        self._in_flight = False
        self._sent_upto = dict(self._peer_seq)
        self._probed.clear()  # a probe may have been lost: show it again if still needed
        self._deferred.clear()  # what the peer set aside may fit now
        self._send_frontiers()
        self._probe_forks()
        self._fill()

    def close(self, reason: str = "done") -> None:
        """Queue a close message and stop; idempotent."""
        if self.state is SessionState.CLOSED:
            return
        self._queue(encode_message(Close(reason)))
        self.finish(reason)

    def finish(self, reason: str) -> None:
        """Stop without telling the peer (it closed, or the transport is gone); idempotent."""
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        self.close_reason = reason
        unsubscribe, self._unsubscribe = self._unsubscribe, []
        for stop in unsubscribe:
            stop()

    @property
    def authenticated(self) -> bool:
        """True once the peer's proof verified (and until the session closes)."""
        return self.state is SessionState.OPEN

    @property
    def caught_up(self) -> bool:
        """True when nothing is in flight and the peer holds every chain we could send it."""
        if self.state is not SessionState.OPEN or self._in_flight:
            return False
        # Items parked for want of a delegation mean an authority exchange is still due.
        # Judged by what the peer acknowledged, never by what was sent: a batch can be lost
        # while a stale or duplicated ack clears the in-flight flag.
        return (
            not self._forks_open()
            and not self._lacking(acknowledged=True)
            and not self.replica.awaiting_authority
            and self._peer_authority == self._shared_authority()[0]
        )

    # ------------------------------------------------------------------ handshake

    def _refuse(self, error: RemoteProtocolError, cause: BaseException | None = None) -> NoReturn:
        self.errors.append(error)
        self.close(f"peer rejected: {error}")
        raise error from cause

    def _verify_hello(self, hello: Hello) -> Grant:
        """The grant the hello's chain proves, or a refusal (the session closes)."""
        replica = self.replica
        if hello.fleet_id != replica.fleet_id:
            self._refuse(
                RemoteProtocolError(
                    f"peer belongs to fleet {hello.fleet_id!r}", reason="foreign-fleet"
                )
            )
        try:
            chain = [Delegation.decode(item) for item in hello.chain]
            now = max(replica.clock.last, Timestamp(replica.clock.physical()))
            grant = verify_chain(replica.anchors, chain, at=now)
        except (SouverixError, ValueError) as exc:
            self._refuse(
                RemoteProtocolError(f"peer identity does not verify: {exc}", reason="identity"),
                exc,
            )
        if grant.subject_key_id == replica.identity.key_id:
            self._refuse(RemoteProtocolError("the peer holds our own key", reason="self"))
        if replica.authority.is_cut(grant, grant.scope, _BEYOND):
            self._refuse(RemoteProtocolError(f"{grant.plane}'s key is revoked", reason="revoked"))
        if self.accept is not None and not self.accept(grant):
            self._refuse(
                RemoteProtocolError(
                    f"{grant.plane} is not a peer of {replica.name}", reason="not-a-peer"
                )
            )
        return grant

    def handle_hello(self, hello: Hello, frame: bytes) -> None:
        """Verify the peer's claimed identity and prove ours over this session's transcript."""
        if frame == self._peer_hello:
            # The peer repeats itself: it lacks our proof, or (still waiting) our hello.
            if self.state is SessionState.PROVING:
                self._queue(self._hello)
            if self._proof is not None:
                self._queue(self._proof)
            return
        grant = self._verify_hello(hello)
        if self.peer_grant is not None:
            if grant.subject_key_id != self.peer_grant.subject_key_id:
                error = RemoteProtocolError(
                    "a second identity said hello on this session", reason="identity"
                )
                self.errors.append(error)
                raise error
            # The same key with a new nonce: the peer started over (it restarted). It proves
            # itself again, and what it acknowledged here before is forgotten.
            self._forget_peer()
            self._queue(self._hello)
        self._peer_hello = frame
        self._peer_chain = hello.chain
        self.peer_grant = grant
        self.state = SessionState.PROVING
        key = self.replica.identity.signing_key
        self._proof = encode_message(
            Proof(sign_proof(key, self.replica.fleet_id, self._hello, frame))
        )
        self._queue(self._proof)
        early, self._early_proof = self._early_proof, None
        if early is not None:
            self.handle_proof(early)

    def handle_proof(self, proof: Proof) -> None:
        """Check the peer's proof of key possession; open the session when it holds."""
        if self._peer_hello is None or self.peer_grant is None:
            self._early_proof = proof  # ahead of its hello: one slot, judged when it comes
            return
        if self.state is SessionState.OPEN and proof.signature == self._peer_proof:
            return
        try:
            verify_proof(
                self.peer_grant.subject,
                proof.signature,
                self.replica.fleet_id,
                self._peer_hello,
                self._hello,
            )
        except SignatureError as exc:
            if self.state is SessionState.OPEN:
                # A stale proof (of an earlier hello the peer has since replaced) changes
                # nothing on an open session.
                return
            self._refuse(
                RemoteProtocolError("the peer's proof does not verify", reason="proof"), exc
            )
        self._peer_proof = proof.signature
        if self.state is not SessionState.OPEN:
            self._open()

    def _open(self) -> None:
        grant = self.peer_grant
        assert grant is not None
        replica = self.replica
        self.state = SessionState.OPEN
        self.peer_name = grant.plane
        # Only now is anything the peer sent kept: its chain, then its frontiers.
        replica.add_delegations(self._peer_chain)
        replica.register_peer(grant.plane, [grant.scope])
        self._send_frontiers()
        early, self.early_frontiers = self.early_frontiers, None
        if early is not None:
            self.handle_frontiers(early)

    def _forget_peer(self) -> None:
        self.state = SessionState.PROVING
        self.peer_name = None
        self._peer_proof = None
        self._peer_seq.clear()
        self._sent_upto.clear()
        self._in_flight = False
        self._peer_items.clear()
        self._peer_authority = None
        self._refused.clear()
        self._deferred.clear()
        self._probed.clear()
        self._forks.clear()
        self.early_frontiers = None

    # ------------------------------------------------------------------ handlers

    def handle_frontiers(self, message: Frontiers) -> None:
        """Record the peer's frontiers, settle what they cover, and send what it lacks."""
        replica = self.replica
        assert self.peer_name is not None
        replica.acknowledge(self.peer_name, [(r.scope, r.writer, r.seq) for r in message.rows])
        self._peer_authority = message.authority
        for row in message.rows:
            self._compare_heads(row)
        digest, shared = self._shared_authority()
        if message.authority != digest:
            # The peer knows other delegations, revocations or proofs than we do where our
            # interests meet: send ours (its frontiers to us bring its own).
            self._send_authority(repeat_all=True)
        else:
            self._peer_items.update(shared)
        self._merge_frontiers(message.rows, reset=True)
        self._fill()

    def handle_envelopes(self, message: Envelopes) -> None:
        """Ingest a batch and acknowledge it with our frontiers for the chains it touched."""
        if len(message.items) > max(self.batch_size, 1) * 4:
            error = RemoteProtocolError("batch larger than agreed", reason="batch-size")
            self.errors.append(error)
            raise error
        replica = self.replica
        results = replica.ingest_many(message.items, source=self.peer_name)
        self.envelopes_received += len(message.items)
        touched = {(r.scope, r.chain) for r in results if r.chain}
        refused = []
        deferred = []
        for data, result in zip(message.items, results, strict=True):
            if result.chain and result.outcome in _PEER_HOLDS:
                # The peer holds what it sent us: never send it back. That includes envelopes
                # parked here (behind a gap, or until a delegation arrives): once released they
                # are applied without a source, and would otherwise be pushed straight back.
                key = (result.scope, result.chain)
                if result.seq > self._peer_seq.get(key, 0):
                    self._peer_seq[key] = result.seq
            if result.chain and _lasting(result):
                refused.append(
                    FrontierRow(result.scope, result.chain, result.seq, result.envelope_id)
                )
                if result.outcome is IngestOutcome.EQUIVOCATION or isinstance(
                    result.error, EquivocationError
                ):
                    self._walk_back(result.scope, result.chain, result.seq, data)
            elif result.chain and result.outcome in _FOR_NOW:
                deferred.append(
                    FrontierRow(result.scope, result.chain, result.seq, result.envelope_id)
                )
        rows = []
        for scope, chain in sorted(touched):
            seq, last = replica.chain_head(scope, chain)
            rows.append(FrontierRow(scope, chain, seq, last))
        if any(
            r.outcome is IngestOutcome.PENDING and isinstance(r.error, UnknownDelegationError)
            for r in results
        ):
            # Something waits for a delegation: our frontiers carry our authority digest, and
            # the peer answers a differing one with its items.
            self._send_frontiers()
        self._queue(encode_message(Ack(tuple(rows), tuple(refused), tuple(deferred))))

    def handle_checkpoint(self, message: Checkpoint) -> None:
        """Jump a chain forward to a writer's snapshot and acknowledge where it now stands."""
        result = self.replica.ingest_checkpoint(message.data, source=self.peer_name)
        rows: tuple[FrontierRow, ...] = ()
        if result.chain:
            seq, last = self.replica.chain_head(result.scope, result.chain)
            rows = (FrontierRow(result.scope, result.chain, seq, last),)
        self._queue(encode_message(Ack(rows)))

    def handle_ack(self, ack: Ack) -> None:
        """Advance the peer's frontiers, settle sync debt, and send the next batch."""
        self._in_flight = False
        for row in ack.refused:
            # Refused for a reason that cannot change: never again on this session, nor what
            # follows it on that chain (it extends what was refused).
            key = (row.scope, row.writer)
            self._refused[key] = min(row.seq, self._refused.get(key, row.seq))
        for row in ack.deferred:
            # Refused for now: offered again after the next tick, never in a tight loop.
            key = (row.scope, row.writer)
            self._deferred[key] = min(row.seq, self._deferred.get(key, row.seq))
        self._merge_frontiers(ack.frontiers, reset=False)
        for row in ack.frontiers:
            key = (row.scope, row.writer)
            if row.seq < self._sent_upto.get(key, 0):
                # Sent but not held: lost or parked behind a gap; send again from there.
                self._sent_upto[key] = row.seq
            self._compare_heads(row)
        if self.peer_name is not None:
            self.replica.acknowledge(
                self.peer_name, [(r.scope, r.writer, r.seq) for r in ack.frontiers]
            )
        self._fill()

    def handle_authority(self, items: AuthorityItems) -> None:
        """Learn delegations, revocations and equivocation proofs (each verified on arrival)."""
        replica = self.replica
        version, rebuilds = replica.authority_version, replica.rebuilds
        if items.digest:
            self._peer_authority = items.digest  # where the peer stands, having sent these
        self._peer_items.update(hashlib.sha256(item).digest() for item in items.delegations)
        self._peer_items.update(hashlib.sha256(item).digest() for item in items.revocations)
        self._peer_items.update(_item_digest(a, b) for a, b in items.proofs)
        replica.add_delegations(items.delegations)
        replica.add_revocations(items.revocations)
        for first, second in items.proofs:
            try:
                replica.add_proof(first, second)
            except SouverixError:
                continue
        if (
            replica.authority_version != version
            and replica.rebuilds == rebuilds  # a rebuild already sent our frontiers
            and self.state is SessionState.OPEN
        ):
            # We learned something: tell the peer where our shared authority now stands, so it
            # knows whether we still lack anything (a session is not caught up until we don't).
            # Items with only a digest, not frontiers: frontiers would make the peer resend
            # what it has in flight.
            self._queue(encode_message(AuthorityItems(digest=self._shared_authority()[0])))

    # ------------------------------------------------------------------ forks

    def _compare_heads(self, row: FrontierRow) -> None:
        """The peer holds a chain at our own last seq, under another id: a fork. Show it ours.

        The peer records the equivocation on receiving it, and walks back from there (see
        :meth:`_walk_back`) to the first seq where the branches part.
        """
        if not row.last:
            return
        seq, last = self.replica.chain_head(row.scope, row.writer)
        if seq and row.seq == seq and row.last != last and self._probe(row.scope, row.writer, seq):
            self._note_fork(row.scope, row.writer, seq)

    def _walk_back(self, scope: str, chain: str, seq: int, data: bytes) -> None:
        """Follow a fork down to where the branches part.

        The peer's envelope at ``seq`` conflicts with ours; if it extends another ``seq - 1``
        than ours, the branches part earlier, so show the peer ours there too.
        """
        if seq <= 1:
            return
        try:
            prev = read_header(data).prev
        except SouverixError:
            return
        ours = self.replica.envelope_at(scope, chain, seq - 1)
        if ours is not None and envelope_id(ours) != prev and self._probe(scope, chain, seq - 1):
            self._note_fork(scope, chain, seq - 1)

    def _note_fork(self, scope: str, chain: str, seq: int) -> None:
        # Until a proof at ``seq`` or below is known here, the session is not caught up, and
        # each tick shows the peer our envelope at ``seq`` again (it may have been lost) — a
        # bounded number of times.
        key = (scope, chain)
        held = self._forks.get(key)
        if held is None or seq < held[0]:
            self._forks[key] = [seq, 0]

    def _forks_open(self) -> bool:
        """True while a fork this session found waits for its proof here."""
        for key, (seq, tries) in list(self._forks.items()):
            cut = self.replica.chain_cut(*key)
            if (cut is not None and cut <= seq) or tries >= _FORK_PROBES:
                del self._forks[key]
        return bool(self._forks)

    def _probe_forks(self) -> None:
        if self._forks_open():
            for (scope, chain), entry in self._forks.items():
                entry[1] += 1
                self._probe(scope, chain, entry[0])

    def _probe(self, scope: str, chain: str, seq: int) -> bool:
        """Send our envelope at ``seq`` of a chain, once per tick, outside the batch flow.

        Returns whether we hold one to send (sent now, or already since the last tick).
        """
        key = (scope, chain, seq)
        if key in self._probed:
            return True
        if not self.replica.interested(self._interest(), Scope.parse(scope)):
            return False
        data = self.replica.envelope_at(scope, chain, seq)
        if data is None:
            return False
        self._probed.add(key)
        self.probes_sent += 1
        self._queue(encode_message(Envelopes((data,))))
        return True

    # ------------------------------------------------------------------ sending

    def _queue(self, frame: bytes) -> None:
        self._outgoing.append(frame)
        if self.on_output is not None:
            self.on_output()

    def _send_frontiers(self) -> None:
        grant = self.peer_grant
        assert grant is not None
        rows = tuple(
            FrontierRow(s, c, q, last) for s, c, q, last in self.replica.frontiers((grant.scope,))
        )
        digest, _ = self._shared_authority()
        self._queue(encode_message(Frontiers(rows, digest)))

    def _shares(self, scope: Scope) -> bool:
        """True if an item of ``scope`` concerns both sides (related to both home scopes)."""
        grant = self.peer_grant
        return (
            grant is not None
            and grant.scope.is_related_to(scope)
            and self.replica.identity.scope.is_related_to(scope)
        )

    def _shared_items(self) -> tuple[list[bytes], list[bytes], list[tuple[bytes, bytes]]]:
        """Our delegations, revocations and proofs in the interest both sides share, encoded."""
        authority = self.replica.authority
        delegations = [d.encode() for d in authority.delegations() if self._shares(d.scope)]
        revocations = [
            r.encode()
            for r in authority.revocations()
            if any(self._shares(d.scope) for d in authority.delegations_for(r.revoked))
        ]
        proofs = [
            (first, second)
            for first, second in self.replica.proofs()
            if self._shares(Scope.parse(read_header(first).scope))
        ]
        return delegations, revocations, proofs

    def _shared_authority(self) -> tuple[bytes, list[bytes]]:
        """The digest of the shared items (as the peer computes it too) and their digests.

        Both sides know both grants once the handshake is done, so both filter alike: equal
        shared sets give equal digests, and a zone's digest never depends on its siblings.
        """
        version = self.replica.authority_version
        if self._shared_cache is not None and self._shared_cache[0] == version:
            return self._shared_cache[1], self._shared_cache[2]
        delegations, revocations, proofs = self._shared_items()
        digests = sorted(hashlib.sha256(d).digest() for d in delegations)
        digests += sorted(hashlib.sha256(r).digest() for r in revocations)
        digests += sorted(_item_digest(a, b) for a, b in proofs)
        digest = hashlib.sha256(b"".join(digests)).digest()
        self._shared_cache = (version, digest, digests)
        return digest, digests

    def _send_authority(self, *, repeat_all: bool = False) -> None:
        # Items the peer sent us or we sent it on this session are not sent again: frontiers
        # repeated after every tick would otherwise carry the whole shared authority each time.
        known = self._peer_items
        delegations, revocations, proofs = self._shared_items()

        def fresh(items: Iterable[bytes]) -> tuple[bytes, ...]:
            return tuple(i for i in items if hashlib.sha256(i).digest() not in known)

        digest, _ = self._shared_authority()
        items = AuthorityItems(
            delegations=fresh(delegations),
            revocations=fresh(revocations),
            proofs=tuple(p for p in proofs if _item_digest(*p) not in known),
            digest=digest,
        )
        if repeat_all and not (items.delegations or items.revocations or items.proofs):
            # The peer's digest still differs after everything was sent once: a frame was
            # lost (or an item reached it another way). Send them all.
            items = AuthorityItems(tuple(delegations), tuple(revocations), tuple(proofs), digest)
        known.update(hashlib.sha256(d).digest() for d in items.delegations)
        known.update(hashlib.sha256(r).digest() for r in items.revocations)
        known.update(_item_digest(a, b) for a, b in items.proofs)
        if items.delegations or items.revocations or items.proofs:
            self._queue(encode_message(items))

    def _on_authority_change(self) -> None:
        """New authority reached the replica: a revoked peer goes; the rest travels at once."""
        grant = self.peer_grant
        if self.state is SessionState.CLOSED or grant is None:
            return
        if self.replica.authority.is_cut(grant, grant.scope, _BEYOND):
            if self.state is SessionState.OPEN:
                self._send_authority()  # the revoked plane learns why, then the session ends
            self.close(f"{grant.plane}'s key is revoked")
            return
        if self.state is SessionState.OPEN:
            self._send_authority()
            if self.replica.rebuilds != self._rebuilds_seen:
                # A chain may now hold less than the peer was told (a cut, a proof): tell it,
                # so it sends again what counts now.
                self._rebuilds_seen = self.replica.rebuilds
                self._send_frontiers()

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
        replica = self.replica
        refused, deferred = self._refused, self._deferred
        for scope, chain, held, _ in replica.frontiers(interest):
            seq = held
            if refused:
                # The peer refused an envelope of this chain for good: offer nothing from it.
                stop = refused.get((scope, chain))
                if stop is not None:
                    seq = min(seq, stop - 1)
            if deferred:
                stop = deferred.get((scope, chain))
                if stop is not None:
                    seq = min(seq, stop - 1)
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
        for scope, chain, have, upto in self._lacking():
            if budget <= 0:
                break
            # Never past ``upto``: the log may hold more than counts (an equivocation's cut) or
            # than the peer will take (what it refused for good).
            checkpoint, batch = self.replica.catch_up(scope, chain, have, min(budget, upto - have))
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
        known = self._peer_items
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
