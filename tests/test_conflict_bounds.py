"""Conflict records: bounded per key and the same on every replica, whatever the arrival order."""

from __future__ import annotations

import random
import time

from souverix_crdt.document import ScopeState, WriteOp
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Scope
from souverix_crdt.testing.fleet import NOW

SCOPE = Scope.parse("global")


def blind_writes(count: int, overwrites: int = 1) -> list[tuple[str, int, bytes]]:
    """``count`` chains each writing one key ``overwrites`` times, none seeing another."""
    sent = []
    for i in range(count):
        writer = f"w{i:05d}"
        own = ScopeState(SCOPE)
        for n in range(overwrites):
            result = own.write(writer, Timestamp(NOW + n, i % 7), [WriteOp("policies", "k", n)])
            sent.append((writer, result.seq, result.update))
    return sent


def receive_all(sent: list[tuple[str, int, bytes]], seed: int, **options: int) -> ScopeState:
    state = ScopeState(SCOPE, **options)
    order = list(sent)
    random.Random(seed).shuffle(order)
    for writer, seq, update in order:
        state.receive(writer, seq, update)
    return state


def test_a_thousand_chains_on_one_key_stay_within_the_bound() -> None:
    sent = blind_writes(1_000)
    started = time.process_time()
    state = receive_all(sent, seed=1, conflicts_per_key=50)
    elapsed = time.process_time() - started
    assert len(state.conflicts) == 50
    # Quadratic recording took seconds here (half a million records); linear takes well
    # under one.
    assert elapsed < 2.0


def test_the_records_do_not_depend_on_the_arrival_order() -> None:
    sent = blind_writes(40, overwrites=5)
    first = receive_all(sent, seed=1, conflicts_per_key=30, history_limit=8)
    for seed in range(2, 6):
        other = receive_all(sent, seed=seed, conflicts_per_key=30, history_limit=8)
        assert other.conflicts.records() == first.conflicts.records()
        assert other.history("policies", "k") == first.history("policies", "k")
    assert len(first.conflicts) == 28  # the 8 greatest registers, all blind: 8 * 7 / 2 pairs


def test_a_key_shows_only_the_greatest_records_under_the_bound() -> None:
    sent = blind_writes(20)
    capped = receive_all(sent, seed=3, conflicts_per_key=5)
    full = receive_all(sent, seed=3, conflicts_per_key=1_000)
    assert capped.conflicts.records() == full.conflicts.records()[-5:]
