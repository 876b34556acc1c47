"""Write the signed-object test vectors: ``python tests/vectors/generate.py``.

Deterministic: fixed key seeds, fixed timestamps and Ed25519's deterministic signatures give
byte-identical files on every run (``tests/test_vectors.py`` checks that they are up to date).
Each file holds the context a verifier needs (fleet id, root keys, quorum, known delegations and
revocations, the time) and a list of vectors: hex bytes and the expected outcome, ``"ok"`` or the
exact name of the error class raised.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgpack

from souverix_crdt.authority import (
    Capability,
    Delegation,
    issue_delegation,
    issue_revocation,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Autonomy, Tier
from souverix_crdt.testing.fleet import (
    ALL_CAPABILITIES,
    EDGE_CAPABILITIES,
    NOT_AFTER,
    NOT_BEFORE,
    NOW,
    Fleet,
    make_fleet,
)

FLEET_ID = "souverix-vectors"
SEED = b"souverix-crdt/vectors/v1\x00"
FOREIGN_SEED = b"souverix-crdt/vectors/foreign/v1\x00"
MAX_OFFSET = 500
HERE = Path(__file__).parent


def _hex(data: bytes) -> str:
    return data.hex()


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


def _edit(data: bytes, index: int, value: Any) -> bytes:
    items = msgpack.unpackb(data, raw=False)
    items[index] = value
    return msgpack.packb(items)  # type: ignore[no-any-return]


def _edit_body(data: bytes, **changes: Any) -> bytes:
    items = msgpack.unpackb(data, raw=False)
    body = {**msgpack.unpackb(items[2], raw=False), **changes}
    items[2] = msgpack.packb(dict(sorted(body.items())))
    return msgpack.packb(items)  # type: ignore[no-any-return]


def _fleet() -> Fleet:
    fleet = make_fleet(FLEET_ID, roots=3, quorum=2, seed=SEED)
    fleet.delegate(
        "short",
        parent="region-b",
        scope="global/region-b/short",
        capabilities=EDGE_CAPABILITIES,
        tier=Tier.LOCAL,
        autonomy=Autonomy.FULL,
        not_before=Timestamp(NOW - 100_000),
        not_after=Timestamp(NOW - 50_000),
    )
    return fleet


def _context(fleet: Fleet) -> dict[str, Any]:
    return {
        "fleet_id": fleet.fleet_id,
        "roots": sorted(_hex(key.public.raw) for key in fleet.root_keys),
        "quorum": fleet.anchors.quorum,
    }


# --------------------------------------------------------------------------- delegations


def delegation_vectors() -> dict[str, Any]:
    """Chains to verify at a fixed time; the last link of each is the one under test."""
    fleet = _fleet()
    at = [NOW, 0]
    vectors: list[dict[str, Any]] = []

    def add(name: str, chain: list[bytes], expected: str, when: list[int] = at) -> None:
        vectors.append(
            {
                "name": name,
                "chain": [_hex(link) for link in chain],
                "at": when,
                "expected": expected,
            }
        )

    def chain_of(member: str) -> list[bytes]:
        return [link.encode() for link in fleet[member].chain]

    for member in ("global", "region-a", "edge-a1", "edge-b1", "edge-c"):
        add(f"valid chain of {member}", chain_of(member), "ok")
    add("valid at not_before (inclusive)", chain_of("short"), "ok", [NOW - 100_000, 0])
    add("expired at not_after (exclusive)", chain_of("short"), "ExpiredError", [NOW - 50_000, 0])
    add("not yet valid", chain_of("short"), "NotYetValidError", [NOW - 100_001, 0])
    add("expired", chain_of("short"), "ExpiredError")

    region_a = fleet["region-a"]

    def child(
        *,
        issuer: Any = None,
        scope: str = "global/region-a/edge-a9",
        capabilities: Any = EDGE_CAPABILITIES,
        tier: Tier = Tier.LOCAL,
        autonomy: Autonomy = Autonomy.CONDITIONAL,
        not_before: Timestamp = NOT_BEFORE,
        not_after: Timestamp = NOT_AFTER,
        parent: Delegation | None = region_a.delegation,
        fleet_id: str = FLEET_ID,
    ) -> bytes:
        return issue_delegation(
            region_a.key if issuer is None else issuer,
            fleet_id=fleet_id,
            subject=fleet.key("edge-a9").public,
            scope=scope,
            capabilities=capabilities,
            tier=tier,
            autonomy=autonomy,
            not_before=not_before,
            not_after=not_after,
            parent=parent,
        ).encode()

    base = chain_of("region-a")
    add("valid child", [*base, child()], "ok")
    add(
        "issuer without delegate",
        [
            *chain_of("edge-a1"),
            child(
                issuer=fleet["edge-a1"].key,
                parent=fleet["edge-a1"].delegation,
                scope="global/region-a/edge-a1",
            ),
        ],
        "CapabilityViolationError",
    )
    narrowed = issue_delegation(
        fleet.quorum_keys,
        fleet_id=FLEET_ID,
        subject=fleet.key("narrow").public,
        scope="global/region-a",
        capabilities={Capability.MODIFY_POLICIES, Capability.DELEGATE},
        tier=Tier.REGIONAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
    )
    amplified = issue_delegation(
        fleet.key("narrow"),
        fleet_id=FLEET_ID,
        subject=fleet.key("amplified").public,
        scope="global/region-a/x",
        capabilities={Capability.MODIFY_POLICIES, Capability.DEPLOY_VERSIONS},
        tier=Tier.LOCAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        parent=narrowed,
    )
    add("capability amplified", [narrowed.encode(), amplified.encode()], "CapabilityViolationError")
    add("tier amplified", [*base, child(tier=Tier.GLOBAL)], "CapabilityViolationError")
    add(
        "scope widened to a sibling", [*base, child(scope="global/region-b")], "ScopeViolationError"
    )
    add("scope widened to global", [*base, child(scope="global")], "ScopeViolationError")
    add(
        "window widened (end)",
        [*base, child(not_after=Timestamp(NOT_AFTER.wall + 1))],
        "ExpiredError",
    )
    add(
        "window widened (start)",
        [*base, child(not_before=Timestamp(NOT_BEFORE.wall - 1))],
        "NotYetValidError",
    )
    add("signed by a sibling", [*base, child(issuer=fleet["region-b"].key)], "UntrustedKeyError")
    rogue = fleet.key("rogue-root")
    self_signed = issue_delegation(
        rogue,
        fleet_id=FLEET_ID,
        subject=rogue.public,
        scope="global",
        capabilities=ALL_CAPABILITIES,
        tier=Tier.GLOBAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
    )
    add("self-signed root", [self_signed.encode()], "UntrustedKeyError")
    one_root = issue_delegation(
        fleet.root_keys[0],
        fleet_id=FLEET_ID,
        subject=fleet.key("one-root").public,
        scope="global/region-a",
        capabilities=ALL_CAPABILITIES,
        tier=Tier.REGIONAL,
        autonomy=Autonomy.FULL,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
    )
    add("one root of a 2-of-3 quorum", [one_root.encode()], "QuorumError")
    region_bytes = region_a.delegation.encode()
    signatures = msgpack.unpackb(region_bytes, raw=False)[3]
    add(
        "duplicated root signature",
        [_edit(region_bytes, 3, [signatures[0], signatures[0]])],
        "QuorumError",
    )
    add("root signature dropped", [_edit(region_bytes, 3, signatures[:1])], "SignatureError")
    add(
        "signature byte flipped",
        [_edit(region_bytes, 3, [[signatures[0][0], _flip(signatures[0][1], 0)], signatures[1]])],
        "SignatureError",
    )
    add("algorithm tampered", [_edit(region_bytes, 1, "ed448")], "UnsupportedVersionError")
    add("version tampered", [_edit(region_bytes, 0, 2)], "UnsupportedVersionError")
    add("extra body key", [_edit_body(region_bytes, extra=1)], "MalformedEnvelopeError")
    add("trailing byte", [region_bytes + b"\x00"], "MalformedEnvelopeError")
    add("truncated", [region_bytes[:-1]], "MalformedEnvelopeError")
    add("not canonical", [b"\xdd\x00\x00\x00\x04" + region_bytes[1:]], "MalformedEnvelopeError")
    foreign = make_fleet("souverix-foreign", seed=FOREIGN_SEED)
    add(
        "another fleet",
        [link.encode() for link in foreign["region-a"].chain],
        "ForeignFleetError",
    )
    add("chain without its root link", chain_of("edge-a1")[1:], "UnknownDelegationError")
    return {"context": _context(fleet), "vectors": vectors}


# --------------------------------------------------------------------------- revocations


def revocation_vectors() -> dict[str, Any]:
    """Revocations to add to an authority that knows every delegation of the fleet."""
    fleet = _fleet()
    at = Timestamp(NOW)
    vectors: list[dict[str, Any]] = []

    def add(name: str, data: bytes, expected: str) -> None:
        vectors.append({"name": name, "revocation": _hex(data), "expected": expected})

    edge = fleet["edge-a1"]
    by_region = issue_revocation(
        fleet["region-a"].key, fleet_id=FLEET_ID, revoked=edge.public, cut={edge.scope: 4}, hlc=at
    )
    add("by the parent", by_region.encode(), "ok")
    by_roots = issue_revocation(
        fleet.quorum_keys,
        fleet_id=FLEET_ID,
        revoked=fleet["region-b"].public,
        cut={"global/region-b": 10},
        hlc=at,
        kept=[fleet["edge-b1"].delegation],
    )
    add("by a root quorum, keeping a child", by_roots.encode(), "ok")
    add(
        "by one root of two needed",
        issue_revocation(
            fleet.root_keys[0], fleet_id=FLEET_ID, revoked=edge.public, cut={}, hlc=at
        ).encode(),
        "QuorumError",
    )
    add(
        "by a sibling zone (not an ancestor in the revoked key's chain)",
        issue_revocation(
            fleet["edge-a2"].key, fleet_id=FLEET_ID, revoked=edge.public, cut={}, hlc=at
        ).encode(),
        "UntrustedKeyError",
    )
    add(
        "by a sibling region (holds delegate, but not above the revoked key)",
        issue_revocation(
            fleet["region-b"].key, fleet_id=FLEET_ID, revoked=edge.public, cut={}, hlc=at
        ).encode(),
        "UntrustedKeyError",
    )
    add(
        "of a key whose delegation is not known yet (waits)",
        issue_revocation(
            fleet["region-a"].key,
            fleet_id=FLEET_ID,
            revoked=fleet.key("stranger").public,
            cut={},
            hlc=at,
        ).encode(),
        "UnknownDelegationError",
    )
    add(
        "of a root key",
        issue_revocation(
            fleet.quorum_keys, fleet_id=FLEET_ID, revoked=fleet.root_keys[2].public, cut={}, hlc=at
        ).encode(),
        "UntrustedKeyError",
    )
    data = by_region.encode()
    signatures = msgpack.unpackb(data, raw=False)[3]
    add(
        "signature byte flipped",
        _edit(data, 3, [[signatures[0][0], _flip(signatures[0][1], 63)]]),
        "SignatureError",
    )
    add("cut edited", _edit_body(data, cut={str(edge.scope): 400}), "SignatureError")
    add("cut not canonical", _edit_body(data, cut={"global/Region-a": 1}), "MalformedEnvelopeError")
    add("algorithm tampered", _edit(data, 1, "rsa"), "UnsupportedVersionError")
    foreign = make_fleet("souverix-foreign", seed=FOREIGN_SEED)
    add(
        "another fleet",
        issue_revocation(
            foreign.root, fleet_id="souverix-foreign", revoked=edge.public, cut={}, hlc=at
        ).encode(),
        "ForeignFleetError",
    )
    return {
        "context": {
            **_context(fleet),
            "delegations": sorted(_hex(d.encode()) for m in fleet for d in m.chain),
        },
        "vectors": vectors,
    }


# --------------------------------------------------------------------------- envelopes


def envelope_vectors() -> dict[str, Any]:
    """Envelopes to open against an authority holding the context's delegations and revocation."""
    fleet = _fleet()
    vectors: list[dict[str, Any]] = []
    edge, sibling = fleet["edge-a1"], fleet["edge-a2"]
    revocation = issue_revocation(
        fleet["region-a"].key,
        fleet_id=FLEET_ID,
        revoked=sibling.public,
        cut={sibling.scope: 2},
        hlc=Timestamp(NOW),
    )

    def add(name: str, data: bytes, expected: str) -> None:
        vector: dict[str, Any] = {"name": name, "envelope": _hex(data), "expected": expected}
        vectors.append(vector)

    ok = edge.seal(seq=1, payload=b"\x01\x02update", state_vector=b"\x01\x00")
    add("edge writes its own zone", ok.data, "ok")
    add("region writes into its edge", fleet["region-a"].seal(scope=edge.scope).data, "ok")
    add("global writes anywhere", fleet["global"].seal(scope="global/region-b/edge-b1").data, "ok")
    add(
        "at the clock-offset bound",
        edge.seal(hlc=Timestamp(NOW + MAX_OFFSET, 7)).data,
        "ok",
    )
    add("old HLC", edge.seal(hlc=Timestamp(1_600_000_000_000)).data, "ok")
    add("far future", edge.seal(hlc=Timestamp(NOW + MAX_OFFSET + 1)).data, "QuarantinedError")
    add("edge writes global", edge.seal(scope="global").data, "ScopeViolationError")
    add("edge writes a sibling zone", edge.seal(scope=sibling.scope).data, "ScopeViolationError")
    add("signature flipped", _flip(ok.data, len(ok.data) - 1), "SignatureError")
    add("payload modified by a relay", _edit(ok.data, 3, b"\x01\x02updatE"), "SignatureError")
    header = msgpack.unpackb(msgpack.unpackb(ok.data, raw=False)[2], raw=False)
    edited = msgpack.packb(dict(sorted({**header, "sv": b"\x02\x00"}.items())))
    add("header modified by a relay", _edit(ok.data, 2, edited), "SignatureError")
    add("algorithm tampered", _edit(ok.data, 1, "ed448"), "UnsupportedVersionError")
    add("version tampered", _edit(ok.data, 0, 2), "UnsupportedVersionError")
    add("trailing byte", ok.data + b"\x00", "MalformedEnvelopeError")
    items = msgpack.unpackb(ok.data, raw=False)
    payload = items[3]
    respelled = b"".join(
        [
            b"\x95",
            msgpack.packb(items[0]),
            msgpack.packb(items[1]),
            msgpack.packb(items[2]),
            b"\xc5" + len(payload).to_bytes(2, "big") + payload,  # bin16 where bin8 suffices
            msgpack.packb(items[4]),
        ]
    )
    add("not canonical", respelled, "MalformedEnvelopeError")
    add("a delegation, not an envelope", edge.delegation.encode(), "MalformedEnvelopeError")
    add("another fleet", edge.seal(fleet_id="souverix-foreign").data, "ForeignFleetError")
    add(
        "another writer's delegation",
        edge.seal(delegation_digest=sibling.digest).data,
        "UntrustedKeyError",
    )
    stranger = fleet.delegate(
        "stranger",
        parent="region-a",
        scope="global/region-a/stranger",
        capabilities=EDGE_CAPABILITIES,
        tier=Tier.LOCAL,
        autonomy=Autonomy.CONDITIONAL,
    )
    add("unknown delegation", stranger.seal().data, "UnknownDelegationError")
    old = Timestamp(1_600_000_000_000)
    add("revoked key, at the cut", sibling.seal(seq=2, prev=b"\x05" * 32, hlc=old).data, "ok")
    add(
        "revoked key, past the cut, backdated",
        sibling.seal(seq=3, prev=b"\x05" * 32, hlc=old).data,
        "RevokedError",
    )
    add(
        "expired delegation at the envelope's HLC",
        fleet["short"].seal(hlc=Timestamp(NOW - 1)).data,
        "ExpiredError",
    )
    known = [m for m in fleet if m.name != "stranger"]
    return {
        "context": {
            **_context(fleet),
            "delegations": sorted(_hex(d.encode()) for m in known for d in m.chain),
            "revocations": [_hex(revocation.encode())],
            "physical_now": NOW,
            "max_offset": MAX_OFFSET,
        },
        "vectors": vectors,
    }


FILES = {
    "delegations.json": delegation_vectors,
    "revocations.json": revocation_vectors,
    "envelopes.json": envelope_vectors,
}


def render(build: Any) -> str:
    """The JSON text of one vector file (stable: sorted keys, one item per line)."""
    return json.dumps(build(), indent=1, sort_keys=True) + "\n"


def main() -> int:
    """Write every vector file next to this script."""
    for name, build in FILES.items():
        (HERE / name).write_text(render(build))
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
