"""Durable storage adapters: the :class:`Store` interface, in-memory and SQLite."""

from .base import Batch as Batch
from .base import OutboxEntry as OutboxEntry
from .base import OutboxStats as OutboxStats
from .base import Store as Store
from .base import StoredCheckpoint as StoredCheckpoint
from .base import StoredEnvelope as StoredEnvelope
from .base import StoredItem as StoredItem

__all__ = [
    "Batch",
    "OutboxEntry",
    "OutboxStats",
    "Store",
    "StoredCheckpoint",
    "StoredEnvelope",
    "StoredItem",
]
