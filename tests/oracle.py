"""A plain-Python model of the register layer, used as the oracle in convergence tests.

It knows nothing of pycrdt, msgpack or the library's index: a write is a record with the id of
its writer and transaction; a replica's view of a key is the newest write of each writer it has
received; the causal past of a write (for its key) is everything its author's view had seen.
Winners, conflicts and history are then computed straight from their definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from souverix_crdt.hlc import Timestamp
from souverix_crdt.lww import Strategy

Key = tuple[str, str, str]  # scope, collection, key
WriteId = tuple[str, int]  # writer, transaction number of that writer


@dataclass(frozen=True)
class ModelWrite:
    """One register as the model sees it."""

    writer: str
    tx: int
    hlc: Timestamp
    value: Any
    deleted: bool
    seen: frozenset[WriteId]

    @property
    def id(self) -> WriteId:
        return (self.writer, self.tx)


@dataclass
class ModelReplica:
    """What one replica has received: per key, the newest write of each writer."""

    heads: dict[Key, dict[str, ModelWrite]] = field(default_factory=dict)
    applied: set[WriteId] = field(default_factory=set)

    def receive(self, key: Key, write: ModelWrite) -> None:
        heads = self.heads.setdefault(key, {})
        mine = heads.get(write.writer)
        if mine is None or write.tx > mine.tx:
            heads[write.writer] = write

    def seen_for(self, key: Key, writer: str) -> frozenset[WriteId]:
        """The causal past a new write by ``writer`` to ``key`` would have."""
        seen: set[WriteId] = set()
        for head in self.heads.get(key, {}).values():
            seen |= head.seen
            seen.add(head.id)
        return frozenset(seen)


@dataclass
class Model:
    """Every write ever made, and the replicas' views."""

    strategy: Strategy
    rank: Callable[[str], int]
    writes: dict[Key, list[ModelWrite]] = field(default_factory=dict)

    def order(self, write: ModelWrite) -> tuple[Any, ...]:
        if self.strategy is Strategy.AUTHORITY_PRECEDENCE:
            return (self.rank(write.writer), write.hlc, write.writer)
        return (write.hlc, write.writer)

    def record(self, key: Key, write: ModelWrite) -> None:
        self.writes.setdefault(key, []).append(write)

    def final_heads(self, key: Key) -> list[ModelWrite]:
        newest: dict[str, ModelWrite] = {}
        for write in self.writes.get(key, []):
            if write.writer not in newest or write.tx > newest[write.writer].tx:
                newest[write.writer] = write
        return list(newest.values())

    @staticmethod
    def supersedes(newer: ModelWrite, older: ModelWrite) -> bool:
        """``newer``'s author had seen ``older`` (another writer's), and it is dated later."""
        return newer.writer != older.writer and older.id in newer.seen and newer.hlc > older.hlc

    def winner(self, heads: list[ModelWrite]) -> ModelWrite:
        """Under authority precedence, the greatest head no other head supersedes."""
        if self.strategy is Strategy.AUTHORITY_PRECEDENCE:
            heads = [h for h in heads if not any(self.supersedes(o, h) for o in heads)]
        return max(heads, key=self.order)

    def state(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Visible values: per key, the winner among each writer's newest write."""
        view: dict[str, dict[str, dict[str, Any]]] = {}
        for scope, collection, key in sorted(self.writes):
            best = self.winner(self.final_heads((scope, collection, key)))
            if not best.deleted:
                view.setdefault(scope, {}).setdefault(collection, {})[key] = best.value
        return view

    def conflicts(
        self, history: int = 16, per_key: int = 256
    ) -> set[tuple[Key, tuple[str, Timestamp], tuple[str, Timestamp]]]:
        """Pairs of writes to one key where neither author had seen the other.

        Only pairs among the key's ``history`` greatest writes count, and per key only the
        ``per_key`` greatest pairs (by winner, then loser): the bound every replica applies.
        """
        pairs = set()
        for key, every in self.writes.items():
            writes = sorted(every, key=self.order, reverse=True)[:history]
            found = []
            for i, a in enumerate(writes):
                for b in writes[i + 1 :]:
                    if a.writer == b.writer or a.id in b.seen or b.id in a.seen:
                        continue
                    win, lose = (a, b) if self.order(a) > self.order(b) else (b, a)
                    found.append(((win.hlc, win.writer), (lose.hlc, lose.writer)))
            for (win_hlc, win_writer), (lose_hlc, lose_writer) in sorted(found)[-per_key:]:
                pairs.add((key, (win_writer, win_hlc), (lose_writer, lose_hlc)))
        return pairs

    def history(self, key: Key, limit: int) -> list[tuple[str, Timestamp]]:
        """The ``limit`` greatest writes of a key under the strategy, greatest first."""
        ordered = sorted(self.writes.get(key, []), key=self.order, reverse=True)
        return [(w.writer, w.hlc) for w in ordered[:limit]]
