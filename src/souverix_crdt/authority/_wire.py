"""Constants and strict validation helpers shared by the authority modules."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final

from souverix_crdt.codec import DecodeLimits, decode
from souverix_crdt.errors import (
    DecodeError,
    InvalidScopeError,
    MalformedEnvelopeError,
    TooLargeError,
    UnsupportedVersionError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Scope

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


def _decode_untrusted(data: object, limits: DecodeLimits, max_size: int) -> Any:
    """Decode with the codec; oversize is ``TooLargeError``, anything else malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed(f"expected bytes, got {type(data).__name__}", "type")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_size:
        raise TooLargeError(f"{size} bytes exceeds the {max_size}-byte limit", reason="size")
    try:
        return decode(data, limits)
    except TooLargeError:
        raise  # over the whole-message budget: its name is the reason
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
