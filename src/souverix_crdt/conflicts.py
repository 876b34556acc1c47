"""Conflict detection, the audit log and conflict notifications.

Two registers of one key *conflict* when their writers differ and neither author had seen the
other's register (:func:`~souverix_crdt.lww.concurrent`). The resolver does not choose anything
of its own: the winner is the strategy's maximum, the same rule that picks the visible value.
It records each conflicting pair once, as a :class:`ConflictRecord` naming winner, loser,
strategy and reason.

Why the log is identical on every replica: conflicts are found among the key's *history*, its
``history_limit`` greatest registers under the strategy's order, taken over every register the
replica has indexed for the key. The greatest N of a set do not depend on the order its members
arrived in, so history, and the concurrent pairs inside it, are a function of the registers a
replica holds: of the envelopes it accepted, and of what the checkpoints it started from carry
(each writer's past registers still in some history). A conflict stays in the log while both of
its registers are in the key's history; when newer registers push one out, the record leaves
the log on every replica alike. Per key, the log shows at most ``conflicts_per_key`` records,
the greatest under the records' own order (:func:`bounded`). Recording a register costs one
comparison per register in the key's history, however many chains wrote the key before.

The log is a set, read back in a canonical order (by the winner's HLC, then the rest of the
record), never in arrival order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from .hlc import Timestamp
from .lww import KeyRef, RankOf, Register, Strategy, order_key
from .naming import describe_writer

__all__ = ["ConflictLog", "ConflictRecord", "RegisterId", "bounded", "settle"]


@attrs.frozen(order=True)
class RegisterId:
    """Identifies one register of a key: writer, HLC and version."""

    hlc: Timestamp
    writer: str
    version: int

    @classmethod
    def of(cls, register: Register) -> RegisterId:
        """The id of ``register``."""
        return cls(register.hlc, register.writer, register.version)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {"hlc": str(self.hlc), "writer": self.writer, "version": self.version}


@attrs.frozen(order=True)
class ConflictRecord:
    """One settled conflict: two concurrent registers of one key and how it was decided.

    Attributes:
        winner: The register the strategy ranks higher.
        loser: The other one.
        scope: The scope path.
        collection: ``policies``, ``versions``, ``nodes`` or ``meta``.
        key: The key inside the collection.
        strategy: The strategy's name, e.g. ``last-writer-wins``.
        reason: Why the winner won: ``authority-rank``, ``later-hlc`` or ``writer-id-tiebreak``.
        winner_plane: The plane the winner's verified delegation names (``""`` if not known).
        loser_plane: The same for the loser.

    The plane names are for people: they are filled in by
    :meth:`~souverix_crdt.replica.Replica.conflicts` from the writers' verified delegations,
    and take no part in equality or order, so the log is the same set whoever names it.
    """

    winner: RegisterId
    loser: RegisterId
    scope: str
    collection: str
    key: str
    strategy: str
    reason: str
    winner_plane: str = attrs.field(default="", eq=False, order=False)
    loser_plane: str = attrs.field(default="", eq=False, order=False)

    def __str__(self) -> str:
        winner = describe_writer(self.winner_plane, self.winner.writer)
        loser = describe_writer(self.loser_plane, self.loser.writer)
        return (
            f"{self.scope} {self.collection}.{self.key}: {winner} (hlc {self.winner.hlc}, "
            f"v{self.winner.version}) won over {loser} (hlc {self.loser.hlc}, "
            f"v{self.loser.version}); {self.strategy}, {self.reason}"
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form, for the audit CLI and the views."""
        return {
            "scope": self.scope,
            "collection": self.collection,
            "key": self.key,
            "strategy": self.strategy,
            "reason": self.reason,
            "winner": {**self.winner.to_json(), "plane": self.winner_plane},
            "loser": {**self.loser.to_json(), "plane": self.loser_plane},
        }


def settle(
    a: Register,
    b: Register,
    *,
    scope: str,
    ref: KeyRef,
    strategy: Strategy,
    rank_of: RankOf,
) -> ConflictRecord:
    """Build the record for two concurrent registers: which wins under ``strategy``, and why."""
    key_a, key_b = order_key(a, strategy, rank_of), order_key(b, strategy, rank_of)
    win, lose = (a, b) if key_a > key_b else (b, a)
    if strategy is Strategy.AUTHORITY_PRECEDENCE and rank_of(win.writer) != rank_of(lose.writer):
        reason = "authority-rank"
    elif win.hlc != lose.hlc:
        reason = "later-hlc"
    else:
        reason = "writer-id-tiebreak"
    return ConflictRecord(
        winner=RegisterId.of(win),
        loser=RegisterId.of(lose),
        scope=scope,
        collection=ref[0],
        key=ref[1],
        strategy=strategy.value,
        reason=reason,
    )


def bounded(records: Iterable[ConflictRecord], limit: int) -> set[ConflictRecord]:
    """The ``limit`` greatest of one key's records (all of them if there are no more)."""
    kept = set(records)
    if len(kept) <= limit:
        return kept
    return set(sorted(kept)[-limit:])


class ConflictLog:
    """The audit log of settled conflicts: a set, read in canonical order; with subscribers."""

    __slots__ = ("_records", "_subscribers")

    def __init__(self) -> None:
        self._records: set[ConflictRecord] = set()
        self._subscribers: list[Callable[[ConflictRecord], None]] = []

    def add(self, record: ConflictRecord) -> bool:
        """Record ``record``; notify subscribers if it is new. Returns whether it was new."""
        if record in self._records:
            return False
        self._records.add(record)
        for callback in list(self._subscribers):
            callback(record)
        return True

    def discard(self, record: ConflictRecord) -> None:
        """Forget ``record`` (its key's history no longer holds both of its registers)."""
        self._records.discard(record)

    def subscribe(self, callback: Callable[[ConflictRecord], None]) -> Callable[[], None]:
        """Call ``callback`` for every new record; returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def records(self) -> list[ConflictRecord]:
        """Every record, in canonical order (identical on converged replicas)."""
        return sorted(self._records)

    def clear(self) -> None:
        """Forget every record (before a rebuild)."""
        self._records.clear()

    def discard_scope(self, scope: str) -> None:
        """Forget one scope's records (before that scope is replayed from its log)."""
        self._records = {r for r in self._records if r.scope != scope}

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[ConflictRecord]:
        return iter(self.records())
