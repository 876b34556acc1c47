"""A plane's name is bound into its signed delegation: the only name a peer is known by."""

from __future__ import annotations

import pytest

from souverix_crdt.authority import (
    Capability,
    Delegation,
    issue_delegation,
    verify_chain,
)
from souverix_crdt.errors import KeyFileError, MalformedEnvelopeError, SignatureError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.plane.keydir import delegate_plane
from souverix_crdt.plane.keyring import bootstrap_keys
from souverix_crdt.plane.topology import default_topology
from souverix_crdt.scope import Autonomy, Tier
from souverix_crdt.testing.fleet import NOT_AFTER, NOT_BEFORE, NOW, make_fleet

BAD_NAMES = ["", "../../escaped", "a/b", "Edge", "edge.a1", "-edge", "edge-", "é", "x" * 64]


def _issue(name: str) -> Delegation:
    fleet = make_fleet()
    return issue_delegation(
        fleet.quorum_keys,
        fleet_id=fleet.fleet_id,
        subject=fleet.key("spare").public,
        scope="global/region-a",
        capabilities={Capability.REPORT_STATUS},
        tier=Tier.REGIONAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        name=name,
    )


def test_a_named_delegation_round_trips_and_its_grant_names_the_plane() -> None:
    fleet = make_fleet()
    delegation = _issue("region-a")
    decoded = Delegation.decode(delegation.encode())
    assert decoded == delegation
    assert decoded.name == "region-a"
    decoded.verify_signatures()
    grant = verify_chain(fleet.anchors, [decoded], at=Timestamp(NOW))
    assert grant.plane == "region-a"


def test_an_unnamed_delegation_keeps_its_bytes_and_is_named_by_its_scope() -> None:
    fleet = make_fleet()
    unnamed = _issue("")
    assert b"name" not in unnamed.encode()
    assert verify_chain(fleet.anchors, [unnamed], at=Timestamp(NOW)).plane == "region-a"


def test_the_name_is_signed() -> None:
    delegation = _issue("region-a")
    # Another name spelled into the same bytes no longer verifies.
    forged = delegation.encode().replace(b"\xa8region-a", b"\xa8region-b", 1)
    assert forged != delegation.encode()
    with pytest.raises(SignatureError):
        Delegation.decode(forged).verify_signatures()


@pytest.mark.parametrize("name", BAD_NAMES[1:])
def test_bad_names_are_refused_when_issued(name: str) -> None:
    with pytest.raises(MalformedEnvelopeError) as caught:
        _issue(name)
    assert caught.value.reason == "name"


def test_bootstrapped_planes_carry_their_names() -> None:
    keys = bootstrap_keys(default_topology(), seed=b"names")
    for name, creds in keys.planes.items():
        assert creds.delegation.name == name
        at = creds.delegation.not_before
        assert verify_chain(keys.anchors, creds.chain, at=at).plane == name


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", "Edge"])
def test_delegate_refuses_a_path_traversing_name(name: str) -> None:
    keys = bootstrap_keys(default_topology(), seed=b"names")
    with pytest.raises(KeyFileError) as caught:
        delegate_plane(
            keys,
            issuer="region-a",
            name=name,
            scope="global/region-a/edge-a9",
            capabilities={Capability.REPORT_STATUS},
            tier=Tier.LOCAL,
            autonomy=Autonomy.FULL,
            now_ms=NOW,
        )
    assert caught.value.reason == "name"
