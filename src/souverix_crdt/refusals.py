"""Refused envelopes, by reason: a bounded record that is the same on every replica.

An operator asking "why does region-a not show edge-a1's write?" needs to see that the envelope
arrived and was refused, and why. The record keeps, per reason, the envelopes refused for a
reason that cannot change — a bad signature, a malformed envelope, a write outside the writer's
scope or capabilities, a delegation not valid at the envelope's time, a revoked writer past its
cut — so it depends only on *which* envelopes a replica was given, never on the order:

* each reason is judged from the envelope and the signed authority alone (validity at the
  envelope's own HLC, a revocation's cut by sequence number), the same on every replica;
* an envelope applied first and cut later by a revocation is recorded as revoked then, exactly
  as if it had arrived after the revocation;
* per reason the record keeps the :data:`KEPT_PER_REASON` refused envelopes with the lowest ids,
  and whether there were more: its size is bounded, and its content is a function of the set
  (so it survives restarts unchanged: a replica stores it with the commit that refused).

Refusals that can change are not in it: an envelope waiting for a gap or a delegation, a
far-future one in quarantine, one refused because a budget was full (that depends on what this
replica held at the time), and the branches of an equivocation (reported as the equivocation
itself, :attr:`~souverix_crdt.replica.ReplicaStatus.equivocators`).
"""

from __future__ import annotations

import heapq
from typing import Any, Final

import attrs

from .codec import decode, encode
from .errors import (
    AuthorityError,
    CapabilityViolationError,
    DecodeError,
    EquivocationError,
    ExpiredError,
    InvalidUpdateError,
    MalformedEnvelopeError,
    NotYetValidError,
    QuarantinedError,
    RevokedError,
    ScopeViolationError,
    SignatureError,
    SouverixError,
    TooLargeError,
    UnknownDelegationError,
    UntrustedKeyError,
)

__all__ = [
    "KEPT_PER_REASON",
    "META_PREFIX",
    "REASONS",
    "RefusalLog",
    "RefusedEnvelope",
    "refusal_reason",
]

#: Prefix of the named values a store keeps the record under (one per reason).
META_PREFIX: Final = "refused:"

#: Refused envelopes kept per reason: the lowest ids. Past it the record only says "more".
KEPT_PER_REASON: Final = 64

# Refusals that another time, another order or more authority would undo.
_CHANGING: Final = (EquivocationError, UnknownDelegationError, QuarantinedError)
# Most specific first: ScopeViolationError and the others are AuthorityErrors too.
_REASONS: Final[tuple[tuple[type[SouverixError], str], ...]] = (
    (RevokedError, "revoked"),
    (ExpiredError, "expired"),
    (NotYetValidError, "not-yet-valid"),
    (ScopeViolationError, "out-of-scope"),
    (CapabilityViolationError, "capability"),
    (SignatureError, "signature"),
    (UntrustedKeyError, "untrusted-key"),
    (InvalidUpdateError, "invalid-update"),
    (MalformedEnvelopeError, "malformed"),
    (DecodeError, "malformed"),
    (AuthorityError, "authority"),
)


# TooLargeError reasons that are about the envelope's bytes, not about what a replica holds.
_INTRINSIC_SIZE: Final = frozenset(
    {"size", "max_envelope", "decode_objects", "decode_expansion", "depth"}
)
#: Every reason the record uses.
REASONS: Final = tuple(dict.fromkeys([*(reason for _, reason in _REASONS), "too-large", "clock"]))


def refusal_reason(error: SouverixError | None) -> str | None:
    """The record's reason for an envelope refused with ``error``, or ``None`` if it can change.

    Budgets, waiting and equivocation give ``None``: see the module docstring.
    """
    if error is None or isinstance(error, _CHANGING):
        return None
    if isinstance(error, TooLargeError):
        # What the envelope itself is (too big, too costly to decode, a logical counter no
        # clock issues) is so everywhere and for ever; a full budget is about this replica now.
        if error.reason == "max_remote_logical":
            return "clock"
        return "too-large" if error.reason in _INTRINSIC_SIZE else None
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return None


@attrs.frozen(order=True)
class RefusedEnvelope:
    """One refused envelope: what it claims to be, and why it did not count.

    Ordered by envelope id, so "the lowest ids" is well defined.
    """

    envelope_id: bytes
    scope: str = ""
    chain: str = ""
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "envelope_id": self.envelope_id.hex(),
            "scope": self.scope,
            "chain": self.chain,
            "seq": self.seq,
        }


class _Reason:
    __slots__ = ("kept", "more")

    def __init__(self) -> None:
        # A max-heap by id (negated), so the highest kept id is evicted first.
        self.kept: list[tuple[bytes, RefusedEnvelope]] = []
        self.more = False


def _negated(envelope_id: bytes) -> bytes:
    return bytes(255 - b for b in envelope_id)


class RefusalLog:
    """The refusal record of one replica (see the module docstring)."""

    def __init__(self) -> None:
        self._reasons: dict[str, _Reason] = {}

    def add(self, reason: str, refused: RefusedEnvelope) -> bool:
        """Record ``refused`` under ``reason``; return whether the record changed."""
        entry = self._reasons.setdefault(reason, _Reason())
        item = (_negated(refused.envelope_id), refused)
        if any(held.envelope_id == refused.envelope_id for _, held in entry.kept):
            return False
        if len(entry.kept) < KEPT_PER_REASON:
            heapq.heappush(entry.kept, item)
            return True
        # Full: an id above every kept one proves there are more than the kept (it is new, or
        # a repeat of one that was already above them); a lower one takes the highest's place.
        changed = not entry.more
        entry.more = True
        if item[0] > entry.kept[0][0]:
            heapq.heapreplace(entry.kept, item)
            changed = True
        return changed

    def count(self, reason: str) -> int:
        """Envelopes kept for ``reason`` (all of them unless :meth:`more` says otherwise)."""
        entry = self._reasons.get(reason)
        return 0 if entry is None else len(entry.kept)

    def more(self, reason: str) -> bool:
        """True if more envelopes than :data:`KEPT_PER_REASON` were refused for ``reason``."""
        entry = self._reasons.get(reason)
        return entry is not None and entry.more

    def kept(self, reason: str) -> list[RefusedEnvelope]:
        """The refused envelopes kept for ``reason``, lowest id first."""
        entry = self._reasons.get(reason)
        return [] if entry is None else sorted(refused for _, refused in entry.kept)

    def reasons(self) -> list[str]:
        """Every reason with a refusal, sorted."""
        return sorted(self._reasons)

    def encode_reason(self, reason: str) -> bytes:
        """One reason's record as bytes (what a store keeps)."""
        rows = [[r.envelope_id, r.scope, r.chain, r.seq] for r in self.kept(reason)]
        return encode([self.more(reason), rows])

    def load_reason(self, reason: str, data: bytes) -> None:
        """Restore one reason's record from :meth:`encode_reason` bytes (a store's own).

        Raises:
            DecodeError: the bytes are not such a record.
        """
        obj = decode(data)
        if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not bool:
            raise DecodeError("not a refusal record", reason="malformed")
        entry = _Reason()
        for row in obj[1] if type(obj[1]) is list else ():
            if type(row) is not list or len(row) != 4:
                raise DecodeError("not a refusal record", reason="malformed")
            refused = RefusedEnvelope(bytes(row[0]), str(row[1]), str(row[2]), int(row[3]))
            heapq.heappush(entry.kept, (_negated(refused.envelope_id), refused))
        entry.more = obj[0]
        self._reasons[reason] = entry

    def to_json(self) -> dict[str, Any]:
        """Per reason: how many are kept, whether there were more, and the kept envelopes."""
        return {
            reason: {
                "count": self.count(reason),
                "more": self.more(reason),
                "envelopes": [refused.to_json() for refused in self.kept(reason)],
            }
            for reason in self.reasons()
        }
