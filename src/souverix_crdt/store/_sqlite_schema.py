"""The SQLite store's schema, its version check and the translation of SQLite errors.

Layout decisions (the why; the DDL below is the what):

* ``meta`` holds the store's own rows only (``schema_version``, ``hlc``); the caller's named
  values live in ``named_values``, so a caller writing ``meta["hlc"]`` cannot clobber the
  high-water mark or the schema version.
* Timestamps are stored as their 12-byte big-endian encoding, not as two integer columns: a wall
  time may use all 64 unsigned bits and SQLite integers are signed. The encoding sorts like the
  timestamp, so ``max()`` on the blob is ``max()`` on the time.
* The ordered side areas (pending, quarantine, delegations, revocations, audit) take their order
  from an ``AUTOINCREMENT`` key that is never reused, and are idempotent through a ``UNIQUE``
  column. The outbox orders by enqueue time, then by its rowid (insertion order among live rows).
* Every read path has an index: ``envelopes`` by id and by (scope, writer, seq), ``outbox`` by
  (peer, envelope id) and by (peer, enqueue time).
"""

from __future__ import annotations

import sqlite3
from typing import Final

from souverix_crdt.errors import (
    CorruptStoreError,
    DiskFullError,
    SchemaVersionError,
    StoreBusyError,
    StoreError,
)

__all__ = ["SCHEMA_VERSION", "corrupt", "ensure_schema", "translate_error"]

#: The schema this code reads and writes. Any other version is refused, never migrated blindly.
SCHEMA_VERSION: Final = 1

_SIDE_AREA = """(
    ord INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    data BLOB NOT NULL,
    reason TEXT NOT NULL,
    writer TEXT NOT NULL
)"""

_DDL: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
    "CREATE TABLE named_values (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    """CREATE TABLE envelopes (
        id BLOB PRIMARY KEY,
        scope TEXT NOT NULL,
        writer TEXT NOT NULL,
        seq INTEGER NOT NULL,
        hlc BLOB NOT NULL,
        data BLOB NOT NULL,
        UNIQUE (scope, writer, seq)
    )""",
    """CREATE TABLE checkpoints (
        scope TEXT NOT NULL,
        writer TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (scope, writer)
    )""",
    """CREATE TABLE outbox (
        ord INTEGER PRIMARY KEY,
        peer TEXT NOT NULL,
        envelope_id BLOB NOT NULL,
        size INTEGER NOT NULL,
        enqueued_at INTEGER NOT NULL,
        UNIQUE (peer, envelope_id)
    )""",
    # The rowid is implicitly the last column of every index, so this one also serves
    # ORDER BY enqueued_at, ord without a sort.
    "CREATE INDEX outbox_by_age ON outbox (peer, enqueued_at)",
    """CREATE TABLE peer_frontiers (
        peer TEXT NOT NULL,
        scope TEXT NOT NULL,
        writer TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (peer, scope, writer)
    ) WITHOUT ROWID""",
    f"CREATE TABLE pending {_SIDE_AREA}",
    f"CREATE TABLE quarantine {_SIDE_AREA}",
    f"CREATE TABLE delegations {_SIDE_AREA}",
    f"CREATE TABLE revocations {_SIDE_AREA}",
    "CREATE TABLE audit (ord INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL UNIQUE)",
)

_TABLES: Final = "SELECT name FROM sqlite_master WHERE type = 'table'"


def ensure_schema(connection: sqlite3.Connection) -> None:
    """Create the schema in a new database, or check the version of an existing one.

    Raises:
        SchemaVersionError: the database is another application's, or another schema version.
        sqlite3.Error: left to the caller to translate.
    """
    if not _table_names(connection):
        # Re-check under the write lock: another process may be creating the same store.
        connection.execute("BEGIN IMMEDIATE")
        try:
            if not _table_names(connection):
                for statement in _DDL:
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    tables = _table_names(connection)
    if "meta" not in tables or "envelopes" not in tables:
        raise SchemaVersionError(
            f"not a souverix store (tables: {', '.join(sorted(tables))})", reason="not-a-store"
        )
    row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    found = None if row is None else row[0]
    if found != SCHEMA_VERSION:
        newer = isinstance(found, int) and found > SCHEMA_VERSION
        raise SchemaVersionError(
            f"store schema version {found!r}; this library reads version {SCHEMA_VERSION}",
            reason="newer" if newer else "unknown",
        )


def _table_names(connection: sqlite3.Connection) -> set[str]:
    # sqlite_sequence appears on its own once an AUTOINCREMENT table exists; it is not ours.
    return {name for (name,) in connection.execute(_TABLES)} - {"sqlite_sequence"}


def translate_error(exc: sqlite3.Error) -> StoreError:
    """Map a ``sqlite3`` error to the typed store error the caller can act on.

    The primary result code decides when SQLite raised the error; errors raised by hand (a test's
    statement hook) carry no code, so their message decides.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    message = str(exc)
    lowered = message.lower()
    if isinstance(exc, sqlite3.IntegrityError):
        # Every insert ignores duplicates of its key; only a second envelope at a (scope,
        # writer, seq) that is already held can violate a constraint.
        return StoreError(f"conflicting write: {message}", reason="conflict")
    if primary in {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED} or any(
        word in lowered for word in ("database is locked", "busy", "table is locked")
    ):
        return StoreBusyError(f"store is busy: {message}", reason="busy")
    if primary == sqlite3.SQLITE_FULL or "disk is full" in lowered:
        return DiskFullError(f"disk full: {message}", reason="disk-full")
    if primary in {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB} or any(
        word in lowered for word in ("not a database", "malformed")
    ):
        return CorruptStoreError(f"store is corrupt: {message}", reason="corrupt")
    return StoreError(f"sqlite error: {message}", reason="sqlite")


def corrupt(detail: str) -> CorruptStoreError:
    """A :class:`CorruptStoreError` for data that is present but does not decode."""
    return CorruptStoreError(f"store is corrupt: {detail}", reason="corrupt")
