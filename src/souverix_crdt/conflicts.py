"""Conflict detection, the audit log and conflict notifications.

Two registers of one key *conflict* when their writers differ and neither author had seen the
other's register (:func:`~souverix_crdt.lww.concurrent`). The resolver does not choose anything
of its own: the winner is the strategy's maximum, the same rule that picks the visible value.
It records each conflicting pair once, as a :class:`ConflictRecord` naming winner, loser,
strategy and reason.

Why the log is identical on every replica: a pair is detected when the second of its two
registers arrives, by comparing it with the other writers' retained registers for that key (a
bounded chain per writer and key). Each writer's registers arrive in its sequence order, so its
chain for a key is the same list on every replica, and the set of concurrent pairs found is
the same whatever the interleaving between writers. The log is a set, read back in a canonical
order (by the winner's HLC, then the rest of the record), never in arrival order.

The chains are bounded (``window`` registers per writer and key). Detection is exact as long as a
writer does not overwrite one key more than ``window`` times while another writer's concurrent
write to it is still in flight; past that, the oldest pairs are no longer found on a replica that
learns of them late. The default window (64) is far beyond what fleet configuration sees.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from .hlc import Timestamp
from .lww import KeyRef, RankOf, Register, Strategy, concurrent, order_key
from .naming import describe_writer

__all__ = ["ConflictLog", "ConflictRecord", "RegisterId", "find_concurrent", "settle"]


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


def find_concurrent(register: Register, chains: Mapping[str, deque[Register]]) -> list[Register]:
    """The registers of other writers' chains (for one key) that ``register`` conflicts with."""
    found: list[Register] = []
    for writer, chain in chains.items():
        if writer == register.writer:
            continue
        seen = register.context.get(writer)
        # Newest first: once a register is older than what the author had seen, every
        # earlier one is too (a writer's chain is in its own order, which is HLC order).
        for other in reversed(chain):
            if seen is not None and other.hlc <= seen:
                break
            if concurrent(register, other):
                found.append(other)
    return found


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
