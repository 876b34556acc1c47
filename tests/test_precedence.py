"""Causal authority precedence through the replica, receipts that say what did not take effect,
and what a chain with a gap is missing."""

from __future__ import annotations

from souverix_crdt.document import ScopeState, WriteOp
from souverix_crdt.hlc import Timestamp
from souverix_crdt.lww import Strategy
from souverix_crdt.scope import Scope
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import make_fleet

FLEET = make_fleet()
ZONE = "global/region-a/edge-a1"
SCOPE = Scope.parse(ZONE)


class Ranks:
    """region ranks above edge; edge's policies do not count when ``policies_count`` is off."""

    def __init__(self, *, policies_count: bool = True) -> None:
        self.policies_count = policies_count

    def rank(self, writer: str) -> int:
        return {"region": 2, "edge": 1}[writer]

    def allows(self, writer: str, collection: str) -> bool:
        return self.policies_count or writer != "edge" or collection != "policies"


def test_a_write_outranked_by_a_register_it_had_not_seen_is_reported() -> None:
    state = ScopeState(SCOPE, strategy=Strategy.AUTHORITY_PRECEDENCE, policy=Ranks())
    region = ScopeState(SCOPE)
    result = region.write("region", Timestamp(5_000), [WriteOp("policies", "p", "region")])
    state.receive("region", result.seq, result.update)
    # The edge's clock lags the region's register: it does not supersede what it was dated
    # before, so the region's rank wins and the receipt says so.
    lagging = state.write("edge", Timestamp(4_000), [WriteOp("policies", "p", "edge")])
    (lost,) = lagging.not_applied
    assert (lost.collection, lost.key, lost.reason) == ("policies", "p", "outranked")
    assert lost.winner is not None
    assert lost.winner.writer == "region"
    assert lost.winner_hlc == Timestamp(5_000)
    assert state.get("policies", "p") == "region"
    # Dated after it, the same writer's next write has seen it and takes effect.
    later = state.write("edge", Timestamp(6_000), [WriteOp("policies", "p", "edge")])
    assert later.not_applied == ()
    assert state.get("policies", "p") == "edge"


def test_a_write_that_does_not_count_is_reported() -> None:
    state = ScopeState(
        SCOPE, strategy=Strategy.AUTHORITY_PRECEDENCE, policy=Ranks(policies_count=False)
    )
    result = state.write(
        "edge", Timestamp(1_000), [WriteOp("policies", "p", 1), WriteOp("nodes", "n", 1)]
    )
    assert [(n.collection, n.key, n.reason) for n in result.not_applied] == [
        ("policies", "p", "not-counted")
    ]
    # A key others hold already goes the tracked way: reported the same.
    region = ScopeState(SCOPE)
    other = region.write("region", Timestamp(500), [WriteOp("policies", "q", "r")])
    state.receive("region", other.seq, other.update)
    again = state.write("edge", Timestamp(2_000), [WriteOp("policies", "q", "e")])
    assert [(n.key, n.reason) for n in again.not_applied] == [("q", "not-counted")]
    assert state.get("policies", "q") == "r"


def test_a_zone_write_after_seeing_the_region_wins_on_every_replica() -> None:
    cluster = Cluster(FLEET, ["global", "region-a", "edge-a1"])
    cluster.link("global", "region-a")
    cluster.link("region-a", "edge-a1")
    region, zone = cluster["region-a"], cluster["edge-a1"]
    region.scope(ZONE).policies.set("window", "sat")
    cluster.settle()
    assert zone.scope(ZONE).policies.get("window") == "sat"
    cluster.advance(1_000)
    receipt = zone.scope(ZONE).policies.set("window", "sun")
    assert receipt.applied
    cluster.settle()
    for name in ("global", "region-a", "edge-a1"):
        assert cluster[name].scope(ZONE).policies.get("window") == "sun", name
        assert cluster[name].conflicts() == [], name
    # A concurrent pair: the region's rank wins everywhere, and the loss is audited everywhere.
    cluster.partition("region-a", "edge-a1")
    region.scope(ZONE).policies.set("window", "mon")
    cluster.advance(1_000)
    assert zone.scope(ZONE).policies.set("window", "tue").applied
    cluster.heal("region-a", "edge-a1")
    cluster.settle()
    audits = []
    for name in ("global", "region-a", "edge-a1"):
        assert cluster[name].scope(ZONE).policies.get("window") == "mon", name
        audits.append(cluster[name].conflicts())
    assert audits[0] == audits[1] == audits[2]
    (record,) = audits[0]
    assert record.reason == "authority-rank"
    assert record.loser.writer == zone.chain
    assert len({cluster[name].digest() for name in ("global", "region-a", "edge-a1")}) == 1


def test_status_names_the_missing_seq_of_a_chain_with_a_gap() -> None:
    cluster = Cluster(FLEET, ["region-a", "edge-a1"])
    zone = cluster["edge-a1"]
    for n in range(4):
        zone.scope(ZONE).nodes.set(f"n{n}", n)
    envelopes = zone.envelopes_after(ZONE, zone.chain, 0, 10)
    region = cluster["region-a"]
    region.add_delegations(link.encode() for link in FLEET["edge-a1"].chain)
    region.ingest(envelopes[0])
    assert region.status().gaps == {}
    held_at = cluster.now
    region.ingest(envelopes[2])
    cluster.advance(5_000)
    region.ingest(envelopes[3])
    gaps = region.status().gaps
    assert list(gaps) == [f"{ZONE}|{zone.chain}"]
    gap = gaps[f"{ZONE}|{zone.chain}"]
    assert (gap.missing, gap.waiting, gap.since_ms) == (2, 2, held_at)
    assert region.status().to_json()["gaps"] == {
        f"{ZONE}|{zone.chain}": {"missing": 2, "waiting": 2, "since_ms": held_at}
    }
    region.ingest(envelopes[1])
    assert region.status().gaps == {}
    assert region.scope(ZONE).nodes.get("n3") == 3
