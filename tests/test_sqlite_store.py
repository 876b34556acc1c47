"""SQLite store: durability settings, schema and integrity checks, typed errors, crash safety."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from souverix_crdt.errors import (
    CorruptStoreError,
    DiskFullError,
    SchemaVersionError,
    StoreBusyError,
    StoreError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.store.base import Batch
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.store.sqlite import (
    Q_ENVELOPES_AFTER,
    Q_ITER_FIRST,
    Q_ITER_NEXT,
    Q_OUTBOX,
    Q_OUTBOX_STATS,
    SqliteStore,
)
from souverix_crdt.testing.conformance import (
    FaultInjector,
    sample_batch,
    sample_envelope,
    snapshot_store,
)

from .crash_child import PARTS, PEER, SCOPE, WRITER, envelope_id

REPO = Path(__file__).resolve().parent.parent
PROBES = [sample_batch(0), sample_batch(1)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(path)
    yield opened
    opened.close()


def pragma(path: Path, name: str) -> object:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        connection.close()


def raw_execute(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            connection.execute(statement)
    finally:
        connection.close()


# --------------------------------------------------------------------------- durability settings


def test_wal_and_synchronous_full_by_default(store: SqliteStore, path: Path) -> None:
    connection = store._connection
    assert connection is not None
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.synchronous == "FULL"
    assert store.durability == "full"
    assert pragma(path, "journal_mode") == "wal"  # persistent in the file


@pytest.mark.parametrize(
    ("level", "number", "durability"),
    [("NORMAL", 1, "normal (opt-in)"), ("OFF", 0, "off (opt-in)")],
)
def test_weaker_synchronous_only_by_opt_in(
    path: Path, level: str, number: int, durability: str
) -> None:
    store = SqliteStore.open(path, synchronous=level)  # type: ignore[arg-type]
    try:
        assert store._connection is not None
        assert store._connection.execute("PRAGMA synchronous").fetchone()[0] == number
        assert store.durability == durability
    finally:
        store.close()


def test_bad_settings_are_refused(path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore.open(path, synchronous="full")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        SqliteStore.open(path, busy_timeout_ms=-1)
    assert not path.exists()


# --------------------------------------------------------------------------- schema


def test_reopening_keeps_the_schema_and_the_caller_namespace(path: Path) -> None:
    SqliteStore.open(path).close()
    store = SqliteStore.open(path)
    try:
        assert store.meta("schema_version") is None  # the store's rows are not the caller's
    finally:
        store.close()


@pytest.mark.parametrize(
    ("value", "reason"), [("99", "newer"), ("0", "unknown"), ("'one'", "unknown")]
)
def test_other_schema_versions_are_refused(path: Path, value: str, reason: str) -> None:
    SqliteStore.open(path).close()
    raw_execute(path, f"UPDATE meta SET value = {value} WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError) as caught:
        SqliteStore.open(path)
    assert caught.value.reason == reason


def test_missing_schema_version_is_refused(path: Path) -> None:
    SqliteStore.open(path).close()
    raw_execute(path, "DELETE FROM meta WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError):
        SqliteStore.open(path)


def test_another_applications_database_is_refused(path: Path) -> None:
    raw_execute(path, "CREATE TABLE users (name TEXT)")
    with pytest.raises(SchemaVersionError) as caught:
        SqliteStore.open(path)
    assert caught.value.reason == "not-a-store"


def test_an_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteStore.open(tmp_path)  # a directory


# --------------------------------------------------------------------------- corruption


def test_random_bytes_are_a_corrupt_store(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(16_384))
    with pytest.raises(CorruptStoreError) as caught:
        SqliteStore.open(path)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_an_overwritten_page_is_a_corrupt_store(path: Path) -> None:
    store = SqliteStore.open(path)
    store.commit(
        Batch(
            envelopes=[
                sample_envelope(SCOPE, WRITER, seq, data=seq.to_bytes(4, "big") * 225)
                for seq in range(200)
            ]
        )
    )
    store.close()  # the last connection checkpoints the WAL into the file
    page_size = int(str(pragma(path, "page_size")))
    pages = path.stat().st_size // page_size
    assert pages > 20
    with path.open("r+b") as file:
        file.seek(page_size * (pages // 2))
        file.write(random.Random(11).randbytes(page_size))
    with pytest.raises(CorruptStoreError):
        SqliteStore.open(path)


def test_a_stored_timestamp_that_does_not_decode_is_corrupt(store: SqliteStore, path: Path) -> None:
    store.commit(Batch(envelopes=[sample_envelope(SCOPE, WRITER, 1)], hlc=Timestamp(5, 0)))
    raw_execute(
        path, "UPDATE meta SET value = x'0102' WHERE key = 'hlc'", "UPDATE envelopes SET hlc = 7"
    )
    with pytest.raises(CorruptStoreError):
        store.hlc()
    with pytest.raises(CorruptStoreError):
        list(store.iter_envelopes())


# --------------------------------------------------------------------------- busy


def test_a_locked_store_is_busy_and_nothing_is_committed(path: Path) -> None:
    store = SqliteStore.open(path, busy_timeout_ms=10)
    store.commit(sample_batch(0))
    before = snapshot_store(store, PROBES)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreBusyError) as caught:
            store.commit(sample_batch(1))
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert snapshot_store(store, PROBES) == before  # WAL: reads go on beside a writer
        second = SqliteStore.open(path, busy_timeout_ms=10)  # opening only reads
        second.close()
        other.execute("ROLLBACK")
        store.commit(sample_batch(1))
        assert store.meta("key-1") == b"v"
    finally:
        other.close()
        store.close()


# --------------------------------------------------------------------------- injected faults


FAULTS: dict[str, tuple[Callable[[], BaseException], type[StoreError]]] = {
    "disk-full": (lambda: sqlite3.OperationalError("database or disk is full"), DiskFullError),
    "busy": (lambda: sqlite3.OperationalError("database is locked"), StoreBusyError),
    "corrupt": (
        lambda: sqlite3.DatabaseError("database disk image is malformed"),
        CorruptStoreError,
    ),
    "io": (lambda: sqlite3.OperationalError("disk I/O error"), StoreError),
}


def statement_count(tmp_path: Path) -> int:
    injector = FaultInjector()
    store = SqliteStore.open(tmp_path / "count.db", statement_hook=injector)
    store.commit(sample_batch(0))
    injector.steps.clear()
    store.commit(sample_batch(1))
    store.close()
    return len(injector.steps)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_fault_at_each_statement_is_typed_and_changes_nothing(tmp_path: Path, fault: str) -> None:
    make_error, expected = FAULTS[fault]
    count = statement_count(tmp_path)
    assert count >= 10
    for at in range(count):
        injector = FaultInjector()
        store = SqliteStore.open(tmp_path / f"{fault}-{at}.db", statement_hook=injector)
        try:
            store.commit(sample_batch(0))
            before = snapshot_store(store, PROBES)
            injector.arm(at, make_error)
            with pytest.raises(expected) as caught:
                store.commit(sample_batch(1))
            assert isinstance(caught.value.__cause__, sqlite3.Error)
            assert injector.fired
            assert snapshot_store(store, PROBES) == before
            store.commit(sample_batch(1))
            assert store.meta("key-1") == b"v"
        finally:
            store.close()


def test_sqlites_own_rollback_is_not_rolled_back_twice(path: Path) -> None:
    store: SqliteStore

    def hook(step: str) -> None:
        if step == "outbox":
            # What SQLite does by itself after some errors: the transaction is already gone.
            assert store._connection is not None
            store._connection.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")

    store = SqliteStore.open(path, statement_hook=hook)
    try:
        before = snapshot_store(store, PROBES)
        with pytest.raises(DiskFullError) as caught:
            store.commit(sample_batch(0))
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert snapshot_store(store, PROBES) == before
    finally:
        store.close()


class RollbackFailsConnection(sqlite3.Connection):
    def execute(self, sql: str, parameters: object = (), /) -> sqlite3.Cursor:
        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, parameters)  # type: ignore[arg-type]


def test_a_failed_rollback_closes_the_store_and_commits_nothing(path: Path) -> None:
    SqliteStore.open(path).close()

    def hook(step: str) -> None:
        if step == "meta":
            raise sqlite3.OperationalError("database or disk is full")

    connection = sqlite3.connect(path, isolation_level=None, factory=RollbackFailsConnection)
    store = SqliteStore(connection, path=str(path), synchronous="FULL", statement_hook=hook)
    with pytest.raises(DiskFullError) as caught:
        store.commit(sample_batch(0))
    assert any("ROLLBACK failed" in note for note in caught.value.__notes__)
    with pytest.raises(StoreError, match="closed"):
        store.frontiers()
    # Closing the connection discarded the open transaction.
    reopened = SqliteStore.open(path)
    try:
        assert snapshot_store(reopened, PROBES) == snapshot_store(MemoryStore(), PROBES)
    finally:
        reopened.close()


def test_a_real_full_disk_is_typed_and_changes_nothing(store: SqliteStore) -> None:
    store.commit(sample_batch(0))
    before = snapshot_store(store, PROBES)
    snapshot: dict[str, list[object]] = before  # type: ignore[assignment]
    connection = store._connection
    assert connection is not None
    # max_page_count makes SQLite report SQLITE_FULL exactly as a full disk would.
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")
    big = Batch(
        envelopes=[
            sample_envelope(SCOPE, WRITER, seq, data=seq.to_bytes(4, "big") * 1250)
            for seq in range(20)
        ]
    )
    with pytest.raises(DiskFullError) as caught:
        store.commit(big)
    cause = caught.value.__cause__
    assert isinstance(cause, sqlite3.OperationalError)
    assert cause.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL
    assert not connection.in_transaction
    assert snapshot_store(store, PROBES) == before
    connection.execute("PRAGMA max_page_count = 1073741823")
    store.commit(big)
    assert len(list(store.iter_envelopes())) == len(list(snapshot["iter_envelopes"])) + 20


def test_a_conflicting_envelope_is_typed(store: SqliteStore) -> None:
    store.commit(Batch(envelopes=[sample_envelope(SCOPE, WRITER, 1)]))
    rival = sample_envelope(SCOPE, WRITER, 1, data=b"rival")
    with pytest.raises(StoreError) as caught:
        store.commit(Batch(envelopes=[rival], meta={"k": b"v"}))
    assert caught.value.reason == "conflict"
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert store.meta("k") is None


def test_exceptions_that_are_not_sqlites_pass_through(path: Path) -> None:
    class BoomError(Exception):
        pass

    def hook(step: str) -> None:
        if step == "meta":
            raise BoomError

    store = SqliteStore.open(path, statement_hook=hook)
    try:
        with pytest.raises(BoomError):
            store.commit(sample_batch(0))
        assert store.frontiers() == {}
    finally:
        store.close()


# --------------------------------------------------------------------------- reads


@pytest.mark.parametrize(
    ("query", "parameters"),
    [
        (Q_ENVELOPES_AFTER, (SCOPE, WRITER, 3, 10)),
        (Q_OUTBOX, (PEER, 10)),
        (Q_OUTBOX_STATS, (PEER,)),
        (Q_ITER_FIRST, (10,)),
        (Q_ITER_NEXT, (SCOPE, WRITER, 3, 10)),
    ],
)
def test_reads_use_an_index(store: SqliteStore, query: str, parameters: tuple[object, ...]) -> None:
    store.commit(sample_batch(0))
    assert store._connection is not None
    plan = [row[3] for row in store._connection.execute(f"EXPLAIN QUERY PLAN {query}", parameters)]
    assert all("USING" in step and "INDEX" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


def test_iterating_the_log_pages_through_all_of_it(store: SqliteStore) -> None:
    log = [
        sample_envelope(f"global/zone-{z}", WRITER, seq) for z in range(3) for seq in range(1, 401)
    ]
    store.commit(Batch(envelopes=log))
    seen = []
    for n, envelope in enumerate(store.iter_envelopes()):
        seen.append(envelope)
        if n == 700:  # committing while a page is being read must not disturb the iteration
            store.commit(Batch(meta={"during": b"iteration"}))
    assert seen == log


# --------------------------------------------------------------------------- crash safety


def read_numbers(stream: object, count: int) -> list[int]:
    lines = []
    for _ in range(count):
        line = stream.readline()  # type: ignore[attr-defined]
        if not line.endswith(b"\n"):
            break
        lines.append(int(line))
    return lines


def check_crash_invariants(path: Path, printed: set[int]) -> int:
    """Every printed batch is whole; no batch is half-written; return how many are stored."""
    store = SqliteStore.open(path)
    try:
        outbox = {entry.envelope_id for entry in store.outbox(PEER, 1_000_000)}
        stored = 0
        while True:
            parts = [store.envelope(envelope_id(stored, part)) is not None for part in range(PARTS)]
            parts += [envelope_id(stored, part) in outbox for part in range(PARTS)]
            parts.append(store.meta(f"batch-{stored}") == b"done")
            if not any(parts):
                break
            assert all(parts), f"batch {stored} is half-written: {parts}"
            stored += 1
        # Batches are committed in order, so what is stored is a prefix, and nothing lies past it.
        assert store.envelope(envelope_id(stored + 1, 0)) is None
        assert printed <= set(range(stored)), f"printed {sorted(printed - set(range(stored)))}"
        if stored:
            assert store.meta("last") == (stored - 1).to_bytes(8, "big")
            assert store.hlc() == Timestamp(1_000 + stored - 1, PARTS)
            assert store.frontiers()[SCOPE, WRITER][0] == PARTS * stored
        return stored
    finally:
        store.close()


def test_killed_writers_lose_no_receipt_and_leave_no_half_batch(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    path = tmp_path / "crash.db"
    printed: set[int] = set()
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(25):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_child", str(path)],
            cwd=REPO,
            env=environment,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        try:
            printed.update(read_numbers(child.stdout, rng.randint(1, 8)))
            # Not a wait for anything: a random pause of about one commit's length moves the
            # kill across the phases of the commit in flight (without it, the kill lands at the
            # same point of the next commit almost every time).
            time.sleep(rng.uniform(0, 0.002))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        # Numbers printed before the kill but not read yet are receipts too.
        printed.update(read_numbers(child.stdout, 1_000_000))
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        stored = check_crash_invariants(path, printed)
        assert stored >= len(printed)
    assert len(printed) >= 25
