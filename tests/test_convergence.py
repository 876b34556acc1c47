"""Convergence: writers across scopes, any delivery order with duplicates, against an oracle.

Three to five writers write random keys in several scopes (deletes and same-key writes at equal
wall times included), exchanging some updates while they work so that contexts are non-trivial.
Afterwards every update reaches every replica in a random order, each one possibly twice. Every
replica must then hold the same state, conflict records and history, and each must equal the
plain-Python oracle in ``tests/oracle.py`` — not only equal to each other.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from souverix_crdt.document import FleetState, WriteOp
from souverix_crdt.hlc import Clock, Timestamp
from souverix_crdt.lww import Strategy

from .oracle import Model, ModelReplica, ModelWrite

SCOPES = ("global", "global/region-a", "global/region-a/edge-a1")
KEYS = ("k1", "k2")
COLLECTIONS = ("policies", "nodes")
HISTORY = 4


class Ranks:
    """Writer ranks for authority precedence: writer i has rank i % 3."""

    def __init__(self, writers: list[str]) -> None:
        self.ranks = {w: i % 3 for i, w in enumerate(writers)}

    def rank(self, writer: str) -> int:
        return self.ranks[writer]

    def allows(self, writer: str, collection: str) -> bool:
        return True


op_strategy = st.tuples(
    st.sampled_from(SCOPES),
    st.sampled_from(COLLECTIONS),
    st.sampled_from(KEYS),
    st.one_of(st.none(), st.integers(0, 50), st.text(max_size=3)),
    st.booleans(),  # delete?
)

write_action = st.tuples(
    st.just("write"), st.integers(0, 4), st.lists(op_strategy, min_size=1, max_size=3)
)
action_strategy = st.one_of(
    write_action,
    write_action,
    st.tuples(st.just("gossip"), st.integers(0, 4), st.integers(0, 4)),
    st.tuples(st.just("tick"), st.integers(0, 2)),
)


def run_scenario(
    n_writers: int,
    actions: list[tuple[Any, ...]],
    strategy: Strategy,
    seed: int,
) -> int:
    """Run one scenario, check every replica against the oracle; return the conflict count."""
    rng = random.Random(seed)
    writers = [f"writer-{i}" for i in range(n_writers)]
    ranks = Ranks(writers)
    wall = [1_000]
    clocks = {w: Clock(lambda: wall[0]) for w in writers}

    def new_state() -> FleetState:
        return FleetState(strategy_for=lambda _s: strategy, policy=ranks, history_limit=HISTORY)

    states = {w: new_state() for w in writers}
    model = Model(strategy=strategy, rank=ranks.rank)
    model_replicas = {w: ModelReplica() for w in writers}
    # Every update made: (scope, writer, seq, update, hlc, model writes it carries).
    log: list[tuple[str, str, int, bytes, Timestamp, list[tuple[Any, ModelWrite]]]] = []
    delivered: dict[str, set[int]] = {w: set() for w in writers}
    tx_count = dict.fromkeys(writers, 0)

    def deliver(to: str, index: int) -> None:
        scope, writer, seq, update, hlc, _writes = log[index]
        states[to].receive(scope, writer, seq, update)
        clocks[to].update(hlc)
        # The model learns the write when the library can apply it: in the writer's order.
        delivered[to].add(index)
        for i in sorted(delivered[to]):
            s_i, w_i, seq_i, *_ = log[i]
            if states[to].scope(s_i).next_seq(w_i) > seq_i:
                for key, write in log[i][5]:
                    model_replicas[to].receive(key, write)

    for action in actions:
        if action[0] == "tick":
            wall[0] += action[1]
        elif action[0] == "gossip":
            source, target = writers[action[1] % n_writers], writers[action[2] % n_writers]
            if source == target:
                continue
            for index, entry in enumerate(log):
                if entry[1] == source and rng.random() < 0.7:
                    deliver(target, index)
        else:
            writer = writers[action[1] % n_writers]
            by_scope: dict[str, list[tuple[str, str, Any, bool]]] = {}
            for scope, collection, key, value, deleted in action[2]:
                by_scope.setdefault(scope, []).append((collection, key, value, deleted))
            for scope, ops in by_scope.items():
                hlc = clocks[writer].now()
                tx_count[writer] += 1
                write_ops = [WriteOp(c, k, None if d else v, deleted=d) for c, k, v, d in ops]
                result = states[writer].write(scope, writer, hlc, write_ops)
                last = {(c, k): (v, d) for c, k, v, d in ops}
                writes = []
                for (collection, key), (value, deleted) in last.items():
                    mkey = (scope, collection, key)
                    write = ModelWrite(
                        writer=writer,
                        tx=tx_count[writer],
                        hlc=hlc,
                        value=None if deleted else value,
                        deleted=deleted,
                        seen=model_replicas[writer].seen_for(mkey, writer),
                    )
                    model.record(mkey, write)
                    model_replicas[writer].receive(mkey, write)
                    writes.append((mkey, write))
                log.append((scope, writer, result.seq, result.update, hlc, writes))

    # Final delivery: every update to every writer and to two fresh observers, shuffled, with
    # duplicates.
    observers = [new_state(), new_state()]
    replicas = list(states.values()) + observers
    for replica in replicas:
        deliveries = [entry[:4] for entry in log] * 2
        deliveries = deliveries[: len(log) + rng.randrange(len(log) + 1)]
        deliveries += [entry[:4] for entry in log]  # everything at least once
        rng.shuffle(deliveries)
        for scope, writer, seq, update in deliveries:
            replica.receive(scope, writer, seq, update)

    expected_state = model.state()
    expected_conflicts = model.conflicts(HISTORY)
    for replica in replicas:
        snapshot = {
            scope: {c: values for c, values in collections.items() if values}
            for scope, collections in replica.snapshot().items()
        }
        snapshot = {scope: cols for scope, cols in snapshot.items() if cols}
        assert snapshot == expected_state
        got_conflicts = {
            (
                (record.scope, record.collection, record.key),
                (record.winner.writer, record.winner.hlc),
                (record.loser.writer, record.loser.hlc),
            )
            for record in replica.conflicts.records()
        }
        assert got_conflicts == expected_conflicts
        assert len(replica.conflicts.records()) == len(expected_conflicts)
        for mkey in model.writes:
            scope, collection, key = mkey
            history = replica.scope(scope).history(collection, key)
            assert [(r.writer, r.hlc) for r in history] == model.history(mkey, HISTORY)
    first = replicas[0]
    for replica in replicas[1:]:
        assert replica.conflicts.records() == first.conflicts.records()
    return len(expected_conflicts)


@given(
    n_writers=st.integers(3, 5),
    actions=st.lists(action_strategy, min_size=1, max_size=30),
    strategy=st.sampled_from(list(Strategy)),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=60)
def test_replicas_converge_to_the_oracle(
    n_writers: int, actions: list[tuple[Any, ...]], strategy: Strategy, seed: int
) -> None:
    run_scenario(n_writers, actions, strategy, seed)


def test_concurrent_same_key_writes_at_equal_wall_time() -> None:
    """A fixed worst case: every writer writes one key at the same millisecond, blind."""
    actions: list[tuple[Any, ...]] = [
        ("write", i, [("global", "policies", "k1", f"v{i}", False)]) for i in range(5)
    ]
    actions += [("write", 0, [("global", "policies", "k1", None, True)])]
    for strategy in Strategy:
        # 6 registers, a history of 4: the delete and three blind writes are the greatest (3
        # pairs among the writes; the delete saw only its own writer's value: 3 more).
        assert run_scenario(5, actions, strategy, seed=1) == 6


def random_actions(rng: random.Random, count: int) -> list[tuple[Any, ...]]:
    actions: list[tuple[Any, ...]] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.6:
            ops = [
                (
                    rng.choice(SCOPES),
                    rng.choice(COLLECTIONS),
                    rng.choice(KEYS),
                    rng.randrange(100),
                    rng.random() < 0.15,
                )
                for _ in range(rng.randint(1, 3))
            ]
            actions.append(("write", rng.randrange(5), ops))
        elif roll < 0.85:
            actions.append(("gossip", rng.randrange(5), rng.randrange(5)))
        else:
            actions.append(("tick", rng.randrange(3)))
    return actions


def test_long_seeded_scenarios_converge_to_the_oracle() -> None:
    """Longer runs than Hypothesis explores by default: many overlapping writes per key."""
    conflicts = 0
    for seed in range(6):
        rng = random.Random(seed)
        strategy = list(Strategy)[seed % 2]
        conflicts += run_scenario(5, random_actions(rng, 150), strategy, seed)
    assert conflicts > 50  # the scenarios really exercise conflict detection
