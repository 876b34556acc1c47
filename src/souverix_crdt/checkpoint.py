"""Writer checkpoints: a signed snapshot of one writer document at a sequence number.

A checkpoint lets a new or far-behind replica start from the writer's state at seq ``N`` instead
of replaying the whole chain, and lets the writer's log before ``N`` be compacted. It uses the
envelope format and every envelope check (signature over the received bytes, fleet, delegation
chain at the header's HLC, scope, revocation cut at ``N``), under its own signing domain, so a
checkpoint can never be replayed as an envelope or the other way round.

Header: the chain's scope, writer, epoch and ``seq = N``; ``prev`` is the id of envelope
``N - 1`` (as in envelope ``N``), ``hlc`` the HLC of envelope ``N``, the state vector the
document's. Payload: ``msgpack([id of envelope N, full pycrdt state, past registers])`` — the
id lets the receiver continue the chain with envelope ``N + 1`` and binds the checkpoint to the
chain (a checkpoint whose id differs from envelope ``N`` is an equivocation); the past
registers are ``[collection, key, register]`` of the writer's older registers that are still in
some key's bounded history, what the state alone cannot rebuild, so a replica starting from the
checkpoint holds the same history and audit log as one that replayed the chain.

A two-field payload (written before past registers were carried) is still read: it carries no
past registers, so a replica starting from it lacks the history of the compacted prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs

from .authority import Authority, Grant, SigningKey
from .codec import DEFAULT_LIMITS, DecodeLimits, decode, encode
from .envelope import EnvelopeHeader, seal, verify_signed
from .errors import DecodeError, MalformedEnvelopeError
from .hlc import Timestamp
from .limits import DEFAULT_LIMITS as BUDGETS
from .scope import Scope

__all__ = ["CHECKPOINT_DOMAIN", "VerifiedCheckpoint", "open_checkpoint", "seal_checkpoint"]

#: Signing domain of checkpoints (differs from envelopes').
CHECKPOINT_DOMAIN: Final = b"souverix-crdt/checkpoint/v1\x00"


@attrs.frozen
class VerifiedCheckpoint:
    """A checkpoint that passed every check.

    Attributes:
        data: The bytes as received.
        header: Its header (``seq`` is the last envelope it includes).
        last_id: Id of envelope ``seq`` of the chain.
        state: The writer document's full state, as one pycrdt update.
        grant: The writer's rights.
        history: ``(collection, key, register bytes)`` of the writer's past registers still in
            some key's bounded history (empty in the two-field format).
    """

    data: bytes = attrs.field(repr=False)
    header: EnvelopeHeader
    last_id: bytes
    state: bytes = attrs.field(repr=False)
    grant: Grant
    history: tuple[tuple[str, str, bytes], ...] = attrs.field(default=(), repr=False)


def seal_checkpoint(
    signing_key: SigningKey,
    *,
    fleet_id: str,
    scope: Scope | str,
    epoch: int,
    seq: int,
    prev: bytes,
    last_id: bytes,
    hlc: Timestamp,
    state_vector: bytes,
    state: bytes,
    delegation_digest: bytes,
    history: Sequence[tuple[str, str, bytes]] = (),
) -> bytes:
    """Sign a snapshot of the writer's own document after envelope ``seq``.

    ``history`` is the writer's past registers still in some key's bounded history.
    """
    sealed = seal(
        signing_key,
        fleet_id=fleet_id,
        scope=scope,
        seq=seq,
        prev=prev,
        hlc=hlc,
        state_vector=state_vector,
        delegation_digest=delegation_digest,
        payload=encode([last_id, state, [list(entry) for entry in history]]),
        epoch=epoch,
        domain=CHECKPOINT_DOMAIN,
    )
    return sealed.data


def open_checkpoint(
    data: bytes,
    authority: Authority,
    *,
    physical_now: int,
    max_offset: int,
    limits: DecodeLimits = DEFAULT_LIMITS,
    max_logical: int = BUDGETS.max_remote_logical,
) -> VerifiedCheckpoint:
    """Verify a checkpoint from anyone.

    Raises:
        MalformedEnvelopeError: if the payload is not ``[last id, state]``.
        The errors of :func:`~souverix_crdt.envelope.open_envelope` otherwise.
    """
    raw, header, payload, _, grant = verify_signed(
        data,
        authority,
        physical_now=physical_now,
        max_offset=max_offset,
        limits=limits,
        max_logical=max_logical,
        domain=CHECKPOINT_DOMAIN,
    )
    try:
        fields = decode(payload, limits)
    except DecodeError as exc:
        raise MalformedEnvelopeError(f"checkpoint payload: {exc}", reason="checkpoint") from exc
    if (
        type(fields) is not list
        or len(fields) not in {2, 3}
        or type(fields[0]) is not bytes
        or len(fields[0]) != 32
        or type(fields[1]) is not bytes
    ):
        raise MalformedEnvelopeError(
            "checkpoint payload is [last id, state, past registers]", reason="checkpoint"
        )
    history = _history(fields[2]) if len(fields) == 3 else ()
    return VerifiedCheckpoint(raw, header, fields[0], fields[1], grant, history)


def _history(value: object) -> tuple[tuple[str, str, bytes], ...]:
    if type(value) is not list:
        raise MalformedEnvelopeError("past registers are a list", reason="checkpoint")
    entries: list[tuple[str, str, bytes]] = []
    for entry in value:
        if (
            type(entry) is not list
            or len(entry) != 3
            or type(entry[0]) is not str
            or type(entry[1]) is not str
            or type(entry[2]) is not bytes
        ):
            raise MalformedEnvelopeError(
                "a past register is [collection, key, register]", reason="checkpoint"
            )
        entries.append((entry[0], entry[1], entry[2]))
    return tuple(entries)
