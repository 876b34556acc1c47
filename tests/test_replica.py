"""The replica: receipts, the receive path's decisions, late authority decisions, restarts."""

from __future__ import annotations

import asyncio
import copy
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from souverix_crdt.authority import Capability, cut_key, issue_revocation
from souverix_crdt.document import ScopeState, WriteOp
from souverix_crdt.errors import (
    CapabilityViolationError,
    DiskFullError,
    InvalidValueError,
    ScopeViolationError,
    StoreBusyError,
    StoreError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.replica import Identity, IngestOutcome, Replica
from souverix_crdt.scope import Autonomy, Tier
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import NOW, make_fleet

FLEET = make_fleet()
EDGE = "global/region-a/edge-a1"


def cluster(*names: str, **kwargs: Any) -> Cluster:
    return Cluster(FLEET, names or ("global", "region-a", "edge-a1"), **kwargs)


def share_authority(*replicas: Replica) -> None:
    for source in replicas:
        for target in replicas:
            target.add_delegations(source.delegations())


def envelopes_of(replica: Replica, scope: str) -> list[bytes]:
    return replica.envelopes_after(scope, replica.chain, 0, 10_000)


# --------------------------------------------------------------------------- writing


def test_receipt_names_a_durable_envelope() -> None:
    c = cluster()
    edge = c["edge-a1"]
    receipt = edge.scope(EDGE).nodes.set("n1", {"status": "up"})
    stored = c.stores["edge-a1"].envelope(receipt.envelope_id)
    assert stored is not None
    assert (stored.scope, stored.writer, stored.seq) == (EDGE, edge.chain, 1)
    assert receipt.hlc == Timestamp(NOW, 0)
    assert edge.scope(EDGE).nodes["n1"] == {"status": "up"}


def test_transaction_is_one_envelope_and_abandoned_on_error() -> None:
    c = cluster()
    edge = c["edge-a1"]
    with edge.transaction(EDGE) as tx:
        tx.nodes.set("a", 1)
        tx.nodes.set("b", 2)
        tx.policies.set("p", "x")
    assert tx.receipt is not None
    assert tx.receipt.seq == 1
    failed = edge.transaction(EDGE)

    def abandon() -> None:
        with failed:
            failed.nodes.set("c", 3)
            raise RuntimeError("abandon")

    with pytest.raises(RuntimeError):
        abandon()
    assert failed.receipt is None
    assert "c" not in edge.scope(EDGE).nodes
    assert edge.chain_seq(EDGE, edge.chain) == 1


def test_writes_outside_authority_are_refused_and_change_nothing() -> None:
    c = cluster()
    edge = c["edge-a1"]
    before = edge.digest()
    with pytest.raises(ScopeViolationError):
        edge.scope("global").policies.set("p", 1)
    with pytest.raises(ScopeViolationError):
        edge.scope("global/region-a/edge-a2").nodes.set("n", 1)
    with pytest.raises(CapabilityViolationError):
        edge.scope(EDGE).versions.set("app", "2.0")  # edges hold no deploy_versions
    with pytest.raises(InvalidValueError):
        edge.scope(EDGE).nodes.set("n", object())
    assert edge.digest() == before
    assert edge.chain_seq(EDGE, edge.chain) == 0
    assert edge.clock.last == Timestamp.ZERO


# --------------------------------------------------------------------------- receiving


def test_duplicates_gaps_and_late_delegations() -> None:
    c = cluster()
    region, edge = c["region-a"], c["edge-a1"]
    for i in range(3):
        edge.scope(EDGE).nodes.set(f"n{i}", i)
    first, second, third = envelopes_of(edge, EDGE)
    # The edge's delegation is unknown to the region at first: parked, not rejected.
    assert region.ingest(third).outcome is IngestOutcome.PENDING
    share_authority(region, edge)
    assert region.scope(EDGE).nodes.get("n2") is None  # still waiting for seq 1 and 2
    assert region.ingest(second).outcome is IngestOutcome.PENDING
    assert region.ingest(first).outcome is IngestOutcome.APPLIED
    assert region.snapshot()[EDGE]["nodes"] == {"n0": 0, "n1": 1, "n2": 2}
    assert region.ingest(second).outcome is IngestOutcome.DUPLICATE
    assert region.status().pending == 0


def test_far_future_envelope_is_quarantined_and_the_next_honest_write_wins() -> None:
    c = cluster()
    region, edge = c["region-a"], c["edge-a1"]
    share_authority(region, edge)
    edge.scope(EDGE).policies.set("mode", "honest-1")
    # A forged future: the edge's clock leaps a day ahead for one write.
    c.advance(86_400_000)
    future = edge.scope(EDGE).policies.set("mode", "from-the-future")
    c.advance(-86_400_000)
    clock_before = region.clock.last
    results = region.ingest_many(envelopes_of(edge, EDGE))
    assert [r.outcome for r in results] == [IngestOutcome.APPLIED, IngestOutcome.QUARANTINED]
    assert region.clock.last == max(clock_before, Timestamp(NOW, 0))
    assert region.status().quarantined == {edge.identity.key_id: 1}
    assert region.scope(EDGE).policies["mode"] == "honest-1"
    assert future.seq == 2
    # The region itself writes the key: its honest write wins on the region...
    region.scope(EDGE).policies.set("mode", "region-says")
    assert region.scope(EDGE).policies["mode"] == "region-says"
    # ...and the quarantined envelope is not forwarded to anyone.
    assert all(e != envelopes_of(edge, EDGE)[1] for e in envelopes_of(region, EDGE))


def test_equivocation_cuts_the_chain_identically_everywhere() -> None:
    c = cluster("region-a", "edge-a1", "edge-a2")
    region = c["region-a"]
    member = FLEET["edge-a1"]
    share_authority(region, c["edge-a1"])
    writer = member.writer(EDGE)
    empty_update = b"\x00\x00"
    one = writer.next(empty_update)
    # Two different envelopes for seq 2: the edge key signed both.
    branch = member.seal(
        seq=2, prev=one.id, hlc=Timestamp(NOW + 5), scope=EDGE, payload=empty_update
    )
    other = member.seal(
        seq=2, prev=one.id, hlc=Timestamp(NOW + 6), scope=EDGE, payload=empty_update
    )
    assert region.ingest(one.data).outcome is IngestOutcome.APPLIED
    assert region.ingest(branch.data).outcome is IngestOutcome.APPLIED
    result = region.ingest(other.data)
    assert result.outcome is IngestOutcome.EQUIVOCATION
    status = region.status()
    assert status.equivocators == {f"{EDGE}|{member.key_id}~0": 2}
    assert region.chain_seq(EDGE, f"{member.key_id}~0") == 1
    # The proof is portable: another replica that saw only the other branch applies it too.
    witness = c["edge-a2"]
    witness.add_delegations(region.delegations())
    witness.ingest_many([one.data, other.data])
    [(first, second)] = region.proofs()
    assert witness.add_proof(first, second)
    assert witness.chain_seq(EDGE, f"{member.key_id}~0") == 1


def test_late_revocation_rebuilds_without_the_writes_past_the_cut() -> None:
    c = cluster("global", "region-a", "edge-a1")
    region, edge = c["region-a"], c["edge-a1"]
    share_authority(region, edge)
    edge.scope(EDGE).policies.set("p", "before-cut")
    edge.scope(EDGE).policies.set("p", "after-cut")
    edge.scope(EDGE).nodes.set("n", "after-cut")
    region.ingest_many(envelopes_of(edge, EDGE))
    assert region.scope(EDGE).policies["p"] == "after-cut"
    revocation = issue_revocation(
        FLEET["region-a"].key,
        fleet_id=FLEET.anchors.fleet_id,
        revoked=edge.identity.key_id,
        cut={cut_key(EDGE, edge.epoch): 1},
        hlc=Timestamp(NOW + 10),
    )
    assert region.add_revocations([revocation.encode()]) == 1
    assert region.scope(EDGE).policies["p"] == "before-cut"
    assert "n" not in region.scope(EDGE).nodes
    # Envelopes past the cut are refused from now on, whatever they claim.
    fresh = cluster("region-a")["region-a"]
    fresh.add_delegations(region.delegations())
    fresh.add_revocations(region.revocations())
    outcomes = [r.outcome for r in fresh.ingest_many(envelopes_of(edge, EDGE))]
    assert outcomes == [IngestOutcome.APPLIED, IngestOutcome.REJECTED, IngestOutcome.REJECTED]
    assert fresh.digest() == region.digest()


def test_status_only_writer_cannot_change_policies_even_in_its_own_document() -> None:
    fleet = make_fleet()
    sensor = fleet.delegate(
        "sensor",
        parent="region-a",
        scope=EDGE,
        capabilities={Capability.REPORT_STATUS},
        tier=Tier.LOCAL,
        autonomy=Autonomy.CONDITIONAL,
    )
    c = Cluster(fleet, ["region-a", "edge-a1"])
    region = c["region-a"]
    region.add_delegations([d.encode() for d in sensor.chain])
    # The sensor signs an envelope whose document writes a policy and a node.
    doc_state = ScopeState(region.fleet.scope(EDGE).scope)
    chain = f"{sensor.key_id}~0"
    result = doc_state.write(
        chain,
        Timestamp(NOW),
        [WriteOp("policies", "p", "evil"), WriteOp("nodes", "sensor-1", "ok")],
    )
    sealed = sensor.seal(
        seq=1,
        scope=EDGE,
        payload=result.update,
        state_vector=doc_state.document(chain).state_vector(),
    )
    assert region.ingest(sealed.data).outcome is IngestOutcome.APPLIED
    assert region.scope(EDGE).nodes["sensor-1"] == "ok"
    assert "p" not in region.scope(EDGE).policies


# --------------------------------------------------------------------------- restarts


def test_restart_restores_state_and_starts_a_new_chain() -> None:
    c = cluster("region-a")
    region = c["region-a"]
    region.scope("global/region-a").policies.set("p", 1)
    old_chain, digest, last = region.chain, region.digest(), region.clock.last
    reopened = c.restart("region-a")
    assert reopened.digest() == digest
    assert reopened.chain != old_chain
    assert reopened.clock.last >= last
    receipt = reopened.scope("global/region-a").policies.set("p", 2)
    assert receipt.seq == 1  # a new chain, so no published (chain, seq) is ever reused
    assert receipt.hlc > last


def test_restart_from_an_old_copy_never_reuses_what_was_published() -> None:
    c = cluster("region-a", "global")
    region, peer = c["region-a"], c["global"]
    share_authority(region, peer)
    region.scope("global/region-a").policies.set("p", 1)
    old_copy = copy.deepcopy(c.stores["region-a"])  # a backup taken here
    published = [region.scope("global/region-a").policies.set("p", i) for i in range(2, 5)]
    peer.ingest_many(envelopes_of(region, "global/region-a"))
    restored = c.restart("region-a", store=old_copy)
    again = restored.scope("global/region-a").policies.set("p", 99)
    # Sequence numbers and Yjs clocks belong to the new chain: nothing published is reused,
    # even with the wall clock standing still across the restart.
    assert (again.chain, again.seq) not in {(r.chain, r.seq) for r in published}
    assert (again.chain, again.hlc) not in {(r.chain, r.hlc) for r in published}
    # A restart takes time; once the wall clock has moved, timestamps are fresh too.
    c.advance(1)
    later = restored.scope("global/region-a").policies.set("p", 99)
    assert later.hlc > max(r.hlc for r in published)
    # The peer accepts it as a new chain: no equivocation, and it wins by time.
    peer.ingest_many(envelopes_of(restored, "global/region-a"))
    assert peer.status().equivocators == {}
    assert peer.scope("global/region-a").policies["p"] == 99


# --------------------------------------------------------------------------- subscriptions


def test_change_and_conflict_callbacks_and_async_iterator() -> None:
    c = cluster()
    region, edge = c["region-a"], c["edge-a1"]
    share_authority(region, edge)
    changes: list[Any] = []
    conflicts: list[Any] = []
    region.on_change(changes.extend)
    region.on_conflict(conflicts.append)

    async def collect() -> list[Any]:
        seen = []
        stream = region.changes()
        task = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)
        region.scope(EDGE).policies.set("p", "region")
        seen.append(await task)
        await stream.aclose()
        return seen

    [streamed] = asyncio.run(collect())
    assert streamed.key == "p"
    edge.scope(EDGE).policies.set("p", "edge")  # concurrent: neither saw the other
    region.ingest_many(envelopes_of(edge, EDGE))
    assert len(conflicts) == 1
    assert conflicts[0].reason == "authority-rank"  # edge-a1 is conditional: the region wins
    assert region.scope(EDGE).policies["p"] == "region"
    assert [ch.key for ch in changes] == ["p"]


def test_empty_transaction_is_refused() -> None:
    with pytest.raises(ValueError):
        cluster()["edge-a1"].write(EDGE, [])


@pytest.mark.parametrize(
    ("kind", "message", "error"),
    [
        ("memory", "disk full", DiskFullError),
        ("sqlite", "database or disk is full", DiskFullError),
        ("sqlite", "database is locked", StoreBusyError),
    ],
)
def test_disk_full_and_busy_at_each_statement_of_a_write(
    tmp_path: Path, kind: str, message: str, error: type[StoreError]
) -> None:
    fail_at: list[int | None] = [None]
    count = [0]

    def hook(_name: str) -> None:
        count[0] += 1
        if fail_at[0] is not None and count[0] == fail_at[0]:
            if kind == "memory":
                raise DiskFullError(message, reason="disk-full")
            raise sqlite3.OperationalError(message)

    store: MemoryStore | SqliteStore
    if kind == "memory":
        store = MemoryStore(statement_hook=hook)
    else:
        store = SqliteStore.open(tmp_path / "r.sqlite3", statement_hook=hook)
    member = FLEET["region-a"]
    replica = Replica(
        Identity(member.key, member.chain), FLEET.anchors, store, wall_clock=lambda: NOW, epoch=1
    )
    replica.register_peer("global", ["global"])
    policies = replica.scope("global/region-a").policies
    policies.set("kept", 1)
    statements = 0
    for step in range(1, 100):
        state = (replica.digest(), replica.clock.last, replica.sync_debt("global"))
        state += (store.frontiers(), store.hlc())
        count[0] = 0
        fail_at[0] = step
        try:
            policies.set("lost", step)
        except error:
            statements += 1
        else:
            break  # the commit has fewer statements than this: every one was tried
        finally:
            fail_at[0] = None
        after = (replica.digest(), replica.clock.last, replica.sync_debt("global"))
        after += (store.frontiers(), store.hlc())
        assert after == state
        assert "lost" not in policies
    assert statements >= 3  # envelope, outbox, hlc...: each statement was hit
    assert policies.set("next", 2).seq == 3  # the last loop round wrote seq 2
    assert policies["next"] == 2
    store.close()


def test_a_register_dated_after_its_envelope_does_not_count() -> None:
    """A writer cannot hide a far-future timestamp inside its data past the clock bound."""
    c = cluster()
    region = c["region-a"]
    member = FLEET["edge-a1"]
    region.add_delegations([d.encode() for d in member.chain])
    forger = ScopeState(region.fleet.scope(EDGE).scope)
    chain = f"{member.key_id}~0"
    honest = forger.write(chain, Timestamp(NOW), [WriteOp("policies", "fine", 1)])
    sealed = member.seal(seq=1, scope=EDGE, payload=honest.update, hlc=Timestamp(NOW))
    future = forger.write(chain, Timestamp(NOW + 10**9), [WriteOp("policies", "p", "forever")])
    # The envelope claims an honest time; the register inside claims a day and more later.
    forged = member.seal(
        seq=2, prev=sealed.id, scope=EDGE, payload=future.update, hlc=Timestamp(NOW + 1)
    )
    assert [r.outcome for r in region.ingest_many([sealed.data, forged.data])] == [
        IngestOutcome.APPLIED,
        IngestOutcome.APPLIED,
    ]
    assert region.scope(EDGE).policies["fine"] == 1
    assert "p" not in region.scope(EDGE).policies


def test_replaying_an_old_envelope_changes_nothing_and_audits_nothing() -> None:
    c = cluster()
    region, edge = c["region-a"], c["edge-a1"]
    share_authority(region, edge)
    region.scope(EDGE).policies.set("p", "region")
    edge.scope(EDGE).policies.set("p", "edge")
    old = envelopes_of(edge, EDGE)
    region.ingest_many(old)
    before = (region.digest(), region.conflicts(), region.status().frontiers)
    assert len(before[1]) == 1
    for _ in range(3):
        assert region.ingest(old[0]).outcome is IngestOutcome.DUPLICATE
    assert (region.digest(), region.conflicts(), region.status().frontiers) == before


def test_the_pending_area_is_bounded() -> None:
    fleet_cluster = Cluster(FLEET, ["region-a", "edge-a1"])
    region, edge = fleet_cluster["region-a"], fleet_cluster["edge-a1"]
    member = FLEET["region-a"]
    small = Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore(),
        wall_clock=lambda: NOW,
        max_pending=3,
        epoch=9,
    )
    small.add_delegations(edge.delegations())
    for i in range(6):
        edge.scope(EDGE).nodes.set(f"n{i}", i)
    frames = envelopes_of(edge, EDGE)
    outcomes = [small.ingest(frame).outcome for frame in frames[1:]]  # seq 1 never arrives
    assert outcomes == [IngestOutcome.PENDING] * 3 + [IngestOutcome.REJECTED] * 2
    assert small.status().pending == 3
    assert small.ingest(frames[0]).outcome is IngestOutcome.APPLIED
    assert small.status().pending == 0
    del region


def test_a_revoked_key_cannot_escape_its_cut_by_restarting() -> None:
    """Sequence numbers restart with every incarnation: the cut names the chain, not the scope."""
    c = cluster("region-a", "edge-a1")
    region, edge = c["region-a"], c["edge-a1"]
    share_authority(region, edge)
    edge.scope(EDGE).policies.set("p", "before")
    region.ingest_many(envelopes_of(edge, EDGE))
    revocation = issue_revocation(
        FLEET["region-a"].key,
        fleet_id=FLEET.anchors.fleet_id,
        revoked=edge.identity.key_id,
        cut={cut_key(EDGE, edge.epoch): 1},
        hlc=Timestamp(NOW + 10),
    )
    region.add_revocations([revocation.encode()])
    # The leaked key starts a fresh process: a new chain, numbered from 1 again.
    reborn = c.restart("edge-a1")
    reborn.scope(EDGE).policies.set("p", "after-revocation")
    results = region.ingest_many(envelopes_of(reborn, EDGE))
    assert [r.outcome for r in results] == [IngestOutcome.REJECTED]
    assert region.scope(EDGE).policies["p"] == "before"
