"""Durable storage adapters: the :class:`Store` interface, in-memory and SQLite."""

from .base import Batch as Batch
from .base import OutboxEntry as OutboxEntry
from .base import OutboxStats as OutboxStats
from .base import StatementHook as StatementHook
from .base import Store as Store
from .base import StoredCheckpoint as StoredCheckpoint
from .base import StoredEnvelope as StoredEnvelope
from .base import StoredItem as StoredItem
from .memory import MemoryStore as MemoryStore
from .sqlite import SqliteStore as SqliteStore

__all__ = [
    "Batch",
    "MemoryStore",
    "OutboxEntry",
    "OutboxStats",
    "SqliteStore",
    "StatementHook",
    "Store",
    "StoredCheckpoint",
    "StoredEnvelope",
    "StoredItem",
]
