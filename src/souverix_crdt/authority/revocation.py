"""Signed revocations with causal cuts, and key rotation."""

from __future__ import annotations

import hashlib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs

from souverix_crdt.codec import DEFAULT_LIMITS, DecodeLimits, encode_canonical
from souverix_crdt.errors import (
    TooLargeError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Scope

from ._wire import (
    FORMAT_VERSION,
    MAX_CUT_ENTRIES,
    MAX_KEPT,
    MAX_REVOCATION_SIZE,
    REVOCATION_DOMAIN,
    CutLike,
    _check_body_map,
    _check_digest,
    _check_int,
    _check_outer,
    _check_scope,
    _check_timestamp,
    _decode_untrusted,
    _malformed,
    check_fleet_id,
    check_key_id,
)
from .delegation import (
    Delegation,
    _encode_signed,
    issue_delegation,
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

# --------------------------------------------------------------------------- revocations

_REVOCATION_KEYS: Final = frozenset({"v", "fleet", "issuers", "revoked", "cut", "kept", "hlc"})


_EPOCH: Final = re.compile(r"[1-9a-f][0-9a-f]{0,15}", re.ASCII)


def cut_key(scope: Scope | str, epoch: int = 0) -> str:
    """The cut entry for one chain of the revoked key (``scope``, or ``scope~<epoch hex>``).

    Epoch 0 is written as the bare scope. Sequence numbers restart with every process
    incarnation (epoch), so a cut names the chain: a revoked key that starts a new incarnation
    finds that chain's cut at 0.
    """
    return str(scope) if epoch == 0 else f"{scope}~{epoch:x}"


def _check_cut_key(key: object) -> str:
    if isinstance(key, Scope):
        return str(key)
    if type(key) is not str:
        raise _malformed("cut keys are scope paths, optionally with ~epoch", "cut")
    path, tilde, epoch = key.partition("~")
    scope = str(_check_scope(path, what="cut"))
    if tilde and _EPOCH.fullmatch(epoch) is None:
        raise _malformed(f"cut key {key!r}: epoch must be lower-case hex, not 0", "cut")
    return f"{scope}~{epoch}" if tilde else scope


def _freeze_cut(value: CutLike) -> Mapping[str, int]:
    if not isinstance(value, Mapping):
        raise _malformed("cut must be a mapping of scope path to sequence number", "cut")
    if len(value) > MAX_CUT_ENTRIES:
        raise TooLargeError(f"more than {MAX_CUT_ENTRIES} scopes in a cut", reason="cut")
    frozen: dict[str, int] = {}
    for key, seq in value.items():
        path = _check_cut_key(key)
        if path in frozen:
            raise _malformed(f"chain {path} appears twice in the cut", "cut")
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
        cut: Per chain of the revoked key (``scope`` for its epoch-0 chain, ``scope~<epoch hex>``
            for later incarnations, see :func:`cut_key`), the last sequence number that still
            counts; a chain not listed has cut 0.
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

    def cut_for(self, scope: Scope | str, epoch: int = 0) -> int:
        """The last sequence number of the revoked key's chain that counts (0 if unlisted)."""
        return self.cut.get(cut_key(scope, epoch), 0)

    def verify_signatures(self) -> None:
        """Verify every signature over :attr:`signed_bytes`.

        Raises:
            SignatureError: if one does not verify.
        """
        _verify_signatures(self.signatures, self.signed_bytes)

    @classmethod
    def decode(
        cls, data: bytes | bytearray | memoryview, limits: DecodeLimits = DEFAULT_LIMITS
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
        name=old.name,
    )
    revocation = issue_revocation(
        issuers, fleet_id=old.fleet_id, revoked=old.subject, cut=cut, hlc=hlc, kept=kept
    )
    return delegation, revocation
