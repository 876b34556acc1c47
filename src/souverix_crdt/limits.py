"""Budgets: every bound on what one input, one source or one peer may cost a replica.

A region hub takes bytes from many zones it does not control, so every entry point reads its
bounds from one :class:`Limits` value: the decoder (per whole message, not per container), the
transports (frame sizes, connections, timeouts), the receive path (pending and quarantine per
source, in count and in bytes), the authority registry (parked delegations, chains per key) and
the register layer (conflict records per key).

The rule every budget follows: **a full budget refuses the newcomer with a typed error**
(:class:`~souverix_crdt.errors.TooLargeError` whose ``reason`` is the budget's name) **and never
evicts what honest sources already hold**. Budgets are per source where one source could
otherwise starve the others, so an honest peer's gap-fill always gets through while a hostile
one is refused.

The defaults suit a region hub of a few hundred zones on a small machine; override them per
replica (``Replica(limits=...)``) or in a peer config (the ``limits:`` mapping, field names as
here). docs/operations.md lists each one with what a user sees when it is hit.
"""

from __future__ import annotations

from typing import Final

import attrs

__all__ = ["DEFAULT_LIMITS", "Limits"]

_MIB: Final = 1024 * 1024


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be a positive int, got {value!r}")


def _seconds(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if type(value) not in (int, float) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


def _count(default: int) -> int:
    return attrs.field(default=default, validator=_positive)


def _duration(default: float) -> float:
    return attrs.field(default=default, validator=_seconds)


@attrs.frozen(kw_only=True)
class Limits:
    """Every budget of one replica and its process, with documented defaults.

    Decoding (per whole message: totals across every container, not per container):

    Attributes:
        decode_objects: Most msgpack objects (scalars and containers) in one message.
        decode_depth: Deepest container nesting in one message.
        decode_expansion: Most memory the objects decoded from one message may take, as a
            multiple of the message's size (estimated from its structure before anything is
            built), so a message of small containers cannot cost a hundred times its size.
        max_frame: Largest sync frame a transport accepts, in bytes.
        max_envelope: Largest signed envelope, in bytes.
        max_bundle_record: Largest record of a bundle or receipt file, in bytes.
        max_manifest: Largest bundle manifest body, in bytes.
        pending_per_source: Envelopes one source may have waiting (for a gap or a delegation).
        pending_bytes_per_source: Bytes one source may have waiting.
        pending_total: Envelopes waiting in all, across sources.
        pending_bytes_total: Bytes waiting in all, across sources.
        quarantine_per_source: Far-future envelopes one writer may have quarantined.
        quarantine_bytes_per_source: Bytes one writer may have quarantined.
        parked_delegations: Delegations waiting for their parent, in all.
        parked_delegation_bytes: Bytes of delegations waiting for their parent.
        chains_per_writer: Chains (``key~epoch``) one writer key may have on this replica.
        conflicts_per_key: Conflict records kept per key (identically on every replica).
        max_remote_logical: Highest logical counter a remote timestamp may carry; a peer
            cannot push the local clock near its overflow.
        max_connections: Connections a server holds at once.
        max_connections_per_address: Connections one remote address may hold at once.
        handshake_timeout: Seconds a new connection has to complete the session handshake.
        idle_timeout: Seconds a connection may stay silent before it is closed.
    """

    decode_objects: int = _count(1_000_000)
    decode_depth: int = _count(32)
    decode_expansion: int = _count(6)
    max_frame: int = _count(16 * _MIB)
    max_envelope: int = _count(8 * _MIB)
    max_bundle_record: int = _count(16 * _MIB)
    max_manifest: int = _count(64 * _MIB)
    pending_per_source: int = _count(10_000)
    pending_bytes_per_source: int = _count(64 * _MIB)
    pending_total: int = _count(100_000)
    pending_bytes_total: int = _count(512 * _MIB)
    quarantine_per_source: int = _count(1_000)
    quarantine_bytes_per_source: int = _count(8 * _MIB)
    parked_delegations: int = _count(1_024)
    parked_delegation_bytes: int = _count(_MIB)
    chains_per_writer: int = _count(64)
    conflicts_per_key: int = _count(256)
    max_remote_logical: int = _count(1 << 24)
    max_connections: int = _count(512)
    max_connections_per_address: int = _count(64)
    handshake_timeout: float = _duration(10.0)
    idle_timeout: float = _duration(300.0)

    def evolve(self, **changes: float) -> Limits:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return attrs.evolve(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Every budget's name (the keys of a peer config's ``limits:`` mapping)."""
        return tuple(field.name for field in attrs.fields(cls))


#: The budgets a replica uses when it is given none.
DEFAULT_LIMITS: Final = Limits()
