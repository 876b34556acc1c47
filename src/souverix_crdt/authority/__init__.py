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

The registry
    :class:`Authority` records a delegation only once its whole chain verifies to the anchors,
    windows aside (an expired but genuine link still verifies structurally: envelopes signed
    while it was valid still count). One whose parent is not known yet waits, counting for
    nothing, in a parking area bounded in count and bytes, and is examined again when the
    parent arrives; a full parking area refuses the newcomer and never evicts.

Validity windows
    ``not_before`` is inclusive and ``not_after`` exclusive: a link is valid at ``at`` when
    ``not_before <= at < not_after``. A window must be non-empty. A child window that starts
    earlier than its parent's raises :class:`~souverix_crdt.errors.NotYetValidError`; one that
    ends later raises :class:`~souverix_crdt.errors.ExpiredError` (reason ``"window-widened"``).

Revocations and the cascade rule
    A :class:`Revocation` names a key id, a causal ``cut`` (per scope, the last sequence number of
    the revoked key that the revoker had seen; a scope it does not list has cut 0) and ``kept``,
    the digests of delegations *issued by* the revoked key that the revoker vouches for. It is
    signed either by a quorum of roots or by one key that is a strict ancestor of the revoked key
    in one of that key's verified chains (and so holds ``delegate`` there); any other is refused
    and never kept, so a zone, a sibling region or an outsider cannot revoke at all. Its effect
    is limited to chains in which its issuer is a strict ancestor of the revoked key (a root
    revocation reaches every chain). Within such a chain, for a write ``(scope, seq)`` by the
    chain's leaf:

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

from ._wire import ALGORITHM as ALGORITHM
from ._wire import DELEGATION_DOMAIN as DELEGATION_DOMAIN
from ._wire import DIGEST_SIZE as DIGEST_SIZE
from ._wire import FORMAT_VERSION as FORMAT_VERSION
from ._wire import KEY_ID_DOMAIN as KEY_ID_DOMAIN
from ._wire import MAX_CHAIN_DEPTH as MAX_CHAIN_DEPTH
from ._wire import MAX_CUT_ENTRIES as MAX_CUT_ENTRIES
from ._wire import MAX_DELEGATION_SIZE as MAX_DELEGATION_SIZE
from ._wire import MAX_KEPT as MAX_KEPT
from ._wire import MAX_REVOCATION_SIZE as MAX_REVOCATION_SIZE
from ._wire import MAX_SERIAL as MAX_SERIAL
from ._wire import MAX_SIGNERS as MAX_SIGNERS
from ._wire import REVOCATION_DOMAIN as REVOCATION_DOMAIN
from ._wire import SIGNATURE_SIZE as SIGNATURE_SIZE
from ._wire import SMALL_ORDER_ENCODINGS as SMALL_ORDER_ENCODINGS
from ._wire import CutLike as CutLike
from ._wire import check_fleet_id as check_fleet_id
from ._wire import check_key_id as check_key_id
from .anchors import TrustAnchors as TrustAnchors
from .capabilities import COLLECTION_CAPABILITY as COLLECTION_CAPABILITY
from .capabilities import Capability as Capability
from .capabilities import allowed_collections as allowed_collections
from .chain import Grant as Grant
from .chain import verify_chain as verify_chain
from .delegation import Delegation as Delegation
from .delegation import check_plane_name as check_plane_name
from .delegation import issue_delegation as issue_delegation
from .keys import PublicKey as PublicKey
from .keys import SigningKey as SigningKey
from .registry import DEFAULT_MAX_PARKED_BYTES as DEFAULT_MAX_PARKED_BYTES
from .registry import DEFAULT_MAX_PARKED_DELEGATIONS as DEFAULT_MAX_PARKED_DELEGATIONS
from .registry import Authority as Authority
from .registry import parents_first as parents_first
from .revocation import Revocation as Revocation
from .revocation import cut_key as cut_key
from .revocation import issue_revocation as issue_revocation
from .revocation import rotate_key as rotate_key

__all__ = [
    "ALGORITHM",
    "COLLECTION_CAPABILITY",
    "DEFAULT_MAX_PARKED_BYTES",
    "DEFAULT_MAX_PARKED_DELEGATIONS",
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
    "SMALL_ORDER_ENCODINGS",
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
    "check_plane_name",
    "cut_key",
    "issue_delegation",
    "issue_revocation",
    "parents_first",
    "rotate_key",
    "verify_chain",
]
