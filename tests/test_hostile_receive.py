"""Hostile input on the receive path: pending, quarantine and chains stay within their budgets.

Each test performs an attack with real signed envelopes against a real replica (a region hub
taking envelopes from zones it does not control) and checks the bound the attack would break:
the bytes and items held, per source and in all, in memory and in the store; the typed refusal
(``TooLargeError`` named after the budget); and that an honest zone's envelopes still get
through while the attack goes on. Budgets are small (``Limits.evolve``) where that keeps the
point, so the suite stays fast.
"""

from __future__ import annotations

import collections
from pathlib import Path

from souverix_crdt.authority import Capability
from souverix_crdt.envelope import SealedEnvelope
from souverix_crdt.errors import TooLargeError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.limits import DEFAULT_LIMITS, Limits
from souverix_crdt.replica import Identity, IngestOutcome, IngestResult, Replica
from souverix_crdt.scope import Autonomy, Tier
from souverix_crdt.store.base import Store
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.sync.messages import FrontierRow, Frontiers, encode_message
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import NOW, Fleet, Member, make_fleet

FLEET = make_fleet()
EDGE_A1 = "global/region-a/edge-a1"
EDGE_A2 = "global/region-a/edge-a2"
PAYLOAD = b"x" * 1_000
#: An empty Yjs update: what a chain's first envelope may carry and still apply.
EMPTY_UPDATE = b"\x00\x00"
#: Small budgets: a flood of a few thousand envelopes overruns every one of them many times.
SMALL = DEFAULT_LIMITS.evolve(
    pending_per_source=200,
    pending_bytes_per_source=64 * 1024,
    pending_total=1_000,
    pending_bytes_total=1024 * 1024,
    quarantine_per_source=50,
    quarantine_bytes_per_source=32 * 1024,
)

# A second fleet with the same fleet id but other roots: its keys verify to nothing here.
ROGUE = Fleet(FLEET.fleet_id, seed=b"rogue fleet")
ROGUE.delegate(
    "rogue-region",
    parent=None,
    scope="global/region-a",
    capabilities=set(Capability),
    tier=Tier.REGIONAL,
    autonomy=Autonomy.FULL,
)
ROGUE.delegate(
    "rogue-edge",
    parent="rogue-region",
    scope=EDGE_A1,
    capabilities=set(Capability),
    tier=Tier.LOCAL,
    autonomy=Autonomy.FULL,
)
ROGUE.delegate(
    "rogue-unknown",
    parent=None,
    scope=EDGE_A1,
    capabilities=set(Capability),
    tier=Tier.LOCAL,
    autonomy=Autonomy.FULL,
)


def hub(store: Store | None = None, limits: Limits = SMALL, *, epoch: int = 7) -> Replica:
    """region-a's replica, knowing the real zones' chains (and a parked rogue delegation)."""
    member = FLEET["region-a"]
    replica = Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore() if store is None else store,
        wall_clock=lambda: NOW,
        epoch=epoch,
        limits=limits,
    )
    for name in ("edge-a1", "edge-a2"):
        replica.add_delegations(link.encode() for link in FLEET[name].chain)
    # The rogue leaf's parent is unknown here: it is parked (it counts for nothing), so its key
    # is known well enough to check a signature made with it, and no more.
    replica.add_delegations([ROGUE["rogue-edge"].delegation.encode()])
    return replica


def forged(sealed: SealedEnvelope) -> bytes:
    """The envelope with its signature's last byte flipped."""
    return sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])


def gapped(
    member: Member, count: int, *, epoch: int, start: int = 3, payload: bytes = PAYLOAD
) -> list[SealedEnvelope]:
    """Validly signed envelopes of one chain from ``start`` on: seq 1 and 2 never come."""
    return [
        member.seal(seq=seq, prev=b"\x01" * 32, epoch=epoch, payload=payload)
        for seq in range(start, start + count)
    ]


def far_future(member: Member, count: int, *, epoch: int) -> list[SealedEnvelope]:
    """Validly signed envelopes dated an hour ahead (far beyond ``max_offset``)."""
    hlc = Timestamp(NOW + 3_600_000)
    return [
        member.seal(seq=1, epoch=epoch + n, hlc=hlc, payload=PAYLOAD + n.to_bytes(4, "big"))
        for n in range(count)
    ]


def reasons(results: list[IngestResult]) -> collections.Counter[str]:
    return collections.Counter(
        r.error.reason
        for r in results
        if r.outcome is IngestOutcome.REJECTED and isinstance(r.error, TooLargeError)
    )


def held_bytes(items: list[bytes]) -> int:
    return sum(len(item) for item in items)


def check_within_budgets(replica: Replica, store: Store, limits: Limits) -> None:
    """Pending and quarantine, per source and in all, in memory and in the store."""
    status = replica.status()
    for usage in (*status.pending_by_writer.values(), *status.pending_by_source.values()):
        assert usage.count <= limits.pending_per_source
        assert usage.bytes <= limits.pending_bytes_per_source
    pending = [
        *status.pending_by_writer.values(),
        *status.pending_by_source.values(),
    ]
    assert sum(u.count for u in pending) == status.pending <= limits.pending_total
    assert sum(u.bytes for u in pending) <= limits.pending_bytes_total
    for usage in status.quarantine_by_writer.values():
        assert usage.count <= limits.quarantine_per_source
        assert usage.bytes <= limits.quarantine_bytes_per_source
    # The store holds exactly what memory holds: nothing beyond the budgets is persisted.
    stored_pending = [item.data for item in store.pending()]
    assert len(stored_pending) == status.pending
    assert held_bytes(stored_pending) == sum(u.bytes for u in pending)
    stored_quarantine = [item.data for item in store.quarantine()]
    assert len(stored_quarantine) == sum(u.count for u in status.quarantine_by_writer.values())
    assert held_bytes(stored_quarantine) == sum(
        u.bytes for u in status.quarantine_by_writer.values()
    )


def honest_zone() -> tuple[Cluster, list[bytes]]:
    """edge-a2 as a real replica with three writes: its envelopes, seq 1 to 3."""
    cluster = Cluster(FLEET, ["edge-a2"])
    edge = cluster["edge-a2"]
    for n in range(3):
        edge.scope(EDGE_A2).nodes.set(f"n{n}", n)
    return cluster, edge.envelopes_after(EDGE_A2, edge.chain, 0, 10)


# --------------------------------------------------------------------------- the junk flood


def test_ten_thousand_junk_envelopes_stay_within_the_byte_budgets_and_a_gap_fill_gets_through(
    tmp_path: Path,
) -> None:
    store = SqliteStore.open(tmp_path / "region-a.db")
    region = hub(store)
    _, honest = honest_zone()
    # edge-a2's seq 2 and 3 arrive first: they wait for seq 1, within edge-a2's own budget.
    waiting = region.ingest_many(honest[1:], source="edge-a2")
    assert [r.outcome for r in waiting] == [IngestOutcome.PENDING] * 2

    edge, rogue = FLEET["edge-a1"], ROGUE["rogue-edge"]
    junk = [
        # No valid signature: from a real zone's key, far-future and gapped alike.
        *(forged(e) for e in gapped(edge, 1_000, epoch=1, start=10_000)),
        *(forged(e) for e in far_future(edge, 1_000, epoch=10_000)),
        # Validly signed by keys that verify to nothing (a parked leaf, an unknown one), small
        # enough that the count budget binds before the byte budget.
        *(e.data for e in gapped(rogue, 2_000, epoch=2, payload=b"r")),
        *(e.data for e in gapped(ROGUE["rogue-unknown"], 1_000, epoch=3, payload=b"u")),
        # A real zone's key: far-future, and gapped behind a gap that never fills.
        *(e.data for e in far_future(edge, 2_000, epoch=20_000)),
        *(e.data for e in gapped(edge, 3_000, epoch=4)),
    ]
    assert len(junk) == 10_000
    results: list[IngestResult] = []
    for start in range(0, len(junk), 500):
        results += region.ingest_many(junk[start : start + 500], source="edge-a1")
        # The honest gap-fill, in the middle of the flood: applied at once, then what waited.
        if start == 5_000:
            filled = region.ingest(honest[0], source="edge-a2")
            assert filled.outcome is IngestOutcome.APPLIED
            assert region.snapshot()[EDGE_A2]["nodes"] == {"n0": 0, "n1": 1, "n2": 2}

    check_within_budgets(region, store, SMALL)
    refused = reasons(results)
    assert refused["pending_bytes_per_source"] > 0  # edge-a1's gapped chain: 64 KiB of it
    assert refused["pending_per_source"] > 0  # the rogue keys, charged to the session
    assert refused["quarantine_bytes_per_source"] > 0  # edge-a1's far-future envelopes
    status = region.status()
    edge_usage = status.pending_by_writer[edge.key_id]
    assert edge_usage.bytes <= SMALL.pending_bytes_per_source < edge_usage.bytes + 1_300
    assert status.pending_by_source["edge-a1"].count == SMALL.pending_per_source
    assert set(status.quarantine_by_writer) == {edge.key_id}  # only what fully verified
    assert status.quarantined == {edge.key_id: status.quarantine_by_writer[edge.key_id].count}
    assert EDGE_A2 in region.snapshot()


def test_nothing_is_held_before_it_is_authenticated() -> None:
    region = hub(MemoryStore(), DEFAULT_LIMITS)
    edge, rogue = FLEET["edge-a1"], ROGUE["rogue-edge"]
    outside = edge.seal(scope=EDGE_A2, hlc=Timestamp(NOW + 3_600_000), payload=PAYLOAD)
    attempts = [
        forged(edge.seal(seq=5, prev=b"\x01" * 32, payload=PAYLOAD)),  # gapped, forged
        forged(far_future(edge, 1, epoch=1)[0]),  # far-future, forged
        forged(gapped(rogue, 1, epoch=2)[0]),  # a parked key's forgery
        outside.data,  # far-future, validly signed, outside the writer's scope
    ]
    results = region.ingest_many(attempts, source="edge-a1")
    assert [r.outcome for r in results] == [IngestOutcome.REJECTED] * 4
    assert [type(r.error).__name__ for r in results] == [
        "SignatureError",
        "SignatureError",
        "SignatureError",
        "ScopeViolationError",
    ]
    status = region.status()
    assert (status.pending, status.quarantined) == (0, {})
    assert region.store.pending() == []
    assert region.store.quarantine() == []


def test_a_source_over_its_budget_evicts_nothing_another_source_holds() -> None:
    region = hub()
    _, honest = honest_zone()
    assert region.ingest(honest[2], source="edge-a2").outcome is IngestOutcome.PENDING
    # Held for another session: an envelope of a zone whose delegation the hub lacks.
    late = Cluster(FLEET, ["edge-b1"])["edge-b1"]
    late.scope("global/region-b/edge-b1").nodes.set("n", 1)
    awaited = late.envelopes_after("global/region-b/edge-b1", late.chain, 0, 1)[0]
    assert region.ingest(awaited, source="region-b").outcome is IngestOutcome.PENDING
    before = region.status()

    edge = FLEET["edge-a1"]
    flood = [e.data for e in gapped(edge, 400, epoch=1)]
    flood += [e.data for e in gapped(ROGUE["rogue-unknown"], 400, epoch=2)]
    flood += [e.data for e in far_future(edge, 100, epoch=100)]
    results = region.ingest_many(flood, source="edge-a1")
    assert reasons(results).keys() >= {"pending_bytes_per_source", "quarantine_bytes_per_source"}
    after = region.status()
    # What the other sources held is held still, byte for byte.
    for area in ("pending_by_writer", "pending_by_source"):
        for source, usage in getattr(before, area).items():
            assert getattr(after, area)[source] == usage
    # ...and it completes: edge-a2's gap fills, edge-b1's delegation arrives.
    assert region.ingest(honest[0], source="edge-a2").outcome is IngestOutcome.APPLIED
    assert region.ingest(honest[1], source="edge-a2").outcome is IngestOutcome.APPLIED
    assert region.snapshot()[EDGE_A2]["nodes"] == {"n0": 0, "n1": 1, "n2": 2}
    region.add_delegations(link.encode() for link in FLEET["edge-b1"].chain)
    assert region.snapshot()["global/region-b/edge-b1"]["nodes"] == {"n": 1}
    assert FLEET["edge-a2"].key_id not in region.status().pending_by_writer


def test_the_total_budget_refuses_newcomers_and_keeps_what_is_held() -> None:
    limits = SMALL.evolve(pending_total=50)
    region = hub(limits=limits)
    edge = FLEET["edge-a1"]
    first = region.ingest_many([e.data for e in gapped(edge, 50, epoch=1)], source="edge-a1")
    assert [r.outcome for r in first] == [IngestOutcome.PENDING] * 50
    _, honest = honest_zone()
    refused = region.ingest(honest[2], source="edge-a2")
    assert refused.outcome is IngestOutcome.REJECTED
    assert isinstance(refused.error, TooLargeError)
    assert refused.error.reason == "pending_total"
    # The gap-fill needs no pending room, even with the area full.
    assert region.ingest(honest[0], source="edge-a2").outcome is IngestOutcome.APPLIED
    assert region.status().pending == 50


def test_an_oversized_envelope_is_refused_before_it_is_decoded() -> None:
    region = hub(limits=SMALL.evolve(max_envelope=4_096))
    big = FLEET["edge-a1"].seal(payload=b"y" * 8_192)
    result = region.ingest(big.data, source="edge-a1")
    assert result.outcome is IngestOutcome.REJECTED
    assert isinstance(result.error, TooLargeError)
    assert result.error.reason == "max_envelope"


# --------------------------------------------------------------------------- restarts


def test_a_restart_keeps_pending_and_quarantine_under_the_same_budgets(tmp_path: Path) -> None:
    path = tmp_path / "region-a.db"
    region = hub(SqliteStore.open(path))
    edge = FLEET["edge-a1"]
    region.ingest_many([e.data for e in gapped(edge, 300, epoch=1)], source="edge-a1")
    region.ingest_many([e.data for e in gapped(ROGUE["rogue-unknown"], 300, epoch=2)], source="x")
    region.ingest_many([e.data for e in far_future(edge, 100, epoch=10)], source="edge-a1")
    before = region.status()
    region.close()

    again = hub(SqliteStore.open(path), epoch=8)
    after = again.status()
    assert after.pending_by_writer == before.pending_by_writer
    assert after.pending_by_source == before.pending_by_source
    assert after.quarantine_by_writer == before.quarantine_by_writer
    # Still full: newcomers are refused after the restart as before it.
    more = again.ingest_many([e.data for e in gapped(edge, 5, epoch=1, start=400)])
    assert set(reasons(more)) == {"pending_bytes_per_source"}
    again.close()

    # Lower budgets on reload: the oldest items are kept, the rest leave memory and the store.
    lower = SMALL.evolve(
        pending_per_source=10, pending_bytes_per_source=10**6, quarantine_per_source=5
    )
    store = SqliteStore.open(path)
    trimmed = hub(store, lower, epoch=9)
    check_within_budgets(trimmed, store, lower)
    assert trimmed.status().pending_by_writer[edge.key_id].count == 10
    assert trimmed.status().quarantine_by_writer[edge.key_id].count == 5


def test_a_released_quarantined_envelope_leaves_the_store() -> None:
    clock = [NOW]
    member = FLEET["region-a"]
    store = MemoryStore()
    region = Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        store,
        wall_clock=lambda: clock[0],
        epoch=7,
        limits=SMALL,
    )
    region.add_delegations(link.encode() for link in FLEET["edge-a1"].chain)
    future = FLEET["edge-a1"].seal(hlc=Timestamp(NOW + 10_000), payload=EMPTY_UPDATE)
    assert region.ingest(future.data).outcome is IngestOutcome.QUARANTINED
    assert len(store.quarantine()) == 1
    clock[0] += 10_000
    assert [r.outcome for r in region.tick()] == [IngestOutcome.APPLIED]
    # Gone from the store too: it would otherwise come back on every restart and eat the
    # writer's quarantine budget for good.
    assert store.quarantine() == []
    assert region.status().quarantine_by_writer == {}


# --------------------------------------------------------------------------- chains


def test_a_hundred_thousand_chains_of_one_key_stay_within_the_chain_budget() -> None:
    region = hub(MemoryStore(), DEFAULT_LIMITS)
    edge = FLEET["edge-a1"]
    bound = DEFAULT_LIMITS.chains_per_writer
    refused: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[IngestOutcome] = collections.Counter()
    for start in range(0, 100_000, 5_000):
        # Each attempt is a new epoch of the one key, validly signed (a stolen zone key).
        batch = [
            edge.seal(epoch=epoch, payload=EMPTY_UPDATE).data
            for epoch in range(start, start + 5_000)
        ]
        results = region.ingest_many(batch, source="edge-a1")
        outcomes.update(r.outcome for r in results)
        refused.update(reasons(results))
    # The first ``bound`` chains are held (their updates are empty but valid)...
    assert outcomes[IngestOutcome.APPLIED] == bound
    assert refused == {"chains_per_writer": 100_000 - bound}
    chains = {chain for _, chain, _, _ in region.frontiers() if chain.startswith(edge.key_id)}
    assert len(chains) == bound
    # ...and keep working: a chain already held is extended, the refusals evicted none.
    last = {chain: last for _, chain, _, last in region.frontiers()}
    second = edge.seal(seq=2, prev=last[f"{edge.key_id}~0"], epoch=0, payload=EMPTY_UPDATE)
    assert region.ingest(second.data, source="edge-a1").outcome is IngestOutcome.APPLIED
    # The frontiers a peer receives fit a frame, and would at the bound for every writer key
    # the hub knows: rows x row size vs max_frame.
    rows = tuple(FrontierRow(s, c, q, last) for s, c, q, last in region.frontiers())
    frame = encode_message(Frontiers(rows, b"\x00" * 32))
    row_size = len(frame) / len(rows)
    assert len(frame) < DEFAULT_LIMITS.max_frame
    writers = len({link.subject.key_id for link in region.authority.delegations()})
    assert writers * bound * row_size < DEFAULT_LIMITS.max_frame


def test_the_chain_budget_refuses_checkpoints_and_proofs_of_new_chains_too() -> None:
    region = hub(MemoryStore(), SMALL.evolve(chains_per_writer=2))
    cluster = Cluster(FLEET, ["edge-a1"])
    edge = cluster["edge-a1"]
    edge.scope(EDGE_A1).nodes.set("n", 1)
    checkpoint = edge.checkpoint(EDGE_A1)
    assert checkpoint is not None
    member = FLEET["edge-a1"]
    for epoch in (10, 11):
        sealed = member.seal(epoch=epoch, payload=EMPTY_UPDATE)
        assert region.ingest(sealed.data).outcome is IngestOutcome.APPLIED
    result = region.ingest_checkpoint(checkpoint)
    assert result.outcome is IngestOutcome.REJECTED
    assert isinstance(result.error, TooLargeError)
    assert result.error.reason == "chains_per_writer"
    one, other = (member.seal(epoch=12, payload=p) for p in (EMPTY_UPDATE, b"\x00"))
    try:
        region.add_proof(one.data, other.data)
    except TooLargeError as exc:
        assert exc.reason == "chains_per_writer"
    else:
        raise AssertionError("a proof opened a chain beyond the budget")
    assert len({c for _, c, _, _ in region.frontiers()}) == 2


def test_honest_writers_far_below_the_chain_budget_converge_in_any_order() -> None:
    member = FLEET["edge-a1"]
    frames = [member.seal(epoch=epoch, payload=EMPTY_UPDATE).data for epoch in range(5)]
    forward, backward = hub(epoch=1), hub(epoch=2)
    forward.ingest_many(frames)
    backward.ingest_many(frames[::-1])
    assert forward.frontiers() == backward.frontiers()
    assert forward.digest() == backward.digest()


def test_max_pending_still_bounds_the_pending_area_in_all() -> None:
    member = FLEET["region-a"]
    region = Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore(),
        wall_clock=lambda: NOW,
        max_pending=3,
        epoch=9,
    )
    assert region.limits.pending_total == region.max_pending == 3
    region.add_delegations(link.encode() for link in FLEET["edge-a1"].chain)
    results = region.ingest_many([e.data for e in gapped(FLEET["edge-a1"], 5, epoch=1)])
    assert reasons(results) == {"pending_total": 2}


def test_garbage_under_ever_new_chains_uses_up_no_chain_budget_and_leaves_no_trace() -> None:
    region = hub(MemoryStore(), SMALL.evolve(chains_per_writer=4))
    edge = FLEET["edge-a1"]
    garbage = [edge.seal(epoch=epoch, payload=b"not an update").data for epoch in range(500)]
    results = region.ingest_many(garbage, source="edge-a1")
    assert {type(r.error).__name__ for r in results} == {"InvalidUpdateError"}
    assert region.frontiers() == []
    assert region.policy.grants == {}
    # The writer's honest next chain is still admitted: the garbage used none of its budget.
    honest = edge.seal(epoch=1_000, payload=EMPTY_UPDATE)
    assert region.ingest(honest.data, source="edge-a1").outcome is IngestOutcome.APPLIED
