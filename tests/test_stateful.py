"""Model-based test of a small federation: writes, faults, partitions, crashes, clock steps.

A Hypothesis ``RuleBasedStateMachine`` drives global, two regions and three zones, each with a
SQLite store on disk, linked as a tree over the seeded in-memory network. Rules write (including
ancestors overriding a zone, and writes a key has no authority for), pump the network, turn
faults on and off, partition and heal links, crash a replica and reopen it from its SQLite file,
and step the fake clock.

After every step: no visible register comes from a key without authority over its scope; every
replica's HLC only moves forward; every receipted write is in its writer's store. At the end, with
links healed and faults off: every replica holds exactly its subtree and ancestors of the root's
state, the conflict records of shared scopes agree, and the state equals the oracle computed from
the receipts alone.

CI runs it with a fixed seed and a bounded number of examples; ``HYPOTHESIS_PROFILE=soak`` (and
``SOUVERIX_SLOW=1`` for the long variant) runs many more.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from souverix_crdt.envelope import chain_writer
from souverix_crdt.errors import AuthorityError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.lww import Strategy
from souverix_crdt.replica import Receipt
from souverix_crdt.scope import Autonomy, Scope
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import make_fleet

FLEET = make_fleet()
NAMES = ("global", "region-a", "region-b", "edge-a1", "edge-a2", "edge-b1")
TREE = (
    ("global", "region-a"),
    ("global", "region-b"),
    ("region-a", "edge-a1"),
    ("region-a", "edge-a2"),
    ("region-b", "edge-b1"),
)
KEY_OWNER = {FLEET[name].key_id: name for name in NAMES}
KEYS = ("k1", "k2")

names = st.sampled_from(NAMES)
links = st.sampled_from(TREE)


class Federation(RuleBasedStateMachine):
    """The system under test and the facts the oracle needs (receipts and their values)."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="souverix-stateful-"))
        self.cluster: Cluster | None = None
        # Every receipted write: (writer name, scope, collection, key, value, deleted, receipt).
        self.receipts: list[tuple[str, str, str, str, Any, bool, Receipt]] = []
        # Per receipt (same index): the receipts of its key its writer had seen when writing.
        self.seen: list[frozenset[int]] = []
        self.last_hlc: dict[str, Timestamp] = {}
        self.partitioned: set[tuple[str, str]] = set()

    @property
    def c(self) -> Cluster:
        assert self.cluster is not None
        return self.cluster

    def store(self, name: str) -> SqliteStore:
        return SqliteStore.open(self.directory / f"{name}.sqlite3")

    @initialize(seed=st.integers(0, 2**16))
    def build(self, seed: int) -> None:
        self.cluster = Cluster(FLEET, NAMES, seed=seed, store_factory=self.store)
        for a, b in TREE:
            self.c.link(a, b)

    def teardown(self) -> None:
        try:
            if self.cluster is not None:
                self.heal_everything_and_check()
        finally:
            if self.cluster is not None:
                for store in self.c.stores.values():
                    store.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------------ rules

    @rule(
        name=names,
        key=st.sampled_from(KEYS),
        value=st.integers(0, 9),
        delete=st.booleans(),
        downward=st.booleans(),
        child=st.integers(0, 1),
    )
    def write(
        self, name: str, key: str, value: int, delete: bool, downward: bool, child: int
    ) -> None:
        replica = self.c[name]
        scope = replica.identity.scope
        children = [n for n in NAMES if self.c[n].identity.scope.parent == scope]
        if downward and children:
            scope = self.c[children[child % len(children)]].identity.scope
        # What the writer had seen of this key: the receipted writes its frontiers cover, and
        # everything those had seen (the causal past, for authority precedence).
        held = {(str(s), c): q for s, c, q, _ in replica.frontiers()}
        seen: set[int] = set()
        for index, (_, other_scope, _, other_key, _, _, other) in enumerate(self.receipts):
            if (other_scope, other_key) == (str(scope), key) and held.get(
                (other_scope, other.chain), 0
            ) >= other.seq:
                seen.add(index)
                seen |= self.seen[index]
        handle = replica.scope(scope).policies
        receipt = handle.delete(key) if delete else handle.set(key, value)
        self.receipts.append((name, str(scope), "policies", key, value, delete, receipt))
        self.seen.append(frozenset(seen))

    @rule(name=names, other=names, key=st.sampled_from(KEYS))
    def unauthorized_write(self, name: str, other: str, key: str) -> None:
        replica = self.c[name]
        target = self.c[other].identity.scope
        if replica.identity.scope.contains(target):
            return
        before = replica.digest()
        with pytest.raises(AuthorityError):
            replica.scope(target).policies.set(key, "forbidden")
        assert replica.digest() == before

    @rule()
    def sync(self) -> None:
        self.c.pump()

    @rule()
    def tick(self) -> None:
        self.c.tick()
        self.c.pump()

    @rule(
        drop=st.sampled_from([0.0, 0.2, 0.5]),
        duplicate=st.sampled_from([0.0, 0.3]),
        reorder=st.sampled_from([0.0, 0.5]),
    )
    def faults(self, drop: float, duplicate: float, reorder: float) -> None:
        self.c.network.set_faults(drop=drop, duplicate=duplicate, reorder=reorder, delay=(0, 2))

    @rule(link=links)
    def partition(self, link: tuple[str, str]) -> None:
        self.c.partition(*link)
        self.partitioned.add(link)

    @precondition(lambda self: bool(self.partitioned))
    @rule(data=st.data())
    def heal(self, data: st.DataObject) -> None:
        link = data.draw(st.sampled_from(sorted(self.partitioned)))
        self.c.heal(*link)
        self.partitioned.discard(link)

    @rule(name=names)
    def crash_and_restart(self, name: str) -> None:
        # Nothing but the SQLite file survives: the replica object and its sessions are gone.
        self.c.stores[name].close()
        replica = self.c.restart(name, store=self.store(name))
        for writer, _, _, _, _, _, receipt in self.receipts:
            if writer == name:
                assert replica.store.envelope(receipt.envelope_id) is not None

    @rule(milliseconds=st.sampled_from([0, 1, 5, 250]))
    def step_clock(self, milliseconds: int) -> None:
        self.c.advance(milliseconds)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def no_unauthorized_write_is_visible(self) -> None:
        if self.cluster is None:
            return
        for replica in self.c.replicas.values():
            for scope, state in replica.fleet.scopes.items():
                for _ref, register in state.winners():
                    owner = KEY_OWNER[chain_writer(register.writer)]
                    assert self.c[owner].identity.scope.contains(scope)

    @invariant()
    def clocks_only_move_forward(self) -> None:
        if self.cluster is None:
            return
        for name, replica in self.c.replicas.items():
            last = replica.clock.last
            assert last >= self.last_hlc.get(name, Timestamp.ZERO)
            self.last_hlc[name] = last

    # ------------------------------------------------------------------ the end

    @precondition(lambda self: self.cluster is not None)
    @rule()
    def heal_everything_and_check(self) -> None:
        for link in list(self.partitioned):
            self.c.heal(*link)
        self.partitioned.clear()
        self.c.network.clear_faults()
        self.c.settle()
        self.check_against_oracle()

    def check_against_oracle(self) -> None:
        root = self.c["global"].snapshot()
        assert root == self.oracle()
        for name, replica in self.c.replicas.items():
            home = replica.identity.scope
            expected = {s: v for s, v in root.items() if Scope.parse(s).is_related_to(home)}
            assert replica.snapshot() == expected, name
            shared = {
                r for r in self.c["global"].conflicts() if Scope.parse(r.scope).is_related_to(home)
            }
            assert set(replica.conflicts()) == shared, name

    def oracle(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The state computed from the receipts alone.

        Per key, each chain's last write is a head; under authority precedence the heads
        another head had seen (and is dated after) drop out first; the winner is the strategy's
        maximum of what remains.
        """
        heads: dict[tuple[str, str, str], dict[str, int]] = {}
        for index, (_, scope, collection, key, _, _, receipt) in enumerate(self.receipts):
            heads.setdefault((scope, collection, key), {})[receipt.chain] = index
        view: dict[str, dict[str, dict[str, Any]]] = {}
        for (scope, collection, key), by_chain in sorted(heads.items()):
            strategy = self.strategy(scope)
            candidates = list(by_chain.values())
            if strategy is Strategy.AUTHORITY_PRECEDENCE:
                candidates = [
                    i for i in candidates if not any(self.supersedes(j, i) for j in candidates)
                ]
            best = max(candidates, key=lambda i: self.order(i, strategy))
            _, _, _, _, value, deleted, _ = self.receipts[best]
            if not deleted:
                view.setdefault(scope, {}).setdefault(collection, {})[key] = value
        return view

    def order(self, index: int, strategy: Strategy) -> tuple[Any, ...]:
        writer, *_, receipt = self.receipts[index]
        order: tuple[Any, ...] = (receipt.hlc, receipt.chain)
        if strategy is Strategy.AUTHORITY_PRECEDENCE:
            order = (FLEET[writer].delegation.tier.rank, *order)
        return order

    def supersedes(self, newer: int, older: int) -> bool:
        a, b = self.receipts[newer][-1], self.receipts[older][-1]
        return a.chain != b.chain and older in self.seen[newer] and a.hlc > b.hlc

    @staticmethod
    def strategy(scope: str) -> Strategy:
        for name in NAMES:
            delegation = FLEET[name].delegation
            if str(delegation.scope) == scope and delegation.autonomy is Autonomy.CONDITIONAL:
                return Strategy.AUTHORITY_PRECEDENCE
        return Strategy.LAST_WRITER_WINS


TestFederation = Federation.TestCase
TestFederation.settings = settings(
    max_examples=int(os.environ.get("SOUVERIX_STATEFUL_EXAMPLES", "25")),
    stateful_step_count=40,
    deadline=None,
)
