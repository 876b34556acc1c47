"""The Store interface: what a replica needs kept durably, and nothing about how.

A replica hands the store one :class:`Batch` per local transaction or received batch; the store
commits it atomically (all of it or none of it) and only then does the replica give its caller a
receipt. Reading is by small, specific queries, so SQLite can answer from indexes.

Everything stored is either signed bytes the replica can re-verify (envelopes, delegations,
revocations, checkpoints) or small bookkeeping (frontiers, outbox, the HLC high-water mark), so a
replica can always rebuild its documents from its store.

Implementations: :mod:`souverix_crdt.store.memory` (tests) and
:mod:`souverix_crdt.store.sqlite` (the default). Both run the shipped conformance suite in
:mod:`souverix_crdt.testing.conformance`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from typing import TypeAlias

import attrs

from souverix_crdt.hlc import Timestamp

__all__ = [
    "Batch",
    "OutboxEntry",
    "OutboxStats",
    "StatementHook",
    "Store",
    "StoredCheckpoint",
    "StoredEnvelope",
    "StoredItem",
]

#: Called with a short step name (``"begin"``, ``"envelopes"``, ``"commit"``…) before every
#: statement a store executes inside :meth:`Store.commit`. Tests raise from it to inject a fault
#: at statement k (disk full, busy, a crash) and check that the failed commit changed nothing.
StatementHook: TypeAlias = Callable[[str], None]


@attrs.frozen
class StoredEnvelope:
    """A verified envelope as kept in the log.

    Attributes:
        id: SHA-256 of the envelope's bytes.
        scope: Canonical scope path.
        writer: Writer key id.
        seq: The writer's sequence number in that scope.
        hlc: The envelope's timestamp.
        data: The envelope bytes exactly as signed and received.
    """

    id: bytes
    scope: str
    writer: str
    seq: int
    hlc: Timestamp
    data: bytes = attrs.field(repr=False)


@attrs.frozen
class StoredCheckpoint:
    """A writer's signed snapshot of its own document at ``seq`` (replaces the log before it)."""

    scope: str
    writer: str
    seq: int
    data: bytes = attrs.field(repr=False)


@attrs.frozen
class StoredItem:
    """An opaque signed item with an id and a short reason (pending, quarantine, authority)."""

    id: bytes
    data: bytes = attrs.field(repr=False)
    reason: str = ""
    writer: str = ""


@attrs.frozen
class OutboxEntry:
    """An envelope a peer has not acknowledged yet.

    Attributes:
        peer: The peer's name.
        envelope_id: The envelope.
        size: Its size in bytes (for sync debt).
        enqueued_at: Wall time in milliseconds when it was queued (for the debt's age).
    """

    peer: str
    envelope_id: bytes
    size: int
    enqueued_at: int


@attrs.frozen
class OutboxStats:
    """Sync debt towards one peer: count, bytes and the oldest entry's enqueue time."""

    count: int = 0
    bytes: int = 0
    oldest: int | None = None


@attrs.define
class Batch:
    """Everything one replica step changes, committed atomically by :meth:`Store.commit`.

    Attributes:
        envelopes: Envelopes to append to the log (idempotent on id).
        checkpoints: Checkpoints to keep (one per scope and writer; a newer one replaces).
        compact: ``(scope, writer, seq)``: drop log entries of that writer up to ``seq``.
        outbox: Outbox entries to add (idempotent on peer and envelope id).
        acked: ``(peer, envelope ids)`` to remove from the outbox.
        peer_frontiers: ``(peer, scope, writer, seq)``: the highest seq a peer acknowledged.
        pending_add: Items waiting for what they lack (unknown delegation, causal gap).
        pending_remove: Ids leaving the pending area.
        quarantine_add: Far-future or otherwise set-aside envelopes.
        quarantine_remove: Ids leaving the quarantine (their time came, or a budget on reload
            no longer admits them).
        delegations: Signed delegations learned (id = digest).
        revocations: Signed revocations learned.
        audit: Encoded conflict records to append (idempotent on bytes).
        meta: Small named values (``hlc``, identity, epoch…).
        hlc: The HLC high-water mark after this step, if it moved.
    """

    envelopes: list[StoredEnvelope] = attrs.field(factory=list)
    checkpoints: list[StoredCheckpoint] = attrs.field(factory=list)
    compact: list[tuple[str, str, int]] = attrs.field(factory=list)
    outbox: list[OutboxEntry] = attrs.field(factory=list)
    acked: list[tuple[str, Sequence[bytes]]] = attrs.field(factory=list)
    peer_frontiers: list[tuple[str, str, str, int]] = attrs.field(factory=list)
    pending_add: list[StoredItem] = attrs.field(factory=list)
    pending_remove: list[bytes] = attrs.field(factory=list)
    quarantine_add: list[StoredItem] = attrs.field(factory=list)
    quarantine_remove: list[bytes] = attrs.field(factory=list)
    delegations: list[StoredItem] = attrs.field(factory=list)
    revocations: list[StoredItem] = attrs.field(factory=list)
    audit: list[bytes] = attrs.field(factory=list)
    meta: dict[str, bytes] = attrs.field(factory=dict)
    hlc: Timestamp | None = None

    def is_empty(self) -> bool:
        """True if committing would change nothing."""
        return not any(
            (
                self.envelopes,
                self.checkpoints,
                self.compact,
                self.outbox,
                self.acked,
                self.peer_frontiers,
                self.pending_add,
                self.pending_remove,
                self.quarantine_add,
                self.quarantine_remove,
                self.delegations,
                self.revocations,
                self.audit,
                self.meta,
                self.hlc,
            )
        )


class Store(abc.ABC):
    """Durable state of one replica.

    Every method is synchronous and may raise :class:`~souverix_crdt.errors.StoreError` (busy,
    disk full, corrupt); a failed :meth:`commit` leaves the store exactly as it was.
    """

    #: "full" when a commit survives power loss; anything weaker is an explicit opt-in.
    durability: str = "full"

    @abc.abstractmethod
    def commit(self, batch: Batch) -> None:
        """Apply ``batch`` atomically, durably by the time this returns."""

    # ------------------------------------------------------------------ log

    @abc.abstractmethod
    def envelopes_after(
        self, scope: str, writer: str, seq: int, limit: int
    ) -> list[StoredEnvelope]:
        """Up to ``limit`` envelopes of one writer with sequence numbers above ``seq``, in order."""

    @abc.abstractmethod
    def envelope(self, envelope_id: bytes) -> StoredEnvelope | None:
        """One envelope by id."""

    @abc.abstractmethod
    def envelope_at(self, scope: str, writer: str, seq: int) -> StoredEnvelope | None:
        """The envelope a writer published at ``seq`` in ``scope``, if kept."""

    @abc.abstractmethod
    def frontiers(self) -> dict[tuple[str, str], tuple[int, bytes]]:
        """Per (scope, writer): the highest sequence number kept and that envelope's id.

        A checkpoint counts: after compaction the frontier is the checkpoint's seq and the id
        is empty if no envelope at that seq is kept.
        """

    @abc.abstractmethod
    def iter_envelopes(self) -> Iterator[StoredEnvelope]:
        """Every kept envelope, ordered by scope, writer, seq (for rebuilding documents)."""

    @abc.abstractmethod
    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every kept checkpoint."""

    # ------------------------------------------------------------------ sync bookkeeping

    @abc.abstractmethod
    def outbox(self, peer: str, limit: int) -> list[OutboxEntry]:
        """The peer's oldest unacknowledged entries, oldest first."""

    @abc.abstractmethod
    def outbox_stats(self, peer: str) -> OutboxStats:
        """Sync debt towards ``peer``."""

    @abc.abstractmethod
    def peers(self) -> list[str]:
        """Peers with outbox entries or acknowledged frontiers."""

    @abc.abstractmethod
    def peer_frontiers(self, peer: str) -> dict[tuple[str, str], int]:
        """Per (scope, writer): the highest seq ``peer`` acknowledged."""

    # ------------------------------------------------------------------ side areas

    @abc.abstractmethod
    def pending(self) -> list[StoredItem]:
        """Items waiting for what they lack, oldest first."""

    @abc.abstractmethod
    def quarantine(self) -> list[StoredItem]:
        """Set-aside envelopes, oldest first."""

    @abc.abstractmethod
    def delegations(self) -> list[StoredItem]:
        """Every delegation learned, in the order learned."""

    @abc.abstractmethod
    def revocations(self) -> list[StoredItem]:
        """Every revocation learned, in the order learned."""

    @abc.abstractmethod
    def audit(self) -> list[bytes]:
        """Every audit record, in the order appended."""

    @abc.abstractmethod
    def meta(self, key: str) -> bytes | None:
        """A named value."""

    @abc.abstractmethod
    def hlc(self) -> Timestamp:
        """The persisted HLC high-water mark (``Timestamp.ZERO`` for a new store)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store; later calls raise."""
