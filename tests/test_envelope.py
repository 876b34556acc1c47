"""Envelopes: seal and open, every way a byte can be wrong, and fuzzing of open_envelope."""

from __future__ import annotations

import copy
import hashlib
import pickle
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from souverix_crdt.authority import Authority, issue_revocation
from souverix_crdt.codec import DecodeLimits
from souverix_crdt.envelope import (
    ENVELOPE_DOMAIN,
    EnvelopeHeader,
    SealedEnvelope,
    VerifiedEnvelope,
    chain_id,
    chain_writer,
    open_envelope,
    read_header,
    seal,
    signed_message,
)
from souverix_crdt.errors import (
    ExpiredError,
    ForeignFleetError,
    MalformedEnvelopeError,
    NotYetValidError,
    QuarantinedError,
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
from souverix_crdt.scope import Autonomy, Tier
from souverix_crdt.testing.fleet import (
    EDGE_CAPABILITIES,
    FLEET_ID,
    NOW,
    Fleet,
    make_fleet,
)

from .strategies import mutated_bytes, plain_values

MAX_OFFSET = 500
FLEET = make_fleet()
AUTHORITY = FLEET.authority()


def open_(data: bytes, authority: Authority = AUTHORITY, **kwargs: Any) -> VerifiedEnvelope:
    options: dict[str, Any] = {"physical_now": NOW, "max_offset": MAX_OFFSET, **kwargs}
    return open_envelope(data, authority, **options)


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def parts(sealed: SealedEnvelope) -> list[Any]:
    return msgpack.unpackb(sealed.data, raw=False)  # type: ignore[no-any-return]


def header_map(sealed: SealedEnvelope) -> dict[str, Any]:
    return msgpack.unpackb(parts(sealed)[2], raw=False)  # type: ignore[no-any-return]


def rebuild(
    sealed: SealedEnvelope,
    *,
    header: dict[str, Any] | None = None,
    index: int | None = None,
    value: Any = None,
) -> bytes:
    """Re-encode an envelope as a relay would after editing it (canonically)."""
    items = parts(sealed)
    if header is not None:
        items[2] = msgpack.packb(dict(sorted(header.items())))
    if index is not None:
        items[index] = value
    return msgpack.packb(items)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- the happy path


def test_seal_then_open() -> None:
    edge = FLEET["edge-a1"]
    sealed = edge.seal(seq=1, payload=b"update", state_vector=b"sv")
    verified = open_(sealed.data)
    assert verified.id == sealed.id == hashlib.sha256(sealed.data).digest()
    assert verified.data == sealed.data
    assert verified.header == sealed.header
    assert verified.payload == b"update"
    assert verified.header.state_vector == b"sv"
    assert verified.scope == edge.scope
    assert verified.writer == edge.key_id
    assert verified.seq == 1
    assert verified.grant.subject_key_id == edge.key_id
    assert verified.grant.allows_collection("policies")
    assert not verified.grant.allows_collection("versions")
    assert verified == open_(sealed.data)
    assert hash(verified) == hash(open_(sealed.data))
    assert "VerifiedEnvelope(" in repr(verified)


def test_sealing_is_deterministic() -> None:
    assert (
        make_fleet()["edge-a1"].seal(payload=b"x").data == FLEET["edge-a1"].seal(payload=b"x").data
    )


def test_a_chain_of_envelopes() -> None:
    writer = FLEET["edge-a1"].writer()
    first, second = writer.next(b"1"), writer.next(b"2")
    assert first.header.prev == b""
    assert second.header.prev == first.id
    assert open_(second.data).seq == 2


def test_accepts_bytearray_and_memoryview() -> None:
    sealed = FLEET["edge-a1"].seal()
    assert open_(bytearray(sealed.data)).id == sealed.id  # type: ignore[arg-type]
    assert open_(memoryview(sealed.data)).id == sealed.id  # type: ignore[arg-type]


def test_ancestors_may_write_into_descendants() -> None:
    region = FLEET["region-a"]
    open_(region.seal(scope="global/region-a/edge-a1").data)
    open_(FLEET["global"].seal(scope="global/region-b/edge-b1").data)


def test_verified_envelope_only_comes_from_open_envelope() -> None:
    sealed = FLEET["edge-a1"].seal()
    verified = open_(sealed.data)
    grant = verified.grant
    with pytest.raises(TypeError):
        VerifiedEnvelope(
            object(), id=sealed.id, data=sealed.data, header=sealed.header, payload=b"", grant=grant
        )
    with pytest.raises(AttributeError):
        verified.payload = b"evil"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        object.__setattr__(verified, "evil", 1)
    with pytest.raises(TypeError):
        pickle.dumps(verified)
    with pytest.raises(TypeError):
        copy.copy(verified)


def test_read_header_reads_without_verifying() -> None:
    sealed = FLEET["edge-a1"].seal(seq=1)
    forged = flip(sealed.data, len(sealed.data) - 1)
    assert read_header(forged) == sealed.header
    with pytest.raises(SignatureError):
        open_(forged)


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("mask", [0xFF, 0x01, 0x80])
def test_every_byte_flipped_is_rejected_with_a_typed_error(mask: int) -> None:
    sealed = FLEET["edge-a1"].seal(seq=2, prev=b"\x07" * 32, payload=b"pay", state_vector=b"sv")
    open_(sealed.data)
    for offset in range(len(sealed.data)):
        with pytest.raises(SouverixError):
            open_(flip(sealed.data, offset, mask))


def test_relay_modified_payload_is_rejected() -> None:
    sealed = FLEET["edge-a1"].seal(payload=b"original")
    with pytest.raises(SignatureError):
        open_(rebuild(sealed, index=3, value=b"0riginal"))
    with pytest.raises(SignatureError):
        open_(rebuild(sealed, index=3, value=b"original-and-more"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 2),
        ("hlc", [NOW - 1, 0]),
        ("sv", b"other"),
        ("scope", "global/region-a/edge-a1/sub"),
    ],
)
def test_relay_modified_header_is_rejected(field: str, value: Any) -> None:
    sealed = FLEET["edge-a1"].seal(seq=1)
    header = {**header_map(sealed), field: value}
    if field == "seq":
        header["prev"] = b"\x01" * 32
    with pytest.raises(SignatureError):
        open_(rebuild(sealed, header=header))


def test_tampered_algorithm_or_version_is_rejected() -> None:
    sealed = FLEET["edge-a1"].seal()
    for algorithm in ("ed448", "Ed25519", "ed25519 ", "none", ""):
        with pytest.raises(UnsupportedVersionError):
            open_(rebuild(sealed, index=1, value=algorithm))
    with pytest.raises(MalformedEnvelopeError):
        open_(rebuild(sealed, index=1, value=25519))
    with pytest.raises(UnsupportedVersionError):
        open_(rebuild(sealed, index=0, value=2))
    with pytest.raises(MalformedEnvelopeError):
        open_(rebuild(sealed, index=0, value=True))
    with pytest.raises(UnsupportedVersionError):
        open_(rebuild(sealed, header={**header_map(sealed), "v": 2}))


def test_non_canonical_encodings_are_rejected() -> None:
    sealed = FLEET["edge-a1"].seal(payload=b"p")
    items = parts(sealed)
    # The payload as bin32 instead of bin8: same content, different bytes, so a different id.
    respelled = (
        b"\x95"
        + msgpack.packb(items[0])
        + msgpack.packb(items[1])
        + msgpack.packb(items[2])
        + b"\xc6"
        + len(items[3]).to_bytes(4, "big")
        + items[3]
        + msgpack.packb(items[4])
    )
    with pytest.raises(MalformedEnvelopeError, match="canonical"):
        open_(respelled)
    unsorted = msgpack.packb(dict(reversed(list(header_map(sealed).items()))))
    with pytest.raises(MalformedEnvelopeError, match="canonical"):
        open_(rebuild(sealed, index=2, value=unsorted))
    with pytest.raises(MalformedEnvelopeError):
        open_(sealed.data + b"\x00")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"extra": 1}, MalformedEnvelopeError),
        ({"seq": 0}, MalformedEnvelopeError),
        ({"seq": -1}, MalformedEnvelopeError),
        ({"seq": True}, MalformedEnvelopeError),
        ({"seq": 1.0}, MalformedEnvelopeError),
        ({"prev": b"\x01" * 32}, MalformedEnvelopeError),  # seq 1 has no previous envelope
        ({"seq": 2, "prev": b"\x01" * 31}, MalformedEnvelopeError),
        ({"delegation": b"\x01" * 31}, MalformedEnvelopeError),
        ({"writer": "not-a-key-id"}, MalformedEnvelopeError),
        ({"scope": "global//x"}, MalformedEnvelopeError),
        ({"scope": "Global"}, MalformedEnvelopeError),
        ({"scope": 7}, MalformedEnvelopeError),
        ({"hlc": [1, 2, 3]}, MalformedEnvelopeError),
        ({"hlc": [1, 2**32]}, MalformedEnvelopeError),
        ({"sv": "text"}, MalformedEnvelopeError),
        ({"fleet": ""}, MalformedEnvelopeError),
    ],
)
def test_header_schema_is_strict(change: dict[str, Any], error: type[Exception]) -> None:
    sealed = FLEET["edge-a1"].seal(seq=1)
    with pytest.raises(error):
        open_(rebuild(sealed, header={**header_map(sealed), **change}))


def test_header_missing_key_is_rejected() -> None:
    sealed = FLEET["edge-a1"].seal()
    header = header_map(sealed)
    del header["sv"]
    with pytest.raises(MalformedEnvelopeError, match="missing"):
        open_(rebuild(sealed, header=header))


@pytest.mark.parametrize(
    "items",
    [
        [],
        [1, "ed25519", b"", b""],
        [1, "ed25519", b"", b"", b"", b""],
        [1, "ed25519", "header", b"", b"\x00" * 64],
        [1, "ed25519", b"\x80", b"", b"\x00" * 63],
        [1, "ed25519", b"\x80", None, b"\x00" * 64],
        {"v": 1},
        7,
    ],
)
def test_outer_shape_is_strict(items: Any) -> None:
    with pytest.raises(MalformedEnvelopeError):
        open_(msgpack.packb(items))


def test_size_limit_comes_first() -> None:
    sealed = FLEET["edge-a1"].seal(payload=b"x" * 1000)
    with pytest.raises(TooLargeError):
        open_(sealed.data, limits=DecodeLimits(max_size=len(sealed.data) - 1))
    with pytest.raises(TooLargeError):
        open_(b"\xff" * 2048, limits=DecodeLimits(max_size=1024))
    with pytest.raises(MalformedEnvelopeError):
        open_(sealed.data, limits=DecodeLimits(max_bin_len=100))
    with pytest.raises(MalformedEnvelopeError):
        open_("text")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- cross-protocol


def test_delegation_and_revocation_bytes_are_not_envelopes() -> None:
    delegation = FLEET["edge-a1"].delegation
    revocation = issue_revocation(
        FLEET["region-a"].key,
        fleet_id=FLEET_ID,
        revoked=FLEET["edge-a1"].public,
        cut={},
        hlc=Timestamp(NOW),
    )
    for data in (
        delegation.encode(),
        delegation.signed_bytes,
        revocation.encode(),
        revocation.signed_bytes,
    ):
        with pytest.raises(MalformedEnvelopeError):
            open_(data)


def test_a_delegation_signature_never_verifies_as_an_envelope() -> None:
    # region-a signed edge-a1's delegation; reuse that signature on an envelope of region-a
    # whose header and payload are chosen to look like the delegation's body.
    region = FLEET["region-a"]
    delegation = FLEET["edge-a1"].delegation
    _, signature = delegation.signatures[0]
    sealed = region.seal()
    body = delegation.signed_bytes
    for header, payload in ((parts(sealed)[2], body), (parts(sealed)[2], body[26:])):
        forged = msgpack.packb([1, "ed25519", header, payload, signature])
        with pytest.raises(SignatureError):
            open_(forged)
    # And an envelope's signature never verifies a delegation.
    envelope_signature = parts(sealed)[4]
    with pytest.raises(SignatureError):
        region.public.verify(envelope_signature, delegation.signed_bytes)
    assert signed_message("ed25519", FLEET_ID, b"", b"").startswith(ENVELOPE_DOMAIN)


# --------------------------------------------------------------------------- fleets and keys


def test_envelope_from_another_fleet_is_rejected() -> None:
    other = make_fleet("other-fleet", seed=b"another fleet\x00")
    with pytest.raises(ForeignFleetError) as caught:
        open_(other["edge-a1"].seal().data)
    assert caught.value.fleet_id == "other-fleet"
    assert not isinstance(caught.value, UntrustedKeyError)  # never parked as pending
    # Our own keys, signing for another fleet id: still foreign.
    with pytest.raises(ForeignFleetError):
        open_(FLEET["edge-a1"].seal(fleet_id="other-fleet").data)


def test_header_fleet_edited_to_ours_does_not_verify() -> None:
    # The signature binds the fleet id: relabelling another fleet's envelope fails.
    sealed = FLEET["edge-a1"].seal(fleet_id="other-fleet")
    header = {**header_map(sealed), "fleet": FLEET_ID}
    with pytest.raises(SignatureError):
        open_(rebuild(sealed, header=header))


def test_unknown_delegation_waits_as_pending() -> None:
    edge = FLEET["edge-a1"]
    authority = FLEET.authority(members=["global"])
    sealed = edge.seal()
    with pytest.raises(UnknownDelegationError) as caught:
        open_(sealed.data, authority)
    assert caught.value.missing == edge.digest
    # The leaf without its parent is parked: it counts for nothing, so the envelope still waits.
    with pytest.raises(UnknownDelegationError) as parked:
        authority.add_delegation(edge.delegation)
    assert parked.value.missing == FLEET["region-a"].digest
    with pytest.raises(UnknownDelegationError) as caught:
        open_(sealed.data, authority)
    assert caught.value.missing == edge.digest
    authority.add_delegation(FLEET["region-a"].delegation)
    open_(sealed.data, authority)


def test_envelope_naming_another_writers_delegation_is_rejected() -> None:
    sealed = FLEET["edge-a1"].seal(delegation_digest=FLEET["edge-a2"].digest)
    with pytest.raises(UntrustedKeyError) as caught:
        open_(sealed.data)
    assert caught.value.reason == "writer-mismatch"


def test_envelope_signed_by_a_self_made_root_is_rejected() -> None:
    rogue_fleet = Fleet(FLEET_ID, seed=b"rogue\x00")
    rogue = rogue_fleet.delegate(
        "rogue",
        parent=None,
        scope="global",
        capabilities=EDGE_CAPABILITIES,
        tier=Tier.GLOBAL,
        autonomy=Autonomy.FULL,
    )
    authority = FLEET.authority()
    # Its signatures are fine, just not by our root: refused at the door, never recorded.
    with pytest.raises(UntrustedKeyError) as caught:
        authority.add_delegation(rogue.delegation)
    assert caught.value.reason == "not-a-root"
    assert authority.delegation(rogue.digest) is None
    with pytest.raises(UnknownDelegationError):
        open_(rogue.seal().data, authority)


# --------------------------------------------------------------------------- scope and time


@pytest.mark.parametrize(
    "scope", ["global", "global/region-a", "global/region-a/edge-a2", "global/region-b/edge-b1"]
)
def test_edge_key_writing_outside_its_zone_is_rejected(scope: str) -> None:
    with pytest.raises(ScopeViolationError) as caught:
        open_(FLEET["edge-a1"].seal(scope=scope).data)
    assert caught.value.scope == scope
    assert caught.value.writer == FLEET["edge-a1"].key_id


def test_far_future_envelope_is_quarantined() -> None:
    edge = FLEET["edge-a1"]
    at_bound = edge.seal(hlc=Timestamp(NOW + MAX_OFFSET, 99))
    open_(at_bound.data)
    sealed = edge.seal(hlc=Timestamp(NOW + MAX_OFFSET + 1))
    with pytest.raises(QuarantinedError) as caught:
        open_(sealed.data)
    assert caught.value.header == sealed.header
    assert caught.value.envelope_id == sealed.id
    assert caught.value.writer == edge.key_id
    # Only a verified signature earns a quarantine count: a forgery is a SignatureError.
    with pytest.raises(SignatureError):
        open_(flip(sealed.data, len(sealed.data) - 1))
    # Arbitrarily old envelopes are fine (air-gapped bundles).
    open_(edge.seal(hlc=Timestamp(1_600_000_000_000)).data)


def test_validity_is_judged_at_the_envelope_hlc() -> None:
    fleet = Fleet()
    short = fleet.delegate(
        "short",
        parent=None,
        scope="global/region-a",
        capabilities=EDGE_CAPABILITIES,
        tier=Tier.REGIONAL,
        autonomy=Autonomy.FULL,
        not_before=Timestamp(NOW - 1000),
        not_after=Timestamp(NOW - 10),
    )
    authority = fleet.authority()
    open_(short.seal(hlc=Timestamp(NOW - 500)).data, authority)
    with pytest.raises(ExpiredError):
        open_(short.seal(hlc=Timestamp(NOW - 10)).data, authority)
    with pytest.raises(NotYetValidError):
        open_(short.seal(hlc=Timestamp(NOW - 1001)).data, authority)


def test_revoked_key_counts_up_to_the_cut_whatever_its_hlc() -> None:
    authority = FLEET.authority()
    edge = FLEET["edge-a1"]
    authority.add_revocation(
        issue_revocation(
            FLEET["region-a"].key,
            fleet_id=FLEET_ID,
            revoked=edge.public,
            cut={edge.scope: 3},
            hlc=Timestamp(NOW),
        )
    )
    old = Timestamp(1_600_000_000_000)  # long before the revocation: backdating does not help
    open_(edge.seal(seq=3, prev=b"\x01" * 32, hlc=old).data, authority)
    with pytest.raises(RevokedError):
        open_(edge.seal(seq=4, prev=b"\x01" * 32, hlc=old).data, authority)


def test_cascaded_revocation_rejects_descendants() -> None:
    authority = FLEET.authority()
    authority.add_revocation(
        issue_revocation(
            FLEET.root,
            fleet_id=FLEET_ID,
            revoked=FLEET["region-a"].public,
            cut={"global/region-a": 1},
            hlc=Timestamp(NOW),
            kept=[FLEET["edge-a2"].delegation],
        )
    )
    with pytest.raises(RevokedError):
        open_(FLEET["edge-a1"].seal().data, authority)
    open_(FLEET["edge-a2"].seal().data, authority)
    open_(FLEET["region-a"].seal(seq=1).data, authority)
    with pytest.raises(RevokedError):
        open_(FLEET["region-a"].seal(seq=2, prev=b"\x01" * 32).data, authority)


# --------------------------------------------------------------------------- seal's own checks


def test_seal_refuses_bad_headers() -> None:
    key = FLEET["edge-a1"].key
    good: dict[str, Any] = {
        "fleet_id": FLEET_ID,
        "scope": "global/region-a/edge-a1",
        "seq": 1,
        "prev": b"",
        "hlc": Timestamp(NOW),
        "state_vector": b"",
        "delegation_digest": FLEET["edge-a1"].digest,
        "payload": b"",
    }
    seal(key, **good)
    for change in (
        {"seq": 0},
        {"seq": 2},
        {"prev": b"x"},
        {"delegation_digest": b""},
        {"payload": "text"},
        {"fleet_id": "UPPER"},
    ):
        with pytest.raises(MalformedEnvelopeError):
            seal(key, **{**good, **change})


def test_header_encoding_round_trips() -> None:
    header = FLEET["edge-a1"].seal(seq=5, prev=b"\x02" * 32).header
    assert EnvelopeHeader.decode(header.encode()) == header


# --------------------------------------------------------------------------- fuzz


def assert_only_typed_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as exc:  # every escape is inspected, not only Exception
        assert isinstance(exc, SouverixError), f"{type(exc).__name__}: {exc}"


_VALID = FLEET["edge-a1"].seal(seq=2, prev=b"\x03" * 32, payload=b"payload", state_vector=b"sv")


@given(st.binary(max_size=600))
def test_fuzz_open_envelope_random_bytes(data: bytes) -> None:
    assert_only_typed_errors(lambda: open_(data))


@given(plain_values())
def test_fuzz_open_envelope_random_msgpack(value: Any) -> None:
    assert_only_typed_errors(lambda: open_(msgpack.packb(value)))


@given(mutated_bytes(_VALID.data))
def test_fuzz_open_envelope_mutated_valid_envelopes(data: bytes) -> None:
    assert_only_typed_errors(lambda: open_(data))


@given(
    st.dictionaries(
        st.sampled_from(
            ["v", "fleet", "scope", "writer", "seq", "prev", "hlc", "sv", "delegation"]
        ),
        plain_values(max_leaves=3),
    ),
    st.booleans(),
)
def test_fuzz_open_envelope_structured_headers(changes: dict[str, Any], keep_rest: bool) -> None:
    header = {**header_map(_VALID), **changes} if keep_rest else changes
    data = rebuild(_VALID, header=header)
    assert_only_typed_errors(lambda: open_(data))


# --------------------------------------------------------------------------- epochs


def test_epoch_names_a_separate_chain_and_is_signed() -> None:
    fleet = make_fleet()
    edge = fleet["edge-a1"]
    authority = fleet.authority()
    first = open_envelope(
        edge.seal(epoch=0).data, authority, physical_now=NOW, max_offset=MAX_OFFSET
    )
    second = open_envelope(
        edge.seal(epoch=0x1F).data, authority, physical_now=NOW, max_offset=MAX_OFFSET
    )
    assert first.header.chain == chain_id(edge.key_id, 0)
    assert second.header.chain == f"{edge.key_id}~1f"
    assert chain_writer(second.header.chain) == edge.key_id
    assert first.id != second.id


@pytest.mark.parametrize("epoch", [-1, 2**63, True, "1"])
def test_bad_epochs_are_malformed(epoch: object) -> None:
    fleet = make_fleet()
    with pytest.raises(MalformedEnvelopeError):
        fleet["edge-a1"].seal(epoch=epoch)  # type: ignore[arg-type]
