"""The shipped store conformance suite over every store; the stores agree with each other."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from souverix_crdt.store.base import StatementHook, Store
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.testing.conformance import (
    ConformanceError,
    StoreConformance,
    sample_batch,
    snapshot_store,
)


def memory_suite(tmp_path: Path) -> StoreConformance:
    del tmp_path  # nothing to keep on disk

    def make_store(*, statement_hook: StatementHook | None = None) -> Store:
        return MemoryStore(statement_hook=statement_hook)

    return StoreConformance(make_store=make_store)


def sqlite_suite(tmp_path: Path) -> StoreConformance:
    numbers = itertools.count()

    def make_store(*, statement_hook: StatementHook | None = None) -> Store:
        path = tmp_path / f"store-{next(numbers)}.db"
        return SqliteStore.open(path, statement_hook=statement_hook)

    def reopen(store: Store) -> Store:
        assert isinstance(store, SqliteStore)
        store.close()
        return SqliteStore.open(store.path)

    return StoreConformance(make_store=make_store, reopen=reopen)


@pytest.mark.parametrize("name", StoreConformance.check_names())
def test_memory_store(name: str, tmp_path: Path) -> None:
    memory_suite(tmp_path).run(name)


@pytest.mark.parametrize("name", StoreConformance.check_names(reopen=True))
def test_sqlite_store(name: str, tmp_path: Path) -> None:
    sqlite_suite(tmp_path).run(name)


def test_run_all_reports_the_checks_it_ran(tmp_path: Path) -> None:
    assert memory_suite(tmp_path).run_all() == StoreConformance.check_names()
    assert "check_everything_survives_reopen" in StoreConformance.check_names(reopen=True)
    assert "check_everything_survives_reopen" not in StoreConformance.check_names()


def test_run_refuses_unknown_and_inapplicable_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is unknown"):
        memory_suite(tmp_path).run("check_nothing")
    with pytest.raises(ValueError, match="does not apply"):
        memory_suite(tmp_path).run("check_everything_survives_reopen")


class ForgetfulStore(MemoryStore):
    """A broken store: the high-water mark follows the last commit, even backwards."""

    def commit(self, batch) -> None:  # type: ignore[no-untyped-def]
        super().commit(batch)
        if batch.hlc is not None:
            self._hlc = batch.hlc


def test_a_broken_store_fails_with_the_check_named() -> None:
    suite = StoreConformance(make_store=ForgetfulStore)
    with pytest.raises(ConformanceError, match="check_hlc_never_goes_backwards"):
        suite.run("check_hlc_never_goes_backwards")


def test_memory_and_sqlite_answer_alike(tmp_path: Path) -> None:
    # The same scenario over every store must end in the same answers (STYLE rule 7).
    memory = MemoryStore()
    sqlite = SqliteStore.open(tmp_path / "alike.db")
    try:
        batches = [sample_batch(n) for n in range(6)]
        for batch in batches:
            memory.commit(batch)
            sqlite.commit(batch)
        assert snapshot_store(sqlite, batches) == snapshot_store(memory, batches)
    finally:
        sqlite.close()
