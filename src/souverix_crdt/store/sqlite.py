"""The default durable :class:`~souverix_crdt.store.base.Store`, over the stdlib ``sqlite3``.

Durability contract: a :meth:`SqliteStore.commit` that returns has been written and synced
(WAL journal, ``synchronous=FULL``), so the receipt the replica hands out afterwards survives a
crash or a power cut. Weaker settings exist for benchmarks and throwaway replicas, only by explicit
opt-in, and :attr:`SqliteStore.durability` says so.

Transactions are explicit: the connection runs in autocommit mode (``isolation_level=None``) and
each commit is ``BEGIN IMMEDIATE`` … ``COMMIT``, so the write lock is taken up front (a busy store
fails at ``BEGIN``, before anything was written) and no statement ever runs in an implicit
transaction that the ``sqlite3`` module would open or close behind our back. On any error the
transaction is rolled back, unless SQLite already did so itself (it does for some errors, such as a
full disk), and a typed :class:`~souverix_crdt.errors.StoreError` is raised from the original.

The connection is used from one thread (the replica is single-threaded); ``sqlite3``'s
same-thread check stays on.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Literal

from souverix_crdt.errors import CorruptStoreError, DecodeError, StoreError
from souverix_crdt.hlc import Timestamp

from ._sqlite_schema import corrupt, ensure_schema, translate_error
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

__all__ = ["SqliteStore", "Synchronous"]

#: SQLite's ``synchronous`` levels this store accepts.
Synchronous = Literal["FULL", "NORMAL", "OFF"]

_DURABILITY: Final[dict[str, str]] = {
    "FULL": "full",
    "NORMAL": "normal (opt-in)",
    "OFF": "off (opt-in)",
}

# iter_envelopes reads the log this many rows at a time, so that it never holds a statement open
# across a yield (a commit made by the caller in between would run inside that read).
_ITER_PAGE: Final = 512

_Rows = list[tuple[object, ...]]

_ENVELOPE_COLUMNS: Final = "id, scope, writer, seq, hlc, data"
# The hot reads, named so that tests can EXPLAIN them and check that they search an index.
Q_ENVELOPES_AFTER: Final = (
    f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes"  # noqa: S608 - constant column list
    " WHERE scope = ? AND writer = ? AND seq > ? ORDER BY seq LIMIT ?"
)
Q_OUTBOX: Final = (
    "SELECT peer, envelope_id, size, enqueued_at FROM outbox"
    " WHERE peer = ? ORDER BY enqueued_at, ord LIMIT ?"
)
Q_OUTBOX_STATS: Final = (
    "SELECT count(*), coalesce(sum(size), 0), min(enqueued_at) FROM outbox WHERE peer = ?"
)
Q_ITER_FIRST: Final = (
    f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes"  # noqa: S608 - constant column list
    " ORDER BY scope, writer, seq LIMIT ?"
)
Q_ITER_NEXT: Final = (
    f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes"  # noqa: S608 - constant column list
    " WHERE (scope, writer, seq) > (?, ?, ?) ORDER BY scope, writer, seq LIMIT ?"
)


class SqliteStore(Store):
    """A :class:`Store` in one SQLite file; build it with :meth:`open`.

    Attributes:
        path: The database file.
        synchronous: The ``synchronous`` level in force (``"FULL"`` unless opted out).
        durability: ``"full"``, or ``"normal (opt-in)"`` / ``"off (opt-in)"``.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        path: str,
        synchronous: Synchronous,
        statement_hook: StatementHook | None = None,
    ) -> None:
        self._connection: sqlite3.Connection | None = connection
        self._hook = statement_hook
        self.path = path
        self.synchronous = synchronous
        self.durability = _DURABILITY[synchronous]

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
        statement_hook: StatementHook | None = None,
    ) -> SqliteStore:
        """Open (or create) the store at ``path`` after checking its integrity and version.

        Args:
            path: The database file; created with the schema if it does not exist.
            synchronous: ``"FULL"`` (the default: every commit survives power loss). ``"NORMAL"``
                or ``"OFF"`` trade the last commits on power loss for speed; explicit opt-in only.
            busy_timeout_ms: How long a statement waits for another connection's lock before
                :class:`~souverix_crdt.errors.StoreBusyError`.
            statement_hook: Called with a step name before every statement of :meth:`commit`;
                for fault-injection tests.

        Raises:
            CorruptStoreError: the file is not a database or fails ``PRAGMA quick_check``.
            SchemaVersionError: the database is not a store of this schema version.
            StoreBusyError: another connection held the lock beyond ``busy_timeout_ms``.
            StoreError: the file cannot be opened, or WAL mode cannot be enabled.
            ValueError: an unknown ``synchronous`` level or a negative timeout.
        """
        if synchronous not in _DURABILITY:
            raise ValueError(f"synchronous must be one of {sorted(_DURABILITY)}: {synchronous!r}")
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be >= 0: {busy_timeout_ms}")
        filename = os.fspath(path)
        try:
            connection = sqlite3.connect(
                filename, timeout=busy_timeout_ms / 1000, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc
        try:
            _prepare(connection, synchronous)
        except BaseException as exc:
            connection.close()
            if isinstance(exc, sqlite3.Error):
                raise translate_error(exc) from exc
            raise
        return cls(
            connection, path=filename, synchronous=synchronous, statement_hook=statement_hook
        )

    # ------------------------------------------------------------------ commit

    def commit(self, batch: Batch) -> None:
        """Apply ``batch`` in one ``BEGIN IMMEDIATE`` transaction, synced before returning.

        Raises:
            StoreBusyError: another connection held the write lock beyond the busy timeout.
            DiskFullError: the disk is full.
            CorruptStoreError: SQLite found the file corrupt.
            StoreError: ``reason="conflict"`` if an envelope claims a (scope, writer, seq) that a
                different envelope already holds; ``reason="closed"`` after :meth:`close`.

            In every case nothing of ``batch`` was committed. Exceptions that are not SQLite's
            (from the statement hook, or ``KeyboardInterrupt``) roll back and propagate as they
            are.
        """
        connection = self._open_connection()
        if batch.is_empty():
            return
        try:
            self._run("begin", "BEGIN IMMEDIATE")
            self._write(batch)
            self._run("commit", "COMMIT")
        except BaseException as exc:
            note = self._abort(connection)
            error = translate_error(exc) if isinstance(exc, sqlite3.Error) else exc
            if note:
                error.add_note(note)
            if error is exc:
                raise
            raise error from exc

    def _write(self, batch: Batch) -> None:
        for step, sql, rows_of in _WRITES:
            rows = rows_of(batch)
            if rows:
                self._run_many(step, sql, rows)

    def _run(self, step: str, sql: str, parameters: Sequence[object] = ()) -> None:
        connection = self._open_connection()
        if self._hook is not None:
            self._hook(step)
        connection.execute(sql, parameters)

    def _run_many(self, step: str, sql: str, rows: Sequence[Sequence[object]]) -> None:
        connection = self._open_connection()
        if self._hook is not None:
            self._hook(step)
        connection.executemany(sql, rows)

    def _abort(self, connection: sqlite3.Connection) -> str:
        """Roll back the failed commit; return a note for the error if that went wrong."""
        # Some errors (SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY in some states) make SQLite roll the
        # transaction back on its own; a second ROLLBACK would raise "no transaction is active".
        if not connection.in_transaction:
            return ""
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error as rollback_error:
            # Closing a connection rolls back its open transaction: the one safe way out. The
            # store is unusable afterwards and says so; reopen it to continue.
            self.close()
            return f"ROLLBACK failed ({rollback_error}); the store was closed"
        return ""

    # ------------------------------------------------------------------ log

    def envelopes_after(
        self, scope: str, writer: str, seq: int, limit: int
    ) -> list[StoredEnvelope]:
        """Up to ``limit`` envelopes of one writer above ``seq``, in order (none if limit <= 0)."""
        if limit <= 0:
            self._open_connection()
            return []
        rows = self._query(Q_ENVELOPES_AFTER, (scope, writer, seq, limit))
        return [_envelope(row) for row in rows]

    def envelope(self, envelope_id: bytes) -> StoredEnvelope | None:
        """One envelope by id."""
        rows = self._query(
            f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes WHERE id = ?",  # noqa: S608 - constant
            (envelope_id,),
        )
        return _envelope(rows[0]) if rows else None

    def envelope_at(self, scope: str, writer: str, seq: int) -> StoredEnvelope | None:
        """The envelope a writer published at ``seq`` in ``scope``, if kept."""
        rows = self._query(
            f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes"  # noqa: S608 - constant column list
            " WHERE scope = ? AND writer = ? AND seq = ?",
            (scope, writer, seq),
        )
        return _envelope(rows[0]) if rows else None

    def frontiers(self) -> dict[tuple[str, str], tuple[int, bytes]]:
        """Per (scope, writer): the highest kept seq (envelope or checkpoint) and its id."""
        # SQLite documents that with a single max() the bare column ``id`` comes from the row
        # holding the maximum: one pass over the (scope, writer, seq) index.
        rows = self._query("SELECT scope, writer, max(seq), id FROM envelopes GROUP BY 1, 2")
        result = {(scope, writer): (seq, bytes(eid)) for scope, writer, seq, eid in rows}
        for scope, writer, seq in self._query("SELECT scope, writer, seq FROM checkpoints"):
            if seq > result.get((scope, writer), (-1, b""))[0]:
                result[scope, writer] = (seq, b"")
        return result

    def iter_envelopes(self) -> Iterator[StoredEnvelope]:
        """Every kept envelope by scope, writer, seq, read page by page.

        Commits made while iterating may or may not be seen; each page is consistent.
        """
        rows = self._query(Q_ITER_FIRST, (_ITER_PAGE,))
        while rows:
            for row in rows:
                yield _envelope(row)
            if len(rows) < _ITER_PAGE:
                return
            _, scope, writer, seq, _, _ = rows[-1]
            rows = self._query(Q_ITER_NEXT, (scope, writer, seq, _ITER_PAGE))

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every kept checkpoint, by scope and writer."""
        rows = self._query("SELECT scope, writer, seq, data FROM checkpoints ORDER BY 1, 2")
        return [StoredCheckpoint(s, w, seq, bytes(data)) for s, w, seq, data in rows]

    # ------------------------------------------------------------------ sync bookkeeping

    def outbox(self, peer: str, limit: int) -> list[OutboxEntry]:
        """The peer's oldest entries (by enqueue time, then insertion), oldest first."""
        if limit <= 0:
            self._open_connection()
            return []
        rows = self._query(Q_OUTBOX, (peer, limit))
        return [OutboxEntry(p, bytes(eid), size, at) for p, eid, size, at in rows]

    def outbox_stats(self, peer: str) -> OutboxStats:
        """Sync debt towards ``peer``: count, bytes and the oldest enqueue time."""
        ((count, size, oldest),) = self._query(Q_OUTBOX_STATS, (peer,))
        return OutboxStats(count=count, bytes=size, oldest=oldest)

    def peers(self) -> list[str]:
        """Peers with outbox entries or acknowledged frontiers, sorted."""
        rows = self._query(
            "SELECT peer FROM outbox UNION SELECT peer FROM peer_frontiers ORDER BY 1"
        )
        return [peer for (peer,) in rows]

    def peer_frontiers(self, peer: str) -> dict[tuple[str, str], int]:
        """Per (scope, writer): the highest seq ``peer`` acknowledged."""
        rows = self._query("SELECT scope, writer, seq FROM peer_frontiers WHERE peer = ?", (peer,))
        return {(scope, writer): seq for scope, writer, seq in rows}

    # ------------------------------------------------------------------ side areas

    def pending(self) -> list[StoredItem]:
        """Items waiting for what they lack, oldest first."""
        return self._items("pending")

    def quarantine(self) -> list[StoredItem]:
        """Set-aside envelopes, oldest first."""
        return self._items("quarantine")

    def delegations(self) -> list[StoredItem]:
        """Every delegation learned, in the order learned."""
        return self._items("delegations")

    def revocations(self) -> list[StoredItem]:
        """Every revocation learned, in the order learned."""
        return self._items("revocations")

    def audit(self) -> list[bytes]:
        """Every audit record, in the order appended."""
        return [bytes(data) for (data,) in self._query("SELECT data FROM audit ORDER BY ord")]

    def meta(self, key: str) -> bytes | None:
        """A named value."""
        rows = self._query("SELECT value FROM named_values WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    def hlc(self) -> Timestamp:
        """The persisted HLC high-water mark; it never moves backwards."""
        rows = self._query("SELECT value FROM meta WHERE key = 'hlc'")
        return _timestamp(rows[0][0]) if rows else Timestamp.ZERO

    def close(self) -> None:
        """Close the connection; later calls raise ``StoreError(reason="closed")``. Idempotent."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    # ------------------------------------------------------------------ helpers

    def _items(self, table: str) -> list[StoredItem]:
        rows = self._query(
            f"SELECT id, data, reason, writer FROM {table} ORDER BY ord"  # noqa: S608 - ours
        )
        return [StoredItem(bytes(i), bytes(d), reason, writer) for i, d, reason, writer in rows]

    def _query(self, sql: str, parameters: Sequence[object] = ()) -> list[Any]:
        connection = self._open_connection()
        try:
            return connection.execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            raise translate_error(exc) from exc

    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError("the store is closed", reason="closed")
        return self._connection


def _item_insert(table: str) -> str:
    return (
        f"INSERT INTO {table} (id, data, reason, writer)"  # noqa: S608 - table is ours
        " VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
    )


def _item_rows(items: Sequence[StoredItem]) -> _Rows:
    return [(i.id, i.data, i.reason, i.writer) for i in items]


# One statement per batch field, run with executemany when the field has rows. The order is the
# order of application (the memory store applies in the same order): envelopes before compaction,
# outbox additions before acks, pending and quarantine additions before removals. Every insert
# ignores a duplicate of its key, which makes replaying a batch harmless.
_WRITES: Final[tuple[tuple[str, str, Callable[[Batch], _Rows]], ...]] = (
    (
        "envelopes",
        "INSERT INTO envelopes (id, scope, writer, seq, hlc, data)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        lambda b: [(e.id, e.scope, e.writer, e.seq, e.hlc.encode(), e.data) for e in b.envelopes],
    ),
    (
        # A checkpoint is replaced only by a later one; an older or equal one is a no-op.
        "checkpoints",
        "INSERT INTO checkpoints (scope, writer, seq, data) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (scope, writer) DO UPDATE SET seq = excluded.seq, data = excluded.data"
        " WHERE excluded.seq > checkpoints.seq",
        lambda b: [(c.scope, c.writer, c.seq, c.data) for c in b.checkpoints],
    ),
    (
        "compact",
        "DELETE FROM envelopes WHERE scope = ? AND writer = ? AND seq <= ?",
        lambda b: list(b.compact),
    ),
    (
        "outbox",
        "INSERT INTO outbox (peer, envelope_id, size, enqueued_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (peer, envelope_id) DO NOTHING",
        lambda b: [(o.peer, o.envelope_id, o.size, o.enqueued_at) for o in b.outbox],
    ),
    (
        "acked",
        "DELETE FROM outbox WHERE peer = ? AND envelope_id = ?",
        lambda b: [(peer, envelope_id) for peer, ids in b.acked for envelope_id in ids],
    ),
    (
        "peer_frontiers",
        "INSERT INTO peer_frontiers (peer, scope, writer, seq) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (peer, scope, writer) DO UPDATE SET seq = excluded.seq"
        " WHERE excluded.seq > peer_frontiers.seq",
        lambda b: list(b.peer_frontiers),
    ),
    ("pending_add", _item_insert("pending"), lambda b: _item_rows(b.pending_add)),
    (
        "pending_remove",
        "DELETE FROM pending WHERE id = ?",
        lambda b: [(item_id,) for item_id in b.pending_remove],
    ),
    ("quarantine", _item_insert("quarantine"), lambda b: _item_rows(b.quarantine_add)),
    (
        "quarantine_remove",
        "DELETE FROM quarantine WHERE id = ?",
        lambda b: [(item_id,) for item_id in b.quarantine_remove],
    ),
    ("delegations", _item_insert("delegations"), lambda b: _item_rows(b.delegations)),
    ("revocations", _item_insert("revocations"), lambda b: _item_rows(b.revocations)),
    (
        "audit",
        "INSERT INTO audit (data) VALUES (?) ON CONFLICT (data) DO NOTHING",
        lambda b: [(record,) for record in b.audit],
    ),
    (
        "meta",
        "INSERT INTO named_values (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        lambda b: list(b.meta.items()),
    ),
    (
        # The encoding sorts like the timestamp, so comparing blobs keeps the maximum.
        "hlc",
        "INSERT INTO meta (key, value) VALUES ('hlc', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE excluded.value > meta.value",
        lambda b: [] if b.hlc is None else [(b.hlc.encode(),)],
    ),
)


def _prepare(connection: sqlite3.Connection, synchronous: Synchronous) -> None:
    # WAL: readers never block the writer and a commit is one append plus one fsync.
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise StoreError(f"cannot use WAL journal mode (got {mode!r})", reason="journal-mode")
    # ``synchronous`` is one of three checked literals, never caller text.
    connection.execute(f"PRAGMA synchronous = {synchronous}")
    problems = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise CorruptStoreError(
            f"store failed its integrity check: {'; '.join(map(str, problems[:5]))}",
            reason="corrupt",
        )
    ensure_schema(connection)


def _envelope(row: Sequence[Any]) -> StoredEnvelope:
    envelope_id, scope, writer, seq, hlc, data = row
    return StoredEnvelope(bytes(envelope_id), scope, writer, seq, _timestamp(hlc), bytes(data))


def _timestamp(value: object) -> Timestamp:
    if not isinstance(value, bytes):
        raise corrupt(f"timestamp is {type(value).__name__}, not bytes")
    try:
        return Timestamp.decode(value)
    except DecodeError as exc:
        raise corrupt(f"timestamp does not decode: {exc}") from exc
