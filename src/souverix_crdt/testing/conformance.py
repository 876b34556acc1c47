"""The store conformance suite: what every :class:`~souverix_crdt.store.base.Store` does.

Every store (memory, SQLite, any other backend) runs the same checks, the way automerge-repo's
storage adapters run its shipped adapter tests. A store describes itself with a factory and,
if it persists, a way to reopen it; the suite does the rest::

    suite = StoreConformance(make_store=lambda *, statement_hook=None: MemoryStore(
        statement_hook=statement_hook))
    suite.run_all()

or, one pytest test per check::

    @pytest.mark.parametrize("name", StoreConformance.check_names(reopen=True))
    def test_conformance(name: str, tmp_path: Path) -> None:
        make_suite(tmp_path).run(name)

The contract the checks hold a store to (beyond the docstrings of the interface):

* A commit is atomic: when it raises, for whatever reason and at whatever statement, every query
  answers as before, and the next commit succeeds. An empty batch changes nothing.
* Batch fields apply in their declared order: envelopes, checkpoints, compaction, outbox
  additions, acks, peer frontiers, pending additions, pending removals, and so on.
* Additions are idempotent on their key (envelope id; peer and envelope id; item id; audit
  bytes): a repeat is ignored and keeps the first copy, its place in the order and its data.
* A second envelope at a (scope, writer, seq) that a different envelope already holds is refused
  with ``StoreError(reason="conflict")``; the whole batch is refused.
* A checkpoint is replaced only by one with a higher seq. Compaction drops a writer's envelopes up
  to a seq. ``frontiers()`` is the maximum over kept envelopes and the checkpoint: the id is the
  envelope's if one is kept at that seq, else ``b""``.
* The outbox is ordered by enqueue time, ties by insertion; ``limit <= 0`` returns nothing.
  Peer frontiers and the HLC high-water mark only move forward. ``meta("hlc")`` is the caller's
  named value, independent of :meth:`~souverix_crdt.store.base.Store.hlc`.
* Pending items, quarantine, delegations, revocations and audit records keep insertion order;
  an item removed from pending and added again goes to the end.
* After ``close()`` (idempotent) every method raises ``StoreError(reason="closed")``.
* With ``reopen``: everything committed, orders included, survives close and reopen, and a
  commit that failed left nothing behind on disk.

Fault injection: :meth:`StoreConformance.check_failed_commit_changes_nothing` gives the factory a
:class:`FaultInjector` as ``statement_hook`` and makes the k-th statement of a commit raise, for
every k in turn, with an ordinary exception and with a ``BaseException`` (an interrupt).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol, TypeVar

import attrs

from souverix_crdt.errors import StoreError
from souverix_crdt.hlc import MAX_LOGICAL, MAX_WALL, Timestamp
from souverix_crdt.store.base import (
    Batch,
    OutboxEntry,
    OutboxStats,
    StatementHook,
    Store,
    StoredCheckpoint,
    StoredEnvelope,
    StoredItem,
)

__all__ = [
    "ConformanceError",
    "FaultInjector",
    "InjectedFault",
    "InjectedInterrupt",
    "Reopen",
    "StoreConformance",
    "StoreFactory",
    "StoreSnapshot",
    "sample_batch",
    "sample_envelope",
    "snapshot_store",
]


class StoreFactory(Protocol):
    """Makes a new, empty store; the suite passes a fault hook when it injects faults."""

    def __call__(self, *, statement_hook: StatementHook | None = None) -> Store:
        """Return a new, empty store that calls ``statement_hook`` before each statement."""


#: Closes the given store and opens another over the same data.
Reopen = Callable[[Store], Store]
#: Every query's answer, by a readable name; equal snapshots mean indistinguishable stores.
StoreSnapshot = dict[str, object]

_Check = Callable[["StoreConformance"], None]
_CheckT = TypeVar("_CheckT", bound=_Check)

#: Requirements of each check, by method name, in definition order (the order checks run in).
_REQUIREMENTS: dict[str, frozenset[str]] = {}

_SCOPE: Final = "global/region-a"
_OTHER_SCOPE: Final = "global/region-b"
#: Large enough to mean "all of it" in the snapshot's paged queries.
_ALL: Final = 1_000_000


class ConformanceError(AssertionError):
    """A store broke the contract; the message names the check and what went wrong."""


class InjectedFault(Exception):  # noqa: N818 - it is the fault itself, not an error report
    """The ordinary exception a :class:`FaultInjector` raises by default."""


class InjectedInterrupt(BaseException):
    """A ``BaseException`` (like ``KeyboardInterrupt``) for checking rollback on anything."""


class FaultInjector:
    """A :data:`~souverix_crdt.store.base.StatementHook` that raises at one chosen statement.

    It records every step name it is called with. After :meth:`arm` with ``at=k``, the
    k-th call from then on (counting from 0) raises ``error()`` and the injector disarms itself,
    so the next commit runs clean.

    Attributes:
        steps: Every step name seen, in order.
        fired: Whether the armed fault has been raised.
    """

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.fired = False
        self._countdown: int | None = None
        self._error: Callable[[], BaseException] = InjectedFault

    def arm(self, at: int, error: Callable[[], BaseException] = InjectedFault) -> None:
        """Raise ``error()`` at the ``at``-th statement from now (0 is the next one)."""
        if at < 0:
            raise ValueError(f"at must be >= 0: {at}")
        self._countdown = at
        self._error = error
        self.fired = False

    def disarm(self) -> None:
        """Stop injecting; statements run normally."""
        self._countdown = None

    def __call__(self, step: str) -> None:
        """Record ``step``; raise the armed fault if this is its statement."""
        self.steps.append(step)
        if self._countdown is None:
            return
        if self._countdown > 0:
            self._countdown -= 1
            return
        self._countdown = None
        self.fired = True
        raise self._error()


# --------------------------------------------------------------------------- sample data


def sample_envelope(
    scope: str,
    writer: str,
    seq: int,
    *,
    hlc: Timestamp | None = None,
    data: bytes | None = None,
) -> StoredEnvelope:
    """A deterministic envelope whose id is the SHA-256 of its data, as in the real log."""
    body = f"{scope}|{writer}|{seq}".encode() if data is None else data
    return StoredEnvelope(
        id=hashlib.sha256(body).digest(),
        scope=scope,
        writer=writer,
        seq=seq,
        hlc=Timestamp(1_000 + seq, seq % 3) if hlc is None else hlc,
        data=body,
    )


def _item(name: str, reason: str = "", writer: str = "") -> StoredItem:
    return StoredItem(
        id=name.encode(), data=f"data of {name}".encode(), reason=reason, writer=writer
    )


def sample_batch(n: int) -> Batch:
    """Batch ``n`` of a deterministic sequence; each touches every field of :class:`Batch`.

    Applied in order 0, 1, 2…, each batch also acts on the previous one's data: it compacts
    the earlier log, acknowledges an earlier outbox entry and removes an earlier pending and
    quarantined item.
    """
    fresh = [sample_envelope(_SCOPE, "w-a", 3 * n + k) for k in (1, 2, 3)]
    other = sample_envelope(_OTHER_SCOPE, "w-b", n + 1, data=bytes(range(n % 7)) * 40 + b"!")
    previous = sample_envelope(_SCOPE, "w-a", 3 * n - 2) if n else None
    return Batch(
        envelopes=[fresh[2], fresh[0], fresh[1], other],
        checkpoints=[StoredCheckpoint(_SCOPE, "w-a", 3 * n + 1, f"checkpoint {n}".encode())],
        compact=[(_SCOPE, "w-a", 3 * n)],
        # Enqueue times run backwards, so outbox order differs from insertion order.
        outbox=[
            OutboxEntry("p1", e.id, len(e.data), 10_000 - 10 * n - k) for k, e in enumerate(fresh)
        ]
        + [OutboxEntry("p2", other.id, len(other.data), 10_000)],
        acked=[("p1", [previous.id])] if previous is not None else [],
        peer_frontiers=[("p1", _SCOPE, "w-a", 3 * n + 2), ("p1", _SCOPE, "w-a", 1)],
        pending_add=[_item(f"pending-{n}", "gap", "w-a"), _item(f"pending-{n}-b", "delegation")],
        pending_remove=[f"pending-{n - 1}-b".encode()],
        quarantine_add=[_item(f"quarantine-{n}", "clock-skew", "w-b")],
        quarantine_remove=[f"quarantine-{n - 1}".encode()],
        delegations=[_item(f"delegation-{n}")],
        revocations=[_item(f"revocation-{n}")],
        audit=[f"audit-{n}".encode(), f"audit-{max(n - 1, 0)}".encode()],
        meta={"epoch": n.to_bytes(4, "big"), f"key-{n}": b"v"},
        hlc=Timestamp(5_000 + n, n),
    )


# --------------------------------------------------------------------------- snapshots


def snapshot_store(store: Store, probes: Iterable[Batch] = ()) -> StoreSnapshot:
    """Ask ``store`` every query and return the answers by name.

    The store's own answers say which writers and peers to ask about; ``probes`` add the ids,
    writers, peers and meta keys of batches (committed or not) so that a stray write to a key
    nobody lists would still show.
    """
    envelope_ids: set[bytes] = set()
    writers: set[tuple[str, str]] = set(store.frontiers())
    peers: set[str] = set(store.peers())
    meta_keys: set[str] = {"hlc", "schema_version"}
    for batch in probes:
        envelope_ids.update(e.id for e in batch.envelopes)
        envelope_ids.update(o.envelope_id for o in batch.outbox)
        writers.update((e.scope, e.writer) for e in batch.envelopes)
        writers.update((c.scope, c.writer) for c in batch.checkpoints)
        writers.update((s, w) for s, w, _ in batch.compact)
        peers.update(o.peer for o in batch.outbox)
        peers.update(p for p, _ in batch.acked)
        peers.update(p for p, _, _, _ in batch.peer_frontiers)
        meta_keys.update(batch.meta)
    logged = list(store.iter_envelopes())
    envelope_ids.update(e.id for e in logged)
    snapshot: StoreSnapshot = {
        "frontiers": store.frontiers(),
        "iter_envelopes": logged,
        "checkpoints": store.checkpoints(),
        "peers": store.peers(),
        "pending": store.pending(),
        "quarantine": store.quarantine(),
        "delegations": store.delegations(),
        "revocations": store.revocations(),
        "audit": store.audit(),
        "hlc": store.hlc(),
    }
    for envelope_id in sorted(envelope_ids):
        snapshot[f"envelope({envelope_id.hex()[:16]})"] = store.envelope(envelope_id)
    for scope, writer in sorted(writers):
        snapshot[f"envelopes_after({scope}, {writer})"] = store.envelopes_after(
            scope, writer, 0, _ALL
        )
    for peer in sorted(peers):
        snapshot[f"outbox({peer})"] = store.outbox(peer, _ALL)
        snapshot[f"outbox_stats({peer})"] = store.outbox_stats(peer)
        snapshot[f"peer_frontiers({peer})"] = store.peer_frontiers(peer)
    for key in sorted(meta_keys):
        snapshot[f"meta({key})"] = store.meta(key)
    return snapshot


def _describe_difference(actual: StoreSnapshot, expected: StoreSnapshot) -> str:
    absent = "<absent>"
    return "\n".join(
        f"  {key}: expected {expected.get(key, absent)!r}, got {actual.get(key, absent)!r}"
        for key in sorted(set(actual) | set(expected))
        if actual.get(key, absent) != expected.get(key, absent)
    )


# --------------------------------------------------------------------------- the suite


def _check(*requires: str) -> Callable[[_CheckT], _CheckT]:
    """Register a check method; ``requires`` names the hooks it needs (``"reopen"``)."""

    def register(method: _CheckT) -> _CheckT:
        _REQUIREMENTS[method.__name__] = frozenset(requires)
        return method

    return register


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


def _expect_equal(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise ConformanceError(f"{what}: expected {expected!r}, got {actual!r}")


def _expect_same(actual: StoreSnapshot, expected: StoreSnapshot, what: str) -> None:
    if actual != expected:
        raise ConformanceError(f"{what}:\n{_describe_difference(actual, expected)}")


def _expect_raises(
    error: type[BaseException], call: Callable[[], object], what: str
) -> BaseException:
    try:
        result = call()
    except error as exc:
        return exc
    except BaseException as exc:
        raise ConformanceError(
            f"{what}: expected {error.__name__}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise ConformanceError(f"{what}: expected {error.__name__}, got {result!r}")


@attrs.frozen(kw_only=True)
class StoreConformance:
    """The conformance checks, bound to one store implementation.

    Attributes:
        make_store: Makes a new, empty store per call (each check closes the ones it makes).
        reopen: Closes a store and reopens its data; enables the persistence checks.
    """

    make_store: StoreFactory
    reopen: Reopen | None = None

    # ------------------------------------------------------------------ running

    @classmethod
    def check_names(cls, *, reopen: bool = False) -> tuple[str, ...]:
        """The names of the checks that apply to a store, in the order they run.

        Args:
            reopen: The store persists and a ``reopen`` hook is available.
        """
        have = {"reopen"} if reopen else set()
        return tuple(name for name, needs in _REQUIREMENTS.items() if needs <= have)

    def applicable_checks(self) -> tuple[str, ...]:
        """The names of the checks that apply to this store."""
        return self.check_names(reopen=self.reopen is not None)

    def run(self, name: str) -> None:
        """Run one check by name.

        Raises:
            ConformanceError: if the store fails the check.
            ValueError: if there is no such check or it does not apply to this store.
        """
        if name not in self.applicable_checks():
            known = "does not apply to this store" if name in _REQUIREMENTS else "is unknown"
            raise ValueError(f"check {name!r} {known}")
        check: Callable[[], None] = getattr(self, name)
        try:
            check()
        except ConformanceError as exc:
            raise ConformanceError(f"{name}: {exc}") from exc

    def run_all(self) -> tuple[str, ...]:
        """Run every applicable check; return their names.

        Raises:
            ConformanceError: at the first check the store fails.
        """
        names = self.applicable_checks()
        for name in names:
            self.run(name)
        return names

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _store(self, statement_hook: StatementHook | None = None) -> Iterator[Store]:
        store = self.make_store(statement_hook=statement_hook)
        try:
            yield store
        finally:
            store.close()

    def _reopened(self, store: Store) -> Store:
        assert self.reopen is not None  # only checks that require "reopen" get here
        return self.reopen(store)

    # ------------------------------------------------------------------ basics

    @_check()
    def check_new_store_is_empty(self) -> None:
        """Every query on a new store answers "nothing"."""
        with self._store() as store:
            _expect_equal(store.frontiers(), {}, "frontiers")
            _expect_equal(list(store.iter_envelopes()), [], "iter_envelopes")
            _expect_equal(store.envelopes_after(_SCOPE, "w-a", 0, 10), [], "envelopes_after")
            _expect_equal(store.envelope(b"\x00" * 32), None, "envelope")
            _expect_equal(store.envelope_at(_SCOPE, "w-a", 1), None, "envelope_at")
            _expect_equal(store.checkpoints(), [], "checkpoints")
            _expect_equal(store.outbox("p1", 10), [], "outbox")
            _expect_equal(store.outbox_stats("p1"), OutboxStats(), "outbox_stats")
            _expect_equal(store.peers(), [], "peers")
            _expect_equal(store.peer_frontiers("p1"), {}, "peer_frontiers")
            for area in ("pending", "quarantine", "delegations", "revocations", "audit"):
                _expect_equal(getattr(store, area)(), [], area)
            _expect_equal(store.meta("epoch"), None, "meta")
            _expect_equal(store.hlc(), Timestamp.ZERO, "hlc")

    @_check()
    def check_empty_batch_is_a_no_op(self) -> None:
        """Committing an empty batch changes no answer."""
        with self._store() as store:
            store.commit(sample_batch(0))
            before = snapshot_store(store, [sample_batch(0)])
            store.commit(Batch())
            _expect_same(snapshot_store(store, [sample_batch(0)]), before, "after an empty batch")

    @_check()
    def check_envelopes_round_trip(self) -> None:
        """Envelopes come back field for field, by id, by position and in log order."""
        edge = [
            sample_envelope(_SCOPE, "w-a", 1, hlc=Timestamp(MAX_WALL, MAX_LOGICAL), data=b""),
            sample_envelope(_SCOPE, "w-a", 2, hlc=Timestamp.ZERO, data=bytes(range(256)) * 300),
            sample_envelope(_SCOPE, "w-a", 2**62),
        ]
        others = [
            sample_envelope(s, w, q) for s, w, q in [(_OTHER_SCOPE, "w-a", 1), (_SCOPE, "w-0", 5)]
        ]
        with self._store() as store:
            store.commit(Batch(envelopes=[edge[2], others[0], edge[0]]))
            store.commit(Batch(envelopes=[others[1], edge[1]]))
            for envelope in edge + others:
                _expect_equal(store.envelope(envelope.id), envelope, "envelope(id)")
                _expect_equal(
                    store.envelope_at(envelope.scope, envelope.writer, envelope.seq),
                    envelope,
                    "envelope_at",
                )
            _expect_equal(store.envelope_at(_SCOPE, "w-a", 3), None, "envelope_at a missing seq")
            expected_order = sorted(edge + others, key=lambda e: (e.scope, e.writer, e.seq))
            _expect_equal(list(store.iter_envelopes()), expected_order, "iter_envelopes order")

    @_check()
    def check_envelopes_after_order_and_limit(self) -> None:
        """``envelopes_after`` answers one writer's seqs above ``seq`` in order, up to ``limit``."""
        log = {seq: sample_envelope(_SCOPE, "w-a", seq) for seq in range(1, 11)}
        with self._store() as store:
            for seqs in ([7, 2, 9], [1, 10, 4], [3, 8, 5, 6]):
                store.commit(Batch(envelopes=[log[s] for s in seqs]))
            store.commit(Batch(envelopes=[sample_envelope(_SCOPE, "w-b", 4)]))

            def seqs_after(seq: int, limit: int, writer: str = "w-a") -> list[int]:
                return [e.seq for e in store.envelopes_after(_SCOPE, writer, seq, limit)]

            _expect_equal(seqs_after(0, 3), [1, 2, 3], "first three")
            _expect_equal(seqs_after(3, 100), [4, 5, 6, 7, 8, 9, 10], "after 3")
            _expect_equal(seqs_after(9, 1), [10], "after 9, limit 1")
            _expect_equal(seqs_after(10, 5), [], "after the last")
            _expect_equal(seqs_after(0, 0), [], "limit 0")
            _expect_equal(seqs_after(0, 10, "w-b"), [4], "another writer")
            _expect_equal(seqs_after(0, 10, "w-c"), [], "an unknown writer")
            _expect_equal(store.envelopes_after(_OTHER_SCOPE, "w-a", 0, 10), [], "another scope")

    @_check()
    def check_duplicate_envelopes_are_ignored(self) -> None:
        """The same envelope twice (in one batch or two) is kept once."""
        envelope = sample_envelope(_SCOPE, "w-a", 1)
        with self._store() as store:
            store.commit(Batch(envelopes=[envelope, envelope]))
            store.commit(Batch(envelopes=[envelope]))
            _expect_equal(list(store.iter_envelopes()), [envelope], "iter_envelopes")
            _expect_equal(store.frontiers(), {(_SCOPE, "w-a"): (1, envelope.id)}, "frontiers")

    @_check()
    def check_conflicting_envelope_is_refused(self) -> None:
        """A different envelope at a held (scope, writer, seq) refuses the whole batch."""
        held = sample_envelope(_SCOPE, "w-a", 1)
        rival = sample_envelope(_SCOPE, "w-a", 1, data=b"another payload")
        with self._store() as store:
            store.commit(Batch(envelopes=[held]))
            attempt = sample_batch(0)
            attempt.envelopes.append(rival)
            before = snapshot_store(store, [attempt])
            error = _expect_raises(StoreError, lambda: store.commit(attempt), "conflicting commit")
            _expect_equal(getattr(error, "reason", None), "conflict", "error reason")
            _expect_same(snapshot_store(store, [attempt]), before, "after the refused batch")
            store.commit(sample_batch(0))  # the store is still usable

    # ------------------------------------------------------------------ checkpoints, frontiers

    @_check()
    def check_frontiers_checkpoints_and_compaction(self) -> None:
        """Frontiers are the max over kept envelopes and checkpoints; compaction drops a prefix."""
        log = [sample_envelope(_SCOPE, "w-a", seq) for seq in range(1, 6)]
        key = (_SCOPE, "w-a")
        with self._store() as store:
            store.commit(Batch(envelopes=log))
            _expect_equal(store.frontiers(), {key: (5, log[4].id)}, "envelopes only")
            checkpoint3 = StoredCheckpoint(_SCOPE, "w-a", 3, b"state at 3")
            store.commit(Batch(checkpoints=[checkpoint3], compact=[(_SCOPE, "w-a", 3)]))
            _expect_equal(store.checkpoints(), [checkpoint3], "checkpoints")
            _expect_equal(store.frontiers(), {key: (5, log[4].id)}, "checkpoint below the log")
            _expect_equal(
                [e.seq for e in store.envelopes_after(_SCOPE, "w-a", 0, 10)], [4, 5], "compacted"
            )
            _expect_equal(store.envelope(log[0].id), None, "a compacted envelope by id")
            _expect_equal(store.envelope_at(_SCOPE, "w-a", 3), None, "a compacted envelope at")

            checkpoint5 = StoredCheckpoint(_SCOPE, "w-a", 5, b"state at 5")
            store.commit(Batch(checkpoints=[checkpoint5]))
            _expect_equal(store.frontiers(), {key: (5, log[4].id)}, "checkpoint at the last seq")
            store.commit(Batch(compact=[(_SCOPE, "w-a", 5)]))
            _expect_equal(store.frontiers(), {key: (5, b"")}, "log compacted into a checkpoint")
            _expect_equal(list(store.iter_envelopes()), [], "iter_envelopes after compaction")

            older = StoredCheckpoint(_SCOPE, "w-a", 4, b"state at 4")
            same = StoredCheckpoint(_SCOPE, "w-a", 5, b"another state at 5")
            store.commit(Batch(checkpoints=[older, same]))
            _expect_equal(store.checkpoints(), [checkpoint5], "older or equal checkpoints")

            ahead = StoredCheckpoint(_OTHER_SCOPE, "w-b", 8, b"state at 8")
            loose = sample_envelope(_OTHER_SCOPE, "w-c", 2)
            store.commit(Batch(checkpoints=[ahead], envelopes=[loose]))
            store.commit(Batch(compact=[(_OTHER_SCOPE, "w-c", 9), (_OTHER_SCOPE, "w-x", 1)]))
            _expect_equal(
                store.frontiers(),
                {key: (5, b""), (_OTHER_SCOPE, "w-b"): (8, b"")},
                "checkpoint without envelopes; log compacted without a checkpoint",
            )
            _expect_equal(store.checkpoints(), [checkpoint5, ahead], "checkpoints by scope")

    @_check()
    def check_batch_fields_apply_in_order(self) -> None:
        """Within one batch, compaction follows appends, acks follow enqueues, removals adds."""
        envelope = sample_envelope(_SCOPE, "w-a", 1)
        with self._store() as store:
            store.commit(
                Batch(
                    envelopes=[envelope],
                    compact=[(_SCOPE, "w-a", 1)],
                    outbox=[OutboxEntry("p1", envelope.id, 10, 1)],
                    acked=[("p1", [envelope.id])],
                    pending_add=[_item("x")],
                    pending_remove=[b"x"],
                )
            )
            _expect_equal(list(store.iter_envelopes()), [], "appended then compacted")
            _expect_equal(store.outbox_stats("p1"), OutboxStats(), "enqueued then acked")
            _expect_equal(store.pending(), [], "added then removed")

    # ------------------------------------------------------------------ outbox and peers

    @_check()
    def check_outbox_order_stats_and_acks(self) -> None:
        """Outbox: oldest first (ties by insertion), idempotent adds, acks, debt statistics."""
        ids = [bytes([i]) * 32 for i in range(6)]
        entries = [
            OutboxEntry("p1", ids[0], 100, 50),
            OutboxEntry("p1", ids[1], 200, 20),
            OutboxEntry("p1", ids[2], 300, 50),
            OutboxEntry("p1", ids[3], 400, 10),
            OutboxEntry("p2", ids[4], 7, 99),
        ]
        with self._store() as store:
            store.commit(Batch(outbox=entries[:2]))
            store.commit(Batch(outbox=entries[2:]))
            expected = [entries[3], entries[1], entries[0], entries[2]]
            _expect_equal(store.outbox("p1", 10), expected, "outbox order")
            _expect_equal(store.outbox("p1", 2), expected[:2], "outbox limit")
            _expect_equal(store.outbox("p1", 0), [], "outbox limit 0")
            _expect_equal(store.outbox_stats("p1"), OutboxStats(4, 1000, 10), "stats")
            _expect_equal(store.outbox_stats("p2"), OutboxStats(1, 7, 99), "stats of p2")
            _expect_equal(store.peers(), ["p1", "p2"], "peers")

            store.commit(Batch(outbox=[OutboxEntry("p1", ids[3], 1, 1), entries[0]]))
            _expect_equal(store.outbox("p1", 10), expected, "a repeated entry keeps the first")

            store.commit(Batch(acked=[("p1", [ids[3], ids[5]]), ("p3", [ids[0]])]))
            _expect_equal(store.outbox("p1", 10), expected[1:], "after acks")
            _expect_equal(store.outbox_stats("p1"), OutboxStats(3, 600, 20), "stats after acks")
            store.commit(Batch(acked=[("p2", [ids[4]])]))
            _expect_equal(store.outbox_stats("p2"), OutboxStats(), "stats of an empty outbox")
            _expect_equal(store.peers(), ["p1"], "a peer without debt or frontier")

            store.commit(Batch(outbox=[OutboxEntry("p1", ids[3], 400, 10)]))
            _expect_equal(store.outbox("p1", 1), [entries[3]], "re-queued after its ack")

    @_check()
    def check_peer_frontiers_keep_the_maximum(self) -> None:
        """A peer's acknowledged frontier only moves forward."""
        with self._store() as store:
            store.commit(Batch(peer_frontiers=[("p1", _SCOPE, "w-a", 5)]))
            store.commit(Batch(peer_frontiers=[("p1", _SCOPE, "w-a", 3)]))
            _expect_equal(store.peer_frontiers("p1"), {(_SCOPE, "w-a"): 5}, "lower seq ignored")
            store.commit(
                Batch(
                    peer_frontiers=[
                        ("p1", _SCOPE, "w-a", 4),
                        ("p1", _SCOPE, "w-a", 9),
                        ("p1", _SCOPE, "w-a", 7),
                        ("p1", _SCOPE, "w-b", 0),
                        ("p2", _OTHER_SCOPE, "w-a", 2),
                    ]
                )
            )
            _expect_equal(
                store.peer_frontiers("p1"),
                {(_SCOPE, "w-a"): 9, (_SCOPE, "w-b"): 0},
                "maximum within a batch",
            )
            _expect_equal(store.peer_frontiers("p2"), {(_OTHER_SCOPE, "w-a"): 2}, "another peer")
            _expect_equal(store.peers(), ["p1", "p2"], "peers with frontiers only")

    # ------------------------------------------------------------------ side areas, meta, hlc

    @_check()
    def check_pending_add_and_remove(self) -> None:
        """Pending keeps insertion order; a removed item added again goes to the end."""
        a, b, c = _item("a", "gap", "w-a"), _item("b", "delegation"), _item("c")
        with self._store() as store:
            store.commit(Batch(pending_add=[a, b]))
            store.commit(Batch(pending_add=[c, StoredItem(b"a", b"other data", "other")]))
            _expect_equal(store.pending(), [a, b, c], "order; a repeated id keeps the first")
            store.commit(Batch(pending_remove=[b"b", b"unknown"]))
            _expect_equal(store.pending(), [a, c], "after a removal")
            store.commit(Batch(pending_add=[b]))
            _expect_equal(store.pending(), [a, c, b], "re-added at the end")

    @_check()
    def check_quarantine_add_and_remove(self) -> None:
        """An item leaves the quarantine by id; one added again goes to the end."""
        a, b, c = (_item(name, "clock-skew", "w-b") for name in ("qa", "qb", "qc"))
        with self._store() as store:
            store.commit(Batch(quarantine_add=[a, b, c]))
            store.commit(Batch(quarantine_remove=[b"qb", b"unknown"]))
            _expect_equal(store.quarantine(), [a, c], "after a removal")
            store.commit(Batch(quarantine_add=[b], quarantine_remove=[b"qa"]))
            _expect_equal(store.quarantine(), [c, b], "re-added at the end")

    @_check()
    def check_ordered_areas(self) -> None:
        """Quarantine, delegations, revocations and audit keep first-insertion order."""
        with self._store() as store:
            for n in range(3):
                store.commit(
                    Batch(
                        quarantine_add=[_item(f"q{n}", "clock-skew", "w-b"), _item("q0")],
                        delegations=[_item(f"d{2 - n}"), _item("d2")],
                        revocations=[_item(f"r{n}"), _item(f"r{n}")],
                        audit=[f"audit {n}".encode(), b"audit 0"],
                    )
                )
            _expect_equal(
                store.quarantine(),
                [
                    _item("q0", "clock-skew", "w-b"),
                    _item("q1", "clock-skew", "w-b"),
                    _item("q2", "clock-skew", "w-b"),
                ],
                "quarantine",
            )
            _expect_equal(
                store.delegations(), [_item("d2"), _item("d1"), _item("d0")], "delegations"
            )
            _expect_equal(
                store.revocations(), [_item("r0"), _item("r1"), _item("r2")], "revocations"
            )
            _expect_equal(store.audit(), [b"audit 0", b"audit 1", b"audit 2"], "audit")

    @_check()
    def check_meta_values(self) -> None:
        """Named values are set and overwritten independently; ``meta("hlc")`` is the caller's."""
        with self._store() as store:
            store.commit(Batch(meta={"identity": b"node-1", "epoch": b"\x01", "empty": b""}))
            store.commit(Batch(meta={"epoch": b"\x02", "hlc": b"caller's"}, hlc=Timestamp(7, 0)))
            _expect_equal(store.meta("identity"), b"node-1", "untouched key")
            _expect_equal(store.meta("epoch"), b"\x02", "overwritten key")
            _expect_equal(store.meta("empty"), b"", "empty value")
            _expect_equal(store.meta("missing"), None, "missing key")
            _expect_equal(store.meta("hlc"), b"caller's", "meta('hlc')")
            _expect_equal(store.hlc(), Timestamp(7, 0), "hlc() beside meta('hlc')")

    @_check()
    def check_hlc_never_goes_backwards(self) -> None:
        """The HLC high-water mark keeps the maximum ever committed."""
        with self._store() as store:
            steps = [
                (Timestamp(5, 0), Timestamp(5, 0)),
                (Timestamp(3, 9), Timestamp(5, 0)),
                (Timestamp(5, 1), Timestamp(5, 1)),
                (Timestamp(5, 0), Timestamp(5, 1)),
                (Timestamp(2**40, 0), Timestamp(2**40, 0)),
                (Timestamp(MAX_WALL, MAX_LOGICAL), Timestamp(MAX_WALL, MAX_LOGICAL)),
                (Timestamp.ZERO, Timestamp(MAX_WALL, MAX_LOGICAL)),
            ]
            for committed, expected in steps:
                store.commit(Batch(hlc=committed))
                _expect_equal(store.hlc(), expected, f"after committing {committed!r}")

    @_check()
    def check_closed_store_refuses_calls(self) -> None:
        """After ``close()`` (idempotent) every method raises ``StoreError(reason="closed")``."""
        store = self.make_store()
        store.commit(sample_batch(0))
        store.close()
        store.close()
        calls: dict[str, Callable[[], object]] = {
            "commit": lambda: store.commit(sample_batch(1)),
            "envelopes_after": lambda: store.envelopes_after(_SCOPE, "w-a", 0, 10),
            "envelope": lambda: store.envelope(b"x"),
            "envelope_at": lambda: store.envelope_at(_SCOPE, "w-a", 1),
            "frontiers": store.frontiers,
            "iter_envelopes": lambda: list(store.iter_envelopes()),
            "checkpoints": store.checkpoints,
            "outbox": lambda: store.outbox("p1", 10),
            "outbox_stats": lambda: store.outbox_stats("p1"),
            "peers": store.peers,
            "peer_frontiers": lambda: store.peer_frontiers("p1"),
            "pending": store.pending,
            "quarantine": store.quarantine,
            "delegations": store.delegations,
            "revocations": store.revocations,
            "audit": store.audit,
            "meta": lambda: store.meta("epoch"),
            "hlc": store.hlc,
        }
        for name, call in calls.items():
            error = _expect_raises(StoreError, call, f"{name} after close")
            _expect_equal(getattr(error, "reason", None), "closed", f"{name} error reason")

    # ------------------------------------------------------------------ atomicity

    @_check()
    def check_failed_commit_changes_nothing(self) -> None:
        """A fault at any statement of a commit leaves every answer unchanged; retrying works."""
        setup, batch = sample_batch(0), sample_batch(1)
        with self._store() as reference:
            reference.commit(setup)
            reference.commit(batch)
            expected = snapshot_store(reference, [setup, batch])
        errors: tuple[Callable[[], BaseException], ...] = (InjectedFault, InjectedInterrupt)
        for error in errors:
            statements = 0
            for at in itertools.count():
                injector = FaultInjector()
                with self._store(statement_hook=injector) as store:
                    store.commit(setup)
                    before = snapshot_store(store, [setup, batch])
                    injector.arm(at, error)
                    try:
                        store.commit(batch)
                    except (InjectedFault, InjectedInterrupt) as exc:
                        _expect(injector.fired, f"{type(exc).__name__} escaped unarmed")
                        state = snapshot_store(store, [setup, batch])
                        what = f"after {error.__name__} at statement {at} ({injector.steps[-1]})"
                        _expect_same(state, before, what)
                        store.commit(batch)
                        state = snapshot_store(store, [setup, batch])
                        _expect_same(state, expected, f"retry {what}")
                        continue
                    _expect(not injector.fired, f"the fault at statement {at} was swallowed")
                    _expect_same(snapshot_store(store, [setup, batch]), expected, "clean commit")
                    statements = at
                    break
            _expect(statements > 0, "the store never called its statement_hook during a commit")

    @_check("reopen")
    def check_failed_commit_leaves_nothing_on_disk(self) -> None:
        """After a fault mid-commit, a reopened store holds only what was committed before."""
        setup, batch = sample_batch(0), sample_batch(1)
        for at in (0, 1, 2, 4, 8):
            injector = FaultInjector()
            store = self.make_store(statement_hook=injector)
            try:
                store.commit(setup)
                before = snapshot_store(store, [setup, batch])
                injector.arm(at)
                with contextlib.suppress(InjectedFault):
                    store.commit(batch)
                store = self._reopened(store)
                _expect_same(snapshot_store(store, [setup, batch]), before, f"fault at {at}")
            finally:
                store.close()

    # ------------------------------------------------------------------ persistence

    @_check("reopen")
    def check_everything_survives_reopen(self) -> None:
        """Everything committed, orders included, survives close and reopen; commits continue."""
        batches = [sample_batch(n) for n in range(4)]
        with self._store() as reference:
            for batch in batches:
                reference.commit(batch)
            expected = snapshot_store(reference, batches)
        store = self.make_store()
        try:
            for batch in batches[:3]:
                store.commit(batch)
            store = self._reopened(store)
            store.commit(batches[3])
            store = self._reopened(store)
            _expect_same(snapshot_store(store, batches), expected, "after reopening")
            _expect_equal(store.hlc(), batches[3].hlc, "hlc after reopening")
        finally:
            store.close()
