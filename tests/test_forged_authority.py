"""Authority comes only from the anchors: forged delegations and revocations change nothing.

Each attack hands a replica an item an attacker can make — a self-signed "root" delegation, a
delegation whose parent never arrives, one that widens its parent, revocations issued by a
zone, a sibling region or an outsider — both directly and inside a sound bundle from a member.
The replica must not store it, not re-send it, not let it change any decision (the strategy of
a scope, the winner of a concurrent write, the refusal of later bundles), and end with the same
data and authority digests as a control replica that never saw it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

from souverix_crdt.authority import (
    DEFAULT_MAX_PARKED_DELEGATIONS,
    Authority,
    Capability,
    Delegation,
    Revocation,
    issue_delegation,
    issue_revocation,
)
from souverix_crdt.errors import (
    AuthorityError,
    CapabilityViolationError,
    ExpiredError,
    ScopeViolationError,
    TooLargeError,
    UnknownDelegationError,
    UntrustedKeyError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.replica import Identity, IngestOutcome, Replica
from souverix_crdt.scope import Autonomy, Scope, Tier
from souverix_crdt.store.base import Batch, StoredItem
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.testing.fleet import (
    ALL_CAPABILITIES,
    EDGE_CAPABILITIES,
    FLEET_ID,
    NOT_AFTER,
    NOT_BEFORE,
    NOW,
    Fleet,
    make_fleet,
)
from souverix_crdt.transports.bundle import export_bundle, import_bundle

AT = Timestamp(NOW)
#: The scope every forged delegation claims is conditional: edge-b1's, which is fully autonomous.
TARGET = "global/region-b/edge-b1"


def _fleet() -> Fleet:
    fleet = make_fleet()
    # A zone that may delegate (so "holds delegate somewhere" is true of it).
    fleet.delegate(
        "zone-b",
        parent="region-b",
        scope="global/region-b/zone-b",
        capabilities={Capability.DELEGATE, Capability.REPORT_STATUS, Capability.MODIFY_POLICIES},
        tier=Tier.LOCAL,
        autonomy=Autonomy.FULL,
    )
    # A lead over region-b's subtree with few capabilities (so a child can claim more).
    fleet.delegate(
        "lead-b",
        parent="region-b",
        scope="global/region-b",
        capabilities={Capability.DELEGATE, Capability.REPORT_STATUS},
        tier=Tier.LOCAL,
        autonomy=Autonomy.FULL,
    )
    return fleet


FLEET = _fleet()
LEGIT = list({link.digest: link for member in FLEET for link in member.chain}.values())
OUTSIDER = FLEET.key("outsider")


def outsider_chain() -> Delegation:
    """A key's self-made "root" delegation: every capability, the whole fleet."""
    return issue_delegation(
        OUTSIDER,
        fleet_id=FLEET_ID,
        subject=OUTSIDER.public,
        scope=Scope.root(),
        capabilities=ALL_CAPABILITIES,
        tier=Tier.GLOBAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
    )


def _claim(issuer: str | None, parent: Delegation | bytes | None, **changes: object) -> Delegation:
    """A delegation making TARGET conditional, issued by member ``issuer`` (None: the outsider)."""
    fields: dict[str, object] = {
        "fleet_id": FLEET_ID,
        "subject": FLEET.key("claimant").public,
        "scope": TARGET,
        "capabilities": EDGE_CAPABILITIES,
        "tier": Tier.LOCAL,
        "autonomy": Autonomy.CONDITIONAL,
        "not_before": NOT_BEFORE,
        "not_after": NOT_AFTER,
        "parent": parent,
    }
    fields.update(changes)
    key = OUTSIDER if issuer is None else FLEET[issuer].key
    return issue_delegation(key, **fields)  # type: ignore[arg-type]


#: name -> (forged delegations, the error the registry refuses the last one with, its reason)
FORGED_DELEGATIONS: dict[str, tuple[list[Delegation], type[AuthorityError], str]] = {
    "self-signed-root": ([_claim(None, None)], UntrustedKeyError, "not-a-root"),
    "parent-never-arrives": (
        [_claim("region-b", hashlib.sha256(b"never sent").digest())],
        UnknownDelegationError,
        "parked",
    ),
    "scope-widened": (
        [_claim("region-a", FLEET["region-a"].delegation)],
        ScopeViolationError,
        "scope-widened",
    ),
    "capabilities-widened": (
        [_claim("lead-b", FLEET["lead-b"].delegation, capabilities={Capability.MODIFY_POLICIES})],
        CapabilityViolationError,
        "capability-amplified",
    ),
    "window-widened": (
        [_claim("region-b", FLEET["region-b"].delegation, not_after=Timestamp(NOT_AFTER.wall, 1))],
        ExpiredError,
        "window-widened",
    ),
}


def _revoke_region_b(issuer: str | None) -> Revocation:
    key = OUTSIDER if issuer is None else FLEET[issuer].key
    return issue_revocation(
        key, fleet_id=FLEET_ID, revoked=FLEET["region-b"].public, cut={}, hlc=AT
    )


#: name -> (delegations the attacker sends first, the revocation of region-b)
FORGED_REVOCATIONS: dict[str, tuple[list[Delegation], Revocation]] = {
    "zone": ([], _revoke_region_b("zone-b")),
    "sibling-region": ([], _revoke_region_b("region-a")),
    "outsider": ([outsider_chain()], _revoke_region_b(None)),
}


# --------------------------------------------------------------------------- the world


class Clock:
    """A settable fake wall clock."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def open_replica(name: str, *, now: int = NOW + 10_000, epoch: int = 1) -> Replica:
    member = FLEET[name]
    replica = Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore(),
        name=name,
        wall_clock=Clock(now),
        epoch=epoch,
    )
    replica.add_delegations(link.encode() for link in LEGIT)
    return replica


def concurrent_writes() -> list[bytes]:
    """region-b and edge-b1 write one key of TARGET concurrently; edge-b1's HLC is later.

    Under last-writer-wins (edge-b1 is fully autonomous) edge-b1's value wins; under authority
    precedence (if TARGET were conditional) region-b's would.
    """
    region = open_replica("region-b", now=NOW, epoch=11)
    edge = open_replica("edge-b1", now=NOW + 1_000, epoch=12)
    region.scope(TARGET).policies.set("rollout", "from-region")
    edge.scope(TARGET).policies.set("rollout", "from-edge")
    return [
        *region.envelopes_after(TARGET, region.chain, 0, 100),
        *edge.envelopes_after(TARGET, edge.chain, 0, 100),
    ]


WRITES = concurrent_writes()


def export_with(
    tmp_path: Path,
    exporter: Replica,
    *,
    delegations: Sequence[Delegation] = (),
    revocations: Sequence[Revocation] = (),
    name: str = "1",
) -> Path:
    """A sound bundle from ``exporter`` to edge-b1 whose body also carries the given items.

    The exporter is a genuine member (its manifest signs and chains); what an older or a
    compromised exporter could put in the body is modelled by adding to what it would send.
    """
    own_delegations, own_revocations = exporter.delegations, exporter.revocations
    path = tmp_path / f"{name}.bundle"
    try:
        exporter.delegations = lambda: [  # type: ignore[method-assign]
            *own_delegations(),
            *(d.encode() for d in delegations),
        ]
        exporter.revocations = lambda: [  # type: ignore[method-assign]
            *own_revocations(),
            *(r.encode() for r in revocations),
        ]
        export_bundle(exporter, path, peer="edge-b1", peer_scope=TARGET)
    finally:
        del exporter.delegations, exporter.revocations
    return path


def assert_same(victim: Replica, control: Replica) -> None:
    assert victim.digest() == control.digest()
    assert victim.authority_digest() == control.authority_digest()
    assert victim.delegations() == control.delegations()
    assert victim.revocations() == control.revocations()
    assert sorted(i.id for i in victim.store.delegations()) == sorted(
        i.id for i in control.store.delegations()
    )
    assert sorted(i.id for i in victim.store.revocations()) == sorted(
        i.id for i in control.store.revocations()
    )


def assert_not_kept(replica: Replica, items: Iterable[Delegation | Revocation]) -> None:
    stored = {i.id for i in replica.store.delegations()} | {
        i.id for i in replica.store.revocations()
    }
    sent = set(replica.delegations()) | set(replica.revocations())
    for item in items:
        assert item.digest not in stored
        assert item.encode() not in sent
        assert replica.authority.delegation(item.digest) is None
        assert item not in list(replica.authority.revocations())


Feed = Callable[[Replica, Path, Sequence[Delegation], Sequence[Revocation]], None]


def feed_directly(
    replica: Replica,
    _tmp: Path,
    delegations: Sequence[Delegation],
    revocations: Sequence[Revocation],
) -> None:
    assert replica.add_delegations(d.encode() for d in delegations) == 0
    assert replica.add_revocations(r.encode() for r in revocations) == 0


def feed_by_bundle(
    replica: Replica,
    tmp: Path,
    delegations: Sequence[Delegation],
    revocations: Sequence[Revocation],
) -> None:
    exporter = open_replica("region-b", epoch=21)
    path = export_with(tmp, exporter, delegations=delegations, revocations=revocations)
    result = import_bundle(replica, path)
    assert (result.delegations_added, result.revocations_added) == (0, 0)


FEEDS: dict[str, Feed] = {"direct": feed_directly, "bundle": feed_by_bundle}


# --------------------------------------------------------------------------- forged delegations


@pytest.mark.parametrize("feed", sorted(FEEDS))
@pytest.mark.parametrize("attack", sorted(FORGED_DELEGATIONS))
def test_a_forged_delegation_changes_no_decision(attack: str, feed: str, tmp_path: Path) -> None:
    forged, _, _ = FORGED_DELEGATIONS[attack]
    victim, control = open_replica("edge-b1", epoch=1), open_replica("edge-b1", epoch=2)
    FEEDS[feed](victim, tmp_path, forged, [])
    for replica in (victim, control):
        results = replica.ingest_many(WRITES)
        assert [r.outcome for r in results] == [IngestOutcome.APPLIED] * len(WRITES)
    assert not victim.authority.is_conditional(Scope.parse(TARGET))
    # edge-b1 is fully autonomous: the later write wins, not the higher authority.
    assert victim.get(TARGET, "policies", "rollout") == "from-edge"
    assert_not_kept(victim, forged)
    assert_same(victim, control)
    # What was not kept does not come back after a restart either.
    reopened = Replica(
        victim.identity, FLEET.anchors, victim.store, name="edge-b1", wall_clock=Clock(NOW)
    )
    assert reopened.authority_digest() == control.authority_digest()
    assert reopened.get(TARGET, "policies", "rollout") == "from-edge"


@pytest.mark.parametrize("attack", sorted(FORGED_DELEGATIONS))
def test_the_registry_refuses_each_forged_delegation_with_its_typed_error(attack: str) -> None:
    forged, error, reason = FORGED_DELEGATIONS[attack]
    authority = FLEET.authority()
    before = list(authority.delegations())
    with pytest.raises(error) as caught:
        authority.add_delegation(forged[-1])
    assert caught.value.reason == reason
    assert list(authority.delegations()) == before
    assert not authority.is_conditional(Scope.parse(TARGET))
    assert authority.public_key(forged[-1].subject.key_id) is None
    assert authority.delegations_for(forged[-1].subject.key_id) == ()
    # Only the orphan waits; what fails for good is not even parked.
    assert authority.is_parked(forged[-1].digest) == (attack == "parent-never-arrives")


def test_a_store_written_by_an_older_version_does_not_load_planted_items() -> None:
    control = open_replica("edge-b1", epoch=2)
    store = MemoryStore()
    planted = [d for forged, _, _ in FORGED_DELEGATIONS.values() for d in forged]
    outsider_delegations, _ = FORGED_REVOCATIONS["outsider"]
    store.commit(
        Batch(
            delegations=[
                StoredItem(d.digest, d.encode()) for d in [*LEGIT, *planted, *outsider_delegations]
            ],
            revocations=[StoredItem(r.digest, r.encode()) for _, r in FORGED_REVOCATIONS.values()],
        )
    )
    member = FLEET["edge-b1"]
    victim = Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        store,
        name="edge-b1",
        wall_clock=Clock(NOW + 10_000),
        epoch=1,
    )
    assert not victim.authority.is_conditional(Scope.parse(TARGET))
    assert not victim.authority.is_revoked(FLEET["region-b"].key_id)
    assert victim.authority.parked_count == 0  # nothing is parked from a store
    assert victim.authority_digest() == control.authority_digest()
    assert victim.delegations() == control.delegations()
    assert victim.revocations() == control.revocations() == []
    for replica in (victim, control):
        replica.ingest_many(WRITES)
    assert victim.get(TARGET, "policies", "rollout") == "from-edge"
    assert victim.digest() == control.digest()


# --------------------------------------------------------------------------- forged revocations


@pytest.mark.parametrize("feed", sorted(FEEDS))
@pytest.mark.parametrize("attack", sorted(FORGED_REVOCATIONS))
def test_a_revocation_from_outside_the_revoked_keys_chain_changes_no_decision(
    attack: str, feed: str, tmp_path: Path
) -> None:
    delegations, revocation = FORGED_REVOCATIONS[attack]
    victim, control = open_replica("edge-b1", epoch=1), open_replica("edge-b1", epoch=2)
    FEEDS[feed](victim, tmp_path, delegations, [revocation])
    assert not victim.authority.is_revoked(FLEET["region-b"].key_id)
    assert victim.status().pending == 0  # refused for good, not parked
    assert_not_kept(victim, [*delegations, revocation])
    # region-b's later bundles are still accepted, and its writes still count.
    region = open_replica("region-b", epoch=31)
    region.scope(TARGET).policies.set("window", "02:00")
    later = export_with(tmp_path, region, name="later")
    for replica in (victim, control):
        result = import_bundle(replica, later)
        assert result.applied == 1
        assert replica.get(TARGET, "policies", "window") == "02:00"
    assert_same(victim, control)


@pytest.mark.parametrize("attack", sorted(FORGED_REVOCATIONS))
def test_the_registry_refuses_each_forged_revocation(attack: str) -> None:
    delegations, revocation = FORGED_REVOCATIONS[attack]
    authority = FLEET.authority()
    for delegation in delegations:
        with pytest.raises(UntrustedKeyError):
            authority.add_delegation(delegation)
    with pytest.raises(UntrustedKeyError) as caught:
        authority.add_revocation(revocation)
    assert not isinstance(caught.value, UnknownDelegationError)
    assert caught.value.reason == "not-an-ancestor"
    assert list(authority.revocations()) == []
    assert not authority.is_revoked(FLEET["region-b"].key_id)


def test_edge_b1_still_accepts_region_b_after_region_a_revokes_it(tmp_path: Path) -> None:
    edge = open_replica("edge-b1")
    region_b = open_replica("region-b", epoch=41)
    # region-a's genuine key signs a revocation of its sibling; region-b's bundle carries it.
    revocation = _revoke_region_b("region-a")
    edge.add_revocations([revocation.encode()])
    import_bundle(edge, export_with(tmp_path, region_b, revocations=[revocation]))
    for index in range(3):
        region_b.scope(TARGET).policies.set("step", index)
        result = import_bundle(edge, export_with(tmp_path, region_b, name=f"b{index}"))
        assert result.applied == 1
        assert edge.get(TARGET, "policies", "step") == index
    assert edge.revocations() == []


def test_a_revocation_by_the_revoked_keys_ancestor_counts_and_waits_for_its_chain() -> None:
    # The positive side: region-b may revoke its own zone, and a root quorum any key.
    authority = Authority(FLEET.anchors)
    revocation = issue_revocation(
        FLEET["region-b"].key,
        fleet_id=FLEET_ID,
        revoked=FLEET["edge-b1"].public,
        cut={TARGET: 2},
        hlc=AT,
    )
    with pytest.raises(UnknownDelegationError) as caught:
        authority.add_revocation(revocation)
    assert caught.value.reason == "revoked-unknown"
    for link in FLEET["edge-b1"].chain:
        authority.add_delegation(link)
    assert authority.add_revocation(revocation)
    assert authority.is_revoked(FLEET["edge-b1"].key_id)
    root = issue_revocation(
        FLEET.root, fleet_id=FLEET_ID, revoked=FLEET["zone-b"].public, cut={}, hlc=AT
    )
    assert authority.add_revocation(root)  # roots need no chain of the revoked key


def test_a_pending_revocation_from_a_sibling_is_refused_once_the_chain_arrives() -> None:
    # The revoked key is not known yet: the revocation waits, counting for nothing, and is
    # refused (not kept) once the revoked key's chain shows region-a is not above it.
    member = FLEET["edge-a1"]
    replica = Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore(),
        name="edge-a1",
        wall_clock=Clock(NOW),
    )
    revocation = _revoke_region_b("region-a")
    assert replica.add_revocations([revocation.encode()]) == 0
    assert replica.status().pending == 1
    assert replica.revocations() == []
    replica.add_delegations(link.encode() for link in FLEET["region-b"].chain)
    assert replica.status().pending == 0
    assert replica.revocations() == []
    assert replica.status().refused_authority.get("not-an-ancestor") == 1


# --------------------------------------------------------------------------- the parking area


@functools.cache
def _orphans(count: int) -> list[bytes]:
    key = FLEET["region-b"].key
    return [
        issue_delegation(
            key,
            fleet_id=FLEET_ID,
            subject=FLEET.key("orphan").public,
            scope=TARGET,
            capabilities=EDGE_CAPABILITIES,
            tier=Tier.LOCAL,
            autonomy=Autonomy.CONDITIONAL,
            not_before=NOT_BEFORE,
            not_after=NOT_AFTER,
            parent=hashlib.sha256(index.to_bytes(4, "big")).digest(),
        ).encode()
        for index in range(count)
    ]


def _deep_chain(fleet: Fleet, depth: int) -> list[Delegation]:
    parent = None
    path = "global/deep"
    for index in range(depth):
        fleet.delegate(
            f"deep-{index}",
            parent=parent,
            scope=path,
            capabilities=ALL_CAPABILITIES,
            tier=Tier.REGIONAL,
            autonomy=Autonomy.FULL,
        )
        parent = f"deep-{index}"
        path += f"/l{index}"
    return list(fleet[f"deep-{depth - 1}"].chain)


def test_ten_thousand_orphans_stay_within_the_parking_budget() -> None:
    victim, control = open_replica("edge-b1", epoch=1), open_replica("edge-b1", epoch=2)
    stored = len(victim.store.delegations())
    assert victim.add_delegations(_orphans(10_000)) == 0
    status = victim.status()
    assert status.parked_delegations == victim.authority.parked_count
    assert victim.authority.parked_count == DEFAULT_MAX_PARKED_DELEGATIONS
    assert victim.authority.parked_bytes <= victim.authority.max_parked_bytes
    assert status.refused_authority == {
        "delegation-parking": 10_000 - DEFAULT_MAX_PARKED_DELEGATIONS
    }
    assert len(victim.store.delegations()) == stored
    assert_same(victim, control)
    # A full parking area refuses the newcomer with a typed error and evicts nothing.
    fleet = _fleet()
    chain = _deep_chain(fleet, 4)
    with pytest.raises(TooLargeError) as caught:
        victim.authority.add_delegation(chain[-1])
    assert caught.value.reason == "delegation-parking"
    assert victim.authority.parked_count == DEFAULT_MAX_PARKED_DELEGATIONS
    # A genuine chain that arrives leaf first, in one batch, still completes: parents first.
    assert victim.add_delegations(d.encode() for d in reversed(chain)) == len(chain)
    assert victim.authority.grant_for(chain[-1].subject.key_id, chain[-1].digest, at=AT)
    assert victim.authority.parked_count == DEFAULT_MAX_PARKED_DELEGATIONS


def test_the_byte_budget_bounds_the_parking_area_too() -> None:
    orphans = _orphans(10_000)[:50]
    size = len(orphans[0])
    authority = Authority(FLEET.anchors, max_parked_delegations=10_000, max_parked_bytes=size * 5)
    refused = 0
    for data in orphans:
        try:
            authority.add_delegation(Delegation.decode(data))
        except TooLargeError as exc:
            assert exc.reason == "delegation-parking"
            refused += 1
        except UnknownDelegationError as exc:
            assert exc.reason == "parked"
    assert authority.parked_bytes <= size * 5
    assert authority.parked_count == 5
    assert refused == 45


def test_a_chain_arriving_leaf_first_completes_when_its_root_issued_link_arrives() -> None:
    fleet = _fleet()
    chain = _deep_chain(fleet, 5)
    authority = Authority(fleet.anchors)
    for link in reversed(chain[1:]):
        with pytest.raises(UnknownDelegationError) as caught:
            authority.add_delegation(link)
        assert caught.value.reason == "parked"
        assert caught.value.missing == link.parent
    # Asked again, the leaf names the first link not held at all: the root-issued one.
    with pytest.raises(UnknownDelegationError) as caught:
        authority.add_delegation(chain[-1])
    assert caught.value.missing == chain[0].digest
    assert authority.parked_count == 4
    assert list(authority.delegations()) == []
    assert authority.add_delegation(chain[0]) == tuple(chain)
    assert authority.parked_count == authority.parked_bytes == 0
    assert authority.chain(chain[-1].digest) == tuple(chain)


def test_parked_descendants_of_a_link_that_fails_are_dropped() -> None:
    fleet = _fleet()
    bad = fleet.delegate(
        "bad",
        parent="region-a",
        scope="global/region-b",  # outside region-a's subtree
        capabilities=ALL_CAPABILITIES,
        tier=Tier.REGIONAL,
        autonomy=Autonomy.FULL,
    )
    below = fleet.delegate(
        "below",
        parent="bad",
        scope="global/region-b/x",
        capabilities=EDGE_CAPABILITIES,
        tier=Tier.LOCAL,
        autonomy=Autonomy.CONDITIONAL,
    )
    authority = Authority(fleet.anchors)
    for link in (below.delegation, bad.delegation):
        with pytest.raises(UnknownDelegationError):
            authority.add_delegation(link)
    assert authority.parked_count == 2
    # region-a arrives: it counts; "bad" fails for good and "below" can never count either.
    assert authority.add_delegation(fleet["region-a"].delegation) == (fleet["region-a"].delegation,)
    assert authority.parked_count == authority.parked_bytes == 0
    assert not authority.is_conditional(Scope.parse("global/region-b/x"))
    assert authority.refusals == {"scope-widened": 1, "parent-refused": 1}


def test_a_revocation_in_one_chain_of_a_key_does_not_refuse_its_bundles_in_another(
    tmp_path: Path,
) -> None:
    # One key, delegated by both regions. region-a may revoke it in region-a's chain only: a
    # bundle it signs under region-b's chain is still accepted.
    fleet = _fleet()
    key = fleet.key("dual")
    for name, parent in (("dual-a", "region-a"), ("dual-b", "region-b")):
        fleet.delegate(
            name,
            parent=parent,
            scope=f"global/{parent}/dual",
            capabilities=EDGE_CAPABILITIES,
            tier=Tier.LOCAL,
            autonomy=Autonomy.FULL,
            key=key,
        )
    links = [link.encode() for member in fleet for link in member.chain]
    importer = Replica(
        Identity(fleet["region-b"].key, fleet["region-b"].chain),
        fleet.anchors,
        MemoryStore(),
        name="region-b",
        wall_clock=Clock(NOW + 10_000),
    )
    importer.add_delegations(links)
    revocation = issue_revocation(
        fleet["region-a"].key, fleet_id=FLEET_ID, revoked=key.public, cut={}, hlc=AT
    )
    assert importer.add_revocations([revocation.encode()]) == 1  # it counts, in dual-a's chain
    dual = Replica(
        Identity(key, fleet["dual-b"].chain),
        fleet.anchors,
        MemoryStore(),
        name="dual-b",
        wall_clock=Clock(NOW + 10_000),
    )
    dual.add_delegations(links)
    dual.scope("global/region-b/dual").nodes.set("n1", "up")
    path = tmp_path / "dual.bundle"
    export_bundle(dual, path, peer="region-b", peer_scope="global/region-b")
    assert import_bundle(importer, path).applied == 1
