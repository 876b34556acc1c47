"""Signed delegations: one link of authority from an issuer to a subject key."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from souverix_crdt.codec import DEFAULT_LIMITS, DecodeLimits, encode, encode_canonical
from souverix_crdt.errors import (
    TooLargeError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Autonomy, Scope, Tier

from ._wire import (
    ALGORITHM,
    DELEGATION_DOMAIN,
    FORMAT_VERSION,
    MAX_DELEGATION_SIZE,
    _check_body_map,
    _check_digest,
    _check_int,
    _check_outer,
    _check_public_key,
    _check_scope,
    _check_timestamp,
    _decode_untrusted,
    _malformed,
    check_fleet_id,
)
from .capabilities import (
    Capability,
    _check_capabilities,
)
from .keys import (
    PublicKey,
    SigningKey,
    _as_keys,
    _check_signatures,
    _decode_signatures,
    _sign_all,
    _verify_signatures,
)

# --------------------------------------------------------------------------- delegations

_DELEGATION_KEYS: Final = frozenset(
    {
        "v",
        "fleet",
        "parent",
        "issuers",
        "subject",
        "scope",
        "caps",
        "tier",
        "autonomy",
        "not_before",
        "not_after",
        "serial",
    }
)
# ``name`` is optional: present only when the issuer names the plane, so delegations issued
# before planes were named keep their exact bytes (and digests).
_NAMED_DELEGATION_KEYS: Final = _DELEGATION_KEYS | {"name"}
#: Longest plane name a delegation may bind (a DNS label).
MAX_PLANE_NAME: Final = 63


def check_plane_name(name: object) -> str:
    """Return ``name`` if it is a valid plane name: a lower-case DNS label, like a scope segment.

    No path separators, no dots, no upper case: a plane name is used in file names, NATS
    subjects and certificates, and must mean the same thing in each.

    Raises:
        MalformedEnvelopeError: ``reason="name"`` if it is not.
    """
    if (
        type(name) is not str
        or not 0 < len(name) <= MAX_PLANE_NAME
        or not all(c.isascii() and (c.islower() or c.isdigit() or c == "-") for c in name)
        or name.startswith("-")
        or name.endswith("-")
    ):
        raise _malformed(f"plane name {name!r} must be a lower-case DNS label", "name")
    return name


def _delegation_body(
    *,
    fleet_id: str,
    parent: bytes,
    issuers: Sequence[str],
    subject: PublicKey,
    scope: Scope,
    capabilities: Iterable[Capability],
    tier: Tier,
    autonomy: Autonomy,
    not_before: Timestamp,
    not_after: Timestamp,
    serial: int,
    name: str,
) -> bytes:
    named = {"name": name} if name else {}
    return encode_canonical(
        {
            **named,
            "v": FORMAT_VERSION,
            "fleet": fleet_id,
            "parent": parent,
            "issuers": list(issuers),
            "subject": subject.raw,
            "scope": str(scope),
            "caps": sorted(capability.value for capability in capabilities),
            "tier": tier.value,
            "autonomy": autonomy.value,
            "not_before": not_before.to_list(),
            "not_after": not_after.to_list(),
            "serial": serial,
        }
    )


def _encode_signed(body: bytes, signatures: Sequence[tuple[PublicKey, bytes]]) -> bytes:
    return encode(
        [FORMAT_VERSION, ALGORITHM, body, [[public.raw, sig] for public, sig in signatures]]
    )


@attrs.frozen(repr=False)
class Delegation:
    """A signed grant of authority over a scope subtree to a subject key.

    Build with :func:`issue_delegation` or :meth:`decode`. Construction checks the shape only;
    signatures and the chain are checked by :meth:`verify_signatures` and :func:`verify_chain`.

    Attributes:
        fleet_id: The fleet this delegation belongs to.
        parent: Digest of the issuer's own delegation, or ``b""`` when the roots issued it.
        issuers: Sorted key ids of the signers.
        subject: The key receiving authority.
        scope: Root of the scope subtree granted.
        capabilities: What the subject may do there.
        tier: The subject's authority tier (its rank orders authority precedence).
        autonomy: How the subject's writes rank after a partition.
        not_before: Start of the validity window (inclusive).
        not_after: End of the validity window (exclusive).
        serial: Issuer-chosen number distinguishing re-issued delegations.
        signatures: ``(public key, signature)`` pairs, sorted by public key.
        name: The plane the subject key belongs to, as its issuer named it (signed), or
            ``""`` for an unnamed delegation. A peer's plane name is this, never what the
            peer says of itself.
    """

    fleet_id: str
    parent: bytes
    issuers: tuple[str, ...]
    subject: PublicKey
    scope: Scope
    capabilities: frozenset[Capability]
    tier: Tier
    autonomy: Autonomy
    not_before: Timestamp
    not_after: Timestamp
    serial: int
    signatures: tuple[tuple[PublicKey, bytes], ...]
    name: str = ""
    _body: bytes = attrs.field(init=False, repr=False, eq=False, default=b"")
    _encoded: bytes = attrs.field(init=False, repr=False, eq=False, default=b"")
    _digest: bytes = attrs.field(init=False, repr=False, eq=False, default=b"")

    def __attrs_post_init__(self) -> None:
        check_fleet_id(self.fleet_id)
        _check_digest(self.parent, what="parent", empty_ok=True)
        if not isinstance(self.subject, PublicKey):
            raise _malformed("subject must be a PublicKey", "subject")
        if not isinstance(self.scope, Scope):
            raise _malformed("scope must be a Scope", "scope")
        _check_capabilities(self.capabilities)
        if not isinstance(self.tier, Tier) or not isinstance(self.autonomy, Autonomy):
            raise _malformed("tier and autonomy must be enum members", "tier")
        if not isinstance(self.not_before, Timestamp) or not isinstance(self.not_after, Timestamp):
            raise _malformed("the validity window is two Timestamps", "window")
        if not self.not_before < self.not_after:
            raise _malformed("the validity window is empty", "window")
        _check_int(self.serial, what="serial")
        if self.name:
            check_plane_name(self.name)
        _check_signatures(self.signatures, self.issuers)
        body = _delegation_body(
            fleet_id=self.fleet_id,
            parent=self.parent,
            issuers=self.issuers,
            subject=self.subject,
            scope=self.scope,
            capabilities=self.capabilities,
            tier=self.tier,
            autonomy=self.autonomy,
            not_before=self.not_before,
            not_after=self.not_after,
            serial=self.serial,
            name=self.name,
        )
        encoded = _encode_signed(body, self.signatures)
        if len(encoded) > MAX_DELEGATION_SIZE:
            raise TooLargeError("delegation too large", reason="size")
        object.__setattr__(self, "_body", body)
        object.__setattr__(self, "_encoded", encoded)
        object.__setattr__(self, "_digest", hashlib.sha256(encoded).digest())

    @property
    def signed_bytes(self) -> bytes:
        """The exact bytes each issuer signed: the domain prefix and the canonical body."""
        return DELEGATION_DOMAIN + self._body

    @property
    def digest(self) -> bytes:
        """SHA-256 of :meth:`encode`: the delegation's name (an envelope's leaf digest)."""
        return self._digest

    @property
    def is_root_issued(self) -> bool:
        """True if the roots issued it (it has no parent)."""
        return not self.parent

    def encode(self) -> bytes:
        """The canonical wire encoding."""
        return self._encoded

    def valid_at(self, at: Timestamp) -> bool:
        """True if ``not_before <= at < not_after``."""
        return self.not_before <= at < self.not_after

    def verify_signatures(self) -> None:
        """Verify every signature over :attr:`signed_bytes` (not the chain: see verify_chain).

        Raises:
            SignatureError: if one does not verify.
        """
        _verify_signatures(self.signatures, self.signed_bytes)

    @classmethod
    def decode(
        cls, data: bytes | bytearray | memoryview, limits: DecodeLimits = DEFAULT_LIMITS
    ) -> Delegation:
        """Decode untrusted bytes (strict schema, canonical encoding); no signature check.

        Raises:
            TooLargeError: over :data:`MAX_DELEGATION_SIZE`, ``limits.max_size`` or
                :data:`MAX_SIGNERS`.
            UnsupportedVersionError: an unknown version or algorithm.
            QuorumError: one signer listed twice.
            SignatureError: the signers are not exactly the listed issuers.
            MalformedEnvelopeError: anything else that does not match the schema.
        """
        obj = _decode_untrusted(data, limits, min(limits.max_size, MAX_DELEGATION_SIZE))
        _check_outer(obj, length=4)
        body_bytes, raw_signatures = obj[2], obj[3]
        if type(body_bytes) is not bytes:
            raise _malformed("body must be bytes", "body")
        raw_body = _decode_untrusted(body_bytes, limits, MAX_DELEGATION_SIZE)
        named = type(raw_body) is dict and "name" in raw_body
        body = _check_body_map(raw_body, _NAMED_DELEGATION_KEYS if named else _DELEGATION_KEYS)
        issuers = body["issuers"]
        if type(issuers) is not list:
            raise _malformed("issuers must be an array", "issuers")
        caps = body["caps"]
        if type(caps) is not list or not all(type(cap) is str for cap in caps):
            raise _malformed("caps must be an array of strings", "capabilities")
        if caps != sorted(set(caps)):
            raise _malformed("caps must be sorted and distinct", "capabilities")
        try:
            capabilities = frozenset(Capability(cap) for cap in caps)
            tier = Tier(body["tier"])
            autonomy = Autonomy(body["autonomy"])
        except ValueError as exc:
            raise _malformed(f"unknown capability, tier or autonomy: {exc}", "enum") from exc
        subject = body["subject"]
        delegation = cls(
            fleet_id=check_fleet_id(body["fleet"]),
            parent=_check_digest(body["parent"], what="parent", empty_ok=True),
            issuers=tuple(issuers),
            subject=PublicKey(_check_public_key(subject)),
            scope=_check_scope(body["scope"]),
            capabilities=capabilities,
            tier=tier,
            autonomy=autonomy,
            not_before=_check_timestamp(body["not_before"], what="not_before"),
            not_after=_check_timestamp(body["not_after"], what="not_after"),
            serial=_check_int(body["serial"], what="serial"),
            signatures=_decode_signatures(raw_signatures),
            name=check_plane_name(body["name"]) if named else "",
        )
        # One delegation, one encoding: otherwise a relay could re-spell it under a new digest.
        if delegation.encode() != bytes(data):
            raise _malformed("delegation is not canonically encoded", "non-canonical")
        return delegation

    def __repr__(self) -> str:
        return (
            f"Delegation(subject={self.subject.key_id!r}, scope={str(self.scope)!r}, "
            f"name={self.name!r}, "
            f"digest={self.digest.hex()[:16]!r}…)"
        )


def issue_delegation(
    issuers: SigningKey | Sequence[SigningKey],
    *,
    fleet_id: str,
    subject: PublicKey,
    scope: Scope | str,
    capabilities: Iterable[Capability],
    tier: Tier,
    autonomy: Autonomy,
    not_before: Timestamp,
    not_after: Timestamp,
    parent: Delegation | bytes | None = None,
    serial: int = 0,
    name: str = "",
) -> Delegation:
    """Sign a delegation. Nothing is checked against a chain here (see :func:`verify_chain`).

    Args:
        issuers: The issuing key, or the root keys co-signing a root-issued delegation.
        fleet_id: The fleet id.
        subject: The key receiving authority.
        scope: The scope subtree granted.
        capabilities: What the subject may do.
        tier: The subject's authority tier.
        autonomy: How the subject's writes rank after a partition.
        not_before: Start of the validity window (inclusive).
        not_after: End of the validity window (exclusive).
        parent: The issuer's own delegation (or its digest); ``None`` when the roots issue it.
        serial: A number distinguishing re-issued delegations.
        name: The subject's plane name (a lower-case DNS label), signed into the delegation.

    Raises:
        QuorumError: if one key is given twice.
        MalformedEnvelopeError: if a field is invalid (an empty window, a bad fleet id...).
    """
    keys = _as_keys(issuers)
    parent_digest = parent.digest if isinstance(parent, Delegation) else (parent or b"")
    issuer_ids = tuple(sorted(key.key_id for key in keys))
    resolved_scope = _check_scope(scope) if isinstance(scope, str) else scope
    caps = frozenset(capabilities)
    # Shape errors surface here, before signing, with the constructor's own checks.
    check_fleet_id(fleet_id)
    _check_capabilities(caps)
    if name:
        check_plane_name(name)
    body = _delegation_body(
        fleet_id=fleet_id,
        parent=parent_digest,
        issuers=issuer_ids,
        subject=subject,
        scope=resolved_scope,
        capabilities=caps,
        tier=tier,
        autonomy=autonomy,
        not_before=not_before,
        not_after=not_after,
        serial=serial,
        name=name,
    )
    return Delegation(
        fleet_id=fleet_id,
        parent=parent_digest,
        issuers=issuer_ids,
        subject=subject,
        scope=resolved_scope,
        capabilities=caps,
        tier=tier,
        autonomy=autonomy,
        not_before=not_before,
        not_after=not_after,
        serial=serial,
        signatures=_sign_all(keys, DELEGATION_DOMAIN + body),
        name=name,
    )
