"""Friendly access to one scope of a replica: collections, transactions, change streams.

``replica.scope("global/region-a").policies.set("max-unavailable", "10%")`` writes one key in
its own envelope; ``with replica.transaction("global/region-a") as tx:`` batches several writes
into one envelope, acknowledged by ``tx.receipt`` once durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .document import Change, WriteOp, check_collection
from .lww import Register
from .scope import Scope

if TYPE_CHECKING:
    from .conflicts import ConflictRecord
    from .replica import Receipt, Replica

__all__ = [
    "CollectionHandle",
    "ScopeHandle",
    "Transaction",
    "TransactionCollection",
    "change_stream",
]


class CollectionHandle:
    """One collection (``policies``, ``versions``, ``nodes``, ``meta``) of one scope."""

    def __init__(self, replica: Replica, scope: Scope, name: str) -> None:
        self._replica = replica
        self.scope = scope
        self.name = name

    def get(self, key: str, default: Any = None) -> Any:
        """This scope's own visible value for ``key`` (no inheritance)."""
        return self._replica.get(self.scope, self.name, key, default)

    def effective(self, key: str, default: Any = None) -> Any:
        """The value in force here: this scope's, else the nearest ancestor's."""
        return self._replica.effective(self.scope, self.name, key, default)

    def __getitem__(self, key: str) -> Any:
        marker = object()
        value = self.get(key, marker)
        if value is marker:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        marker = object()
        return isinstance(key, str) and self.get(key, marker) is not marker

    def items(self) -> list[tuple[str, Any]]:
        """Visible ``(key, value)`` pairs, in key order."""
        state = self._replica.fleet.scopes.get(self.scope)
        return [] if state is None else list(state.items(self.name))

    def keys(self) -> list[str]:
        """Visible keys, in order."""
        return [key for key, _ in self.items()]

    def register(self, key: str) -> Register | None:
        """The winning register (value, HLC, writer, version), tombstones included."""
        state = self._replica.fleet.scopes.get(self.scope)
        return None if state is None else state.register(self.name, key)

    def history(self, key: str) -> list[Register]:
        """The key's newest registers, newest first (bounded by the replica's history limit)."""
        state = self._replica.fleet.scopes.get(self.scope)
        return [] if state is None else state.history(self.name, key)

    def set(self, key: str, value: Any) -> Receipt:
        """Write ``value`` under ``key`` in its own envelope; returns once durable."""
        return self._replica.write(self.scope, [WriteOp(self.name, key, value)])

    def delete(self, key: str) -> Receipt:
        """Delete ``key`` (a tombstone register); returns once durable."""
        return self._replica.write(self.scope, [WriteOp(self.name, key, deleted=True)])


class ScopeHandle:
    """Read and write one scope through its collections (``handle.policies`` and the rest)."""

    def __init__(self, replica: Replica, scope: Scope) -> None:
        self._replica = replica
        self.scope = scope
        self.policies = CollectionHandle(replica, scope, "policies")
        self.versions = CollectionHandle(replica, scope, "versions")
        self.nodes = CollectionHandle(replica, scope, "nodes")
        self.meta = CollectionHandle(replica, scope, "meta")

    def collection(self, name: str) -> CollectionHandle:
        """A collection by name.

        Raises:
            UnknownCollectionError: for an unknown collection (an ``InvalidValueError`` and a
                ``KeyError``); the closest name is suggested.
        """
        check_collection(name)
        handle: CollectionHandle = getattr(self, name)
        return handle

    def conflicts(self) -> list[ConflictRecord]:
        """This scope's settled conflicts, in canonical order."""
        return [r for r in self._replica.conflicts() if r.scope == str(self.scope)]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """This scope's own visible values by collection."""
        return self._replica.snapshot().get(str(self.scope), {})


class TransactionCollection:
    """Collects writes to one collection inside a :class:`Transaction`."""

    def __init__(self, transaction: Transaction, name: str) -> None:
        self._transaction = transaction
        self.name = name

    def set(self, key: str, value: Any) -> None:
        """Queue a write (committed when the transaction ends)."""
        self._transaction.ops.append(WriteOp(self.name, key, value))

    def delete(self, key: str) -> None:
        """Queue a delete (committed when the transaction ends)."""
        self._transaction.ops.append(WriteOp(self.name, key, deleted=True))


class Transaction:
    """Several writes to one scope, committed as one envelope when the ``with`` block ends.

    Attributes:
        receipt: Set once the transaction is durable; ``None`` before, or if it failed.
    """

    def __init__(self, replica: Replica, scope: Scope) -> None:
        self._replica = replica
        self.scope = scope
        self.ops: list[WriteOp] = []
        self.receipt: Receipt | None = None
        self.policies = TransactionCollection(self, "policies")
        self.versions = TransactionCollection(self, "versions")
        self.nodes = TransactionCollection(self, "nodes")
        self.meta = TransactionCollection(self, "meta")

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # An exception inside the block abandons the transaction: nothing is written.
        if kind is None and self.ops:
            self.receipt = self._replica.write(self.scope, self.ops)


async def change_stream(replica: Replica) -> AsyncIterator[Change]:
    """Yield every winner change of ``replica`` as it happens (until the consumer stops)."""
    queue: asyncio.Queue[Change] = asyncio.Queue()

    def push(changes: Any) -> None:
        for change in changes:
            queue.put_nowait(change)

    unsubscribe = replica.on_change(push)
    try:
        while True:
            yield await queue.get()
    finally:
        unsubscribe()
