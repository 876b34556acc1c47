"""An in-memory :class:`~souverix_crdt.store.base.Store` for tests and ephemeral replicas.

It keeps nothing across processes (``durability == "memory"``) but otherwise behaves exactly like
the SQLite store: same ordering, same idempotence, same atomic :meth:`MemoryStore.commit`, and it
passes the same conformance suite (:mod:`souverix_crdt.testing.conformance`).

Atomicity comes from an undo log rather than from copying the state: every mutation of a commit
records its inverse first, and any exception (including one raised by the statement hook between
steps) replays the inverses newest-first. A commit therefore costs O(batch), not O(store), and the
state after a failure is exactly the state before it, down to the order of the ordered areas.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import TypeVar

from souverix_crdt.errors import StoreError
from souverix_crdt.hlc import Timestamp

from .base import (
    Batch,
    OutboxEntry,
    OutboxStats,
    StatementHook,
    Store,
    StoredCheckpoint,
    StoredEnvelope,
    StoredItem,
)

__all__ = ["MemoryStore"]

_K = TypeVar("_K")
_V = TypeVar("_V")
_Undo = list[Callable[[], None]]
_WriterKey = tuple[str, str]
# Items of the ordered side areas carry an insertion number, so that undoing a removal puts an
# item back in its place (dict order alone would move it to the end).
_Ordered = dict[bytes, tuple[int, StoredItem]]


def _put(mapping: dict[_K, _V], key: _K, value: _V, undo: _Undo) -> None:
    if key in mapping:
        old = mapping[key]
        undo.append(lambda: mapping.__setitem__(key, old))
    else:
        undo.append(lambda: mapping.__delitem__(key))
    mapping[key] = value


def _delete(mapping: dict[_K, _V], key: _K, undo: _Undo) -> None:
    if key in mapping:
        old = mapping.pop(key)
        undo.append(lambda: mapping.__setitem__(key, old))


class _Log:
    """One writer's kept envelopes: a sorted list of sequence numbers and a map to envelopes."""

    __slots__ = ("by_seq", "seqs")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.by_seq: dict[int, StoredEnvelope] = {}

    def insert(self, envelope: StoredEnvelope, undo: _Undo) -> None:
        # Sequence numbers mostly arrive in order, so insort usually appends.
        bisect.insort(self.seqs, envelope.seq)
        self.by_seq[envelope.seq] = envelope

        def revert() -> None:
            del self.seqs[bisect.bisect_left(self.seqs, envelope.seq)]
            del self.by_seq[envelope.seq]

        undo.append(revert)

    def drop_through(self, seq: int, undo: _Undo) -> list[StoredEnvelope]:
        cut = bisect.bisect_right(self.seqs, seq)
        dropped_seqs = self.seqs[:cut]
        dropped = [self.by_seq.pop(s) for s in dropped_seqs]
        del self.seqs[:cut]

        def revert() -> None:
            self.seqs[:0] = dropped_seqs
            self.by_seq.update((e.seq, e) for e in dropped)

        undo.append(revert)
        return dropped


class MemoryStore(Store):
    """A dict-and-list store; atomic commits, no persistence.

    Args:
        statement_hook: Called with a step name before every step of :meth:`commit` (the same
            names the SQLite store uses); raise from it to inject a fault mid-commit.
    """

    durability = "memory"

    def __init__(self, *, statement_hook: StatementHook | None = None) -> None:
        self._hook = statement_hook
        self._closed = False
        # Never reset and never undone: a gap left by a failed commit is harmless. A plain int
        # rather than itertools.count, so that a store can be deep-copied (a "backup").
        self._order = 0
        self._envelopes: dict[bytes, StoredEnvelope] = {}
        self._logs: dict[_WriterKey, _Log] = {}
        self._checkpoints: dict[_WriterKey, StoredCheckpoint] = {}
        self._outbox: dict[str, dict[bytes, tuple[int, OutboxEntry]]] = {}
        self._peer_frontiers: dict[str, dict[_WriterKey, int]] = {}
        self._pending: _Ordered = {}
        self._quarantine: _Ordered = {}
        self._delegations: _Ordered = {}
        self._revocations: _Ordered = {}
        # Audit records are only ever appended (or un-appended by an undo, newest first), so
        # dict insertion order is their order.
        self._audit: dict[bytes, None] = {}
        self._meta: dict[str, bytes] = {}
        self._hlc = Timestamp.ZERO

    # ------------------------------------------------------------------ commit

    def commit(self, batch: Batch) -> None:
        """Apply ``batch`` atomically; on any exception nothing has changed.

        Raises:
            StoreError: ``reason="conflict"`` if an envelope claims a (scope, writer, seq) that
                a different envelope already holds; ``reason="closed"`` after :meth:`close`.
        """
        self._check_open()
        if batch.is_empty():
            return
        undo: _Undo = []
        try:
            self._step("begin")
            self._apply(batch, undo)
            self._step("commit")
        except BaseException:
            for revert in reversed(undo):
                revert()
            raise

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)

    def _apply(self, batch: Batch, undo: _Undo) -> None:
        # Field order is application order, as in the SQLite store: envelopes before compaction,
        # outbox additions before acks, pending and quarantine additions before removals.
        steps: tuple[tuple[str, object, Callable[[], None]], ...] = (
            ("envelopes", batch.envelopes, lambda: self._add_envelopes(batch, undo)),
            ("checkpoints", batch.checkpoints, lambda: self._add_checkpoints(batch, undo)),
            ("compact", batch.compact, lambda: self._compact(batch, undo)),
            ("outbox", batch.outbox, lambda: self._enqueue(batch, undo)),
            ("acked", batch.acked, lambda: self._ack(batch, undo)),
            ("peer_frontiers", batch.peer_frontiers, lambda: self._advance_peers(batch, undo)),
            (
                "pending_add",
                batch.pending_add,
                lambda: self._add_items(self._pending, batch.pending_add, undo),
            ),
            (
                "pending_remove",
                batch.pending_remove,
                lambda: self._remove_pending(batch, undo),
            ),
            (
                "quarantine",
                batch.quarantine_add,
                lambda: self._add_items(self._quarantine, batch.quarantine_add, undo),
            ),
            (
                "quarantine_remove",
                batch.quarantine_remove,
                lambda: self._remove_quarantined(batch, undo),
            ),
            (
                "delegations",
                batch.delegations,
                lambda: self._add_items(self._delegations, batch.delegations, undo),
            ),
            (
                "revocations",
                batch.revocations,
                lambda: self._add_items(self._revocations, batch.revocations, undo),
            ),
            ("audit", batch.audit, lambda: self._append_audit(batch, undo)),
            ("meta", batch.meta, lambda: self._set_meta(batch, undo)),
            ("hlc", batch.hlc is not None, lambda: self._raise_hlc(batch, undo)),
        )
        for name, present, apply in steps:
            if present:
                self._step(name)
                apply()

    def _add_envelopes(self, batch: Batch, undo: _Undo) -> None:
        for envelope in batch.envelopes:
            self._add_envelope(envelope, undo)

    def _add_checkpoints(self, batch: Batch, undo: _Undo) -> None:
        for checkpoint in batch.checkpoints:
            key = (checkpoint.scope, checkpoint.writer)
            kept = self._checkpoints.get(key)
            # A checkpoint is replaced only by a later one; an older or equal one is a no-op.
            if kept is None or checkpoint.seq > kept.seq:
                _put(self._checkpoints, key, checkpoint, undo)

    def _compact(self, batch: Batch, undo: _Undo) -> None:
        for scope, writer, seq in batch.compact:
            log = self._logs.get((scope, writer))
            if log is not None:
                for envelope in log.drop_through(seq, undo):
                    _delete(self._envelopes, envelope.id, undo)

    def _enqueue(self, batch: Batch, undo: _Undo) -> None:
        for entry in batch.outbox:
            queue = self._peer_area(self._outbox, entry.peer, undo)
            if entry.envelope_id not in queue:
                _put(queue, entry.envelope_id, (self._next_order(), entry), undo)

    def _ack(self, batch: Batch, undo: _Undo) -> None:
        for peer, envelope_ids in batch.acked:
            queue = self._outbox.get(peer, {})
            for envelope_id in envelope_ids:
                _delete(queue, envelope_id, undo)

    def _advance_peers(self, batch: Batch, undo: _Undo) -> None:
        for peer, scope, writer, seq in batch.peer_frontiers:
            frontier = self._peer_area(self._peer_frontiers, peer, undo)
            if seq > frontier.get((scope, writer), -1):
                _put(frontier, (scope, writer), seq, undo)

    def _remove_pending(self, batch: Batch, undo: _Undo) -> None:
        for item_id in batch.pending_remove:
            _delete(self._pending, item_id, undo)

    def _remove_quarantined(self, batch: Batch, undo: _Undo) -> None:
        for item_id in batch.quarantine_remove:
            _delete(self._quarantine, item_id, undo)

    def _append_audit(self, batch: Batch, undo: _Undo) -> None:
        for record in batch.audit:
            if record not in self._audit:
                _put(self._audit, record, None, undo)

    def _set_meta(self, batch: Batch, undo: _Undo) -> None:
        for name, value in batch.meta.items():
            _put(self._meta, name, value, undo)

    def _raise_hlc(self, batch: Batch, undo: _Undo) -> None:
        if batch.hlc is not None and batch.hlc > self._hlc:
            old = self._hlc
            undo.append(lambda: setattr(self, "_hlc", old))
            self._hlc = batch.hlc

    def _add_envelope(self, envelope: StoredEnvelope, undo: _Undo) -> None:
        if envelope.id in self._envelopes:
            return
        key = (envelope.scope, envelope.writer)
        log = self._logs.get(key)
        if log is None:
            log = _Log()
            _put(self._logs, key, log, undo)
        held = log.by_seq.get(envelope.seq)
        if held is not None:
            raise StoreError(
                f"{envelope.scope} {envelope.writer} seq {envelope.seq} is already held by "
                f"another envelope",
                reason="conflict",
            )
        log.insert(envelope, undo)
        _put(self._envelopes, envelope.id, envelope, undo)

    def _peer_area(self, areas: dict[str, dict[_K, _V]], peer: str, undo: _Undo) -> dict[_K, _V]:
        area = areas.get(peer)
        if area is None:
            area = {}
            _put(areas, peer, area, undo)
        return area

    def _add_items(self, area: _Ordered, items: Iterable[StoredItem], undo: _Undo) -> None:
        for item in items:
            if item.id not in area:
                _put(area, item.id, (self._next_order(), item), undo)

    # ------------------------------------------------------------------ log

    def envelopes_after(
        self, scope: str, writer: str, seq: int, limit: int
    ) -> list[StoredEnvelope]:
        """Up to ``limit`` envelopes of one writer above ``seq``, in order (none if limit <= 0)."""
        self._check_open()
        log = self._logs.get((scope, writer))
        if log is None or limit <= 0:
            return []
        start = bisect.bisect_right(log.seqs, seq)
        return [log.by_seq[s] for s in log.seqs[start : start + limit]]

    def envelope(self, envelope_id: bytes) -> StoredEnvelope | None:
        """One envelope by id."""
        self._check_open()
        return self._envelopes.get(envelope_id)

    def envelope_at(self, scope: str, writer: str, seq: int) -> StoredEnvelope | None:
        """The envelope a writer published at ``seq`` in ``scope``, if kept."""
        self._check_open()
        log = self._logs.get((scope, writer))
        return None if log is None else log.by_seq.get(seq)

    def frontiers(self) -> dict[tuple[str, str], tuple[int, bytes]]:
        """Per (scope, writer): the highest kept seq (envelope or checkpoint) and its id."""
        self._check_open()
        result: dict[tuple[str, str], tuple[int, bytes]] = {}
        for key, log in self._logs.items():
            if log.seqs:
                top = log.seqs[-1]
                result[key] = (top, log.by_seq[top].id)
        for key, checkpoint in self._checkpoints.items():
            if checkpoint.seq > result.get(key, (-1, b""))[0]:
                result[key] = (checkpoint.seq, b"")
        return result

    def iter_envelopes(self) -> Iterator[StoredEnvelope]:
        """Every kept envelope by scope, writer, seq; a snapshot taken when called."""
        self._check_open()
        snapshot = [log.by_seq[seq] for _, log in sorted(self._logs.items()) for seq in log.seqs]
        return iter(snapshot)

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every kept checkpoint, by scope and writer."""
        self._check_open()
        return [self._checkpoints[key] for key in sorted(self._checkpoints)]

    # ------------------------------------------------------------------ sync bookkeeping

    def outbox(self, peer: str, limit: int) -> list[OutboxEntry]:
        """The peer's oldest entries (by enqueue time, then insertion), oldest first."""
        self._check_open()
        queue = self._outbox.get(peer)
        if not queue or limit <= 0:
            return []
        oldest = heapq.nsmallest(limit, queue.values(), key=lambda e: (e[1].enqueued_at, e[0]))
        return [entry for _, entry in oldest]

    def outbox_stats(self, peer: str) -> OutboxStats:
        """Sync debt towards ``peer``: count, bytes and the oldest enqueue time."""
        self._check_open()
        entries = [entry for _, entry in self._outbox.get(peer, {}).values()]
        if not entries:
            return OutboxStats()
        return OutboxStats(
            count=len(entries),
            bytes=sum(e.size for e in entries),
            oldest=min(e.enqueued_at for e in entries),
        )

    def peers(self) -> list[str]:
        """Peers with outbox entries or acknowledged frontiers, sorted."""
        self._check_open()
        with_debt = {peer for peer, queue in self._outbox.items() if queue}
        with_frontier = {peer for peer, frontier in self._peer_frontiers.items() if frontier}
        return sorted(with_debt | with_frontier)

    def peer_frontiers(self, peer: str) -> dict[tuple[str, str], int]:
        """Per (scope, writer): the highest seq ``peer`` acknowledged."""
        self._check_open()
        return dict(self._peer_frontiers.get(peer, {}))

    # ------------------------------------------------------------------ side areas

    def pending(self) -> list[StoredItem]:
        """Items waiting for what they lack, oldest first."""
        return self._ordered(self._pending)

    def quarantine(self) -> list[StoredItem]:
        """Set-aside envelopes, oldest first."""
        return self._ordered(self._quarantine)

    def delegations(self) -> list[StoredItem]:
        """Every delegation learned, in the order learned."""
        return self._ordered(self._delegations)

    def revocations(self) -> list[StoredItem]:
        """Every revocation learned, in the order learned."""
        return self._ordered(self._revocations)

    def audit(self) -> list[bytes]:
        """Every audit record, in the order appended."""
        self._check_open()
        return list(self._audit)

    def meta(self, key: str) -> bytes | None:
        """A named value."""
        self._check_open()
        return self._meta.get(key)

    def hlc(self) -> Timestamp:
        """The HLC high-water mark; it never moves backwards."""
        self._check_open()
        return self._hlc

    def close(self) -> None:
        """Release the store; later calls raise ``StoreError(reason="closed")``. Idempotent."""
        self._closed = True

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    def _ordered(self, area: _Ordered) -> list[StoredItem]:
        self._check_open()
        return [item for _, item in sorted(area.values(), key=itemgetter(0))]

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed", reason="closed")
