"""Keys, delegations, chains, revocations and the Authority registry."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable

import attrs
import msgpack
import pytest
from cryptography.exceptions import InvalidSignature
from hypothesis import given, settings
from hypothesis import strategies as st

from souverix_crdt.authority import (
    COLLECTION_CAPABILITY,
    DELEGATION_DOMAIN,
    KEY_ID_DOMAIN,
    MAX_DELEGATION_SIZE,
    MAX_SIGNERS,
    REVOCATION_DOMAIN,
    SMALL_ORDER_ENCODINGS,
    Authority,
    Capability,
    Delegation,
    PublicKey,
    Revocation,
    SigningKey,
    TrustAnchors,
    allowed_collections,
    issue_delegation,
    issue_revocation,
    rotate_key,
    verify_chain,
)
from souverix_crdt.codec import DecodeLimits
from souverix_crdt.errors import (
    AuthorityError,
    CapabilityViolationError,
    DecodeError,
    ExpiredError,
    ForeignFleetError,
    MalformedEnvelopeError,
    NotYetValidError,
    QuorumError,
    RevokedError,
    ScopeViolationError,
    SignatureError,
    SouverixError,
    TooLargeError,
    UnknownDelegationError,
    UnsupportedVersionError,
    UntrustedKeyError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Autonomy, Scope, Tier
from souverix_crdt.testing.fleet import (
    ALL_CAPABILITIES,
    EDGE_CAPABILITIES,
    FLEET_ID,
    NOT_AFTER,
    NOT_BEFORE,
    NOW,
    Fleet,
    key_from_seed,
    make_fleet,
)

from .strategies import mutated_bytes

AT = Timestamp(NOW)
P = 2**255 - 19
D = (-121665 * pow(121666, -1, P)) % P


def edge_a1_scope() -> Scope:
    return Scope.parse("global/region-a/edge-a1")


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


# --------------------------------------------------------------------------- keys


def test_key_id_is_derived_from_the_public_key_bytes() -> None:
    key = key_from_seed("anyone")
    expected = hashlib.sha256(KEY_ID_DOMAIN + key.public.raw).digest()[:16].hex()
    assert key.public.key_id == expected == key.key_id
    assert len(expected) == 32


def test_signing_key_round_trips_and_never_shows_its_private_bytes() -> None:
    key = key_from_seed("secret")
    seed = key.private_bytes()
    again = SigningKey.from_private_bytes(seed)
    assert again.public == key.public
    assert again.sign(b"m") == key.sign(b"m")  # Ed25519 is deterministic
    for text in (repr(key), str(key)):
        assert seed.hex() not in text
        assert repr(seed)[2:-1] not in text
    assert key.public.key_id in repr(key)


def test_generated_keys_differ() -> None:
    assert SigningKey.generate().public != SigningKey.generate().public


@pytest.mark.parametrize("seed", [b"", b"x" * 31, b"x" * 33])
def test_private_key_of_the_wrong_size_is_refused(seed: bytes) -> None:
    with pytest.raises(DecodeError):
        SigningKey.from_private_bytes(seed)


def test_verify_raises_signature_error_wrapping_cryptography() -> None:
    key = key_from_seed("signer")
    signature = key.sign(b"message")
    key.public.verify(signature, b"message")
    with pytest.raises(SignatureError) as caught:
        key.public.verify(signature, b"massage")
    assert isinstance(caught.value.__cause__, InvalidSignature)
    assert caught.value.writer == key.key_id
    with pytest.raises(SignatureError):
        key.public.verify(signature[:-1], b"message")


def _point_times_8_is_identity(raw: bytes) -> bool:
    """Decode an Edwards point and check 8P == O, with plain affine arithmetic."""
    encoded = int.from_bytes(raw, "little")
    y, sign = encoded & ((1 << 255) - 1), encoded >> 255
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    assert (x * x - x2) % P == 0
    if x & 1 != sign:
        x = P - x

    def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
        (x1, y1), (x2_, y2) = a, b
        t = D * x1 * x2_ * y1 * y2
        return (
            (x1 * y2 + x2_ * y1) * pow(1 + t, -1, P) % P,
            (y1 * y2 + x1 * x2_) * pow(1 - t, -1, P) % P,
        )

    point = (x, y)
    for _ in range(3):
        point = add(point, point)
    return point == (0, 1)


def test_small_order_list_is_exactly_the_torsion_points() -> None:
    assert len(SMALL_ORDER_ENCODINGS) == 8
    for raw in SMALL_ORDER_ENCODINGS:
        assert _point_times_8_is_identity(raw)
    assert not _point_times_8_is_identity(key_from_seed("ordinary").public.raw)


@pytest.mark.parametrize("raw", sorted(SMALL_ORDER_ENCODINGS))
def test_small_order_public_keys_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedEnvelopeError):
        PublicKey(raw)


@pytest.mark.parametrize("k", range(19))
def test_non_canonical_encodings_are_refused(k: int) -> None:
    # y = p + k is the second spelling of y = k: one key must not have two key ids.
    with pytest.raises(MalformedEnvelopeError):
        PublicKey((P + k).to_bytes(32, "little"))


def test_x_zero_with_sign_bit_and_off_curve_points_are_refused() -> None:
    with pytest.raises(MalformedEnvelopeError):
        PublicKey((1 | 1 << 255).to_bytes(32, "little"))
    off_curve = next(
        y
        for y in range(2, 100)
        if pow((y * y - 1) * pow(D * y * y + 1, -1, P) % P, (P - 1) // 2, P) != 1
    )
    with pytest.raises(MalformedEnvelopeError):
        PublicKey(off_curve.to_bytes(32, "little"))
    for bad in (b"", b"\x01" * 31, b"\x01" * 33):
        with pytest.raises(MalformedEnvelopeError):
            PublicKey(bad)


# --------------------------------------------------------------------------- capabilities


def test_collection_capabilities() -> None:
    assert COLLECTION_CAPABILITY["policies"] is Capability.MODIFY_POLICIES
    assert allowed_collections(EDGE_CAPABILITIES) == {"policies", "nodes", "meta"}
    assert allowed_collections({Capability.DEPLOY_VERSIONS}) == {"versions"}
    assert allowed_collections({Capability.DELEGATE}) == frozenset()
    assert allowed_collections(ALL_CAPABILITIES) == set(COLLECTION_CAPABILITY)


def test_grant_allows_collection() -> None:
    fleet = make_fleet()
    grant = verify_chain(fleet.anchors, fleet["edge-a1"].chain, at=AT)
    assert grant.allows_collection("policies")
    assert grant.allows_collection("nodes")
    assert not grant.allows_collection("versions")
    assert not grant.allows_collection("unknown")
    with pytest.raises(CapabilityViolationError):
        grant.check_capability(Capability.DEPLOY_VERSIONS)


# --------------------------------------------------------------------------- anchors


def test_trust_anchor_configuration_is_checked() -> None:
    root = key_from_seed("r").public
    with pytest.raises(ValueError, match="quorum"):
        TrustAnchors(FLEET_ID, frozenset({root}), 2)
    with pytest.raises(ValueError, match="quorum"):
        TrustAnchors(FLEET_ID, frozenset({root}), 0)
    with pytest.raises(ValueError, match="root"):
        TrustAnchors(FLEET_ID, frozenset())
    with pytest.raises(MalformedEnvelopeError):
        TrustAnchors("Not A Fleet", frozenset({root}))


# --------------------------------------------------------------------------- delegations


def test_default_fleet_chains_verify() -> None:
    fleet = make_fleet()
    for member in fleet:
        grant = verify_chain(fleet.anchors, member.chain, at=AT)
        assert grant.subject == member.public
        assert grant.scope == member.scope
        assert grant.leaf_digest == member.digest
        assert grant.chain_digests == tuple(link.digest for link in member.chain)
    assert verify_chain(fleet.anchors, fleet["edge-a1"].chain, at=AT).rank == Tier.LOCAL.rank


def test_delegation_round_trips_and_is_deterministic() -> None:
    fleet, again = make_fleet(), make_fleet()
    for member in fleet:
        data = member.delegation.encode()
        decoded = Delegation.decode(data)
        assert decoded == member.delegation
        assert decoded.digest == member.digest == hashlib.sha256(data).digest()
        assert again[member.name].delegation.encode() == data
        decoded.verify_signatures()
    assert "Delegation(" in repr(fleet["edge-a1"].delegation)


def test_delegation_signed_bytes_carry_their_own_domain() -> None:
    delegation = make_fleet()["edge-a1"].delegation
    assert delegation.signed_bytes.startswith(DELEGATION_DOMAIN)
    assert not delegation.signed_bytes.startswith(REVOCATION_DOMAIN)


def _outer(delegation: Delegation) -> list[object]:
    return msgpack.unpackb(delegation.encode(), raw=False)  # type: ignore[no-any-return]


def _body(delegation: Delegation) -> dict[str, object]:
    return msgpack.unpackb(_outer(delegation)[2], raw=False)  # type: ignore[no-any-return]


def _reencode(outer: list[object], body: dict[str, object] | None = None) -> bytes:
    if body is not None:
        outer = [*outer[:2], msgpack.packb(dict(sorted(body.items()))), outer[3]]
    return msgpack.packb(outer)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda o, b: (o, {**b, "extra": 1}), MalformedEnvelopeError),
        (lambda o, b: (o, {k: v for k, v in b.items() if k != "serial"}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "serial": True}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "serial": -1}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "v": 2}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "caps": ["teleport"]}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "caps": []}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "tier": "emperor"}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "scope": "global/../x"}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "scope": "global/Region-A"}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "fleet": "Other Fleet"}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "parent": b"short"}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "subject": b"\x00" * 32}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "not_after": [1, 0]}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "not_after": [2**40, 2**32]}), MalformedEnvelopeError),
        (lambda o, b: (o, {**b, "not_after": "soon"}), MalformedEnvelopeError),
        (lambda o, b: ([2, *o[1:]], None), UnsupportedVersionError),
        (lambda o, b: ([o[0], "ed448", *o[2:]], None), UnsupportedVersionError),
        (lambda o, b: ([o[0], "Ed25519", *o[2:]], None), UnsupportedVersionError),
        (lambda o, b: ([o[0], 7, *o[2:]], None), MalformedEnvelopeError),
        (lambda o, b: (o[:3], None), MalformedEnvelopeError),
        (lambda o, b: ([*o[:3], []], None), MalformedEnvelopeError),
        (lambda o, b: ([*o[:3], [o[3][0], o[3][0]]], None), QuorumError),
        (lambda o, b: ([*o[:3], [[o[3][0][0], b"\x00" * 63]]], None), MalformedEnvelopeError),
        (lambda o, b: ([*o[:3], [o[3][0]] * (MAX_SIGNERS + 1)], None), TooLargeError),
    ],
)
def test_delegation_decode_is_strict(
    mutate: Callable[[list[object], dict[str, object]], tuple[list[object], object]],
    error: type[Exception],
) -> None:
    delegation = make_fleet()["edge-a1"].delegation
    outer, body = mutate(_outer(delegation), _body(delegation))
    data = _reencode(outer, body if isinstance(body, dict) else None)
    with pytest.raises(error):
        Delegation.decode(data)


def test_delegation_decode_refuses_non_canonical_and_trailing_bytes() -> None:
    delegation = make_fleet()["edge-a1"].delegation
    data = delegation.encode()
    with pytest.raises(MalformedEnvelopeError):
        Delegation.decode(data + b"\x00")
    # The same content spelled with a 32-bit array header: one delegation, one encoding.
    respelled = b"\xdd" + (4).to_bytes(4, "big") + data[1:]
    with pytest.raises(MalformedEnvelopeError, match="canonical"):
        Delegation.decode(respelled)
    outer = _outer(delegation)
    unsorted_body = msgpack.packb(dict(reversed(list(_body(delegation).items()))))
    with pytest.raises(MalformedEnvelopeError, match="canonical"):
        Delegation.decode(msgpack.packb([*outer[:2], unsorted_body, outer[3]]))


def test_delegation_decode_size_limits() -> None:
    with pytest.raises(TooLargeError):
        Delegation.decode(b"\x00" * (MAX_DELEGATION_SIZE + 1))
    data = make_fleet()["edge-a1"].delegation.encode()
    with pytest.raises(TooLargeError):
        Delegation.decode(data, DecodeLimits(max_size=len(data) - 1))
    with pytest.raises(MalformedEnvelopeError):
        Delegation.decode("not bytes")  # type: ignore[arg-type]


def test_stripped_or_swapped_signature_is_refused() -> None:
    fleet = make_fleet()
    delegation = fleet["edge-a1"].delegation
    outer = _outer(delegation)
    rogue = key_from_seed("rogue")
    # The signature of another key in place of the issuer's: signers differ from issuers.
    swapped = [*outer[:3], [[rogue.public.raw, rogue.sign(delegation.signed_bytes)]]]
    with pytest.raises(SignatureError):
        Delegation.decode(msgpack.packb(swapped))
    # A flipped signature byte decodes, but never verifies.
    tampered = [*outer[:3], [[outer[3][0][0], flip(outer[3][0][1], 5)]]]  # type: ignore[index]
    decoded = Delegation.decode(msgpack.packb(tampered))
    with pytest.raises(SignatureError):
        decoded.verify_signatures()
    with pytest.raises(SignatureError):
        verify_chain(fleet.anchors, (*fleet["edge-a1"].chain[:-1], decoded), at=AT)


def test_issue_delegation_refuses_bad_input() -> None:
    fleet = make_fleet()
    key = fleet.key("x")
    common = {
        "fleet_id": FLEET_ID,
        "subject": key.public,
        "scope": "global",
        "tier": Tier.LOCAL,
        "autonomy": Autonomy.FULL,
    }
    with pytest.raises(MalformedEnvelopeError, match="window"):
        issue_delegation(
            fleet.root,
            capabilities={Capability.REPORT_STATUS},
            not_before=AT,
            not_after=AT,
            **common,  # type: ignore[arg-type]
        )
    with pytest.raises(MalformedEnvelopeError):
        issue_delegation(
            fleet.root,
            capabilities=(),
            not_before=NOT_BEFORE,
            not_after=NOT_AFTER,
            **common,  # type: ignore[arg-type]
        )
    with pytest.raises(QuorumError):
        issue_delegation(
            [fleet.root, fleet.root],
            capabilities={Capability.REPORT_STATUS},
            not_before=NOT_BEFORE,
            not_after=NOT_AFTER,
            **common,  # type: ignore[arg-type]
        )


# --------------------------------------------------------------------------- chains


def test_self_signed_root_is_untrusted() -> None:
    fleet = make_fleet()
    rogue = key_from_seed("rogue-root")
    fake = issue_delegation(
        rogue,
        fleet_id=FLEET_ID,
        subject=rogue.public,
        scope=Scope.root(),
        capabilities=ALL_CAPABILITIES,
        tier=Tier.GLOBAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
    )
    with pytest.raises(UntrustedKeyError) as caught:
        verify_chain(fleet.anchors, [fake], at=AT)
    assert caught.value.reason == "not-a-root"
    # Signed by the rogue for another subject: just as untrusted.
    other = issue_delegation(
        rogue,
        fleet_id=FLEET_ID,
        subject=fleet.key("victim").public,
        scope="global/region-a",
        capabilities={Capability.MODIFY_POLICIES},
        tier=Tier.REGIONAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
    )
    with pytest.raises(UntrustedKeyError):
        verify_chain(fleet.anchors, [other], at=AT)


def test_edge_zone_grant_does_not_cover_global_or_a_sibling() -> None:
    fleet = make_fleet()
    grant = verify_chain(fleet.anchors, fleet["edge-a1"].chain, at=AT)
    assert grant.covers("global/region-a/edge-a1")
    for scope in ("global", "global/region-a", "global/region-a/edge-a2", "global/region-b"):
        with pytest.raises(ScopeViolationError):
            Authority.check_write(grant, scope)
    # Prefixes are compared by segment, not by string: edge-a1x is not inside edge-a1.
    with pytest.raises(ScopeViolationError):
        grant.check_scope("global/region-a/edge-a1x")
    # Ancestors may write into their descendants.
    region = verify_chain(fleet.anchors, fleet["region-a"].chain, at=AT)
    Authority.check_write(region, "global/region-a/edge-a1", Capability.MODIFY_POLICIES)


def _deep_fleet(
    *,
    position: int,
    capabilities: Callable[[int], frozenset[Capability]] = lambda _: ALL_CAPABILITIES,
    window: Callable[[int], tuple[Timestamp, Timestamp]] = lambda _: (NOT_BEFORE, NOT_AFTER),
    scope: Callable[[int], str] | None = None,
) -> tuple[Fleet, str]:
    """A chain of four links, root first; ``position`` says which link the lambdas distort."""
    fleet = Fleet()
    names = ["l0", "l1", "l2", "l3"]
    paths = ["global/a", "global/a/b", "global/a/b/c", "global/a/b/c/d"]
    parent = None
    for index, name in enumerate(names):
        not_before, not_after = window(index) if index == position else (NOT_BEFORE, NOT_AFTER)
        fleet.delegate(
            name,
            parent=parent,
            scope=(scope(index) if scope and index == position else paths[index]),
            capabilities=capabilities(index) if index == position else ALL_CAPABILITIES,
            tier=Tier.REGIONAL,
            autonomy=Autonomy.FULL,
            not_before=not_before,
            not_after=not_after,
        )
        parent = name
    return fleet, names[-1]


def test_deep_chain_is_valid() -> None:
    fleet, leaf = _deep_fleet(position=-1)
    verify_chain(fleet.anchors, fleet[leaf].chain, at=AT)


@pytest.mark.parametrize("position", [1, 2, 3])
def test_capability_amplification_anywhere_is_refused(position: int) -> None:
    # The parent of ``position`` loses deploy_versions; the link at ``position`` claims it back.
    reduced = ALL_CAPABILITIES - {Capability.DEPLOY_VERSIONS}

    def caps(index: int) -> frozenset[Capability]:
        return reduced

    fleet = Fleet()
    names = ["l0", "l1", "l2", "l3"]
    paths = ["global/a", "global/a/b", "global/a/b/c", "global/a/b/c/d"]
    parent = None
    for index, name in enumerate(names):
        fleet.delegate(
            name,
            parent=parent,
            scope=paths[index],
            capabilities=caps(index) if index == position - 1 else ALL_CAPABILITIES,
            tier=Tier.REGIONAL,
            autonomy=Autonomy.FULL,
        )
        parent = name
    with pytest.raises(CapabilityViolationError) as caught:
        verify_chain(fleet.anchors, fleet["l3"].chain, at=AT)
    assert caught.value.reason == "capability-amplified"


@pytest.mark.parametrize("position", [1, 2, 3])
@pytest.mark.parametrize(
    ("window", "error"),
    [
        ((Timestamp(NOT_BEFORE.wall - 1), NOT_AFTER), NotYetValidError),
        ((NOT_BEFORE, Timestamp(NOT_AFTER.wall, 1)), ExpiredError),
    ],
)
def test_widened_validity_window_anywhere_is_refused(
    position: int, window: tuple[Timestamp, Timestamp], error: type[AuthorityError]
) -> None:
    fleet, leaf = _deep_fleet(position=position, window=lambda _: window)
    with pytest.raises(error) as caught:
        verify_chain(fleet.anchors, fleet[leaf].chain, at=AT)
    assert caught.value.reason == "window-widened"


@pytest.mark.parametrize("position", [1, 2, 3])
def test_widened_scope_anywhere_is_refused(position: int) -> None:
    fleet, leaf = _deep_fleet(position=position, scope=lambda _: "global/elsewhere")
    with pytest.raises(ScopeViolationError):
        verify_chain(fleet.anchors, fleet[leaf].chain, at=AT)


def test_tier_and_autonomy_amplification_are_refused() -> None:
    fleet = make_fleet()
    fleet.delegate(
        "usurper",
        parent="edge-a1",
        scope="global/region-a/edge-a1",
        capabilities={Capability.REPORT_STATUS},
        tier=Tier.LOCAL,
        autonomy=Autonomy.CONDITIONAL,
    )
    # edge-a1 lacks delegate.
    with pytest.raises(CapabilityViolationError) as caught:
        verify_chain(fleet.anchors, fleet["usurper"].chain, at=AT)
    assert caught.value.reason == "delegate"

    fleet.delegate(
        "sub-region",
        parent="region-a",
        scope="global/region-a",
        capabilities=ALL_CAPABILITIES,
        tier=Tier.GLOBAL,
        autonomy=Autonomy.FULL,
    )
    with pytest.raises(CapabilityViolationError) as caught:
        verify_chain(fleet.anchors, fleet["sub-region"].chain, at=AT)
    assert caught.value.reason == "tier-amplified"

    fleet.delegate(
        "cond",
        parent="region-a",
        scope="global/region-a",
        capabilities=ALL_CAPABILITIES,
        tier=Tier.REGIONAL,
        autonomy=Autonomy.CONDITIONAL,
    )
    fleet.delegate(
        "escapee",
        parent="cond",
        scope="global/region-a/x",
        capabilities={Capability.REPORT_STATUS},
        tier=Tier.LOCAL,
        autonomy=Autonomy.FULL,
    )
    verify_chain(fleet.anchors, fleet["cond"].chain, at=AT)
    with pytest.raises(CapabilityViolationError) as caught:
        verify_chain(fleet.anchors, fleet["escapee"].chain, at=AT)
    assert caught.value.reason == "autonomy-amplified"


def test_validity_window_is_inclusive_exclusive() -> None:
    fleet = Fleet()
    start, end = Timestamp(1_000), Timestamp(2_000)
    member = fleet.delegate(
        "short",
        parent=None,
        scope="global",
        capabilities={Capability.REPORT_STATUS},
        tier=Tier.LOCAL,
        autonomy=Autonomy.FULL,
        not_before=start,
        not_after=end,
    )
    verify_chain(fleet.anchors, member.chain, at=start)
    verify_chain(fleet.anchors, member.chain, at=Timestamp(1_999, 99))
    with pytest.raises(NotYetValidError):
        verify_chain(fleet.anchors, member.chain, at=Timestamp(999, 5))
    with pytest.raises(ExpiredError):
        verify_chain(fleet.anchors, member.chain, at=end)
    assert member.delegation.valid_at(start)
    assert not member.delegation.valid_at(end)


def test_expired_and_not_yet_valid_links_in_the_middle_of_a_chain() -> None:
    # The region's window is narrow; the edge's sits inside it. Judged outside: refused.
    fleet = Fleet()
    fleet.delegate(
        "region",
        parent=None,
        scope="global/region-a",
        capabilities=ALL_CAPABILITIES,
        tier=Tier.REGIONAL,
        autonomy=Autonomy.FULL,
        not_before=Timestamp(NOW - 10),
        not_after=Timestamp(NOW + 10),
    )
    edge = fleet.delegate(
        "edge",
        parent="region",
        scope="global/region-a/edge",
        capabilities=EDGE_CAPABILITIES,
        tier=Tier.LOCAL,
        autonomy=Autonomy.CONDITIONAL,
        not_before=Timestamp(NOW - 5),
        not_after=Timestamp(NOW + 5),
    )
    verify_chain(fleet.anchors, edge.chain, at=AT)
    with pytest.raises(ExpiredError):
        verify_chain(fleet.anchors, edge.chain, at=Timestamp(NOW + 7))
    with pytest.raises(NotYetValidError):
        verify_chain(fleet.anchors, edge.chain, at=Timestamp(NOW - 7))


def test_chain_structure_errors() -> None:
    fleet = make_fleet()
    anchors = fleet.anchors
    edge_chain = fleet["edge-a1"].chain
    with pytest.raises(MalformedEnvelopeError):
        verify_chain(anchors, [], at=AT)
    # Missing the root-issued link: the parent is unknown.
    with pytest.raises(UnknownDelegationError) as caught:
        verify_chain(anchors, edge_chain[1:], at=AT)
    assert caught.value.missing == fleet["region-a"].digest
    # Links out of order, or from a different branch.
    with pytest.raises(UntrustedKeyError):
        verify_chain(anchors, (fleet["region-b"].delegation, edge_chain[1]), at=AT)
    # Too deep.
    deep, leaf = _deep_fleet(position=-1)
    with pytest.raises(TooLargeError):
        verify_chain(deep.anchors, deep[leaf].chain, at=AT, max_depth=3)


def test_link_signed_by_a_key_other_than_the_parent_subject() -> None:
    fleet = make_fleet()
    region = fleet["region-a"]
    impostor = issue_delegation(
        fleet["region-b"].key,
        fleet_id=FLEET_ID,
        subject=fleet.key("x").public,
        scope="global/region-a/edge-a9",
        capabilities={Capability.REPORT_STATUS},
        tier=Tier.LOCAL,
        autonomy=Autonomy.CONDITIONAL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        parent=region.delegation,
    )
    with pytest.raises(UntrustedKeyError) as caught:
        verify_chain(fleet.anchors, (*region.chain, impostor), at=AT)
    assert caught.value.reason == "issuer"


def test_key_appearing_twice_in_a_chain_is_refused() -> None:
    fleet = make_fleet()
    region = fleet["region-a"]
    loop = issue_delegation(
        region.key,
        fleet_id=FLEET_ID,
        subject=region.public,
        scope="global/region-a",
        capabilities=ALL_CAPABILITIES,
        tier=Tier.REGIONAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        parent=region.delegation,
    )
    with pytest.raises(MalformedEnvelopeError, match="twice"):
        verify_chain(fleet.anchors, (*region.chain, loop), at=AT)


def test_foreign_fleet_link_is_refused() -> None:
    ours, theirs = make_fleet(), make_fleet("other-fleet")
    with pytest.raises(ForeignFleetError):
        verify_chain(ours.anchors, theirs["edge-a1"].chain, at=AT)


# --------------------------------------------------------------------------- quorum


def test_k_of_n_quorum() -> None:
    fleet = make_fleet(roots=3, quorum=2)
    for member in fleet:
        verify_chain(fleet.anchors, member.chain, at=AT)
    single = issue_delegation(
        fleet.root_keys[0],
        fleet_id=FLEET_ID,
        subject=fleet.key("x").public,
        scope="global/x",
        capabilities={Capability.REPORT_STATUS},
        tier=Tier.LOCAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
    )
    with pytest.raises(QuorumError):
        verify_chain(fleet.anchors, [single], at=AT)


def test_duplicated_signature_counts_once() -> None:
    fleet = make_fleet(roots=3, quorum=2)
    delegation = fleet["region-a"].delegation
    first = delegation.signatures[0]
    with pytest.raises(QuorumError):
        attrs.evolve(delegation, signatures=(first, first))
    # The same on the wire.
    outer = _outer(delegation)
    doubled = [*outer[:3], [outer[3][0], outer[3][0]]]  # type: ignore[index]
    with pytest.raises(QuorumError):
        Delegation.decode(msgpack.packb(doubled))


def test_one_key_under_two_ids_counts_once() -> None:
    fleet = make_fleet(roots=3, quorum=2)
    delegation = fleet["region-a"].delegation
    root_id = delegation.issuers[0]
    # Listing one issuer twice, under the same (derived) id.
    with pytest.raises(QuorumError):
        attrs.evolve(delegation, issuers=(root_id, root_id))
    # A second spelling of one key (y + p) is refused: see test_non_canonical_encodings.
    # Anchors are a set of keys: the same key pinned twice is still one root.
    single = key_from_seed("solo").public
    assert len(TrustAnchors(FLEET_ID, frozenset({single, PublicKey(single.raw)})).roots) == 1
    with pytest.raises(ValueError, match="quorum"):
        TrustAnchors(FLEET_ID, frozenset({single, PublicKey(single.raw)}), 2)


def test_root_and_non_root_signers_mixed_are_refused() -> None:
    fleet = make_fleet(roots=2, quorum=2)
    rogue = key_from_seed("rogue")
    mixed = issue_delegation(
        [fleet.root_keys[0], rogue],
        fleet_id=FLEET_ID,
        subject=fleet.key("x").public,
        scope="global/x",
        capabilities={Capability.REPORT_STATUS},
        tier=Tier.LOCAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
    )
    with pytest.raises(UntrustedKeyError):
        verify_chain(fleet.anchors, [mixed], at=AT)


# --------------------------------------------------------------------------- the registry


def test_authority_builds_chains_from_leaf_digests_in_any_order() -> None:
    fleet = make_fleet()
    authority = Authority(fleet.anchors)
    edge = fleet["edge-a1"]
    # The leaf arrives first: it waits, parked, and counts for nothing until its parent comes.
    for _ in range(2):
        with pytest.raises(UnknownDelegationError) as parked:
            authority.add_delegation(edge.delegation)
        assert parked.value.reason == "parked"
        assert parked.value.missing == fleet["region-a"].digest
    assert authority.is_parked(edge.digest)
    assert authority.delegation(edge.digest) is None
    assert authority.public_key(edge.key_id) is None
    with pytest.raises(UnknownDelegationError) as caught:
        authority.grant_for(edge.key_id, edge.digest, at=AT)
    assert caught.value.missing == fleet["region-a"].digest
    region = fleet["region-a"].delegation
    assert authority.add_delegation(region) == (region, edge.delegation)
    assert authority.add_delegation(edge.delegation) == ()
    assert not authority.is_parked(edge.digest)
    assert authority.parked_count == authority.parked_bytes == 0
    grant = authority.grant_for(edge.key_id, edge.digest, at=AT)
    assert grant.chain_subjects == (fleet["region-a"].key_id, edge.key_id)
    assert authority.public_key(edge.key_id) == edge.public
    assert authority.public_key(fleet.root.key_id) == fleet.root.public
    assert authority.public_key("0" * 32) is None
    assert authority.chain(edge.digest) == edge.chain
    assert authority.delegations_for(edge.key_id) == (edge.delegation,)
    with pytest.raises(UnknownDelegationError):
        authority.grant_for(edge.key_id, b"\x00" * 32, at=AT)


def test_authority_refuses_foreign_and_forged_delegations() -> None:
    fleet = make_fleet()
    authority = Authority(fleet.anchors)
    with pytest.raises(ForeignFleetError):
        authority.add_delegation(make_fleet("other-fleet")["edge-a1"].delegation)
    delegation = fleet["edge-a1"].delegation
    public, signature = delegation.signatures[0]
    forged = attrs.evolve(delegation, signatures=((public, flip(signature, 0)),))
    with pytest.raises(SignatureError):
        authority.add_delegation(forged)
    assert authority.delegation(forged.digest) is None


def test_grant_for_refuses_another_writers_delegation() -> None:
    fleet = make_fleet()
    authority = fleet.authority()
    with pytest.raises(UntrustedKeyError) as caught:
        authority.grant_for(fleet["edge-a1"].key_id, fleet["edge-a2"].digest, at=AT)
    assert caught.value.reason == "writer-mismatch"
    assert not isinstance(caught.value, UnknownDelegationError)


def test_no_union_of_rights_across_chains() -> None:
    fleet = make_fleet()
    key = fleet.key("dual")
    policies = fleet.delegate(
        "dual-a",
        parent="region-a",
        scope="global/region-a/edge-a1",
        capabilities={Capability.MODIFY_POLICIES},
        tier=Tier.LOCAL,
        autonomy=Autonomy.CONDITIONAL,
        key=key,
    )
    versions = fleet.delegate(
        "dual-b",
        parent="region-b",
        scope="global/region-b/edge-b1",
        capabilities={Capability.DEPLOY_VERSIONS},
        tier=Tier.LOCAL,
        autonomy=Autonomy.FULL,
        key=key,
    )
    authority = fleet.authority()
    grant = authority.grant_for(key.key_id, policies.digest, at=AT)
    assert grant.capabilities == {Capability.MODIFY_POLICIES}
    assert not grant.allows_collection("versions")
    with pytest.raises(ScopeViolationError):
        grant.check_scope("global/region-b/edge-b1")
    other = authority.grant_for(key.key_id, versions.digest, at=AT)
    assert other.capabilities == {Capability.DEPLOY_VERSIONS}
    with pytest.raises(ScopeViolationError):
        other.check_scope("global/region-a/edge-a1")


def test_describe_is_json_serialisable() -> None:
    fleet = make_fleet()
    authority = fleet.authority()
    authority.add_revocation(
        issue_revocation(
            fleet["region-a"].key,
            fleet_id=FLEET_ID,
            revoked=fleet["edge-a2"].public,
            cut={"global/region-a/edge-a2": 3},
            hlc=AT,
        )
    )
    description = json.loads(json.dumps(authority.describe()))
    assert description["fleet_id"] == FLEET_ID
    assert len(description["delegations"]) == len(fleet.members)
    assert description["revocations"][0]["cut"] == {"global/region-a/edge-a2": 3}


# --------------------------------------------------------------------------- revocations


def _grant(authority: Authority, fleet: Fleet, name: str) -> object:
    return authority.grant_for(fleet[name].key_id, fleet[name].digest, at=AT)


def test_revocation_round_trips() -> None:
    fleet = make_fleet()
    revocation = issue_revocation(
        fleet["region-a"].key,
        fleet_id=FLEET_ID,
        revoked=fleet["edge-a1"].key_id,
        cut={Scope.parse("global/region-a/edge-a1"): 4, "global/region-a": 1},
        hlc=AT,
        kept=[b"\x01" * 32],
    )
    data = revocation.encode()
    decoded = Revocation.decode(data)
    assert decoded == revocation
    assert hash(decoded) == hash(revocation)
    assert decoded.digest == hashlib.sha256(data).digest()
    assert decoded.cut_for("global/region-a/edge-a1") == 4
    assert decoded.cut_for("global/region-b") == 0
    decoded.verify_signatures()
    assert revocation.signed_bytes.startswith(REVOCATION_DOMAIN)
    assert "Revocation(" in repr(revocation)


@pytest.mark.parametrize(
    ("body_change", "error"),
    [
        ({"cut": {"global/../x": 1}}, MalformedEnvelopeError),
        ({"cut": {"global": -1}}, MalformedEnvelopeError),
        ({"cut": {"global": "1"}}, MalformedEnvelopeError),
        ({"kept": [b"short"]}, MalformedEnvelopeError),
        ({"revoked": "ABC"}, MalformedEnvelopeError),
        ({"hlc": [1]}, MalformedEnvelopeError),
        ({"extra": 1}, MalformedEnvelopeError),
    ],
)
def test_revocation_decode_is_strict(
    body_change: dict[str, object], error: type[Exception]
) -> None:
    fleet = make_fleet()
    revocation = issue_revocation(
        fleet["region-a"].key,
        fleet_id=FLEET_ID,
        revoked=fleet["edge-a1"].key_id,
        cut={"global/region-a/edge-a1": 4},
        hlc=AT,
    )
    outer = msgpack.unpackb(revocation.encode(), raw=False)
    body = msgpack.unpackb(outer[2], raw=False)
    body.update(body_change)
    data = msgpack.packb([*outer[:2], msgpack.packb(dict(sorted(body.items()))), outer[3]])
    with pytest.raises(error):
        Revocation.decode(data)


def test_revocation_construction_rules() -> None:
    fleet = make_fleet()
    region = fleet["region-a"]
    with pytest.raises(MalformedEnvelopeError, match="itself"):
        issue_revocation(region.key, fleet_id=FLEET_ID, revoked=region.public, cut={}, hlc=AT)
    with pytest.raises(TooLargeError):
        issue_revocation(
            region.key,
            fleet_id=FLEET_ID,
            revoked=fleet["edge-a1"].public,
            cut={f"global/s{index}": 1 for index in range(1025)},
            hlc=AT,
        )


def test_revoked_writer_counts_up_to_the_cut_only() -> None:
    fleet = make_fleet()
    authority = fleet.authority()
    edge = fleet["edge-a1"]
    grant = authority.grant_for(edge.key_id, edge.digest, at=AT)
    assert not authority.is_cut(grant, edge.scope, 100)
    revocation = issue_revocation(
        fleet["region-a"].key,
        fleet_id=FLEET_ID,
        revoked=edge.public,
        cut={edge.scope: 5},
        hlc=AT,
    )
    assert authority.add_revocation(revocation)
    assert not authority.add_revocation(revocation)  # idempotent
    assert authority.is_revoked(edge.key_id)
    assert authority.revocations_of(edge.key_id) == (revocation,)
    assert list(authority.revocations()) == [revocation]
    for seq in (1, 5):
        authority.check_not_revoked(grant, edge.scope, seq)
    with pytest.raises(RevokedError) as caught:
        authority.check_not_revoked(grant, edge.scope, 6)
    assert caught.value.writer == edge.key_id
    assert caught.value.scope == str(edge.scope)
    # A scope the revoker did not list has cut 0: nothing there counts.
    assert authority.is_cut(grant, "global/region-a/edge-a1/sub", 1)
    # Other writers are untouched.
    sibling = fleet["edge-a2"]
    sibling_grant = authority.grant_for(sibling.key_id, sibling.digest, at=AT)
    assert not authority.is_cut(sibling_grant, sibling.scope, 10**6)


def test_cascading_revocation_through_an_ancestor() -> None:
    fleet = make_fleet()
    authority = fleet.authority()
    region, edge, other = fleet["region-a"], fleet["edge-a1"], fleet["edge-b1"]
    grants = {
        name: authority.grant_for(fleet[name].key_id, fleet[name].digest, at=AT)
        for name in ("region-a", "edge-a1", "edge-a2", "edge-b1")
    }
    revocation = issue_revocation(
        fleet.root, fleet_id=FLEET_ID, revoked=region.public, cut={region.scope: 2}, hlc=AT
    )
    authority.add_revocation(revocation)
    assert not authority.is_cut(grants["region-a"], region.scope, 2)
    assert authority.is_cut(grants["region-a"], region.scope, 3)
    # Every key below the revoked one loses every write, whatever its sequence number.
    assert authority.is_cut(grants["edge-a1"], edge.scope, 1)
    assert authority.is_cut(grants["edge-a2"], fleet["edge-a2"].scope, 1)
    with pytest.raises(RevokedError):
        authority.check_not_revoked(grants["edge-a1"], edge.scope, 1)
    # Another region's subtree is untouched.
    assert not authority.is_cut(grants["edge-b1"], other.scope, 1)


def test_cascade_spares_kept_children() -> None:
    fleet = make_fleet()
    authority = fleet.authority()
    region = fleet["region-a"]
    authority.add_revocation(
        issue_revocation(
            fleet.root,
            fleet_id=FLEET_ID,
            revoked=region.public,
            cut={},
            hlc=AT,
            kept=[fleet["edge-a1"].delegation],
        )
    )
    kept = authority.grant_for(fleet["edge-a1"].key_id, fleet["edge-a1"].digest, at=AT)
    dropped = authority.grant_for(fleet["edge-a2"].key_id, fleet["edge-a2"].digest, at=AT)
    assert not authority.is_cut(kept, fleet["edge-a1"].scope, 10**6)
    assert authority.is_cut(dropped, fleet["edge-a2"].scope, 1)


def test_revocation_reaches_only_chains_below_its_issuer() -> None:
    fleet = make_fleet()
    authority = fleet.authority()
    edge = fleet["edge-a1"]
    # region-b holds delegate, but it does not stand above edge-a1: it cannot take away a
    # grant it never gave, so its revocation is refused and not kept.
    with pytest.raises(UntrustedKeyError) as caught:
        authority.add_revocation(
            issue_revocation(
                fleet["region-b"].key, fleet_id=FLEET_ID, revoked=edge.public, cut={}, hlc=AT
            )
        )
    assert caught.value.reason == "not-an-ancestor"
    assert not authority.is_revoked(edge.key_id)
    assert list(authority.revocations()) == []
    grant = authority.grant_for(edge.key_id, edge.digest, at=AT)
    assert not authority.is_cut(grant, edge.scope, 1)


def test_revocation_issuer_authority() -> None:
    fleet = make_fleet(roots=3, quorum=2)
    authority = fleet.authority()
    edge = fleet["edge-a1"]
    # An edge key is not above its sibling: refused for good, not parked.
    with pytest.raises(UntrustedKeyError) as caught:
        authority.add_revocation(
            issue_revocation(
                edge.key, fleet_id=FLEET_ID, revoked=fleet["edge-a2"].public, cut={}, hlc=AT
            )
        )
    assert not isinstance(caught.value, UnknownDelegationError)
    assert caught.value.reason == "not-an-ancestor"
    # One root of a 2-of-3 quorum is not enough.
    with pytest.raises(QuorumError):
        authority.add_revocation(
            issue_revocation(
                fleet.root_keys[0], fleet_id=FLEET_ID, revoked=edge.public, cut={}, hlc=AT
            )
        )
    # Roots are re-pinned, never revoked.
    with pytest.raises(UntrustedKeyError):
        authority.add_revocation(
            issue_revocation(
                fleet.quorum_keys,
                fleet_id=FLEET_ID,
                revoked=fleet.root_keys[2].public,
                cut={},
                hlc=AT,
            )
        )
    # Mixed root and non-root signers.
    with pytest.raises(UntrustedKeyError):
        authority.add_revocation(
            issue_revocation(
                [fleet.root_keys[0], fleet["region-a"].key],
                fleet_id=FLEET_ID,
                revoked=edge.public,
                cut={},
                hlc=AT,
            )
        )
    # Another fleet's revocation.
    other = make_fleet("other-fleet")
    with pytest.raises(ForeignFleetError):
        authority.add_revocation(
            issue_revocation(
                other.root, fleet_id="other-fleet", revoked=edge.public, cut={}, hlc=AT
            )
        )
    # A forged signature.
    good = issue_revocation(
        fleet.quorum_keys, fleet_id=FLEET_ID, revoked=edge.public, cut={}, hlc=AT
    )
    public, signature = good.signatures[0]
    forged = Revocation(
        fleet_id=good.fleet_id,
        issuers=good.issuers,
        revoked=good.revoked,
        cut=good.cut,
        kept=good.kept,
        hlc=good.hlc,
        signatures=((public, flip(signature, 3)), *good.signatures[1:]),
    )
    with pytest.raises(SignatureError):
        authority.add_revocation(forged)
    assert authority.add_revocation(good)


def test_revocation_waits_for_the_revoked_keys_delegation() -> None:
    fleet = make_fleet()
    bare = Authority(fleet.anchors)
    revocation = issue_revocation(
        fleet["region-a"].key,
        fleet_id=FLEET_ID,
        revoked=fleet["edge-a1"].public,
        cut={"global/region-a/edge-a1": 1},
        hlc=AT,
    )
    with pytest.raises(UnknownDelegationError) as caught:
        bare.add_revocation(revocation)
    assert caught.value.missing == fleet["edge-a1"].key_id
    assert caught.value.reason == "revoked-unknown"
    for link in fleet["edge-a1"].chain:
        bare.add_delegation(link)
    assert bare.add_revocation(revocation)


def test_key_rotation() -> None:
    fleet = make_fleet()
    authority = fleet.authority()
    old = fleet["region-a"]
    new_key = fleet.key("region-a-2025")
    children = [fleet["edge-a1"].delegation, fleet["edge-a2"].delegation]
    delegation, revocation = rotate_key(
        fleet.root, old.delegation, new_key.public, cut={old.scope: 7}, hlc=AT, kept=children
    )
    assert delegation.subject == new_key.public
    assert delegation.scope == old.scope
    assert delegation.capabilities == old.delegation.capabilities
    assert delegation.serial == old.delegation.serial + 1
    assert revocation.revoked == old.key_id
    authority.add_delegation(delegation)
    authority.add_revocation(revocation)
    # The old key: its writes up to the cut still count, later ones never.
    old_grant = authority.grant_for(old.key_id, old.digest, at=AT)
    assert not authority.is_cut(old_grant, old.scope, 7)
    assert authority.is_cut(old_grant, old.scope, 8)
    # The new key writes freely.
    new_grant = authority.grant_for(new_key.key_id, delegation.digest, at=AT)
    assert not authority.is_cut(new_grant, old.scope, 1)
    # The old key's children were kept: they keep working.
    for name in ("edge-a1", "edge-a2"):
        grant = authority.grant_for(fleet[name].key_id, fleet[name].digest, at=AT)
        assert not authority.is_cut(grant, fleet[name].scope, 1000)
    # Whoever stole the old key can still sign delegations, but none of them counts.
    stolen = fleet.delegate(
        "minted",
        parent="region-a",
        scope="global/region-a/edge-a1",
        capabilities=EDGE_CAPABILITIES,
        tier=Tier.LOCAL,
        autonomy=Autonomy.CONDITIONAL,
    )
    authority.add_delegation(stolen.delegation)
    minted = authority.grant_for(stolen.key_id, stolen.digest, at=Timestamp(1_600_000_000_000))
    assert authority.is_cut(minted, stolen.scope, 1)
    # The new key's own subtree: re-issued children are independent of the old key.
    fleet.members["region-a"] = attrs.evolve(old, key=new_key, chain=(delegation,))
    reissued = fleet.delegate(
        "edge-a1",
        parent="region-a",
        scope="global/region-a/edge-a1",
        capabilities=EDGE_CAPABILITIES,
        tier=Tier.LOCAL,
        autonomy=Autonomy.CONDITIONAL,
    )
    authority.add_delegation(reissued.delegation)
    grant = authority.grant_for(reissued.key_id, reissued.digest, at=AT)
    assert not authority.is_cut(grant, reissued.scope, 1)


def test_rotating_a_root_issued_key_needs_the_quorum() -> None:
    fleet = make_fleet(roots=3, quorum=2)
    authority = fleet.authority()
    old = fleet["region-b"]
    delegation, revocation = rotate_key(
        fleet.quorum_keys, old.delegation, fleet.key("nb").public, cut={}, hlc=AT
    )
    verify_chain(fleet.anchors, [delegation], at=AT)
    assert authority.add_revocation(revocation)
    _, weak = rotate_key(fleet.root_keys[0], old.delegation, fleet.key("nb").public, cut={}, hlc=AT)
    with pytest.raises(QuorumError):
        authority.add_revocation(weak)


# ----- order independence: the verdicts are a function of the set of objects, not the order


def _scenario() -> tuple[Fleet, list[object]]:
    fleet = make_fleet()
    stolen = fleet.delegate(
        "minted",
        parent="region-a",
        scope="global/region-a/edge-a2",
        capabilities=EDGE_CAPABILITIES,
        tier=Tier.LOCAL,
        autonomy=Autonomy.CONDITIONAL,
    )
    objects: list[object] = [link for member in fleet for link in member.chain]
    objects += [
        issue_revocation(
            fleet.root,
            fleet_id=FLEET_ID,
            revoked=fleet["region-a"].public,
            cut={"global/region-a": 3},
            hlc=AT,
            kept=[fleet["edge-a1"].delegation],
        ),
        issue_revocation(
            fleet["region-a"].key,
            fleet_id=FLEET_ID,
            revoked=fleet["edge-a1"].public,
            cut={"global/region-a/edge-a1": 2},
            hlc=AT,
        ),
        issue_revocation(
            fleet["region-b"].key,
            fleet_id=FLEET_ID,
            revoked=fleet["edge-b1"].public,
            cut={"global/region-b/edge-b1": 9},
            hlc=AT,
        ),
    ]
    assert stolen.name == "minted"
    return fleet, objects


_FLEET, _OBJECTS = _scenario()


def _verdicts(order: list[int]) -> dict[tuple[str, int], object]:
    authority = Authority(_FLEET.anchors)
    pending = [_OBJECTS[index] for index in order]
    # Retry what waits, like the pending area does, until nothing moves.
    progress = True
    while pending and progress:
        progress = False
        for item in list(pending):
            try:
                if isinstance(item, Delegation):
                    authority.add_delegation(item)
                else:
                    assert isinstance(item, Revocation)
                    authority.add_revocation(item)
            except UnknownDelegationError:
                continue
            pending.remove(item)
            progress = True
    assert not pending
    verdicts: dict[tuple[str, int], object] = {}
    for member in _FLEET:
        grant = authority.grant_for(member.key_id, member.digest, at=AT)
        for seq in (1, 2, 3, 4, 10):
            verdicts[member.name, seq] = authority.is_cut(grant, member.scope, seq)
    return verdicts


@settings(max_examples=30)
@given(st.permutations(range(len(_OBJECTS))))
def test_revocation_verdicts_do_not_depend_on_arrival_order(order: list[int]) -> None:
    assert _verdicts(order) == _verdicts(list(range(len(_OBJECTS))))


def test_expected_scenario_verdicts() -> None:
    verdicts = _verdicts(list(range(len(_OBJECTS))))
    assert verdicts["region-a", 3] is False
    assert verdicts["region-a", 4] is True
    assert verdicts["edge-a1", 2] is False  # kept by the root, cut at 2 by region-a
    assert verdicts["edge-a1", 3] is True
    assert verdicts["edge-a2", 1] is True  # not kept
    assert verdicts["minted", 1] is True
    assert verdicts["edge-b1", 4] is False
    assert verdicts["edge-b1", 10] is True
    assert verdicts["global", 10] is False


# --------------------------------------------------------------------------- fuzz


def _assert_typed(call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as exc:  # every escape is inspected, not only Exception
        assert isinstance(exc, SouverixError), f"{type(exc).__name__}: {exc}"


_DELEGATION_BYTES = make_fleet()["edge-a1"].delegation.encode()
_REVOCATION_BYTES = issue_revocation(
    make_fleet()["region-a"].key,
    fleet_id=FLEET_ID,
    revoked=make_fleet()["edge-a1"].public,
    cut={"global/region-a/edge-a1": 4},
    hlc=AT,
).encode()


@given(st.binary(max_size=512))
def test_fuzz_decode_random_bytes(data: bytes) -> None:
    _assert_typed(lambda: Delegation.decode(data))
    _assert_typed(lambda: Revocation.decode(data))


@given(mutated_bytes(_DELEGATION_BYTES), mutated_bytes(_REVOCATION_BYTES))
def test_fuzz_decode_mutated_valid_objects(delegation: bytes, revocation: bytes) -> None:
    _assert_typed(lambda: Delegation.decode(delegation))
    _assert_typed(lambda: Revocation.decode(revocation))


def test_every_byte_of_a_delegation_matters() -> None:
    fleet = make_fleet()
    delegation = fleet["edge-a1"].delegation
    data = delegation.encode()
    for offset in range(len(data)):
        try:
            decoded = Delegation.decode(flip(data, offset))
            verify_chain(fleet.anchors, (*fleet["edge-a1"].chain[:-1], decoded), at=AT)
        except SouverixError:
            continue
        pytest.fail(f"flipping byte {offset} went unnoticed")


def test_delegations_pickle_as_plain_values() -> None:
    delegation = make_fleet()["edge-a1"].delegation
    assert pickle.loads(pickle.dumps(delegation)) == delegation
