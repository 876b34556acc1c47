"""Names a user can act on: unknown collections and planes, and writers named by their plane.

A mistyped collection or plane raises a typed ``KeyError`` that suggests the close match; a
refused write, a conflict record and a replica's status name each writer by the plane its
verified delegation gives it, next to its key or chain id.
"""

from __future__ import annotations

import pytest

from souverix_crdt.document import WriteOp
from souverix_crdt.errors import (
    CapabilityViolationError,
    InvalidValueError,
    ScopeViolationError,
    SouverixError,
    UnknownCollectionError,
    UnknownPlaneError,
)
from souverix_crdt.naming import describe_writer, plane_name
from souverix_crdt.plane.keyring import FederationKeys, bootstrap_keys
from souverix_crdt.plane.topology import default_topology
from souverix_crdt.replica import Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.session import SyncSession

NOW = 1_767_225_600_000
ZONE = "global/region-a/edge-a1"
KNOWN = "(known: policies, versions, nodes, meta)"


@pytest.fixture(scope="module")
def keys() -> FederationKeys:
    return bootstrap_keys(default_topology(), seed="naming", wall_clock=lambda: NOW)


def replica(keys: FederationKeys, name: str, epoch: int = 1) -> Replica:
    return Replica(
        keys.identity(name),
        keys.anchors,
        MemoryStore(),
        name=name,
        wall_clock=lambda: NOW,
        epoch=epoch,
    )


def sync(a: Replica, b: Replica) -> None:
    left, right = SyncSession(a, batch_size=10), SyncSession(b, batch_size=10)
    left.start()
    right.start()
    while frames := [(right, f) for f in left.data_to_send()] + [
        (left, f) for f in right.data_to_send()
    ]:
        for session, frame in frames:
            session.receive(frame)


# --------------------------------------------------------------------------- collections


def test_a_mistyped_collection_suggests_the_right_one(keys: FederationKeys) -> None:
    region = replica(keys, "region-a")
    with pytest.raises(UnknownCollectionError) as caught:
        region.get("global/region-a", "policy", "max-unavailable")
    error = caught.value
    assert str(error) == f"unknown collection 'policy'; did you mean 'policies'? {KNOWN}"
    # Still the builtins a caller may already catch, and the library's root.
    assert isinstance(error, KeyError)
    assert isinstance(error, InvalidValueError)
    assert isinstance(error, SouverixError)
    assert (error.name, error.suggestions, error.key) == ("policy", ("policies",), "policy")
    assert error.reason == "unknown-collection"


@pytest.mark.parametrize(
    ("call", "typo", "meant"),
    [
        (lambda r: r.effective(ZONE, "version", "agent"), "version", "versions"),
        (lambda r: r.scope(ZONE).collection("Nodes"), "Nodes", "nodes"),
        (lambda r: r.fleet.effective_items(ZONE, "metas"), "metas", "meta"),
        (lambda r: r.write(ZONE, [WriteOp("polices", "k", "v")]), "polices", "policies"),
    ],
)
def test_every_way_in_names_the_close_collection(
    keys: FederationKeys, call: object, typo: str, meant: str
) -> None:
    region = replica(keys, "region-a")
    before = region.digest()
    with pytest.raises(UnknownCollectionError, match=f"did you mean '{meant}'") as caught:
        call(region)  # type: ignore[operator]
    assert caught.value.name == typo
    assert region.digest() == before
    assert region.status().frontiers == {}


def test_a_collection_with_no_close_match_lists_the_known_ones(keys: FederationKeys) -> None:
    with pytest.raises(UnknownCollectionError) as caught:
        replica(keys, "region-a").get(ZONE, "zzz", "k")
    assert str(caught.value) == f"unknown collection 'zzz' {KNOWN}"
    assert caught.value.suggestions == ()


# --------------------------------------------------------------------------- planes


def test_an_unknown_plane_names_the_fleet_and_the_planes(keys: FederationKeys) -> None:
    with pytest.raises(UnknownPlaneError) as caught:
        keys.identity("EU")
    assert str(caught.value) == (
        "unknown plane 'EU' in fleet souverix-demo (known: global, region-a, edge-a1, edge-a2, "
        "region-b, edge-b1, edge-c)"
    )
    assert isinstance(caught.value, KeyError)
    assert caught.value.reason == "unknown-plane"


def test_a_mistyped_plane_suggests_the_close_ones(keys: FederationKeys) -> None:
    with pytest.raises(UnknownPlaneError, match=r"did you mean 'region-a' or 'region-b'\?"):
        keys["regiona"]
    # Case is not what a user means by a different name.
    with pytest.raises(UnknownPlaneError, match=r"did you mean 'edge-c'\?") as caught:
        keys.identity("EDGE-C")
    assert caught.value.suggestions[0] == "edge-c"


# --------------------------------------------------------------------------- writers by plane


def test_a_write_outside_the_scope_names_the_plane_and_its_key(keys: FederationKeys) -> None:
    edge = replica(keys, "edge-a1")
    key_id = keys["edge-a1"].key_id
    with pytest.raises(ScopeViolationError) as caught:
        edge.scope("global").policies.set("max-unavailable", "50%")
    assert str(caught.value) == f"edge-a1 (key {key_id}) holds {ZONE}, not global"
    assert (caught.value.plane, caught.value.writer) == ("edge-a1", key_id)


def test_a_write_without_the_capability_names_the_plane(keys: FederationKeys) -> None:
    edge = replica(keys, "edge-a1")
    with pytest.raises(CapabilityViolationError) as caught:
        edge.scope(ZONE).versions.set("agent", "9.9.9")
    assert str(caught.value) == f"edge-a1 (key {keys['edge-a1'].key_id}) lacks deploy_versions"
    assert caught.value.plane == "edge-a1"


def test_conflicts_and_status_name_writers_by_plane(keys: FederationKeys) -> None:
    region, edge = replica(keys, "region-a", epoch=1), replica(keys, "edge-a1", epoch=2)
    region.scope(ZONE).policies.set("window", "sat")
    edge.scope(ZONE).policies.set("window", "sun")
    sync(region, edge)

    [record] = edge.conflicts()
    assert (record.winner_plane, record.loser_plane) == ("region-a", "edge-a1")
    assert region.conflicts() == [record]  # names take no part in equality ...
    assert str(region.conflicts()[0]) == str(record)  # ... and are the same everywhere
    assert f"region-a ({region.chain})" in str(record)
    assert f"won over edge-a1 ({edge.chain})" in str(record)
    assert record.to_json()["winner"]["plane"] == "region-a"
    # Subscribers get named records too.
    seen: list[str] = []
    edge.on_conflict(lambda r: seen.append(r.winner_plane))
    region.scope(ZONE).policies.set("other", "x")
    edge.scope(ZONE).policies.set("other", "y")
    sync(region, edge)
    assert seen == ["region-a"]

    status = edge.status()
    assert status.plane == "edge-a1"
    assert status.writers == {region.chain: "region-a", edge.chain: "edge-a1"}
    assert status.to_json()["writers"] == status.writers
    assert edge.plane_of(region.chain) == "region-a"
    assert edge.plane_of("0" * 32 + "~1") == ""


def test_the_plane_name_comes_from_the_verified_delegation(keys: FederationKeys) -> None:
    leaf = keys["edge-b1"].delegation
    assert plane_name(leaf) == "edge-b1"
    assert describe_writer("edge-b1", "abc~1") == "edge-b1 (abc~1)"
    assert describe_writer("", "abc~1") == "abc~1"
