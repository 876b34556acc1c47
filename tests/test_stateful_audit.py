"""Model-based test: one truth on every replica, whatever was compacted, restarted or reordered.

A Hypothesis ``RuleBasedStateMachine`` drives three writers (global, region-b, edge-b1) over two
scopes, each with a SQLite store: overwrites, deletes and concurrent writes to a few keys,
checkpoints (which compact the writer's log) at random points, restarts from SQLite, and
deliveries between any two replicas in a random order with duplicates, from the sender's log
or, where it compacted, from its checkpoint plus tail.

At the end every replica, after an exchange that brings them level, and again after each is
reopened from its store, has the same digest, values, tombstones, audit log and bounded history
as a fresh replica that replayed every envelope from genesis and as one that started from the
checkpoints plus tails; and all of them equal the plain-Python oracle computed from the written
envelopes (:mod:`tests.oracle`).

CI runs a bounded number of examples; ``HYPOTHESIS_PROFILE=soak`` runs many more.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from souverix_crdt.conflicts import RegisterId
from souverix_crdt.envelope import read_header
from souverix_crdt.hlc import Timestamp
from souverix_crdt.lww import Strategy
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import make_fleet

from .oracle import Model, ModelWrite

FLEET = make_fleet()
NAMES = ("global", "region-b", "edge-b1")
SCOPES = ("global/region-b", "global/region-b/edge-b1")
WRITES_IN = {"global": SCOPES, "region-b": SCOPES, "edge-b1": SCOPES[1:]}
KEYS = ("k1", "k2", "k3")
HISTORY = 16  # the replicas' default history limit

names = st.sampled_from(NAMES)


def observer(seed: int) -> Replica:
    """A replica with nothing of its own, in memory (it never writes)."""
    member = FLEET["global"]
    return Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore(),
        name="observer",
        epoch=seed,
        wall_clock=lambda: 1_700_000_000_000,
    )


def view(replica: Replica) -> dict[str, Any]:
    """Everything that must be one truth: values, tombstones, audit log and history."""
    winners = {}
    histories = {}
    for scope in SCOPES:
        state = replica.fleet.scope(scope)
        for (collection, key), register in state.winners():
            winners[(scope, collection, key)] = (register.writer, register.hlc, register.deleted)
            histories[(scope, collection, key)] = [
                (r.writer, r.hlc) for r in state.history(collection, key)
            ]
    return {
        "digest": replica.digest(),
        "snapshot": replica.snapshot(),
        "winners": winners,
        "conflicts": replica.conflicts(),
        "history": histories,
    }


class OneTruth(RuleBasedStateMachine):
    """Writers, their stores, and every envelope written (the oracle's input)."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="souverix-audit-"))
        self.cluster: Cluster | None = None
        # (scope, chain, seq) -> (envelope bytes, the model's write)
        self.written: dict[tuple[str, str, int], tuple[bytes, ModelWrite, str]] = {}
        self.rng = random.Random(0)

    @property
    def c(self) -> Cluster:
        assert self.cluster is not None
        return self.cluster

    def store(self, name: str) -> SqliteStore:
        return SqliteStore.open(self.directory / f"{name}.sqlite3")

    @initialize(seed=st.integers(0, 2**16))
    def build(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.cluster = Cluster(FLEET, NAMES, seed=seed, store_factory=self.store)
        self.introduce()

    def introduce(self) -> None:
        every = [d for name in NAMES for d in self.c[name].delegations()]
        for name in NAMES:
            self.c[name].add_delegations(every)

    def teardown(self) -> None:
        try:
            if self.cluster is not None:
                self.check_one_truth()
        finally:
            if self.cluster is not None:
                for store in self.c.stores.values():
                    store.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------------ rules

    @rule(
        name=names,
        scope=st.integers(0, 1),
        key=st.sampled_from(KEYS),
        value=st.integers(0, 9),
        delete=st.booleans(),
    )
    def write(self, name: str, scope: int, key: str, value: int, delete: bool) -> None:
        replica = self.c[name]
        choices = WRITES_IN[name]
        path = choices[scope % len(choices)]
        seen = self.seen_by(replica, path, key)
        handle = replica.scope(path).policies
        receipt = handle.delete(key) if delete else handle.set(key, value)
        data = replica.envelope_at(path, receipt.chain, receipt.seq)
        assert data is not None
        write = ModelWrite(
            writer=receipt.chain,
            tx=receipt.seq,
            hlc=receipt.hlc,
            value=None if delete else value,
            deleted=delete,
            seen=seen,
        )
        self.written[(path, receipt.chain, receipt.seq)] = (data, write, key)
        self.c.advance(self.rng.choice([0, 0, 1, 5]))

    @rule(name=names, scope=st.sampled_from(SCOPES))
    def checkpoint(self, name: str, scope: str) -> None:
        self.c[name].checkpoint(scope)

    @rule(name=names)
    def restart(self, name: str) -> None:
        self.c.restart(name)
        self.introduce()

    @rule(sender=names, receiver=names, seed=st.integers(0, 2**16), duplicates=st.booleans())
    def deliver(self, sender: str, receiver: str, seed: int, duplicates: bool) -> None:
        if sender != receiver:
            deliver_all(
                self.c[sender], self.c[receiver], random.Random(seed), duplicates=duplicates
            )

    # ------------------------------------------------------------------ the model

    def seen_by(self, replica: Replica, scope: str, key: str) -> frozenset[tuple[str, int]]:
        """What a new write by ``replica`` to ``key`` has in its causal past: what it applied."""
        seen: set[tuple[str, int]] = set()
        heads: dict[str, ModelWrite] = {}
        for (path, chain, seq), (_, write, written_key) in self.written.items():
            if path != scope or written_key != key or seq > replica.chain_seq(path, chain):
                continue
            if chain not in heads or seq > heads[chain].tx:
                heads[chain] = write
        for head in heads.values():
            seen |= head.seen
            seen.add(head.id)
        return frozenset(seen)

    def model(self) -> Model:
        model = Model(Strategy.LAST_WRITER_WINS, rank=lambda _writer: 0)
        for (path, _, _), (_, write, key) in sorted(self.written.items()):
            model.record((path, "policies", key), write)
        return model

    # ------------------------------------------------------------------ the check

    def check_one_truth(self) -> None:
        for _ in range(2):
            for source in NAMES:
                for target in NAMES:
                    if source != target:
                        deliver_all(self.c[source], self.c[target], self.rng, duplicates=True)
        genesis = observer(1)
        genesis.add_delegations(self.c["global"].delegations())
        items = [data for data, _, _ in self.written.values()]
        items += self.rng.sample(items, len(items) // 3)
        self.rng.shuffle(items)
        genesis.ingest_many(items)
        from_checkpoints = observer(2)
        from_checkpoints.add_delegations(self.c["global"].delegations())
        for name in NAMES:
            deliver_all(self.c[name], from_checkpoints, self.rng, duplicates=True)
        expected = view(genesis)
        model = self.model()
        assert _visible(expected["snapshot"]) == model.state()
        got = {
            (
                r.scope,
                r.collection,
                r.key,
                (r.winner.writer, r.winner.hlc),
                (r.loser.writer, r.loser.hlc),
            )
            for r in expected["conflicts"]
        }
        want = {(*key, win, lose) for key, win, lose in model.conflicts(HISTORY)}
        assert got == want
        for key in model.writes:
            assert expected["history"][key] == model.history(key, HISTORY)
        assert view(from_checkpoints) == expected
        for name in NAMES:
            assert view(self.c[name]) == expected, name
            assert view(self.c.restart(name)) == expected, f"{name} restarted"


def _side(register: RegisterId) -> tuple[str, Timestamp]:
    return (register.writer, register.hlc)


def _visible(snapshot: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """A snapshot without empty collections and scopes (the oracle lists only what is set)."""
    kept = {s: {c: v for c, v in cols.items() if v} for s, cols in snapshot.items()}
    return {s: cols for s, cols in kept.items() if cols}


def deliver_all(source: Replica, target: Replica, rng: random.Random, *, duplicates: bool) -> None:
    """Everything ``source`` can serve ``target`` (checkpoints where it compacted), shuffled."""
    checkpoints: list[bytes] = []
    envelopes: list[bytes] = []
    for scope, chain, _, _ in source.frontiers():
        seq = target.chain_seq(scope, chain)
        while True:
            checkpoint, batch = source.catch_up(scope, chain, seq, 1_000)
            if checkpoint is not None:
                checkpoints.append(checkpoint)
                seq = read_header(checkpoint).seq
                continue
            if not batch:
                break
            envelopes.extend(batch)
            seq = read_header(batch[-1]).seq
    items = [(True, c) for c in checkpoints] + [(False, e) for e in envelopes]
    if duplicates and items:
        items += rng.sample(items, max(1, len(items) // 3))
    rng.shuffle(items)
    for is_checkpoint, data in items:
        if is_checkpoint:
            target.ingest_checkpoint(data)
        else:
            target.ingest(data)


TestOneTruth = OneTruth.TestCase
TestOneTruth.settings = settings(
    max_examples=int(
        os.environ.get(
            "SOUVERIX_STATEFUL_EXAMPLES",
            "300" if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else "15",
        )
    ),
    stateful_step_count=30,
    deadline=None,
)
