"""Keys, delegations, revocations and chain verification (pure: no IO, no clock).

Authority in a fleet flows from a few pinned root keys (:class:`TrustAnchors`) down signed
:class:`Delegation` links to the keys that write. Everything here is a frozen value except
:class:`Authority`, the registry of what a replica knows. Time is always passed in: validity is
judged at a :class:`~souverix_crdt.hlc.Timestamp` the caller chooses (an envelope's HLC).

Keys
    Ed25519 through ``cryptography``. A :class:`PublicKey` is its 32 raw bytes, accepted only in
    canonical encoding, on the curve and not of small order, so one key has exactly one spelling.
    Its key id is derived locally, never read from a message: the hex of the first 16 bytes of
    ``SHA-256(KEY_ID_DOMAIN + raw)``.

Signed objects
    Every signed object is ``domain prefix + encode_canonical(body)``; delegations, revocations
    and envelopes use different prefixes, so one kind's signature never verifies as another's.
    On the wire a delegation or revocation is one msgpack array
    ``[version, "ed25519", body (bin), [[public key, signature], ...]]``, signatures sorted by
    public key. Decoding is strict and the encoding canonical (decode then re-encode must give the
    received bytes), so an object has one encoding and its :attr:`~Delegation.digest` (SHA-256 of
    that encoding) names it unambiguously.

Chains
    A delegation names its parent by digest (``b""`` when the roots issued it), so a leaf digest
    names exactly one chain and a writer's rights come from that chain alone, never a union.
    :func:`verify_chain` checks, root first: the first link is root-issued and signed by a quorum
    of *distinct* root keys; each further link is signed by exactly the parent's subject, and the
    parent holds ``delegate``; every link attenuates its parent (same fleet, scope contained
    segment by segment, capabilities a subset, tier not ranked higher, a ``conditional`` parent
    only delegates ``conditional``, validity window contained); no key appears twice; the chain
    is at most ``max_depth`` links.

Validity windows
    ``not_before`` is inclusive and ``not_after`` exclusive: a link is valid at ``at`` when
    ``not_before <= at < not_after``. A window must be non-empty. A child window that starts
    earlier than its parent's raises :class:`~souverix_crdt.errors.NotYetValidError`; one that
    ends later raises :class:`~souverix_crdt.errors.ExpiredError` (reason ``"window-widened"``).

Revocations and the cascade rule
    A :class:`Revocation` names a key id, a causal ``cut`` (per scope, the last sequence number of
    the revoked key that the revoker had seen; a scope it does not list has cut 0) and ``kept``,
    the digests of delegations *issued by* the revoked key that the revoker vouches for. It is
    signed either by a quorum of roots or by one key holding a known delegation with ``delegate``.
    Its effect is limited to chains in which its issuer is a strict ancestor of the revoked key
    (a root revocation reaches every chain), so a region can never revoke a sibling region's
    grant. Within such a chain, for a write ``(scope, seq)`` by the chain's leaf:

    * if the leaf is the revoked key, the write counts only when ``seq <= cut[scope]``, whatever
      HLC it claims (a revoked key cannot backdate);
    * if the revoked key is a strict ancestor of the leaf, the write counts only when the link the
      revoked key issued in this chain is in ``kept``; otherwise *none* of the chain's writes
      count. Whoever holds a revoked key can mint fresh delegations with any window and fresh
      writers with any HLC and any sequence numbers, so there is no deterministic cut for them;
      the revoker's ``kept`` list is the one signed, replicated statement of which children
      predate the compromise. This is what makes key rotation cheap: the old key's children stay
      valid when the revocation keeps them.

    The decision is a pure function of the set of revocations a replica holds, so replicas agree
    whatever order they learned them in; revocations are never removed, so it is irreversible.
    Root keys are not revoked this way: they are rotated by pinning new :class:`TrustAnchors`.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from .codec import DEFAULT_LIMITS, Limits, decode, encode, encode_canonical
from .errors import (
    CapabilityViolationError,
    DecodeError,
    ExpiredError,
    ForeignFleetError,
    InvalidScopeError,
    MalformedEnvelopeError,
    NotYetValidError,
    QuorumError,
    RevokedError,
    ScopeViolationError,
    SignatureError,
    TooLargeError,
    UnknownDelegationError,
    UnsupportedVersionError,
    UntrustedKeyError,
)
from .hlc import Timestamp
from .scope import Autonomy, Scope, Tier

__all__ = [
    "ALGORITHM",
    "COLLECTION_CAPABILITY",
    "DELEGATION_DOMAIN",
    "DIGEST_SIZE",
    "FORMAT_VERSION",
    "KEY_ID_DOMAIN",
    "MAX_CHAIN_DEPTH",
    "MAX_CUT_ENTRIES",
    "MAX_DELEGATION_SIZE",
    "MAX_KEPT",
    "MAX_REVOCATION_SIZE",
    "MAX_SERIAL",
    "MAX_SIGNERS",
    "REVOCATION_DOMAIN",
    "SIGNATURE_SIZE",
    "Authority",
    "Capability",
    "CutLike",
    "Delegation",
    "Grant",
    "PublicKey",
    "Revocation",
    "SigningKey",
    "TrustAnchors",
    "allowed_collections",
    "check_fleet_id",
    "check_key_id",
    "issue_delegation",
    "issue_revocation",
    "rotate_key",
    "verify_chain",
]

#: Version of the delegation and revocation formats.
FORMAT_VERSION: Final = 1
#: The one signature algorithm accepted.
ALGORITHM: Final = "ed25519"
#: Prefix hashed with a public key to derive its key id.
KEY_ID_DOMAIN: Final = b"souverix-crdt/key-id/v1\x00"
#: Prefix of a delegation's signed bytes.
DELEGATION_DOMAIN: Final = b"souverix-crdt/delegation/v1\x00"
#: Prefix of a revocation's signed bytes.
REVOCATION_DOMAIN: Final = b"souverix-crdt/revocation/v1\x00"
#: Size of a digest (SHA-256) in bytes.
DIGEST_SIZE: Final = 32
#: Size of an Ed25519 public key in bytes.
PUBLIC_KEY_SIZE: Final = 32
#: Size of an Ed25519 signature in bytes.
SIGNATURE_SIZE: Final = 64
#: Most signatures on one delegation or revocation (bounds the work a forged one can cause).
MAX_SIGNERS: Final = 16
#: Default bound on the number of links in a chain.
MAX_CHAIN_DEPTH: Final = 8
#: Largest encoded delegation accepted.
MAX_DELEGATION_SIZE: Final = 16 * 1024
#: Largest encoded revocation accepted.
MAX_REVOCATION_SIZE: Final = 256 * 1024
#: Most scopes in a revocation's cut.
MAX_CUT_ENTRIES: Final = 1024
#: Most kept delegations in one revocation.
MAX_KEPT: Final = 1024
#: Largest serial number and sequence number (fits a signed 64-bit integer everywhere).
MAX_SERIAL: Final = 2**63 - 1

#: What a revocation's cut may be given as: scope paths (``str`` or :class:`Scope`) to sequences.
CutLike = Mapping[str, int] | Mapping[Scope, int] | Mapping[str | Scope, int]

_KEY_ID: Final = re.compile(r"[0-9a-f]{32}", re.ASCII)
# Lower-case only, like scope segments: a fleet id has exactly one spelling.
_FLEET_ID: Final = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?", re.ASCII)

# Curve25519 field prime and the Edwards curve constant d, for the public key checks below.
_P: Final = 2**255 - 19
_D: Final = (-121665 * pow(121666, -1, _P)) % _P
# The canonical encodings of the eight points of small order (the torsion subgroup). A key among
# them verifies signatures on many messages at once; tests recompute this list from the curve.
SMALL_ORDER_ENCODINGS: Final = frozenset(
    bytes.fromhex(encoded)
    for encoded in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


# --------------------------------------------------------------------------- validation helpers


def _malformed(message: str, reason: str) -> MalformedEnvelopeError:
    return MalformedEnvelopeError(message, reason=reason)


def check_fleet_id(value: object) -> str:
    """Return ``value`` if it is a canonical fleet id, else raise.

    A fleet id is 1 to 64 lower-case ASCII letters, digits, ``.``, ``_`` or ``-``, starting and
    ending with a letter or digit.

    Raises:
        MalformedEnvelopeError: if it is not.
    """
    if type(value) is not str or _FLEET_ID.fullmatch(value) is None:
        raise _malformed(f"not a canonical fleet id: {value!r}", "fleet-id")
    return value


def check_key_id(value: object) -> str:
    """Return ``value`` if it is a key id (32 lower-case hex digits), else raise.

    Raises:
        MalformedEnvelopeError: if it is not.
    """
    if type(value) is not str or _KEY_ID.fullmatch(value) is None:
        raise _malformed(f"not a key id: {value!r}", "key-id")
    return value


def _check_digest(value: object, *, what: str, empty_ok: bool = False) -> bytes:
    if type(value) is not bytes or not (
        len(value) == DIGEST_SIZE or (empty_ok and len(value) == 0)
    ):
        raise _malformed(f"{what} must be a {DIGEST_SIZE}-byte digest", what)
    return value


def _check_int(value: object, *, what: str, low: int = 0, high: int = MAX_SERIAL) -> int:
    # bool is an int subclass; an exact type check keeps True out of counters.
    if type(value) is not int or not low <= value <= high:
        raise _malformed(f"{what} must be an integer in [{low}, {high}], got {value!r}", what)
    return value


def _check_public_key(raw: object) -> bytes:
    """Accept only the canonical encoding of a curve point outside the small-order subgroup.

    ``cryptography`` loads any 32 bytes. Without these checks one key could be spelled two ways
    (``y`` and ``y + p``), which would let it count twice towards a quorum under two key ids.
    """
    if type(raw) is not bytes or len(raw) != PUBLIC_KEY_SIZE:
        raise _malformed(f"a public key is {PUBLIC_KEY_SIZE} bytes", "public-key")
    problem = _public_key_problem(raw)
    if problem is not None:
        message, reason = problem
        raise _malformed(message, reason)
    return raw


@functools.lru_cache(maxsize=4096)
def _public_key_problem(raw: bytes) -> tuple[str, str] | None:
    # Two 255-bit modular exponentiations cost ~100 us in Python; a fleet has few keys and
    # every delegation repeats them, so the verdict (a pure function of the bytes) is cached.
    encoded = int.from_bytes(raw, "little")
    y = encoded & ((1 << 255) - 1)
    x_is_odd = encoded >> 255
    if y >= _P:
        return "public key is not canonically encoded", "public-key-encoding"
    y2 = y * y % _P
    # d is not a square mod p, so d*y^2 + 1 is never 0 and the inverse exists.
    x2 = (y2 - 1) * pow(_D * y2 + 1, -1, _P) % _P
    if x2 == 0:
        if x_is_odd:
            return "public key is not canonically encoded", "public-key-encoding"
    elif pow(x2, (_P - 1) // 2, _P) != 1:
        return "public key is not a point on the curve", "public-key-point"
    if raw in SMALL_ORDER_ENCODINGS:
        return "public key has small order", "public-key-weak"
    return None


def _check_timestamp(value: object, *, what: str) -> Timestamp:
    if type(value) is not list or len(value) != 2:
        raise _malformed(f"{what} must be [wall, logical]", what)
    try:
        return Timestamp(value[0], value[1])
    except DecodeError as exc:
        raise _malformed(f"{what}: {exc}", what) from exc


def _check_scope(value: object, *, what: str = "scope") -> Scope:
    try:
        return Scope.parse(value)
    except InvalidScopeError as exc:
        raise _malformed(f"{what}: {exc}", what) from exc


def _decode_untrusted(data: object, limits: Limits, max_size: int) -> Any:
    """Decode with the codec; oversize is ``TooLargeError``, anything else malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed(f"expected bytes, got {type(data).__name__}", "type")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_size:
        raise TooLargeError(f"{size} bytes exceeds the {max_size}-byte limit", reason="size")
    try:
        return decode(data, limits)
    except DecodeError as exc:
        if exc.reason == "size":
            raise TooLargeError(str(exc), reason="size") from exc
        raise MalformedEnvelopeError(str(exc), reason=exc.reason or "malformed") from exc


def _check_outer(obj: Any, *, length: int) -> None:
    """Check ``[version, algorithm, ...]`` of a signed object's outer array."""
    if type(obj) is not list or len(obj) != length:
        raise _malformed(f"expected an array of {length} items", "outer")
    version, algorithm = obj[0], obj[1]
    if type(version) is not int:
        raise _malformed("version must be an integer", "version")
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(f"unsupported format version {version}", reason="version")
    if type(algorithm) is not str:
        raise _malformed("algorithm must be a string", "algorithm")
    if algorithm != ALGORITHM:
        raise UnsupportedVersionError(
            f"unsupported signature algorithm {algorithm!r}", reason="algorithm"
        )


def _check_body_map(body: Any, keys: frozenset[str]) -> dict[str, Any]:
    if type(body) is not dict:
        raise _malformed("body must be a map", "body")
    if body.keys() != keys:
        extra = sorted(set(body) - keys)
        missing = sorted(keys - set(body))
        raise _malformed(f"body keys differ: extra {extra}, missing {missing}", "body-keys")
    if body["v"] != FORMAT_VERSION or type(body["v"]) is not int:
        raise _malformed("body version differs from the outer version", "version")
    return body


def _decode_signatures(value: object) -> tuple[tuple[PublicKey, bytes], ...]:
    if type(value) is not list:
        raise _malformed("signatures must be an array", "signatures")
    if len(value) > MAX_SIGNERS:
        raise TooLargeError(f"more than {MAX_SIGNERS} signatures", reason="signatures")
    result = []
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise _malformed("a signature is [public key, signature]", "signatures")
        raw, signature = item
        if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
            raise _malformed(f"a signature is {SIGNATURE_SIZE} bytes", "signatures")
        result.append((PublicKey(_check_public_key(raw)), signature))
    return tuple(result)


def _check_signatures(signatures: object, issuers: object) -> tuple[tuple[PublicKey, bytes], ...]:
    """Shape of ``signatures`` and ``issuers``; the signers must be exactly the issuers.

    Distinctness is by public key: one key twice (a copied signature) is a ``QuorumError``
    whatever the quorum, so a signature can never count twice.
    """
    if type(issuers) is not tuple or not issuers:
        raise _malformed("at least one issuer", "issuers")
    if len(issuers) > MAX_SIGNERS:
        raise TooLargeError(f"more than {MAX_SIGNERS} issuers", reason="issuers")
    for issuer in issuers:
        check_key_id(issuer)
    if len(set(issuers)) != len(issuers):
        raise QuorumError("an issuer is listed twice", reason="duplicate-signer")
    if list(issuers) != sorted(issuers):
        raise _malformed("issuers must be sorted", "issuers-order")
    if type(signatures) is not tuple or not signatures:
        raise _malformed("at least one signature", "signatures")
    if len(signatures) > MAX_SIGNERS:
        raise TooLargeError(f"more than {MAX_SIGNERS} signatures", reason="signatures")
    for pair in signatures:
        if (
            type(pair) is not tuple
            or len(pair) != 2
            or not isinstance(pair[0], PublicKey)
            or type(pair[1]) is not bytes
            or len(pair[1]) != SIGNATURE_SIZE
        ):
            raise _malformed("a signature is (PublicKey, 64 bytes)", "signatures")
    raws = [pair[0].raw for pair in signatures]
    if len(set(raws)) != len(raws):
        raise QuorumError("one key signed twice", reason="duplicate-signer")
    if raws != sorted(raws):
        raise _malformed("signatures must be sorted by public key", "signatures-order")
    signer_ids = sorted(pair[0].key_id for pair in signatures)
    if signer_ids != list(issuers):
        raise SignatureError(
            "the keys that signed are not exactly the listed issuers", reason="signers"
        )
    return signatures


def _verify_signatures(
    signatures: Sequence[tuple[PublicKey, bytes]], message: bytes, *, writer: str = ""
) -> None:
    for public, signature in signatures:
        try:
            public.verify(signature, message)
        except SignatureError as exc:
            exc.writer = exc.writer or writer or public.key_id
            raise


def _sign_all(keys: Sequence[SigningKey], message: bytes) -> tuple[tuple[PublicKey, bytes], ...]:
    ordered = sorted(keys, key=lambda key: key.public.raw)
    return tuple((key.public, key.sign(message)) for key in ordered)


def _as_keys(keys: SigningKey | Sequence[SigningKey]) -> list[SigningKey]:
    result = [keys] if isinstance(keys, SigningKey) else list(keys)
    if not result:
        raise ValueError("at least one signing key is needed")
    raws = [key.public.raw for key in result]
    if len(set(raws)) != len(raws):
        raise QuorumError("one key given twice", reason="duplicate-signer")
    return result


# --------------------------------------------------------------------------- keys


@attrs.frozen(repr=False)
class PublicKey:
    """An Ed25519 public key: 32 raw bytes, canonical, on the curve, not of small order.

    Attributes:
        raw: The 32-byte encoding.
    """

    raw: bytes

    def __attrs_post_init__(self) -> None:
        _check_public_key(self.raw)

    @property
    def key_id(self) -> str:
        """The key id, derived here from the public key bytes (never taken from a message)."""
        return hashlib.sha256(KEY_ID_DOMAIN + self.raw).digest()[:16].hex()

    def verify(self, signature: bytes, data: bytes) -> None:
        """Verify ``signature`` over ``data``; return ``None`` or raise.

        Raises:
            SignatureError: if the signature does not verify.
        """
        if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
            raise SignatureError(
                f"a signature is {SIGNATURE_SIZE} bytes", reason="signature", writer=self.key_id
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, bytes(data))
        except InvalidSignature as exc:
            raise SignatureError(
                "signature does not verify", reason="signature", writer=self.key_id
            ) from exc
        except ValueError as exc:  # cryptography refusing the key itself
            raise SignatureError(
                f"key refused by the Ed25519 backend: {exc}", reason="signature", writer=self.key_id
            ) from exc

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self.key_id!r})"


def _public_of(self: SigningKey) -> PublicKey:
    return PublicKey(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


@attrs.frozen(eq=False)
class SigningKey:
    """An Ed25519 private key. The private material never appears in ``repr``.

    Build with :meth:`generate` or :meth:`from_private_bytes`.

    Attributes:
        public: The matching public key.
    """

    _key: Ed25519PrivateKey = attrs.field(repr=False, alias="key")
    public: PublicKey = attrs.field(init=False, default=attrs.Factory(_public_of, takes_self=True))

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key (from the operating system's CSPRNG)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> SigningKey:
        """Load a key from its 32-byte seed (deterministic: tests and vectors use fixed seeds).

        Raises:
            DecodeError: if ``data`` is not 32 bytes.
        """
        if not isinstance(data, bytes | bytearray) or len(data) != 32:
            raise DecodeError("an Ed25519 private key is 32 bytes", reason="private-key")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(data)))

    def private_bytes(self) -> bytes:
        """The 32-byte seed. Handle with care: it is the whole key."""
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def key_id(self) -> str:
        """The key id of :attr:`public`."""
        return self.public.key_id

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (Ed25519 is deterministic: the same bytes give the same signature)."""
        return self._key.sign(bytes(data))


# --------------------------------------------------------------------------- capabilities


class Capability(enum.Enum):
    """What a delegation allows its subject to do."""

    MODIFY_POLICIES = "modify_policies"
    DEPLOY_VERSIONS = "deploy_versions"
    REPORT_STATUS = "report_status"
    OPERATE_ISOLATED = "operate_isolated"
    DELEGATE = "delegate"


#: Which capability a writer needs for its entries in each collection of its document to count.
COLLECTION_CAPABILITY: Final[Mapping[str, Capability]] = types.MappingProxyType(
    {
        "policies": Capability.MODIFY_POLICIES,
        "versions": Capability.DEPLOY_VERSIONS,
        "nodes": Capability.REPORT_STATUS,
        "meta": Capability.REPORT_STATUS,
    }
)


def allowed_collections(capabilities: Iterable[Capability]) -> frozenset[str]:
    """The collections whose entries count for a writer holding ``capabilities``."""
    held = frozenset(capabilities)
    return frozenset(name for name, needed in COLLECTION_CAPABILITY.items() if needed in held)


def _check_capabilities(value: object) -> frozenset[Capability]:
    if type(value) is not frozenset or not value:
        raise _malformed("capabilities must be a non-empty frozenset", "capabilities")
    if not all(isinstance(item, Capability) for item in value):
        raise _malformed("capabilities must be Capability members", "capabilities")
    return value


# --------------------------------------------------------------------------- anchors


@attrs.frozen
class TrustAnchors:
    """The pinned roots of one fleet.

    Root-level acts (a delegation issued by the roots, a root revocation) need signatures from
    ``quorum`` distinct root keys.

    Attributes:
        fleet_id: The fleet's id; every signed object names it.
        roots: The root public keys.
        quorum: How many distinct roots must sign a root-level act.
    """

    fleet_id: str
    roots: frozenset[PublicKey]
    quorum: int = 1

    def __attrs_post_init__(self) -> None:
        check_fleet_id(self.fleet_id)
        if type(self.roots) is not frozenset or not self.roots:
            raise ValueError("at least one root key, as a frozenset")
        if not all(isinstance(root, PublicKey) for root in self.roots):
            raise TypeError("roots must be PublicKey values")
        if type(self.quorum) is not int or not 1 <= self.quorum <= len(self.roots):
            raise ValueError(f"quorum must be in [1, {len(self.roots)}], got {self.quorum!r}")

    @property
    def root_ids(self) -> frozenset[str]:
        """The key ids of the roots."""
        return frozenset(root.key_id for root in self.roots)

    def is_root(self, key_id: str) -> bool:
        """True if ``key_id`` names a root key."""
        return key_id in self.root_ids

    def root(self, key_id: str) -> PublicKey | None:
        """The root key with ``key_id``, if there is one."""
        for root in self.roots:
            if root.key_id == key_id:
                return root
        return None


def _check_root_act(
    anchors: TrustAnchors,
    signatures: Sequence[tuple[PublicKey, bytes]],
    *,
    what: str,
    scope: str = "",
) -> None:
    """Signers must all be roots, and distinct roots must reach the quorum."""
    root_raws = {root.raw for root in anchors.roots}
    signers = [public for public, _ in signatures]
    for public in signers:
        if public.raw not in root_raws:
            raise UntrustedKeyError(
                f"{what} is signed by {public.key_id}, which is not a pinned root",
                reason="not-a-root",
                scope=scope,
                writer=public.key_id,
            )
    distinct = len({public.raw for public in signers})
    if distinct < anchors.quorum:
        raise QuorumError(
            f"{what} has {distinct} distinct root signature(s); {anchors.quorum} needed",
            reason="quorum",
            scope=scope,
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
) -> bytes:
    return encode_canonical(
        {
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
        cls, data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS
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
        body = _check_body_map(
            _decode_untrusted(body_bytes, limits, MAX_DELEGATION_SIZE), _DELEGATION_KEYS
        )
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
        )
        # One delegation, one encoding: otherwise a relay could re-spell it under a new digest.
        if delegation.encode() != bytes(data):
            raise _malformed("delegation is not canonically encoded", "non-canonical")
        return delegation

    def __repr__(self) -> str:
        return (
            f"Delegation(subject={self.subject.key_id!r}, scope={str(self.scope)!r}, "
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
    )


# --------------------------------------------------------------------------- chains


@attrs.frozen(repr=False)
class Grant:
    """The rights a writer holds through one verified chain, at one point in time.

    Attributes:
        subject: The writer's public key.
        scope: The scope subtree it may write.
        capabilities: What it may do there.
        tier: Its authority tier.
        autonomy: Its autonomy.
        not_before: Start of the leaf's validity window (inclusive).
        not_after: End of the leaf's validity window (exclusive).
        leaf_digest: Digest of the leaf delegation (the one envelopes name).
        chain_digests: Digests of the chain's links, root-issued link first, leaf last.
        chain_subjects: Key ids of the links' subjects, in the same order (the writer last).
    """

    subject: PublicKey
    scope: Scope
    capabilities: frozenset[Capability]
    tier: Tier
    autonomy: Autonomy
    not_before: Timestamp
    not_after: Timestamp
    leaf_digest: bytes
    chain_digests: tuple[bytes, ...]
    chain_subjects: tuple[str, ...]

    @property
    def subject_key_id(self) -> str:
        """The writer's key id."""
        return self.subject.key_id

    @property
    def rank(self) -> int:
        """The tier's rank (higher wins under authority precedence)."""
        return self.tier.rank

    def allows(self, capability: Capability) -> bool:
        """True if the grant includes ``capability``."""
        return capability in self.capabilities

    def allows_collection(self, name: str) -> bool:
        """True if the writer's entries in collection ``name`` count (unknown names: False)."""
        needed = COLLECTION_CAPABILITY.get(name)
        return needed is not None and needed in self.capabilities

    def covers(self, scope: Scope | str) -> bool:
        """True if ``scope`` lies in the granted subtree (segment by segment)."""
        return self.scope.contains(Scope.parse(scope))

    def check_scope(self, scope: Scope | str) -> None:
        """Raise unless ``scope`` lies in the granted subtree.

        Raises:
            ScopeViolationError: if it does not.
        """
        target = Scope.parse(scope)
        if not self.scope.contains(target):
            raise ScopeViolationError(
                f"key {self.subject_key_id} holds {self.scope}, not {target}",
                reason="scope",
                scope=str(target),
                writer=self.subject_key_id,
            )

    def check_capability(self, capability: Capability) -> None:
        """Raise unless the grant includes ``capability``.

        Raises:
            CapabilityViolationError: if it does not.
        """
        if capability not in self.capabilities:
            raise CapabilityViolationError(
                f"key {self.subject_key_id} lacks {capability.value}",
                reason=capability.value,
                scope=str(self.scope),
                writer=self.subject_key_id,
            )

    def __repr__(self) -> str:
        caps = ",".join(sorted(capability.value for capability in self.capabilities))
        return (
            f"Grant(subject={self.subject_key_id!r}, scope={str(self.scope)!r}, caps={caps!r}, "
            f"tier={self.tier.value!r}, autonomy={self.autonomy.value!r})"
        )


def _check_attenuation(parent: Delegation, link: Delegation) -> None:
    """Each link may only narrow its parent: scope, capabilities, tier, autonomy, window."""
    scope = str(link.scope)
    writer = link.subject.key_id
    if not parent.scope.contains(link.scope):
        raise ScopeViolationError(
            f"link for {link.scope} widens its parent's scope {parent.scope}",
            reason="scope-widened",
            scope=scope,
            writer=writer,
        )
    extra = link.capabilities - parent.capabilities
    if extra:
        names = ", ".join(sorted(capability.value for capability in extra))
        raise CapabilityViolationError(
            f"link grants {names}, which its issuer does not hold",
            reason="capability-amplified",
            scope=scope,
            writer=writer,
        )
    if link.tier.rank > parent.tier.rank:
        raise CapabilityViolationError(
            f"link raises the tier from {parent.tier.value} to {link.tier.value}",
            reason="tier-amplified",
            scope=scope,
            writer=writer,
        )
    # A conditional scope's writes yield to higher authority on reconnect; delegating full
    # autonomy below it would let its subtree escape that rule.
    if parent.autonomy is Autonomy.CONDITIONAL and link.autonomy is Autonomy.FULL:
        raise CapabilityViolationError(
            "a conditional issuer cannot delegate full autonomy",
            reason="autonomy-amplified",
            scope=scope,
            writer=writer,
        )
    if link.not_before < parent.not_before:
        raise NotYetValidError(
            f"link window starts at {link.not_before}, before its parent's {parent.not_before}",
            reason="window-widened",
            scope=scope,
            writer=writer,
        )
    if link.not_after > parent.not_after:
        raise ExpiredError(
            f"link window ends at {link.not_after}, after its parent's {parent.not_after}",
            reason="window-widened",
            scope=scope,
            writer=writer,
        )


def _check_window(link: Delegation, at: Timestamp) -> None:
    scope = str(link.scope)
    writer = link.subject.key_id
    if at < link.not_before:
        raise NotYetValidError(
            f"delegation to {writer} is valid from {link.not_before}, judged at {at}",
            reason="not-yet-valid",
            scope=scope,
            writer=writer,
        )
    if at >= link.not_after:
        raise ExpiredError(
            f"delegation to {writer} expired at {link.not_after}, judged at {at}",
            reason="expired",
            scope=scope,
            writer=writer,
        )


def _check_issued_by(parent: Delegation, link: Delegation) -> None:
    """``link`` names ``parent``, is signed by its subject alone, and ``parent`` may delegate."""
    scope = str(link.scope)
    writer = link.subject.key_id
    if link.parent != parent.digest:
        raise UntrustedKeyError(
            "link does not name the previous link as its parent",
            reason="chain-broken",
            scope=scope,
            writer=writer,
        )
    issuer = parent.subject.key_id
    if link.issuers != (issuer,):
        raise UntrustedKeyError(
            f"link must be signed by its parent's subject {issuer} alone",
            reason="issuer",
            scope=scope,
            writer=writer,
        )
    if Capability.DELEGATE not in parent.capabilities:
        raise CapabilityViolationError(
            f"issuer {issuer} does not hold delegate",
            reason="delegate",
            scope=scope,
            writer=issuer,
        )


def _verify_chain(
    anchors: TrustAnchors,
    chain: Sequence[Delegation],
    *,
    at: Timestamp,
    max_depth: int,
    check_signatures: bool,
) -> Grant:
    if not chain:
        raise _malformed("an empty chain grants nothing", "chain-empty")
    if len(chain) > max_depth:
        raise TooLargeError(f"chain longer than {max_depth} links", reason="chain-depth")
    seen_subjects = set(anchors.root_ids)
    parent: Delegation | None = None
    for link in chain:
        if not isinstance(link, Delegation):
            raise TypeError("a chain holds Delegation values")
        if link.fleet_id != anchors.fleet_id:
            raise ForeignFleetError(
                f"delegation belongs to fleet {link.fleet_id!r}, not {anchors.fleet_id!r}",
                fleet_id=link.fleet_id,
            )
        if parent is not None:
            _check_issued_by(parent, link)
            _check_attenuation(parent, link)
        elif link.is_root_issued:
            _check_root_act(
                anchors, link.signatures, what="root-issued delegation", scope=str(link.scope)
            )
        else:
            raise UnknownDelegationError(
                "chain does not start at a root-issued delegation",
                missing=link.parent,
                reason="chain-not-rooted",
                scope=str(link.scope),
                writer=link.subject.key_id,
            )
        if check_signatures:
            _verify_signatures(link.signatures, link.signed_bytes)
        if link.subject.key_id in seen_subjects:
            raise _malformed(f"key {link.subject.key_id} appears twice in one chain", "chain-cycle")
        seen_subjects.add(link.subject.key_id)
        _check_window(link, at)
        parent = link
    assert parent is not None
    return Grant(
        subject=parent.subject,
        scope=parent.scope,
        capabilities=parent.capabilities,
        tier=parent.tier,
        autonomy=parent.autonomy,
        not_before=parent.not_before,
        not_after=parent.not_after,
        leaf_digest=parent.digest,
        chain_digests=tuple(link.digest for link in chain),
        chain_subjects=tuple(link.subject.key_id for link in chain),
    )


def verify_chain(
    anchors: TrustAnchors,
    chain: Sequence[Delegation],
    *,
    at: Timestamp,
    max_depth: int = MAX_CHAIN_DEPTH,
) -> Grant:
    """Verify a delegation chain, root-issued link first, and return the leaf's rights at ``at``.

    Revocations are not consulted here (see :meth:`Authority.check_not_revoked`).

    Raises:
        UntrustedKeyError: a root-issued link signed by a key that is not a pinned root (a
            self-signed "root"), or a link not signed by its parent's subject.
        UnknownDelegationError: the first link is not root-issued (its parent is missing).
        QuorumError: fewer distinct root signatures than the quorum.
        SignatureError: a signature does not verify.
        ForeignFleetError: a link of another fleet.
        ScopeViolationError: a link widens its parent's scope.
        CapabilityViolationError: a link amplifies capabilities, tier or autonomy, or its issuer
            lacks ``delegate``.
        NotYetValidError: a link's window starts before its parent's, or after ``at``.
        ExpiredError: a link's window ends after its parent's, or at or before ``at``.
        TooLargeError: more than ``max_depth`` links.
        MalformedEnvelopeError: an empty chain, or a key appearing twice.
    """
    return _verify_chain(anchors, chain, at=at, max_depth=max_depth, check_signatures=True)


# --------------------------------------------------------------------------- revocations

_REVOCATION_KEYS: Final = frozenset({"v", "fleet", "issuers", "revoked", "cut", "kept", "hlc"})


def _freeze_cut(value: CutLike) -> Mapping[str, int]:
    if not isinstance(value, Mapping):
        raise _malformed("cut must be a mapping of scope path to sequence number", "cut")
    if len(value) > MAX_CUT_ENTRIES:
        raise TooLargeError(f"more than {MAX_CUT_ENTRIES} scopes in a cut", reason="cut")
    frozen: dict[str, int] = {}
    for key, seq in value.items():
        path = str(_check_scope(key, what="cut"))
        if path in frozen:
            raise _malformed(f"scope {path} appears twice in the cut", "cut")
        frozen[path] = _check_int(seq, what="cut")
    return types.MappingProxyType(dict(sorted(frozen.items())))


def _freeze_kept(value: Iterable[bytes]) -> frozenset[bytes]:
    kept = frozenset(value)
    if len(kept) > MAX_KEPT:
        raise TooLargeError(f"more than {MAX_KEPT} kept delegations", reason="kept")
    for digest in kept:
        _check_digest(digest, what="kept")
    return kept


def _revocation_body(
    *,
    fleet_id: str,
    issuers: Sequence[str],
    revoked: str,
    cut: Mapping[str, int],
    kept: Iterable[bytes],
    hlc: Timestamp,
) -> bytes:
    return encode_canonical(
        {
            "v": FORMAT_VERSION,
            "fleet": fleet_id,
            "issuers": list(issuers),
            "revoked": revoked,
            "cut": dict(cut),
            "kept": sorted(kept),
            "hlc": hlc.to_list(),
        }
    )


@attrs.frozen(repr=False, eq=False)
class Revocation:
    """A signed, irreversible revocation of a key, with its causal cut.

    Build with :func:`issue_revocation` or :meth:`decode`. See the module docstring for what it
    revokes. Two revocations are equal when their encodings are.

    Attributes:
        fleet_id: The fleet.
        issuers: Sorted key ids of the signers (roots, or one key holding ``delegate``).
        revoked: Key id of the revoked key.
        cut: Per canonical scope path, the revoked key's last sequence number that still counts;
            a scope not listed has cut 0.
        kept: Digests of delegations issued by the revoked key that stay valid.
        hlc: When the revoker issued it (informational: the cut, not the time, decides).
        signatures: ``(public key, signature)`` pairs, sorted by public key.
    """

    fleet_id: str
    issuers: tuple[str, ...]
    revoked: str
    cut: Mapping[str, int] = attrs.field(converter=_freeze_cut)
    kept: frozenset[bytes] = attrs.field(converter=_freeze_kept)
    hlc: Timestamp
    signatures: tuple[tuple[PublicKey, bytes], ...]
    _body: bytes = attrs.field(init=False, repr=False, default=b"")
    _encoded: bytes = attrs.field(init=False, repr=False, default=b"")
    _digest: bytes = attrs.field(init=False, repr=False, default=b"")

    def __attrs_post_init__(self) -> None:
        check_fleet_id(self.fleet_id)
        check_key_id(self.revoked)
        if not isinstance(self.hlc, Timestamp):
            raise _malformed("hlc must be a Timestamp", "hlc")
        _check_signatures(self.signatures, self.issuers)
        if self.revoked in self.issuers:
            raise _malformed("a key cannot revoke itself", "self-revocation")
        body = _revocation_body(
            fleet_id=self.fleet_id,
            issuers=self.issuers,
            revoked=self.revoked,
            cut=self.cut,
            kept=self.kept,
            hlc=self.hlc,
        )
        encoded = _encode_signed(body, self.signatures)
        if len(encoded) > MAX_REVOCATION_SIZE:
            raise TooLargeError("revocation too large", reason="size")
        object.__setattr__(self, "_body", body)
        object.__setattr__(self, "_encoded", encoded)
        object.__setattr__(self, "_digest", hashlib.sha256(encoded).digest())

    @property
    def signed_bytes(self) -> bytes:
        """The exact bytes each issuer signed."""
        return REVOCATION_DOMAIN + self._body

    @property
    def digest(self) -> bytes:
        """SHA-256 of :meth:`encode`."""
        return self._digest

    def encode(self) -> bytes:
        """The canonical wire encoding."""
        return self._encoded

    def cut_for(self, scope: Scope | str) -> int:
        """The last sequence number of the revoked key that counts in ``scope`` (0 if unlisted)."""
        return self.cut.get(str(scope), 0)

    def verify_signatures(self) -> None:
        """Verify every signature over :attr:`signed_bytes`.

        Raises:
            SignatureError: if one does not verify.
        """
        _verify_signatures(self.signatures, self.signed_bytes)

    @classmethod
    def decode(
        cls, data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS
    ) -> Revocation:
        """Decode untrusted bytes (strict schema, canonical encoding); no signature check.

        Raises:
            TooLargeError: over :data:`MAX_REVOCATION_SIZE` or a per-field bound.
            UnsupportedVersionError: an unknown version or algorithm.
            QuorumError: one signer listed twice.
            SignatureError: the signers are not exactly the listed issuers.
            MalformedEnvelopeError: anything else that does not match the schema.
        """
        obj = _decode_untrusted(data, limits, min(limits.max_size, MAX_REVOCATION_SIZE))
        _check_outer(obj, length=4)
        body_bytes, raw_signatures = obj[2], obj[3]
        if type(body_bytes) is not bytes:
            raise _malformed("body must be bytes", "body")
        body = _check_body_map(
            _decode_untrusted(body_bytes, limits, MAX_REVOCATION_SIZE), _REVOCATION_KEYS
        )
        issuers, cut, kept = body["issuers"], body["cut"], body["kept"]
        if type(issuers) is not list:
            raise _malformed("issuers must be an array", "issuers")
        if type(cut) is not dict:
            raise _malformed("cut must be a map", "cut")
        if type(kept) is not list:
            raise _malformed("kept must be an array", "kept")
        if len(kept) > MAX_KEPT:
            raise TooLargeError(f"more than {MAX_KEPT} kept delegations", reason="kept")
        for digest in kept:
            _check_digest(digest, what="kept")
        revocation = cls(
            fleet_id=check_fleet_id(body["fleet"]),
            issuers=tuple(issuers),
            revoked=check_key_id(body["revoked"]),
            cut=cut,
            kept=kept,
            hlc=_check_timestamp(body["hlc"], what="hlc"),
            signatures=_decode_signatures(raw_signatures),
        )
        if revocation.encode() != bytes(data):
            raise _malformed("revocation is not canonically encoded", "non-canonical")
        return revocation

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Revocation):
            return NotImplemented
        return self._encoded == other._encoded

    def __hash__(self) -> int:
        return hash(self._digest)

    def __repr__(self) -> str:
        return f"Revocation(revoked={self.revoked!r}, digest={self.digest.hex()[:16]!r}…)"


def issue_revocation(
    issuers: SigningKey | Sequence[SigningKey],
    *,
    fleet_id: str,
    revoked: PublicKey | str,
    cut: CutLike,
    hlc: Timestamp,
    kept: Iterable[Delegation | bytes] = (),
) -> Revocation:
    """Sign a revocation.

    Args:
        issuers: The roots (a quorum of them), or one key holding ``delegate`` above the revoked
            key.
        fleet_id: The fleet id.
        revoked: The revoked key, or its key id.
        cut: Per scope, the revoked key's last sequence number the issuer had seen.
        hlc: The issuer's clock reading.
        kept: Delegations issued by the revoked key (or their digests) that stay valid.

    Raises:
        QuorumError: if one key is given twice.
        MalformedEnvelopeError: if a field is invalid.
    """
    keys = _as_keys(issuers)
    revoked_id = revoked.key_id if isinstance(revoked, PublicKey) else check_key_id(revoked)
    issuer_ids = tuple(sorted(key.key_id for key in keys))
    frozen_cut = _freeze_cut(cut)
    kept_digests = _freeze_kept(
        item.digest if isinstance(item, Delegation) else item for item in kept
    )
    check_fleet_id(fleet_id)
    body = _revocation_body(
        fleet_id=fleet_id,
        issuers=issuer_ids,
        revoked=revoked_id,
        cut=frozen_cut,
        kept=kept_digests,
        hlc=hlc,
    )
    return Revocation(
        fleet_id=fleet_id,
        issuers=issuer_ids,
        revoked=revoked_id,
        cut=frozen_cut,
        kept=kept_digests,
        hlc=hlc,
        signatures=_sign_all(keys, REVOCATION_DOMAIN + body),
    )


def rotate_key(
    issuers: SigningKey | Sequence[SigningKey],
    old: Delegation,
    new_subject: PublicKey,
    *,
    cut: CutLike,
    hlc: Timestamp,
    kept: Iterable[Delegation | bytes] = (),
    serial: int | None = None,
    not_before: Timestamp | None = None,
    not_after: Timestamp | None = None,
) -> tuple[Delegation, Revocation]:
    """Move ``old``'s authority to a new key: a fresh delegation and a revocation of the old key.

    The new delegation copies ``old``'s parent, scope, capabilities, tier, autonomy and (unless
    given) window; its serial is ``old.serial + 1`` unless given. The revocation is signed by
    the same issuers, so it reaches every chain through ``old``'s issuer.

    Args:
        issuers: The key(s) that issued ``old`` (the roots for a root-issued one).
        old: The delegation being replaced.
        new_subject: The new key.
        cut: Per scope, the old key's last sequence number that still counts.
        hlc: The issuer's clock reading.
        kept: Delegations the old key issued that stay valid (so its subtree keeps working).
        serial: Serial of the new delegation.
        not_before: Start of the new window (default: the old one's).
        not_after: End of the new window (default: the old one's).

    Returns:
        The new delegation and the revocation of the old key.
    """
    delegation = issue_delegation(
        issuers,
        fleet_id=old.fleet_id,
        subject=new_subject,
        scope=old.scope,
        capabilities=old.capabilities,
        tier=old.tier,
        autonomy=old.autonomy,
        not_before=old.not_before if not_before is None else not_before,
        not_after=old.not_after if not_after is None else not_after,
        parent=old.parent,
        serial=old.serial + 1 if serial is None else serial,
    )
    revocation = issue_revocation(
        issuers, fleet_id=old.fleet_id, revoked=old.subject, cut=cut, hlc=hlc, kept=kept
    )
    return delegation, revocation


# --------------------------------------------------------------------------- the registry


class Authority:
    """What one replica knows: its trust anchors, delegations and revocations.

    The only mutable object of this module. Delegations are checked for shape and signatures
    when added and their chains verified on use, so they may arrive in any order. Revocations
    are checked for signatures and the issuer's authority when added.

    Args:
        anchors: The fleet's pinned roots.
        max_depth: Longest chain accepted.
    """

    __slots__ = (
        "_by_subject",
        "_delegations",
        "_revocations",
        "_revocations_of",
        "_root_revocations",
        "anchors",
        "max_depth",
    )

    def __init__(self, anchors: TrustAnchors, *, max_depth: int = MAX_CHAIN_DEPTH) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be >= 1")
        self.anchors = anchors
        self.max_depth = max_depth
        self._delegations: dict[bytes, Delegation] = {}
        self._by_subject: dict[str, list[Delegation]] = {}
        self._revocations: dict[bytes, Revocation] = {}
        self._revocations_of: dict[str, list[Revocation]] = {}
        self._root_revocations: set[bytes] = set()

    # ------------------------------------------------------------------ delegations

    def _check_fleet(self, fleet_id: str) -> None:
        if fleet_id != self.anchors.fleet_id:
            raise ForeignFleetError(
                f"fleet {fleet_id!r} is not this replica's fleet {self.anchors.fleet_id!r}",
                fleet_id=fleet_id,
            )

    def add_delegation(self, delegation: Delegation) -> bool:
        """Record a delegation after checking its fleet and signatures; return whether it is new.

        Its chain is verified when a grant uses it, so a child may arrive before its parent.

        Raises:
            ForeignFleetError: if it belongs to another fleet.
            SignatureError: if a signature does not verify.
        """
        if delegation.digest in self._delegations:
            return False
        self._check_fleet(delegation.fleet_id)
        delegation.verify_signatures()
        self._delegations[delegation.digest] = delegation
        self._by_subject.setdefault(delegation.subject.key_id, []).append(delegation)
        return True

    def delegation(self, digest: bytes) -> Delegation | None:
        """The known delegation with ``digest``, if any."""
        return self._delegations.get(digest)

    def delegations(self) -> Iterator[Delegation]:
        """Every known delegation, in digest order (deterministic)."""
        for digest in sorted(self._delegations):
            yield self._delegations[digest]

    def delegations_for(self, key_id: str) -> tuple[Delegation, ...]:
        """The known delegations whose subject is ``key_id``."""
        return tuple(self._by_subject.get(key_id, ()))

    def public_key(self, key_id: str) -> PublicKey | None:
        """The public key with ``key_id`` among the roots and known delegation subjects."""
        root = self.anchors.root(key_id)
        if root is not None:
            return root
        known = self._by_subject.get(key_id)
        return known[0].subject if known else None

    def chain(self, leaf_digest: bytes) -> tuple[Delegation, ...]:
        """The chain ending at ``leaf_digest``, root-issued link first, built from parent links.

        Raises:
            UnknownDelegationError: if a link is not known yet (``missing`` is its digest).
            TooLargeError: if the chain is longer than :attr:`max_depth`.
        """
        links: list[Delegation] = []
        digest = leaf_digest
        while True:
            link = self._delegations.get(digest)
            if link is None:
                raise UnknownDelegationError(
                    f"delegation {digest.hex()} is not known yet", missing=digest
                )
            links.append(link)
            if link.is_root_issued:
                break
            if len(links) >= self.max_depth:
                raise TooLargeError(
                    f"chain longer than {self.max_depth} links", reason="chain-depth"
                )
            digest = link.parent
        links.reverse()
        return tuple(links)

    def grant_for(self, writer_key_id: str, leaf_digest: bytes, *, at: Timestamp) -> Grant:
        """The rights ``writer_key_id`` holds through the chain ending at ``leaf_digest``.

        Exactly one chain is consulted: the one the leaf names. Revocations are not (see
        :meth:`check_not_revoked`).

        Raises:
            UnknownDelegationError: a link of the chain is not known yet; park and retry.
            UntrustedKeyError: the leaf's subject is not ``writer_key_id``, or see
                :func:`verify_chain` for every other refusal.
        """
        links = self.chain(leaf_digest)
        leaf = links[-1]
        if leaf.subject.key_id != writer_key_id:
            raise UntrustedKeyError(
                f"delegation {leaf_digest.hex()} is for {leaf.subject.key_id}, not {writer_key_id}",
                reason="writer-mismatch",
                scope=str(leaf.scope),
                writer=writer_key_id,
            )
        # Signatures were verified by add_delegation; the structure is checked on every use.
        return _verify_chain(
            self.anchors, links, at=at, max_depth=self.max_depth, check_signatures=False
        )

    @staticmethod
    def check_write(grant: Grant, scope: Scope | str, capability: Capability | None = None) -> None:
        """Raise unless ``grant`` covers ``scope`` (and ``capability``, when given).

        Raises:
            ScopeViolationError: ``scope`` is outside the granted subtree.
            CapabilityViolationError: the grant lacks ``capability``.
        """
        grant.check_scope(scope)
        if capability is not None:
            grant.check_capability(capability)

    # ------------------------------------------------------------------ revocations

    def add_revocation(self, revocation: Revocation) -> bool:
        """Record a revocation after checking it; return whether it is new (idempotent).

        The issuers must be a quorum of roots, or one key that is the subject of a known
        delegation holding ``delegate``.

        Raises:
            ForeignFleetError: another fleet's revocation.
            SignatureError: a signature does not verify.
            QuorumError: root signers below the quorum.
            UntrustedKeyError: roots and non-roots mixed, several non-root signers, or a root
                key named as revoked (roots are rotated by re-pinning anchors).
            UnknownDelegationError: no known delegation gives the issuer ``delegate`` yet;
                park and retry.
        """
        if revocation.digest in self._revocations:
            return False
        self._check_fleet(revocation.fleet_id)
        revocation.verify_signatures()
        if self.anchors.is_root(revocation.revoked):
            raise UntrustedKeyError(
                "root keys are rotated by pinning new trust anchors, not revoked",
                reason="revoke-root",
                writer=revocation.revoked,
            )
        signer_ids = set(revocation.issuers)
        is_root_act = bool(signer_ids & self.anchors.root_ids)
        if is_root_act:
            _check_root_act(self.anchors, revocation.signatures, what="root revocation")
        else:
            if len(revocation.issuers) != 1:
                raise UntrustedKeyError(
                    "a non-root revocation has exactly one issuer", reason="issuers"
                )
            issuer = revocation.issuers[0]
            if not any(
                Capability.DELEGATE in known.capabilities
                for known in self._by_subject.get(issuer, ())
            ):
                raise UnknownDelegationError(
                    f"no known delegation gives {issuer} the delegate capability",
                    missing=issuer,
                    reason="issuer-authority",
                    writer=issuer,
                )
        self._revocations[revocation.digest] = revocation
        self._revocations_of.setdefault(revocation.revoked, []).append(revocation)
        if is_root_act:
            self._root_revocations.add(revocation.digest)
        return True

    def revocations(self) -> Iterator[Revocation]:
        """Every known revocation, in digest order (deterministic)."""
        for digest in sorted(self._revocations):
            yield self._revocations[digest]

    def revocations_of(self, key_id: str) -> tuple[Revocation, ...]:
        """The known revocations naming ``key_id``."""
        return tuple(self._revocations_of.get(key_id, ()))

    def is_revoked(self, key_id: str) -> bool:
        """True if any known revocation names ``key_id`` (whatever chains it reaches)."""
        return key_id in self._revocations_of

    def _revocation_reason(self, grant: Grant, scope: Scope | str, seq: int) -> str | None:
        subjects = grant.chain_subjects
        leaf_index = len(subjects) - 1
        path = str(scope)
        for index, key_id in enumerate(subjects):
            for revocation in self._revocations_of.get(key_id, ()):
                # A revocation reaches only chains where its issuer sits above the revoked key
                # (a root revocation reaches all): no one revokes a grant they did not stand over.
                if revocation.digest not in self._root_revocations and (
                    revocation.issuers[0] not in subjects[:index]
                ):
                    continue
                if index == leaf_index:
                    if seq > revocation.cut.get(path, 0):
                        return (
                            f"key {key_id} is revoked in {path} after sequence "
                            f"{revocation.cut.get(path, 0)}; this write is {seq}"
                        )
                elif grant.chain_digests[index + 1] not in revocation.kept:
                    return (
                        f"key {key_id} is revoked and the delegation it issued in this "
                        "chain was not kept"
                    )
        return None

    def is_cut(self, grant: Grant, scope: Scope | str, seq: int) -> bool:
        """True if the write ``seq`` in ``scope`` through ``grant`` does not count (revoked).

        See the module docstring for the rule: the writer's own cut, and the cascade through
        revoked ancestors.
        """
        return self._revocation_reason(grant, scope, seq) is not None

    def check_not_revoked(self, grant: Grant, scope: Scope | str, seq: int) -> None:
        """Raise if the write ``seq`` in ``scope`` through ``grant`` is past a revocation's cut.

        Raises:
            RevokedError: if it is.
        """
        reason = self._revocation_reason(grant, scope, seq)
        if reason is not None:
            raise RevokedError(
                reason, reason="revoked", scope=str(scope), writer=grant.subject_key_id
            )

    # ------------------------------------------------------------------ description

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary (for the Digital Twin Service and debugging)."""
        return {
            "fleet_id": self.anchors.fleet_id,
            "quorum": self.anchors.quorum,
            "roots": sorted(self.anchors.root_ids),
            "delegations": [
                {
                    "digest": delegation.digest.hex(),
                    "parent": delegation.parent.hex(),
                    "issuers": list(delegation.issuers),
                    "subject": delegation.subject.key_id,
                    "scope": str(delegation.scope),
                    "capabilities": sorted(cap.value for cap in delegation.capabilities),
                    "tier": delegation.tier.value,
                    "autonomy": delegation.autonomy.value,
                    "not_before": str(delegation.not_before),
                    "not_after": str(delegation.not_after),
                    "serial": delegation.serial,
                    "revoked": self.is_revoked(delegation.subject.key_id),
                }
                for delegation in self.delegations()
            ],
            "revocations": [
                {
                    "digest": revocation.digest.hex(),
                    "issuers": list(revocation.issuers),
                    "revoked": revocation.revoked,
                    "cut": dict(revocation.cut),
                    "kept": sorted(digest.hex() for digest in revocation.kept),
                    "hlc": str(revocation.hlc),
                }
                for revocation in self.revocations()
            ],
        }
