"""The federation manager: linking planes per topology, connectivity, bundles, hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from souverix_crdt.errors import BundleError, CapabilityViolationError
from souverix_crdt.federation._carriers import SignedBundleCarrier, default_carrier
from souverix_crdt.federation.inventory import NodeReport, node_reports
from souverix_crdt.federation.manager import (
    FederationManager,
    LinkState,
    ManualClock,
    sqlite_stores,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.lww import Strategy
from souverix_crdt.plane.keyring import bootstrap_keys
from souverix_crdt.plane.topology import default_topology, default_topology_text, parse_topology
from souverix_crdt.scope import Scope

START = 1_748_764_800_000
MINUTE = 60_000
TOPOLOGY = default_topology()
KEYS = bootstrap_keys(
    TOPOLOGY,
    seed=3,
    not_before=Timestamp(START - 86_400_000),
    not_after=Timestamp(START + 365 * 86_400_000),
)


def default_topology_text_for(fleet: str) -> str:
    return default_topology_text().replace("fleet: souverix-demo", f"fleet: {fleet}")


def make(clock: ManualClock | None = None, **kwargs) -> FederationManager:
    return FederationManager(
        TOPOLOGY, KEYS, wall_clock=clock or ManualClock(START), seed=11, **kwargs
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def manager(clock: ManualClock):
    federation = make(clock)
    federation.settle()
    yield federation
    federation.close()


def own_write(manager: FederationManager, plane: str, key: str, value: str) -> None:
    scope = TOPOLOGY.plane(plane).scope
    manager.replica(plane).scope(scope).policies.set(key, value)


def test_each_plane_writes_as_its_delegation(manager: FederationManager) -> None:
    assert set(manager.replicas) == set(TOPOLOGY.planes)
    for name, replica in manager.replicas.items():
        assert replica.identity.scope == TOPOLOGY.plane(name).scope
        assert replica.identity.key_id == KEYS[name].key_id
    assert set(manager.links) == {link.key for link in TOPOLOGY.links()}


def test_writes_converge_along_the_tree(manager: FederationManager) -> None:
    for plane in TOPOLOGY.planes:
        own_write(manager, plane, "owner", plane)
    ticks = manager.settle()
    assert ticks >= 0
    for name, replica in manager.replicas.items():
        home = replica.identity.scope
        for other in TOPOLOGY.planes.values():
            seen = replica.get(other.scope, "policies", "owner")
            if other.air_gapped or TOPOLOGY.plane(name).air_gapped:
                continue  # only bundles cross an air gap (see the bundle test)
            if home.is_related_to(other.scope):
                assert seen == other.name, (name, other.name)
            else:
                assert seen is None, (name, other.name)  # a zone never sees a sibling's data
    # Everything global can see, every plane that shares the scope sees identically.
    global_replica = manager.replica("global")
    for name in ("region-a", "edge-a1", "edge-c"):
        replica = manager.replica(name)
        for scope in replica.identity.scope.lineage():
            assert replica.snapshot().get(str(scope)) == global_replica.snapshot().get(str(scope))


def test_a_cut_off_plane_keeps_writing_and_owes_debt(
    manager: FederationManager, clock: ManualClock
) -> None:
    manager.set_link_state("global", "edge-c", up=False)
    assert manager.link_state("edge-c", "global") is LinkState.DOWN
    cut = clock()
    own_write(manager, "edge-c", "mode", "on-my-own")
    manager.publish_policy("global", "fleet", "v2")
    clock.advance(90 * MINUTE)
    own_write(manager, "edge-c", "mode", "still-alone")
    manager.settle()
    assert manager.replica("global").get("global/edge-c", "policies", "mode") is None
    assert manager.replica("edge-c").get("global", "policies", "fleet") is None
    status = manager.link_status("global", "edge-c")
    assert status.state is LinkState.DOWN
    assert status.to_upper.envelopes == 2
    assert status.to_lower.envelopes == 1
    assert status.debt.envelopes == 3
    assert status.debt.oldest_age_ms == clock() - cut
    assert status.debt.bytes == status.to_upper.bytes + status.to_lower.bytes > 0

    manager.set_link_state("edge-c", "global", up=True)
    manager.settle()
    assert manager.replica("global").get("global/edge-c", "policies", "mode") == "still-alone"
    assert manager.replica("edge-c").get("global", "policies", "fleet") == "v2"
    after = manager.link_status("global", "edge-c")
    assert after.state is LinkState.UP
    assert after.debt.envelopes == 0
    assert after.last_sync_ms == clock()


def test_link_state_is_idempotent_and_checked(manager: FederationManager) -> None:
    manager.set_link_state("global", "region-a", up=True)
    manager.set_link_state("global", "region-a", up=False)
    manager.set_link_state("global", "region-a", up=False)
    assert manager.link_state("global", "region-a") is LinkState.DOWN
    with pytest.raises(KeyError):
        manager.set_link_state("edge-a1", "edge-a2", up=False)
    with pytest.raises(ValueError, match="air-gapped"):
        manager.set_link_state("region-b", "edge-b1", up=True)


def test_isolate_and_reconnect_a_plane(manager: FederationManager) -> None:
    manager.isolate("region-a")
    states = {key: link.state for key, link in manager.links.items()}
    assert states[("global", "region-a")] is LinkState.DOWN
    assert states[("region-a", "edge-a1")] is LinkState.DOWN
    assert states[("global", "region-b")] is LinkState.UP
    own_write(manager, "edge-a1", "k", "v")
    manager.settle()
    assert manager.replica("region-a").get("global/region-a/edge-a1", "policies", "k") is None
    manager.reconnect("region-a")
    manager.settle()
    assert manager.replica("global").get("global/region-a/edge-a1", "policies", "k") == "v"


def test_air_gapped_zone_syncs_only_by_bundle(clock: ManualClock, tmp_path: Path) -> None:
    assert isinstance(default_carrier(), SignedBundleCarrier)
    manager = make(clock)
    manager.settle()
    manager.publish_policy("global", "fleet", "v1")
    own_write(manager, "edge-b1", "local", "x")
    manager.settle()
    assert manager.replica("edge-b1").get("global", "policies", "fleet") is None
    assert manager.replica("region-b").get("global/region-b/edge-b1", "policies", "local") is None
    before = manager.link_status("region-b", "edge-b1")
    assert before.transport == "bundle"
    assert before.state is LinkState.DOWN
    assert before.to_lower.envelopes >= 1
    assert before.to_upper.envelopes == 1

    clock.advance(MINUTE)
    files = manager.exchange_bundles("edge-b1", "region-b", tmp_path / "bundles")
    assert [path.suffix for path in files] == [".bundle", ".bundle", ".receipt"]
    assert all(path.exists() for path in files)
    manager.settle()
    assert manager.replica("edge-b1").get("global", "policies", "fleet") == "v1"
    assert manager.replica("global").get("global/region-b/edge-b1", "policies", "local") == "x"
    after = manager.link_status("region-b", "edge-b1")
    assert after.debt.envelopes == 0
    assert after.last_sync_ms == clock()
    # A second exchange changes nothing and owes nothing.
    digests = {name: replica.digest() for name, replica in manager.replicas.items()}
    clock.advance(MINUTE)
    again = manager.exchange_bundles("region-b", "edge-b1", tmp_path / "bundles")
    assert len(again) == 3
    assert {name: replica.digest() for name, replica in manager.replicas.items()} == digests
    assert manager.link_status("region-b", "edge-b1").debt.envelopes == 0
    manager.close()


def test_bundles_from_another_fleet_are_refused(manager: FederationManager, tmp_path: Path) -> None:
    other_topology = parse_topology(default_topology_text_for("other-fleet"), file="other.yaml")
    other_keys = bootstrap_keys(
        other_topology,
        seed=3,
        not_before=Timestamp(START - 86_400_000),
        not_after=Timestamp(START + 86_400_000),
    )
    other = FederationManager(other_topology, other_keys, wall_clock=ManualClock(START), seed=1)
    other.publish_policy("global", "x", "y")
    carrier = default_carrier()
    path = tmp_path / "foreign.bundle"
    carrier.export_bundle(
        other.replica("region-b"), path, peer="edge-b1", peer_scope=Scope.parse("global/region-b")
    )
    before = manager.replica("edge-b1").digest()
    with pytest.raises(BundleError):
        carrier.import_bundle(manager.replica("edge-b1"), path)
    path.write_bytes(b"\x93\x01\x02\x03")
    with pytest.raises(BundleError):
        carrier.import_bundle(manager.replica("edge-b1"), path)
    assert manager.replica("edge-b1").digest() == before


def test_conditional_zone_yields_to_its_region(
    manager: FederationManager, clock: ManualClock
) -> None:
    zone = "global/region-a/edge-a1"
    manager.set_link_state("region-a", "edge-a1", up=False)
    manager.replica("region-a").scope(zone).policies.set("window", "sat")
    clock.advance(MINUTE)
    manager.replica("edge-a1").scope(zone).policies.set("window", "sun")  # later HLC
    manager.set_link_state("region-a", "edge-a1", up=True)
    manager.settle()
    holders = ("global", "region-a", "edge-a1")
    for name in holders:
        replica = manager.replica(name)
        assert replica.effective(zone, "policies", "window") == "sat", name
        assert replica.fleet.scopes[Scope.parse(zone)].strategy is Strategy.AUTHORITY_PRECEDENCE
    records = [manager.replica(name).conflicts() for name in holders]
    assert records[0] == records[1] == records[2]
    (record,) = records[0]
    assert (record.strategy, record.reason) == ("authority-precedence", "authority-rank")
    assert record.winner.writer.startswith(KEYS["region-a"].key_id)
    assert record.loser.writer.startswith(KEYS["edge-a1"].key_id)


def test_describe_is_json_and_complete(manager: FederationManager, clock: ManualClock) -> None:
    manager.set_link_state("global", "edge-c", up=False)
    own_write(manager, "edge-c", "k", "v")
    clock.advance(5 * MINUTE)
    description = manager.describe()
    assert json.loads(json.dumps(description)) == description
    assert description["fleet_id"] == TOPOLOGY.fleet_id
    assert description["now_ms"] == clock()
    for name, plane in TOPOLOGY.planes.items():
        entry = description["authority"][name]
        assert entry["scope"] == str(plane.scope)
        assert entry["level"] == plane.level.value
        assert entry["autonomy"]["mode"] == plane.autonomy.mode.value
        assert entry["key_id"] == KEYS[name].key_id
        assert entry["capabilities"] == sorted(c.value for c in KEYS[name].delegation.capabilities)
        assert entry["issuer"] == TOPOLOGY.issuer_of(name)
    status = {(s["upstream"], s["downstream"]): s for s in description["sync_status"]}
    assert set(status) == set(manager.links)
    edge_c = status[("global", "edge-c")]
    assert edge_c["state"] == "down"
    assert edge_c["debt"]["envelopes"] == 1
    assert edge_c["debt"]["oldest_age_ms"] == 5 * MINUTE
    assert status[("global", "region-a")]["state"] == "up"
    assert status[("region-b", "edge-b1")]["transport"] == "bundle"
    edges = {(r["upstream"], r["downstream"]): r for r in description["relationships"]}
    assert edges[("global", "region-a")]["upstream_sync"]["mode"] == "continuous"
    assert edges[("global", "region-a")]["upstream_sync"]["frequency"] == "15m"
    assert edges[("region-a", "edge-a1")]["downstream_sync"]["mode"] == "push"
    assert edges[("region-a", "edge-a1")]["downstream_sync"]["frequency"] == "5m"


def test_publication_propagation_and_application(
    manager: FederationManager, clock: ManualClock, tmp_path: Path
) -> None:
    version = manager.publish_version("global/region-a", "agent", "2.0")
    assert version.publisher == "region-a"
    before = manager.propagation(version)
    assert before.received == ("region-a",)
    assert set(before.missing) == {"global", "edge-a1", "edge-a2"}
    assert not before.complete
    manager.settle()
    status = manager.propagation(version)
    assert set(status.received) == {"global", "region-a", "edge-a1", "edge-a2"}
    assert status.missing == ()
    assert status.applied == ()  # no node reports yet

    zone = TOPOLOGY.plane("edge-a1").scope
    manager.report_nodes(
        "edge-a1",
        [NodeReport(f"n{i}", clock(), {"agent": "2.0" if i < 3 else "1.9"}) for i in range(4)],
    )
    manager.settle()
    status = manager.propagation(version)
    (applied,) = status.applied
    assert (applied.scope, applied.applied, applied.total) == (str(zone), 3, 4)
    assert applied.pending == ("n3",)
    assert not applied.overridden
    assert json.loads(json.dumps(status.to_json())) == status.to_json()

    # A zone's own desired value overrides the region's there.
    override = manager.publish_version(zone, "agent", "1.9")
    assert override.publisher == "region-a"  # edge-a1 may not deploy versions itself
    manager.settle()
    (applied,) = manager.propagation(version).applied
    assert applied.overridden
    assert manager.propagation(version).complete
    assert manager.propagation(override).applied[0].applied == 1

    policy = manager.publish_policy("global", "max-unavailable", "10%")
    manager.settle()
    assert manager.propagation(policy).missing == ("edge-b1",)
    manager.exchange_bundles("region-b", "edge-b1", tmp_path)
    assert manager.propagation(policy).missing == ()


def test_publishing_respects_capabilities(manager: FederationManager) -> None:
    with pytest.raises(CapabilityViolationError):
        manager.publish_version("global/region-a/edge-a1", "agent", "3", by="edge-a1")
    assert manager.publish_policy("global/region-a/edge-a1", "k", "v").publisher == "edge-a1"


def test_node_reports_round_trip(manager: FederationManager, clock: ManualClock) -> None:
    reports = [NodeReport("n1", clock(), {"agent": "1"}, {"p": "x"}, "draining")]
    manager.report_nodes("edge-c", reports)
    assert node_reports(manager.replica("edge-c"), "global/edge-c") == reports
    odd = NodeReport.from_value("n2", {"heartbeat_ms": "soon", "versions": [1], "state": 3})
    assert odd == NodeReport("n2", None, {}, {}, "unknown")
    assert NodeReport.from_value("n3", "garbage").heartbeat_ms is None
    assert odd.age_ms(clock()) is None
    assert reports[0].reported("meta", "x") is None


def test_sqlite_stores_and_a_subset_of_planes(tmp_path: Path) -> None:
    clock = ManualClock(START)
    federation = FederationManager(
        TOPOLOGY,
        KEYS,
        planes=["global", "region-a", "edge-a1"],
        wall_clock=clock,
        store_factory=sqlite_stores(tmp_path / "stores"),
    )
    assert set(federation.links) == {("global", "region-a"), ("region-a", "edge-a1")}
    own_write(federation, "edge-a1", "k", "v")
    federation.settle()
    assert federation.replica("global").get("global/region-a/edge-a1", "policies", "k") == "v"
    federation.close()
    assert (tmp_path / "stores" / "global.sqlite3").exists()
    # Reopened from disk, the planes hold what they had.
    again = FederationManager(
        TOPOLOGY,
        KEYS,
        planes=["global"],
        wall_clock=clock,
        store_factory=sqlite_stores(tmp_path / "stores"),
    )
    assert again.replica("global").get("global/region-a/edge-a1", "policies", "k") == "v"
    again.close()


def test_manager_refuses_keys_of_another_fleet() -> None:
    other = parse_topology(default_topology_text_for("elsewhere"))
    with pytest.raises(ValueError, match="fleet"):
        FederationManager(other, KEYS)


def test_manual_clock_only_moves_forward() -> None:
    clock = ManualClock(10)
    assert clock.advance(5) == 15 == clock()
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_a_conditional_zone_that_has_seen_its_region_value_may_change_it(
    manager: FederationManager, clock: ManualClock
) -> None:
    zone = "global/region-a/edge-a1"
    holders = ("global", "region-a", "edge-a1")
    # A concurrent pair first: the region's value wins and the zone's loss is audited.
    manager.set_link_state("region-a", "edge-a1", up=False)
    manager.replica("region-a").scope(zone).policies.set("window", "sat")
    clock.advance(MINUTE)
    blind = manager.replica("edge-a1").scope(zone).policies.set("window", "sun")
    assert blind.applied  # nothing it could see outranked it when it was written
    manager.set_link_state("region-a", "edge-a1", up=True)
    manager.settle()
    assert [manager.replica(n).effective(zone, "policies", "window") for n in holders] == [
        "sat"
    ] * 3
    (lost,) = manager.replica("edge-a1").conflicts()
    assert lost.loser.writer.startswith(KEYS["edge-a1"].key_id)
    # Now the zone has seen the region's value: its next write supersedes it everywhere.
    clock.advance(MINUTE)
    seen = manager.replica("edge-a1").scope(zone).policies.set("window", "mon")
    assert seen.applied
    assert seen.not_applied == ()
    manager.settle()
    for name in holders:
        replica = manager.replica(name)
        assert replica.effective(zone, "policies", "window") == "mon", name
        # A causal successor is no conflict: the audit still holds the one concurrent pair.
        assert replica.conflicts() == [lost], name
    # And the region, having seen the zone's value, may change it back.
    clock.advance(MINUTE)
    assert manager.replica("region-a").scope(zone).policies.set("window", "tue").applied
    manager.settle()
    assert [manager.replica(n).effective(zone, "policies", "window") for n in holders] == [
        "tue"
    ] * 3
